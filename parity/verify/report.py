"""What the port and the check print, and `parity.check`'s JSON report: one report for every
model, the book's CNN presented with the book's names (conv1 … logits, probabilities) and its
accuracy. Every name from a file passes `one_line` before it reaches a terminal."""

from __future__ import annotations

from fashion_cnn.errors import one_line
from parity import book
from parity.build import Built
from parity.verify.compare import ATOL, RULE, LayerDiff
from parity.verify.layerwise import Agreement, Images


def layer_table(built: Built) -> str:
    """Keras layer, PyTorch module(s), output shape (Keras order), parameters, transform."""
    rows = [("Keras layer", "PyTorch module", "output shape", "params", "transform")]
    for info in built.layers:
        rows.append((
            one_line(f"{info.name} ({info.class_name.rsplit('.', 1)[-1]})"),
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


# Up to this many layers are listed one per line; a larger model's table lists the worst
# (by the share of the tolerance used) and counts the rest per class (`--json` has them all).
TABLE_ROWS = 40
WORST_ROWS = 15


def format_table(diffs: list[LayerDiff], name_width: int = 14,
                 classes: dict[str, str] | None = None) -> str:
    """A fixed-width report, one line per layer — for a model of more than TABLE_ROWS layers,
    its WORST_ROWS worst layers, then per class: how many layers, how many passed, the most
    of the tolerance any used. `classes`: layer name → class."""
    head = (f"{'layer':<{name_width}}{'shape (Keras layout)':<22}{'max |diff|':>12}"
            f"{'max rel':>12}{'scale':>10}{'used':>8}  result")
    shown = diffs
    if len(diffs) > TABLE_ROWS:
        shown = sorted(diffs, key=lambda d: -d.used)[:WORST_ROWS]
    lines = [head] + [
        f"{one_line(d.name):<{name_width}}{str(d.shape):<22}{d.max_abs:>12.3e}"
        f"{d.max_rel:>12.3e}{d.scale:>10.3g}{d.used:>8.3f}  {'pass' if d.passed else 'FAIL'}"
        for d in shown
    ]
    if shown is not diffs:
        lines[1:1] = [f"(the {len(shown)} of {len(diffs)} layers that used most of the "
                      f"tolerance; per class below)"]
        per: dict[str, list[LayerDiff]] = {}
        for d in diffs:
            per.setdefault((classes or {}).get(d.name, "?"), []).append(d)
        lines.append(f"{'class':<28}{'layers':>7}{'passed':>8}{'most used':>11}")
        lines += [f"{one_line(c)[:27]:<28}{len(ds):>7}{sum(d.passed for d in ds):>8}"
                  f"{max(d.used for d in ds):>11.3f}" for c, ds in sorted(per.items())]
    return "\n".join(lines)


def _book_names(layers: list[LayerDiff]) -> list[LayerDiff]:
    """The book's CNN's rows under the book's names: each Keras layer's output and the logits,
    Dropout left out (the identity at inference)."""
    names = [r[0] for r in book.REPORT]
    rows = [d for d in layers if not d.name.startswith("dropout")]
    if len(rows) != len(names):  # not the book's probes: keep the Keras names
        return layers
    return [LayerDiff(n, d.shape, d.max_abs, d.max_rel, d.atol, d.rtol, d.passed, d.scale,
                      d.used) for n, d in zip(names, rows, strict=True)]


def check_report(
    files: tuple[object, object], sides: tuple[str, str], samples: int, layers: list[LayerDiff],
    outputs: LayerDiff, agree: Agreement, images: Images, note: str, is_book: bool,
    classes: dict[str, str] | None = None,
) -> dict:
    """`parity.check`'s report: the two files and what ran them, the layer-by-layer
    comparison, the test-set numbers, and the first thing that differs."""
    if is_book:
        layers = _book_names(layers)
    test_set: dict = {"images": images.description, "outputs": outputs.as_dict()}
    first = next((d.name for d in layers if not d.passed), None)
    if agree.agreeing is not None:
        test_set.update(predictions_agreeing=agree.agreeing, prediction_ties=agree.ties,
                        real_disagreements=agree.real)
        if first is None and agree.real:
            first = "predictions"
    if agree.correct is not None and agree.count:
        test_set.update(keras_accuracy=agree.correct[0] / agree.count,
                        torch_accuracy=agree.correct[1] / agree.count)
    if note:
        test_set["note"] = note
    if first is None and not outputs.passed:
        first = "outputs (all)"
    return {
        "keras_file": str(files[0]),
        "torch_file": str(files[1]),
        "keras_side": sides[0],
        "torch_side": sides[1],
        "book": bool(is_book),
        "samples": int(samples),
        "rule": RULE,
        "layers": [{**d.as_dict(), "class": (classes or {}).get(d.name)} for d in layers],
        "test_set": test_set,
        "passed": first is None,
        "first_failure": first,
    }


def format_report(report: dict) -> str:
    """The report as `parity.check` prints it."""
    diffs = [LayerDiff(**{**{k: v for k, v in d.items() if k != "class"},
                          "shape": tuple(d["shape"])}) for d in report["layers"]]
    classes = {d["name"]: d.get("class") or "?" for d in report["layers"]}
    t = report["test_set"]
    agree = ""
    if "predictions_agreeing" in t:
        agree = f"; predictions agreeing {t['predictions_agreeing']}"
        if t.get("prediction_ties"):
            agree += f" (and {t['prediction_ties']} ties within atol {ATOL:g})"
    if "keras_accuracy" in t:
        agree += f"; accuracy Keras {t['keras_accuracy']:.4f}, PyTorch {t['torch_accuracy']:.4f}"
    lines = [
        f"Keras:   {one_line(report['keras_file'])}  [{report['keras_side']}]",
        f"PyTorch: {one_line(report['torch_file'])}  [{report['torch_side']}]",
        f"layer outputs on the first {report['samples']} images:",
        f"tolerance: {report.get('rule', RULE)}",
        format_table(diffs, min(60, max(14, 2 + max(len(d.name) for d in diffs))), classes),
        f"all {t['images']}: outputs max |diff| {t['outputs']['max_abs']:.3e}{agree}",
        *([f"images: {t['note']}"] if t.get("note") else []),
    ]
    if report["passed"]:
        lines.append("PASS: every layer within tolerance, predictions agree")
    elif report["first_failure"] == "predictions":
        lines.append(f"FAIL: {t['real_disagreements']} predictions differ beyond a tie within "
                     f"{ATOL:g}")
    else:
        failed = next((d for d in diffs if d.name == report["first_failure"]), None)
        detail = (f": max |diff| {failed.max_abs:.3e}, {failed.used:.3g} times the tolerance "
                  f"(scale {failed.scale:.3g})" if failed else "")
        lines.append(f"FAIL: first differing layer {one_line(str(report['first_failure']))}"
                     f"{detail}")
    return "\n".join(lines)
