"""The training loop shared by teachers and students (one loop, no per-task copies).

:func:`fit` trains a stack of M models (see :class:`progdistill.models.mlp.MLP`; a stack of one for any other
model) for the same number of steps. Model m has its own data seed and its own schedule: a teacher is a
stack of one trained with :class:`~progdistill.schedules.CE` that also writes a trajectory; a sweep of
students is a stack whose members follow different schedules. Models that share a seed share their data
stream and their initialization, so schedules are compared on identical data (a paired comparison).

Work is done in *blocks* of steps: inputs for a block are sampled at once, and the teacher logits a block
needs are computed in one large batch per (data stream, checkpoint) instead of once per step.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .distributed import all_reduce_mean, all_true, barrier, is_main, local_slice, rank_world
from .config import DistillationConfig, OptimizerConfig, TrainConfig
from .losses import IGNORE_INDEX, cross_entropy, distillation_loss, forward_kl, reverse_kl, teacher_probabilities
from .files import MetricsWriter
from .schedules import CE
from .trajectory import Trajectory, TrajectoryWriter

BLOCK_STEPS = 1000
TEACHER_CHUNK = 512


class NonFiniteError(FloatingPointError):
    """A loss became NaN or inf; the message names the run, the step range and the quantity."""


def seed_for(seed: int, stream: str) -> int:
    """A stable 63-bit seed for the named random stream of ``seed`` (independent of PYTHONHASHSEED)."""
    digest = hashlib.sha256(f"{seed}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def generator(seed: int, stream: str) -> torch.Generator:
    return torch.Generator().manual_seed(seed_for(seed, stream))


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" picks CUDA when available, else CPU. Raises ``ConfigError`` for an unknown device string or a
    CUDA device on a machine (or torch build) without CUDA."""
    from .config import ConfigError

    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"--device {device!r} is invalid: use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device!r}: CUDA is not available here (this torch build or machine has "
                          "no GPU); use auto or cpu")
    if resolved.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {device!r} is not supported: use auto, cpu, cuda or cuda:N")
    return resolved


