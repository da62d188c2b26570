"""Merges: Keras's merge layers (`Add`, `Subtract`, `Multiply`, `Average`, `Maximum`, `Minimum`,
`Concatenate`) and its operation nodes on tensors and numbers (`x + 3.0`, `x * (1/6)`, `x + y`,
which a Functional config records as `keras.src.ops.numpy.Add` … rather than as layers).

Shapes broadcast as Keras broadcasts them: the same rank, each axis equal or 1 (a squeeze-excite
(1, 1, C) gate times an (H, W, C) map). Maps are compared and combined in PyTorch's NCHW, the
same permutation applied to every input, so broadcasting is the same. The order of the sums is
Keras's: a left fold over the inputs (`keras/src/layers/merging/add.py` and its siblings), the
mean a sum divided by the count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fashion_cnn.errors import UserError
from parity.ir.graph import Const
from parity.layers.registry import Converted, Entry, In, Out, register

# each elementwise op on float32 arrays (the PyTorch side: parity.layers.modules.Merge)
FOLDS = {
    "add": np.add, "subtract": np.subtract, "multiply": np.multiply, "maximum": np.maximum,
    "minimum": np.minimum, "divide": np.divide,
}


def broadcast(shapes: Sequence[tuple[int, ...]], where: str) -> tuple[int, ...]:
    """Keras's elementwise output shape: one rank, each axis equal or 1."""
    if len({len(s) for s in shapes}) != 1:
        raise UserError(f"{where}: inputs of shapes {list(shapes)} differ in rank; only inputs "
                        f"of one rank are supported")
    out = []
    for sizes in zip(*shapes, strict=True):
        big = {s for s in sizes if s != 1}
        if len(big) > 1:
            raise UserError(f"{where}: inputs of shapes {list(shapes)} do not broadcast")
        out.append(big.pop() if big else 1)
    return tuple(out)


def _made(ins: Sequence[In]) -> None:
    """A merge takes tensors in one order: the spec's second pass makes every Flatten before
    a merge flatten in Keras's order (the first pass may still see one pending)."""
    if any(i.flat_from for i in ins):
        raise AssertionError("a merge of a pending flatten")


def _merge_inputs(ins: Sequence[In], where: str, exactly: int | None = None) -> tuple[int, ...]:
    if exactly is not None and len(ins) != exactly:
        raise UserError(f"{where}: takes {len(ins)} inputs; it takes exactly {exactly}")
    return broadcast([i.shape for i in ins], where)


class _Merge(Entry):
    """A merge layer: `op` folded left over two or more inputs."""

    op: str
    inputs = (2, 64)

    @classmethod
    def parse(cls, cfg: Mapping, where: str) -> str:
        return cls.op

    @staticmethod
    def infer(op: str, ins: Sequence[In], where: str) -> Out:
        return Out(_merge_inputs(ins, where, 2 if op == "subtract" else None))

    @staticmethod
    def to_torch(op: str, ins: Sequence[In], out: Out, where: str) -> Converted:
        from parity.layers.modules import Merge

        _made(ins)
        return Converted([(op, Merge(op))])

    @staticmethod
    def numpy(op: str, w: Mapping, xs: Sequence[np.ndarray]) -> np.ndarray:
        fold = FOLDS["add" if op == "average" else op]
        out = xs[0]
        for x in xs[1:]:
            out = fold(out, x)
        return out / np.float32(len(xs)) if op == "average" else out

    @classmethod
    def sample(cls, rng, inp: In) -> dict | None:
        return {}  # its config: none; the property test calls it on inp and a branch of inp


def _merge(kind: str, op: str) -> type[Entry]:
    return register(type(kind, (_Merge,), {"kind": kind, "op": op, "__doc__": f"keras.layers."
                                           f"{kind}: {op}, folded left over its inputs."}))


Add = _merge("Add", "add")
Subtract = _merge("Subtract", "subtract")
Multiply = _merge("Multiply", "multiply")
Average = _merge("Average", "average")
Maximum = _merge("Maximum", "maximum")
Minimum = _merge("Minimum", "minimum")


