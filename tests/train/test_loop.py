import math
import re
from dataclasses import replace

import pytest
import torch
from conftest import tiny_config

from progdistill.core.settings import DistillationConfig, OptimizerConfig
from progdistill.distill.losses import IGNORE_INDEX, cross_entropy, distillation_loss, forward_kl
from progdistill.distill.schedules import CE, OneShot, Progressive
from progdistill.distill.teachers import TeacherPool
from progdistill.recipes.runner import train_teacher
from progdistill.store.trajectory import TrajectoryError
from progdistill.tasks.base import Batch, TaskBase
from progdistill.train import evaluation
from progdistill.train.loop import Member, NonFiniteError, fit, generator


def quiet(*args):
    pass


@pytest.mark.parametrize("loss, temperature", [("forward_kl", 1.0), ("forward_kl", 0.0), ("reverse_kl", 2.0)])
def test_fit_equals_step_by_step_pure_losses(tmp_path, tiny, loss, temperature):
    """The block-wise training loop (fused soft-target cross-entropy, stacked students) computes exactly the
    documented objective: alpha * CE + (1 - alpha) * D(teacher || student), one model at a time."""
    traj = train_teacher(tiny, tmp_path, log=quiet)

    def build_teacher():
        return tiny.teacher.model.build(8, 2, [torch.Generator()])

    cfg = replace(tiny.student, steps=40, eval_every=20)
    distill = DistillationConfig(loss=loss, temperature=temperature, alpha=0.3)
    members = [Member("ce", 0, CE()), Member("one", 0, OneShot()), Member("prog", 1, Progressive(speed=5.0))]
    stack = cfg.model.build(8, 2, [generator(m.seed, "init") for m in members])
    hist = fit(
        tiny.task,
        stack,
        cfg,
        members,
        data_stream="d",
        distillation=distill,
        teachers=TeacherPool(traj, build_teacher, torch.device("cpu")),
    )

    steps = traj.steps
    for m, member in enumerate(members):
        model = cfg.model.build(8, 2, [generator(member.seed, "init")])
        opt = torch.optim.SGD(model.parameters(), lr=cfg.optimizer.lr)
        x_all, y_all = tiny.task.sample(cfg.steps * cfg.batch_size, generator(member.seed, "d"))
        losses = []
        for t in range(cfg.steps):
            x = x_all[t * cfg.batch_size : (t + 1) * cfg.batch_size]
            y = y_all[t * cfg.batch_size : (t + 1) * cfg.batch_size]
            logits = model(x)[0]
            ckpt = member.schedule.checkpoint_at(t, steps)
            if ckpt is None:
                value = cross_entropy(logits, y)
            else:
                teacher = build_teacher()
                teacher.load_state_dict(traj.load(ckpt))
                with torch.no_grad():
                    t_logits = teacher(x)[0]
                value = distillation_loss(logits, t_logits, y, loss, temperature, alpha=0.3)
            opt.zero_grad()
            value.backward()
            opt.step()
            losses.append(value.item())
        for w_stack, w in zip(stack.weights, model.weights):
            assert torch.allclose(w_stack[m], w[0], atol=1e-5)
        assert hist[m][1]["train_loss"] == pytest.approx(sum(losses[:20]) / 20, rel=1e-4)
        assert hist[m][2]["train_loss"] == pytest.approx(sum(losses[20:]) / 20, rel=1e-4)


def test_non_finite_loss_names_run_step_and_quantity(tiny):
    bad = replace(tiny.teacher, optimizer=OptimizerConfig(name="sgd", lr=1e30), steps=100)
    model = bad.model.build(8, 2, [generator(0, "init")])
    with pytest.raises(NonFiniteError, match=r"teacher-x: non-finite (training loss|gradient) at step \d+"):
        fit(tiny.task, model, bad, [Member("teacher-x", 0, CE())], data_stream="d")


def test_non_finite_steps_can_be_skipped(tiny):
    bad = replace(tiny.teacher, optimizer=OptimizerConfig(name="sgd", lr=1e30), steps=100, on_non_finite="skip")
    model = bad.model.build(8, 2, [generator(0, "init")])
    hist = fit(tiny.task, model, bad, [Member("teacher-x", 0, CE())], data_stream="d")[0]
    assert hist[-1]["step"] == 100 and hist[-1]["skipped_steps"] > 0
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_same_seed_same_batches_different_seed_different():
    from progdistill.tasks.parity import ParityTask

    task = ParityTask(n=12, k=3)
    a = task.sample(64, generator(1, "student-data"))[0]
    assert torch.equal(a, task.sample(64, generator(1, "student-data"))[0])
    assert not torch.equal(a, task.sample(64, generator(2, "student-data"))[0])
    assert not torch.equal(a, task.sample(64, generator(1, "teacher-data"))[0])


def test_bf16_autocast_trains_and_keeps_float32_weights(tiny):
    cfg = replace(tiny.teacher, precision="bf16", steps=100)
    model = cfg.model.build(8, 2, [generator(0, "init")])
    hist = fit(tiny.task, model, cfg, [Member("bf16", 0, CE())], data_stream="d")[0]
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert math.isfinite(hist[-1]["train_loss"]) and hist[-1]["train_loss"] < hist[1]["train_loss"] + 0.05
    from progdistill.core.config import ConfigError

    with pytest.raises(ConfigError, match="precision='fp8'"):
        replace(tiny.teacher, precision="fp8")


