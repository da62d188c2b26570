"""`python -m parity.port --module-py model.py`: a readable PyTorch source file of a ported
module — a class with its layers in `__init__`, `forward` with a shape comment per line, and a
docstring naming the Keras layers it came from."""

from __future__ import annotations

import inspect
import re
import textwrap
from pathlib import Path

import torch

from parity.generic import Built
from parity.layers import (
    AvgPool2dSame,
    Exponential,
    FlattenHWC,
    GlobalPool2d,
    KerasReshape,
    Rescale,
)

_HELPERS = (AvgPool2dSame, GlobalPool2d, Exponential, Rescale, KerasReshape, FlattenHWC)


def torch_shape(shape: tuple[int, ...]) -> str:
    """A Keras-order shape as the PyTorch tensor's, batch first: (N, C, H, W) for an image."""
    dims = (shape[2], shape[0], shape[1]) if len(shape) == 3 else shape
    return "(N, " + ", ".join(map(str, dims)) + ")"


def _constructor(module: torch.nn.Module) -> str:
    """A Python expression that builds `module` (torch.nn's reprs, where they are exact)."""
    from torch import nn

    if isinstance(module, nn.AvgPool2d):
        return (f"nn.AvgPool2d({module.kernel_size}, {module.stride}, {module.padding}, "
                f"count_include_pad={module.count_include_pad})")
    if isinstance(module, nn.MaxPool2d) and module.dilation == 1 and not module.ceil_mode:
        return f"nn.MaxPool2d({module.kernel_size}, {module.stride}, {module.padding})"
    if type(module) is nn.ConstantPad2d:  # ZeroPad2d, its subclass, has an exact repr
        return f"nn.ConstantPad2d({module.padding}, float('{module.value}'))"
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return (f"nn.{type(module).__name__}({module.num_features}, eps={module.eps!r}, "
                f"momentum={module.momentum!r}, affine={module.affine})")
    return f"nn.{module!r}"


def _helper_call(module: torch.nn.Module) -> str:
    args = {
        AvgPool2dSame: lambda m: f"{m.kernel_size}, {m.stride}, {m.pad}",
        GlobalPool2d: lambda m: f"{m.mode!r}, {m.keepdims}",
        Exponential: lambda m: "",
        Rescale: lambda m: f"{m.scale!r}, {m.offset!r}",
        KerasReshape: lambda m: f"{m.target}, {m.image_in}",
        FlattenHWC: lambda m: "",
    }[type(module)](module)
    return f"{type(module).__name__}({args})"


def module_source(built: Built, class_name: str, origin: str) -> str:
    """A Python file: the helper modules it needs, then one class with its layers in __init__
    and `forward` with a shape comment per line."""
    module = built.module
    shape = module.keras_spec.input_shape
    with torch.no_grad():  # the output shape of every module, from one zero image
        shapes: dict[str, tuple[int, ...]] = {}
        hooks = [
            m.register_forward_hook(lambda _m, _i, o, n=n: shapes.__setitem__(n, tuple(o.shape)))
            for n, m in module.named_children()
        ]
        module(torch.zeros(1, *((shape[2], shape[0], shape[1]) if len(shape) == 3 else shape)))
        for h in hooks:
            h.remove()
    helpers = [h for h in _HELPERS if any(isinstance(m, h) for m in module.children())]
    keras_layers = ", ".join(f"{i.keras.name} ({i.keras.class_name})" for i in built.layers)
    lines = [
        f'"""{class_name}: the Keras model {origin}, ported by `python -m parity.port`.',
        "",
        *textwrap.wrap(f"Keras layers: {keras_layers}.", 96),
        "Input: "
        + (f"NCHW images {torch_shape(shape)}" if len(shape) == 3 else f"{torch_shape(shape)}")
        + "; the output is what the Keras model outputs.",
        '"""',
        "",
        "import torch",
        *(["import torch.nn.functional as F"] if AvgPool2dSame in helpers else []),
        "from torch import nn",
        "",
    ]
    for helper in helpers:
        lines += ["", inspect.getsource(helper), ""]
    lines += ["", f"class {class_name}(nn.Module):", "    def __init__(self) -> None:",
              "        super().__init__()"]
    for name, m in module.named_children():
        expr = _helper_call(m) if isinstance(m, _HELPERS) else _constructor(m)
        lines.append(f"        self.{name} = {expr}")
    lines += ["", "    def forward(self, x: torch.Tensor) -> torch.Tensor:"]
    for name, _ in module.named_children():
        dims = ", ".join(map(str, shapes[name][1:]))
        lines.append(f"        x = self.{name}(x)  # (N, {dims})")
    lines += ["        return x", ""]
    text = "\n".join(lines)
    return re.sub(r"\n{4,}", "\n\n\n", text)


def write_module_py(built: Built, dst: Path, origin: str, *, force: bool = False) -> Path:
    from fashion_cnn.files import atomic_write

    stem = re.sub(r"\W", "_", dst.stem.title().replace("_", "")) or "Ported"
    name = stem if stem[0].isalpha() else f"Model{stem}"
    text = module_source(built, name, origin)
    compile(text, str(dst), "exec")  # a generated file that does not parse is never written
    return atomic_write(dst, lambda tmp: tmp.write_text(text), force=force)