def learning_rate_factor(cfg: OptimizerConfig, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the base learning rate at step t: 1, or linear warmup then cosine decay to 0."""
    if cfg.lr_schedule == "constant":
        return lambda step: 1.0
    warmup = int(cfg.warmup_fraction * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def make_optimizer(params, cfg: OptimizerConfig, total_steps: int):
    """The optimizer and its LambdaLR scheduler. Every update is elementwise, so the models of a stack are
    optimized independently of each other."""
    params = list(params)
    if cfg.name == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    elif cfg.name == "adam":
        opt = torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, learning_rate_factor(cfg, total_steps))


class TeacherPool:
    """Frozen teacher checkpoints loaded on demand from a trajectory.

    A checkpoint is loaded once when a schedule first switches to it and kept while a schedule uses it;
    its model is in eval mode, with ``requires_grad`` off, and never in an optimizer.
    """

    def __init__(self, trajectory: Trajectory, build: Callable[[], torch.nn.Module], device: torch.device):
        self.trajectory = trajectory
        self.build = build
        self.device = device
        self.models: dict[int, torch.nn.Module] = {}
        self.loads = 0

    def get(self, step: int) -> torch.nn.Module:
        if step not in self.models:
            if hasattr(self.trajectory, "load_model"):  # e.g. an HF Trainer run (progdistill.hf)
                model = self.trajectory.load_model(step)
            else:
                model = self.build()
                model.load_state_dict(self.trajectory.load(step))
            model.to(self.device).eval().requires_grad_(False)
            self.models[step] = model
            self.loads += 1
        return self.models[step]

    def retain(self, steps: set[int]) -> None:
        """Drop the checkpoints no schedule uses any more."""
        for step in list(self.models):
            if step not in steps:
                del self.models[step]


@dataclass
class Member:
    """One model of a stack: its name (for messages), data seed, schedule and metrics writer."""

    name: str
    seed: int
    schedule: Any
    writer: MetricsWriter | None = None


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 8192):
    """Mean cross-entropy (nats) and accuracy of every model of a stack on (x, y): two tensors of shape (M,)."""
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0.0
    for i in range(0, len(x), batch):
        logits = model(x[i:i + batch])  # (M, b, C)
        target = y[i:i + batch].expand(logits.shape[0], -1)
        loss_sum = loss_sum + cross_entropy(logits, target, reduction="none").sum(dim=1)
        correct = correct + (logits.argmax(-1) == target).float().sum(dim=1)
    model.train(was_training)
    return loss_sum / len(x), correct / len(x)


@torch.no_grad()
def evaluate_tokens(model: torch.nn.Module, batches) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy (nats per supervised token) and accuracy at the supervised positions of
    ``batches`` (:class:`progdistill.tasks.base.Batch`), each as a tensor of shape (1,) like :func:`evaluate`."""
    was_training = model.training
    model.eval()
    loss_sum = correct = count = 0.0
    for batch in batches:
        selected = batch.targets != IGNORE_INDEX
        logits = model(batch.inputs, batch.attention_mask)[selected]  # (N, V)
        target = batch.targets[selected]
        loss_sum += float(cross_entropy(logits, target, reduction="none").sum())
        correct += float((logits.argmax(-1) == target).sum())
        count += int(selected.sum())
    model.train(was_training)
    count = max(count, 1)
    return torch.tensor([loss_sum / count]), torch.tensor([correct / count])


def _token_step(net, batch, teacher, train: TrainConfig, distillation: DistillationConfig, autocast) -> float:
    """Forward and backward passes of one optimizer step of a token task; returns the step's loss (float).

    The batch is split into ``train.grad_accumulation`` micro-batches, and every micro-batch's summed
    per-token loss is divided by the number of supervised tokens of the *whole* step (over all processes), so
    the accumulated gradient is that of the mean per-token loss of the step, however the tokens fall into
    micro-batches. Loss per supervised token: CE on the true token without a teacher, else
    ``alpha * CE + (1 - alpha) * D(teacher || student)`` (:func:`progdistill.losses.distillation_loss`)."""
    selected = batch.targets != IGNORE_INDEX  # (B, L)
    total = float(all_reduce_mean(selected.sum().float().reshape(1))[0])  # mean over processes
    total = max(total, 1.0)
    value = 0.0
    data_parallel = rank_world()[1] > 1
    for index in torch.arange(batch.inputs.shape[0]).chunk(train.grad_accumulation):
        part, mask = batch.rows(index), selected[index]
        if not mask.any() and not data_parallel:  # nothing to learn; under DDP every process must still
            continue                                # run the backward pass (its gradient all-reduce) below
        with autocast:
            logits = net(part.inputs, part.attention_mask)[mask]  # (N, V)
        target = part.targets[mask]
        if teacher is None:
            per_token = cross_entropy(logits, target, reduction="none")
        else:
            with torch.no_grad():
                teacher_logits = teacher(part.inputs, part.attention_mask)[mask]
            per_token = distillation_loss(logits, teacher_logits, target, distillation.loss,
                                          distillation.temperature, distillation.alpha, reduction="none")
        loss = per_token.sum() / total
        if all_true(bool(torch.isfinite(loss)), loss.device):  # one process's inf skips it on all of them
            loss.backward()
        value += float(loss.detach())
    return value


def fit(task, model: torch.nn.Module, train: TrainConfig, members: Sequence[Member], *,
        data_stream: str, distillation: DistillationConfig | None = None,
        teachers: TeacherPool | None = None, checkpoint_writer: TrajectoryWriter | None = None,
        device: torch.device = torch.device("cpu"), desc: str = "train",
        state_path: Path | None = None) -> list[list[dict]]:
    """Train the stack ``model`` (M = len(members)) for ``train.steps`` steps; returns each member's records.

    Member m draws ``train.batch_size`` fresh examples per step from the generator ``(seed, data_stream)``
    and minimizes, at student step t with checkpoint c = schedule.checkpoint_at(t):
    CE on true labels when c is None, else ``alpha * CE + (1 - alpha) * D(teacher_c || student)``
    (:mod:`progdistill.losses`). Every ``train.eval_every`` steps (and at steps 0 and the last) each member
    writes a record {step, train_loss, eval_loss, eval_accuracy, teacher_checkpoint, lr}. When
    ``checkpoint_writer`` is given (a teacher: M must be 1) weights are saved every
    ``train.checkpoint_every`` steps, at step 0 and at the last step.

    Non-finite values: a NaN or inf training loss or teacher output stops the run with
    :class:`NonFiniteError` naming the member, the step and the quantity (everything saved so far is kept; a
    non-finite gradient shows up as a non-finite loss at the next step); with
    ``train.on_non_finite == "skip"`` a step with a non-finite loss or gradient is skipped instead (no
    update) and counted in the records' ``skipped_steps``.

    Resume: with ``state_path``, the complete training state (weights, optimizer, learning-rate schedule,
    data generators, records) is saved atomically at every record; a later call with the same members resumes
    from it, rewrites the metrics files to the saved records and drops trajectory checkpoints saved after it,
    and so ends with the same numbers as an uninterrupted run (bit for bit on CPU with the same thread count).
    The state file is deleted when training finishes.
    """
    M, steps = len(members), train.steps
    rows = local_slice(train.batch_size, f"batch_size ({desc})")  # this process's share of every global batch
    B = rows.stop - rows.start
    main_process = is_main()
    distillation = distillation or DistillationConfig()
    ckpt_steps = teachers.trajectory.steps if teachers is not None else []
    for mem in members:
        if not isinstance(mem.schedule, CE):
            if teachers is None:
                raise ValueError(f"{mem.name}: schedule {mem.schedule.label} needs a teacher trajectory")
            mem.schedule.validate(ckpt_steps)
    if checkpoint_writer is not None and M != 1:
        raise ValueError("only a stack of one model (a teacher) writes a trajectory")
    kd_fn = forward_kl if distillation.loss == "forward_kl" else reverse_kl
    alpha, temperature = distillation.alpha, distillation.temperature

    seeds = sorted({mem.seed for mem in members})
    seed_index = torch.tensor([seeds.index(mem.seed) for mem in members])
    gens = {s: generator(s, data_stream) for s in seeds}
    token_task = task.per_position_targets
    if token_task:
        if M != 1:
            raise ValueError(f"token tasks train one model at a time, got a stack of {M}")
        eval_batches = [b.to(device) for b in task.eval_batches()]
    else:
        x_eval, y_eval = (t.to(device) for t in task.eval_set())
    opt, lr_sched = make_optimizer(model.parameters(), train.optimizer, steps)
    model.to(device).train()
    net = model
    if rank_world()[1] > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if train.compile:
        net = torch.compile(net)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=train.precision == "bf16")
    # Plain SGD on a model with hand-written gradients (progdistill.models.mlp.MLP.sgd_step) skips autograd; anything
    # else (momentum, Adam, reverse KL, skipping steps, DDP, compile, bf16) goes through autograd below.
    hand_sgd = (hasattr(model, "sgd_step") and net is model and train.optimizer.name == "sgd"
                and train.optimizer.momentum == 0 and train.optimizer.weight_decay == 0
                and train.precision == "float32" and train.on_non_finite == "stop"
                and distillation.loss == "forward_kl")
    histories: list[list[dict]] = [[] for _ in members]
    loss_sum = torch.zeros(M, device=device)
    loss_count = 0
    skipped = 0
    names = [mem.name for mem in members]
    params = list(model.parameters())

    def checkpoints(t: int) -> list[int | None]:
        return [mem.schedule.checkpoint_at(t, ckpt_steps) for mem in members]

    def record(step: int) -> None:
        nonlocal loss_sum, loss_count
        train_loss = all_reduce_mean(loss_sum / max(loss_count, 1)).tolist() if loss_count else [None] * M
        loss_sum = torch.zeros(M, device=device)
        loss_count = 0
        if not main_process:
            return
        eval_loss, eval_acc = (evaluate_tokens(model, eval_batches) if token_task
                               else evaluate(model, x_eval, y_eval))
        progress_log(step, eval_loss, eval_acc)
        in_use = checkpoints(max(step - 1, 0))
        for m, mem in enumerate(members):
            if train_loss[m] is not None and not math.isfinite(train_loss[m]):
                raise NonFiniteError(f"{mem.name}: training loss is {train_loss[m]} in the steps before "
                                     f"{step}; metrics saved so far are kept")
            rec = {"step": step, "train_loss": train_loss[m], "eval_loss": float(eval_loss[m]),
                   "eval_accuracy": float(eval_acc[m]), "teacher_checkpoint": in_use[m],
                   "lr": opt.param_groups[0]["lr"]}
            if skipped:
                rec["skipped_steps"] = skipped
            histories[m].append(rec)
            if mem.writer is not None:
                mem.writer.write(rec)
        if checkpoint_writer is not None and (step % train.checkpoint_every == 0 or step == steps):
            checkpoint_writer.save(step, model.state_dict(), {"eval_accuracy": float(eval_acc[0]),
                                                              "eval_loss": float(eval_loss[0])})
        if state_path is not None and step < steps:
            _save_state(state_path, {"names": names, "step": step, "skipped": skipped, "histories": histories,
                                     "model": model.state_dict(), "optimizer": opt.state_dict(),
                                     "lr_schedule": lr_sched.state_dict(),
                                     "generators": {s: g.get_state() for s, g in gens.items()}})

    state = _load_state(state_path, names)
    barrier()  # every process has read the state before rank 0 may replace it
    bar = tqdm(total=steps, initial=0 if state is None else state["step"], desc=desc, unit="step", leave=False,
               mininterval=1.0, disable=None if main_process else True)  # disabled when stderr is not a terminal
    progress_log = _ProgressLog(desc, steps, enabled=main_process and bar.disable)
    if state is None:
        start = 0
        record(0)
    else:
        start, skipped, histories = state["step"], state["skipped"], state["histories"]
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        lr_sched.load_state_dict(state["lr_schedule"])
        for s, g in gens.items():
            g.set_state(state["generators"][s])
        for mem, hist in zip(members, histories):
            if mem.writer is not None:
                mem.writer.rewrite(hist)
        if checkpoint_writer is not None:
            checkpoint_writer.truncate(after_step=start)
    while start < steps:
        stop = min(start + BLOCK_STEPS, (start // train.eval_every + 1) * train.eval_every, steps)
        if checkpoint_writer is not None:
            stop = min(stop, (start // train.checkpoint_every + 1) * train.checkpoint_every)
        L = stop - start
        if token_task:
            plan = [checkpoints(t) for t in range(start, stop)]
            for i in range(L):
                batch = task.sample_batch(train.batch_size, gens[members[0].seed]).rows(rows).to(device)
                teacher = None if plan[i][0] is None else teachers.get(plan[i][0])
                opt.zero_grad(set_to_none=True)
                value = _token_step(net, batch, teacher, train, distillation, autocast)
                bad = None if all_true(bool(math.isfinite(value)), device) else "training loss"
                if bad is None and train.on_non_finite == "skip" and not _grads_finite(params, device):
                    bad = "gradient"
                if bad is not None:
                    if train.on_non_finite == "stop":
                        raise _non_finite(names, bad, start + i)
                    skipped += 1
                else:
                    opt.step()
                    loss_sum += value
                    loss_count += 1
                lr_sched.step()
        else:
            # Inputs for the block, one stream per seed: (S, L, B, n) -> labels (S, L, B).
            global_block = [task.sample_inputs(L * train.batch_size, gens[s]).view(L, train.batch_size, -1)
                            for s in seeds]
            x_block = torch.stack(global_block)[:, :, rows].to(device)  # (S, L, B_local, n)
            y_block = task.labels(x_block)
            plan = [checkpoints(t) for t in range(start, stop)]  # (L, M)
            teacher_logits, kd_weight = _teacher_targets(plan, x_block, seed_index, teachers, task.num_classes)
            ce_weight = torch.where(kd_weight > 0, torch.full_like(kd_weight, alpha), torch.ones_like(kd_weight))
            kd_weight = kd_weight * (1 - alpha)  # (L, M)
            # Step i's inputs for every model: (B, n) shared by one seed's models, else (M, B, n) gathered per
            # step (one copy of a block's inputs per model would be M / S times the block); labels (L, M, B).
            x_steps = x_block[0] if len(seeds) == 1 else _PerStepGather(x_block, seed_index)
            y_steps = y_block[seed_index].transpose(0, 1)
            fused = teacher_logits is None or distillation.loss == "forward_kl"
            if teacher_logits is not None and fused:
                # alpha * CE + (1 - alpha) * KL(q || p) has the gradient of one cross-entropy against the
                # mixture target alpha * onehot(y) + (1 - alpha) * q; its value exceeds the loss by
                # (1 - alpha) * H(q), which is subtracted from the reported training loss.
                q = teacher_probabilities(teacher_logits, temperature)  # (L, M, B, C)
                onehot = torch.nn.functional.one_hot(y_steps, task.num_classes).float()
                soft_target = ce_weight[..., None, None] * onehot + kd_weight[..., None, None] * q
                entropy = -torch.where(q > 0, q * q.clamp(min=1e-38).log(), torch.zeros_like(q)).sum(-1)
                loss_sum -= (kd_weight[..., None] * entropy).mean(dim=2).sum(dim=0)  # (M,)
            if hand_sgd:  # the same SGD update with hand-written gradients (MLP.sgd_step); ~2x faster per step
                targets = soft_target if teacher_logits is not None else \
                    F.one_hot(y_steps, task.num_classes).float()  # (L, M, B, C)
                step_losses = torch.empty(L, M, device=device)
                constant = train.optimizer.lr_schedule == "constant"
                with warnings.catch_warnings():  # the scheduler would warn that opt.step() is never called
                    warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*")
                    for i in range(L):
                        step_losses[i] = model.sgd_step(x_steps[i], targets[i], opt.param_groups[0]["lr"]).mean(dim=1)
                        if not constant:
                            lr_sched.step()
                    if constant:  # same state as stepping it every step, without the per-step Python call
                        lr_sched.last_epoch += L
                finite = torch.isfinite(step_losses).all(dim=1)  # one check per block instead of a sync per step
                if not finite.all():
                    i = int((~finite).nonzero()[0])
                    culprits = [names[m] for m in range(M) if not torch.isfinite(step_losses[i, m])]
                    raise _non_finite(culprits, "training loss", start + i)
                loss_sum += step_losses.sum(dim=0)
                loss_count += L
            for i in range(0 if hand_sgd else L):
                with autocast:
                    logits = net(x_steps[i])  # (M, B, C)
                if not fused:  # reverse KL: the pure loss functions, term by term
                    per_example = ce_weight[i, :, None] * cross_entropy(logits, y_steps[i], reduction="none") \
                        + kd_weight[i, :, None] * kd_fn(logits, teacher_logits[i], temperature, reduction="none")
                elif teacher_logits is None:
                    per_example = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y_steps[i].reshape(-1),
                                                  reduction="none").view(M, B)
                else:
                    per_example = F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                  soft_target[i].reshape(-1, logits.shape[-1]),
                                                  reduction="none").view(M, B)
                loss = per_example.sum() / B  # sum over models of each model's mean loss
                opt.zero_grad(set_to_none=True)
                bad = None if all_true(bool(torch.isfinite(loss)), device) else "training loss"
                if bad is None:
                    loss.backward()
                    # In "stop" mode a non-finite gradient is caught one step later, as a non-finite loss; the
                    # per-step gradient check (a sync and a few ops) is paid only where a step may be skipped.
                    if train.on_non_finite == "skip" and not _grads_finite(params, device):
                        bad = "gradient"
                if bad is not None:
                    culprits = [names[m] for m in range(M)
                                if not torch.isfinite(per_example[m]).all()] or names
                    if train.on_non_finite == "stop":
                        raise _non_finite(culprits, bad, start + i)
                    skipped += 1
                    lr_sched.step()
                    continue
                opt.step()
                lr_sched.step()
                loss_sum += per_example.detach().mean(dim=1)
                loss_count += 1
        bar.update(L)
        start = stop
        if stop % train.eval_every == 0 or stop == steps or (
                checkpoint_writer is not None and stop % train.checkpoint_every == 0):
            record(stop)
        if teachers is not None:
            teachers.retain({c for c in checkpoints(stop) if c is not None})
    bar.close()
    barrier()
    if state_path is not None and main_process:
        Path(state_path).unlink(missing_ok=True)
    return histories


PROGRESS_LOG_SECONDS = 60.0


class _ProgressLog:
    """Where no progress bar shows (stderr is not a terminal: a log file, a batch job), a line on stderr per
    evaluation, at most every ``PROGRESS_LOG_SECONDS`` and always at the last step: the step and the
    evaluation (its range over the models of a stack)."""

    def __init__(self, desc: str, steps: int, enabled: bool):
        self.desc, self.steps, self.enabled, self.last = desc, steps, enabled, None

    def __call__(self, step: int, eval_loss: torch.Tensor, eval_acc: torch.Tensor) -> None:
        now = time.monotonic()
        if not self.enabled or (step < self.steps and self.last is not None
                                and now - self.last < PROGRESS_LOG_SECONDS):
            return
        self.last = now
        span = lambda t: f"{float(t.min()):.4f}" + ("" if len(t) == 1 else f"-{float(t.max()):.4f}")
        print(f"{self.desc}: step {step}/{self.steps}, eval_loss {span(eval_loss)}, eval_accuracy {span(eval_acc)}",
              file=sys.stderr, flush=True)


def _grads_finite(params, device) -> bool:
    """Whether every gradient is finite, on every process (one sync)."""
    return all_true(bool(torch.isfinite(torch.stack([p.grad.sum() for p in params if p.grad is not None])).all()),
                    device)


def _non_finite(culprits: Sequence[str], what: str, step: int) -> NonFiniteError:
    return NonFiniteError(f"{', '.join(culprits)}: non-finite {what} at step {step}; everything saved before it "
                          "is kept (on_non_finite='skip' skips such steps)")


def _save_state(path: Path, state: dict) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load_state(path: Path | None, names: list[str]) -> dict | None:
    """The saved training state at ``path`` if it belongs to exactly these members, else None."""
    if path is None or not Path(path).exists():
        return None
    try:
        state = torch.load(path, weights_only=False)
    except Exception as exc:  # an unreadable state file cannot be trusted: start over, saying so
        warnings.warn(f"ignoring unreadable resume state {path}: {exc}")
        return None
    return state if state.get("names") == names else None


class _PerStepGather:
    """``x[i]`` of a block (S, L, B, n) as each model's inputs (M, B, n), indexed by step i."""

    def __init__(self, block: torch.Tensor, seed_index: torch.Tensor):
        self.block, self.seed_index = block, seed_index.to(block.device)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.block[:, i].index_select(0, self.seed_index)


def _teacher_targets(plan: list[list[int | None]], x_block: torch.Tensor, seed_index: torch.Tensor,
                     teachers: TeacherPool | None, num_classes: int):
    """Teacher logits for one block, computed in one batch per (data stream, checkpoint).

    plan: (L, M) checkpoint per step and model (None = no teacher); x_block: (S, L, B, n).
    Returns teacher logits (L, M, B, C) (None when no model uses a teacher) and a (L, M) 0/1 weight.
    """
    L, M = len(plan), len(plan[0])
    weight = torch.tensor([[0.0 if c is None else 1.0 for c in row] for row in plan], device=x_block.device)
    if teachers is None or not weight.any():
        return None, weight
    B = x_block.shape[2]
    logits = torch.zeros(L, M, B, num_classes, device=x_block.device)
    groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for i, row in enumerate(plan):
        for m, c in enumerate(row):
            if c is not None:
                groups.setdefault((int(seed_index[m]), c), []).append((i, m))
    with torch.no_grad():
        for (s, c), cells in groups.items():
            rows = sorted({i for i, _ in cells})
            teacher, inputs = teachers.get(c), x_block[s, rows].reshape(len(rows) * B, -1)
            # Chunks of TEACHER_CHUNK rows keep a wide teacher's hidden activations in cache (~2x faster).
            out = torch.cat([teacher(inputs[j:j + TEACHER_CHUNK])[0] for j in range(0, len(inputs), TEACHER_CHUNK)])
            out = out.view(len(rows), B, num_classes).float()  # (rows, B, C)
            if not torch.isfinite(out).all():
                raise NonFiniteError(f"teacher checkpoint {c} produced non-finite outputs; the students stop here")
            pos = {i: j for j, i in enumerate(rows)}
            steps_idx = torch.tensor([i for i, _ in cells])
            model_idx = torch.tensor([m for _, m in cells])
            logits[steps_idx, model_idx] = out[[pos[i] for i, _ in cells]]
    return logits, weight
