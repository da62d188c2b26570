"""The one port path, for every model (the book's CNN is one): read → build → verify → write.

- `read_source(path)`: any supported file → its checked spec, the rebuilt PyTorch module and
  its weights (`parity.formats`);
- `verify(source, images, batch)`: both sides on the same images, a batch at a time, every
  Keras layer compared in Keras's layout (`parity.verify`): Keras itself from the port's own
  arrays, or its numpy reference, against the module read with hooks;
- `port(src, dst)`: read, verify, refuse to write unless every layer agrees, write DST (and
  the module's source);
- `check(keras_file, torch_file)`: the report of `parity.check`;
- `load_torch_model(path)`: any file → `nn.Module`.
"""

from __future__ import annotations

import gc
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fashion_cnn.errors import UserError, one_line
from fashion_cnn.progress import NO_PROGRESS, Progress
from parity import book
from parity.build import Built, ModuleWeights, build, keras_to_torch
from parity.formats import keras_kind, read_keras, write_keras
from parity.formats.torch_files import read_torch, save_torch_model
from parity.reference.keras_live import keras_reference
from parity.spec import Spec
from parity.verify.capture import device_of, layer_outputs, torch_input
from parity.verify.compare import RULE, LayerDiff
from parity.verify.layerwise import Images, Plan, compare_layerwise, compare_outputs, plan
from parity.verify.probes import probes
from parity.verify.report import check_report

FASHION_SHAPE = (28, 28, 1)
DEFAULT_SAMPLES = 1000  # test images a port or check compares layer by layer, where affordable
TEST_IMAGES = 10_000  # the whole test set, for parity.check's prediction agreement


@dataclass
class Source:
    """A model read from any supported file: its checked spec, rebuilt module and weights.

    A Keras file's weights stay in Keras layout (numpy) until `load_module` moves them into the
    module; from then on `weights` computes the Keras layout from the module on access. The port
    builds its Keras reference before that move, so that the file's tensors, TensorFlow's
    variables and the module's are never all held at once with TensorFlow's transient copies."""

    spec: Spec
    built: Built
    weights: Mapping[str, np.ndarray]
    layout: str
    path: str = ""

    def load_module(self) -> None:
        """Move the weights into the module (eval mode); a no-op once it holds them."""
        if isinstance(self.weights, ModuleWeights):
            return
        state = keras_to_torch(self.built, self.weights, self.path, consume=True)
        self.built.module.load_state_dict(state, assign=True)
        self.built.module.eval()
        self.weights = ModuleWeights(self.built)  # the numpy arrays are freed here


def read_source(
    path: Path, *, config: Path | None = None, allow_nonfinite: bool = False, module: bool = True
) -> Source:
    """Any supported file (a `.weights.h5` with `config`, or as the book's CNN) → Source; with
    `module=False` a Keras file's weights are left in Keras layout (`load_module` later)."""
    path = Path(path)
    source = str(path)
    if keras_kind(path) is None:
        built = read_torch(path, allow_nonfinite=allow_nonfinite)  # fixed values checked there
        layout = ("PyTorch state_dict (the book's CNN)" if book.is_book(built.spec)
                  else "PyTorch state_dict + architecture")
        return Source(built.spec, built, ModuleWeights(built), layout, source)
    found = read_keras(path, config=config, allow_nonfinite=allow_nonfinite)
    layout = found.layout + (f" + {config.name}" if config is not None else "")
    read = Source(found.spec, build(found.spec, source), found.weights, layout, source)
    if module:
        read.load_module()
    return read


def images_for(shape: tuple[int, ...], n: int, data_dir: str | None) -> Images:
    """Test images of the model's input shape (Keras layout), made a batch at a time."""
    if math.prod(shape) == math.prod(FASHION_SHAPE):
        images, labels = load_test_images(data_dir)
        return Images(shape, n, images, f"{min(n, len(images))} Fashion-MNIST test images",
                      labels)
    return Images(shape, n, None, f"{n} seeded uniform [0, 1) images of shape {shape} "
                                  f"(Fashion-MNIST does not fit it)")


