"""The launcher (progdistill.recipes.launcher) against a real scheduler: a single-node Slurm started by .ci/slurm when
it can start here (root, Debian's slurm-wlm and munge), else submitit's local executor, which runs each job as
its own process through the same code path. The scheduler used is printed (pytest -s) and named in the skip
reasons; PROGDISTILL_TEST_SCHEDULER=submitit-local forces the local executor."""

import json
import os
import signal
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import tiny_config

from progdistill.core.config import ConfigError
from progdistill.core.threads import chosen_by
from progdistill.experiment import step_size
from progdistill.recipes.launcher import (
    LauncherConfig,
    check_shared,
    job_groups,
    launch,
    read_launch,
    scheduler_states,
    teacher_job,
)
from progdistill.recipes.runner import run
from progdistill.store.lock import lock_holder
from progdistill.store.rundir import RunDir

pytest.importorskip("submitit", reason='the launcher tests need submitit: pip install "progdistill[launch]"')

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def scheduler():
    """ "slurm" when .ci/slurm starts a single-node Slurm here (SLURM_CONF set for the session), else
    "submitit-local"."""
    if os.environ.get("PROGDISTILL_TEST_SCHEDULER", "slurm") != "slurm":
        return "submitit-local"
    try:
        done = subprocess.run(
            [str(ROOT / ".ci" / "slurm"), "start"], check=False, capture_output=True, text=True, timeout=240
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(f"\nlauncher tests: Slurm could not start ({exc}); using submitit's local executor")
        return "submitit-local"
    if done.returncode != 0:
        print(f"\nlauncher tests: Slurm could not start ({done.stderr.strip()[-300:]}); using submitit-local")
        return "submitit-local"
    os.environ["SLURM_CONF"] = done.stdout.strip().split("=", 1)[1]
    print("\nlauncher tests: a single-node Slurm (.ci/slurm)")
    return "slurm"


def _config(steps: int = 600, seeds: int = 2):
    """The shrunk parity-mlp of conftest (n=8, k=2, widths 64 / 16), 4 schedules x ``seeds``."""
    base = tiny_config(steps=steps, seeds=seeds)
    return replace(
        base,
        schedules=tuple(
            replace(s, points=((100, 100), (-1, steps - 100))) if hasattr(s, "points") else s for s in base.schedules
        ),
    )


def _outputs(out: Path) -> dict[str, str]:
    """Every trained number of a run: metrics, weights and the teacher's manifest."""
    files = sorted(
        p
        for p in out.rglob("*")
        if p.is_file()
        and "jobs" not in p.relative_to(out).parts
        and (p.suffix in (".jsonl", ".safetensors") or p.name == "manifest.json")
    )
    return {
        str(p.relative_to(out)): p.read_bytes().hex() if p.suffix == ".safetensors" else p.read_text() for p in files
    }


def _results(out: Path) -> dict:
    return {
        k: v
        for k, v in json.loads((out / "results.json").read_text()).items()
        if k not in ("wall_time_s", "environment")
    }


def _launcher(kind: str, **kw) -> LauncherConfig:
    return LauncherConfig(kind=kind, cpus_per_job=2, time_min=30, node_local_ok=True, **kw)


def test_job_groups():
    config = _config(seeds=2)
    names = ["ce-seed0", "one-shot-seed0", "progressive-seed0", "2-shot-seed0", "ce-seed1", "one-shot-seed1"]
    assert job_groups(config, names, "stack") == [names]
    assert job_groups(config, names, "seed") == [names[:4], names[4:]]
    assert job_groups(config, names[:2], "student") == [["ce-seed0"], ["one-shot-seed0"]]


def test_bad_launcher_options_are_one_clear_error():
    with pytest.raises(ConfigError, match="--launcher 'pbs' is not a launcher; valid: local, slurm"):
        LauncherConfig(kind="pbs")
    with pytest.raises(ConfigError, match="--time 0 is invalid"):
        LauncherConfig(kind="slurm", time_min=0)
    with pytest.raises(ConfigError, match="--sbatch 'qos=high' is invalid"):
        LauncherConfig(kind="slurm", sbatch=("qos=high",))
    assert LauncherConfig(kind="slurm", sbatch=("--qos=high", "--exclusive")).extra_parameters() == {
        "qos": "high",
        "exclusive": True,
    }
    with pytest.raises(
        ConfigError,
        match=r"--partition, --gpus-per-job: Slurm option\(s\), valid only with "
        r"--launcher slurm \(this is --launcher local\)",
    ):
        LauncherConfig(kind="local", partition="gpu", gpus_per_job=1)


def test_a_run_directory_other_nodes_cannot_see_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"under /tmp, which only this machine sees.*--node-local-ok"):
        check_shared(Path("/tmp/progdistill-run"), LauncherConfig(kind="slurm"))
    if Path("/dev/shm").is_dir():
        with pytest.raises(ConfigError, match="only this machine sees"):
            check_shared(Path("/dev/shm/run"), LauncherConfig(kind="slurm"))
    check_shared(Path("/tmp/run"), LauncherConfig(kind="slurm", node_local_ok=True))
    check_shared(Path("/tmp/run"), LauncherConfig(kind="submitit-local"))  # its jobs run on this machine


