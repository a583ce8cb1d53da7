from dataclasses import replace

import pytest
import torch

from progdistill.core.settings import DistillationConfig
from progdistill.distill.curricula import CoTraining
from progdistill.distill.schedules import Progressive, TeacherSpec
from progdistill.distill.teachers import TeacherPool
from progdistill.experiment import build_model
from progdistill.recipes.runner import train_teacher
from progdistill.train.cotraining import LiveTeacher, cotrain
from progdistill.train.loop import Member, fit, generator


def _every_step(tiny, tmp_path, steps=12):
    """The tiny teacher trained for ``steps`` steps with a checkpoint at every step."""
    teacher = replace(tiny.teacher, steps=steps, checkpoint_every=1, eval_every=4)
    config = replace(tiny, teacher=teacher, schedules=tiny.schedules[:3])  # not its k-shot: no checkpoint 100
    return config, train_teacher(config, tmp_path, log=lambda *a: None)


def _live(config, lag):
    model = build_model(config.task, config.teacher.model, [config.teacher.seed], "teacher-init")
    return LiveTeacher(config.task, model, config.teacher, config.teacher.seed, torch.device("cpu"), lag=lag)


def test_co_training_at_lag_0_uses_the_teachers_weights_of_the_same_step(tmp_path, tiny):
    """At student step t the teacher has just taken its step t: its weights are the trajectory's checkpoint t + 1,
    bit for bit; with lag 2, checkpoint t - 1 (from the ring buffer)."""
    config, traj = _every_step(tiny, tmp_path)
    live, lagged = _live(config, 0), _live(config, 2)
    for t in range(12):
        spec, old = CoTraining().teacher_at(t, [], 99), CoTraining(lag=2).teacher_at(t, [], 99)
        assert spec == TeacherSpec(t + 1, now=t + 1) and old.checkpoint == max(t - 1, 0)
        for k, v in live.get(spec).state_dict().items():
            assert torch.equal(v, traj.load(t + 1)[k]), (t, k)
        for k, v in lagged.get(old).state_dict().items():
            assert torch.equal(v, traj.load(max(t - 1, 0))[k]), (t, k)
    assert len(lagged.buffer) == 3  # lag + 1 copies, never more
    # Past the teacher's last step: its final weights.
    assert all(torch.equal(v, traj.load(12)[k]) for k, v in live.get(TeacherSpec(20, now=20)).state_dict().items())


def test_co_training_student_equals_progressive_on_a_checkpoint_per_step(tmp_path, tiny):
    config, traj = _every_step(tiny, tmp_path)
    cfg = replace(config.student, steps=16, eval_every=8)
    distill = DistillationConfig(temperature=1.0)

    def build():
        return config.teacher.model.build(8, 2, [torch.Generator()])

    progressive = cfg.model.build(8, 2, [generator(0, "init")])
    fit(
        config.task,
        progressive,
        cfg,
        [Member("p", 0, Progressive())],
        data_stream="d",
        distillation=distill,
        teachers=TeacherPool(traj, build, torch.device("cpu")),
    )
    cotrained = cfg.model.build(8, 2, [generator(0, "init")])
    teacher = build_model(config.task, config.teacher.model, [config.teacher.seed], "teacher-init")
    summary = cotrain(
        config.task,
        teacher,
        config.teacher,
        config.teacher.seed,
        cotrained,
        cfg,
        [Member("c", 0, CoTraining())],
        dict(data_stream="d", distillation=distill),
        tmp_path / "co",
        torch.device("cpu"),
        stored_final=traj.load(12),
    )
    assert all(torch.equal(a, b) for a, b in zip(progressive.parameters(), cotrained.parameters()))
    assert summary["final_max_abs_diff_vs_trajectory"] == 0.0 and summary["stored_checkpoints"] == 1
    assert sorted(p.name for p in (tmp_path / "co").iterdir()) == [
        "cotraining.json",
        "final.safetensors",
        "metrics.jsonl",
    ]


@pytest.mark.e2e
def test_a_run_with_curricula_and_co_training_reports_every_schedule(tmp_path, tiny):
    from progdistill.distill.curricula import TemperatureCurriculum, WeightPathCurriculum
    from progdistill.distill.schedules import OneShot
    from progdistill.recipes.runner import run

    config = replace(
        tiny,
        teacher=replace(tiny.teacher, steps=100),
        student=replace(tiny.student, steps=100),
        schedules=(OneShot(), TemperatureCurriculum(start=4.0, end=1.0), WeightPathCurriculum(), CoTraining(lag=3)),
    )
    results = run(config, tmp_path / "run", log=lambda *a: None)
    assert [s["schedule"] for s in results["students"]] == [
        "one-shot",
        "temperature-4-to-1",
        "weight-path-fresh",
        "co-training-lag3",
    ]
    summary = (tmp_path / "run" / "students" / "co-training-lag3-seed0-teacher" / "cotraining.json").read_text()
    assert '"final_max_abs_diff_vs_trajectory": 0.0' in summary and '"stored_checkpoints": 1' in summary


@pytest.mark.e2e
def test_a_co_training_only_run_trains_its_teacher_once_and_stores_only_its_final_checkpoint(tmp_path, tiny):
    """`run` with only co-training (and CE) students: one teacher pass, alongside the students; the run's
    trajectory is that teacher's final checkpoint alone, equal bit for bit to a normal run's final checkpoint,
    and the report reads the teacher's curve from it. A rerun trains nothing."""
    from progdistill.core.files import read_metrics
    from progdistill.recipes.runner import run
    from progdistill.store.trajectory import Trajectory

    config = replace(tiny, schedules=(CoTraining(), CoTraining(lag=10)), seeds=1)
    logs = []
    results = run(config, tmp_path / "co", log=logs.append)
    traj = Trajectory(tmp_path / "co" / "teacher")
    assert traj.steps == [config.teacher.steps] and traj.header["co_training"] is True
    assert not any("training 1 student" in line and "teacher" in line for line in logs)
    reference = train_teacher(replace(tiny, schedules=(Progressive(),)), tmp_path / "ref", log=lambda *a: None)
    final = reference.load(reference.final_step)
    assert all(torch.equal(v, final[k]) for k, v in traj.load(traj.final_step).items())
    assert results["teacher"]["steps_to_threshold"] is not None
    assert sorted(s["schedule"] for s in results["students"]) == ["co-training", "co-training-lag10"]
    paths = (tmp_path / "co" / "teacher" / "metrics.jsonl", tmp_path / "ref" / "teacher" / "metrics.jsonl")
    evals = [
        [{k: v for k, v in r.items() if k.startswith("eval_") or k == "step"} for r in read_metrics(path)]
        for path in paths
    ]
    assert evals[0] == evals[1]  # (train_loss differs in its last bits: one step per block, summed otherwise)
    again = []
    run(config, tmp_path / "co", log=again.append)
    assert any("nothing retrained" in line for line in again)


def test_a_co_training_only_run_is_refused_by_the_job_launcher(tmp_path, tiny):
    pytest.importorskip("submitit")
    from progdistill.core.config import ConfigError
    from progdistill.recipes.launcher import LauncherConfig, launch

    config = replace(tiny, schedules=(CoTraining(),))
    with pytest.raises(
        ConfigError,
        match=r"--launcher submitit-local: a co-training-only run trains its teacher "
        r"alongside the students in one process",
    ):
        launch(config, tmp_path / "run", LauncherConfig(kind="submitit-local"))
    assert not (tmp_path / "run").exists()
