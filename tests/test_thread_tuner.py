"""fashion_cnn.thread_tuner: the controller that moves the training loop's thread count to the
fastest candidate. Its decisions are tested on given step times (a clock of our own: the logic,
not a timing); the command line's use of it on real steps is tested by its history.json."""

import json
import subprocess
import sys

import pytest

from fashion_cnn.thread_tuner import ThreadTuner, candidate_counts


def run_steps(tuner: ThreadTuner, seconds_at, steps: int) -> list[int]:
    """Feed `steps` steps whose time is seconds_at(step, threads); the count at each step."""
    counts = []
    for i in range(steps):
        counts.append(tuner.threads)
        tuner.observe(seconds_at(i, tuner.threads))
    return counts


def test_candidates_are_one_half_and_all_cores():
    assert candidate_counts(2, 2) == [1, 2]
    assert candidate_counts(8, 3) == [1, 3, 4, 8]
    assert candidate_counts(1, 1) == [1]


def test_a_quiet_machine_keeps_its_count_and_probes_less_and_less():
    set_to = []
    tuner = ThreadTuner([1, 2], 2, set_to.append)
    counts = run_steps(tuner, lambda i, n: 0.010 if n == 2 else 0.016, 1500)
    assert tuner.threads == 2 and all(p.chosen == 2 for p in tuner.probes)
    # Probes at 8, then periods 256, 512, 1024 after each: the first runs 8 steps at 2 and 4 at
    # 1, the later ones 4 at 1 only (2's sample is its last steps): few at the slower count.
    assert [p.step for p in tuner.probes] == [8, 8 + 12 + 256, 8 + 12 + 256 + 4 + 512]
    # 1.6× slower: cut after settle (2) + cut_after (2) steps instead of settle + samples (8).
    assert counts.count(1) == 4 * len(tuner.probes)
    assert counts.count(1) / len(counts) < 0.02
    assert set_to == [1, 2] * len(tuner.probes)


def test_load_that_arrives_mid_run_moves_to_one_thread_within_a_window():
    tuner = ThreadTuner([1, 2], 2, lambda n: None)
    # Quiet until step 400, then another process takes a core: two threads wait for it.
    def seconds(i, n):
        if i < 400:
            return 0.010 if n == 2 else 0.016
        return 0.080 if n == 2 else 0.020

    counts = run_steps(tuner, seconds, 600)
    assert counts[399] == 2
    moved = next(i for i in range(400, 600) if counts[i] == 1)
    # Half a window of slow steps moves its median past 1.5×; the drift probe takes 2's sample
    # from those steps and goes straight to trying 1 thread.
    assert moved <= 400 + 16 // 2 + 1
    assert next(p for p in tuner.probes if p.chosen == 1).seconds[2] == pytest.approx(0.080)
    assert tuner.threads == 1
    assert next(p for p in tuner.probes if p.chosen == 1).reason == "drift"
    # Only the later probes run at 2 threads, each cut short: 4× slower is a loser at once.
    assert counts[moved:].count(2) <= 4 * (len(tuner.probes) - 1)


def test_load_that_goes_away_is_found_by_the_next_scheduled_probe():
    # One thread barely speeds up when the load goes (0.020 → 0.016 s: no drift); the doubling
    # schedule's probe (8, 276, then 792) finds two threads faster.
    tuner = ThreadTuner([1, 2], 1, lambda n: None)
    counts = run_steps(tuner, lambda i, n: (0.020 if n == 1 else 0.080) if i < 300
                       else (0.016 if n == 1 else 0.008), 1200)
    assert counts[700] == 1 and tuner.threads == 2
    assert [(p.step, p.chosen) for p in tuner.probes][:3] == [(8, 1), (276, 1), (792, 2)]


@pytest.mark.parametrize("slower, steps_at_other", [(1.6, 4), (1.1, 8), (0.5, 8)])
def test_a_losing_count_is_cut_short_and_a_near_call_is_timed_in_full(slower, steps_at_other):
    # The other count `slower` × the current one: cut after settle + cut_after steps only when
    # both timed steps are over cut (1.25) × the current median; a near call or a faster count
    # is timed in full, so that its median is the probe's.
    tuner = ThreadTuner([1, 2], 2, lambda n: None)
    counts = run_steps(tuner, lambda i, n: 0.010 if n == 2 else 0.010 * slower, 30)
    probe = tuner.probes[0]
    assert counts[8:16] == [2] * 8 and counts[16:16 + steps_at_other] == [1] * steps_at_other
    assert probe.seconds[1] == pytest.approx(0.010 * slower)
    assert probe.chosen == (1 if slower < 1 else 2)


def test_one_slow_step_does_not_cut_a_count_that_wins():
    # A count whose first timed step is a hiccup but whose second is fast stays in the probe.
    tuner = ThreadTuner([1, 2], 2, lambda n: None)
    at_one = iter([0.05, 0.05, 0.05, 0.004, 0.004, 0.004, 0.004, 0.004])  # settle 2, then timed
    run_steps(tuner, lambda i, n: 0.010 if n == 2 else next(at_one), 8 + 8 + 8)
    assert tuner.probes[0].chosen == 1 and tuner.probes[0].seconds[1] == pytest.approx(0.004)


def test_a_tie_keeps_the_current_count():
    tuner = ThreadTuner([1, 2], 2, lambda n: pytest.fail("no switch expected") if n == 3 else None)
    run_steps(tuner, lambda i, n: 0.01, 100)
    assert tuner.threads == 2 and tuner.probes[0].chosen == 2


def test_one_count_is_refused():
    with pytest.raises(ValueError):
        ThreadTuner([1], 1, lambda n: None)


@pytest.mark.slow
def test_the_command_line_records_its_probes(tmp_path, monkeypatch):
    """`--threads auto` on the CPU: history.json lists the probes, each keeping its fastest."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    out = tmp_path / "run"
    subprocess.run([sys.executable, "-m", "torch_impl.train", "--limit", "1500", "--epochs", "1",
                    "--out", str(out)], check=True, capture_output=True, text=True, timeout=300)
    tuning = json.loads((out / "history.json").read_text())["thread_tuning"]
    if len(candidate_counts(len(__import__("os").sched_getaffinity(0)), 1)) < 2:
        assert tuning is None
        return
    assert tuning["probes"], tuning
    for probe in tuning["probes"]:
        medians = probe["median_step_seconds"]
        assert min(medians.values()) == medians[str(probe["chosen"])]
    # A pinned count is never changed: no tuner.
    pinned = tmp_path / "pinned"
    subprocess.run([sys.executable, "-m", "torch_impl.train", "--limit", "500", "--epochs", "1",
                    "--threads", "2", "--out", str(pinned)], check=True, capture_output=True,
                   timeout=300)
    assert json.loads((pinned / "history.json").read_text())["thread_tuning"] is None