def load_test_images(data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The real 10,000 test images, scaled as the book scales them (NHWC float32), and labels."""
    from fashion_cnn.fashion_mnist import load_data

    _, (test_input, test_target) = load_data(data_dir)
    images = (test_input.reshape(-1, 28, 28, 1) / 255.0).astype(np.float32)
    return images, test_target.astype(np.int64)


@dataclass
class Agreement:
    """What `port`'s check before writing found."""

    samples: int
    images: str
    layers: list[LayerDiff]
    max_abs: float  # of the model's output
    agreeing: int | None  # predictions agreeing (2-D outputs)
    passed: bool
    keras_side: str
    nonfinite: int = 0  # images left out: NaN/Inf outputs (only with allow_nonfinite)
    ties: int = 0  # predictions that differ only by a tie within ATOL (not disagreements)
    note: str = ""  # why fewer images were compared than by default
    optimizer: str = ""  # the optimizer state ported beside the weights (--with-optimizer)


def check_plan(src: Source, samples: int | None, default: int) -> Plan:
    """The images the check compares, in batches its byte budget affords."""
    weight_bytes = sum(4 * math.prod(r.keras_shape) for r in src.built.rows)
    shape = {ns.node.name: ns.out.shape for ns in src.spec.nodes}
    shapes = [shape[p.node] for p in probes(src.spec)]  # what each probe holds
    return plan(src.spec.input_shape, shapes, weight_bytes, samples, default, src.path)


def verify(src: Source, images: Images, batch: int, *, allow_nonfinite: bool = False,
           groups: tuple[tuple[int, int], ...] = (),
           progress: Progress = NO_PROGRESS) -> Agreement:
    """Both sides on the same images, every layer compared in Keras's layout, a batch at a time.

    With `allow_nonfinite`, images with a NaN/Inf output in any layer on either side are left
    out (the frameworks propagate NaN differently, e.g. through max pooling) and counted.
    `progress` is told of the stages "building" and "checking", and of each batch checked."""
    progress.stage("building")
    keras_side = keras_reference(src.spec, src.weights, src.path)
    src.load_module()
    names = [one_line(p.label) for p in probes(src.spec)]
    progress.stage("checking")
    with progress.samples(len(images), "checking") as tick:
        found = compare_layerwise(
            names, keras_side.outputs, lambda x, a, b: layer_outputs(src.built, x, a, b), images,
            batch, allow_nonfinite=allow_nonfinite, groups=groups, tick=tick,
        )
    description = keras_side.description
    del keras_side
    gc.collect()  # a Keras model sits in reference cycles: free its variables before writing
    passed = all(d.passed for d in found.layers) and found.real == 0
    return Agreement(found.compared, images.description, found.layers, found.output.max_abs,
                     found.agreeing, passed, description, found.nonfinite, found.ties)


def port(
    src: Path, dst: Path, *, force: bool = False, allow_nonfinite: bool = False,
    samples: int | None = None, data_dir: str | None = None, config: Path | None = None,
    module_py: Path | None = None, with_optimizer: bool = False, keras_training: bool = False,
    progress: Progress = NO_PROGRESS,
) -> tuple[Source, Agreement]:
    """Read SRC, check both sides layer by layer on real test images, write DST (and
    `module_py`). `samples`: the images both sides must agree on (None: DEFAULT_SAMPLES, fewer
    where the model's activations would exceed the check's budget, said in the result's note).
    `with_optimizer`: SRC's optimizer state crosses too (`parity.training_files`), read and
    checked before anything else is done; the result's `optimizer` says what it was.
    `keras_training`: `module_py`'s BatchNormalizations train as Keras's (`parity.training`).
    `progress` is told of each stage (`fashion_cnn.progress.PORT_STAGES`) and batch checked."""
    from parity.export.module_py import class_name, module_source, write_module_py

    progress.stage("reading")
    source = read_source(src, config=config, allow_nonfinite=allow_nonfinite, module=False)
    state = None
    if with_optimizer:  # loaded only then: it loads torch._dynamo (parity.training_files)
        from parity.training_files import read_state

        state = read_state(source.built, Path(src))
    check_ = check_plan(source, samples, DEFAULT_SAMPLES)
    images = images_for(source.spec.input_shape, check_.samples, data_dir)
    result = verify(source, images, check_.batch, allow_nonfinite=allow_nonfinite,
                    groups=check_.groups, progress=progress)
    result.note = check_.note
    if not result.passed:
        bad = next((d for d in result.layers if not d.passed), result.layers[-1])
        raise UserError(
            f"{src}: refused to write {dst}: the two models disagree on {images.description} "
            f"(first at {one_line(bad.name)}: max |diff| {bad.max_abs:.3e}, {bad.used:.3g} times "
            f"the tolerance {RULE})"
        )
    # The module's source is made and checked before any file is written: a name it cannot
    # take refuses the port with DST untouched.
    progress.stage("writing")
    text = None
    if module_py is not None:
        if keras_training:  # after the check: inference and the state_dict are the same
            from parity.training import keras_training as to_keras_training

            to_keras_training(source.built.module)
        text = module_source(source.built, class_name(module_py), Path(src).name)
    if state is not None:
        from parity.training_files import write_state

        write_state(source.built, state, Path(dst), source.weights, force=force)
        result.optimizer = (f"{state.spec.class_name}, {state.iterations} iterations, "
                            f"{len(state.variables)} variables")
    elif keras_kind(dst) is not None:
        write_keras(dst, source.spec, source.weights, force=force)
    else:
        save_torch_model(source.built.module, dst, force=force)
    if module_py is not None and text is not None:
        write_module_py(module_py, text, force=force)
    return source, result


def check(
    keras_file: Path, torch_file: Path, *, samples: int | None, test_images: int | None,
    data_dir: str | None = None, config: Path | None = None,
    device: torch.device | str = "cpu", progress: Progress = NO_PROGRESS,
) -> dict:
    """`parity.check`: the Keras file's model (built from its checked config) against the
    PyTorch file's module (on `device`), layer by layer, then predictions (and, on Fashion-MNIST,
    accuracy) on the test set. None for `samples` / `test_images`: as many as the check's budget
    affords, up to DEFAULT_SAMPLES and TEST_IMAGES. `progress` is told of each stage
    (`fashion_cnn.progress.CHECK_STAGES`) and batch checked."""
    progress.stage("reading")
    keras_src = read_source(keras_file, config=config, module=False)
    torch_src = read_source(torch_file)
    module = torch_src.built.module.to(device)
    k_layers = [(i.class_name, i.shape) for i in keras_src.built.layers]
    t_layers = [(i.class_name, i.shape) for i in torch_src.built.layers]
    if k_layers != t_layers:
        raise UserError(
            f"{torch_file}: not the architecture of {keras_file} "
            f"({len(t_layers)} vs {len(k_layers)} layers, or other shapes)"
        )
    plan_ = check_plan(keras_src, samples, DEFAULT_SAMPLES)
    if test_images is None:  # the whole test set, or ten times the layer report's images
        test_images = TEST_IMAGES if not plan_.note else min(TEST_IMAGES, 10 * plan_.samples)
    images = images_for(keras_src.spec.input_shape, test_images, data_dir)
    progress.stage("building")
    keras_side = keras_reference(keras_src.spec, keras_src.weights, keras_src.path)
    is_book = book.is_book(keras_src.spec)
    del keras_src  # its weights now live in the reference
    names = [one_line(p.label) for p in probes(torch_src.spec)]
    layer_images = images.first(plan_.samples)
    progress.stage("checking layers")
    with progress.samples(len(layer_images), "layers") as tick:
        found = compare_layerwise(
            names, keras_side.outputs, lambda x, a, b: layer_outputs(torch_src.built, x, a, b),
            layer_images, plan_.batch, groups=plan_.groups, tick=tick,
        )

    @torch.no_grad()
    def torch_final(x: np.ndarray) -> np.ndarray:
        return module(torch_input(x).to(device)).cpu().numpy()

    progress.stage("checking predictions")
    with progress.samples(len(images), "predictions") as tick:
        outputs, agree = compare_outputs(keras_side.final, torch_final, images, plan_.batch,
                                         tick=tick)
    sides = (keras_side.description, f"torch {torch.__version__} on {device}")
    kinds = {ns.node.name: ns.node.class_name.rsplit(".", 1)[-1] for ns in torch_src.spec.nodes}
    classes = {one_line(p.label): kinds[p.node] for p in probes(torch_src.spec)}
    return check_report((keras_file, torch_file), sides, min(plan_.samples, len(images)),
                        found.layers, outputs, agree, images, plan_.note, is_book, classes)


def load_torch_model(
    path: str | os.PathLike, *, allow_nonfinite: bool = False, keras_training: bool = False,
) -> nn.Module:
    """Any supported file → `nn.Module` in eval mode with its weights loaded; with
    `keras_training`, its BatchNormalizations train as Keras's (`parity.training`).

    `.keras` / `.h5`: the module built from the file's Keras config. `.pt` / `.pth` /
    `.safetensors` written by this port: rebuilt from the architecture they carry; a plain
    state_dict of the book's CNN: the book's module. Images are NCHW (an (H, W) Keras input
    stays (N, H, W)); the outputs are what Keras outputs (probabilities after a softmax).
    """
    kind = keras_kind(path)
    if kind == "weights.h5":
        raise UserError(f"{path}: a .weights.h5 holds no architecture; use the .keras or .h5")
    module = read_source(Path(path), allow_nonfinite=allow_nonfinite).built.module
    if keras_training:
        from parity.training import keras_training as to_keras_training

        to_keras_training(module)
    return module


def load_into(model: nn.Module, path: str | os.PathLike, *, allow_nonfinite: bool = False):
    """Load any supported checkpoint into an existing module of the same architecture (a
    `BookCNN`, say). Everything is read and checked first — the file, then its state_dict
    against the model's keys and shapes; the model is assigned only then, so a failed load
    leaves it untouched."""
    from fashion_cnn.validate import check_tensors

    state = read_source(Path(path), allow_nonfinite=allow_nonfinite).built.module.state_dict()
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    check_tensors(state, want, str(path), shape_of=lambda t: tuple(t.shape),
                  what=f"not a {type(model).__name__}: ")
    model.load_state_dict(state)
    return model


__all__ = ["Agreement", "Source", "check", "device_of", "load_into", "load_torch_model", "port",
           "read_source", "verify"]
