"""Hugging Face Trainer integration: progressively distill any HF student from any HF teacher run.

A teacher trained with ``transformers.Trainer`` leaves ``checkpoint-<step>/`` directories in its output
directory; :class:`HFTrajectory` reads them as a trajectory (steps, eval metrics from ``trainer_state.json``,
models loaded with ``from_pretrained`` from the local directory, never downloaded).
:class:`ProgressiveDistillationTrainer` is a ``Trainer`` whose loss is progdistill's distillation loss against
the teacher checkpoint that a schedule names at the current global step::

    from progdistill.integrations.hf import HFTrajectory, ProgressiveDistillationTrainer
    from progdistill import Progressive, DistillationConfig

    trainer = ProgressiveDistillationTrainer(
        model=student, args=TrainingArguments("out/student", max_steps=2000),
        train_dataset=train_data,
        teacher_trajectory=HFTrajectory("out/teacher", AutoModelForMaskedLM),
        schedule=Progressive(speed=1.0), distillation=DistillationConfig(temperature=0.0))
    trainer.train()

Losses are computed on the positions the labels supervise (-100 ignored), or without labels on the positions
of the attention mask; causal LMs are shifted by one position as in their own loss (paper §2-§3: distillation
on the masked / supervised positions). The training loss is the mean per supervised position of the whole
optimizer step, counted here for every model, so any split into micro-batches, accumulation steps and
processes (with ``average_tokens_across_devices``, Trainer's default) gives the update of one big batch -- for a
student without dropout (dropout draws its masks per micro-batch, so a split changes them; TRL's ``GKDConfig``
passed as ``args`` disables it, as TRL does).
Logs: ``eval_loss`` is the label loss, as in a plain ``Trainer`` (so ``metric_for_best_model`` and early stopping
compare with a cross-entropy baseline); ``eval_distillation_loss`` is the distillation loss against the checkpoint in
use, per supervised position; training logs carry ``teacher_checkpoint``, the checkpoint step of the last step logged.
"""

from __future__ import annotations

import itertools
import json
import re
import warnings
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from progdistill.core.config import ConfigError, variants
from progdistill.core.optional import require
from progdistill.core.seeding import generator
from progdistill.core.settings import DistillationConfig
from progdistill.distill.losses import IGNORE_INDEX, cross_entropy, distillation_loss
from progdistill.distill.schedules import Schedule, TeacherSpec
from progdistill.distill.teachers import TeacherPool
from progdistill.store.trajectory import TrajectoryError

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# The weight files from_pretrained reads (single file or sharded, safetensors or PyTorch pickle).
_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
)  # the last two: PEFT adapters


# TRL GKDConfig's fields that the trainer reads from its args, and the DistillationConfig field each sets.
GKD_FIELDS = {
    "lmbda": "lmbda",
    "beta": "beta",
    "seq_kd": "seq_kd",
    "max_new_tokens": "max_new_tokens",
    "temperature": "sampling_temperature",
}
# Saved in each student checkpoint directory: the coin's and the sampling's generator states.
GENERATORS = "progdistill_generators.pt"
_DROPOUT = (torch.nn.Dropout, torch.nn.Dropout1d, torch.nn.Dropout2d, torch.nn.Dropout3d, torch.nn.AlphaDropout)


def _transformers():
    return require("transformers", "hf", "progdistill.integrations.hf (the Hugging Face Trainer integration)")


