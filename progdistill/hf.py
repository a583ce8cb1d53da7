"""Hugging Face Trainer integration: progressively distill any HF student from any HF teacher run.

A teacher trained with ``transformers.Trainer`` leaves ``checkpoint-<step>/`` directories in its output
directory; :class:`HFTrajectory` reads them as a trajectory (steps, eval metrics from ``trainer_state.json``,
models loaded with ``from_pretrained`` from the local directory, never downloaded).
:class:`ProgressiveDistillationTrainer` is a ``Trainer`` whose loss is progdistill's distillation loss against
the teacher checkpoint that a schedule names at the current global step::

    from progdistill.hf import HFTrajectory, ProgressiveDistillationTrainer
    from progdistill import Progressive, DistillationConfig

    trainer = ProgressiveDistillationTrainer(
        model=student, args=TrainingArguments("out/student", max_steps=2000),
        train_dataset=train_data,
        teacher_trajectory=HFTrajectory("out/teacher", AutoModelForMaskedLM),
        schedule=Progressive(speed=1.0), distillation=DistillationConfig(temperature=0.0))
    trainer.train()

Losses are computed on the positions the labels supervise (-100 ignored); causal LMs are shifted by one
position as in their own loss (paper §2-§3: distillation on the masked / supervised positions).
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from .config import ConfigError, DistillationConfig
from .losses import cross_entropy, distillation_loss
from .optional import require
from .schedules import CE
from .teachers import TeacherPool
from .trajectory import TrajectoryError

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# The weight files from_pretrained reads (single file or sharded, safetensors or PyTorch pickle).
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
            "adapter_model.safetensors", "adapter_model.bin")  # the last two: PEFT adapters


class HFTrajectory:
    """The ``checkpoint-<step>`` directories of an HF Trainer output directory, as a trajectory.

    ``model_class`` (e.g. ``AutoModelForCausalLM``) loads a checkpoint with ``from_pretrained``. Metrics of a
    step come from the newest checkpoint's ``trainer_state.json`` log history (``eval_*`` keys are renamed
    ``eval_loss`` -> ``eval_loss``, ``eval_accuracy`` -> ``eval_accuracy``; other keys kept). HF checkpoints
    carry no hashes, so unlike :class:`progdistill.trajectory.Trajectory` files are not verified.
    Raises :class:`TrajectoryError` for a missing directory, one without checkpoints, or a checkpoint without
    weights (``_WEIGHTS``); warns about ``checkpoint-*`` directories whose suffix is not a step.
    """

    def __init__(self, directory: str | Path, model_class: Any):
        self.directory = Path(directory)
        self.model_class = model_class
        if not self.directory.is_dir():
            raise TrajectoryError(f"HF output directory {self.directory} does not exist")
        self._dirs = {int(m.group(1)): p for p in self.directory.iterdir()
                      if p.is_dir() and (m := _CHECKPOINT.match(p.name))}
        if not self._dirs:
            raise TrajectoryError(f"HF output directory {self.directory} has no checkpoint-<step> directories; "
                                  "train the teacher with save_strategy='steps'")
        odd = sorted(p.name for p in self.directory.iterdir()
                     if p.is_dir() and p.name.startswith("checkpoint-") and not _CHECKPOINT.match(p.name))
        if odd:  # e.g. a renamed "checkpoint-final": not a step, so not part of the trajectory
            warnings.warn(f"{self.directory}: ignoring {', '.join(odd)} (not checkpoint-<step>); the trajectory is "
                          f"steps {sorted(self._dirs)}, the last of which is the final teacher")
        for step, path in sorted(self._dirs.items()):
            if not any((path / name).exists() for name in _WEIGHTS):
                raise TrajectoryError(f"checkpoint {path} for step {step} has no weights (none of "
                                      f"{', '.join(_WEIGHTS)}); the teacher's save was interrupted?")
        self._metrics: dict[int, dict[str, Any]] = {}
        state = self._dirs[max(self._dirs)] / "trainer_state.json"
        if state.exists():
            for entry in json.loads(state.read_text(encoding="utf-8")).get("log_history", []):
                if "step" in entry:
                    self._metrics.setdefault(entry["step"], {}).update(
                        {k: v for k, v in entry.items() if k not in ("step", "epoch")})

    @property
    def steps(self) -> list[int]:
        return sorted(self._dirs)

    @property
    def final_step(self) -> int:
        return self.steps[-1]

    def metrics(self, step: int) -> dict[str, Any]:
        self._check(step)
        return dict(self._metrics.get(step, {}))

    def curve(self, metric: str) -> tuple[list[int], list[float]]:
        steps = [s for s in self.steps if metric in self._metrics.get(s, {})]
        if not steps:
            raise TrajectoryError(f"no checkpoint of {self.directory} has {metric!r} in trainer_state.json; "
                                  "evaluate the teacher at its save steps (eval_strategy='steps')")
        return steps, [self._metrics[s][metric] for s in steps]

    def _check(self, step: int) -> None:
        if step not in self._dirs:
            raise TrajectoryError(f"{self.directory} has no checkpoint-{step}; steps: {self.steps}")

    def load_model(self, step: int, build: Any = None) -> torch.nn.Module:
        """The teacher at ``step``, loaded from its local checkpoint directory. ``build`` is unused (the
        checkpoint names its architecture); it matches :meth:`progdistill.trajectory.Trajectory.load_model`."""
        self._check(step)
        try:
            return self.model_class.from_pretrained(str(self._dirs[step]), local_files_only=True)
        except Exception as exc:  # transformers raises OSError / ValueError subclasses
            raise TrajectoryError(f"checkpoint {self._dirs[step]} for step {step} cannot be loaded: {exc}") \
                from None


def _vocabulary_size(model: torch.nn.Module) -> int | None:
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    return embeddings.num_embeddings if isinstance(embeddings, torch.nn.Embedding) else None


def _is_causal_lm(model: torch.nn.Module) -> bool:
    """Whether ``model`` is one of transformers' causal language models (GPT2LMHeadModel, LlamaForCausalLM...)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names = {n for v in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values() for n in ((v,) if isinstance(v, str) else v)}
    return type(model).__name__ in names


