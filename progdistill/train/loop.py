"""The training loop shared by teachers and students (one loop, no per-task copies).

:func:`fit` trains a stack of M models (see :class:`progdistill.models.mlp.MLP`; a stack of one for any other
model) for the same number of steps. Model m has its own data seed and its own schedule: a teacher is a
stack of one trained with :class:`~progdistill.distill.schedules.CE` that also writes a trajectory; a sweep of
students is a stack whose members follow different schedules. Models that share a seed share their data
stream and their initialization, so schedules are compared on identical data (a paired comparison).

Work is done in *blocks* of steps: for one-label tasks the inputs of a block are sampled at once, and the
teacher logits a block needs are computed in one large batch per (data stream, checkpoint) instead of once
per step (:func:`progdistill.distill.teachers.block_teacher_logits`); token tasks train one model in micro-batches.
A block's teachers are decided once (:meth:`Training.plan`) and passed to its steps and records. Each step is
one function of :mod:`progdistill.train.steps` (zero_grad, forward, loss, backward, update); this module keeps
what happens around them: data, teachers, the tally of losses, records, checkpoints and resume.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from progdistill.core.distributed import all_reduce_mean, barrier, is_main, local_slice, rank_world
from progdistill.core.files import MetricsWriter, atomic_write
from progdistill.core.seeding import generator
from progdistill.core.settings import DistillationConfig, TrainConfig
from progdistill.distill.hints import Hints
from progdistill.distill.losses import hard_targets, mixture_weights
from progdistill.distill.schedules import TeacherSpec, teacher_temperature
from progdistill.distill.teachers import Teachers, block_teacher_logits, plan_temperatures
from progdistill.models.mlp import MLP
from progdistill.store.trajectory import TrajectoryWriter
from progdistill.train.evaluation import ProgressLog, evaluate_stack, evaluate_tokens
from progdistill.train.generation import GeneratedData
from progdistill.train.optim import PlainSGDSchedule, make_optimizer
from progdistill.train.steps import StackObjective, StepContext, StepResult, stack_step, token_step

BLOCK_STEPS = 1000


@dataclass
class Member:
    """One model of a stack: its name (for messages), data seed, schedule and metrics writer."""

    name: str
    seed: int
    schedule: Any
    writer: MetricsWriter | None = None


def fit(
    task,
    model: torch.nn.Module,
    train: TrainConfig,
    members: Sequence[Member],
    *,
    data_stream: str,
    distillation: DistillationConfig | None = None,
    teachers: Teachers | None = None,
    checkpoint_writer: TrajectoryWriter | None = None,
    device: torch.device = torch.device("cpu"),
    desc: str = "train",
    state_path: Path | None = None,
    on_record: Callable[[int], None] | None = None,
) -> list[list[dict]]:
    """Train the stack ``model`` (M = len(members)) for ``train.steps`` steps; returns each member's records.

    Member m draws ``train.batch_size`` fresh examples per step (``task.sample_batch``) from the generator
    ``(seed, data_stream)`` and minimizes, at student step t with the teacher spec
    s = ``schedule.for_seed(seed).teacher_at(t, checkpoint steps, train.steps)``
    (:class:`~progdistill.distill.schedules.TeacherSpec`; a schedule's own random draws follow the member's seed):
    CE on true labels when s is None, else ``alpha * CE + (1 - alpha) * D(teacher_s || student)``
    (:mod:`progdistill.distill.losses`) at the spec's temperature (default ``distillation.temperature``), or for a spec
    with a hint layer the hint loss (:mod:`progdistill.distill.hints`). ``teachers``: a :class:`TeacherPool`, or a
    :class:`progdistill.train.cotraining.LiveTeacher` for co-training. Every ``train.eval_every`` steps (and at steps 0
    and the last) each member writes a record {step, train_loss, eval_loss, eval_accuracy, teacher_checkpoint,
    lr} (and what the spec adds: teacher_temperature, teacher_weight_path, teacher_noise, ...). When
    ``checkpoint_writer`` is given (a teacher: M must be 1) weights are saved every
    ``train.checkpoint_every`` steps, at step 0 and at the last step.

    Non-finite values: a NaN or inf training loss or teacher output stops the run with
    :class:`NonFiniteError` naming the member, the step and the quantity (everything saved so far is kept; a
    non-finite gradient shows up as a non-finite loss at the next step); with
    ``train.on_non_finite == "skip"`` a step with a non-finite loss or gradient is skipped instead (no
    update) and counted in the records' ``skipped_steps``.

    Teacher checkpoints: when a member's schedule needs the teacher, every checkpoint file of ``teachers`` is
    checked (:meth:`TeacherPool.verify`) before the first step; a missing or corrupted one raises
    :class:`progdistill.store.trajectory.TrajectoryError`.

    Resume: with ``state_path``, the complete training state (weights, optimizer, learning-rate schedule,
    data generators, records) is saved atomically at every record; a later call with the same members resumes
    from it, rewrites the metrics files to the saved records and drops trajectory checkpoints saved after it,
    and so ends with the same numbers as an uninterrupted run (bit for bit on CPU with the same thread count).
    The state file is deleted when training finishes. ``on_record(step)`` is called after every record (main
    process), e.g. to persist the run's elapsed time.
    """
    run = Training(
        task,
        model,
        train,
        members,
        data_stream,
        distillation or DistillationConfig(),
        teachers,
        checkpoint_writer,
        device,
        desc,
        state_path,
    )
    run.on_record = on_record
    state = load_state(state_path, run.names)
    barrier()  # every process has read the state before rank 0 may replace it
    start = 0 if state is None else state["step"]
    bar = tqdm(
        total=train.steps,
        initial=start,
        desc=desc,
        unit="step",
        leave=False,
        mininterval=1.0,
        disable=None if run.main_process else True,
    )  # disabled when stderr is not a terminal
    run.progress_log = ProgressLog(desc, train.steps, enabled=run.main_process and bar.disable)
    if state is None:
        run.record(0)
        run.checkpoint(0)
    else:
        run.resume(state)
    while start < train.steps:
        stop = run.block_end(start)
        plan = run.plan(start, stop)  # (L, M) the teacher of every step and member, resolved once
        run.release_teachers(plan[0])
        if task.per_position_targets:
            run.train_token_steps(start, plan)
        else:
            run.train_stack_block(start, plan)
        bar.update(stop - start)
        start = stop
        if run.records_at(stop):
            run.record(stop)
            run.checkpoint(stop)
    bar.close()
    barrier()
    if state_path is not None and run.main_process:
        Path(state_path).unlink(missing_ok=True)
    return run.histories


class Training:
    """The state of one :func:`fit` call -- models, optimizer, data generators, running losses, records --
    and the named steps of its loop."""

    on_record: Callable[[int], None] | None = None

    def __init__(
        self,
        task,
        model: torch.nn.Module,
        train: TrainConfig,
        members: Sequence[Member],
        data_stream: str,
        distillation: DistillationConfig,
        teachers: Teachers | None,
        checkpoint_writer: TrajectoryWriter | None,
        device: torch.device,
        desc: str,
        state_path: Path | None,
    ):
        M = len(members)
        # Each member's schedule with its own random draws (noise, a fresh init) bound to the member's seed.
        members = [dataclasses.replace(mem, schedule=mem.schedule.for_seed(mem.seed)) for mem in members]
        self.task, self.model, self.train, self.members = task, model, train, members
        self.distillation, self.teachers, self.checkpoint_writer = distillation, teachers, checkpoint_writer
        self.device, self.state_path = device, state_path
        self.rows = local_slice(train.batch_size, f"batch_size ({desc})")  # this process's share of each batch
        self.main_process = is_main()
        self.ckpt_steps = teachers.steps if teachers is not None else []
        for mem in members:
            if mem.schedule.needs_teacher and teachers is None:
                raise ValueError(f"{mem.name}: schedule {mem.schedule.label} needs a teacher trajectory")
        taught = teachers if any(mem.schedule.needs_teacher for mem in members) else None
        if (
            taught is not None
        ):  # schedules valid for the trajectory, its checkpoint files intact (once per pool: TeacherPool.check)
            taught.check([mem.schedule for mem in members])
        # The teachers of the last step trained (what a record says); step 0's until the first block.
        self.in_use = self.teachers_at(0)
        if taught is not None:
            # The first teachers are built now: a transform that cannot apply (a weight path between models of
            # different shapes) or a hint layer that does not exist stops here, before the first step.
            taught.prepare([spec for spec in self.in_use if spec is not None])
        self.hints = Hints.for_stack(model, teachers, self.in_use, [mem.seed for mem in members])
        if checkpoint_writer is not None and M != 1:
            raise ValueError("only a stack of one model (a teacher) writes a trajectory")
        self.seeds = sorted({mem.seed for mem in members})
        self.seed_index = torch.tensor([self.seeds.index(mem.seed) for mem in members])
        self.gens = {s: generator(s, data_stream) for s in self.seeds}
        if task.per_position_targets and M != 1:
            raise ValueError(f"token tasks train one model at a time, got a stack of {M}")
        # Sequence-level / on-policy distillation (token tasks: one model per fit).
        self.generated = (
            GeneratedData(task, distillation, members[0].seed)
            if distillation.generates and task.per_position_targets
            else None
        )
        self.eval_batches = [b.to(device) for b in task.eval_batches()]
        self.per_position = task.per_position_targets
        model.to(device).train()
        if self.hints is not None:
            self.hints.to(device)
        self.net = model
        if rank_world()[1] > 1:
            self.net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if train.compile:
            self.net = cast(torch.nn.Module, torch.compile(self.net))  # compiling a module gives a module
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=train.precision == "bf16")
        # Plain SGD on a model that declares hand-written gradients (MLP.sgd_step) skips autograd; anything else
        # (momentum, Adam, reverse KL, skipping steps, DDP, compile, bf16) goes through autograd.
        opt = train.optimizer
        self.hand_sgd = (
            getattr(model, "hand_written_sgd", False)
            and not task.per_position_targets
            and self.net is model
            and opt.name == "sgd"
            and opt.momentum == 0
            and opt.weight_decay == 0
            and train.precision == "float32"
            and train.on_non_finite == "stop"
            and distillation.plain_forward_kl
        )
        # The hand-written path needs only the learning rates: no torch optimizer to build (its import of
        # torch._dynamo costs ~1 s a process). Hint layers train by autograd, so they keep torch's.
        self.opt: torch.optim.Optimizer | None = None
        self.lr_sched: PlainSGDSchedule | torch.optim.lr_scheduler.LambdaLR
        if self.hand_sgd and self.hints is None:
            self.lr_sched = PlainSGDSchedule(opt, train.steps)
        else:
            params = list(model.parameters()) + ([] if self.hints is None else list(self.hints.parameters()))
            self.opt, self.lr_sched = make_optimizer(params, opt, train.steps)
        self.names = [mem.name for mem in members]
        self.steps = StepContext(self.net, self.opt, list(model.parameters()), train, self.autocast, device)
        self.histories: list[list[dict]] = [[] for _ in members]
        self.loss_sum, self.loss_count, self.skipped = torch.zeros(M, device=device), 0, 0
        self.last_evaluation: tuple[torch.Tensor, torch.Tensor] | None = None
        self.last_groups: dict[str, float] = {}  # the position groups' metrics of the last evaluation
        self.progress_log: ProgressLog | None = None

    def current_lr(self) -> float:
        """The learning rate of the next step."""
        if isinstance(self.lr_sched, PlainSGDSchedule):
            return self.lr_sched.lr
        assert self.opt is not None  # torch's schedule comes with torch's optimizer
        return self.opt.param_groups[0]["lr"]

    def take_rates(self, n: int) -> list[float]:
        """The learning rates of the next ``n`` steps, the schedule advanced past them (the rates do not depend
        on the steps' results, so a block's are read out first)."""
        if isinstance(self.lr_sched, PlainSGDSchedule):
            return self.lr_sched.take(n)
        assert self.opt is not None  # torch's schedule comes with torch's optimizer
        rates = []
        with warnings.catch_warnings():  # the scheduler would warn that opt.step() is never called
            warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*")
            for _ in range(n):
                rates.append(self.opt.param_groups[0]["lr"])
                self.lr_sched.step()
        return rates

    def teachers_at(self, t: int) -> list[TeacherSpec | None]:
        """The teacher of every member at student step t (None: labels only)."""
        return [mem.schedule.teacher_at(t, self.ckpt_steps, self.train.steps) for mem in self.members]

    def plan(self, start: int, stop: int) -> list[list[TeacherSpec | None]]:
        """The teacher of every member at steps ``start`` to ``stop`` (L, M): the one place a block's teachers
        are decided (checkpoint, temperature, transform, hint layer); its steps, teacher logits and records read
        them from here."""
        return [self.teachers_at(t) for t in range(start, stop)]

    def resume(self, state: dict) -> None:
        """Continue from a saved training state (:func:`_load_state`)."""
        self.skipped, self.histories = state["skipped"], state["histories"]
        self.model.load_state_dict(state["model"])
        if self.hints is not None:
            self.hints.projections.load_state_dict(state["hints"])
        if self.opt is None or state["optimizer"] is not None:
            self.lr_sched.load_state_dict(state["lr_schedule"])  # PlainSGDSchedule reads torch's state too
            if self.opt is not None:
                self.opt.load_state_dict(state["optimizer"])
        else:  # written by the hand-written path (plain SGD, no state but its rate), resumed by autograd
            rate = PlainSGDSchedule(self.train.optimizer, self.train.steps)
            rate.load_state_dict(state["lr_schedule"])
            torch_state = self.lr_sched.state_dict()
            torch_state.update(last_epoch=rate.last_epoch, _last_lr=[rate.lr])
            self.lr_sched.load_state_dict(torch_state)
            for group in self.opt.param_groups:
                group["lr"] = rate.lr
        for s, g in self.gens.items():
            g.set_state(state["generators"][s])
        if self.generated is not None:
            self.generated.load_state(state["generation"])
        for mem, hist in zip(self.members, self.histories):
            if mem.writer is not None:
                mem.writer.rewrite(hist)
        if self.checkpoint_writer is not None:
            self.checkpoint_writer.truncate(after_step=state["step"])

    def block_end(self, start: int) -> int:
        """The end of the block of steps from ``start``: at most BLOCK_STEPS, never past a record."""
        train = self.train
        stop = min(start + BLOCK_STEPS, (start // train.eval_every + 1) * train.eval_every, train.steps)
        if self.checkpoint_writer is not None:
            stop = min(stop, (start // train.checkpoint_every + 1) * train.checkpoint_every)
        return stop

    def records_at(self, step: int) -> bool:
        train = self.train
        return (
            step % train.eval_every == 0
            or step == train.steps
            or (self.checkpoint_writer is not None and step % train.checkpoint_every == 0)
        )

    def train_token_steps(self, start: int, plan: list[list[TeacherSpec | None]]) -> None:
        """The steps from ``start`` of one model on a token task, with the teachers of ``plan`` (L, 1), each in
        micro-batches (:func:`progdistill.train.steps.token_step`)."""
        self.in_use = plan[-1]
        for i in range(len(plan)):
            gen = self.gens[self.members[0].seed]
            batch = self.task.sample_batch(self.train.batch_size, gen)  # drawn whatever the step trains on
            spec = plan[i][0]
            teacher = None if spec is None or self.teachers is None else self.teachers.get(spec)
            temperature = teacher_temperature(spec, self.distillation.temperature)
            distillation = (
                self.distillation
                if temperature == self.distillation.temperature
                else dataclasses.replace(self.distillation, temperature=temperature)
            )
            if self.generated is not None:  # the whole step's batch is sampled (same on every process)
                batch, _, distillation = self.generated.batch(
                    batch, self.train.batch_size, teacher, self.model, distillation
                )
            batch = batch.rows(self.rows).to(self.device)
            self._tally(token_step(self.steps, batch, teacher, distillation), start + i)

    def train_stack_block(self, start: int, plan: list[list[TeacherSpec | None]]) -> None:
        """The steps from ``start`` of the whole stack on a one-label task, with the teachers of ``plan`` (L, M),
        in the objective's fused forward-KL form (:func:`progdistill.distill.losses.soft_targets`) where it
        applies (:class:`progdistill.train.steps.StackObjective`)."""
        self.in_use = plan[-1]
        L, B, C = len(plan), self.train.batch_size, self.task.num_classes
        # The block's examples, one stream per seed: inputs (S, L, B_local, n), labels (S, L, B_local).
        batches = [self.task.sample_batch(L * B, self.gens[s]) for s in self.seeds]
        x_block = torch.stack([b.inputs.view(L, B, -1) for b in batches])[:, :, self.rows].to(self.device)
        y_block = torch.stack([b.targets.view(L, B) for b in batches])[:, :, self.rows].to(self.device)
        teacher_logits = block_teacher_logits(plan, x_block, self.seed_index, self.teachers, C)  # (L, M, B, C)
        if teacher_logits is not None and not torch.isfinite(teacher_logits).all():
            i, m = (~torch.isfinite(teacher_logits)).flatten(2).any(-1).nonzero()[0].tolist()
            raise NonFiniteError(
                f"teacher checkpoint {plan[i][m].checkpoint} produced non-finite outputs; the students stop here"
            )
        temperature = plan_temperatures(plan, self.distillation.temperature, self.device)  # a number, or (L, M)
        hint_steps = [any(spec is not None and spec.hint_layer is not None for spec in row) for row in plan]
        has_teacher = torch.tensor([[c is not None for c in row] for row in plan], device=self.device)
        ce_weight, kd_weight = mixture_weights(self.distillation.alpha, has_teacher[..., None])  # (L, M, 1)
        # Step i's inputs for every model: (B, n) shared by one seed's models, else (M, B, n) gathered per
        # step (one copy of a block's inputs per model would be M / S times the block); labels (L, M, B).
        x_steps = x_block[0] if len(self.seeds) == 1 else PerStepGather(x_block, self.seed_index)
        y_steps = y_block[self.seed_index].transpose(0, 1)
        objective = StackObjective(
            y_steps,
            teacher_logits,
            temperature,
            ce_weight,
            kd_weight,
            self.distillation,
            fused=teacher_logits is None or self.distillation.plain_forward_kl,
        )
        corrections = objective.corrections  # (L, M) of the fused form with a teacher, else None
        if corrections is not None:
            self.loss_sum -= per_model_sum(corrections)  # report the objective, not the fused CE
        if self.hand_sgd and not any(hint_steps):
            targets = hard_targets(y_steps, C) if objective.targets is None else objective.targets
            # the hand-written gradients (MLP.sgd_steps), ~2x faster per step than autograd; losses unchecked,
            # checked below once per block instead of a sync per step
            step_losses = cast(MLP, self.model).sgd_steps(x_steps, targets, self.take_rates(targets.shape[0]))
            finite = torch.isfinite(step_losses).all(dim=1)  # one check per block instead of a sync per step
            if not finite.all():
                i = int((~finite).nonzero()[0])
                culprits = [self.names[m] for m in range(len(self.names)) if not torch.isfinite(step_losses[i, m])]
                raise non_finite_error(culprits, "training loss", start + i)
            self.loss_sum += per_model_sum(step_losses)
            self.loss_count += L
            return
        for i in range(L):
            step_corrections = None if corrections is None else corrections[i]  # (M,)
            hints = None
            if hint_steps[i]:  # the hint phase: these models regress the teacher's hidden layer instead
                if step_corrections is not None:  # their loss is no fused CE: take back its correction now
                    hinted = torch.tensor(
                        [s is not None and s.hint_layer is not None for s in plan[i]], device=self.device
                    )
                    self.loss_sum += torch.where(hinted, step_corrections, torch.zeros_like(step_corrections))
                    step_corrections = torch.where(hinted, torch.zeros_like(step_corrections), step_corrections)
                assert self.hints is not None  # a hint step: the stack has hints
                hints = functools.partial(
                    self.hints.replace,
                    specs=plan[i],
                    teachers=self.teachers,
                    teacher_inputs=functools.partial(self._stream_inputs, x_block, i),
                )
            result = stack_step(self.steps, x_steps[i], functools.partial(objective.loss, i), hints)
            self._tally(result, start + i)
            if result.bad is not None and step_corrections is not None:
                self.loss_sum += step_corrections  # a skipped step adds no cross-entropy: take back its correction

    def _stream_inputs(self, x_block: torch.Tensor, i: int, m: int) -> torch.Tensor:
        """Model m's inputs (B, n) at step i of a block (S, L, B, n)."""
        return x_block[self.seed_index[m], i]

    def _tally(self, result: StepResult, step: int) -> None:
        """Add a step's training loss to the records' running mean, or stop or skip on its non-finite quantity;
        the learning-rate schedule advances either way."""
        if result.bad is not None:
            if self.train.on_non_finite == "stop":
                culprits = [self.names[m] for m in result.culprits or range(len(self.names))]
                raise non_finite_error(culprits, result.bad, step)
            self.skipped += 1
        else:
            self.loss_sum += result.loss
            self.loss_count += 1
        self.lr_sched.step()

    def record(self, step: int) -> None:
        """Evaluate, and write every member's record at ``step`` (training loss: the mean since the last one)."""
        M = len(self.members)
        train_loss = (
            all_reduce_mean(self.loss_sum / max(self.loss_count, 1)).tolist() if self.loss_count else [None] * M
        )
        self.loss_sum, self.loss_count = torch.zeros(M, device=self.device), 0
        if not self.main_process:
            return
        groups: dict[str, float] = {}  # the metrics of the held-out batches' position groups (Batch.groups)
        if self.per_position:
            self.last_evaluation = evaluate_tokens(self.model, self.eval_batches, groups)
        else:
            self.last_evaluation = evaluate_stack(self.model, self.eval_batches)
        eval_loss, eval_acc = self.last_evaluation
        self.last_groups = groups
        if self.progress_log is not None:
            self.progress_log(step, eval_loss, eval_acc)
        in_use = self.in_use
        for m, mem in enumerate(self.members):
            loss = train_loss[m]
            if loss is not None and not math.isfinite(loss):
                raise NonFiniteError(
                    f"{mem.name}: training loss is {train_loss[m]} in the steps before "
                    f"{step}; metrics saved so far are kept"
                )
            spec = in_use[m]
            rec = {
                "step": step,
                "train_loss": train_loss[m],
                "eval_loss": float(eval_loss[m]),
                "eval_accuracy": float(eval_acc[m]),
                **groups,
                "teacher_checkpoint": None if spec is None else spec.checkpoint,
                "lr": self.current_lr(),
                **({} if spec is None else spec.describe()),
            }
            if self.skipped:
                rec["skipped_steps"] = self.skipped
            if self.generated is not None:  # steps so far that trained on the teacher's / the student's samples
                rec["seq_kd_steps"] = self.generated.counts["teacher"]
                rec["on_policy_steps"] = self.generated.counts["student"]
            self.histories[m].append(rec)
            if mem.writer is not None:
                mem.writer.write(rec)
        if self.on_record is not None:
            self.on_record(step)

    def checkpoint(self, step: int) -> None:
        """Save the teacher's weights when ``step`` is a checkpoint step, and the resume state (main process)."""
        if not self.main_process:
            return
        assert self.last_evaluation is not None, "record() evaluates before checkpoint()"
        eval_loss, eval_acc = self.last_evaluation
        writer, train = self.checkpoint_writer, self.train
        if writer is not None and (step % train.checkpoint_every == 0 or step == train.steps):
            metrics = {"eval_accuracy": float(eval_acc[0]), "eval_loss": float(eval_loss[0]), **self.last_groups}
            writer.save(step, self.model.state_dict(), metrics)
        if self.state_path is not None and step < train.steps:
            save_state(
                self.state_path,
                {
                    "names": self.names,
                    "step": step,
                    "skipped": self.skipped,
                    "histories": self.histories,
                    "model": self.model.state_dict(),
                    "optimizer": None if self.opt is None else self.opt.state_dict(),
                    **({} if self.hints is None else {"hints": self.hints.projections.state_dict()}),
                    "lr_schedule": self.lr_sched.state_dict(),
                    "generators": {s: g.get_state() for s, g in self.gens.items()},
                    **({"generation": self.generated.state()} if self.generated is not None else {}),
                },
            )

    def release_teachers(self, specs: Sequence[TeacherSpec | None]) -> None:
        """Drop the teacher checkpoints that none of ``specs`` (the members' teachers at a block's first step)
        uses."""
        if self.teachers is not None:
            self.teachers.retain({spec for spec in specs if spec is not None})


