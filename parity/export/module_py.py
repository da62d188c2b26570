"""`python -m parity.port --module-py model.py`: a readable PyTorch source file of a ported
module — a class with its layers in `__init__`, `forward` with a shape comment per line, and the
Keras layers it came from.

A file's text is data here: module and class names are our own checked identifiers, and the
Keras layer names and the checkpoint's name appear only as `ascii()` literals. The source is
parsed, compiled and token-checked before anything is written (`_checked`)."""

from __future__ import annotations

import inspect
import io
import keyword
import math
import re
import tokenize
from pathlib import Path

import torch

from parity.build import Built, identifier
from parity.layers.modules import (
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


def _float(value: float) -> str:
    """A float literal (configs are checked finite where they are parsed; never nan/inf here)."""
    if not math.isfinite(value):
        raise AssertionError(f"a non-finite value {value!r} reached the generated source")
    return repr(float(value))


def _helper_call(module: torch.nn.Module) -> str:
    args = {
        AvgPool2dSame: lambda m: f"{m.kernel_size}, {m.stride}, {m.pad}",
        GlobalPool2d: lambda m: f"{m.mode!r}, {m.keepdims}",
        Exponential: lambda m: "",
        Rescale: lambda m: f"{_float(m.scale)}, {_float(m.offset)}",
        KerasReshape: lambda m: f"{m.target}, {m.image_in}",
        FlattenHWC: lambda m: "",
    }[type(module)](module)
    return f"{type(module).__name__}({args})"


def _checked(text: str, where: str) -> str:
    """The generated file, refused unless it parses and compiles, every name in it is a plain
    ASCII identifier and every comment printable ASCII: text from a file can only have reached
    it as an `ascii()` literal."""
    compile(text, where, "exec")
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.NAME and not (tok.string.isascii() and tok.string.isidentifier()):
            raise AssertionError(f"generated source holds the name {tok.string!r}")
        if tok.type == tokenize.COMMENT and not all(" " <= c <= "~" for c in tok.string):
            raise AssertionError(f"generated source holds the comment {tok.string!r}")
    return text


def class_name(path: Path) -> str:
    """A class name from a file name: letters, digits and underscores only (CamelCase), never a
    keyword, never starting with a digit; `PortedModel` when nothing of the name is left."""
    words = re.findall(r"[A-Za-z0-9]+", path.stem)
    name = "".join(w[:1].upper() + w[1:] for w in words)
    if not name or keyword.iskeyword(name) or not name.isidentifier():
        return "PortedModel"
    return name if name[0].isalpha() else f"Model{name}"


def module_source(built: Built, class_name: str, origin: str) -> str:
    """A Python file: the helper modules it needs, then one class with its layers in __init__
    and `forward` with a shape comment per line. Names from the file (the layers', the
    checkpoint's) appear only as `ascii()` literals in KERAS_LAYERS and SOURCE."""
    if not (class_name.isascii() and class_name.isidentifier()) or keyword.iskeyword(class_name):
        raise AssertionError(f"not a class name: {class_name!r}")
    module = built.module
    shape = built.spec.input_shape
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
    lines = [
        f'"""{class_name}: a Keras model ported by `python -m parity.port`.',
        "",
        "Input: "
        + (f"NCHW images {torch_shape(shape)}" if len(shape) == 3 else f"{torch_shape(shape)}")
        + "; the output is what the Keras model outputs.",
        "KERAS_LAYERS lists the Keras layer (name, class) each module comes from.",
        '"""',
        "",
        "import torch",
        *(["import torch.nn.functional as F"] if AvgPool2dSame in helpers else []),
        "from torch import nn",
        "",
        f"SOURCE = {ascii(origin)}  # the checkpoint this module was ported from",
        "KERAS_LAYERS = (  # (Keras layer name, class, the modules it became)",
        *(f"    ({ascii(i.name)}, {ascii(i.class_name)}, {tuple(i.modules)!r}),"
          for i in built.layers),
        ")",
        "",
    ]
    for helper in helpers:
        lines += ["", inspect.getsource(helper), ""]
    lines += ["", f"class {class_name}(nn.Module):", "    def __init__(self) -> None:",
              "        super().__init__()"]
    for name, m in module.named_children():
        expr = _helper_call(m) if isinstance(m, _HELPERS) else _constructor(m)
        lines.append(f"        self.{name} = {expr}")
    lines += ["", "    def forward(self, x: torch.Tensor) -> torch.Tensor:",
              *_forward(built, shapes)]
    text = re.sub(r"\n{4,}", "\n\n\n", "\n".join(lines))
    return _checked(text, "<generated module>")


def _forward(built: Built, shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """`forward`'s body: one line per module with its output's shape. A chain passes `x` along;
    a graph names each layer's output after it (`block1_conv1`), so that a branch and a merge
    read as they do in the Keras model (`add = self.add(block2_conv, shortcut)`)."""
    module = built.module
    if built.spec.graph.is_chain:
        lines = []
        for name, _ in module.named_children():
            dims = ", ".join(map(str, shapes[name][1:]))
            lines.append(f"        x = self.{name}(x)  # (N, {dims})")
        return [*lines, "        return x", ""]
    taken = {"x", "self", "torch", "nn", "F"} | {n for n, _ in module.named_children()}
    var = {built.spec.graph.input_name: "x"}
    lines = []
    for info in built.layers:
        args = ", ".join(var[i] for i in info.inputs)
        if not info.modules:  # the identity here (a linear Activation)
            (var[info.name],) = [var[i] for i in info.inputs]
            continue
        out = var[info.name] = identifier(f"{info.modules[0]}_out", taken) if info.modules[
            0] in taken else identifier(info.modules[0], taken)
        for k, name in enumerate(info.modules):
            dims = ", ".join(map(str, shapes[name][1:]))
            lines.append(f"        {out} = self.{name}({args if k == 0 else out})  # (N, {dims})")
    return [*lines, f"        return {var[built.spec.graph.output]}", ""]


def write_module_py(dst: Path, text: str, *, force: bool = False) -> Path:
    """Write a source made by `module_source` (already parsed and checked), atomically."""
    from fashion_cnn.files import atomic_write

    return atomic_write(dst, lambda tmp: tmp.write_text(text), force=force)
