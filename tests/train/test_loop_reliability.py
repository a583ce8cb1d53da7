"""Interruptions: SIGKILL at several points and rerun gives the uninterrupted numbers; locks; crashes."""

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import tiny_config

from progdistill.core.files import read_metrics
from progdistill.distill.schedules import CE, Progressive
from progdistill.recipes.presets import get_preset
from progdistill.store.lock import RunLock, RunLockedError

ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")


def _config(tmp_path: Path) -> Path:
    base = tiny_config(steps=3000)
    config = replace(
        base,
        teacher=replace(
            base.teacher, eval_every=100, checkpoint_every=100, model=replace(base.teacher.model, width=512)
        ),
        student=replace(base.student, eval_every=100),
        seeds=2,
    )
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config.to_dict()))
    return path


def _cmd(config: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "progdistill.cli", "run", str(config), "--out", str(out), "--device", "cpu"]


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _outputs(out: Path) -> dict[str, str]:
    files = sorted(
        p
        for p in out.rglob("*")
        if p.is_file() and (p.suffix in (".jsonl", ".safetensors") or p.name == "manifest.json")
    )
    return {
        str(p.relative_to(out)): p.read_bytes().hex() if p.suffix == ".safetensors" else p.read_text() for p in files
    }


def _kill_and_rerun(config: Path, tmp_path: Path, kill_points: list[Callable[[Path], bool]]) -> Path:
    """Run ``config`` once uninterrupted, then into another directory killed (SIGKILL) once at each of
    ``kill_points`` (each a test on that directory as it is written) and rerun to the end: every metrics file,
    checkpoint file (bytes) and manifest (with each checkpoint's sha256), and the results, must be the uninterrupted
    run's. Returns the killed and rerun directory."""
    reference = tmp_path / "reference"
    subprocess.run(_cmd(config, reference), check=True, capture_output=True, env=ENV, timeout=600)
    expected = _outputs(reference)
    results = json.loads((reference / "results.json").read_text())

    out = tmp_path / "killed"
    kills = 0
    for ready in kill_points:
        proc = subprocess.Popen(_cmd(config, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
        deadline = time.time() + 300
        while not ready(out) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 2, "the run finished before it could be interrupted; make the test config longer"
    assert (out / ".lock").exists()  # a killed process leaves its lock behind ...
    subprocess.run(_cmd(config, out), check=True, capture_output=True, env=ENV, timeout=600)  # ... taken over
    assert _outputs(out) == expected
    got = json.loads((out / "results.json").read_text())
    assert {k: v for k, v in got.items() if k != "wall_time_s"} == {
        k: v for k, v in results.items() if k != "wall_time_s"
    }
    assert not list(out.rglob("*resume*.pt"))  # resume states are removed once training finishes
    return out


def _teacher_records(count: int) -> Callable[[Path], bool]:
    return lambda out: _lines(out / "teacher" / "metrics.jsonl") >= count


def _student_records(name: str, count: int) -> Callable[[Path], bool]:
    return lambda out: _lines(out / "students" / name / "metrics.jsonl") >= count


@pytest.mark.e2e
def test_sigkill_and_rerun_equals_uninterrupted(tmp_path):
    kill_points = [
        _teacher_records(8),  # mid teacher
        _teacher_records(25),  # later in the teacher
        _student_records("progressive-seed1", 10),  # mid students
    ]
    _kill_and_rerun(_config(tmp_path), tmp_path, kill_points)


def _preset_config(tmp_path: Path, name: str, **shrink) -> Path:
    """Preset ``name`` shrunk to seconds: task, teacher and student models, steps and records as in ``shrink``
    (teacher / student: (model fields, train fields); distillation: its fields), a CE and a progressive student
    of one seed."""
    base = get_preset(name)
    (t_model, t_train), (s_model, s_train) = shrink["teacher"], shrink["student"]
    config = replace(
        base,
        task=replace(base.task, **shrink["task"]),
        teacher=replace(base.teacher, model=replace(base.teacher.model, **t_model), **t_train),
        student=replace(base.student, model=replace(base.student.model, **s_model), **s_train),
        distillation=replace(base.distillation, **shrink.get("distillation", {})),
        schedules=(CE(), Progressive(speed=2.0)),
        seeds=1,
    )
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config.to_dict()))
    return path