def _trainer_class():
    return require("transformers", "hf", "progdistill.hf (the Hugging Face Trainer integration)").Trainer


class ProgressiveDistillationTrainer(_trainer_class()):
    """``transformers.Trainer`` that distills from the teacher checkpoint named by ``schedule`` at each step.

    ``teacher_trajectory``: an :class:`HFTrajectory` (or any trajectory with ``steps``, ``curve`` and
    ``load_model``). ``schedule``: any progdistill schedule (auto schedules are resolved against the
    trajectory). ``distillation``: loss, temperature (0 = teacher argmax) and alpha (weight of the labels'
    cross-entropy). Teacher and student must have the same output size (vocabulary or number of labels);
    a mismatch raises ``ConfigError`` naming both values. ``teacher_loads`` counts checkpoint loads.
    ``shift_labels``: compare position t's logits with token t+1 (None: when the student is a causal LM).
    """

    def __init__(self, *args, teacher_trajectory, schedule, distillation: DistillationConfig | None = None,
                 shift_labels: bool | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.shift_labels = shift_labels  # None: shift when the student is a causal LM
        self.trajectory = teacher_trajectory
        self.schedule = schedule.resolve(teacher_trajectory) if hasattr(schedule, "resolve") else schedule
        self.schedule.validate(teacher_trajectory.steps)
        self.distillation = distillation or DistillationConfig()
        self.teachers = TeacherPool(teacher_trajectory, build=None, device=self.args.device)
        self.checkpoint_in_use: int | None = None

    @property
    def teacher_loads(self) -> int:
        return self.teachers.loads

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.get("labels")
        outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
        logits = outputs.logits
        step = self.checkpoint_in_use = self.schedule.checkpoint_at(self.state.global_step, self.trajectory.steps)
        targets = labels
        if step is None or isinstance(self.schedule, CE):
            teacher_logits = None
        else:
            teacher = self.teachers.get(step)
            self.teachers.retain({step})
            vocabulary, ids = _vocabulary_size(teacher), inputs.get("input_ids")
            if vocabulary is not None and ids is not None and ids.numel() and int(ids.max()) >= vocabulary:
                student = _vocabulary_size(self.accelerator.unwrap_model(model))  # before the forward's index error
                raise ConfigError(f"input id {int(ids.max())} is outside the teacher's vocabulary of {vocabulary} "
                                  f"tokens (checkpoint {step}; the student's has {student}); they must share a "
                                  "vocabulary")
            with torch.no_grad():
                teacher_logits = teacher(**{k: v for k, v in inputs.items() if k != "labels"}).logits
            if teacher_logits.shape != logits.shape:  # the logits themselves: vocabulary or label set
                raise ConfigError(f"teacher logits of shape {tuple(teacher_logits.shape)} (checkpoint {step}) "
                                  f"differ from the student's {tuple(logits.shape)}: the last dimension is the "
                                  f"output size (teacher {teacher_logits.shape[-1]}, student {logits.shape[-1]}); "
                                  "they must share a vocabulary / label set")
        if self.shift_labels is None:
            self.shift_labels = _is_causal_lm(self.accelerator.unwrap_model(model) if hasattr(self, "accelerator")
                                              else model)
        if self.shift_labels and labels is not None:  # a causal LM predicts token t+1 at position t
            logits, targets = logits[..., :-1, :], labels[..., 1:]
            teacher_logits = None if teacher_logits is None else teacher_logits[..., :-1, :]
        # Trainer's gradient-accumulation contract: when the model takes loss kwargs it passes
        # num_items_in_batch (the labelled positions of the whole accumulated batch -- shifted by one only for
        # models whose loss_type is ForCausalLM -- across processes when average_tokens_across_devices) and does
        # *not* divide the loss by the accumulation steps itself, so the loss is the sum over this micro-batch's
        # positions divided by that count, normalized as the model's own loss is. Otherwise: the mean here,
        # and Trainer divides by the accumulation steps.
        per_item = num_items_in_batch is not None and self.model_accepts_loss_kwargs and targets is not None
        reduction = "none" if per_item else "mean"
        if teacher_logits is None:
            loss = cross_entropy(logits, targets, reduction)
        else:
            loss = distillation_loss(logits, teacher_logits, targets, self.distillation.loss,
                                     self.distillation.temperature, self.distillation.alpha, reduction)
        if per_item:
            count = torch.as_tensor(num_items_in_batch, device=loss.device)
            averaged = self.args.average_tokens_across_devices
            if self.args.n_gpu > 1 and not averaged:
                # nn.DataParallel: the outputs here are gathered from every GPU, but Trainer split the count per
                # GPU; divide by the whole batch's count, and do not rescale.
                count = count * self.args.n_gpu
            loss = loss.sum() / count
            if self.args.n_gpu <= 1 and averaged:
                # The count spans every process, and DDP averages the processes' gradients: scale back up by the
                # process count, as Trainer.compute_loss does for a model's own loss.
                loss = loss * (self.accelerator.num_processes // getattr(self, "get_tp_size", lambda: 1)())
        return (loss, outputs) if return_outputs else loss
