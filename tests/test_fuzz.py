"""A seeded mutation fuzz of every reader of untrusted files: nothing but UserError escapes.

About 2,500 mutants of real files — `.keras`, legacy `.h5`, `.weights.h5`, `.pt`, `.safetensors`,
PNG and TIFF — made by bit flips, byte overwrites, truncations, insertions, duplicated chunks
and corrupted zip members (re-zipped with a good CRC, so the damage reaches the HDF5, pickle or
JSON parser inside), fed in-process to `parity.formats.read_keras` (the one Keras reader),
`torch_impl.checkpoint.load_state_dict` and `torch_impl.predict.load_image`. Each must either
refuse with UserError or return what a good file gives: float32 weights of the book's shapes, all
finite, or a (1, 28, 28) float32 image in [0, 1].

The generic path's files too — a small CNN with BatchNormalization (`.keras`) and a Dense MLP
(legacy `.h5`) made by Keras, and the CNN as generic `.pt` / `.safetensors` carrying its
architecture — mutated in their bytes and in their JSON (a config field replaced by a hostile
value, a key removed, a layer duplicated), fed to `parity.load_torch_model`: a UserError, or a
module in eval mode whose tensors are dense CPU tensors, floats float32 and finite. How many
loaded and how many were refused is printed (run with -s), not asserted.
"""

from __future__ import annotations

import io
import json
import time
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from fashion_cnn.errors import UserError
from parity import book
from parity.book import keras_to_torch
from parity.formats import read_keras
from parity.formats.torch_files import save_torch_model
from parity.pipeline import load_torch_model
from torch_impl.checkpoint import EXPECTED_SHAPES, load_state_dict, save_state_dict
from torch_impl.predict import load_image

pytestmark = pytest.mark.slow  # 2,500 mutants

SEED = 20240612



# --- mutations -----------------------------------------------------------------------------------


def _metadata_spans(data: bytes) -> list[tuple[int, int]] | None:
    """The byte ranges of an HDF5 file that are not dataset values (superblock, object headers,
    B-trees, heaps, attributes): where a mutation reaches the parser rather than a weight."""
    try:
        with h5py.File(io.BytesIO(data), "r") as h5:
            stored = []
            h5.visititems(
                lambda _, o: (
                    stored.append((o.id.get_offset(), o.id.get_storage_size()))
                    if isinstance(o, h5py.Dataset) and o.id.get_offset() is not None
                    else None
                )
            )
    except OSError:
        return None
    spans, at = [], 0
    for offset, size in sorted(stored):
        if offset > at:
            spans.append((at, offset))
        at = max(at, offset + size)
    spans.append((at, len(data)))
    return [(a, b) for a, b in spans if b > a]


def _position(rng: np.random.Generator, data: bytes, spans) -> int:
    if spans and rng.random() < 0.8:
        a, b = spans[int(rng.integers(len(spans)))]
        return int(rng.integers(a, b))
    return int(rng.integers(len(data)))


def mutate(rng: np.random.Generator, data: bytes, spans=None) -> bytes:
    """One to three mutations of `data`."""
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 4))):
        if not out:
            break
        kind = int(rng.integers(6))
        at = min(_position(rng, bytes(out), spans), len(out) - 1)
        if kind == 0:  # flip a few bits
            for _ in range(int(rng.integers(1, 5))):
                out[at] ^= 1 << int(rng.integers(8))
        elif kind == 1:  # overwrite bytes with random or extreme values
            n = int(rng.integers(1, 9))
            fill = rng.choice([b"\x00", b"\xff", b"\x7f", b"\x80"])
            new = rng.bytes(n) if rng.random() < 0.5 else fill * n
            out[at : at + n] = new
        elif kind == 2:  # truncate
            del out[at:]
        elif kind == 3:  # insert random bytes
            out[at:at] = rng.bytes(int(rng.integers(1, 17)))
        elif kind == 4:  # duplicate a chunk somewhere else
            n = int(rng.integers(1, 513))
            piece = out[at : at + n]
            to = int(rng.integers(len(out) + 1))
            out[to:to] = piece
        else:  # delete a chunk
            del out[at : at + int(rng.integers(1, 65))]
    return bytes(out)