@pytest.mark.e2e
def test_sigkill_of_a_transformer_teacher_and_student_and_rerun_equals_uninterrupted(tmp_path):
    """The parity transformer (Adam: its moments and step count are part of the resumed state)."""
    config = _preset_config(
        tmp_path,
        "parity-transformer",
        task=dict(n=8, k=2, eval_size=256),
        teacher=(dict(n_head=4), dict(steps=200, eval_every=10, checkpoint_every=10)),
        student=(dict(n_head=2), dict(steps=60, eval_every=10)),
    )
    kill_points = [_teacher_records(8), _student_records("progressive-x2-seed0", 3)]
    _kill_and_rerun(config, tmp_path, kill_points)


@pytest.mark.e2e
def test_sigkill_of_a_language_model_teacher_and_student_and_rerun_equals_uninterrupted(tmp_path):
    """pcfg-lm (GPT-2 LM, AdamW with a cosine learning-rate schedule, grammar sampling); its student trains on
    generated sequences (seq_kd, and on-policy with probability lmbda: the coin and sampling generators are part
    of the resumed state)."""
    config = _preset_config(
        tmp_path,
        "pcfg-lm",
        task=dict(eval_size=32),
        teacher=(dict(n_layer=1, n_head=2), dict(steps=60, batch_size=8, eval_every=5, checkpoint_every=5)),
        student=(dict(n_layer=1, n_head=1), dict(steps=40, batch_size=8, eval_every=5)),
        distillation=dict(seq_kd=True, lmbda=0.5, max_new_tokens=24),
    )
    kill_points = [_teacher_records(6), _student_records("progressive-x2-seed0", 4)]
    out = _kill_and_rerun(config, tmp_path, kill_points)
    last = read_metrics(out / "students" / "progressive-x2-seed0" / "metrics.jsonl")[-1]
    assert last["seq_kd_steps"] > 0 and last["on_policy_steps"] > 0  # both kinds of generated batches


def test_second_process_on_same_directory_is_refused(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / ".lock").write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename}))
        with pytest.raises(RunLockedError, match=f"in use by process {holder.pid}"), RunLock(tmp_path):
            pass
        from progdistill.cli import main

        assert main(["run", "parity-mlp", "--out", str(tmp_path)]) == 2
    finally:
        holder.kill()
        holder.wait()
    with pytest.warns(UserWarning, match="which is gone"), RunLock(tmp_path):
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    assert not (tmp_path / ".lock").exists()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc (Linux)")
def test_a_killed_but_unreaped_holder_does_not_hold_the_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / ".lock").write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename}))
        os.kill(holder.pid, signal.SIGKILL)  # killed, and not reaped: its parent (this test) has not waited
        stat = Path(f"/proc/{holder.pid}/stat")
        deadline = time.time() + 10
        while stat.read_text().rsplit(")", 1)[1].split()[0] != "Z" and time.time() < deadline:
            time.sleep(0.01)
        assert stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie
        with pytest.warns(UserWarning, match="which is gone"), RunLock(tmp_path):
            assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    finally:
        holder.kill()
        holder.wait()


def test_wall_time_keeps_the_work_of_a_sigkilled_invocation(tmp_path):
    base = tiny_config(steps=3000)
    config = replace(
        base,
        teacher=replace(
            base.teacher, eval_every=100, checkpoint_every=100, model=replace(base.teacher.model, width=512)
        ),
        student=replace(base.student, steps=300),
        seeds=1,
    )
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config.to_dict()))
    out = tmp_path / "run"
    teacher_metrics = out / "teacher" / "metrics.jsonl"
    proc = subprocess.Popen(_cmd(path, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    deadline = time.time() + 300
    while _lines(teacher_metrics) < 12 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed; make the test config longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    from progdistill.store.rundir import RunDir

    killed = RunDir(out).earlier_wall_time()  # persisted as the run went: at least the first 11 records
    assert killed > 0
    subprocess.run(_cmd(path, out), check=True, capture_output=True, env=ENV, timeout=600)
    assert json.loads((out / "results.json").read_text())["wall_time_s"] > killed
    assert (
        f"Wall time: {json.loads((out / 'results.json').read_text())['wall_time_s']:.1f} s"
        in (out / "summary.md").read_text()
    )