@pytest.mark.e2e
def test_an_option_slurm_rejects_is_one_clear_error_and_submits_nothing(scheduler, tmp_path):
    if scheduler != "slurm":
        pytest.skip("needs Slurm (.ci/slurm could not start one here)")
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"Slurm refuses the launcher's job options .*--partition=no-such-part"):
        launch(_config(), out, _launcher("slurm", partition="no-such-part"), log=lambda *a: None)
    with pytest.raises(ConfigError, match=r"Slurm refuses .*--not-an-option"):
        launch(_config(), out, _launcher("slurm", sbatch=("--not-an-option=1",)), log=lambda *a: None)
    assert not out.exists()


@pytest.mark.e2e
def test_students_as_separate_jobs_equal_one_process(scheduler, tmp_path):
    """Teacher job, then one student job per seed (a stack of 4 each): the same metrics and weights, bit for
    bit, as `run` in one process (one stack of 8), and the report written by the last job."""
    config = _config(seeds=2)
    reference = tmp_path / "reference"
    run(config, reference, device="cpu", log=lambda *a: None)
    out = tmp_path / "jobs"
    record = launch(config, out, _launcher(scheduler, job_per="seed"), device="cpu", wait=True, log=print)
    assert record["teacher"] and len(set(record["students"].values())) == 2  # two student jobs
    assert record["students"]["ce-seed0"] == record["students"]["2-shot-seed0"] != record["students"]["ce-seed1"]
    assert _outputs(out) == _outputs(reference)
    assert _results(out) == _results(reference)  # written by the job that finished last
    assert read_launch(out)["launcher"] == scheduler
    assert not any(lock_holder(d) for d in (out / "students").iterdir())
    assert sorted(p.name for p in (out / "jobs").iterdir() if p.is_dir()) == sorted(
        {str(record["teacher"]), *map(str, record["students"].values())}
    )  # one folder per job, and no empty "%j" left from the folder template


@pytest.mark.e2e
def test_a_killed_student_job_resubmitted_resumes_to_the_same_numbers(scheduler, tmp_path):
    config = replace(_config(steps=3000, seeds=1), student=replace(tiny_config().student, steps=3000, eval_every=100))
    reference = tmp_path / "reference"
    run(config, reference, device="cpu", log=lambda *a: None)
    out = tmp_path / "killed"
    launch(config, out, _launcher(scheduler), device="cpu", wait=False, log=print)
    metrics = out / "students" / "ce-seed0" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 8):
        time.sleep(0.05)
    holder = lock_holder(out / "students" / "ce-seed0")
    assert holder is not None, "the student job finished before it could be killed; make the config longer"
    os.kill(int(holder["pid"]), signal.SIGKILL)  # the node dies under the job: no error is recorded
    while lock_holder(out / "students" / "ce-seed0") is not None or scheduler_states(read_launch(out)):
        time.sleep(0.05)  # until the scheduler has seen the job end
    assert not (out / "results.json").exists()
    launch(config, out, _launcher(scheduler), device="cpu", wait=True, log=print)
    logs = "".join(p.read_text() for p in (out / "jobs").rglob("*_log.out"))
    assert "resuming from the saved state" in logs
    assert _outputs(out) == _outputs(reference)
    assert _results(out) == _results(reference)


def test_a_job_chooses_its_threads_as_progdistill_run_does(tmp_path, monkeypatch):
    """A scheduler's teacher job sets its thread count from the config and the cores (core.threads), or from the
    launcher's --cpus-per-job, and says which in the environment record, as `progdistill run` does."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        base = tiny_config()
        small = {"steps": 20, "eval_every": 10}
        config = replace(  # CE alone, 20 steps
            base,
            teacher=replace(base.teacher, **small),
            student=replace(base.student, **small),
            schedules=base.schedules[:1],
        )
        out = tmp_path / "run"
        RunDir(out).claim(config, overwrite=False)
        teacher_job(str(out))
        assert torch.get_num_threads() == 1  # the tiny MLP's step is far below SMALL_STEP
        assert chosen_by() == f"step size {step_size(config)} on {os.cpu_count()} cores"
        teacher_job(str(out), threads=2)  # the teacher is reused; the count is still set
        assert torch.get_num_threads() == 2 and chosen_by() == "--threads"
    finally:
        torch.set_num_threads(before)
