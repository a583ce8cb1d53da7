"""Data-parallel training: 2 CPU processes (gloo, started with torchrun) equal 1 process with the same
global batch, within float tolerance; rank 0 alone writes. So do steps on generated batches (sequence-level and
on-policy distillation)."""

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file

from progdistill.core.distributed import local_slice
from progdistill.core.files import read_metrics
from progdistill.distill.schedules import Progressive
from progdistill.recipes.presets import get_preset

ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")


def _run(config_path, out, nproc, *options):
    prefix = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        if nproc > 1
        else [sys.executable]
    )
    return subprocess.run(
        prefix + ["-m", "progdistill.cli", "run", str(config_path), "--out", str(out), "--device", "cpu", *options],
        check=False,
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
    )


@pytest.mark.e2e
def test_two_processes_equal_one(tmp_path):
    config = tiny_config(steps=200)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config.to_dict()))
    one = _run(path, tmp_path / "one", 1)
    assert one.returncode == 0, one.stderr
    two = _run(path, tmp_path / "two", 2)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("| progressive |") == 1  # only rank 0 reports
    for name in ["teacher/metrics.jsonl"] + [f"students/{s.label}-seed0/metrics.jsonl" for s in config.schedules]:
        a, b = read_metrics(tmp_path / "one" / name), read_metrics(tmp_path / "two" / name)
        assert [r["step"] for r in a] == [r["step"] for r in b]
        for ra, rb in zip(a, b):
            for key in ("train_loss", "eval_loss", "eval_accuracy"):
                if ra[key] is not None:
                    assert rb[key] == pytest.approx(ra[key], rel=1e-3, abs=1e-4), (name, ra["step"], key)
    manifest = json.loads((tmp_path / "two" / "teacher" / "manifest.json").read_text())
    assert [c["step"] for c in manifest["checkpoints"]] == [0, 50, 100, 150, 200]


def _generation_config(**distillation):
    """pcfg-lm-generation shrunk to seconds: one progressive student of 12 steps in micro-batches of 2 rows (a
    step's 8 rows are 2 x 2 per process under 2 processes), sampling at most 16 tokens."""
    base = get_preset("pcfg-lm-generation")
    return replace(
        base,
        task=replace(base.task, eval_size=32),
        teacher=replace(
            base.teacher,
            model=replace(base.teacher.model, n_layer=1),
            steps=30,
            batch_size=8,
            eval_every=10,
            checkpoint_every=10,
        ),
        student=replace(
            base.student,
            model=replace(base.student.model, n_layer=1),
            steps=12,
            batch_size=8,
            eval_every=4,
            grad_accumulation=2,
        ),
        distillation=replace(base.distillation, max_new_tokens=16, **distillation),
        schedules=(Progressive(speed=2.0),),
        seeds=1,
        ways=(),  # one way at a time: the one given
    )


@pytest.fixture(scope="module")
def generation_teacher(tmp_path_factory):
    """A run directory of :func:`_generation_config` (without generation) trained by one process: its teacher is
    kept by ``--overwrite`` runs of the generation configs, so that 1 and 2 processes distil the same trajectory."""
    out = tmp_path_factory.mktemp("generation") / "base"
    path = out.parent / "config.json"
    path.write_text(json.dumps(_generation_config().to_dict()))
    done = _run(path, out, 1)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.e2e
@pytest.mark.parametrize(
    "distillation",
    [dict(seq_kd=True), dict(lmbda=0.5, loss="generalized_jsd", beta=0.5)],
    ids=["seq_kd", "on-policy"],
)
def test_two_processes_train_on_generated_batches_as_one(generation_teacher, tmp_path, distillation):
    """Every process samples the step's whole batch from the same generators (the coin and the sampling stream)
    and trains on its rows. The sources of the steps are the same as one process's, and so are the metrics and
    weights up to float rounding: each process sums its own rows' gradients and DDP averages the two sums (one
    process sums all rows at once), measured at most ~4e-7 apart in the weights after 12 steps."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps(_generation_config(**distillation).to_dict()))
    runs = {}
    for nproc in (1, 2):
        out = tmp_path / f"nproc{nproc}"
        shutil.copytree(generation_teacher, out)
        done = _run(path, out, nproc, "--overwrite")  # keeps the finished teacher
        assert done.returncode == 0, done.stderr[-3000:]
        runs[nproc] = out
    name = "students/progressive-x2-seed0"
    one, two = (read_metrics(runs[n] / name / "metrics.jsonl") for n in (1, 2))
    generated = "seq_kd_steps" if distillation.get("seq_kd") else "on_policy_steps"
    assert 0 < one[-1][generated] <= 12  # the steps trained on generated batches
    assert [(r["step"], r["seq_kd_steps"], r["on_policy_steps"]) for r in one] == [
        (r["step"], r["seq_kd_steps"], r["on_policy_steps"]) for r in two
    ]
    for ra, rb in zip(one, two):
        for key in ("train_loss", "eval_loss", "eval_accuracy"):
            if ra[key] is not None:
                assert rb[key] == pytest.approx(ra[key], rel=1e-5, abs=1e-6), (ra["step"], key)
    a, b = (load_file(runs[n] / name / "final.safetensors") for n in (1, 2))
    base = load_file(generation_teacher / name / "final.safetensors")  # trained on the task's data instead
    assert max((a[k] - base[k]).abs().max().item() for k in a) > 1e-3
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=0, atol=1e-5), key


def test_uneven_split_names_both_values():
    assert local_slice(32) == slice(0, 32)
    import progdistill.core.distributed as d

    original = d.rank_world
    try:
        d.rank_world = lambda: (1, 3)
        with pytest.raises(ValueError, match="batch_size=32 does not divide across 3 processes"):
            local_slice(32)
        with pytest.raises(ValueError, match="^student.batch_size=32 does not divide across 3 processes"):
            local_slice(32, "student.batch_size")
        d.rank_world = lambda: (0, 64)
        with pytest.raises(ValueError, match="--nproc_per_node=64 is larger than the global batch_size=32"):
            local_slice(32)
        d.rank_world = lambda: (1, 4)
        assert local_slice(32) == slice(8, 16)
    finally:
        d.rank_world = original


@pytest.mark.e2e
def test_token_task_with_empty_micro_batches_does_not_deadlock(tmp_path):
    """With a tiny mask rate, some micro-batches supervise no token on one process and some on the other; every
    process must still run each backward pass (DDP's gradient all-reduce), or training hangs."""
    shrink = [
        "--set",
        "teacher.steps=20",
        "--set",
        "teacher.eval_every=10",
        "--set",
        "teacher.checkpoint_every=10",
        "--set",
        "teacher.model.n_layer=1",
        "--set",
        "teacher.model.n_head=2",
        "--set",
        "student.model.n_layer=1",
        "--set",
        "student.model.n_head=1",
        "--set",
        "student.steps=10",
        "--set",
        "student.eval_every=10",
        "--set",
        "task.eval_size=16",
        "--set",
        "teacher.batch_size=8",
        "--set",
        "student.batch_size=8",
        "--set",
        "teacher.grad_accumulation=4",
        "--set",
        "task.mask_rate=0.01",
        "--set",
        'schedules=[{"type":"ce"}]',
        "--seeds",
        "1",
        "--device",
        "cpu",
    ]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "progdistill.cli",
        "run",
        "pcfg-mlm",
        "--out",
        str(tmp_path / "run"),
    ] + shrink
    done = subprocess.run(command, check=False, capture_output=True, text=True, env=ENV, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "run" / "results.json").exists()
