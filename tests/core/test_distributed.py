"""Data-parallel training: 2 CPU processes (gloo, started with torchrun) equal 1 process with the same
global batch, within float tolerance; rank 0 alone writes."""

import json
import os
import subprocess
import sys

import pytest
from conftest import tiny_config

from progdistill.core.distributed import local_slice
from progdistill.core.files import read_metrics

ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")


def _run(config_path, out, nproc):
    prefix = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        if nproc > 1
        else [sys.executable]
    )
    return subprocess.run(
        prefix + ["-m", "progdistill.cli", "run", str(config_path), "--out", str(out), "--device", "cpu"],
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
