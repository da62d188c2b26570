"""The book's notebooks, notebooks/08-2.ipynb and 08-3.ipynb, run top to bottom in a kernel.

Quick mode (BOOK_QUICK=1: one epoch on 2,000 images, a Keras model fitted on 2,000 images for
the comparison), every file written under tmp_path (BOOK_RUNS), the kernel working in tmp_path
and importing this checkout (PYTHONPATH). 08-3 reads the checkpoint 08-2 writes. Every cell must
run; the cells that carry the book's results must show them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

pytestmark = pytest.mark.slow  # two kernels, a short training in each framework

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
KERNEL = "python3"
CELL_TIMEOUT = 600  # seconds; a quick run takes ~20 s per notebook on 2 cores
MAPS_DIFF = re.compile(r"Keras vs PyTorch (conv\d) feature maps: max \|diff\| (\S+) over (\d+)")


def execute(name: str, workdir: Path, runs: Path) -> nbformat.NotebookNode:
    """Run notebooks/NAME in a fresh kernel (this venv's python3) in `workdir`; return it with
    its outputs. Raises nbclient's CellExecutionError, naming the cell, if any cell fails."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    env = {
        **os.environ,
        "BOOK_QUICK": "1",
        "BOOK_RUNS": str(runs),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",  # figures as cell outputs
        # One torch thread: on a shared 2-core machine two threads slow down up to 6× whenever
        # another process holds a core (the notebooks took 82 s instead of 47 s here).
        "OMP_NUM_THREADS": "1",
    }
    env.pop("BOOK_KERAS", None)  # the notebook makes its own Keras checkpoint
    client = nbclient.NotebookClient(
        nb, timeout=CELL_TIMEOUT, kernel_name=KERNEL, resources={"metadata": {"path": workdir}}
    )
    client.execute(env=env)
    return nb


def cell(nb, marker: str):
    """The one code cell whose source contains `marker`."""
    found = [c for c in nb.cells if c.cell_type == "code" and marker in c.source]
    assert len(found) == 1, f"{len(found)} code cells contain {marker!r}"
    return found[0]


def text(c) -> str:
    """Everything a cell printed or displayed as text."""
    parts = []
    for out in c.outputs:
        if out.output_type == "stream":
            parts.append(out.text)
        elif "data" in out and "text/plain" in out.data:
            parts.append(out.data["text/plain"])
    return "\n".join(parts)


def png_count(c) -> int:
    """How many PNG images a cell displayed."""
    return sum(1 for out in c.outputs if "image/png" in out.get("data", {}))


@pytest.fixture(scope="module")
def notebooks(tmp_path_factory):
    """Both notebooks executed, 08-2 first (08-3 reads its checkpoint), in one runs folder."""
    from jupyter_client.kernelspec import find_kernel_specs

    assert KERNEL in find_kernel_specs(), "no python3 kernel: pip install ipykernel"
    root = tmp_path_factory.mktemp("notebooks")
    runs, workdir = root / "runs", root / "work"
    workdir.mkdir()
    executed = {name: execute(f"{name}.ipynb", workdir, runs) for name in ("08-2", "08-3")}
    return executed, runs, workdir


def test_every_cell_ran_and_wrote_only_under_the_runs_folder(notebooks):
    executed, runs, workdir = notebooks
    for name, nb in executed.items():
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(c.execution_count for c in code), f"{name}: a cell did not run"
        errors = [o for c in code for o in c.outputs if o.output_type == "error"]
        assert not errors, f"{name}: {errors[0].ename}: {errors[0].evalue}"
    assert {p.name for p in (runs / "08-2").iterdir()} >= {"best-cnn-model.pt", "history.json"}
    assert (runs / "08-3" / "keras-cnn-model.keras").is_file()
    assert not any(workdir.iterdir()), "a notebook wrote into its working directory"


def test_08_2_shows_the_books_results(notebooks):
    nb = notebooks[0]["08-2"]
    assert "(60000, 28, 28) → (48000, 28, 28, 1) (12000, 28, 28, 1)" in text(
        cell(nb, "book_split(")
    )
    assert "Total params: 333,526" in text(cell(nb, "print(summary(model))"))
    training = text(cell(nb, "train(config"))
    assert "Epoch 1/1" in training and "epochs run: 1, best epoch: 1" in training
    assert png_count(cell(nb, 'plt.ylabel("loss")')) == 1, "no loss plot"

    val = re.search(r"validation: accuracy (\S+), loss", text(cell(nb, "val = evaluate(")))
    assert val and 0.6 < float(val[1]) <= 1, "validation accuracy of one epoch on 2,000 images"

    prediction = cell(nb, "plot_prediction(")
    assert png_count(prediction) == 1, "no bar chart"
    line = re.search(r"val_scaled\[0\]: predicted (\S+) \((.+)\), p=(\S+); label (\S+)",
                     text(prediction))
    assert line, text(prediction)
    assert line[4] == "가방", "the book's first validation image is a bag"
    assert 0.1 <= float(line[3]) <= 1

    test = re.search(r"test: accuracy (\S+) \(([\d,]+)/10,000\)", text(cell(nb, "test = eval")))
    assert test and 0.6 < float(test[1]) <= 1


def test_08_3_shows_weights_feature_maps_and_keras_beside_pytorch(notebooks):
    nb = notebooks[0]["08-3"]
    shapes = text(cell(nb, "print(conv.weight.shape, conv.bias.shape)"))
    assert "torch.Size([32, 1, 3, 3]) torch.Size([32])" in shapes
    assert "(3, 3, 1, 32)" in shapes
    assert png_count(cell(nb, "plt.hist(conv_weights")) == 1
    assert png_count(cell(nb, "axs[i, j].imshow(conv_weights")) == 1

    untrained = text(cell(nb, "untrained_models("))
    glorot = re.search(r"untrained, Keras Glorot uniform: mean \S+, std (\S+)", untrained)
    assert glorot and 0.07 < float(glorot[1]) < 0.095, "Glorot uniform: std ≈ 0.08"
    assert png_count(cell(nb, "plot_histograms(")) == 1
    assert png_count(cell(nb, "plot_kernels(")) == 1

    assert "torch.Size([1, 32, 28, 28])" in text(cell(nb, 'conv_acti(image)["conv1"]'))
    assert png_count(cell(nb, '"conv1", maps["conv1"]')) == 1
    assert png_count(cell(nb, '"conv2", maps["conv2"]')) == 1

    # the port refuses any real disagreement; an argmax may still differ by a tie within atol
    agree = re.search(r"([\d,]+)/1,000 predictions agree", text(cell(nb, "port(keras_file")))
    assert agree and int(agree[1].replace(",", "")) >= 990, text(cell(nb, "port(keras_file"))
    comparison = cell(nb, "plot_side_by_side(")
    diffs = {m[1]: (float(m[2]), int(m[3])) for m in MAPS_DIFF.finditer(text(comparison))}
    assert set(diffs) == {"conv1", "conv2"}
    assert diffs["conv1"][1] == 32 and diffs["conv2"][1] == 64
    assert all(d <= 1e-5 for d, _ in diffs.values()), diffs
    assert png_count(comparison) == 2
