"""Sequence-level and on-policy distillation in the native loop: where each step's sequences come from."""

import pytest
import torch

import progdistill.train.loop as train_module
from progdistill.core.config import ConfigError, from_dict, override, to_dict
from progdistill.core.seeding import generator
from progdistill.core.settings import DistillationConfig, OptimizerConfig, TrainConfig
from progdistill.distill.schedules import KShot, OneShot
from progdistill.distill.teachers import TeacherPool
from progdistill.experiment import ExperimentConfig, check_task_data
from progdistill.models.language import GPT2LMConfig
from progdistill.recipes.presets import get_preset
from progdistill.store.trajectory import Trajectory, TrajectoryWriter
from progdistill.tasks.parity import ParityTask
from progdistill.tasks.pcfg.task import GrammarSpec, PCFGMaskedLMTask, PCFGNextTokenTask
from progdistill.train.loop import Member, fit

MODEL = GPT2LMConfig(n_layer=1, n_head=2, head_dim=4)
CALLS = []  # (model, sampling generator state before the call, batch) of every generate_batch


class _RecordingTask(PCFGNextTokenTask):
    def generate_batch(self, model, count, generator, temperature=1.0, max_new_tokens=None):
        state = generator.get_state()
        batch = super().generate_batch(model, count, generator, temperature, max_new_tokens)
        CALLS.append((model, state, batch))
        return batch


TASK = _RecordingTask(grammar=GrammarSpec(levels=4, seed=0), eval_size=8, max_length=64)
SCHEDULE = KShot(points=((0, 2), (10, 2), (20, 2)))  # checkpoint 0 at steps 0-1, 10 at 2-3, 20 at 4-5


def _build(seed, stream="teacher"):
    return MODEL.build(TASK.input_size, TASK.num_classes, [generator(seed, stream)])


@pytest.fixture(scope="module")
def trajectory(tmp_path_factory):
    writer = TrajectoryWriter(tmp_path_factory.mktemp("t") / "teacher", {"test": 1})
    for k, step in enumerate((0, 10, 20)):  # three unrelated "checkpoints" with peaked next-token distributions
        model = _build(k)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(4)
        writer.save(step, model.state_dict(), {"eval_accuracy": 0.0, "eval_loss": 1.0})
    writer.finish()
    return Trajectory(writer.directory)


def _fit(trajectory, monkeypatch, **fields):
    """Train a student 6 steps; returns (student, [(batch inputs, batch targets, alpha) per step], records)."""
    CALLS.clear()
    steps = []

    def recording_step(ctx, batch, teacher, distillation):
        steps.append((batch.inputs.clone(), batch.targets.clone(), distillation.alpha))
        return real_step(ctx, batch, teacher, distillation)

    real_step = train_module.token_step
    monkeypatch.setattr(train_module, "token_step", recording_step)
    student = _build(0, "student-init")
    train = TrainConfig(
        model=MODEL, optimizer=OptimizerConfig(name="adam", lr=1e-2), steps=6, batch_size=4, eval_every=3
    )
    pool = TeacherPool(trajectory, lambda: _build(0, "unused"), torch.device("cpu"))
    histories = fit(
        TASK,
        student,
        train,
        [Member("s", 0, SCHEDULE)],
        data_stream="student-data",
        distillation=DistillationConfig(max_new_tokens=12, **fields),
        teachers=pool,
    )
    return student, steps, histories[0]


def _replay(trajectory, checkpoint, state, count=4):
    """The batch checkpoint ``checkpoint`` samples from sampling-generator state ``state``."""
    teacher = trajectory.load_model(checkpoint, lambda: _build(0, "unused")).eval()
    gen = torch.Generator()
    gen.set_state(state)
    return PCFGNextTokenTask.generate_batch(TASK, teacher, count, gen, 1.0, 12)


def test_seq_kd_trains_on_samples_of_the_scheduled_checkpoint(trajectory, monkeypatch):
    _, steps, records = _fit(trajectory, monkeypatch, seq_kd=True, alpha=1.0)
    assert len(CALLS) == len(steps) == 6
    for t, ((inputs, targets, alpha), (_, state, _batch)) in enumerate(zip(steps, CALLS)):
        checkpoint = SCHEDULE.checkpoint_at(t, trajectory.steps)
        expected = _replay(trajectory, checkpoint, state)
        assert torch.equal(inputs, expected.inputs) and torch.equal(targets, expected.targets) and alpha == 1.0
        other = _replay(trajectory, (checkpoint + 10) % 30, state)  # another checkpoint samples other sentences
        assert not torch.equal(other.inputs, expected.inputs)
        # next-token targets: position i predicts token i + 1, nothing after the last
        n = int((targets[0] != -100).sum())
        assert torch.equal(targets[0, :n], inputs[0, 1 : n + 1])
    assert records[-1]["seq_kd_steps"] == 6 and records[-1]["on_policy_steps"] == 0


