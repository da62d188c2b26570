"""The command-line contract, for every CLI alike: bad usage exits 2 with argparse's usage line;
a bad file exits 1 with one line on stderr naming it; `--help` answers with exit 0."""

from __future__ import annotations

import importlib

import pytest

CLIS = (
    "torch_impl.train",
    "torch_impl.evaluate",
    "torch_impl.predict",
    "torch_impl.visualize",
    "keras_ref.train",
    "keras_ref.visualize",
    "parity.port",
    "parity.check",
    "parity.visualize",
    "fashion_cnn.fashion_mnist",
)

# (cli, argv) with a bad value; "{k}", "{t}" and "{d}" stand for a Keras file, a torch file and a
# folder (their contents do not matter: usage is checked before any file is opened).
BAD_USAGE = [
    ("torch_impl.train", ["--epochs", "0"]),
    ("torch_impl.train", ["--batch-size", "-1"]),
    ("torch_impl.train", ["--lr", "nan"]),
    ("torch_impl.train", ["--device", "bogus"]),
    ("torch_impl.train", ["--seed", "4294967296"]),
    ("torch_impl.evaluate", ["{t}", "--batch-size", "0"]),
    ("torch_impl.evaluate", ["{t}", "--device", "bogus"]),
    ("torch_impl.predict", ["{t}", "--top", "0"]),
    ("torch_impl.predict", ["{t}", "--device", "gpu"]),
    ("torch_impl.visualize", ["{t}", "--index", "-1"]),
    ("keras_ref.train", ["--epochs", "0"]),
    ("keras_ref.visualize", ["{k}", "--seed", "-1"]),
    ("parity.port", ["{k}", "{t}", "--samples", "0"]),
    ("parity.check", ["{k}", "{t}", "--samples", "0"]),
    ("parity.check", ["{k}", "{t}", "--device", "bogus"]),
    ("parity.visualize", ["{k}", "{t}", "--out", "{o}", "--index", "-1"]),
    ("fashion_cnn.fashion_mnist", ["--no-such-flag"]),
]

# (cli, argv) naming a file that is not what it should be: exit 1, one line naming it.
BAD_FILE = [
    ("torch_impl.train", ["--data-dir", "{d}", "--out", "{o}"]),
    ("torch_impl.evaluate", ["{t}", "--device", "cpu"]),
    ("torch_impl.predict", ["{t}", "--device", "cpu"]),
    ("torch_impl.visualize", ["{t}", "--out", "{o}"]),
    ("keras_ref.train", ["--data-dir", "{d}", "--out", "{o}"]),
    ("keras_ref.visualize", ["{k}", "--out", "{o}"]),
    ("parity.port", ["{k}", "{o}/out.pt"]),
    ("parity.check", ["{k}", "{t}"]),
    ("parity.visualize", ["{k}", "{t}", "--out", "{o}"]),
    ("fashion_cnn.fashion_mnist", ["--data-dir", "{d}"]),
]


@pytest.fixture
def paths(tmp_path):
    """A Keras and a torch file holding text, an empty data folder, an output folder."""
    (tmp_path / "model.keras").write_text("not a checkpoint")
    (tmp_path / "model.pt").write_text("not a checkpoint")
    (tmp_path / "data").mkdir()
    (tmp_path / "out").mkdir()
    return {
        "k": str(tmp_path / "model.keras"),
        "t": str(tmp_path / "model.pt"),
        "d": str(tmp_path / "data"),
        "o": str(tmp_path / "out"),
    }


def _main(cli: str):
    return importlib.import_module(cli).main


def _argv(argv: list[str], paths: dict) -> list[str]:
    return [a.format(**paths) for a in argv]


@pytest.mark.parametrize("cli", CLIS)
def test_help_exits_0(cli, capsys):
    with pytest.raises(SystemExit) as exc:
        _main(cli)(["--help"])
    assert exc.value.code == 0
    assert f"python -m {cli}" in capsys.readouterr().out


@pytest.mark.parametrize("cli, argv", BAD_USAGE, ids=[f"{c}{a[-2:]}" for c, a in BAD_USAGE])
def test_bad_usage_exits_2(cli, argv, paths, capsys):
    with pytest.raises(SystemExit) as exc:
        _main(cli)(_argv(argv, paths))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage:") and "error:" in err, err


@pytest.mark.parametrize("cli, argv", BAD_FILE, ids=[c for c, _ in BAD_FILE])
def test_bad_file_exits_1_with_one_line(cli, argv, paths, capsys, monkeypatch):
    monkeypatch.delenv("FASHION_MNIST_DIR", raising=False)
    assert _main(cli)(_argv(argv, paths)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    named = paths["d"] if "{d}" in argv else paths["k"] if "{k}" in argv else paths["t"]
    assert named in err[0], err


VERSION_LINE = r"(?P<cli>[\w.]+) (?P<version>\S+) \(torch (?P<torch>\S+), keras (?P<keras>\S+)\)"


@pytest.mark.parametrize("cli", CLIS)
def test_version_names_the_command_and_the_frameworks(cli, capsys):
    import re
    from importlib import metadata

    import fashion_cnn

    with pytest.raises(SystemExit) as exc:
        _main(cli)(["--version"])
    assert exc.value.code == 0
    out = capsys.readouterr().out.strip()
    match = re.fullmatch(VERSION_LINE, out)
    assert match, f"--version printed {out!r}"
    assert match["cli"] == cli and match["version"] == fashion_cnn.__version__, out
    assert match["torch"] == metadata.version("torch"), out
    assert match["keras"] == metadata.version("keras"), out


def test_version_says_keras_absent_without_importing_a_framework():
    """The line comes from the distributions' metadata: with Keras uninstalled it says so, and
    neither torch nor TensorFlow is imported to make it."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from importlib import metadata\n"
        "real = metadata.version\n"
        "def version(name):\n"
        "    if name == 'keras':\n"
        "        raise metadata.PackageNotFoundError(name)\n"
        "    return real(name)\n"
        "metadata.version = version\n"
        "from fashion_cnn.cli import version_line\n"
        "print(version_line('parity.port'))\n"
        "print(sorted(m for m in ('torch', 'tensorflow', 'keras') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out[0].startswith("parity.port ") and out[0].endswith(", keras absent)"), out
    assert out[1] == "[]", f"--version imported {out[1]}"