# Helpers for a *stack* of models trained together (:class:`Training`): M models, from S
# seeds' data streams, whose per-step values are (L, M) per block of L steps.


class PerStepGather:
    """``x[i]`` of a block (S, L, B, n) as each model's inputs (M, B, n), indexed by step i."""

    def __init__(self, block: torch.Tensor, seed_index: torch.Tensor):
        self.block, self.seed_index = block, seed_index.to(block.device)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.block[:, i].index_select(0, self.seed_index)


def per_model_sum(values: torch.Tensor) -> torch.Tensor:
    """(L, M) -> (M,): each model's sum over the block's L steps, added up in the same order whatever M is (a
    sum over dim 0 vectorizes across models and rounds differently for different stack sizes), so a student
    trained in any stack -- one job per seed, a sweep grown by a seed -- reports the same training loss."""
    return values.t().contiguous().sum(dim=1)


# Non-finite values in training: the error that stops a run.


class NonFiniteError(FloatingPointError):
    """A loss became NaN or inf; the message names the run, the step range and the quantity."""


def non_finite_error(culprits: Sequence[str], what: str, step: int) -> NonFiniteError:
    return NonFiniteError(
        f"{', '.join(culprits)}: non-finite {what} at step {step}; everything saved before it "
        "is kept (on_non_finite='skip' skips such steps)"
    )