def zip_members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {info.filename: zf.read(info) for info in zf.infolist()}


def rezip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def mutate_member(rng: np.random.Generator, data: bytes) -> bytes:
    """Corrupt one member of a zip (a .keras, a torch .pt) and zip it again, CRCs recomputed."""
    members = zip_members(data)
    name = list(members)[int(rng.integers(len(members)))]
    spans = _metadata_spans(members[name]) if name.endswith(".h5") else None
    members[name] = mutate(rng, members[name], spans)
    return rezip(members)


# Values a mutated config field takes: zeros, negatives, huge and non-finite numbers, wrong types.
HOSTILE_VALUES = (
    0, -1, 1, 3, 10**12, -(10**12), 2**63, 0.5, -0.0, 1e308, float("nan"), float("inf"),
    "", "same", "relu", "x\x1b[2J\n", None, True, False, [], {}, [0, 0], [-1, -1], [1, 2, 3],
    {"class_name": "Lambda", "config": {}},
)


def _slots(node, found: list) -> list:
    """Every (container, key) of a JSON value, depth first."""
    if isinstance(node, dict):
        items = list(node.items())
    elif isinstance(node, list):
        items = list(enumerate(node))
    else:
        return found
    for key, value in items:
        found.append((node, key))
        _slots(value, found)
    return found


def mutate_json(rng: np.random.Generator, config: object) -> object:
    """One or two edits anywhere in a model config: a value replaced by a hostile one, a key
    removed, or a list item (a layer, a dimension) duplicated."""
    config = json.loads(json.dumps(config))
    for _ in range(int(rng.integers(1, 3))):
        slots = _slots(config, [])
        if not slots:
            break
        node, key = slots[int(rng.integers(len(slots)))]
        roll = rng.random()
        if roll < 0.1 and isinstance(node, dict):
            del node[key]
        elif roll < 0.2 and isinstance(node, list):
            node.insert(key, json.loads(json.dumps(node[key])))
        else:
            value = HOSTILE_VALUES[int(rng.integers(len(HOSTILE_VALUES)))]
            node[key] = json.loads(json.dumps(value))
    return config


def mutate_keras_json(rng: np.random.Generator, data: bytes) -> bytes:
    members = zip_members(data)
    config = mutate_json(rng, json.loads(members["config.json"]))
    members["config.json"] = json.dumps(config).encode()
    return rezip(members)


def mutate_h5_json(rng: np.random.Generator, data: bytes) -> bytes:
    buffer = io.BytesIO(data)
    with h5py.File(buffer, "r+") as h5:
        config = mutate_json(rng, json.loads(h5.attrs["model_config"]))
        h5.attrs["model_config"] = json.dumps(config).encode()
    return buffer.getvalue()


def mutate_pt_json(rng: np.random.Generator, data: bytes) -> bytes:
    state = torch.load(io.BytesIO(data), weights_only=True)
    entry = state._metadata[""]
    entry["keras_config"] = json.dumps(mutate_json(rng, json.loads(entry["keras_config"])))
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def mutate_safetensors_json(rng: np.random.Generator, data: bytes) -> bytes:
    from safetensors.torch import load, save

    size = int.from_bytes(data[:8], "little")
    metadata = json.loads(data[8 : 8 + size])["__metadata__"]
    config = mutate_json(rng, json.loads(metadata["keras_config"]))
    return save(load(data), metadata={**metadata, "keras_config": json.dumps(config)})


# --- what a file that still loads must give ------------------------------------------------------


