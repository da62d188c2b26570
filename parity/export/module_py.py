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
    ChannelLayerNorm,
    ChannelLinear,
    Concat,
    Crop2d,
    Exponential,
    FlattenHWC,
    GlobalPool2d,
    KerasReshape,
    Merge,
    Normalize,
    NormalizeAdapted,
    Rescale,
    Scalar,
    Scale,
    ScaledSum,
)
from parity.training import KerasBatchNorm1d, KerasBatchNorm2d, KerasDropout, _KerasBatchNorm

_HELPERS = (AvgPool2dSame, GlobalPool2d, Exponential, Rescale, KerasReshape, FlattenHWC, Crop2d,
            ChannelLinear, ChannelLayerNorm, Normalize, NormalizeAdapted, Scale)
_USE_F = (AvgPool2dSame, ChannelLinear, ChannelLayerNorm)  # helpers whose source calls F.…


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
    if isinstance(module, KerasDropout):  # parity.keras_training's, in the file
        return f"KerasDropout({_float(module.p)}, {module.noise_shape!r})"
    if type(module).__name__ == "StochasticDepth":  # torchvision's; its repr is not Python
        return f"StochasticDepth({_float(module.p)}, {module.mode!r})"
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        ours = isinstance(module, _KerasBatchNorm)  # ours, in the file
        frozen = ", trainable=False" if ours and not module.trainable else ""
        return (f"{'' if ours else 'nn.'}{type(module).__name__}({module.num_features}, "
                f"eps={module.eps!r}, momentum={module.momentum!r}, affine={module.affine}"
                f"{frozen})")
    return f"nn.{module!r}"


def _float(value: float) -> str:
    """A float literal (configs are checked finite where they are parsed; never nan/inf here)."""
    if not math.isfinite(value):
        raise AssertionError(f"a non-finite value {value!r} reached the generated source")
    return repr(float(value))


def _floats(value) -> str:
    """A float literal, or a tuple of them."""
    if isinstance(value, tuple):
        return f"({', '.join(map(_float, value))},)"
    return _float(value)


def _helper_call(module: torch.nn.Module) -> str:
    args = {
        AvgPool2dSame: lambda m: f"{m.kernel_size}, {m.stride}, {m.pad}",
        GlobalPool2d: lambda m: f"{m.mode!r}, {m.keepdims}",
        Exponential: lambda m: "",
        Rescale: lambda m: f"{_floats(m.scale)}, {_floats(m.offset)}",
        KerasReshape: lambda m: f"{m.target}, {m.image_in}",
        FlattenHWC: lambda m: "",
        Crop2d: lambda m: f"{m.crop}",
        ChannelLinear: lambda m: f"{m.in_features}, {m.out_features}, bias={m.bias is not None}",
        ChannelLayerNorm: lambda m: (f"{m.channels}, {_float(m.eps)}, {m.weight is not None}, "
                                     f"{m.bias is not None}"),
        Normalize: lambda m: (f"({', '.join(map(_float, m.mean))},), "
                              f"({', '.join(map(_float, m.variance))},), {m.invert}"),
        Scale: lambda m: f"{m.gamma.shape[0]}",
        NormalizeAdapted: lambda m: f"{m.mean.shape[0]}, {m.invert}",
    }[type(module)](module)
    return f"{type(module).__name__}({args})"


