import json

import pytest
import torch

from progdistill.distill.schedules import FINAL
from progdistill.store.trajectory import Trajectory, TrajectoryError, TrajectoryWriter

HEADER = {"task": {"type": "parity", "n": 4}, "model": {"type": "mlp", "width": 3}}


def _write(tmp_path, steps=(0, 10, 20)):
    writer = TrajectoryWriter(tmp_path / "traj", HEADER)
    for s in steps:
        writer.save(
            s,
            {"w": torch.full((2, 3), float(s)), "b": torch.arange(3.0) + s},
            {"eval_accuracy": 0.5 + s / 100, "eval_loss": 1.0 - s / 100},
        )
    writer.finish()
    return tmp_path / "traj"


def test_round_trip(tmp_path):
    traj = Trajectory(_write(tmp_path))
    assert traj.steps == [0, 10, 20] and traj.final_step == 20 and traj.complete
    assert torch.equal(traj.load(10)["w"], torch.full((2, 3), 10.0))
    assert traj.metrics(20) == {"eval_accuracy": 0.7, "eval_loss": 0.8}
    assert traj.curve("eval_accuracy") == ([0, 10, 20], [0.5, 0.6, 0.7])
    manifest = json.loads((tmp_path / "traj" / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and manifest["header"] == HEADER
    assert set(manifest["checkpoints"][0]) == {"step", "file", "sha256", "eval_accuracy", "eval_loss"}


def test_corrupted_checkpoint_names_file_and_step(tmp_path):
    d = _write(tmp_path)
    path = d / "checkpoints" / "step_00000010.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    traj = Trajectory(d)
    with pytest.raises(TrajectoryError, match=r"step_00000010.safetensors for step 10 is corrupted"):
        traj.load(10)
    assert torch.equal(traj.load(20)["w"], torch.full((2, 3), 20.0))  # others still load; no fallback


def test_missing_checkpoint_file_and_step(tmp_path):
    d = _write(tmp_path)
    (d / "checkpoints" / "step_00000020.safetensors").unlink()
    with pytest.raises(TrajectoryError, match="step_00000020.safetensors for step 20 is missing"):
        Trajectory(d).load(20)
    with pytest.raises(TrajectoryError, match="no checkpoint at step 15"):
        Trajectory(d).load(15)


def test_directory_without_manifest(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrajectoryError, match="has no manifest.json"):
        Trajectory(tmp_path / "empty")
    with pytest.raises(TrajectoryError, match="does not exist"):
        Trajectory(tmp_path / "nope")
    (tmp_path / "empty" / "manifest.json").write_text("{not json")
    with pytest.raises(TrajectoryError, match="not valid JSON"):
        Trajectory(tmp_path / "empty")


def test_writer_refuses_other_header_and_out_of_order_steps(tmp_path):
    d = _write(tmp_path)
    with pytest.raises(TrajectoryError, match="different config"):
        TrajectoryWriter(d, {"task": "other"})
    writer = TrajectoryWriter(d, HEADER)
    with pytest.raises(TrajectoryError, match="must be after"):
        writer.save(20, {"w": torch.zeros(1)}, {})
    assert Trajectory(d).steps == [0, 10, 20]


def test_no_temporary_files_left(tmp_path):
    d = _write(tmp_path)
    leftovers = [p.name for p in d.rglob(".*tmp*")]
    assert leftovers == []


def test_checkpoint_budget_keeps_transition_dense(tmp_path):
    """A sigmoid-shaped accuracy curve with a budget of 6: plateaus are thinned, the jump is kept."""
    import math

    writer = TrajectoryWriter(tmp_path / "t", HEADER, max_checkpoints=6)
    for s in range(0, 2100, 100):
        acc = 0.5 + 0.5 / (1 + math.exp(-(s - 1000) / 60))
        writer.save(s, {"w": torch.zeros(1)}, {"eval_accuracy": acc, "eval_loss": 1 - acc})
    traj = Trajectory(tmp_path / "t")
    assert len(traj.steps) == 6 and traj.steps[0] == 0 and traj.steps[-1] == 2000
    assert sum(800 <= s <= 1200 for s in traj.steps) >= 3
    thinned = traj.manifest["thinned"]
    assert len(thinned) == 15 and "checkpoint budget 6" in thinned[0]["reason"]
    files = sorted(p.name for p in (tmp_path / "t" / "checkpoints").iterdir())
    assert len(files) == 6  # dropped files are deleted
    for s in traj.steps:
        traj.load(s)
    with pytest.raises(TrajectoryError, match="max_checkpoints=2"):
        TrajectoryWriter(tmp_path / "u", HEADER, max_checkpoints=2)


def test_a_file_changed_after_verification_is_hashed_again(tmp_path):
    d = _write(tmp_path)
    traj = Trajectory(d)
    traj.verify()
    path = d / "checkpoints" / "step_00000010.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(TrajectoryError, match="for step 10 is corrupted"):
        traj.load(10)


def test_final_names_the_final_checkpoint_in_load_metrics_and_entry(tmp_path):
    traj = Trajectory(_write(tmp_path))
    assert torch.equal(traj.load(FINAL)["w"], traj.load(20)["w"])
    assert traj.metrics(FINAL) == traj.metrics(20) and traj.entry(FINAL) == traj.entry(20)
    for bad in (-2, 15, True, "20"):
        with pytest.raises(TrajectoryError, match=r"no checkpoint at step .*steps: \[0, 10, 20\] \(or FINAL = -1"):
            traj.load(bad)