def check_keras(path: Path) -> None:
    weights = read_keras(path).weights
    shapes = book.spec().shapes()
    assert set(weights) == set(shapes)
    for name, shape in shapes.items():
        array = weights[name]
        assert array.shape == shape and array.dtype == np.float32, name
        assert array.dtype.isnative and np.isfinite(array).all(), name


def check_torch(path: Path) -> None:
    state = load_state_dict(path)
    assert list(state) == list(EXPECTED_SHAPES)
    for key, shape in EXPECTED_SHAPES.items():
        tensor = state[key]
        assert tuple(tensor.shape) == shape and tensor.dtype == torch.float32, key
        assert tensor.layout == torch.strided and tensor.device.type == "cpu", key
        assert torch.isfinite(tensor).all(), key


def check_generic(path: Path) -> None:
    module = load_torch_model(path)
    assert isinstance(module, torch.nn.Module) and not module.training
    for key, tensor in module.state_dict().items():
        assert type(tensor) in (torch.Tensor, torch.nn.Parameter), key
        assert tensor.layout == torch.strided and tensor.device.type == "cpu", key
        if tensor.is_floating_point():
            assert tensor.dtype == torch.float32 and torch.isfinite(tensor).all(), key


def check_image(path: Path) -> None:
    image = load_image(path)
    assert tuple(image.shape) == (1, 28, 28) and image.dtype == torch.float32
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0


# --- the fuzz ----------------------------------------------------------------------------------