def _layer_entry(info) -> list[str]:
    """One KERAS_LAYERS entry: a line, or one line per field where that would pass LINE (a
    field longer than a line — a file's own name for a layer — is marked for the linter)."""
    fields = [ascii(info.name), ascii(info.class_name), repr(tuple(info.modules))]
    line = f"    ({', '.join(fields)}),"
    if len(line) <= LINE:
        return [line]
    return ["    (", *(f"        {f}," + ("  # noqa: E501" if len(f) + 9 > LINE else "")
                      for f in fields), "    ),"]


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
    keras_bn = [c for c in (KerasBatchNorm1d, KerasBatchNorm2d)
                if any(type(m) is c for m in module.children())]  # parity.keras_training's
    if keras_bn:
        helpers = [*helpers, _KerasBatchNorm, *keras_bn]
    if any(type(m) is KerasDropout for m in module.children()):
        helpers = [*helpers, KerasDropout]
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
        *(["import torch.nn.functional as F"] if set(helpers) & {*_USE_F, _KerasBatchNorm}
          else []),
        "from torch import nn",
        *(["from torchvision.ops import StochasticDepth"]
          if any(type(m).__name__ == "StochasticDepth" for m in module.children()) else []),
        "",
        f"SOURCE = {ascii(origin)}  # the checkpoint this module was ported from",
        "KERAS_LAYERS = (  # (Keras layer name, class, the modules it became)",
        *(line for i in built.layers for line in _layer_entry(i)),
        ")",
        "",
    ]
    for helper in helpers:
        lines += ["", inspect.getsource(helper), ""]
    lines += ["", f"class {class_name}(nn.Module):", "    def __init__(self) -> None:",
              "        super().__init__()"]
    for name, m in module.named_children():
        if _inline(m, ["x"] * (1 if isinstance(m, Scalar) else 2)) is not None:
            continue  # written in forward as the expression it is
        expr = _helper_call(m) if isinstance(m, _HELPERS) else _constructor(m)
        lines += _wrapped("        ", f"self.{name}", expr)
    lines += _no_grad(module)
    lines += ["", "    def forward(self, x: torch.Tensor) -> torch.Tensor:",
              *_forward(built, shapes)]
    # a line our wrapping cannot bring within LINE (two long layer names on one line)
    lines = [f"{line}  # noqa: E501" if len(line) > LINE and "#" not in line else line
             for line in "\n".join(lines).split("\n")]
    text = re.sub(r"\n{4,}", "\n\n\n", "\n".join(lines))
    return _checked(text, "<generated module>")


def _no_grad(module: torch.nn.Module) -> list[str]:
    """`__init__`'s lines that turn `requires_grad` off where the port has it off: a frozen
    Keras layer's modules (`self.conv1.requires_grad_(False)`), a parameter Keras lacks
    (`self.bn1.bias.requires_grad_(False)`). Names: our modules', torch's parameters'."""
    lines = []
    for name, child in module.named_children():
        params = dict(child.named_parameters())
        off = [p for p, t in params.items() if not t.requires_grad]
        if off and len(off) == len(params):
            lines.append(f"        self.{name}.requires_grad_(False)  # frozen in Keras")
        else:
            lines += [f"        self.{name}.{p}.requires_grad_(False)" for p in off]
    return lines


_SYMBOLS = {"add": "+", "subtract": "-", "multiply": "*", "divide": "/"}
LINE = 100  # the generated file's line length (ruff's, as this project sets it)


def _number(value: float) -> str:
    """A float32 number as its shortest literal (0.3, not 0.30000001192092896): PyTorch turns
    it into the same float32 when it meets a float32 tensor."""
    import numpy as np

    text = str(np.float32(_float(value)))
    return text if float(np.float32(float(text))) == float(np.float32(value)) else repr(value)


def _inline(m: torch.nn.Module, args: list[str]) -> str | None:
    """The expression a stateless merge or operation reads as (`x + shortcut`, `x * 0.5`,
    `torch.cat([a, b], dim=1)`), or None for a module called as `self.name(x)`."""
    if isinstance(m, Scalar):
        c, (x,) = _number(m.value), args
        if m.op in _SYMBOLS:
            return f"{c} {_SYMBOLS[m.op]} {x}" if m.first else f"{x} {_SYMBOLS[m.op]} {c}"
        return None
    if isinstance(m, ScaledSum):  # InceptionResNetV2's x + r · scale
        return f"{args[0]} + {args[1]} * {_number(m.scale)}"
    if isinstance(m, Concat):
        return f"torch.cat([{', '.join(args)}], dim={m.dim})"
    if isinstance(m, Merge):
        if m.op in _SYMBOLS:
            return f" {_SYMBOLS[m.op]} ".join(args)
        if m.op == "average":
            return f"({' + '.join(args)}) / {len(args)}"
        out = args[0]
        for a in args[1:]:
            out = f"torch.{m.op}({out}, {a})"
        return out
    return None


