"""The CPU thread policy of the PyTorch command lines, decided before torch is imported.

PyTorch's Linux wheels run their intra-op parallel regions on GNU OpenMP (libgomp, loaded with
torch), one thread per core by default. libgomp's idle threads spin for a while before they sleep;
when another process holds one of the cores, a parallel region waits for its thread on that core,
and spinning threads take the time slices the working ones need: beside one busy process on 2
cores an epoch of the book's CNN took 2.7× longer with two threads than with one, and on a more
loaded machine 15× (bench/speed_busy.py, README "Speed on a busy machine").

`--threads auto`, the command lines' default: OMP_NUM_THREADS = one thread per core this process
may run on that no other runnable task holds when the command starts, at least one. On an idle
machine that is torch's own default (and its speed); on a busy one, fewer threads that do not wait.
OMP_WAIT_POLICY is left alone: PASSIVE (idle threads sleep at once) was measured up to 1.7×
slower an epoch on the idle machine, and still slower than one thread on the busy one.

libgomp reads its environment once, when it is loaded — at `import torch` — so the command lines
(`python -m torch_impl.train`, `.evaluate`, `.predict`, `.visualize`, `parity.port`, `.check`,
`.visualize`, and every torchrun rank, which runs `-m torch_impl.train` as its own `__main__`)
call `prepare_cli_env()` before their first import of torch. A library import (a notebook's
`import torch_impl.train`) changes nothing. A user's own setting always wins: OMP_NUM_THREADS in
the environment is kept, and `--threads N` sets torch's count over it.

Framework-free: this module never imports torch (tests/test_imports.py).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Mapping, MutableMapping


def openmp_env(environ: Mapping[str, str], cpus: int | None = None,
               others: int | None = None) -> dict[str, str]:
    """The variables the command lines add to `environ`: OMP_NUM_THREADS =
    `auto_threads(cpus, others)`, unless the user has set OMP_NUM_THREADS (even empty). `cpus`
    defaults to the cores this process may run on, `others` to `busy_others()`."""
    if "OMP_NUM_THREADS" in environ:
        return {}
    cpus = usable_cpus() if cpus is None else cpus
    others = busy_others() if others is None else others
    return {"OMP_NUM_THREADS": str(auto_threads(cpus, others))}


def auto_threads(cpus: int, others: int) -> int:
    """`--threads auto`: one thread per core that no other runnable task holds, at least one.

    A thread whose core another process holds makes every parallel region wait for it, so on a
    busy machine fewer threads finish sooner; on a quiet one this is one thread per core, torch's
    own default."""
    return max(1, cpus - max(0, others))


def usable_cpus() -> int:
    """The cores this process may run on (its affinity mask, where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def busy_others(samples: int = 5, interval_s: float = 0.01) -> int:
    """Runnable tasks of other processes now: the median of a few reads of /proc/loadavg's
    running count (which includes this process, hence − 1). Instantaneous, unlike the load
    average, which still counts a process that ended a minute ago. Where there is no
    /proc/loadavg, the one-minute load average stands in."""
    counts = []
    for i in range(samples):
        try:
            with open("/proc/loadavg") as f:
                running = int(f.read().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return round(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0
        counts.append(running - 1)
        if i + 1 < samples:
            time.sleep(interval_s)
    return sorted(counts)[len(counts) // 2]


def prepare_cli_env(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Add `openmp_env` to the process environment (default: os.environ); returns what it added.

    Call it in a command line's `__main__` before torch is first imported: libgomp reads the
    variables when torch loads it, and ignores later changes.
    """
    global _AUTO
    environ = os.environ if environ is None else environ
    added = openmp_env(environ)
    environ.update(added)
    if environ is os.environ:
        _AUTO = bool(added)
    return added


_AUTO = False  # prepare_cli_env chose this process's OMP_NUM_THREADS (the user set none)


def chosen_automatically() -> bool:
    """Whether this process's command line chose its thread count (`--threads auto` with no
    OMP_NUM_THREADS of the user's): then the training loop may change it as the load changes
    (`fashion_cnn.thread_tuner`). False on a library import, where nothing was chosen."""
    return _AUTO



# The command lines' --help states the policy (argparse epilog).
THREADS_EPILOG = (
    "CPU threads: unless OMP_NUM_THREADS is set, torch runs one thread per core that no other "
    "process is busy on when the command starts, at least one (on an idle machine: one per "
    "core, torch's default); your OMP_NUM_THREADS wins. On a machine that gets busy later, "
    "--threads 1 holds up best."
)

# torch_impl.train's: the count also follows the load while it trains (fashion_cnn.thread_tuner).
TRAIN_THREADS_EPILOG = (
    "CPU threads: unless OMP_NUM_THREADS is set, torch starts with one thread per core that no "
    "other process is busy on, at least one; while it trains, a few steps are timed now and then "
    "at each count (1, half the cores, all of them) and the fastest is kept, so load that comes "
    "or goes later is followed (history.json records each probe). Your OMP_NUM_THREADS or "
    "--threads N wins and stays fixed: pin one when a run must repeat bit for bit."
)


def threads_arg(value: str) -> int:
    """An argparse type for --threads: 'auto' (→ 0: `openmp_env`'s count) or a whole number ≥ 0."""
    if value == "auto":
        return 0
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be 'auto' or a whole number, not {value!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 'auto' or 0 or more, not {value}")
    return n
