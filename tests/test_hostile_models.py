"""Hostile files against the port of any model — any supported Keras chain, not only the book's
CNN — run through the real command lines (`parity.port`, `parity.check`, and
`parity.load_torch_model` from a small script), each in its own process.

The hostile files are made from real Keras models built here (Sequential and Functional, saved
by `model.save` as `.keras` and legacy `.h5`) and from real PyTorch files that carry an
architecture (`.pt` whose state_dict `_metadata[""]["keras_config"]` holds the architecture,
`.safetensors` whose header metadata does), then edited: their JSON, their tensors, their names.

Where the port's pre-write check takes a different path with Keras importable (Keras itself)
and without it (the numpy reference), a case runs both ways: `keras="blocked"` runs the child
with Keras and TensorFlow unimportable (tests/hostile.py's `keras_blocker`).

A refusal must hold what `refuse` asserts (tests/hostile.py). Where a hostile file may also be
ported (a layer name that is only odd), success must be safe: the generated `--module-py` file
parses, its identifiers are plain ASCII and hold none of the hostile text, executing it has no
side effect, and the written state_dict loads into its class with strict=True.
"""

from __future__ import annotations

import ast
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tokenize
import unicodedata
import warnings
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import h5py
import numpy as np
import pytest
import torch
from hostile import (  # the shared helpers; the fixtures come through conftest.py
    KERAS_MODES,
    Run,
    _files,
    assert_bounded,
    assert_refused,
    run_cli,
    write_zip,
)

pytestmark = pytest.mark.slow  # each case runs a real CLI in its own interpreter

NAN, INF = float("nan"), float("inf")
SAMPLES = ("--samples", "100")  # enough for the check; the bounds cases use the default (1000)