def _generic_files(folder: Path) -> dict[str, bytes]:
    """Files of the generic path, none of them the book's CNN: a CNN with BatchNormalization
    (`.keras`, and as generic `.pt` / `.safetensors` carrying its architecture) and a Dense MLP
    (legacy `.h5`), made by Keras."""
    import keras

    L = keras.layers
    keras.utils.set_random_seed(SEED % 2**31)
    cnn = keras.Sequential(
        [
            keras.Input((12, 12, 1)),
            L.Conv2D(3, 3, padding="same", name="conv"),
            L.BatchNormalization(name="bn"),
            L.ReLU(name="relu"),
            L.MaxPooling2D(2, name="pool"),
            L.Flatten(name="flat"),
            L.Dense(5, activation="softmax", name="dense"),
        ],
        name="cnn",
    )
    mlp = keras.Sequential(
        [
            keras.Input((6,)),
            L.Dense(4, activation="relu", name="hidden"),
            L.BatchNormalization(name="bn"),
            L.Dropout(0.1, name="drop"),
            L.Dense(3, name="out"),
        ],
        name="mlp",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras calls .h5 legacy
        cnn.save(folder / "cnn.keras")
        mlp.save(folder / "mlp.h5")
    module = load_torch_model(folder / "cnn.keras")
    save_torch_model(module, folder / "cnn.pt")
    save_torch_model(module, folder / "cnn.safetensors")
    names = ("cnn.keras", "mlp.h5", "cnn.pt", "cnn.safetensors")
    return {name: (folder / name).read_bytes() for name in names}


def _image_bytes(rng: np.random.Generator, fmt: str) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    pixels = (rng.random((28, 28)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def test_mutated_files_load_or_are_refused(keras_ckpts, tmp_path, capsys):
    rng = np.random.default_rng(SEED)
    random = keras_ckpts["random"]
    pt = tmp_path / "base.pt"
    save_state_dict({k: torch.from_numpy(v) for k, v in keras_to_torch(random.weights).items()}, pt)
    st = tmp_path / "base.safetensors"
    save_state_dict(load_state_dict(pt), st)
    keras_bytes = random.files[".keras"].read_bytes()
    h5_bytes = random.files[".h5"].read_bytes()
    tf2_bytes = keras_ckpts["trained"].files["tf2.h5"].read_bytes()
    weights_h5 = random.files[".weights.h5"].read_bytes()
    pt_bytes, st_bytes = pt.read_bytes(), st.read_bytes()
    png, tiff = _image_bytes(rng, "PNG"), _image_bytes(rng, "TIFF")
    generic_folder = tmp_path / "generic"
    generic_folder.mkdir()
    generic = _generic_files(generic_folder)
    g_keras, g_h5 = generic["cnn.keras"], generic["mlp.h5"]
    g_pt, g_st = generic["cnn.pt"], generic["cnn.safetensors"]

    spans = {id(b): _metadata_spans(b) for b in (h5_bytes, tf2_bytes, weights_h5, g_h5)}

    def raw(base: bytes) -> Callable[[], bytes]:
        return lambda: mutate(rng, base, spans.get(id(base)))

    # (name, suffix, cases, make a mutant, check it)
    plan = [
        ("keras/zip", ".keras", 200, raw(keras_bytes), check_keras),
        ("keras/member", ".keras", 350, lambda: mutate_member(rng, keras_bytes), check_keras),
        ("h5/keras3", ".h5", 250, raw(h5_bytes), check_keras),
        ("h5/tf2", ".h5", 150, raw(tf2_bytes), check_keras),
        ("weights.h5", ".weights.h5", 150, raw(weights_h5), check_keras),
        ("pt/zip", ".pt", 150, raw(pt_bytes), check_torch),
        ("pt/member", ".pt", 200, lambda: mutate_member(rng, pt_bytes), check_torch),
        ("safetensors", ".safetensors", 250, raw(st_bytes), check_torch),
        ("png", ".png", 150, raw(png), check_image),
        ("tiff", ".tiff", 150, raw(tiff), check_image),
        ("generic/keras", ".keras", 60, raw(g_keras), check_generic),
        ("generic/k-member", ".keras", 80, lambda: mutate_member(rng, g_keras), check_generic),
        ("generic/k-json", ".keras", 80, lambda: mutate_keras_json(rng, g_keras), check_generic),
        ("generic/h5", ".h5", 60, raw(g_h5), check_generic),
        ("generic/h5-json", ".h5", 60, lambda: mutate_h5_json(rng, g_h5), check_generic),
        ("generic/pt", ".pt", 60, lambda: mutate_member(rng, g_pt), check_generic),
        ("generic/pt-json", ".pt", 60, lambda: mutate_pt_json(rng, g_pt), check_generic),
        ("generic/st", ".safetensors", 40, raw(g_st), check_generic),
        ("generic/st-json", ".safetensors", 40, lambda: mutate_safetensors_json(rng, g_st),
         check_generic),
    ]
    start = time.monotonic()
    totals = {"cases": 0, "loaded": 0, "refused": 0}
    lines, escapes = [], []
    for name, suffix, cases, make, check in plan:
        loaded = refused = 0
        for i in range(cases):
            path = tmp_path / f"mutant-{name.replace('/', '-')}-{i}{suffix}"
            path.write_bytes(make())
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    check(path)
                loaded += 1
            except UserError as err:
                assert str(err).startswith(str(path)), f"the file is not named: {err}"
                refused += 1
            except Exception as err:  # noqa: BLE001 - the point: report any other escape
                escapes.append(f"{name} case {i}: {type(err).__name__}: {str(err)[:200]}")
            path.unlink()
        lines.append(f"{name:16s} {cases:5d} cases: {loaded:4d} loaded, {refused:4d} refused")
        totals["cases"] += cases
        totals["loaded"] += loaded
        totals["refused"] += refused
    seconds = time.monotonic() - start
    with capsys.disabled():
        print("\nfuzz:\n  " + "\n  ".join(lines))
        print(
            f"  total {totals['cases']} cases: {totals['loaded']} loaded, "
            f"{totals['refused']} refused, {seconds:.1f} s"
        )
    assert totals["cases"] == 2540
    kinds = sorted({e.split(": ")[0].split(" case")[0] + ": " + e.split(": ")[1] for e in escapes})
    assert not escapes, (
        f"{len(escapes)} mutants raised something else than UserError ({', '.join(kinds)}):\n"
        + "\n".join(escapes[:30])
    )