# The resume state of an interrupted training run: one file, written atomically at every record.
#
# :func:`fit` saves its complete state (weights, optimizer, learning-rate schedule, data
# generators, records, member names) with :func:`save_state` and continues from :func:`load_state` on a later
# call with the same members, so an interrupted run ends with the same numbers as an uninterrupted one.


def save_state(path: Path, state: dict) -> None:
    """Write ``state`` (``torch.save``) to ``path`` through a temporary file and a rename."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # a file object: a full disk surfaces as its OSError, not torch's message
            torch.save(state, fh)

    atomic_write(path, write)


class ResumeStateError(ValueError):
    """A resume state file exists but cannot be read (it is written atomically: it was damaged since)."""


def load_state(path: Path | None, names: list[str]) -> dict | None:
    """The saved training state at ``path`` if it belongs to exactly the members ``names``, else None (also
    when ``path`` is None or missing). Raises :class:`ResumeStateError` naming the file when it cannot be read:
    starting over would replace it, and the metrics and checkpoints it covers, with no one having asked."""
    if path is None or not Path(path).exists():
        return None
    try:
        state = torch.load(path, weights_only=False)
    except Exception as exc:  # zip, pickle and torch errors alike
        raise ResumeStateError(
            f"the resume state {path} is unreadable ({str(exc).split('. ')[0]}); nothing was deleted or "
            f"written. Restore it, or delete it to train {', '.join(names)} from step 0"
        ) from None
    return state if isinstance(state, dict) and state.get("names") == names else None