@pytest.mark.e2e
def test_torch_compile_gives_the_same_training(tiny):
    cfg = replace(tiny.teacher, steps=100)
    plain = cfg.model.build(8, 2, [generator(0, "init")])
    compiled = cfg.model.build(8, 2, [generator(0, "init")])
    a = fit(tiny.task, plain, cfg, [Member("plain", 0, CE())], data_stream="d")[0]
    b = fit(tiny.task, compiled, replace(cfg, compile=True), [Member("compiled", 0, CE())], data_stream="d")[0]
    for ra, rb in zip(a, b):
        assert rb["eval_loss"] == pytest.approx(ra["eval_loss"], rel=1e-3, abs=1e-4)


def test_without_a_terminal_progress_is_logged_per_evaluation(tiny, capsys, monkeypatch):
    cfg = replace(tiny.student, steps=40, eval_every=10)
    members = [Member("a", 0, CE()), Member("b", 1, CE())]
    fit(
        tiny.task,
        cfg.model.build(8, 2, [generator(m.seed, "init") for m in members]),
        cfg,
        members,
        data_stream="d",
        desc="students",
    )
    lines = capsys.readouterr().err.splitlines()  # pytest's capture is not a terminal: no progress bar
    assert [line.split(",")[0] for line in lines] == ["students: step 0/40", "students: step 40/40"]  # throttled
    assert re.fullmatch(r"students: step 40/40, eval_loss [\d.]+-[\d.]+, eval_accuracy [\d.]+-[\d.]+", lines[-1])
    monkeypatch.setattr(evaluation, "PROGRESS_LOG_SECONDS", 0.0)
    fit(tiny.task, cfg.model.build(8, 2, [generator(0, "init")]), cfg, members[:1], data_stream="d", desc="a")
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(",")[0] for line in lines] == [f"a: step {t}/40" for t in (0, 10, 20, 30, 40)]
    assert re.fullmatch(r"a: step 40/40, eval_loss [\d.]+, eval_accuracy [\d.]+", lines[-1])


class _NoSupervision(TaskBase):
    """A token task whose every target is IGNORE_INDEX: a masked-LM batch without a masked token, every step."""

    kind = "no-supervision"
    per_position_targets = True
    num_classes = 5
    input_size = 4

    def sample_batch(self, count, generator):
        return Batch(torch.randint(5, (count, 4), generator=generator), torch.full((count, 4), IGNORE_INDEX))

    def eval_batches(self):
        return [self.sample_batch(8, torch.Generator().manual_seed(0))]


@pytest.mark.parametrize("on_non_finite", ["stop", "skip"])
def test_steps_without_a_supervised_token_train_nothing_in_either_mode(tiny, on_non_finite):
    cfg = replace(tiny.student, steps=3, eval_every=3, batch_size=4, grad_accumulation=2, on_non_finite=on_non_finite)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(5, 8), torch.nn.Linear(8, 5))
    before = [p.detach().clone() for p in model.parameters()]
    hist = fit(_NoSupervision(), model, cfg, [Member("s", 0, CE())], data_stream="d")[0]
    assert [r["train_loss"] for r in hist] == [None, 0.0] and "skipped_steps" not in hist[-1]
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    """The tiny preset's teacher trajectory, trained once for the tests that only read it."""
    return train_teacher(tiny_config(), tmp_path_factory.mktemp("teacher"), log=quiet)


def test_train_loss_of_the_fused_path_counts_only_the_steps_that_ran(tiny_teacher, tiny):
    """One of four steps skipped on the fused forward-KL path: the record is the mean KL of the other three (the
    skipped step's entropy correction is not subtracted), against a step-by-step loop of the pure loss."""
    traj = tiny_teacher

    def build_teacher():
        return tiny.teacher.model.build(8, 2, [torch.Generator()])

    cfg = replace(tiny.student, steps=4, eval_every=4, on_non_finite="skip")
    member = Member("one", 0, OneShot())
    stack = cfg.model.build(8, 2, [generator(0, "init")])
    forward, calls = stack.forward, []

    def poisoned(x):  # the second training step's logits are NaN: that step is skipped
        out = forward(x)
        if stack.training:
            calls.append(1)
            return out * math.nan if len(calls) == 2 else out
        return out

    stack.forward = poisoned
    hist = fit(
        tiny.task, stack, cfg, [member], data_stream="d", teachers=TeacherPool(traj, build_teacher, torch.device("cpu"))
    )[0]

    model = cfg.model.build(8, 2, [generator(0, "init")])
    opt = torch.optim.SGD(model.parameters(), lr=cfg.optimizer.lr)
    teacher = build_teacher()
    teacher.load_state_dict(traj.load(traj.final_step))
    x_all, _ = tiny.task.sample(cfg.steps * cfg.batch_size, generator(0, "d"))
    losses = []
    for t in (0, 2, 3):
        x = x_all[t * cfg.batch_size : (t + 1) * cfg.batch_size]
        with torch.no_grad():
            t_logits = teacher(x)[0]
        value = forward_kl(model(x)[0], t_logits)
        opt.zero_grad()
        value.backward()
        opt.step()
        losses.append(value.item())
    assert hist[-1]["skipped_steps"] == 1
    assert hist[-1]["train_loss"] == pytest.approx(sum(losses) / 3, rel=1e-4)


