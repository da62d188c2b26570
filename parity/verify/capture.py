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


@torch.no_grad()
def layer_outputs(built: Built, images: np.ndarray) -> list[np.ndarray]:
    """Each probe's output computed by the module (Keras layout), for one batch of images."""
    module = built.module
    infos = {info.name: info for info in built.layers}
    wanted: dict[str, str] = {}  # module name → what it gives
    sources: list[tuple[str, LayerInfo]] = []
    for probe in probes(built.spec):
        info = infos[probe.node]
        name = _source(info, probe.pre, infos, module.input_name)
        sources.append((name, info))
        wanted[name] = name
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
    return [to_keras_layout(info, captured[name].cpu().numpy()) for name, info in sources]


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
