"""`--threads auto` while a run goes: the training loop's thread count follows the load.

`fashion_cnn.threads` picks the count from the load when a command starts. Load that arrives
later — a notebook kernel, a browser, a second run — finds one thread per core and makes every
parallel region wait for the core it lost (the old default's 15×, bench/speed_busy.py). So the
training loop times its steps, and `ThreadTuner` now and then runs a few steps at each candidate
count and keeps the fastest:

- a probe runs `settle` steps at a count (not timed: the pool resizes, caches refill), then times
  `samples` steps; the count with the lowest median step time wins (a tie keeps the current one);
- the current count's sample is its last `samples` steps before the probe once `window` steps
  have run since the last one (a drift probe acts on the slow steps it has seen, not on `settle`
  + `samples` more of them); before that, the current count is tried first;
- another count whose first `cut_after` timed steps are all slower than `cut` × the best median
  so far has lost already and its trial ends there: under load, a count that waits for a core
  another process holds is 1.5-3× slower, so there is no near call to get wrong;
- the first probe comes after `first` steps; the next after `period` steps, doubling up to
  `max_period` each time a probe keeps the count, and back to `period` when one changes it;
- a probe also comes at once when the median of the last `window` steps leaves
  [reference ÷ `drift`, reference × `drift`], the reference being the winner's probe median: the
  load came or went.

On a quiet machine the cost is the probes' steps at the slower count: under 1 % of the book's
first epoch, less after (README, "Speed on a busy machine"). Framework-free (no torch import):
the caller passes the setter, `torch.set_num_threads`.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Probe:
    """One probe: the step it started at, each count's median step seconds, the count kept."""

    step: int
    seconds: dict[int, float]
    chosen: int
    reason: str  # "scheduled" or "drift"

    def as_json(self) -> dict:
        return {"step": self.step, "reason": self.reason, "chosen": self.chosen,
                "median_step_seconds": {str(k): v for k, v in sorted(self.seconds.items())}}


def candidate_counts(cpus: int, start: int) -> list[int]:
    """The counts a probe tries: one thread, half the cores, all of them, and the start's."""
    cpus = max(1, cpus)
    return sorted({1, max(1, cpus // 2), cpus, max(1, start)})


class ThreadTuner:
    """Times each step of `wrap(step)` and moves the thread count to the fastest candidate."""

    def __init__(self, candidates: Iterable[int], start: int, set_threads: Callable[[int], None],
                 *, first: int = 8, period: int = 128, max_period: int = 2048, settle: int = 2,
                 samples: int = 6, cut_after: int = 2, cut: float = 1.25, window: int = 16,
                 drift: float = 1.5, clock: Callable[[], float] = time.perf_counter):
        self.candidates = sorted(set(candidates) | {start})
        if len(self.candidates) < 2 or min(self.candidates) < 1:
            raise ValueError(f"need two or more thread counts of 1 or more, not {candidates}")
        self.threads, self._set, self._clock = start, set_threads, clock
        self.base_period, self.max_period, self.period = period, max_period, period
        self.settle, self.samples, self.drift = settle, samples, drift
        self.cut_after, self.cut = min(cut_after, samples), cut
        self.steps, self.next_probe = 0, first
        self.recent: deque[float] = deque(maxlen=window)
        self.reference: float | None = None
        self.probes: list[Probe] = []
        self._trial: list[int] = []  # the counts still to try in the probe under way
        self._times: dict[int, list[float]] = {}  # each count's timed steps in this probe
        self._settling = 0  # untimed steps still to run at the count under trial
        self._probe_start, self._reason, self._kept = 0, "", start

    def wrap(self, step: Callable) -> Callable:
        """`step`, timed: each call's wall time goes to `observe` (CPU steps are synchronous)."""

        def timed(*args, **kwargs):
            start = self._clock()
            out = step(*args, **kwargs)
            self.observe(self._clock() - start)
            return out

        return timed

    def observe(self, seconds: float) -> None:
        """One step took `seconds`: record it and move the probe along, or start one."""
        self.steps += 1
        if self._trial:
            self._probe_step(seconds)
            return
        self.recent.append(seconds)
        if self.steps >= self.next_probe:
            self._start_probe("scheduled")
        elif self._drifted():
            self._start_probe("drift")

    def _drifted(self) -> bool:
        if self.reference is None or len(self.recent) < self.recent.maxlen:
            return False
        ratio = statistics.median(self.recent) / self.reference
        return not 1 / self.drift <= ratio <= self.drift

    def _start_probe(self, reason: str) -> None:
        self._kept, self._reason, self._probe_start = self.threads, reason, self.steps
        others = [c for c in self.candidates if c != self.threads]
        self._times = {c: [] for c in [self.threads, *others]}
        if len(self.recent) == self.recent.maxlen:  # steps at the current count since the last
            self._times[self.threads] = list(self.recent)[-self.samples:]
            self._trial = others
        else:
            self._trial = [self.threads, *others]
        self._settling = self.settle
        self._switch(self._trial[0])

    def _probe_step(self, seconds: float) -> None:
        if self._settling:
            self._settling -= 1
            return
        count = self._trial[0]
        self._times[count].append(seconds)
        if len(self._times[count]) < self.samples and not self._lost(count):
            return
        self._trial.pop(0)
        self._settling = self.settle
        if self._trial:
            self._switch(self._trial[0])
            return
        medians = {c: statistics.median(t) for c, t in self._times.items()}
        best = min(medians, key=lambda c: (medians[c], c != self._kept))
        self.probes.append(Probe(self._probe_start, medians, best, self._reason))
        self._switch(best)
        self.reference = medians[best]
        self.recent.clear()
        self.period = (min(2 * self.period, self.max_period) if best == self._kept
                       else self.base_period)
        self.next_probe = self.steps + self.period

    def _lost(self, count: int) -> bool:
        """`count`'s first `cut_after` timed steps are all slower than `cut` × the best median
        of the counts timed before it in this probe (never the first: nothing to beat yet)."""
        timed = self._times[count]
        done = [statistics.median(t) for c, t in self._times.items() if c not in self._trial]
        return len(timed) == self.cut_after and bool(done) and min(timed) > self.cut * min(done)

    def _switch(self, count: int) -> None:
        if count != self.threads:
            self._set(count)
            self.threads = count

    def report(self) -> dict:
        """For history.json: the candidates, the probes, and the count at the end."""
        return {"candidates": self.candidates, "threads_at_end": self.threads,
                "probes": [p.as_json() for p in self.probes]}