def test_fit_checks_every_teacher_checkpoint_before_its_first_step(tmp_path, tiny):
    traj = train_teacher(tiny, tmp_path, log=quiet)
    (traj.directory / traj.entry(250)["file"]).unlink()  # progressive reaches it at student step 200

    def build_teacher():
        return tiny.teacher.model.build(8, 2, [torch.Generator()])

    cfg = replace(tiny.student, steps=300)
    state = tmp_path / "state.pt"
    with pytest.raises(TrajectoryError, match="step 250 is missing"):
        fit(
            tiny.task,
            cfg.model.build(8, 2, [generator(0, "init")]),
            cfg,
            [Member("prog", 0, Progressive())],
            data_stream="d",
            teachers=TeacherPool(traj, build_teacher, torch.device("cpu")),
            state_path=state,
        )
    assert not state.exists()  # stopped before step 0's record


@pytest.mark.parametrize("loss", ["forward_kl", "reverse_kl"])
def test_a_temperature_too_small_to_divide_by_trains_on_the_teachers_argmax(tiny_teacher, tiny, loss):
    """T = 1e-40 (subnormal in float32: logits / T overflow) is the T -> 0 limit: for forward KL the same
    training as T = 0, cross-entropy on the teacher's argmax; finite for reverse KL."""
    cfg = replace(tiny.student, steps=20, eval_every=10)
    pool = TeacherPool(tiny_teacher, lambda: tiny.teacher.model.build(8, 2, [torch.Generator()]), torch.device("cpu"))
    runs = []
    for temperature in (1e-40, 0.0) if loss == "forward_kl" else (1e-40,):
        stack = cfg.model.build(8, 2, [generator(0, "init")])
        runs.append(
            fit(
                tiny.task,
                stack,
                cfg,
                [Member("one", 0, OneShot())],
                data_stream="d",
                teachers=pool,
                distillation=DistillationConfig(loss=loss, temperature=temperature),
            )[0]
        )
    assert all(math.isfinite(r["train_loss"]) for r in runs[0][1:])
    if loss == "forward_kl":
        tiny_t, zero_t = ([r["train_loss"] for r in run[1:]] for run in runs)
        assert tiny_t == pytest.approx(zero_t, rel=1e-6)


def test_a_hand_written_sgd_run_resumes_on_either_path_at_the_same_rates(tmp_path, tiny):
    """The plain-SGD MLP path keeps no torch optimizer: its resume state holds the schedule's step alone. Resumed
    by the same path it trains on bit for bit; resumed by the autograd path (here: ``on_non_finite="skip"``)
    at the same learning rates, the losses within float32 rounding of the hand-written gradients."""
    sgd = OptimizerConfig(name="sgd", lr=0.1, lr_schedule="cosine", warmup_fraction=0.2)
    cfg = replace(tiny.student, steps=60, eval_every=10, checkpoint_every=10, optimizer=sgd)

    def run(train, state=None, stop=None):
        def interrupt(step):
            if step == stop:
                raise KeyboardInterrupt

        model = train.model.build(8, 2, [generator(0, "init")])
        members = [Member("ce", 0, CE())]
        return fit(tiny.task, model, train, members, data_stream="d", state_path=state, on_record=interrupt)[0]

    def numbers(records):
        return [{k: v for k, v in r.items() if "time" not in k} for r in records]

    whole = run(cfg)
    autograd = replace(cfg, on_non_finite="skip")
    for path, resumed in (("same", cfg), ("autograd", autograd)):
        state = tmp_path / f"{path}.pt"
        with pytest.raises(KeyboardInterrupt):
            run(cfg, state, stop=30)
        assert torch.load(state, weights_only=False)["optimizer"] is None  # the hand-written path's state
        rest = run(resumed, state)
        assert [r["lr"] for r in rest] == [r["lr"] for r in whole]
        if path == "same":
            assert numbers(rest) == numbers(whole)
        else:
            assert [r["step"] for r in rest] == [r["step"] for r in whole]
            assert [r["eval_loss"] for r in rest] == pytest.approx([r["eval_loss"] for r in whole], rel=1e-4)
    # A state holding a torch optimizer (the autograd path's, and the hand-written path's before it kept
    # none) resumes on the hand-written path at the same rates.
    state = tmp_path / "torch.pt"
    with pytest.raises(KeyboardInterrupt):
        run(autograd, state, stop=30)
    assert torch.load(state, weights_only=False)["optimizer"] is not None
    rest = run(cfg, state)
    assert [r["lr"] for r in rest] == [r["lr"] for r in whole]
    assert [r["eval_loss"] for r in rest] == pytest.approx([r["eval_loss"] for r in whole], rel=1e-4)
