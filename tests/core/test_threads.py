"""The run's thread count: a function of the config and the core count, never of the load."""

import json
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from progdistill.core.config import ConfigError
from progdistill.core.threads import SMALL_STEP, choose_threads, chosen_by, set_threads
from progdistill.experiment import step_size
from progdistill.recipes.presets import get_preset


@given(st.integers(0, 10**10), st.integers(0, 10**10), st.integers(1, 256))
def test_the_choice_is_one_thread_for_small_steps_and_monotone_in_the_work(a, b, cores):
    small, large = sorted((a, b))
    assert choose_threads(small, cores) <= choose_threads(large, cores)  # more work never gets fewer threads
    assert choose_threads(small, cores) == (1 if small < SMALL_STEP else cores)
    assert choose_threads(None, cores) == cores  # unknown work: every core, as torch's default


def test_parity_presets_keep_the_thread_counts_their_results_were_measured_with_on_two_cores():
    """parity-mlp's README table comes out bit for bit at 1 thread; parity-transformer's record is at torch's 2."""
    assert choose_threads(step_size(get_preset("parity-mlp")), 2) == 1
    assert choose_threads(step_size(get_preset("parity-transformer")), 2) == 2
    assert step_size(get_preset("pcfg-lm")) is None  # no size estimate: torch's default, every core


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_threads_flag_wins_over_the_environment_which_wins_over_the_rule(monkeypatch, restore_threads):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert set_threads(1, 10**12) == 1 and torch.get_num_threads() == 1 and chosen_by() == "--threads"
    assert set_threads(None, 10) == 2 and torch.get_num_threads() == 2 and chosen_by() == "OMP_NUM_THREADS"
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert set_threads(None, 10) == 1 and chosen_by() == f"step size 10 on {os.cpu_count()} cores"
    with pytest.raises(ConfigError, match="--threads 0 is invalid"):
        set_threads(0, 10)


def test_importing_the_package_makes_idle_openmp_threads_sleep():
    code = "import os, progdistill; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "PASSIVE"
    env["OMP_WAIT_POLICY"] = "ACTIVE"  # the user's own setting wins
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ACTIVE"


def test_a_run_records_its_thread_count_and_what_chose_it(tmp_path, monkeypatch, restore_threads):
    from progdistill.cli import main

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    args = ["run", "parity-mlp", "--seeds", "1", "--out", str(tmp_path / "r"), "--threads", "1", "--report-to", "none"]
    small = ["task.n=8", "task.k=2", "task.eval_size=256", "teacher.steps=20", "student.steps=20",
             "teacher.model.width=16", "teacher.eval_every=10", "teacher.checkpoint_every=10",
             "student.eval_every=10", 'schedules=[{"type":"ce"}]']  # fmt: skip
    assert main(args + [a for s in small for a in ("--set", s)]) == 0
    env = json.loads((tmp_path / "r" / "results.json").read_text())["environment"]
    assert env["torch_threads"] == 1 and env["threads_chosen_by"] == "--threads"
