"""`python -m parity.port` (every port: the book's CNN is one case) and `parity.check` for any
supported Keras chain: both sides run on the same images, every layer compared, a layer table,
a readable PyTorch source file.

The two sides that run are in `parity.reference.keras_live`: Keras (or, where it cannot be imported,
the numpy reference of its layers) and the PyTorch module.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fashion_cnn.errors import UserError, one_line
from fashion_cnn.hdf5 import open_h5
from parity.build import (
    Built,
    ModelSpec,
    ModuleWeights,
    build,
    keras_to_torch,
    parse_config,
)
from parity.export.module_py import class_name, module_source, write_module_py
from parity.formats.keras_read import _json, _read_keras3, check_finite, read_keras_model
from parity.formats.keras_write import write_keras_model
from parity.formats.torch_files import save_torch_model, torch_built
from parity.keras_spec import CONFIG_MEMBER, MAX_JSON_BYTES, keras_kind
from parity.reference.keras_live import keras_reference, torch_input, torch_layer_outputs
from parity.verify.compare import ATOL, LayerDiff, check_report
from parity.verify.layerwise import Images, Plan, compare_layerwise, compare_outputs, plan

FASHION_SHAPE = (28, 28, 1)
DEFAULT_SAMPLES = 1000  # test images a port or check compares layer by layer, where affordable
TEST_IMAGES = 10_000  # the whole test set, for parity.check's prediction agreement


@dataclass
class Source:
    """A model read from any supported file: its chain, rebuilt module and Keras weights.

    A Keras file's weights stay in Keras layout (numpy) until `load_module` moves them into the
    module; from then on `weights` computes the Keras layout from the module on access. The port
    builds its Keras reference before that move, so that the file's tensors, TensorFlow's
    variables and the module's are never all held at once with TensorFlow's transient copies."""

    spec: ModelSpec
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


def _config_from(path: Path) -> object:
    """`--config`: a `.keras` (its config.json) or a `.json` file."""
    import zipfile

    source = str(path)
    if not path.is_file():
        raise UserError(f"{source}: no such file")
    if keras_kind(path) == "keras":
        try:
            with zipfile.ZipFile(path) as zf:
                info = zf.getinfo(CONFIG_MEMBER)
                if info.file_size > MAX_JSON_BYTES:
                    raise UserError(
                        f"{source}: {CONFIG_MEMBER} is more than {MAX_JSON_BYTES} bytes"
                    )
                return _json(zf.read(CONFIG_MEMBER), CONFIG_MEMBER, source)
        except (zipfile.BadZipFile, KeyError) as err:
            raise UserError(f"{source}: no readable {CONFIG_MEMBER} ({err})") from None
    if path.suffix.lower() == ".json":
        if path.stat().st_size > MAX_JSON_BYTES:
            raise UserError(f"{source}: more than {MAX_JSON_BYTES} bytes")
        return _json(path.read_bytes(), "the config", source)
    raise UserError(f"{source}: --config takes a .keras or a .json file")


def read_source(
    path: Path, *, config: Path | None = None, allow_nonfinite: bool = False, module: bool = True
) -> Source:
    """Any supported file (a `.weights.h5` with `config`) → Source; with `module=False` a Keras
    file's weights are left in Keras layout (`Source.load_module` moves them later)."""
    source = str(path)
    kind = keras_kind(path)
    if kind is not None and config is None and not _holds_config(path, kind):
        read = _read_book_weights(path, allow_nonfinite)
    elif kind in ("keras", "h5") and config is None:
        model = read_keras_model(path, allow_nonfinite=allow_nonfinite)
        read = Source(model.spec, model.built, model.weights, model.layout, source)
    elif kind is not None:
        spec = parse_config(_config_from(config), str(config))
        built = build(spec, source)
        if not path.is_file():
            raise UserError(f"{source}: no such file")
        with open_h5(path, source) as h5:
            if "layers" not in h5:
                raise UserError(f"{source}: no 'layers' group: not a Keras 3 weights file")
            where: dict[str, str] = {}
            weights = _read_keras3(h5, built, source, where)
        check_finite(weights, where, source, allow_nonfinite)
        read = Source(spec, built, weights, f"keras3-weights.h5 + {config.name}", source)
    else:
        built = torch_built(path, allow_nonfinite=allow_nonfinite)  # fixed values checked there
        layout = "PyTorch state_dict + architecture"
        return Source(built.module.keras_spec, built, ModuleWeights(built), layout, source)
    if module:
        read.load_module()
    return read


def _holds_config(path: Path, kind: str) -> bool:
    """A `.keras`, or an `.h5` with a `model_config` attribute (a full model); a `.weights.h5`
    or an `.h5` that `save_weights` wrote holds weights only."""
    if kind != "h5" or not path.is_file():
        return kind != "weights.h5"  # a missing file: the reader says so
    with open_h5(path, str(path)) as h5:  # reading an attribute's presence runs nothing
        return "model_config" in h5.attrs


