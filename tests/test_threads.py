"""The CPU thread policy (fashion_cnn/threads.py): what it decides, that a user's own setting
wins, that the command lines set it before torch is imported (in fresh interpreters), and that a
library import sets nothing. Speed itself is bench/speed_busy.py's, not a test's."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fashion_cnn.scripts import SCRIPTS
from fashion_cnn.threads import (
    auto_threads,
    busy_others,
    openmp_env,
    prepare_cli_env,
    threads_arg,
)

ROOT = Path(__file__).resolve().parents[1]
OURS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")
CLIS = ("torch_impl.train", "torch_impl.evaluate", "torch_impl.predict", "torch_impl.visualize",
        "parity.port", "parity.check", "parity.visualize")


@pytest.mark.parametrize(("cpus", "others", "want"), [
    (2, 0, 2), (2, 1, 1), (2, 5, 1), (16, 3, 13), (1, 0, 1), (4, -1, 4)])
def test_auto_threads_one_per_free_core_at_least_one(cpus, others, want):
    assert auto_threads(cpus, others) == want


def test_the_policy_sets_the_auto_count_and_nothing_else():
    assert openmp_env({}, cpus=4, others=1) == {"OMP_NUM_THREADS": "3"}
    assert openmp_env({}, cpus=2, others=0) == {"OMP_NUM_THREADS": "2"}, "quiet: one per core"
    assert openmp_env({}, cpus=2, others=1) == {"OMP_NUM_THREADS": "1"}


@pytest.mark.parametrize(("user", "want"), [
    ({"OMP_WAIT_POLICY": "PASSIVE"}, {"OMP_NUM_THREADS": "2"}),
    ({"GOMP_SPINCOUNT": "10000"}, {"OMP_NUM_THREADS": "2"}),
    ({"OMP_NUM_THREADS": "7"}, {}),
    ({"OMP_NUM_THREADS": ""}, {}),
    ({"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "1"}, {}),
])
def test_a_users_setting_wins(user, want):
    assert openmp_env(user, cpus=2, others=0) == want, "the policy overrode a user's variable"
    environ = dict(user)
    assert prepare_cli_env(environ).keys() == want.keys()
    assert {k: environ[k] for k in user} == user, "prepare_cli_env changed a user's variable"


def test_busy_others_counts_a_whole_number():
    assert busy_others(samples=3, interval_s=0.0) >= 0


@pytest.mark.parametrize(("text", "want"), [("auto", 0), ("0", 0), ("1", 1), ("12", 12)])
def test_threads_arg(text, want):
    assert threads_arg(text) == want


@pytest.mark.parametrize("text", ["-1", "two", "", "1.5", "AUTO "])
def test_threads_arg_refuses(text):
    with pytest.raises(argparse.ArgumentTypeError):
        threads_arg(text)


def test_train_parses_threads():
    from torch_impl.train import TrainConfig, build_parser, config_from_args

    parse = build_parser().parse_args
    assert TrainConfig().threads == 0
    assert config_from_args(parse([])).threads == 0, "the default is auto"
    assert config_from_args(parse(["--threads", "auto"])).threads == 0
    assert config_from_args(parse(["--threads", "3"])).threads == 3
    with pytest.raises(SystemExit) as stop:
        parse(["--threads", "many"])
    assert stop.value.code == 2


# A fresh interpreter runs a CLI as `python -m CLI --help` does (runpy, run_name="__main__"),
# after wrapping prepare_cli_env to record whether torch was already loaded when it ran; then
# it reports the variables and the thread count torch took.
_CHILD = """
import json, os, runpy, sys
import fashion_cnn.threads as policy
seen = []
real = policy.prepare_cli_env
def spy(*args, **kwargs):
    seen.append("torch" in sys.modules)
    return real(*args, **kwargs)
policy.prepare_cli_env = spy
sys.argv = [{cli!r}, "--help"]
try:
    runpy.run_module({cli!r}, run_name="__main__", alter_sys=True)
except SystemExit:
    pass
import torch
print(json.dumps({{"torch_loaded_before": seen,
                  "env": {{k: os.environ.get(k) for k in {ours!r}}},
                  "torch_threads": torch.get_num_threads()}}))
"""


def _child(code: str, **env: str) -> dict:
    base = {k: v for k, v in os.environ.items() if k not in OURS}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env=base | {"TF_CPP_MIN_LOG_LEVEL": "3"} | env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("cli", CLIS)
def test_cli_sets_the_policy_before_torch(cli):
    got = _child(_CHILD.format(cli=cli, ours=OURS))
    assert got["torch_loaded_before"] == [False], f"{cli}: policy ran {got['torch_loaded_before']}"
    assert got["env"]["OMP_WAIT_POLICY"] is None and got["env"]["GOMP_SPINCOUNT"] is None
    threads = int(got["env"]["OMP_NUM_THREADS"])
    assert 1 <= threads <= len(os.sched_getaffinity(0))
    assert got["torch_threads"] == threads, "torch did not take the policy's thread count"


_SCRIPT = _CHILD.replace(
    'runpy.run_module({cli!r}, run_name="__main__", alter_sys=True)',
    "from fashion_cnn import scripts; getattr(scripts, {function!r})()")
TORCH_SCRIPTS = [s for s, m in SCRIPTS.items() if m.startswith(("parity.", "torch_impl."))]


@pytest.mark.parametrize("script", TORCH_SCRIPTS)
def test_console_script_sets_the_policy_before_torch(script):
    """A console script (fashion_cnn.scripts) imports its command's module only after the
    policy is set, as `python -m` does."""
    got = _child(_SCRIPT.format(cli=script, function=script.replace("-", "_"), ours=OURS))
    assert got["torch_loaded_before"] == [False], f"{script}: {got['torch_loaded_before']}"
    assert got["torch_threads"] == int(got["env"]["OMP_NUM_THREADS"])


def test_cli_keeps_a_users_settings():
    got = _child(_CHILD.format(cli="torch_impl.train", ours=OURS),
                 OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1")
    assert got["env"] == {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": None,
                          "OMP_NUM_THREADS": "1"}
    assert got["torch_threads"] == 1


def test_library_import_sets_nothing():
    code = ("import json, os, torch_impl.train, torch_impl.evaluate, parity.port\n"
            f"print(json.dumps({{k: os.environ.get(k) for k in {OURS!r}}}))")
    assert _child(code) == dict.fromkeys(OURS)