@pytest.mark.e2e  # two trainings with sampling: ~10 s idle
def test_on_policy_batches_come_from_the_student_and_runs_repeat_bit_for_bit(trajectory, monkeypatch):
    student, steps, records = _fit(trajectory, monkeypatch, lmbda=0.5, seq_kd=True, loss="generalized_jsd")
    coin = generator(0, "on-policy-coin")
    on_policy = [float(torch.rand((), generator=coin)) < 0.5 for _ in range(6)]
    assert 0 < sum(on_policy) < 6  # this seed mixes both kinds of step
    assert records[-1]["on_policy_steps"] == sum(on_policy) and records[-1]["seq_kd_steps"] == 6 - sum(on_policy)
    for t, (model, state, batch) in enumerate(CALLS):
        if on_policy[t]:
            assert model is student and steps[t][2] == 0.0  # the divergence alone on the student's own samples
        else:
            expected = _replay(trajectory, SCHEDULE.checkpoint_at(t, trajectory.steps), state)
            assert torch.equal(batch.inputs, expected.inputs)
    student2, steps2, _ = _fit(trajectory, monkeypatch, lmbda=0.5, seq_kd=True, loss="generalized_jsd")
    assert all(torch.equal(a[0], b[0]) for a, b in zip(steps, steps2))
    assert all(torch.equal(a, b) for a, b in zip(student.state_dict().values(), student2.state_dict().values()))


def test_without_seq_kd_the_other_steps_use_the_task_data(trajectory, monkeypatch):
    _, steps, records = _fit(trajectory, monkeypatch, lmbda=0.5)
    data = TASK.sample_batch(4, generator(0, "student-data"))  # step 0's data batch
    coin = generator(0, "on-policy-coin")
    if float(torch.rand((), generator=coin)) >= 0.5:
        assert torch.equal(steps[0][0], data.inputs)
    assert records[-1]["seq_kd_steps"] == 0


def _experiment(task, **distillation):
    model = MODEL
    train = TrainConfig(model=model, steps=10)
    return ExperimentConfig(
        preset="x",
        task=task,
        teacher=train,
        student=train,
        schedules=(OneShot(),),
        distillation=DistillationConfig(**distillation),
    )


@pytest.mark.parametrize("task", [ParityTask(n=10, k=3), PCFGMaskedLMTask()])
@pytest.mark.parametrize(
    "fields,name", [({"seq_kd": True}, "distillation.seq_kd=True"), ({"lmbda": 0.5}, "distillation.lmbda=0.5")]
)
def test_generation_on_a_non_generative_task_is_refused(task, fields, name):
    with pytest.raises(ConfigError, match=f"{name} is invalid: .* task '{task.kind}'"):
        _experiment(task, **fields)


def test_set_reaches_the_new_fields_and_default_configs_keep_their_hash():
    config = get_preset("pcfg-lm")
    assert "beta" not in to_dict(config)["distillation"]  # optional fields at their default stay out of the hash
    data = to_dict(config, complete=True)
    for assignment in (
        "distillation.lmbda=0.5",
        "distillation.seq_kd=true",
        "distillation.loss=generalized_jsd",
        "distillation.beta=0.9",
        "distillation.top_k=5",
        "distillation.max_new_tokens=20",
    ):
        data = override(data, assignment)
    edited = from_dict(ExperimentConfig, data).distillation
    assert (edited.lmbda, edited.seq_kd, edited.loss, edited.beta, edited.top_k, edited.max_new_tokens) == (
        0.5,
        True,
        "generalized_jsd",
        0.9,
        5,
        20,
    )
    with pytest.raises(ConfigError, match="distillation.beta=2"):
        from_dict(ExperimentConfig, override(data, "distillation.beta=2"))


def test_top_k_above_the_vocabulary_is_refused_before_training():
    # the config alone knows a generated or packaged grammar's vocabulary: refused when the config is built
    with pytest.raises(
        ConfigError,
        match=f"distillation.top_k={TASK.num_classes + 1} is invalid: at most the task's {TASK.num_classes} classes",
    ):
        _experiment(TASK, top_k=TASK.num_classes + 1)
    check_task_data(_experiment(TASK, top_k=TASK.num_classes))  # k = the vocabulary is allowed


def test_a_generated_step_keeps_the_step_objective():
    """The step's objective (a curriculum's temperature, say) survives generation: returned as given, with alpha
    0 on the student's own samples."""
    from dataclasses import replace as _replace

    from progdistill.train.generation import DATA, STUDENT, TEACHER, GeneratedData

    class Sampler:  # the task side of generation: a batch named after the model it sampled
        def generate_batch(self, model, count, gen, temperature, max_new_tokens):
            return f"{model} x{count}"

    base = DistillationConfig(lmbda=1.0, alpha=0.5)
    step = _replace(base, temperature=3.0)
    batch, source, objective = GeneratedData(Sampler(), base, seed=0).batch("data", 4, "teacher", "student", step)
    assert (batch, source, objective.temperature, objective.alpha) == ("student x4", STUDENT, 3.0, 0.0)
    seq = _replace(base, lmbda=0.0, seq_kd=True)
    batch, source, objective = GeneratedData(Sampler(), seq, seed=0).batch("data", 4, "teacher", "student", step)
    assert (batch, source, objective) == ("teacher x4", TEACHER, step)
    batch, source, objective = GeneratedData(Sampler(), seq, seed=0).batch("data", 4, None, "student", step)
    assert (batch, source, objective) == ("data", DATA, step)


def test_trainer_gkd_arguments_replace_only_the_fields_given():
    from progdistill.integrations.hf import _gkd_distillation

    given = DistillationConfig(seq_kd=True, lmbda=0.5, max_new_tokens=7, sampling_temperature=0.7)
    none = dict.fromkeys(("lmbda", "beta", "seq_kd", "max_new_tokens", "temperature"))
    assert _gkd_distillation(given, none, None) == given
    changed = _gkd_distillation(given, {**none, "lmbda": 0.0, "max_new_tokens": 16}, None)
    assert (changed.lmbda, changed.seq_kd, changed.max_new_tokens, changed.sampling_temperature) == (0.0, True, 16, 0.7)
    assert _gkd_distillation(None, none, None).max_new_tokens == 128
