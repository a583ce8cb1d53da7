import math
from dataclasses import replace

import pytest
import torch
from conftest import tiny_config
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from progdistill.core.config import ConfigError
from progdistill.core.seeding import generator
from progdistill.core.settings import DistillationConfig
from progdistill.distill.curricula import (
    HintDistillation,
    NoisedTeacher,
    PathPoint,
    TemperatureCurriculum,
    WeightPathCurriculum,
    stage_value,
)
from progdistill.distill.losses import soft_targets
from progdistill.distill.schedules import TeacherSpec
from progdistill.distill.teachers import TeacherPool, plan_temperatures
from progdistill.experiment import ExperimentConfig
from progdistill.models.mlp import MLPConfig
from progdistill.recipes.runner import train_teacher
from progdistill.store.rundir import RunDir
from progdistill.store.trajectory import Trajectory, TrajectoryWriter
from progdistill.train.loop import Member, fit


def _trajectory(tmp_path) -> Trajectory:
    writer = TrajectoryWriter(tmp_path / "teacher", {"test": 1})
    for step in (0, 10):
        model = MLPConfig(width=8).build(5, 2, [generator(step, "init")])
        writer.save(step, model.state_dict(), {"eval_accuracy": 0.5})
    writer.finish()
    return Trajectory(tmp_path / "teacher")


def _pool(tmp_path) -> TeacherPool:
    def build():
        return MLPConfig(width=8).build(5, 2, [torch.Generator()])

    def init(seed):
        return MLPConfig(width=8).build(5, 2, [generator(seed, "fresh")])

    return TeacherPool(_trajectory(tmp_path), build, torch.device("cpu"), init=init)


def _equal(model, state) -> bool:
    return all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_weight_path_at_0_and_1_is_the_init_and_the_final_teacher(tmp_path):
    pool = _pool(tmp_path)
    final, init = pool.trajectory.load(10), pool.trajectory.load(0)
    assert _equal(pool.get(TeacherSpec(10, transform=PathPoint(1.0, "trajectory", 0))), final)
    assert _equal(pool.get(TeacherSpec(10, transform=PathPoint(0.0, "trajectory", 0))), init)
    fresh = MLPConfig(width=8).build(5, 2, [generator(3, "fresh")]).state_dict()
    assert _equal(pool.get(TeacherSpec(10, transform=PathPoint(0.0, "fresh", 3))), fresh)
    quarter = pool.get(TeacherSpec(10, transform=PathPoint(0.25, "fresh", 3))).state_dict()
    for k, v in quarter.items():
        assert torch.allclose(v, 0.75 * fresh[k] + 0.25 * final[k], atol=1e-7)


