import pytest
import torch

from progdistill.core.config import ConfigError
from progdistill.core.seeding import generator
from progdistill.distill.schedules import CE, FINAL, KShot, OneShot
from progdistill.distill.teachers import TeacherPool, block_teacher_logits
from progdistill.models.mlp import MLPConfig
from progdistill.store.trajectory import Trajectory, TrajectoryWriter


def _trajectory(tmp_path) -> Trajectory:
    writer = TrajectoryWriter(tmp_path / "teacher", {"test": 1})
    for step in (0, 10):
        model = MLPConfig(width=8).build(5, 2, [generator(step, "init")])
        writer.save(step, model.state_dict(), {"eval_accuracy": 0.5})
    writer.finish()
    return Trajectory(tmp_path / "teacher")


def _build():
    return MLPConfig(width=8).build(5, 2, [torch.Generator()])


def test_pool_loads_each_checkpoint_once_frozen_and_drops_unused(tmp_path):
    pool = TeacherPool(_trajectory(tmp_path), _build, torch.device("cpu"))
    teacher = pool.get(10)
    assert pool.get(10) is teacher and pool.loads == 1
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    expected = MLPConfig(width=8).build(5, 2, [generator(10, "init")])
    assert all(torch.equal(a, b) for a, b in zip(teacher.parameters(), expected.parameters()))
    pool.get(0)
    pool.retain({0})
    assert set(pool.models) == {(0, None)} and pool.loads == 2


def test_block_teacher_logits_equal_the_teachers_outputs_per_step(tmp_path):
    pool = TeacherPool(_trajectory(tmp_path), _build, torch.device("cpu"))
    x_block = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(0))  # (S, L, B, n)
    seed_index = torch.tensor([0, 1, 1])
    plan = [[None, 0, 10], [10, None, 10], [0, 0, None]]  # (L, M)
    logits = block_teacher_logits(plan, x_block, seed_index, pool, 2)
    assert logits.shape == (3, 3, 4, 2)
    for i, row in enumerate(plan):
        for m, c in enumerate(row):
            expected = torch.zeros(4, 2) if c is None else pool.get(c)(x_block[seed_index[m], i])[0]
            assert torch.allclose(logits[i, m], expected, atol=1e-6)
    assert block_teacher_logits([[None, None]], x_block, seed_index, pool, 2) is None
    assert block_teacher_logits(plan, x_block, seed_index, None, 2) is None


def test_check_validates_each_schedule_and_hashes_the_files_once_per_pool(tmp_path, monkeypatch):
    traj = _trajectory(tmp_path)
    pool = TeacherPool(traj, _build, torch.device("cpu"))
    hashed = []
    monkeypatch.setattr(traj, "verify", lambda: hashed.append(1))
    pool.check([CE()])  # needs no teacher: nothing to check
    assert hashed == [] and pool.checked == set()
    pool.check([CE(), KShot(points=((10, 5), (FINAL, 1))), OneShot()])
    pool.check([OneShot()])  # the training loop after the runner: checked already
    assert hashed == [1] and pool.checked == {KShot(points=((10, 5), (FINAL, 1))), OneShot()}
    with pytest.raises(ConfigError, match=r"schedule.points.0.0=5 names a checkpoint"):
        pool.check([KShot(points=((5, 5), (FINAL, 1)))])
