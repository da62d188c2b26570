"""Progress of a long command on a terminal: its stages, and images per second while it checks.

    with Progress(("reading", "building", "checking", "writing")) as progress:
        progress.stage("reading")
        ...
        with progress.samples(1000, "checking") as tick:
            for batch in batches:
                ...
                tick(len(batch))

The bars go to stderr (stdout carries the report, which scripts read), and only where stderr is
a terminal: piped or redirected, a command prints exactly what it prints without them. They
appear only once the command has run for `delay` seconds (DEFAULT_DELAY; the environment's
FASHION_CNN_PROGRESS_DELAY, read by `from_env`, sets it), so a quick port shows nothing extra,
and they are cleared when the work ends or fails, before the report or the one error line is
printed. Strings from a file pass `one_line` before they reach the terminal.

A background thread shows the bars once the delay has passed and refreshes their clocks while a
stage runs without ticking (reading a large file, building the Keras reference); every change
to the bars is made under one lock. tqdm is loaded only when a bar is shown.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TextIO

from fashion_cnn.errors import one_line

DEFAULT_DELAY = 1.5  # seconds before anything is shown: quick commands print nothing extra
DELAY_ENV = "FASHION_CNN_PROGRESS_DELAY"
REFRESH = 0.5  # seconds between refreshes of a shown bar's clock while nothing ticks
PORT_STAGES = ("reading", "building", "checking", "writing")
CHECK_STAGES = ("reading", "building", "checking layers", "checking predictions")
PROGRESS_EPILOG = (
    "Progress: on a terminal, a command that runs longer than about "
    f"{DEFAULT_DELAY:g} s shows its stages and the images checked per second on stderr "
    f"(cleared when it ends; {DELAY_ENV}=SECONDS sets the delay); nothing when stderr is not "
    "a terminal."
)


def delay_from_env(environ: dict[str, str] | os._Environ = os.environ) -> float:
    """FASHION_CNN_PROGRESS_DELAY as seconds ≥ 0; DEFAULT_DELAY when unset or not a number."""
    try:
        value = float(environ.get(DELAY_ENV, DEFAULT_DELAY))
    except ValueError:
        return DEFAULT_DELAY
    return value if value >= 0 else DEFAULT_DELAY  # nan fails `>= 0` too


class Progress:
    """A bar of named stages and, during a check, one of images with their rate (see module).

    Disabled (every method a no-op, no thread) unless `stream` is a terminal; use it as a
    context manager, or call `close()`, so the bars are cleared however the work ends."""

    def __init__(self, stages: Sequence[str], stream: TextIO | None = None, *,
                 delay: float = DEFAULT_DELAY, enabled: bool | None = None) -> None:
        self.stages = tuple(stages)
        self.stream = sys.stderr if stream is None else stream
        self.enabled = _is_terminal(self.stream) if enabled is None else enabled
        self.delay = delay
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._shown = False
        self._stage = ""
        self._index = 0  # the current stage's number, from 1
        self._count: list = []  # [total, n, description] of the samples in flight, or []
        self._stage_bar = self._sample_bar = None
        self._thread: threading.Thread | None = None
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
            self._thread.start()

    @classmethod
    def from_env(cls, stages: Sequence[str], stream: TextIO | None = None) -> Progress:
        """A Progress on `stream` (stderr) with the environment's delay (`delay_from_env`)."""
        return cls(stages, stream, delay=delay_from_env())

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def stage(self, name: str) -> None:
        """Begin the stage `name`: one of `stages` (numbered by its place there) or any label
        (numbered after the last); the previous one is done."""
        if not self.enabled:
            return
        with self._lock:
            self._index = (self.stages.index(name) if name in self.stages else self._index) + 1
            self._stage = one_line(name)
            if self._stage_bar is not None:
                self._stage_bar.set_description_str(self._label(), refresh=True)

    @contextmanager
    def samples(self, total: int, description: str = "checking") -> Iterator[Callable[[int], None]]:
        """A count of `total` images with their rate; yields `tick(n)`, called as n are done."""
        if not self.enabled:
            yield _ignore
            return
        with self._lock:
            self._count = [total, 0, one_line(description)]
            if self._shown:
                self._open_sample_bar()
        try:
            yield self._tick
        finally:
            with self._lock:
                bar, self._sample_bar, self._count = self._sample_bar, None, []
                if bar is not None:
                    bar.refresh()  # the final count and rate, then cleared
                    bar.close()

    def close(self) -> None:
        """Stop the thread and clear the bars (idempotent)."""
        if not self.enabled:
            return
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        with self._lock:
            for bar in (self._sample_bar, self._stage_bar):
                if bar is not None:
                    bar.close()
            self._sample_bar = self._stage_bar = None
            self._shown = True  # nothing is shown again
            self.stream.flush()

    # --- under the lock -------------------------------------------------------------------

    def _tick(self, n: int) -> None:
        with self._lock:
            if self._count:
                self._count[1] += n
            if self._sample_bar is not None:
                self._sample_bar.update(n)

    def _label(self) -> str:
        if not self._stage:
            return "…"
        return f"[{self._index}/{max(len(self.stages), self._index)}] {self._stage}"

    def _open_sample_bar(self) -> None:
        from tqdm import tqdm

        total, n, description = self._count
        # mininterval 0: ticks come a batch at a time, each worth showing
        self._sample_bar = tqdm(total=total, initial=n, desc=description, unit="sample",
                                file=self.stream, leave=False, position=1, mininterval=0,
                                **_width(self.stream))

    def _show(self) -> None:
        from tqdm import tqdm

        self._shown = True
        self._stage_bar = tqdm(desc=self._label(), bar_format="{desc}  {elapsed}",
                               file=self.stream, leave=False, position=0, **_width(self.stream))
        if self._count:
            self._open_sample_bar()

    def _run(self) -> None:
        """The thread: show the bars after the delay, then keep their clocks moving."""
        if self._stop.wait(self.delay):
            return
        with self._lock:
            if self._stop.is_set():
                return
            self._show()
        while not self._stop.wait(REFRESH):
            with self._lock:
                for bar in (self._stage_bar, self._sample_bar):
                    if bar is not None:
                        bar.refresh()


NO_PROGRESS = Progress((), enabled=False)  # shows nothing, holds no state: a safe default


def _ignore(n: int) -> None:
    """The tick of a disabled Progress."""


def _width(stream: TextIO) -> dict:
    """tqdm's size options: the terminal's, followed as it is resized; 80 × 24 where the terminal
    says it has no size (a pseudo-terminal nobody sized), where tqdm would print nothing."""
    try:
        size = os.get_terminal_size(stream.fileno())
        if size.columns == 0 or size.lines == 0:
            return {"ncols": 80, "nrows": 24}
    except (AttributeError, OSError, ValueError):  # no file descriptor: tqdm's default
        pass
    return {"dynamic_ncols": True}


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False