def test_weight_path_stages_rise_from_start_to_end():
    sched = WeightPathCurriculum(stages=5, fraction=0.5).for_seed(0)  # span 50 of 100 steps: stages of 10 steps
    a = [sched.teacher_at(t, [0, 10], 100).transform.a for t in (0, 9, 10, 25, 39, 40, 49, 99)]
    assert a == [0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert sched.teacher_at(0, [0, 10], 100).checkpoint == 10  # always the final checkpoint


def test_temperature_curriculum_target_equals_the_hand_computed_softmax():
    linear = TemperatureCurriculum(start=4.0, end=1.0, shape="linear")
    geometric = TemperatureCurriculum(start=4.0, end=1.0)
    # 101 steps: progress t / 100, so step 50 is half way.
    assert [linear.teacher_at(t, [0, 10], 101).temperature for t in (0, 50, 100)] == [4.0, 2.5, 1.0]
    assert geometric.teacher_at(50, [0, 10], 101).temperature == pytest.approx(2.0)
    plan = [[linear.teacher_at(t, [0, 10], 101), None] for t in (0, 50, 100)]  # (L, M): a curriculum, CE
    temps = plan_temperatures(plan, 0.5, torch.device("cpu"))
    assert temps.tolist() == [[4.0, 0.5], [2.5, 0.5], [1.0, 0.5]]
    logits = torch.tensor([2.0, 0.0]).expand(3, 2, 1, 2)  # (L, M, B, C)
    y = torch.zeros(3, 2, 1, dtype=torch.long)
    target, _ = soft_targets(logits, y, temps[..., None], torch.zeros(3, 2, 1), torch.ones(3, 2, 1))
    # softmax((2, 0) / T)[0] = 1 / (1 + e^(-2 / T)): T = 4, 2.5, 1 and the default 0.5
    assert target[:, 0, 0, 0].tolist() == pytest.approx([0.6224593, 0.6899745, 0.8807971], abs=1e-6)
    assert target[:, 1, 0, 0].tolist() == pytest.approx([0.9820138] * 3, abs=1e-6)
    assert plan_temperatures([[TeacherSpec(10), None]], 0.5, torch.device("cpu")) == 0.5  # no curriculum: as is


def test_noised_teacher_is_seeded_scaled_and_exact_at_zero(tmp_path):
    pool = _pool(tmp_path)
    sched = NoisedTeacher(start=0.5, end=0.0, stages=2).for_seed(0)
    first, last = sched.teacher_at(0, [0, 10], 10), sched.teacher_at(9, [0, 10], 10)
    assert last == TeacherSpec(10)  # the noise annealed to 0: the teacher itself
    noisy = pool.get(first).state_dict()
    again = first.transform.apply(pool.trajectory.load(10), pool)
    final = pool.trajectory.load(10)
    for k, v in noisy.items():
        assert torch.equal(v, again[k])  # same seed and stage, same draw
        relative = (v - final[k]).pow(2).mean().sqrt() / final[k].pow(2).mean().sqrt()
        assert 0.3 < float(relative) < 0.7  # sigma 0.5 of the tensor's RMS (tensors of 10 to 40 entries)


def test_stage_value_ends_exactly_at_end():
    assert stage_value(1.0, 0.0, 3, 0, 9, 1.0) == 1.0
    assert stage_value(1.0, 0.0, 3, 3, 9, 1.0) == 0.5
    assert stage_value(1.0, 0.0, 3, 8, 9, 1.0) == 0.0


@pytest.mark.parametrize(
    "kind, fields, field",
    [
        ("temperature-curriculum", {"start": -1.0}, "schedule.start"),
        ("temperature-curriculum", {"start": 1000.0}, "schedule.start"),
        ("temperature-curriculum", {"start": 2.0, "end": 2.0}, "schedule.end"),
        ("temperature-curriculum", {"end": 0.0}, "schedule.shape"),
        ("temperature-curriculum", {"fraction": 1.5}, "schedule.fraction"),
        ("noised-teacher", {"start": 0.0}, "schedule.start"),
        ("noised-teacher", {"start": 20.0}, "schedule.start"),
        ("noised-teacher", {"start": 0.5, "end": 0.8}, "schedule.end"),
        ("weight-path", {"end": 1.5}, "schedule.end"),
        ("weight-path", {"stages": 1}, "schedule.stages"),
        ("weight-path", {"init": "random"}, "schedule.init"),
        ("hint", {"hint_steps": 0}, "schedule.hint_steps"),
        ("co-training", {"lag": -1}, "schedule.lag"),
    ],
)
def test_bad_curricula_are_refused_naming_the_field(tiny, kind, fields, field):
    data = tiny.to_dict()
    data["schedules"] = [{"type": kind, **fields}]
    with pytest.raises(ConfigError, match=rf"schedules\.0\.{field.split('.')[1]}="):
        ExperimentConfig.from_dict(data)


def test_every_curriculum_round_trips_through_the_config(tiny):
    schedules = (
        TemperatureCurriculum(),
        TemperatureCurriculum(start=0.5, end=4.0),
        WeightPathCurriculum(),
        NoisedTeacher(),
        HintDistillation(hint_steps=10),
    )
    config = replace(tiny, schedules=schedules)
    assert ExperimentConfig.from_dict(config.to_dict()) == config
    assert [s.label for s in schedules] == [
        "temperature-4-to-0.5",
        "temperature-0.5-to-4",
        "weight-path-fresh",
        "noised-teacher-1",
        "hint",
    ]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """The tiny preset's teacher, trained once for this module."""
    return train_teacher(tiny_config(), tmp_path_factory.mktemp("teacher"), log=lambda *a: None)


def _stack_fit(tiny, traj, schedules, steps=20, pool=None, depth=1):
    cfg = replace(tiny.student, steps=steps, eval_every=10)
    members = [Member(s.label, 0, s) for s in schedules]
    stack = cfg.model.build(8, 2, [generator(0, "init") for _ in members])

    def build():
        return tiny.teacher.model.build(8, 2, [torch.Generator()])

    pool = pool or TeacherPool(
        traj, build, torch.device("cpu"), init=lambda seed: tiny.teacher.model.build(8, 2, [generator(seed, "w")])
    )
    return fit(
        tiny.task, stack, cfg, members, data_stream="d", distillation=DistillationConfig(temperature=0.0), teachers=pool
    )


def test_curricula_train_in_one_stack_and_record_their_teacher(teacher, tiny):
    traj = teacher
    schedules = [
        TemperatureCurriculum(start=4.0, end=1.0, shape="linear"),
        WeightPathCurriculum(stages=2),
        NoisedTeacher(stages=2),
        HintDistillation(hint_steps=10),
    ]
    hist = _stack_fit(tiny, traj, schedules)
    temperature, path, noise, hint = hist
    assert [r["teacher_temperature"] for r in temperature] == [4.0, pytest.approx(4 - 3 * 9 / 19), 1.0]
    assert [r.get("teacher_weight_path") for r in path] == [0.0, 0.0, 1.0]
    assert [r.get("teacher_noise") for r in noise] == [1.0, 1.0, None]
    assert [r.get("teacher_hint_layer") for r in hint] == [-1, -1, None]  # hint steps 0-9, then outputs
    assert all(math.isfinite(r["train_loss"]) for h in hist for r in h[1:])


def test_hint_layer_that_does_not_exist_is_refused_before_training(teacher, tiny):
    traj = teacher
    with pytest.raises(ConfigError, match=r"layer=1 is invalid: the teacher has 1 hidden layer"):
        _stack_fit(tiny, traj, [HintDistillation(hint_steps=5, layer=1)])


def test_weight_path_between_models_of_different_shapes_is_refused_before_training(tmp_path, teacher, tiny):
    traj = teacher
    other = tmp_path / "wider.safetensors"
    save_file(MLPConfig(width=32).build(8, 2, [generator(0, "w")]).state_dict(), str(other))
    with pytest.raises(
        ConfigError,
        match=r"tensor 'biases.0' has shape \(1, 1, 32\) in the weight path's "
        r"initialization .* and \(1, 1, 64\) in the teacher checkpoint",
    ):
        _stack_fit(tiny, traj, [WeightPathCurriculum(init=str(other))])


def test_curricula_configs_that_would_fail_mid_run_are_refused_at_construction(tiny):
    """Caught when the config is built, before any teacher trains: a hint layer the models lack, co-training on
    a task with targets per position, a temperature curriculum under Hinton scaling or reaching T = 0 with
    reverse KL."""
    with pytest.raises(
        ConfigError,
        match=r"schedules\.0\.layer=1 is invalid: a hidden layer of the teacher "
        r"\(0\.\.0, or -1 for the last\): it has 1",
    ):
        replace(tiny, schedules=(HintDistillation(hint_steps=5, layer=1),))
    with pytest.raises(ConfigError, match=r"schedules\.0\.student_layer=2 is invalid: .* of the student"):
        replace(tiny, schedules=(HintDistillation(hint_steps=5, student_layer=2),))
    deeper = replace(tiny, student=replace(tiny.student, model=MLPConfig(width=16, depth=3)))
    assert replace(deeper, schedules=(HintDistillation(hint_steps=5, student_layer=2),)).schedules
    hinton = replace(tiny.distillation, temperature_scaling="hinton")
    with pytest.raises(
        ConfigError,
        match=r"distillation\.temperature_scaling='hinton' is invalid: 'teacher' "
        r"with schedules\.0",
    ):
        replace(tiny, distillation=hinton, schedules=(TemperatureCurriculum(start=4.0, end=1.0),))
    reverse = DistillationConfig(loss="reverse_kl", temperature=1.0)
    with pytest.raises(ConfigError, match=r"schedules\.0=.* is invalid: a temperature range above 0"):
        replace(tiny, distillation=reverse, schedules=(TemperatureCurriculum(start=2.0, end=0.0, shape="linear"),))
    assert replace(tiny, distillation=reverse, schedules=(TemperatureCurriculum(start=2.0, end=0.5),)).schedules


def test_co_training_on_a_task_with_targets_per_position_is_refused():
    from progdistill.distill.curricula import CoTraining
    from progdistill.recipes.presets import get_preset

    config = get_preset("pcfg-mlm")
    with pytest.raises(
        ConfigError,
        match=r"schedules\.0='co-training' is invalid: a schedule for one-label "
        r"tasks",
    ):
        replace(config, schedules=(CoTraining(),))


# ----------------------------------------------------------------------------------------------------------
# A schedule's own random draws follow the student's seed unless its `seed` pins them


def _noised_weights(pool, sched, seed, step=0):
    spec = sched.for_seed(seed).teacher_at(step, pool.steps, 10)
    return spec, pool.get(spec).state_dict()


@settings(max_examples=25, deadline=None)
@given(a=st.integers(0, 2**31 - 1), b=st.integers(0, 2**31 - 1), pinned=st.integers(0, 2**31 - 1))
def test_noise_follows_the_student_seed_unless_pinned(tmp_path_factory, a, b, pinned):
    pool = _pool(tmp_path_factory.mktemp("pool"))
    final = pool.trajectory.load(10)
    spec_a, noisy_a = _noised_weights(pool, NoisedTeacher(stages=2), a)
    spec_b, noisy_b = _noised_weights(pool, NoisedTeacher(stages=2), b)
    assert spec_a.transform.seed == a and spec_b.transform.seed == b
    # the same seed, the same numbers (a second draw, not the pool's cached model)
    again = spec_a.transform.apply(final, pool)
    assert all(torch.equal(noisy_a[k], again[k]) for k in final)
    differs = any(not torch.equal(noisy_a[k], noisy_b[k]) for k in final)
    assert differs == (a != b)
    # an explicit seed pins the draws: every student gets the teacher of that seed
    fixed = NoisedTeacher(stages=2, seed=pinned)
    assert fixed.for_seed(a) == fixed.for_seed(b) == fixed
    _, noisy_pinned = _noised_weights(pool, fixed, a)
    _, noisy_of_that_seed = _noised_weights(pool, NoisedTeacher(stages=2), pinned)
    assert all(torch.equal(noisy_pinned[k], noisy_of_that_seed[k]) for k in final)


@settings(max_examples=25, deadline=None)
@given(a=st.integers(0, 2**31 - 1), b=st.integers(0, 2**31 - 1), pinned=st.integers(0, 2**31 - 1))
def test_fresh_weight_path_init_follows_the_student_seed_unless_pinned(tmp_path_factory, a, b, pinned):
    pool = _pool(tmp_path_factory.mktemp("pool"))

    def init(sched, seed):  # theta_0: the path at a = 0
        return pool.get(sched.for_seed(seed).teacher_at(0, pool.steps, 10)).state_dict()

    fresh = WeightPathCurriculum(stages=2)
    init_a, init_b = init(fresh, a), init(fresh, b)
    expected_a = MLPConfig(width=8).build(5, 2, [generator(a, "fresh")]).state_dict()  # the pool's init(a)
    assert all(torch.equal(init_a[k], expected_a[k]) for k in expected_a)
    assert any(not torch.equal(init_a[k], init_b[k]) for k in init_a) == (a != b)
    fixed = WeightPathCurriculum(stages=2, seed=pinned)
    assert fixed.for_seed(a) == fixed
    assert all(torch.equal(init(fixed, a)[k], v) for k, v in init(fresh, pinned).items())
    # the real init draws nothing: one teacher for every seed (computed once per block, not once per seed)
    real = WeightPathCurriculum(init="trajectory", stages=2)
    assert real.for_seed(a) is real
    assert real.teacher_at(0, pool.steps, 10) == real.for_seed(b).teacher_at(0, pool.steps, 10)


def test_a_draw_that_follows_the_student_seed_needs_the_seed():
    for sched in (NoisedTeacher(), WeightPathCurriculum()):
        with pytest.raises(ValueError, match=r"follow the student's seed .* call schedule\.for_seed"):
            sched.teacher_at(0, [0, 10], 100)


def test_students_of_other_seeds_learn_from_other_draws_in_one_stack(teacher, tiny):
    """Members sharing a seed share data and initialization, so a student differs from another of its seed
    only through its teacher: the default follows the student (seed 1 -> draws of seed 1), a pinned seed does not."""
    cfg = replace(tiny.student, steps=20, eval_every=10)
    for sched in (NoisedTeacher(stages=2), WeightPathCurriculum(stages=2)):
        members = [
            Member("default", 1, sched),
            Member("pinned-1", 1, replace(sched, seed=1)),
            Member("pinned-0", 1, replace(sched, seed=0)),
        ]
        stack = cfg.model.build(8, 2, [generator(1, "init") for _ in members])
        pool = TeacherPool(
            teacher,
            lambda: tiny.teacher.model.build(8, 2, [torch.Generator()]),
            torch.device("cpu"),
            init=lambda seed: tiny.teacher.model.build(8, 2, [generator(seed, "w")]),
        )
        default, pinned_1, pinned_0 = fit(
            tiny.task,
            stack,
            cfg,
            members,
            data_stream="d",
            distillation=DistillationConfig(temperature=1.0),
            teachers=pool,
        )
        losses = [[r["train_loss"] for r in h[1:]] for h in (default, pinned_1, pinned_0)]
        assert losses[0] == losses[1], sched.label  # bit for bit
        assert losses[0] != losses[2], sched.label


def test_a_config_json_with_an_explicit_seed_pins_it_and_one_without_follows_the_student(tiny, tmp_path):
    """Configs written before the default changed record ``"seed": 0``: read as what they trained (one draw
    for every student); a rerun of such a run directory with the new default is a different config, refused
    before anything is deleted (--overwrite keeps the teacher and trains the students again)."""
    data = tiny.to_dict()
    data["schedules"] = [
        {"type": "noised-teacher", "seed": 0},
        {"type": "weight-path", "seed": 0},
        {"type": "weight-path", "init": "trajectory"},
    ]
    old = ExperimentConfig.from_dict(data)
    assert [s.for_seed(2).seed for s in old.schedules] == [0, 0, None]
    data["schedules"] = [{"type": "noised-teacher"}, {"type": "weight-path"}]
    new = ExperimentConfig.from_dict(data)
    assert [s.seed for s in new.schedules] == [None, None]
    assert [s.for_seed(2).seed for s in new.schedules] == [2, 2]
    assert ExperimentConfig.from_dict(new.to_dict()) == new
    assert [s["seed"] for s in new.to_dict()["schedules"]] == [None, None]  # written as null: "the student's"
    run = RunDir(tmp_path / "run")
    run.claim(replace(new, schedules=old.schedules[:2]), overwrite=False)
    with pytest.raises(ConfigError, match=r"different config \(schedules: \[.*'seed': 0, .* != \[.*'seed': None, "):
        run.claim(new, overwrite=False)
    assert run.config().schedules == old.schedules[:2]


@pytest.mark.parametrize("seed", [-1, 1.5, True, "0"])
def test_a_bad_schedule_seed_is_refused_naming_the_field(tiny, seed):
    for kind in ("noised-teacher", "weight-path"):
        data = tiny.to_dict()
        data["schedules"] = [{"type": kind, "seed": seed}]
        with pytest.raises(ConfigError, match=r"schedules\.0\.seed="):
            ExperimentConfig.from_dict(data)