# What the book's reader says of a weights-only file of another architecture.
_NOT_THE_BOOKS = ("book's CNN", "has shape", "missing tensor", "unexpected tensor", "layers hold")


def _read_book_weights(path: Path, allow_nonfinite: bool) -> Source:
    """A weights-only file (no config): it must be the book's CNN, exactly (the book's reader
    checks every tensor); any other architecture needs --config."""
    from parity.keras_files import book_config, read_keras

    source = str(path)
    try:
        ckpt = read_keras(path, allow_nonfinite=allow_nonfinite)
    except UserError as err:
        if not any(m in str(err) for m in _NOT_THE_BOOKS):
            raise
        raise UserError(f"{err} (a weights-only file holds no config and is read as the book's "
                        f"CNN: for another model give --config model.keras or .json)") from None
    spec = parse_config(book_config(), source)
    built = build(spec, source)
    skipped = f", {len(ckpt.skipped)} optimizer tensors left aside" if ckpt.skipped else ""
    return Source(spec, built, ckpt.weights, f"{ckpt.layout} (the book's CNN){skipped}", source)


def images_for(shape: tuple[int, ...], n: int, data_dir: str | None) -> Images:
    """Test images of the model's input shape (Keras layout), made a batch at a time."""
    if math.prod(shape) == math.prod(FASHION_SHAPE):
        from parity.runners import load_test_images

        images, _ = load_test_images(data_dir)
        return Images(shape, n, images, f"{min(n, len(images))} Fashion-MNIST test images")
    return Images(shape, n, None, f"{n} seeded uniform [0, 1) images of shape {shape} "
                                  f"(Fashion-MNIST does not fit it)")


@dataclass
class GenericAgreement:
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


def check_plan(src: Source, samples: int | None, default: int) -> Plan:
    """The images the check compares, in batches its byte budget affords
    (parity.verify.layerwise)."""
    weight_bytes = sum(4 * math.prod(r.keras_shape) for r in src.built.rows)
    return plan(src.spec.input_shape, [i.shape for i in src.built.layers], weight_bytes,
                samples, default, src.path)


def verify(
    src: Source, images: Images, batch: int, *, allow_nonfinite: bool = False
) -> GenericAgreement:
    """Both sides on the same images, every layer compared in Keras's layout, a batch at a time.

    With `allow_nonfinite`, images with a NaN/Inf output in any layer on either side are left
    out (the frameworks propagate NaN differently, e.g. through max pooling) and counted."""
    keras_side = keras_reference(src.spec, src.built, src.weights, src.path)
    src.load_module()
    names = [one_line(info.keras.name) for info in src.built.layers]
    found = compare_layerwise(
        names, keras_side.outputs, lambda x: torch_layer_outputs(src.built, x), images, batch,
        allow_nonfinite=allow_nonfinite,
    )
    description_k = keras_side.description
    del keras_side
    gc.collect()  # a Keras model sits in reference cycles: free its variables before writing
    passed = all(d.passed for d in found.layers) and found.real == 0
    return GenericAgreement(
        found.compared, images.description, found.layers, found.output.max_abs, found.agreeing,
        passed, description_k, found.nonfinite, found.ties,
    )