def _split_args(text: str) -> list[str]:
    """A call's argument text split at its top-level commas (brackets and quotes respected)."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote and text[i - 1] != "\\" else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return [p for p in parts if p]


def _wrapped(indent: str, target: str, expr: str) -> list[str]:
    """`target = expr`, its call's arguments one per line where it would pass LINE (a list
    argument's items too: `torch.cat([...], dim=1)`)."""
    line = f"{indent}{target} = {expr}"
    if len(line) <= LINE or not expr.endswith(")") or "(" not in expr:
        return [line]
    head, inner = expr[: expr.index("(")], expr[expr.index("(") + 1 : -1]
    args = _split_args(inner)
    if len(args) == 1 and args[0].startswith("[") and args[0].endswith("]"):
        return [f"{indent}{target} = {head}([",
                *(f"{indent}    {a}," for a in _split_args(args[0][1:-1])), f"{indent}])"]
    if args and args[0].startswith("[") and args[0].endswith("]"):
        return [f"{indent}{target} = {head}(",
                f"{indent}    [", *(f"{indent}        {a}," for a in _split_args(args[0][1:-1])),
                f"{indent}    ],", *(f"{indent}    {a}," for a in args[1:]), f"{indent})"]
    return [f"{indent}{target} = {head}(", *(f"{indent}    {a}," for a in args), f"{indent})"]


def _statement(target: str, expr: str, shape: tuple[int, ...]) -> list[str]:
    """`target = expr  # (N, C, H, W)`, the comment above where the line would be too long,
    and a long call's arguments one per line."""
    comment = f"# (N, {', '.join(map(str, shape[1:]))})"
    line = f"        {target} = {expr}"
    if len(line) + 2 + len(comment) <= LINE:
        return [f"{line}  {comment}"]
    return [f"        {comment}", *_wrapped("        ", target, expr)]


def _forward(built: Built, shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """`forward`'s body: one line per module with its output's shape, a merge or an operation
    as the expression it is (`x = x + shortcut`). `x` is passed along while a tensor goes
    straight on to the next layer and nowhere else; a tensor that branches, or that a later
    layer takes, is named after its Keras layer (`block1_conv1`), so that branches and merges
    read as they do in the Keras model."""
    module, graph = built.module, built.spec.graph
    children = dict(module.named_children())
    order = [info.name for info in built.layers]
    consumers: dict[str, list[str]] = {}
    for info in built.layers:
        for i in info.inputs:
            consumers.setdefault(i, []).append(info.name)
    last_use = {t: max(order.index(u) for u in us) for t, us in consumers.items()}
    taken = {"x", "self", "torch", "nn", "F"}
    var = {graph.input_name: "x"}
    in_x = [graph.input_name]  # the tensors `x` holds now (an identity layer adds a name)
    lines = []
    for k, info in enumerate(built.layers):
        args = [var[i] for i in info.inputs]
        if not info.modules:  # the identity here (a linear Activation)
            var[info.name] = args[0]
            if args[0] == "x":
                in_x.append(info.name)
            continue
        users = consumers.get(info.name, [])
        follows = k + 1 < len(order) and users == [order[k + 1]]
        x_free = all(last_use.get(t, -1) <= k for t in in_x)  # nothing later reads x's tensor
        reuse = x_free and (follows or graph.is_chain or (info.name == graph.output and not users))
        out = var[info.name] = "x" if reuse else identifier(info.name, taken)
        if reuse:
            in_x = [info.name]
        for j, name in enumerate(info.modules):
            m = children[name]
            given = args if j == 0 else [out]
            expr = _inline(m, given) or f"self.{name}({', '.join(given)})"
            lines += _statement(out, expr, shapes[name])
    return [*lines, f"        return {var[graph.output]}", ""]


def write_module_py(dst: Path, text: str, *, force: bool = False) -> Path:
    """Write a source made by `module_source` (already parsed and checked), atomically."""
    from fashion_cnn.files import atomic_write

    return atomic_write(dst, lambda tmp: tmp.write_text(text), force=force)
