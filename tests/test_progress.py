"""Progress on a terminal (`fashion_cnn.progress`): the helper with real tqdm on a stream that
says it is a terminal, and `parity.port` run for real — piped (nothing extra) and on a
pseudo-terminal (stages, samples per second, and an error still one clean line)."""

from __future__ import annotations

import io
import os
import re
import select
import subprocess
import sys
import time
import tty
from pathlib import Path

import pytest

from fashion_cnn.progress import (
    CHECK_STAGES,
    DEFAULT_DELAY,
    DELAY_ENV,
    PORT_STAGES,
    Progress,
    delay_from_env,
)

REPO = Path(__file__).resolve().parents[1]
RATE = re.compile(r"\d+\.\d+sample/s")  # tqdm's rate of a bar counting samples
MARKS = ("\r", "sample/s", "[1/4]")  # what a shown bar leaves in the stream


class FakeTerminal(io.StringIO):
    """A text stream that says it is a terminal (and has no file descriptor)."""

    def isatty(self) -> bool:
        return True


def _work(progress: Progress, samples: int = 40) -> None:
    """The stages of a port, with a check of `samples` ticked ten at a time."""
    progress.stage("reading")
    progress.stage("building")
    progress.stage("checking")
    with progress.samples(samples) as tick:
        for _ in range(samples // 10):
            time.sleep(0.005)
            tick(10)
    progress.stage("writing")


def test_a_terminal_shows_the_stages_and_samples_per_second():
    stream = FakeTerminal()
    with Progress(PORT_STAGES, stream, delay=0) as progress:
        _work(progress)
    text = stream.getvalue()
    for label in ("[1/4] reading", "[2/4] building", "[3/4] checking", "[4/4] writing"):
        assert label in text, text
    assert "40/40" in text and RATE.search(text), text
    # cleared at the end: the last thing written blanks the line and returns to its start
    assert text.endswith("\r") and not text.rsplit("\r", 2)[-2].strip(), repr(text[-100:])


def test_nothing_is_written_to_a_stream_that_is_not_a_terminal():
    stream = io.StringIO()
    with Progress(PORT_STAGES, stream, delay=0) as progress:
        assert not progress.enabled
        _work(progress)
    assert stream.getvalue() == ""


def test_nothing_is_written_before_the_delay():
    stream = FakeTerminal()
    with Progress(PORT_STAGES, stream, delay=60) as progress:
        _work(progress)
    assert stream.getvalue() == ""


def test_the_bars_appear_once_the_delay_has_passed_and_pick_up_the_count():
    stream = FakeTerminal()
    with Progress(CHECK_STAGES, stream, delay=0.2) as progress:
        progress.stage("checking layers")
        with progress.samples(100, "layers") as tick:
            tick(30)
            assert stream.getvalue() == ""
            time.sleep(0.6)  # the thread shows both bars, the count so far in the second
            assert "[3/4] checking layers" in stream.getvalue()
            assert "30/100" in stream.getvalue()
            tick(70)
    assert "100/100" in stream.getvalue()


def test_an_error_clears_the_bars_before_it_leaves():
    stream = FakeTerminal()
    with pytest.raises(ValueError, match="bad file"):
        with Progress(PORT_STAGES, stream, delay=0) as progress:
            progress.stage("reading")
            with progress.samples(10):
                raise ValueError("bad file")
    text = stream.getvalue()
    assert "[1/4] reading" in text
    assert text.endswith("\r") and not text.rsplit("\r", 2)[-2].strip(), repr(text[-100:])
    progress.close()  # again: nothing more
    assert stream.getvalue() == text


def test_stage_names_from_a_file_pass_the_one_line_sanitiser():
    stream = FakeTerminal()
    with Progress(("reading",), stream, delay=0) as progress:
        progress.stage("reading evil\x1b[2J\nname")
    text = stream.getvalue()
    assert "\x1b[2J" not in text and "evil\\x1b[2J" not in text and "\\nname" in text, text


@pytest.mark.parametrize(("value", "delay"), [
    (None, DEFAULT_DELAY), ("0", 0.0), ("2.5", 2.5), ("soon", DEFAULT_DELAY),
    ("-1", DEFAULT_DELAY), ("nan", DEFAULT_DELAY),
])
def test_the_delay_from_the_environment(value, delay):
    environ = {} if value is None else {DELAY_ENV: value}
    assert delay_from_env(environ) == delay


# --- the real command line -------------------------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", DELAY_ENV: "0", **extra}


def _on_terminal(args: list[str], stdout: Path, timeout: float = 300) -> tuple[int, str]:
    """Run `python -m …args` with stderr on a pseudo-terminal (no newline translation) and
    stdout to a file; (exit status, everything written to the terminal)."""
    master, slave = os.openpty()
    tty.setraw(slave)  # what the program writes, byte for byte: no \n → \r\n
    with stdout.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", *args], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=slave, cwd=REPO, env=_env())
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                continue
            try:
                chunk = os.read(master, 1 << 16)
            except OSError:  # EIO: the child has gone and closed its end
                break
            if not chunk:
                break
            chunks.append(chunk)
        else:
            proc.kill()
        return proc.wait(timeout=30), b"".join(chunks).decode("utf-8", "replace")
    finally:
        os.close(master)


def test_a_port_that_is_piped_prints_nothing_extra(keras_ckpts, data_dir, tmp_path):
    src = keras_ckpts["random"].files[".keras"]
    dst = tmp_path / "random.pt"
    result = subprocess.run(
        [sys.executable, "-m", "parity.port", str(src), str(dst), "--samples", "64",
         "--data-dir", str(data_dir)],
        capture_output=True, text=True, cwd=REPO, env=_env(), timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr  # the port itself writes nothing there
    assert not any(mark in result.stdout for mark in MARKS), result.stdout
    assert result.stdout.startswith(f"{src} → {dst}\n")


def test_a_port_on_a_terminal_shows_its_stages_and_rate(keras_ckpts, data_dir, tmp_path):
    src = keras_ckpts["random"].files[".keras"]
    dst, report = tmp_path / "random.pt", tmp_path / "report.json"
    status, shown = _on_terminal(
        ["parity.port", str(src), str(dst), "--samples", "64", "--json", str(report),
         "--data-dir", str(data_dir)], tmp_path / "stdout.txt")
    out = (tmp_path / "stdout.txt").read_text()
    assert status == 0, shown
    for label in ("[1/4] reading", "[2/4] building", "[3/4] checking", "[4/4] writing",
                  "[3/4] checking layers", "[4/4] checking predictions"):
        assert label in shown, shown
    assert RATE.search(shown), shown
    assert not any(mark in out for mark in MARKS), out  # stdout: the report alone
    assert "check report: " in out and dst.exists() and report.exists()


def test_an_error_on_a_terminal_is_still_one_clean_line(keras_ckpts, tmp_path):
    whole = keras_ckpts["random"].files[".keras"].read_bytes()
    src = tmp_path / "cut.keras"
    src.write_bytes(whole[: len(whole) // 2])
    dst = tmp_path / "cut.pt"
    status, shown = _on_terminal(["parity.port", str(src), str(dst)], tmp_path / "stdout.txt")
    assert status == 1, shown
    assert "[1/4] reading" in shown, shown  # the bar was up when the error came
    assert shown.endswith("\n") and shown.count("error: ") == 1, repr(shown)
    last = shown[:-1].rsplit("\n", 1)[-1].split("\r")
    # the bar's line blanked, then the error from the line's start, nothing after it
    assert last[-1].startswith(f"error: {src}") and "\x1b" not in last[-1], repr(shown)
    assert len(last) == 1 or not last[-2].strip(" \x1b[A"), repr(shown)
    assert "Traceback" not in shown and not dst.exists()