# --- the real source models, made by Keras once for this module ---------------------------------


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    """Real files made by Keras (and generic PyTorch files written by the real port):

    mlp        Input(8) → Dense dense_a → ReLU relu_a → BatchNormalization bn_a → Dropout drop_a
               → Dense out: `.keras`, legacy `.h5`, and ported `.pt` / `.safetensors`
    fmlp       the same chain (no BN, no Dropout) as a Functional with keras.Input: `.keras`
    zoo        Input(28, 28, 1) → Rescaling rescale → ZeroPadding2D pad → Conv2D conv →
               BatchNormalization bn → ReLU relu → MaxPooling2D maxpool → AveragePooling2D
               avgpool → Dropout drop → Reshape reshape → Flatten flat → Dense dense (softmax):
               `.keras` and `.weights.h5`
    twins      Input(4) → Dense twin_a → Dense twin_b (same shapes): `.keras`, legacy `.h5`
    dense      Input(4) → Dense big: `.keras`, the base of the size bombs
    wide-relu, wide-flatten   Input(30000) → ReLU / Flatten, no weights: `.keras`
    relu600    Input(8) → 600 ReLU layers: `.keras`
    """
    import keras

    from parity.port import main as port_main

    folder = tmp_path_factory.mktemp("model-sources")
    L = keras.layers
    keras.utils.set_random_seed(13)
    mlp = keras.Sequential(
        [
            keras.Input((8,)),
            L.Dense(4, name="dense_a"),
            L.ReLU(name="relu_a"),
            L.BatchNormalization(name="bn_a"),
            L.Dropout(0.1, name="drop_a"),
            L.Dense(3, name="out"),
        ],
        name="mlp",
    )
    inputs = keras.Input((8,), name="inp")
    x = L.Dense(4, name="dense_a")(inputs)
    x = L.ReLU(name="relu_a")(x)
    fmlp = keras.Model(inputs, L.Dense(3, name="out")(x), name="fmlp")
    zoo = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            L.Rescaling(0.5, name="rescale"),
            L.ZeroPadding2D(1, name="pad"),
            L.Conv2D(4, 3, name="conv"),
            L.BatchNormalization(name="bn"),
            L.ReLU(name="relu"),
            L.MaxPooling2D(2, name="maxpool"),
            L.AveragePooling2D(2, name="avgpool"),
            L.Dropout(0.25, name="drop"),
            L.Reshape((49, 4), name="reshape"),
            L.Flatten(name="flat"),
            L.Dense(10, activation="softmax", name="dense"),
        ],
        name="zoo",
    )
    twins = keras.Sequential(
        [keras.Input((4,)), L.Dense(4, name="twin_a"), L.Dense(4, name="twin_b")], name="twins"
    )
    dense = keras.Sequential([keras.Input((4,)), L.Dense(4, name="big")], name="dense")
    wide_relu = keras.Sequential([keras.Input((30_000,)), L.ReLU(name="relu")], name="wide")
    wide_flatten = keras.Sequential([keras.Input((30_000,)), L.Flatten(name="flat")], name="wide")
    relu600 = keras.Sequential([keras.Input((8,)), *(L.ReLU() for _ in range(600))], name="deep")
    for bn in (mlp.get_layer("bn_a"), zoo.get_layer("bn")):  # BN statistics that matter
        gamma, beta, mean, var = bn.get_weights()
        rng = np.random.default_rng(5)
        bn.set_weights([gamma * 1.5, beta + 0.1, mean + rng.random(mean.shape), var * 2.0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras calls .h5 legacy
        for name, model, formats in [
            ("mlp", mlp, (".keras", ".h5")),
            ("fmlp", fmlp, (".keras",)),
            ("zoo", zoo, (".keras", ".weights.h5")),
            ("twins", twins, (".keras", ".h5")),
            ("dense", dense, (".keras",)),
            ("wide-relu", wide_relu, (".keras",)),
            ("wide-flatten", wide_flatten, (".keras",)),
            ("relu600", relu600, (".keras",)),
        ]:
            for fmt in formats:
                if fmt == ".weights.h5":
                    model.save_weights(folder / f"{name}{fmt}")
                else:
                    model.save(folder / f"{name}{fmt}")
    files = {p.name: p for p in folder.iterdir()}
    for fmt in (".pt", ".safetensors"):  # files with an architecture, written by the real port
        dst = folder / f"mlp{fmt}"
        assert port_main([str(folder / "mlp.keras"), str(dst), "--samples", "20"]) == 0
        files[dst.name] = dst
    # Every base ports as it is, so that what a case refuses is its edit.
    checks = folder / "ported"
    checks.mkdir()
    for name in ("mlp.h5", "fmlp.keras", "zoo.keras", "twins.keras", "twins.h5"):
        assert port_main([str(files[name]), str(checks / f"{name}.pt"), "--samples", "20"]) == 0
    weights, dst = str(files["zoo.weights.h5"]), str(checks / "zoo-weights.pt")
    assert port_main([weights, dst, "--config", str(files["zoo.keras"]), "--samples", "20"]) == 0
    return files


# --- editing the real files ----------------------------------------------------------------------

Edit = Callable[[dict], None]


def model_layers(config: dict) -> list[dict]:
    return config["config"]["layers"]


def layer_named(config: dict, name: str) -> dict:
    for layer in model_layers(config):
        if layer.get("config", {}).get("name") == name:
            return layer
    raise KeyError(name)


def set_fields(name: str, **fields) -> Edit:
    """Set fields of the config of the layer called `name`."""

    def edit(config: dict) -> None:
        layer_named(config, name)["config"].update(fields)

    return edit


def rename(old: str, new: str) -> Edit:
    """Every string equal to `old` in the config becomes `new`: a layer's name and, in a
    Functional, every reference to it (inbound nodes, output layers)."""

    def walk(node):
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return new if node == old else node

    def edit(config: dict) -> None:
        renamed = walk(config)
        config.clear()
        config.update(renamed)

    return edit


def dumps(config: object, compact: bool = False) -> str:
    return json.dumps(config, separators=(",", ":") if compact else None)


def zip_members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def edited_keras(src: Path, dst: Path, edit: Edit, compact: bool = False) -> Path:
    """A copy of a real `.keras` with its config.json edited (weights as they were, stored)."""
    members = zip_members(src)
    config = json.loads(members["config.json"])
    edit(config)
    members["config.json"] = dumps(config, compact).encode()
    write_zip(dst, members)
    return dst


def edited_h5(src: Path, dst: Path, edit: Edit) -> Path:
    """A copy of a real legacy `.h5` with its model_config attribute edited."""
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as h5:
        config = json.loads(h5.attrs["model_config"])
        edit(config)
        h5.attrs["model_config"] = dumps(config).encode()
    return dst


def edited_pt(
    src: Path, dst: Path, edit: Edit | None = None, tensors: Callable[[dict], None] | None = None
) -> Path:
    """A copy of a real `.pt` carrying an architecture, its `_metadata[""]["keras_config"]`
    and/or its tensors edited."""
    state = torch.load(src, weights_only=True)
    if edit is not None:
        config = json.loads(state._metadata[""]["keras_config"])
        edit(config)
        state._metadata[""]["keras_config"] = dumps(config)
    if tensors is not None:
        tensors(state)
    torch.save(state, dst)
    return dst


def edited_safetensors(src: Path, dst: Path, edit: Edit) -> Path:
    """A copy of a real `.safetensors` carrying an architecture, its header's `keras_config`
    edited."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), "pt") as f:
        metadata = dict(f.metadata())
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    config = json.loads(metadata["keras_config"])
    edit(config)
    metadata["keras_config"] = dumps(config)
    save_file(tensors, str(dst), metadata=metadata)
    return dst


def pt_config(path: Path) -> dict:
    return json.loads(torch.load(path, weights_only=True)._metadata[""]["keras_config"])


def save_generic_pt(dst: Path, state: dict, config: dict) -> Path:
    """A `.pt` in the generic port's layout: a state_dict with the config in _metadata."""
    state = OrderedDict(state)
    state._metadata = OrderedDict({"": {"version": 1, "keras_config": dumps(config)}})
    torch.save(state, dst)
    return dst


def one_dense_config(base: dict, n_in: int, units: int) -> dict:
    """The generic `.pt` config of `base` cut to Input(n_in) → Dense(units) (no activation)."""
    config = json.loads(dumps(base))
    layers = model_layers(config)
    dense = next(x for x in layers if x["class_name"] == "Dense")
    layers[:] = [layers[0], dense]
    layers[0]["config"]["batch_shape"] = [None, n_in]
    dense["config"].update(units=units, activation="linear", name="big")
    config["config"].pop("build_input_shape", None)
    config.pop("build_config", None)
    return config


# --- what a run must hold, refused or not -------------------------------------------------------

_CONTROL = {"\n", "\t"}  # the only control characters a command may print


def assert_clean(run: Run) -> None:
    """No control character from a file reaches the terminal (no ESC, no bare CR, no C1), and no
    line on stdout is an `error:` line (one forged from a file's text)."""
    for stream, text in (("stdout", run.out), ("stderr", run.err)):
        bad = sorted(
            {c for c in text if unicodedata.category(c) == "Cc" and c not in _CONTROL}
        )
        assert not bad, f"{stream} holds raw control characters {bad}: {text[-1500:]!r}"
    assert not [line for line in run.out.splitlines() if line.lstrip().startswith("error:")], (
        f"stdout holds an error line: {run.out[-1500:]!r}"
    )


@pytest.fixture
def attempt(tmp_path, canary, keras_blocker):
    """attempt(module, *args, keras=…, fragments=…) → the Run when it succeeded (exit 0, clean
    output, bounded), else None after asserting everything `refuse` asserts of a refusal."""

    def check(
        module: str, *args, keras: str = "importable", fragments: tuple[str, ...] = ()
    ) -> Run | None:
        assert keras in KERAS_MODES, keras
        before = _files(tmp_path)
        run = run_cli(
            module, *args, cwd=tmp_path, blocked=keras_blocker if keras == "blocked" else None
        )
        if run.code == 0:
            assert "Traceback" not in run.err, run.err[-3000:]
            assert canary.token not in run.out + run.err, "the canary secret was printed"
            assert_bounded(run)
            assert_clean(run)
            assert not [x for x in run.err.splitlines() if x.startswith("error:")], run.err
            assert not (tmp_path / "pwned").exists(), "the payload ran"
            print(f"{module} {run.seconds:.1f}s {run.peak_mb:.0f}MB: exit 0")
            return run
        assert_refused(
            run, module, before=before, folder=tmp_path, canary=canary, fragments=fragments
        )
        assert_clean(run)
        return None

    return check


# --- the generated module source: safe to read, parse and run ------------------------------------

PAYLOAD = '__import__("os").system("touch pwned")'
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Run in its own process, in the test's folder: execute the generated file (compiled with every
# warning an error: an invalid escape sequence is a SyntaxWarning), make its class (the last one
# in the file), load the port's state_dict into it with strict=True, run it on zeros.
_LOAD_MODULE = """
import ast, sys, warnings
import torch
path, weights = sys.argv[1:]
text = open(path, encoding="utf8").read()
with warnings.catch_warnings():
    warnings.simplefilter("error")
    code = compile(text, path, "exec")
name = [n.name for n in ast.parse(text).body if isinstance(n, ast.ClassDef)][-1]
namespace = {"__name__": "generated"}
exec(code, namespace)
model = namespace[name]()
if weights.endswith(".safetensors"):
    from safetensors.torch import load_file
    state = load_file(weights)
else:
    state = torch.load(weights, weights_only=True)
model.load_state_dict(state, strict=True)
model.eval()
print("loaded", name)
"""


def shares_text(token: str, hostile: str, k: int = 7) -> bool:
    """Whether `token` holds a run of `k` characters of `hostile`."""
    return any(token[i : i + k] in hostile for i in range(len(token) - k + 1))


def check_module_py(module_py: Path, weights: Path, folder: Path, hostile: str) -> None:
    """The generated file parses; identifiers plain ASCII, none carrying the hostile text (it
    may appear only in string literals and comments); comments printable ASCII; executing it in
    its own process has no side effect; the port's weights load into its class, strict."""
    text = module_py.read_bytes().decode("utf8")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ast.parse(text)
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type == tokenize.NAME:
            assert _IDENTIFIER.fullmatch(token.string), f"identifier {token.string!r}"
            assert not shares_text(token.string, hostile), f"identifier {token.string!r}"
        elif token.type == tokenize.COMMENT:
            assert token.string.isascii() and token.string.isprintable(), repr(token.string)
    before = _files(folder)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the file stands alone
    proc = subprocess.run(
        [sys.executable, "-c", _LOAD_MODULE, str(module_py), str(weights)],
        cwd=folder, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (folder / "pwned").exists(), "executing the generated module ran the payload"
    assert _files(folder) == before, "executing the generated module wrote a file"
    assert proc.stdout.startswith("loaded "), proc.stdout


def port_with_module_py(attempt, src: Path, tmp_path: Path, hostile: str, keras: str) -> None:
    """Port SRC with --module-py: refused in one line naming SRC, or ported safely."""
    dst, module_py = tmp_path / "out.pt", tmp_path / "model.py"
    run = attempt(
        "parity.port", src, dst, "--module-py", module_py, *SAMPLES,
        keras=keras, fragments=(str(src),),
    )
    if run is None:
        assert not dst.exists() and not module_py.exists()
        return
    check_module_py(module_py, dst, tmp_path, hostile)


# --- 1. code execution through --module-py -------------------------------------------------------

HOSTILE_NAMES = {
    "triple-quote": f'dense_x""" + {PAYLOAD} + """',
    "newline": f"relu_x\n{PAYLOAD}\n#",
    "single-triple-quote": "relu_x''' + __import__('os').system('touch pwned') + '''",
    "carriage-return": f'relu_x"""\r{PAYLOAD}\r"""',
    "trailing-backslash": "relu_x\\",
    "backslash-quote": f'relu_x\\""" + {PAYLOAD} + """\\',
    "nul": f"relu_x\x00{PAYLOAD}",
    "u2028": f"relu_x\u2028{PAYLOAD}\u2029",
    "digit-first": "2fast",
    "keyword": "class",
    "long": "relu_" + "x" * 50_000 + f'""" + {PAYLOAD} + """',
}
NAME_CASES = [
    *((name, "blocked") for name in HOSTILE_NAMES if name != "nul"),  # NUL blocked: section 5
    ("triple-quote", "importable"),
    ("nul", "importable"),
]


@pytest.mark.parametrize(
    ("name", "keras"), NAME_CASES, ids=[f"{name}-keras-{keras}" for name, keras in NAME_CASES]
)
def test_module_py_hostile_layer_name_in_config_json(sources, tmp_path, attempt, name, keras):
    hostile = HOSTILE_NAMES[name]
    src = edited_keras(sources["mlp.keras"], tmp_path / "src.keras", rename("relu_a", hostile))
    port_with_module_py(attempt, src, tmp_path, hostile, keras)


def _in_h5(sources, tmp_path, edit):
    return edited_h5(sources["mlp.h5"], tmp_path / "src.h5", edit)


def _in_pt(sources, tmp_path, edit):
    return edited_pt(sources["mlp.pt"], tmp_path / "src.pt", edit)


def _in_safetensors(sources, tmp_path, edit):
    return edited_safetensors(sources["mlp.safetensors"], tmp_path / "src.safetensors", edit)


def _in_functional(sources, tmp_path, edit):
    return edited_keras(sources["fmlp.keras"], tmp_path / "src.keras", edit)


CARRIERS = {
    "legacy-h5-model-config": _in_h5,
    "pt-metadata": _in_pt,
    "safetensors-header": _in_safetensors,
    "functional-config-json": _in_functional,
}


@pytest.mark.parametrize("carrier", list(CARRIERS))
def test_module_py_hostile_layer_name_in_other_files(sources, tmp_path, attempt, carrier):
    hostile = HOSTILE_NAMES["triple-quote"]
    src = CARRIERS[carrier](sources, tmp_path, rename("relu_a", hostile))
    port_with_module_py(attempt, src, tmp_path, hostile, "blocked")


def test_module_py_hostile_source_file_name(sources, tmp_path, attempt):
    stem = f'm""";{PAYLOAD};"""'
    src = tmp_path / f"{stem}.keras"
    shutil.copy(sources["mlp.keras"], src)
    port_with_module_py(attempt, src, tmp_path, stem, "blocked")


@pytest.mark.parametrize("target", ["src", "dst"])
def test_module_py_onto_src_or_dst_is_refused(sources, tmp_path, refuse, target):
    src = tmp_path / "src.keras"
    shutil.copy(sources["mlp.keras"], src)
    dst = tmp_path / "out.pt"
    refuse(
        "parity.port", src, dst, "--module-py", src if target == "src" else dst, *SAMPLES,
        keras="blocked",
    )
    assert not dst.exists()


# --- 2. memory from a tiny file ------------------------------------------------------------------


def expanded_pt(sources, tmp_path: Path, n: int) -> Path:
    """A few hundred bytes: a Dense n×n whose weight is one float expanded (stride 0)."""
    config = one_dense_config(pt_config(sources["mlp.pt"]), n, n)
    state = {"big.weight": torch.zeros(1).expand(n, n), "big.bias": torch.zeros(n)}
    path = save_generic_pt(tmp_path / f"expanded-{n}.pt", state, config)
    assert path.stat().st_size < 400_000
    return path


EXPANDED_CASES = [(12_000, "blocked"), (20_000, "blocked"), (20_000, "importable")]


@pytest.mark.parametrize(
    ("n", "keras"), EXPANDED_CASES, ids=[f"{n}x{n}-keras-{k}" for n, k in EXPANDED_CASES]
)
def test_expanded_weight_in_a_generic_pt(sources, tmp_path, refuse, n, keras):
    src = expanded_pt(sources, tmp_path, n)
    refuse("parity.port", src, tmp_path / "out.pt", keras=keras, fragments=(str(src),))


def short_safetensors(sources, tmp_path: Path, n: int) -> Path:
    """A safetensors header declaring a Dense n×n, followed by 8 bytes of data."""
    config = one_dense_config(pt_config(sources["mlp.pt"]), n, n)
    header = {
        "__metadata__": {"keras_config": dumps(config)},
        "big.weight": {"dtype": "F32", "shape": [n, n], "data_offsets": [0, 4]},
        "big.bias": {"dtype": "F32", "shape": [n], "data_offsets": [4, 8]},
    }
    raw = dumps(header, compact=True).encode()
    raw += b" " * (-len(raw) % 8)
    path = tmp_path / f"short-{n}.safetensors"
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + bytes(8))
    return path


def test_big_shape_short_data_in_a_generic_safetensors(sources, tmp_path, refuse):
    src = short_safetensors(sources, tmp_path, 20_000)
    refuse("parity.port", src, tmp_path / "out.pt", fragments=(str(src),))


# --- 3. bounds that small files break ------------------------------------------------------------

BOMB_N = 16_000  # a 16000×16000 float32 kernel: 1.02 GB of zeros
_CHUNK_ROWS = 1_000  # HDF5 chunks of 1000 rows: 64 MB each, ~65 KB deflated


def _dense_bomb(sources, n: int) -> tuple[dict[str, bytes], bytes]:
    """The members of the Dense model's `.keras`, its config made Input(n) → Dense(n), and its
    model.weights.h5 without the kernel and bias (the bombs put their own there)."""
    members = zip_members(sources["dense.keras"])
    config = json.loads(members["config.json"])
    model_layers(config)[0]["config"]["batch_shape"] = [None, n]
    layer_named(config, "big")["config"]["units"] = n
    config["config"].pop("build_input_shape", None)
    members["config.json"] = dumps(config).encode()
    buffer = io.BytesIO(members.pop("model.weights.h5"))
    with h5py.File(buffer, "r+") as h5:
        del h5["layers/dense/vars/0"], h5["layers/dense/vars/1"]
    return members, buffer.getvalue()


def hdf5_gzip_bomb(sources, tmp_path: Path) -> Path:
    """A ~1 MB `.keras` whose Dense kernel is gzip-filtered HDF5 chunks of zeros: 1 GB inflated.
    Every chunk is the same deflated bytes, written directly (nothing is compressed 16 times)."""
    n = BOMB_N
    members, weights = _dense_bomb(sources, n)
    buffer = io.BytesIO(weights)
    with h5py.File(buffer, "r+") as h5:
        group = h5["layers/dense/vars"]
        kernel = group.create_dataset(
            "0", (n, n), "<f4", chunks=(_CHUNK_ROWS, n), compression="gzip"
        )
        chunk = zlib.compress(bytes(_CHUNK_ROWS * n * 4), 9)
        for row in range(0, n, _CHUNK_ROWS):
            kernel.id.write_direct_chunk((row, 0), chunk)
        group.create_dataset("1", data=np.zeros(n, np.float32))
    members["model.weights.h5"] = buffer.getvalue()
    path = tmp_path / "hdf5-gzip-bomb.keras"
    write_zip(path, members)
    assert path.stat().st_size < 2 << 20
    return path


class _SplicedDeflate:
    """A stand-in for zipfile's compressor: the bytes around the kernel deflated for real, each
    64 MB block of zeros replaced by one block deflated once (every block is fully flushed, so
    the spliced stream is a valid deflate stream; zipfile's CRC is of the real bytes)."""

    def __init__(self, zeros: bytes) -> None:
        self.zeros = zeros
        self.real = zlib.compressobj(9, zlib.DEFLATED, -15)
        once = zlib.compressobj(9, zlib.DEFLATED, -15)
        self.block = once.compress(zeros) + once.flush(zlib.Z_FULL_FLUSH)

    def compress(self, data) -> bytes:
        if data is self.zeros:
            return self.block
        return self.real.compress(data) + self.real.flush(zlib.Z_FULL_FLUSH)

    def flush(self) -> bytes:
        return self.real.flush()


def zip_deflate_bomb(sources, tmp_path: Path) -> Path:
    """A ~1 MB `.keras` whose model.weights.h5 member (a plain HDF5 file with a contiguous
    1 GB zero kernel) is zip-deflated: 1 GB inflated."""
    n = BOMB_N
    members, weights = _dense_bomb(sources, n)
    scratch = tmp_path / "scratch" / "weights.h5"  # sparse: the kernel is never written
    scratch.parent.mkdir()
    scratch.write_bytes(weights)
    with h5py.File(scratch, "r+") as h5:
        group = h5["layers/dense/vars"]
        plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        plist.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        plist.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
        space = h5py.h5s.create_simple((n, n))
        kernel = h5py.h5d.create(group.id, b"0", h5py.h5t.IEEE_F32LE, space, dcpl=plist)
        offset = kernel.get_offset()
        group.create_dataset("1", data=np.zeros(n, np.float32))
    nbytes = n * n * 4
    zeros = bytes(64_000_000)
    assert nbytes % len(zeros) == 0
    with scratch.open("rb") as f:
        prefix = f.read(offset)
        f.seek(offset + nbytes)
        suffix = f.read()
    shutil.rmtree(scratch.parent)
    path = tmp_path / "zip-deflate-bomb.keras"
    spliced = _SplicedDeflate(zeros)
    compressor = lambda kind, level=None: spliced if kind == zipfile.ZIP_DEFLATED else None  # noqa: E731
    with (
        zipfile.ZipFile(path, "w") as zf,
        mock.patch.object(zipfile, "_get_compressor", compressor),
    ):
        for name, data in members.items():
            zf.writestr(name, data)
        info = zipfile.ZipInfo("model.weights.h5", (2024, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        with zf.open(info, "w", force_zip64=True) as member:
            member.write(prefix)
            for _ in range(nbytes // len(zeros)):
                member.write(zeros)
            member.write(suffix)
    assert path.stat().st_size < 2 << 20
    return path


def many_layers(sources, tmp_path: Path, count: int) -> Path:
    """The MLP's `.keras` with `count` one-word ReLU layers appended: `{"class_name":"ReLU"}`
    each, 22 bytes, so 45,000 of them fit in config.json's 1 MB."""

    def edit(config: dict) -> None:
        model_layers(config).extend({"class_name": "ReLU"} for _ in range(count))

    path = edited_keras(sources["mlp.keras"], tmp_path / f"layers-{count}.keras", edit, True)
    with zipfile.ZipFile(path) as zf:
        assert zf.getinfo("config.json").file_size < 1 << 20
    return path


SMALL_FILES = {
    "input-30000-relu": lambda s, t: _copy(s["wide-relu.keras"], t / "wide.keras"),
    "input-30000-flatten": lambda s, t: _copy(s["wide-flatten.keras"], t / "wide.keras"),
    "relu-600-layers": lambda s, t: _copy(s["relu600.keras"], t / "deep.keras"),
    "layers-45000": lambda s, t: many_layers(s, t, 45_000),
}


def _copy(src: Path, dst: Path) -> Path:
    shutil.copy(src, dst)
    return dst


SMALL_CASES = [(case, keras) for case in SMALL_FILES for keras in KERAS_MODES]


@pytest.mark.parametrize(
    ("case", "keras"), SMALL_CASES, ids=[f"{c}-keras-{k}" for c, k in SMALL_CASES]
)
def test_small_file_within_bounds(sources, tmp_path, attempt, case, keras):
    """Ported within the limits, or refused in one line; never a hang or GBs of memory."""
    src = SMALL_FILES[case](sources, tmp_path)
    attempt("parity.port", src, tmp_path / "out.pt", keras=keras, fragments=(str(src),))


def test_10000_layers_with_keras_importable(sources, tmp_path, attempt):
    src = many_layers(sources, tmp_path, 10_000)
    attempt("parity.port", src, tmp_path / "out.pt", *SAMPLES, fragments=(str(src),))


@pytest.mark.parametrize("bomb", [hdf5_gzip_bomb, zip_deflate_bomb], ids=["hdf5-gzip", "zip"])
def test_deflated_zero_kernels_are_refused(sources, tmp_path, refuse, bomb):
    src = bomb(sources, tmp_path)
    refuse("parity.port", src, tmp_path / "out.pt", fragments=(str(src),))


# `parity.load_torch_model(path)` as a user's script calls it, with the project's one-line edge.
_LOAD_TORCH_MODEL = """
import sys
from fashion_cnn.errors import cli_entry
import parity

@cli_entry
def main(argv):
    model = parity.load_torch_model(argv[0])
    print(type(model).__name__, sum(p.numel() for p in model.parameters()))

sys.exit(main(sys.argv[1:]))
"""

LOAD_CASES = {
    "layers-45000": lambda s, t: many_layers(s, t, 45_000),
    "relu-600-layers": SMALL_FILES["relu-600-layers"],
    "hdf5-gzip-bomb": hdf5_gzip_bomb,
    "expanded-pt-20000": lambda s, t: expanded_pt(s, t, 20_000),
}


@pytest.mark.parametrize("case", list(LOAD_CASES))
def test_load_torch_model_within_bounds(sources, tmp_path, attempt, case):
    src = LOAD_CASES[case](sources, tmp_path)
    attempt("-c", _LOAD_TORCH_MODEL, src, fragments=(str(src),))


# --- 4. terminal injection -----------------------------------------------------------------------

# ("forgery" would be in pytest's own tmp_path names, which these outputs print)
FORGED = "evil\x1b[2J\x1b]0;title\x07\rerror: zqxw\nerror: zqxw too\x9b31m\r\n"


def assert_not_forged(run_out: str, run_err: str) -> None:
    """The hostile name stays on its line: every line that shows "zqxw" also shows "evil"."""
    for line in (run_out + "\n" + run_err).splitlines():
        if "zqxw" in line:
            assert "evil" in line, f"a line forged from a layer name: {line!r}"


def _forged_pair(sources, tmp_path: Path, perturb: bool) -> tuple[Path, Path]:
    """The MLP with its last Dense named FORGED, as `.keras` and as a generic `.pt` (with its
    last weight perturbed where `perturb`, so that the check fails at that layer)."""
    keras_file = edited_keras(sources["mlp.keras"], tmp_path / "k.keras", rename("out", FORGED))

    def tensors(state: dict) -> None:
        # A name with control characters never becomes code: the module is named for its kind.
        for param in ("weight", "bias"):
            state[f"dense.{param}"] = state.pop(f"out.{param}")
        if perturb:
            state["dense.weight"] += 0.5

    torch_file = edited_pt(sources["mlp.pt"], tmp_path / "t.pt", rename("out", FORGED), tensors)
    return keras_file, torch_file


@pytest.mark.parametrize("keras", KERAS_MODES)
def test_forged_layer_name_in_the_port_table(sources, tmp_path, attempt, keras):
    src, _ = _forged_pair(sources, tmp_path, perturb=False)
    dst = tmp_path / "out.pt"
    run = attempt("parity.port", src, dst, *SAMPLES, keras=keras, fragments=(str(src),))
    if run is not None:
        assert_not_forged(run.out, run.err)


def test_forged_layer_name_in_the_port_error_line(sources, tmp_path, refuse):
    src = edited_keras(
        sources["mlp.keras"], tmp_path / "k.keras",
        lambda c: (set_fields("out", units=0)(c), rename("out", FORGED)(c)),
    )
    line = refuse("parity.port", src, tmp_path / "out.pt", fragments=(str(src),))
    assert "\x1b" not in line and "\r" not in line and "\x9b" not in line
    assert_not_forged("", line)


CHECK_CASES = [(False, "blocked"), (True, "importable"), (True, "blocked")]


@pytest.mark.parametrize(
    ("perturb", "keras"),
    CHECK_CASES,
    ids=[f"{'differing' if p else 'agreeing'}-keras-{k}" for p, k in CHECK_CASES],
)
def test_forged_layer_name_in_the_check_report(
    sources, tmp_path, attempt, canary, keras_blocker, perturb, keras
):
    keras_file, torch_file = _forged_pair(sources, tmp_path, perturb)
    args = (keras_file, torch_file, "--samples", "50", "--test-images", "100")
    if not perturb:
        run = attempt("parity.check", *args, keras=keras)
        if run is not None:
            assert_not_forged(run.out, run.err)
        return
    # The models differ at the forged layer: exit 1, one error line, the report on stdout.
    before = _files(tmp_path)
    run = run_cli(
        "parity.check", *args, cwd=tmp_path,
        blocked=keras_blocker if keras == "blocked" else None,
    )
    assert_refused(run, "parity.check", before=before, folder=tmp_path, canary=canary)
    assert_clean(run)
    assert_not_forged(run.out, run.err)


# --- 5. a failed --module-py leaves DST written --------------------------------------------------


@pytest.mark.parametrize(
    "hostile", ["relu_x\\N{", "relu_x\\x", "relu_x\x00"], ids=["backslash-N", "backslash-x", "nul"]
)
def test_failed_module_py_writes_no_dst(sources, tmp_path, canary, keras_blocker, hostile):
    """A module source that cannot be generated (an invalid escape, a NUL byte) is found before
    DST is written: refused in one line with nothing written, or ported safely."""
    src = edited_keras(sources["mlp.keras"], tmp_path / "src.keras", rename("relu_a", hostile))
    dst, module_py = tmp_path / "out.pt", tmp_path / "model.py"
    before = _files(tmp_path)
    run = run_cli(
        "parity.port", src, dst, "--module-py", module_py, *SAMPLES, cwd=tmp_path,
        blocked=keras_blocker,
    )
    if run.code == 0:
        assert_clean(run)
        check_module_py(module_py, dst, tmp_path, hostile)
        return
    assert not dst.exists(), f"DST written, then --module-py failed: {run.err[-500:]}"
    assert not module_py.exists()
    assert_refused(
        run, "parity.port", before=before, folder=tmp_path, canary=canary, fragments=(str(src),)
    )
    assert_clean(run)


# --- 6, 7. tracebacks instead of one line; non-finite config values ------------------------------

# (id, base model, layer, fields): each edit made to the real `.keras` of that model.
CONFIG_CASES = [
    ("conv-strides-0", "zoo", "conv", {"strides": [0, 0]}),
    ("conv-dilation-0", "zoo", "conv", {"dilation_rate": [0, 0]}),
    ("conv-dilation-negative", "zoo", "conv", {"dilation_rate": [-1, -1]}),
    ("conv-kernel-size-0", "zoo", "conv", {"kernel_size": [0, 0]}),
    ("conv-filters-0", "zoo", "conv", {"filters": 0}),
    ("maxpool-size-0", "zoo", "maxpool", {"pool_size": [0, 0]}),
    ("maxpool-strides-0", "zoo", "maxpool", {"strides": [0, 0]}),
    ("padding-negative", "zoo", "pad", {"padding": [[-1, -1], [-1, -1]]}),
    ("dense-units-0", "mlp", "out", {"units": 0}),
    ("dense-units-negative", "mlp", "out", {"units": -3}),
    ("dense-units-float", "mlp", "out", {"units": 3.0}),
    ("dense-units-huge", "mlp", "out", {"units": 10**12}),
    ("reshape-overflow", "zoo", "reshape", {"target_shape": [2**62 + 49, 4]}),  # ≡ 196 mod 2**64
    ("reshape-negative", "zoo", "reshape", {"target_shape": [-49, -4]}),
    ("dense-use-bias-string", "mlp", "out", {"use_bias": "yes"}),
    ("dense-activation-42", "mlp", "out", {"activation": 42}),
]
# Values a converter could take and hand to the computation (Keras, or the numpy reference).
VALUE_CASES = [
    ("relu-max-value-0", "zoo", "relu", {"max_value": 0.0}),
    ("bn-epsilon-negative", "zoo", "bn", {"epsilon": -1.0}),
    ("bn-epsilon-nan", "zoo", "bn", {"epsilon": NAN}),
    ("bn-momentum-above-1", "zoo", "bn", {"momentum": 2.0}),
    ("dropout-rate-1", "zoo", "drop", {"rate": 1.0}),
    ("dropout-rate-nan", "zoo", "drop", {"rate": NAN}),
    ("rescaling-scale-nan", "zoo", "rescale", {"scale": NAN}),
    ("rescaling-scale-inf", "zoo", "rescale", {"scale": INF}),
    ("rescaling-offset-nan", "zoo", "rescale", {"offset": NAN}),
]
BOTH_WAYS = {"relu-max-value-0", "bn-epsilon-negative", "bn-epsilon-nan", "rescaling-scale-nan"}
ALL_CONFIG_CASES = [
    *((*case, "importable") for case in CONFIG_CASES + VALUE_CASES),
    *((*case, "blocked") for case in VALUE_CASES if case[0] in BOTH_WAYS),
]
# A refusal through the weights' shapes names the variable (dense_1/kernel), not the layer.
NAMED_BY_ITS_WEIGHTS = {"dense-units-huge"}


@pytest.mark.parametrize(
    ("case", "base", "layer", "fields", "keras"),
    ALL_CONFIG_CASES,
    ids=[f"{c[0]}-keras-{c[4]}" for c in ALL_CONFIG_CASES],
)
def test_bad_layer_config_is_one_line(
    sources, tmp_path, refuse, capsys, case, base, layer, fields, keras
):
    """With Keras importable, in this process (the refusal comes before any framework work, and
    a subprocess per case would cost the suite a minute); with Keras blocked, in its own."""
    edit = set_fields(layer, **fields)
    src = edited_keras(sources[f"{base}.keras"], tmp_path / "bad.keras", edit)
    argv = [src, tmp_path / "out.pt", *SAMPLES, "--module-py", tmp_path / "m.py"]
    fragments = (str(src),) if case in NAMED_BY_ITS_WEIGHTS else (str(src), layer)
    if keras == "blocked":
        refuse("parity.port", *argv, keras=keras, fragments=fragments)
        return
    from parity.port import main

    before = _files(tmp_path)
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert code == 1, err[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
    assert "\x1b" not in err and "Traceback" not in err, err
    assert _files(tmp_path) == before, "a file was written or changed"
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


def test_bad_converter_value_in_a_generic_pt(sources, tmp_path, refuse):
    src = edited_pt(sources["mlp.pt"], tmp_path / "bad.pt", set_fields("out", units=0))
    refuse("parity.port", src, tmp_path / "out.keras", fragments=(str(src), "out"))


def test_bad_converter_value_in_a_generic_safetensors(sources, tmp_path, refuse):
    src = edited_safetensors(
        sources["mlp.safetensors"], tmp_path / "bad.safetensors", set_fields("bn_a", epsilon=NAN)
    )
    refuse("parity.port", src, tmp_path / "out.pt", fragments=(str(src), "bn_a"))


def test_bad_converter_value_through_config(sources, tmp_path, refuse):
    """A `.weights.h5` with `--config bad.json`: the architecture path of a weights-only file."""
    src = tmp_path / "zoo.weights.h5"
    shutil.copy(sources["zoo.weights.h5"], src)
    config = json.loads(zip_members(sources["zoo.keras"])["config.json"])
    set_fields("conv", strides=[0, 0])(config)
    bad = tmp_path / "bad.json"
    bad.write_text(dumps(config))
    refuse("parity.port", src, tmp_path / "out.pt", "--config", bad, fragments=("conv",))


def _metadata_list(state):
    state._metadata = [1, 2, 3]


def _metadata_entry_list(state):
    state._metadata[""] = ["keras_config"]


def _config_int(state):
    state._metadata[""]["keras_config"] = 42


def _config_not_json(state):
    state._metadata[""]["keras_config"] = '{"class_name": "Sequential", "config": {'


def _config_list(state):
    state._metadata[""]["keras_config"] = "[1, 2]"


METADATA_CASES = {
    "metadata-is-a-list": _metadata_list,
    "metadata-entry-is-a-list": _metadata_entry_list,
    "keras-config-is-an-int": _config_int,
    "keras-config-not-json": _config_not_json,
    "keras-config-is-a-list": _config_list,
}


@pytest.mark.parametrize("case", list(METADATA_CASES))
def test_hostile_metadata_in_a_generic_pt(sources, tmp_path, refuse, case):
    src = edited_pt(sources["mlp.pt"], tmp_path / "bad.pt", tensors=METADATA_CASES[case])
    refuse("parity.port", src, tmp_path / "out.keras", fragments=(str(src),))


TENSOR_CASES = {
    "sparse": lambda t: t.to_sparse(),
    "meta": lambda t: t.to("meta"),
    "nested": lambda t: torch.nested.nested_tensor([t[:2], t[2:]]),
}


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("kind", list(TENSOR_CASES))
def test_tensors_that_are_not_dense_in_a_generic_pt(sources, tmp_path, refuse, kind):
    def tensors(state: dict) -> None:
        state["out.weight"] = TENSOR_CASES[kind](state["out.weight"])

    src = edited_pt(sources["mlp.pt"], tmp_path / f"{kind}.pt", tensors=tensors)
    refuse("parity.port", src, tmp_path / "out.keras", fragments=(str(src),))


@pytest.mark.parametrize("kind", [".pt", ".keras", "module-py"])
def test_250_character_destination_name_is_written(sources, tmp_path, attempt, kind):
    src = tmp_path / "src.keras"
    shutil.copy(sources["mlp.keras"], src)
    if kind == "module-py":
        dst, module_py = tmp_path / "out.pt", tmp_path / ("m" * 247 + ".py")
        extra: tuple = ("--module-py", module_py)
    else:
        dst, module_py = tmp_path / ("d" * (250 - len(kind)) + kind), None
        extra = ()
    assert len((module_py or dst).name) == 250
    run = attempt("parity.port", src, dst, *extra, *SAMPLES, keras="blocked")
    assert run is not None, "a legal 250-character file name was refused"
    assert dst.is_file() and (module_py is None or module_py.is_file())
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("kind", ["dst", "module-py"])
def test_destination_name_over_255_is_one_line(sources, tmp_path, refuse, kind):
    src = tmp_path / "src.keras"
    shutil.copy(sources["mlp.keras"], src)
    long = tmp_path / ("d" * 253 + ".pt")
    args = (long,) if kind == "dst" else (tmp_path / "out.pt", "--module-py", long)
    refuse("parity.port", src, *args, *SAMPLES, keras="blocked")


def test_duplicate_layer_names_in_a_legacy_h5(sources, tmp_path, refuse):
    """twin_b renamed twin_a in model_config: both would read model_weights/twin_a."""
    src = edited_h5(sources["twins.h5"], tmp_path / "dup.h5", rename("twin_b", "twin_a"))
    refuse("parity.port", src, tmp_path / "out.pt", *SAMPLES, fragments=(str(src), "twin_a"))


@pytest.mark.parametrize("keras", KERAS_MODES)
def test_duplicate_layer_names_in_a_keras_archive(sources, tmp_path, refuse, keras):
    src = edited_keras(sources["twins.keras"], tmp_path / "dup.keras", rename("twin_b", "twin_a"))
    refuse(
        "parity.port", src, tmp_path / "out.pt", *SAMPLES,
        keras=keras, fragments=(str(src), "twin_a"),
    )


# --- 8. outputs over inputs ----------------------------------------------------------------------


def test_module_py_over_src_with_force_is_refused(sources, tmp_path, refuse):
    src = tmp_path / "src.keras"
    shutil.copy(sources["mlp.keras"], src)
    before = src.read_bytes()
    refuse(
        "parity.port", src, tmp_path / "out.pt", "--module-py", src, "--force", *SAMPLES,
        keras="blocked",
    )
    assert src.read_bytes() == before


@pytest.mark.parametrize("which", ["keras-file", "torch-file"])
def test_check_json_over_an_input_is_refused(sources, tmp_path, refuse, which):
    keras_file, torch_file = tmp_path / "m.keras", tmp_path / "m.pt"
    shutil.copy(sources["mlp.keras"], keras_file)
    shutil.copy(sources["mlp.pt"], torch_file)
    target = keras_file if which == "keras-file" else torch_file
    before = target.read_bytes()
    refuse(
        "parity.check", keras_file, torch_file, "--json", target,
        "--samples", "50", "--test-images", "100", keras="blocked", fragments=(str(target),),
    )
    assert target.read_bytes() == before


@pytest.mark.parametrize("device", ["/dev/null", "/dev/stdout"])
def test_check_json_over_a_link_to_a_device_is_refused(sources, tmp_path, refuse, device):
    keras_file, torch_file = tmp_path / "m.keras", tmp_path / "m.pt"
    shutil.copy(sources["mlp.keras"], keras_file)
    shutil.copy(sources["mlp.pt"], torch_file)
    link = tmp_path / "report.json"
    link.symlink_to(device)
    refuse(
        "parity.check", keras_file, torch_file, "--json", link,
        "--samples", "50", "--test-images", "100", keras="blocked", fragments=(str(link),),
    )
    assert link.is_symlink() and os.readlink(link) == device