def layer_table(built: Built) -> str:
    """Keras layer, PyTorch module(s), output shape (Keras order), parameters, transform."""
    rows = [("Keras layer", "PyTorch module", "output shape", "params", "transform")]
    for info in built.layers:
        rows.append((
            one_line(f"{info.keras.name} ({info.keras.class_name})"),
            ", ".join(info.modules) or "-",
            str((None, *info.shape)),
            f"{info.params:,}",
            "; ".join(info.transforms) or "-",
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join(
        "  ".join(
            c.ljust(w) if i != 3 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ).rstrip()
        for r in rows
    )


def port_generic(
    src: Path, dst: Path, *, force: bool = False, allow_nonfinite: bool = False,
    samples: int | None = None, data_dir: str | None = None, config: Path | None = None,
    module_py: Path | None = None,
) -> tuple[Source, GenericAgreement]:
    """Read any supported chain, check both sides layer by layer, write DST (and module_py).

    `samples`: the test images both sides must agree on (None: DEFAULT_SAMPLES, fewer where
    the model's activations would exceed the check's budget, said in the result's note)."""
    source = read_source(src, config=config, allow_nonfinite=allow_nonfinite, module=False)
    check = check_plan(source, samples, DEFAULT_SAMPLES)
    images = images_for(source.spec.input_shape, check.samples, data_dir)
    result = verify(source, images, check.batch, allow_nonfinite=allow_nonfinite)
    result.note = check.note
    if not result.passed:
        bad = next((d for d in result.layers if not d.passed), result.layers[-1])
        raise UserError(
            f"{src}: refused to write {dst}: the two models disagree on {images.description} "
            f"(first at {bad.name}: max |diff| {bad.max_abs:.3e} > {ATOL:g})"
        )
    # The module's source is made and checked before any file is written: a name it cannot
    # take refuses the port with DST untouched.
    text = None
    if module_py is not None:
        text = module_source(source.built, class_name(module_py), Path(src).name)
    if keras_kind(dst) is not None:
        write_keras_model(source.spec, source.weights, dst, force=force)
    else:
        save_torch_model(source.built.module, dst, force=force)
    if module_py is not None and text is not None:
        write_module_py(module_py, text, force=force)
    return source, result


def run_generic_check(
    keras_file: Path, torch_file: Path, *, samples: int | None, test_images: int | None,
    data_dir: str | None = None, config: Path | None = None,
    device: torch.device | str = "cpu",
) -> dict:
    """`parity.check` for any supported chain: the Keras file's model (built from its checked
    config) against the PyTorch file's module (on `device`), layer by layer, then predictions on
    the test set. None for `samples` / `test_images`: as many as the check's budget affords, up
    to DEFAULT_SAMPLES and TEST_IMAGES."""
    keras_src = read_source(keras_file, config=config, module=False)
    torch_src = read_source(torch_file)
    module = torch_src.built.module.to(device)
    k_layers = [(i.keras.class_name, i.shape) for i in keras_src.built.layers]
    t_layers = [(i.keras.class_name, i.shape) for i in torch_src.built.layers]
    if k_layers != t_layers:
        raise UserError(
            f"{torch_file}: not the architecture of {keras_file} "
            f"({len(t_layers)} vs {len(k_layers)} layers, or other shapes)"
        )
    check = check_plan(keras_src, samples, DEFAULT_SAMPLES)
    if test_images is None:  # the whole test set, or ten times the layer report's images
        test_images = TEST_IMAGES if not check.note else min(TEST_IMAGES, 10 * check.samples)
    images = images_for(keras_src.spec.input_shape, test_images, data_dir)
    keras_side = keras_reference(keras_src.spec, keras_src.built, keras_src.weights, keras_src.path)
    del keras_src  # its weights now live in the reference
    names = [one_line(i.keras.name) for i in torch_src.built.layers]
    found = compare_layerwise(
        names, keras_side.outputs, lambda x: torch_layer_outputs(torch_src.built, x),
        images.first(check.samples), check.batch,
    )
    first = next((d.name for d in found.layers if not d.passed), None)

    @torch.no_grad()
    def torch_final(x: np.ndarray) -> np.ndarray:
        return module(torch_input(x).to(device)).cpu().numpy()

    outputs, agree = compare_outputs(keras_side.final, torch_final, images, check.batch)
    test_set: dict = {"images": images.description, "outputs": outputs.as_dict()}
    if agree.agreeing is not None:
        test_set["predictions_agreeing"] = agree.agreeing
        test_set["prediction_ties"] = agree.ties
        test_set["real_disagreements"] = agree.real
        if first is None and agree.real:
            first = "predictions"
    if check.note:
        test_set["note"] = check.note
    if first is None and not outputs.passed:
        first = "outputs (all)"
    sides = (keras_side.description, f"torch {torch.__version__} on {device}")
    return check_report(
        (keras_file, torch_file), sides, min(check.samples, len(images)), found.layers, test_set,
        first,
    )


def format_generic_report(report: dict) -> str:
    from parity.verify.compare import format_table

    diffs = [LayerDiff(**{**d, "shape": tuple(d["shape"])}) for d in report["layers"]]
    t = report["test_set"]
    agree = (
        f"; predictions agreeing {t['predictions_agreeing']}" if "predictions_agreeing" in t else ""
    )
    if t.get("prediction_ties"):
        agree += f" (and {t['prediction_ties']} ties within atol {ATOL:g})"
    lines = [
        f"Keras:   {one_line(report['keras_file'])}  [{report['keras_side']}]",
        f"PyTorch: {one_line(report['torch_file'])}  [{report['torch_side']}]",
        f"layer outputs on the first {report['samples']} images:",
        format_table(diffs, name_width=max(14, 2 + max(len(d.name) for d in diffs))),
        f"all {t['images']}: outputs max |diff| {t['outputs']['max_abs']:.3e}{agree}",
        *([f"images: {t['note']}"] if t.get("note") else []),
        "PASS: every layer within tolerance, predictions agree"
        if report["passed"]
        else f"FAIL: first differing: {one_line(str(report['first_failure']))}",
    ]
    return "\n".join(lines)