def _verify_weights(path: Path, step: int) -> None:
    """Raise :class:`TrajectoryError` naming ``path`` when a weights file cannot be loaded whole: a safetensors file
    whose header is unreadable or whose tensors do not cover the file exactly (a truncated copy), a PyTorch zip
    archive without its central directory, a shard index that is not JSON or names a shard that is missing or
    damaged. Reads headers only. (A PyTorch file in the legacy, non-zip format is not checked.)"""
    problem = None
    if path.name.endswith(".index.json"):
        try:
            shards = sorted(set(json.loads(path.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            problem = f"not a shard index with a weight_map ({type(exc).__name__}: {exc})"
        else:
            for shard in shards:
                if not (path.parent / shard).is_file():
                    problem = f"it names the shard {shard}, which is missing"
                    break
                _verify_weights(path.parent / shard, step)
    elif path.suffix == ".safetensors":
        try:
            with safe_open(str(path), "pt"):
                pass
        except Exception as exc:  # SafetensorError (a Rust exception type), OSError
            problem = f"{exc}; {path.stat().st_size} bytes"
    elif _starts_with(path, b"PK\x03\x04"):  # a zip archive: torch.save's format since PyTorch 1.6
        try:
            with zipfile.ZipFile(path) as archive:
                archive.infolist()
        except (zipfile.BadZipFile, OSError) as exc:
            problem = f"a damaged zip archive ({exc})"
    if problem is not None:
        raise TrajectoryError(
            f"{path} (checkpoint of step {step}) cannot be loaded: {problem}; the teacher's save was interrupted "
            "or the file was cut short in a copy"
        )


def _starts_with(path: Path, magic: bytes) -> bool:
    with path.open("rb") as f:
        return f.read(len(magic)) == magic


def _trainer_state(path: Path) -> dict[str, Any]:
    """The JSON object of a ``trainer_state.json`` ({} when there is none); :class:`TrajectoryError` naming the
    file when it is not one."""
    if not path.exists():
        return {}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TrajectoryError(f"{path} is not valid JSON ({exc}); the teacher's trainer state is damaged") from None
    if not isinstance(state, dict) or not isinstance(state.get("log_history", []), list):
        raise TrajectoryError(f"{path} is not a Trainer state (a JSON object with a log_history list)")
    return state


def _rotated_away(steps: list[int], state: dict[str, Any]) -> list[int]:
    """The checkpoint steps that a Trainer saving every ``save_steps`` steps wrote before the oldest checkpoint
    in ``steps`` and that are gone (``save_total_limit`` deletes the oldest), read from the newest checkpoint's
    ``state``; [] when nothing is missing or the survivors show no such plan. Survivors that do not follow the
    plan are left out: the best checkpoint (which rotation keeps) and a final save off the grid. When the others
    are not consecutive multiples of ``save_steps``, or one survivor sits at a whole epoch, the teacher may have
    saved per epoch (``save_steps`` is then unused): nothing is reported."""
    every, last = state.get("save_steps"), state.get("global_step")
    if not isinstance(every, int) or every <= 0:
        return []
    best = state.get("best_global_step")
    if best is None and isinstance(state.get("best_model_checkpoint"), str):
        found = _CHECKPOINT.match(Path(state["best_model_checkpoint"]).name)
        best = int(found.group(1)) if found else None
    regular = [s for s in steps if not (s == best and s != steps[-1]) and not (s == last and s % every)]
    if not regular or any(s % every for s in regular):
        return []
    if any(b - a != every for a, b in itertools.pairwise(regular)):
        return []
    epoch = state.get("epoch")
    if len(regular) == 1 and isinstance(epoch, (int, float)) and float(epoch).is_integer():
        return []
    return [s for s in range(every, regular[0], every) if s not in steps]


class HFTrajectory:
    """The ``checkpoint-<step>`` directories of an HF Trainer output directory, as a trajectory.

    ``model_class`` (e.g. ``AutoModelForCausalLM``) loads a checkpoint with ``from_pretrained`` (its weight-loading
    progress bars silenced). Metrics of a step are the entries of the newest checkpoint's ``trainer_state.json``
    log history at that step, under the names Trainer logged them (``eval_loss``, ``eval_accuracy`` when
    ``compute_metrics`` returns ``accuracy``, ``loss``...).

    Checked on opening, before any training step: every checkpoint's weight files can be loaded whole (HF
    checkpoints carry no hashes, so this is their structure: a safetensors header that covers the file exactly,
    a zip archive's central directory, every shard an index names), and no checkpoint is missing from the
    teacher's saving plan (``save_steps`` in the newest ``trainer_state.json``): ``save_total_limit`` deletes the
    oldest checkpoints, and a progressive schedule would silently stay on the oldest that remains.
    ``missing_checkpoints``: "error" (default) raises, "warn" warns and keeps the checkpoints that remain;
    ``missing_steps`` lists those gone. Teachers that saved per epoch cannot always be told apart and are
    not reported (:func:`_rotated_away`).
    Raises :class:`TrajectoryError` for a missing directory, one without checkpoints, a checkpoint without
    weights (``_WEIGHTS``) or with a damaged weights file (naming the file), a ``trainer_state.json`` that is
    not valid JSON (naming it) and missing checkpoints; warns about ``checkpoint-*`` directories whose suffix
    is not a step.
    """

    def __init__(self, directory: str | Path, model_class: Any, missing_checkpoints: str = "error"):
        self.directory = Path(directory)
        self.model_class = model_class
        if not self.directory.is_dir():
            raise TrajectoryError(f"HF output directory {self.directory} does not exist")
        self._dirs = {
            int(m.group(1)): p for p in self.directory.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))
        }
        if not self._dirs:
            raise TrajectoryError(
                f"HF output directory {self.directory} has no checkpoint-<step> directories; "
                "train the teacher with save_strategy='steps'"
            )
        odd = sorted(
            p.name
            for p in self.directory.iterdir()
            if p.is_dir() and p.name.startswith("checkpoint-") and not _CHECKPOINT.match(p.name)
        )
        if odd:  # e.g. a renamed "checkpoint-final": not a step, so not part of the trajectory
            warnings.warn(
                f"{self.directory}: ignoring {', '.join(odd)} (not checkpoint-<step>); the trajectory is "
                f"steps {sorted(self._dirs)}, the last of which is the final teacher",
                stacklevel=2,
            )
        for step, path in sorted(self._dirs.items()):
            present = [path / name for name in _WEIGHTS if (path / name).exists()]
            if not present:
                raise TrajectoryError(
                    f"checkpoint {path} for step {step} has no weights (none of "
                    f"{', '.join(_WEIGHTS)}); the teacher's save was interrupted?"
                )
            for weights in present:
                _verify_weights(weights, step)
        self._metrics: dict[int, dict[str, Any]] = {}
        state = _trainer_state(self._dirs[max(self._dirs)] / "trainer_state.json")
        for entry in state.get("log_history", []):
            if isinstance(entry, dict) and "step" in entry:
                self._metrics.setdefault(entry["step"], {}).update(
                    {k: v for k, v in entry.items() if k not in ("step", "epoch")}
                )
        if missing_checkpoints not in ("error", "warn"):
            raise ValueError(f"missing_checkpoints={missing_checkpoints!r}: one of 'error', 'warn'")
        self.missing_steps = _rotated_away(self.steps, state)
        if self.missing_steps:
            every, first = state["save_steps"], min(s for s in self.steps if s > max(self.missing_steps))
            gone = ", ".join(f"checkpoint-{s}" for s in self.missing_steps[:3])
            gone += f" ... ({len(self.missing_steps)} in all)" if len(self.missing_steps) > 3 else ""
            message = (
                f"{self.directory}: the teacher saved a checkpoint every {every} steps (save_steps in "
                f"trainer_state.json) but {gone} are gone, so a progressive schedule would use checkpoint-"
                f"{first} in their place (save_total_limit deletes the oldest checkpoints); retrain the teacher "
                "without save_total_limit, or pass HFTrajectory(..., missing_checkpoints='warn') to distill from "
                f"the checkpoints that remain ({self.steps})"
            )
            if missing_checkpoints == "error":
                raise TrajectoryError(message)
            warnings.warn(message, stacklevel=2)

    def __repr__(self) -> str:
        name = getattr(self.model_class, "__name__", repr(self.model_class))
        return f"HFTrajectory({str(self.directory)!r}, {name}, steps={self.steps})"

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
            logged = sorted({k for m in self._metrics.values() for k in m if k.startswith("eval_")})
            hint = (
                f"logged eval metrics: {', '.join(logged)} (e.g. TwoShotAuto(metric='eval_loss'); an "
                "eval_accuracy needs a compute_metrics returning 'accuracy')"
                if logged
                else "evaluate the teacher at its save steps (eval_strategy='steps')"
            )
            raise TrajectoryError(f"no checkpoint of {self.directory} has {metric!r} in trainer_state.json; {hint}")
        return steps, [self._metrics[s][metric] for s in steps]

    def _check(self, step: int) -> None:
        if step not in self._dirs:
            raise TrajectoryError(f"{self.directory} has no checkpoint-{step}; steps: {self.steps}")

    def load_model(self, step: int, build: Any = None) -> torch.nn.Module:
        """The teacher at ``step``, loaded from its local checkpoint directory. ``build`` is unused (the
        checkpoint names its architecture); it matches :meth:`progdistill.store.trajectory.Trajectory.load_model`."""
        self._check(step)
        bars = _transformers().utils.logging
        shown = bars.is_progress_bar_enabled()
        bars.disable_progress_bar()  # a switch of checkpoint mid-training should not print loading bars
        try:
            return self.model_class.from_pretrained(str(self._dirs[step]), local_files_only=True)
        except Exception as exc:  # transformers raises OSError / ValueError subclasses
            raise TrajectoryError(f"checkpoint {self._dirs[step]} for step {step} cannot be loaded: {exc}") from None
        finally:
            if shown:
                bars.enable_progress_bar()


def _vocabulary_size(model: torch.nn.Module) -> int | None:
    get_input_embeddings = getattr(model, "get_input_embeddings", None)
    embeddings = get_input_embeddings() if get_input_embeddings is not None else None
    return embeddings.num_embeddings if isinstance(embeddings, torch.nn.Embedding) else None


def _is_a(model: torch.nn.Module, mapping: dict) -> bool:
    """Whether ``model``'s class, or one it derives from, is named in one of transformers' auto mappings."""
    names = {n for v in mapping.values() for n in ((v,) if isinstance(v, str) else v)}
    return any(c.__name__ in names for c in type(model).__mro__)


def _is_causal_lm(model: torch.nn.Module) -> bool:
    """Whether ``model`` is one of transformers' causal language models (GPT2LMHeadModel, LlamaForCausalLM...)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return _is_a(model, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def _is_sequence_classifier(model: torch.nn.Module) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    return _is_a(model, MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES)


class ProgressiveDistillationTrainer(_transformers().Trainer):  # type: ignore[misc]  # a base computed at import
    """``transformers.Trainer`` that distills from the teacher checkpoint named by ``schedule`` at each step.

    ``teacher_trajectory``: an :class:`HFTrajectory` (or any trajectory with ``steps``, ``curve`` and
    ``load_model``). ``schedule``: any progdistill schedule (auto schedules are resolved against the
    trajectory). ``distillation``: loss, temperature (0 = teacher argmax) and alpha (weight of the labels'
    cross-entropy). Teacher and student must have the same output size (vocabulary or number of labels);
    a mismatch raises ``ConfigError`` naming both values. ``teacher_loads`` counts checkpoint loads.
    ``shift_labels``: compare position t's logits with token t+1 (None: when the student is a causal LM).

    Supervised positions: labels other than -100; without ``labels`` in a batch, the positions of its
    ``attention_mask`` (all positions without one; one per example for a sequence classifier) -- distillation
    only, so alpha must be 0 and the schedule must name a checkpoint. Both are shifted with the logits.
    Normalization: :meth:`get_batch_samples` counts the supervised positions of each optimizer step (across
    processes when ``average_tokens_across_devices``), and the loss of a micro-batch is its sum over them divided
    by that count -- for every model, with or without ``**kwargs`` in its ``forward`` (Trainer counts only for
    those with, and counts a GPT-2's labels unshifted). A step without any supervised position has loss 0.
    Evaluation: ``eval_loss`` is the labels' cross-entropy per supervised position of each batch, as Trainer
    computes it; ``eval_distillation_loss`` the distillation loss of the checkpoint in use at the current step
    (``distillation.loss`` at ``distillation.temperature``, without the alpha mixing) per supervised position of
    the evaluation set. Training logs carry ``teacher_checkpoint``.

    On-policy and sequence-level distillation, with TRL ``GKDConfig``'s names and meanings: with probability
    ``lmbda`` (one seeded draw per optimizer step) the step trains on the student's own continuations of the
    batch's prompts, scored token by token against the scheduled checkpoint with the divergence alone; otherwise,
    with ``seq_kd``, on the scheduled checkpoint's continuations (with ``distillation.alpha``: its cross-entropy
    is that of sequence-level KD); otherwise on the data. ``beta`` (not None) makes the loss the generalized JSD
    (0 = forward KL, 1 = reverse KL; :func:`progdistill.distill.losses.generalized_jsd`); ``max_new_tokens`` and
    ``temperature`` are the sampling's (``distillation.temperature`` remains the loss's). Each of these five,
    when given (not None), replaces the field of ``distillation`` it names; otherwise ``distillation``'s value
    holds (``max_new_tokens`` None there: 128). Generation: Hugging
    Face ``generate`` over all micro-batches of a step at once (:func:`generated_micro_batches`), so the
    normalization above holds for generated batches too. ``generated_steps`` counts the steps of each kind.

    TRL's ``GKDConfig`` as ``args`` (or any ``TrainingArguments`` with its fields; TRL is not needed): its
    ``lmbda``, ``beta``, ``seq_kd``, ``temperature`` and ``max_new_tokens`` are read as the keywords above (so
    with TRL's defaults, 0.5, 0.5, False, 0.9, 128, where this trainer's own are 0, forward KL, False, 1.0, 128),
    and ``disable_dropout`` (True there) sets the student's dropout rates to 0 as TRL does. A value given both as
    a keyword and on ``args``, or on ``args`` and in ``distillation`` away from its default, must agree: else a
    ``ConfigError`` names both. TRL's ``teacher_model_name_or_path`` is refused (the teacher is
    ``teacher_trajectory``). Unlike TRL, the coin is drawn once per optimizer step, not per micro-batch.

    Resume: each checkpoint also holds ``GENERATORS`` (the coin's and the sampling's generator states), which
    :meth:`train` restores with ``resume_from_checkpoint``, so a resumed run equals an uninterrupted one bit for
    bit on CPU, with generation too; a checkpoint without it is resumed with a warning when the run generates.
    """

    label_names: list[str] | None  # Trainer's: the batch keys that hold labels

    def __init__(
        self,
        *args,
        teacher_trajectory,
        schedule,
        distillation: DistillationConfig | None = None,
        shift_labels: bool | None = None,
        lmbda: float | None = None,
        beta: float | None = None,
        seq_kd: bool | None = None,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        gkd = {
            "lmbda": lmbda,
            "beta": beta,
            "seq_kd": seq_kd,
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
        }
        distillation = _gkd_distillation(distillation, gkd, self.args)
        if getattr(self.args, "disable_dropout", False) and self.model is not None:  # TRL's GKDConfig: True
            for module in self.model.modules():
                if isinstance(module, _DROPOUT):
                    module.p = 0.0
        self.shift_labels = shift_labels  # None: shift when the student is a causal LM
        self.trajectory = teacher_trajectory
        self.schedule = schedule.resolve(teacher_trajectory)
        if not self.schedule.checkpoints_only:
            schedules = variants("schedule").items()
            taken = ", ".join(sorted(k for k, c in schedules if issubclass(c, Schedule) and c.checkpoints_only))
            raise ConfigError(
                f"schedule {self.schedule.label!r} is not supported by the Hugging Face trainer: it "
                f"takes the checkpoint schedules ({taken}); the curricula without checkpoints train "
                "with `progdistill run`"
            )
        self.distillation = distillation
        self.schedule.validate(teacher_trajectory.steps)  # (HFTrajectory checked its files when opened)
        self.teachers = TeacherPool(teacher_trajectory, build=None, device=self.args.device)
        self.checkpoint_in_use: int | None = None
        self._spec: tuple[int, TeacherSpec | None] | None = None  # (step, the schedule's teacher at that step)
        # Trainer reads this flag as "compute_loss divides by num_items_in_batch, which Trainer must not divide by
        # the accumulation steps again"; ours does for every model, with the count of get_batch_samples.
        self.model_accepts_loss_kwargs = True
        if self.args.label_names is None and not self.label_names:
            # A forward without a `labels` argument: keep the labels (Trainer drops the columns forward does not
            # take) and let evaluation compute a loss.
            self.label_names = ["labels"]
        self._eval_totals: torch.Tensor | None = None  # (distillation loss sum, positions) during evaluation
        self._coin = generator(self.args.seed, "on-policy-coin")  # one draw per optimizer step
        self._sampling = generator(self.args.seed, "generation")
        self._on_policy_step = False  # the current step trains on the student's own samples
        self.generated_steps = {"teacher": 0, "student": 0}

    @property
    def teacher_loads(self) -> int:
        return self.teachers.loads

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        """Trainer's train; resuming from a checkpoint also restores the on-policy coin's and the sampling's
        generators saved beside it (:meth:`_save_rng_state`), so that a resumed run trains as an uninterrupted
        one does, bit for bit on CPU, with ``lmbda`` and ``seq_kd`` too."""
        if resume_from_checkpoint is True and Path(self.args.output_dir).is_dir():
            # Trainer's own choice (the newest checkpoint); None: Trainer raises its error for it
            resume_from_checkpoint = _transformers().trainer_utils.get_last_checkpoint(self.args.output_dir) or True
        if isinstance(resume_from_checkpoint, (str, Path)):
            self._restore_generators(Path(resume_from_checkpoint))
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _save_rng_state(self, output_dir: str) -> None:
        """Trainer's random states of a checkpoint, and (main process) ``GENERATORS``: the coin's and the
        sampling's generator states (the same on every process) and ``generated_steps``."""
        super()._save_rng_state(output_dir)
        if self.args.should_save:
            state = {
                "coin": self._coin.get_state(),
                "generation": self._sampling.get_state(),
                "generated_steps": dict(self.generated_steps),
            }
            torch.save(state, Path(output_dir) / GENERATORS)

    def _restore_generators(self, checkpoint: Path) -> None:
        path = checkpoint / GENERATORS
        if not path.exists():
            if self.distillation.generates:
                warnings.warn(
                    f"{checkpoint} has no {GENERATORS} (saved by another trainer or an older progdistill): the "
                    "on-policy coin and the sampling restart from the seed, so the resumed run differs from "
                    "an uninterrupted one",
                    stacklevel=3,
                )
            return
        try:
            state = torch.load(path, weights_only=True)
            self._coin.set_state(state["coin"])
            self._sampling.set_state(state["generation"])
            self.generated_steps = {k: int(state["generated_steps"][k]) for k in ("teacher", "student")}
        except Exception as exc:  # a damaged file: unpickling, key and type errors of any kind
            raise TrajectoryError(
                f"{path} cannot be read ({type(exc).__name__}: {exc}); resume from another checkpoint"
            ) from None

    def _teacher_spec(self) -> TeacherSpec | None:
        """The schedule's teacher at the current optimizer step (None: labels only), resolved once per step:
        the step's generated batches, losses and logs read it from here."""
        step = self.state.global_step
        if self._spec is None or self._spec[0] != step:
            self._spec = (step, self.schedule.teacher_at(step, self.trajectory.steps, self.state.max_steps))
        return self._spec[1]

    def _shifts(self, model) -> bool:
        if self.shift_labels is None:
            self.shift_labels = _is_causal_lm(self.accelerator.unwrap_model(model))
        return self.shift_labels

    def _targets(self, model, inputs) -> tuple[torch.Tensor, bool]:
        """(targets, labelled): the labels, or without them 0 where the attention mask is 1 and -100 elsewhere
        (``labelled`` False), shifted by one for a causal LM. Shape (B, T') per token, (B,) per example."""
        labels = inputs.get("labels")
        if labels is not None:
            return (labels[..., 1:] if self._shifts(model) else labels), True
        if _is_sequence_classifier(self.accelerator.unwrap_model(model)):
            return torch.zeros(len(inputs["input_ids"]), dtype=torch.long, device=inputs["input_ids"].device), False
        mask = inputs.get("attention_mask")
        mask = torch.ones_like(inputs["input_ids"]) if mask is None else mask
        targets = torch.where(mask.bool(), 0, IGNORE_INDEX)  # (B, T)
        return (targets[..., 1:] if self._shifts(model) else targets), False

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """The next ``num_batches`` micro-batches and the number of supervised positions in all of them (summed
        over processes when ``average_tokens_across_devices``), which :meth:`compute_loss` divides by."""
        batches = []
        for _ in range(num_batches):
            try:
                batches.append(next(epoch_iterator))
            except StopIteration:
                break
        if not batches:
            return batches, None
        batches = self._generated(batches)
        positions = sum(int((self._targets(self.model, b)[0] != IGNORE_INDEX).sum()) for b in batches)
        count = torch.tensor(positions, device=device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            count = self.accelerator.gather(count).sum()
        return batches, count

    def _generated(self, batches: list[dict]) -> list[dict]:
        """The step's micro-batches, or (``lmbda``, ``seq_kd``) sequences generated from their prompts by the
        student or the scheduled checkpoint (:func:`generated_micro_batches`)."""
        d = self.distillation
        on_policy = d.lmbda > 0 and float(torch.rand((), generator=self._coin)) < d.lmbda
        spec = self._teacher_spec()
        self._on_policy_step = False
        if not d.generates or spec is None or not (on_policy or d.seq_kd):
            return batches
        model = self.accelerator.unwrap_model(self.model) if on_policy else self.teachers.get(spec)
        self._on_policy_step = on_policy
        self.generated_steps["student" if on_policy else "teacher"] += 1
        device = self.args.device
        batches = [{k: v.to(device) for k, v in b.items() if isinstance(v, torch.Tensor)} for b in batches]
        return generated_micro_batches(model, batches, self._sampling, d.max_new_tokens, d.sampling_temperature)

    def _teacher_logits(self, model, inputs, logits) -> torch.Tensor | None:
        spec = self._teacher_spec()
        step = self.checkpoint_in_use = None if spec is None else spec.checkpoint
        if spec is None:
            return None
        teacher = self.teachers.get(spec)
        self.teachers.retain({spec})
        vocabulary, ids = _vocabulary_size(teacher), inputs.get("input_ids")
        if vocabulary is not None and ids is not None and ids.numel() and int(ids.max()) >= vocabulary:
            student = _vocabulary_size(self.accelerator.unwrap_model(model))  # before the forward's index error
            raise ConfigError(
                f"input id {int(ids.max())} is outside the teacher's vocabulary of {vocabulary} "
                f"tokens (checkpoint {step}; the student's has {student}); they must share a "
                "vocabulary"
            )
        with torch.no_grad():
            teacher_logits = teacher(**{k: v for k, v in inputs.items() if k != "labels"}).logits
        if teacher_logits.shape != logits.shape:  # the logits themselves: vocabulary or label set
            raise ConfigError(
                f"teacher logits of shape {tuple(teacher_logits.shape)} (checkpoint {step}) "
                f"differ from the student's {tuple(logits.shape)}: the last dimension is the "
                f"output size (teacher {teacher_logits.shape[-1]}, student {logits.shape[-1]}); "
                "they must share a vocabulary / label set"
            )
        return teacher_logits

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
        logits = outputs.logits  # (B, T, C) per token, (B, C) per example
        teacher_logits = self._teacher_logits(model, inputs, logits)
        targets, labelled = self._targets(model, inputs)
        if self._shifts(model) and logits.dim() > 2:  # a causal LM predicts token t+1 at position t
            logits = logits[..., :-1, :]
            teacher_logits = None if teacher_logits is None else teacher_logits[..., :-1, :]
        positions = (targets != IGNORE_INDEX).sum()
        if self._eval_totals is not None:
            loss = self._evaluation_loss(logits, teacher_logits, targets, labelled, positions)
            return (loss, outputs) if return_outputs else loss
        if teacher_logits is None and not labelled:
            raise ConfigError(
                f"the batch has no labels and the schedule names no teacher checkpoint at step "
                f"{self.state.global_step} ({self.schedule.label}): nothing to learn from"
            )
        distillation = replace(self.distillation, alpha=0.0) if self._on_policy_step else self.distillation
        if not labelled and distillation.alpha > 0:
            raise ConfigError(
                f"distillation.alpha={self.distillation.alpha} mixes in the labels' cross-entropy, "
                "but the batch has no labels: pass labels or set alpha=0"
            )
        if teacher_logits is None:
            loss = cross_entropy(logits, targets, "none")
        else:
            loss = distillation_loss(
                logits,
                teacher_logits,
                targets,
                distillation.loss,
                distillation.temperature,
                distillation.alpha,
                "none",
                **distillation.loss_options(),
            )
        # Trainer's gradient-accumulation contract, for model_accepts_loss_kwargs: it hands the count of
        # get_batch_samples (the whole optimizer step's supervised positions, summed over processes when
        # average_tokens_across_devices) and does not divide the loss by the accumulation steps itself. Without a
        # count (compute_loss called directly): this batch's mean, which Trainer divides by the steps.
        count = positions if num_items_in_batch is None else torch.as_tensor(num_items_in_batch, device=loss.device)
        loss = loss.sum() / count.clamp(min=1)  # a step without supervised positions: 0, not 0 / 0
        if num_items_in_batch is not None and self.args.average_tokens_across_devices and self.args.n_gpu <= 1:
            # The count spans every process, and DDP averages the processes' gradients: scale back up by the
            # process count, as Trainer.compute_loss does for a model's own loss. (nn.DataParallel, n_gpu > 1:
            # the outputs here are gathered from every GPU and the count is the whole batch's, nothing to scale.)
            loss = loss * (self.accelerator.num_processes // getattr(self, "get_tp_size", lambda: 1)())
        return (loss, outputs) if return_outputs else loss

    def _evaluation_loss(self, logits, teacher_logits, targets, labelled, positions) -> torch.Tensor:
        """eval_loss of one batch (its labels' cross-entropy per supervised position, as Trainer's model loss);
        adds the distillation loss sum and the positions to the evaluation's totals."""
        if teacher_logits is not None:
            kd = distillation_loss(
                logits,
                teacher_logits,
                targets,
                self.distillation.loss,
                self.distillation.temperature,
                0.0,
                "none",
                **self.distillation.loss_options(),
            )
            totals = self._eval_totals
            assert totals is not None, "evaluation_loop sets the totals before the first batch"
            totals += torch.stack([kd.sum().double(), positions.double()]).to(totals.device)
        if not labelled:
            return torch.zeros((), device=logits.device)
        return cross_entropy(logits, targets, "none").sum() / positions.clamp(min=1)

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):
        """Trainer's evaluation loop, plus ``<prefix>_distillation_loss`` when a teacher checkpoint is in use."""
        self._eval_totals = torch.zeros(2, dtype=torch.float64, device=self.args.device)
        try:
            output = super().evaluation_loop(
                dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix
            )
            totals = self._eval_totals
            if self.args.world_size > 1:
                totals = self.accelerator.reduce(totals, reduction="sum")
        finally:
            self._eval_totals = None
        if totals[1] > 0:
            output.metrics[f"{metric_key_prefix}_distillation_loss"] = float(totals[0] / totals[1])
        return output

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        """Trainer's log, with ``teacher_checkpoint`` (the checkpoint of the last step) in training logs."""
        if "loss" in logs and self.checkpoint_in_use is not None:
            logs = {**logs, "teacher_checkpoint": self.checkpoint_in_use}
        super().log(logs, *args, **kwargs)


def _gkd_distillation(
    distillation: DistillationConfig | None, keywords: dict[str, Any], training_args: Any
) -> DistillationConfig:
    """``distillation`` with TRL GKD's arguments (``GKD_FIELDS``) that are given (not None), as the trainer's
    ``keywords`` or as fields of ``training_args`` (TRL's ``GKDConfig``, or any ``TrainingArguments`` with such
    fields: duck-typed, TRL is not needed). ``beta`` selects the generalized JSD (an explicit ``distillation`` must
    then name it); ``temperature`` is the *sampling* temperature, as in TRL (``distillation.temperature`` stays
    the loss's). A ``max_new_tokens`` given nowhere is 128 (a Trainer has no task to bound it).

    Raises ``ConfigError`` naming both places for a value given as a keyword and on ``training_args`` with
    different values, or on ``training_args`` and in ``distillation`` set away from its default with different
    values (a keyword replaces ``distillation``'s field); naming the field for bad values; and for TRL's
    ``teacher_model_name_or_path`` / ``teacher_model_init_kwargs`` (the teacher is ``teacher_trajectory``)."""
    distillation = distillation or DistillationConfig()
    kind = type(training_args).__name__
    for name in ("teacher_model_name_or_path", "teacher_model_init_kwargs"):
        if getattr(training_args, name, None) is not None:
            raise ConfigError(
                f"args.{name}={getattr(training_args, name)!r} ({kind}) names TRL's teacher model, which this "
                "trainer does not load: its teacher is teacher_trajectory (HFTrajectory of the teacher's output "
                f"directory); leave {name} None"
            )
    given = {k: v for k, v in keywords.items() if v is not None}
    source = {k: f"{k}={v!r}" for k, v in given.items()}  # where each value came from, for the errors
    default = DistillationConfig()
    for name, field in GKD_FIELDS.items():
        value = getattr(training_args, name, None)
        if value is None:
            continue
        where = f"args.{name}={value!r} ({kind})"
        if name in given and given[name] != value:
            raise ConfigError(f"{name}={given[name]!r} is given to the trainer and {where}: give it in one place")
        ours = getattr(distillation, field)
        if name == "beta":
            clash = distillation.loss == "generalized_jsd" and ours != value
        else:
            clash = ours != getattr(default, field) and ours != value
        if clash:
            raise ConfigError(f"distillation.{field}={ours!r} and {where}: give it in one place")
        given[name], source[name] = value, where
    if "beta" in given and distillation.loss not in ("forward_kl", "generalized_jsd"):  # forward_kl: replaced
        raise ConfigError(
            f"{source['beta']} selects the generalized JSD, but distillation.loss={distillation.loss!r}: pass one "
            "of them"
        )
    for name, value in given.items():  # one at a time, so that a bad value's error says where it came from
        changes = {"loss": "generalized_jsd", "beta": value} if name == "beta" else {GKD_FIELDS[name]: value}
        try:
            distillation = replace(distillation, **changes)
        except ConfigError as exc:
            raise ConfigError(f"{source[name]}: {exc}") from None
    return distillation if distillation.max_new_tokens is not None else replace(distillation, max_new_tokens=128)


# Generated batches for :class:`ProgressiveDistillationTrainer`: TRL-style on-policy (``lmbda``)
# and sequence-level (``seq_kd``) distillation from the scheduled teacher checkpoint, with Hugging Face
# ``generate`` (its KV cache).
#
# A step's micro-batches are replaced together (:func:`generated_micro_batches`): their prompts are concatenated,
# continued in one ``generate`` call, and split back, so any split of a batch into micro-batches and accumulation
# steps trains on the same sequences, and Trainer's count of supervised tokens (``get_batch_samples``) is that of
# the generated batch. Prompt: the tokens before the first supervised label position (at least one token; the
# shortest such prefix over the step's rows, so that every row keeps a prompt of the same length). Labels: the
# generated tokens up to and including EOS; -100 on the prompt and after EOS (attention mask 0 there too).
# Sampling is seeded: one draw of the trainer's seeded generator seeds ``generate``'s global-RNG draws inside
# :func:`torch.random.fork_rng`, so the global RNG is left as it was.


def prompt_length(batches: list[dict[str, Any]]) -> int:
    """The shortest prefix before a supervised label over every row of ``batches`` (at least 1)."""
    first = []
    for batch in batches:
        labels = batch.get("labels")
        if labels is None:
            first.append(1)
            continue
        supervised = labels != IGNORE_INDEX  # (B, T)
        index = torch.where(supervised.any(-1), supervised.float().argmax(-1), torch.full_like(labels[:, 0], 1))
        first.append(int(index.min()))
    return max(1, min(first))


@torch.no_grad()
def generated_micro_batches(
    model, batches: list[dict[str, Any]], generator: torch.Generator, max_new_tokens: int | None, temperature: float
) -> list[dict[str, Any]]:
    """``batches`` (micro-batches of one step: dicts with ``input_ids`` (B_i, T_i), optional ``labels``) with
    their prompts continued by ``model.generate`` (``temperature`` 0 = greedy), as micro-batches of the same
    sizes with ``input_ids``, ``attention_mask`` and ``labels`` (B_i, P + new tokens)."""
    length = prompt_length(batches)
    prompts = torch.cat([b["input_ids"][:, :length] for b in batches])  # (B, P)
    sizes = [len(b["input_ids"]) for b in batches]
    config = model.generation_config if hasattr(model, "generation_config") else None
    eos = getattr(config, "eos_token_id", None)
    eos = eos[0] if isinstance(eos, (list, tuple)) else eos
    if eos is not None and eos >= model.get_input_embeddings().num_embeddings:
        eos = None  # a config default (GPT-2's 50256) outside a small vocabulary: never produced
    pad = 0 if eos is None else eos
    seed = int(torch.randint(2**62, (), generator=generator))
    was_training = model.training
    model.eval()
    devices = [prompts.device] if prompts.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            sampling = (
                dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
                if temperature > 0
                else dict(do_sample=False)
            )
            out = model.generate(
                input_ids=prompts,
                attention_mask=torch.ones_like(prompts),
                max_new_tokens=max_new_tokens,
                eos_token_id=eos,
                pad_token_id=pad,
                **sampling,
            )
    finally:
        model.train(was_training)
    new = out[:, length:]  # (B, N)
    if eos is None:
        keep = torch.ones_like(new, dtype=torch.bool)
    else:  # up to and including the first EOS
        keep = (new == eos).long().cumsum(-1).sub((new == eos).long()) == 0
    attention = torch.cat([torch.ones_like(prompts, dtype=torch.bool), keep], dim=1).long()
    labels = torch.cat([torch.full_like(prompts, IGNORE_INDEX), torch.where(keep, new, IGNORE_INDEX)], dim=1)
    parts = zip(out.split(sizes), attention.split(sizes), labels.split(sizes))
    return [{"input_ids": ids, "attention_mask": mask, "labels": lab} for ids, mask, lab in parts]
