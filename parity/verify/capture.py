"""The PyTorch side of the check: every probe's output (`parity.verify.probes`) computed by a
built module, read with forward hooks on the modules that make them, in Keras's layout — the
one per-layer capture that `check`, `port`, `visualize` and the tests share."""

from __future__ import annotations

import numpy as np
import torch

from parity.build import Built, LayerInfo, to_keras_layout
from parity.verify.probes import probes


def torch_input(images: np.ndarray) -> torch.Tensor:
    """Keras-layout images (NHWC) as the module takes them (NCHW)."""
    return torch.from_numpy(
        np.ascontiguousarray(images.transpose(0, 3, 1, 2) if images.ndim == 4 else images)
    )


def device_of(module: torch.nn.Module) -> torch.device:
    tensor = next(iter(module.state_dict().values()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


INPUT = "\0input"  # the model's input, which no module is named


class Outputs(list):
    """Each probe's output (Keras layout), and `scales`: for a probe of a layer with a fused
    activation, each image's largest |value| before that activation (else None) — the
    magnitude its error is in proportion to, where the activation squashes it (a sigmoid
    gate's inputs reach ±15 in EfficientNetV2, its outputs stay below 1)."""

    scales: list[np.ndarray | None]


@torch.no_grad()
def layer_outputs(built: Built, images: np.ndarray, start: int = 0,
                  stop: int | None = None) -> Outputs:
    """Each probe's output computed by the module (Keras layout), for one batch of images;
    the probes [start, stop) only (the others are not kept)."""
    module = built.module
    infos = {info.name: info for info in built.layers}
    wanted: set[str] = set()
    sources: list[tuple[str, LayerInfo, str | None]] = []
    for probe in probes(built.spec)[start:stop]:
        info = infos[probe.node]
        name = _source(info, probe.pre, infos, module.input_name)
        pre = info.pre_activation if not probe.pre and name in info.modules else None
        sources.append((name, info, pre))
        wanted.update(n for n in (name, pre) if n)
    captured: dict[str, torch.Tensor] = {}
    hooks = [
        getattr(module, name).register_forward_hook(
            lambda _m, _i, o, n=name: captured.__setitem__(n, o))
        for name in wanted if name != INPUT
    ]
    try:
        x = torch_input(images).to(device_of(module))
        captured[INPUT] = x
        module(x)
    finally:
        for h in hooks:
            h.remove()
    out = Outputs(to_keras_layout(info, captured[name].cpu().numpy())
                  for name, info, _ in sources)
    out.scales = [_largest(captured[pre]) if pre else None for _, _, pre in sources]
    return out


def _largest(t: torch.Tensor) -> np.ndarray:
    """Each image's largest finite |value|."""
    a = t.detach().abs().reshape(len(t), -1)
    a = torch.where(torch.isfinite(a), a, torch.zeros((), dtype=a.dtype, device=a.device))
    return (a.amax(dim=1) if a.shape[1] else torch.zeros(len(t))).cpu().numpy()


def _source(info: LayerInfo, pre: bool, infos: dict[str, LayerInfo], input_name: str) -> str:
    """The module whose output is this probe's value: the layer's last module (the one before
    its activation for `pre`); a layer with no module gives its input's value."""
    while True:
        if pre and info.pre_activation is not None:
            return info.pre_activation
        if info.modules:
            return info.modules[-1]
        (taken,) = info.inputs
        if taken == input_name:
            return INPUT
        info, pre = infos[taken], False