@register
class Concatenate(Entry):
    """keras.layers.Concatenate(axis): Keras's axis (of the batch-first NHWC tensor) → the same
    axis of PyTorch's NCHW tensor (C → 1, H → 2, W → 3)."""

    kind = "Concatenate"
    fields = ("axis",)
    inputs = (2, 64)

    @staticmethod
    def sample(rng, inp: In) -> dict | None:
        return {"axis": int(rng.choice([-1, *range(1, len(inp.shape) + 1)]))}

    @staticmethod
    def parse(cfg: Mapping, where: str) -> int:
        axis = cfg.get("axis", -1)
        if not isinstance(axis, int) or isinstance(axis, bool):
            raise UserError(f"{where}: axis={axis!r} is not an int")
        return axis

    @staticmethod
    def _axis(axis: int, rank: int, where: str) -> int:
        """The batch-free Keras axis (0 … rank−1)."""
        a = axis + rank + 1 if axis < 0 else axis
        if not 1 <= a <= rank:
            raise UserError(f"{where}: axis={axis} of a {rank + 1}-D input is not a feature axis")
        return a - 1

    @staticmethod
    def infer(axis: int, ins: Sequence[In], where: str) -> Out:
        rank = len(ins[0].shape)
        if any(len(i.shape) != rank for i in ins):
            raise UserError(f"{where}: inputs of shapes {[i.shape for i in ins]} differ in rank")
        a = Concatenate._axis(axis, rank, where)
        rest = {i.shape[:a] + i.shape[a + 1 :] for i in ins}
        if len(rest) != 1:
            raise UserError(f"{where}: inputs of shapes {[i.shape for i in ins]} differ off the "
                            f"concatenation axis")
        shape = list(ins[0].shape)
        shape[a] = sum(i.shape[a] for i in ins)
        return Out(tuple(shape))

    @staticmethod
    def to_torch(axis: int, ins: Sequence[In], out: Out, where: str) -> Converted:
        from parity.layers.modules import Concat

        _made(ins)
        rank = len(ins[0].shape)
        a = Concatenate._axis(axis, rank, where)
        dim = (1 + (a + 1) % 3) if rank == 3 else 1 + a  # H, W, C → 2, 3, 1
        return Converted([("concat", Concat(dim))])

    @staticmethod
    def numpy(axis: int, w: Mapping, xs: Sequence[np.ndarray]) -> np.ndarray:
        return np.concatenate(xs, axis=axis)  # numpy holds Keras's batch-first NHWC


# --- operation nodes: keras.ops on a tensor and a number, or on two tensors ---------------------


@dataclass(frozen=True)
class OpParams:
    op: str  # add, subtract, multiply, divide
    const: float | None  # the number, where one operand is a number
    const_first: bool  # `3.0 - x` rather than `x - 3.0`


class _Operation(Entry):
    """A keras.src.ops.numpy operation node: `x ⊕ c`, `c ⊕ x` or `x ⊕ y` (float32)."""

    op: str
    inputs = (1, 2)
    passes_flatten = True  # with a number: elementwise (two tensors: the order is made first)

    @classmethod
    def parse_call(cls, cfg: Mapping, operands: Sequence, where: str) -> OpParams:
        if len(operands) != 2:
            raise UserError(f"{where}: takes {len(operands)} operands; only 2 are supported")
        consts = [o for o in operands if isinstance(o, Const)]
        if len(consts) == 2:
            raise UserError(f"{where}: an operation on two numbers is not supported")
        if consts:
            return OpParams(cls.op, float(np.float32(consts[0].value)),
                            isinstance(operands[0], Const))
        return OpParams(cls.op, None, False)

    @classmethod
    def sample(cls, rng, inp: In) -> dict | None:
        """Not a config (an operation's is its name only): its call's number, and on which
        side it stands — or none, for an operation on inp and a branch of it."""
        pick = rng.integers(3)
        if pick == 2:
            return {} if cls.op != "divide" else None  # x / y near 0: no finite answer to check
        return {"value": float(rng.choice([3.0, 1.0 / 6.0, -0.5, 2.0])),
                "first": bool(pick) and cls.op != "divide"}

    @classmethod
    def parse(cls, cfg: Mapping, where: str) -> OpParams:
        raise AssertionError("an operation is parsed with its operands (parse_call)")

    @staticmethod
    def infer(p: OpParams, ins: Sequence[In], where: str) -> Out:
        if (p.const is None) != (len(ins) == 2):
            raise UserError(f"{where}: takes {len(ins)} tensors")
        if p.const is not None:
            return Out(ins[0].shape, flat_from=ins[0].flat_from)  # elementwise
        return Out(_merge_inputs(ins, where))

    @staticmethod
    def to_torch(p: OpParams, ins: Sequence[In], out: Out, where: str) -> Converted:
        from parity.layers.modules import Merge, Scalar

        if p.const is None:
            _made(ins)
            return Converted([(p.op, Merge(p.op))])
        return Converted([(p.op, Scalar(p.op, p.const, p.const_first))])

    @staticmethod
    def numpy(p: OpParams, w: Mapping, xs: Sequence[np.ndarray]) -> np.ndarray:
        fold = FOLDS[p.op]
        if p.const is None:
            return fold(xs[0], xs[1])
        c = np.float32(p.const)
        return fold(c, xs[0]) if p.const_first else fold(xs[0], c)


OPERATIONS = {"Add": "add", "Subtract": "subtract", "Multiply": "multiply",
              "TrueDivide": "divide"}
for _name, _op in OPERATIONS.items():
    register(type(f"Op{_name}", (_Operation,), {
        "kind": f"keras.src.ops.numpy.{_name}", "op": _op,
        "__doc__": f"keras.ops.{_op} on a tensor and a number, or on two tensors."}))
