"""The settings of one training run, shared by teachers and students: the optimizer and its learning-rate
schedule, the distillation objective, and the training loop (steps, batches, evaluation, checkpoints). Frozen,
validated dataclasses (:mod:`progdistill.core.config` holds the machinery: checks, the registry, JSON forms)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from progdistill.core.config import ModelSpec, check, check_positive_int, check_positive_number, typed


@typed("optimizer")
@dataclass(frozen=True)
class OptimizerConfig:
    """Optimizer and learning-rate schedule.

    ``name``: "sgd" or "adam" (Adam with decoupled weight decay is "adamw").
    ``lr_schedule``: "constant", or "cosine" (linear warmup over ``warmup_fraction`` of the steps, then cosine
    decay to zero), as in paper §1 (Transformers) and §2 (BERT).
    """

    name: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    warmup_fraction: float = 0.06

    def __post_init__(self):
        check(self.name in ("sgd", "adam", "adamw"), "optimizer.name", self.name, "one of sgd, adam, adamw")
        check_positive_number("optimizer.lr", self.lr)
        check(0 <= self.momentum < 1, "optimizer.momentum", self.momentum, "must lie in [0, 1)")
        check(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            "optimizer.betas",
            self.betas,
            "two numbers in [0, 1)",
        )
        check(self.weight_decay >= 0, "optimizer.weight_decay", self.weight_decay, "must be >= 0")
        check(
            self.lr_schedule in ("constant", "cosine"),
            "optimizer.lr_schedule",
            self.lr_schedule,
            "one of constant, cosine",
        )
        check(0 <= self.warmup_fraction < 1, "optimizer.warmup_fraction", self.warmup_fraction, "must lie in [0, 1)")


def _added(default):
    """A field added after configs were hashed: left out of the JSON form at its default (hashes unchanged)."""
    return field(default=default, metadata={"omit_if_default": True})


@typed("distillation")
@dataclass(frozen=True)
class DistillationConfig:
    """How a student matches its teacher checkpoint (paper §1-§2: KL between teacher and student softmax outputs).

    ``loss``: "forward_kl" (KL(teacher || student), same gradients as the distillation cross-entropy),
    "reverse_kl" (KL(student || teacher); needs ``temperature > 0``), "generalized_jsd" (TRL's GKD divergence
    with ``beta``: 0 = forward KL, 1 = reverse KL, 0.5 = symmetric JSD;
    :func:`progdistill.distill.losses.generalized_jsd`) or "total_variation". ``temperature``: the teacher's softmax
    temperature T, any T >= 0; 0 means the teacher's argmax as a hard label, and a T too small for logits / T to be
    finite in float32 (e.g. 1e-40) its limit (:mod:`progdistill.distill.losses`). ``temperature_scaling``: "teacher"
    (only the teacher's logits are divided by T)
    or "hinton" (the student's too, and the loss times T^2; T > 0). ``top_k``: keep the teacher's k most
    probable classes only (None: all), as ``top_k_mode`` "tail_bucket" (the rest as one class) or
    "renormalized". ``alpha``: weight of the cross-entropy on true labels, mixed as
    ``alpha * CE + (1 - alpha) * distillation``.

    Generated data (generative tasks such as pcfg-lm only; :mod:`progdistill.train.generation`): ``seq_kd`` trains on
    sequences sampled from the scheduled checkpoint instead of the task's data (sequence-level KD; with
    ``alpha = 1`` the loss is the cross-entropy on them, Kim & Rush 2016); ``lmbda`` is the probability that a
    step's batch is instead the student's own samples, scored token by token against the checkpoint with the
    divergence alone (on-policy distillation, TRL's GKD). Sampling: ``sampling_temperature`` (0 = greedy),
    at most ``max_new_tokens`` tokens (None: the task's longest sentence).
    """

    loss: str = "forward_kl"
    temperature: float = 1.0
    alpha: float = 0.0
    beta: float = _added(0.5)
    temperature_scaling: str = _added("teacher")
    top_k: int | None = _added(None)
    top_k_mode: str = _added("tail_bucket")
    seq_kd: bool = _added(False)
    lmbda: float = _added(0.0)
    sampling_temperature: float = _added(1.0)
    max_new_tokens: int | None = _added(None)

    def __post_init__(self):
        check(
            self.loss in ("forward_kl", "reverse_kl", "generalized_jsd", "total_variation"),
            "distillation.loss",
            self.loss,
            "one of forward_kl, reverse_kl, generalized_jsd, total_variation",
        )
        check(
            isinstance(self.temperature, (int, float)) and self.temperature >= 0,
            "distillation.temperature",
            self.temperature,
            "must be >= 0 (0 = teacher argmax)",
        )
        check(
            isinstance(self.beta, (int, float)) and 0 <= self.beta <= 1,
            "distillation.beta",
            self.beta,
            "must lie in [0, 1] (0 = forward KL, 1 = reverse KL)",
        )
        reverse = self.loss == "reverse_kl" or (self.loss == "generalized_jsd" and self.beta == 1)
        which = "reverse_kl" if self.loss == "reverse_kl" else "generalized_jsd with beta=1 (reverse KL)"
        check(
            not (reverse and self.temperature == 0),
            "distillation.temperature",
            self.temperature,
            f"{which} needs temperature > 0 (a one-hot teacher has infinite reverse KL)",
        )
        check(
            self.temperature_scaling in ("teacher", "hinton"),
            "distillation.temperature_scaling",
            self.temperature_scaling,
            "one of teacher, hinton",
        )
        check(
            not (self.temperature_scaling == "hinton" and self.temperature == 0),
            "distillation.temperature",
            self.temperature,
            "temperature_scaling='hinton' divides the student's logits by it: must be > 0",
        )
        check(
            self.top_k is None
            or (isinstance(self.top_k, int) and not isinstance(self.top_k, bool) and self.top_k >= 1),
            "distillation.top_k",
            self.top_k,
            "None (the whole vocabulary) or an integer >= 1",
        )
        check(
            self.top_k_mode in ("renormalized", "tail_bucket"),
            "distillation.top_k_mode",
            self.top_k_mode,
            "one of renormalized, tail_bucket",
        )
        check(
            not (reverse and self.top_k is not None and self.top_k_mode == "renormalized"),
            "distillation.top_k_mode",
            self.top_k_mode,
            "reverse KL against renormalized top-k targets is "
            "infinite (the teacher's tail has probability 0): use tail_bucket",
        )
        check(0 <= self.alpha <= 1, "distillation.alpha", self.alpha, "must lie in [0, 1]")
        check(isinstance(self.seq_kd, bool), "distillation.seq_kd", self.seq_kd, "true or false")
        check(
            isinstance(self.lmbda, (int, float)) and 0 <= self.lmbda <= 1,
            "distillation.lmbda",
            self.lmbda,
            "must lie in [0, 1] (the probability of an on-policy batch)",
        )
        check(
            isinstance(self.sampling_temperature, (int, float)) and self.sampling_temperature >= 0,
            "distillation.sampling_temperature",
            self.sampling_temperature,
            "must be >= 0 (0 = greedy)",
        )
        check(
            self.max_new_tokens is None or (isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1),
            "distillation.max_new_tokens",
            self.max_new_tokens,
            "None (the task's longest) or an integer >= 1",
        )

    @property
    def generates(self) -> bool:
        """Whether students train on generated sequences (``seq_kd`` or ``lmbda > 0``)."""
        return self.seq_kd or self.lmbda > 0

    def loss_options(self) -> dict[str, Any]:
        """The keyword options of :func:`progdistill.distill.losses.divergence` set here."""
        return {
            "beta": self.beta,
            "temperature_scaling": self.temperature_scaling,
            "top_k": self.top_k,
            "top_k_mode": self.top_k_mode,
        }

    @property
    def plain_forward_kl(self) -> bool:
        """Forward KL at teacher-only temperature on the whole vocabulary: the loop's fused fast paths apply."""
        return self.loss == "forward_kl" and self.temperature_scaling == "teacher" and self.top_k is None


@typed("")
@dataclass(frozen=True)
class TrainConfig:
    """One training run's budget: ``steps`` optimizer steps of ``batch_size`` fresh samples, evaluated every
    ``eval_every`` steps; the teacher also saves a checkpoint every ``checkpoint_every`` steps (students ignore
    it), keeping at most ``max_checkpoints`` of them when set (thinned where the eval curve is flat, dense
    around the phase transition; see :class:`progdistill.store.trajectory.TrajectoryWriter`). ``model`` is a tagged
    model config (e.g. :class:`progdistill.models.mlp.MLPConfig`). ``precision="bf16"`` runs the forward pass under
    bfloat16 autocast (for transformer models on accelerators); ``compile`` wraps the model in
    ``torch.compile``. ``grad_accumulation``: micro-batches per optimizer step (token tasks; ``batch_size`` is
    the whole step's batch, and the loss is normalized by the supervised tokens of the whole step)."""

    model: ModelSpec = None
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    steps: int = 1000
    batch_size: int = 32
    eval_every: int = 100
    checkpoint_every: int = 100
    seed: int = 0
    grad_accumulation: int = 1
    max_checkpoints: int | None = None
    on_non_finite: str = "stop"
    precision: str = "float32"
    compile: bool = False

    def __post_init__(self):
        check(
            self.model is not None and getattr(type(self.model), "union", None) == "model",
            "model",
            self.model,
            "a model config, e.g. {'type': 'mlp', 'width': 100}",
        )
        check_positive_int("steps", self.steps)
        check_positive_int("batch_size", self.batch_size)
        check_positive_int("eval_every", self.eval_every)
        check_positive_int("checkpoint_every", self.checkpoint_every)
        check(isinstance(self.seed, int) and self.seed >= 0, "seed", self.seed, "must be an integer >= 0")
        check_positive_int("grad_accumulation", self.grad_accumulation)
        check(
            self.batch_size % self.grad_accumulation == 0,
            "grad_accumulation",
            self.grad_accumulation,
            f"must divide batch_size={self.batch_size} (the step's batch is split into equal micro-batches)",
        )
        check(
            self.max_checkpoints is None or (isinstance(self.max_checkpoints, int) and self.max_checkpoints >= 3),
            "max_checkpoints",
            self.max_checkpoints,
            "None (keep all) or an integer >= 3",
        )
        check(
            self.on_non_finite in ("stop", "skip"),
            "on_non_finite",
            self.on_non_finite,
            "'stop' (raise, keeping what is saved) or 'skip' (skip the step)",
        )
        check(
            self.precision in ("float32", "bf16"),
            "precision",
            self.precision,
            "'float32', or 'bf16' (bfloat16 autocast of the forward pass; losses stay float32)",
        )
        check(isinstance(self.compile, bool), "compile", self.compile, "true or false (torch.compile the model)")


WAY_NAME_CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789-."


@typed("ways")
@dataclass(frozen=True)
class Way:
    """One more way of distilling in an experiment: a ``name`` and its own ``distillation`` settings (TRL's GKD
    arguments, e.g. ``DistillationConfig(loss="generalized_jsd", beta=0.5)``, ``seq_kd=True``, ``lmbda=0.5``).
    Every schedule that learns from a teacher trains one more student per seed with these settings, named
    ``<name>-<schedule>-seed<k>``, against the experiment's one teacher
    (:func:`progdistill.experiment.experiment_students`). ``name``: lower-case letters, digits, ``-`` and ``.`` (it
    starts the students' directory names)."""

    name: str
    distillation: DistillationConfig = field(default_factory=DistillationConfig)

    def __post_init__(self):
        check(
            bool(self.name) and all(c in WAY_NAME_CHARACTERS for c in self.name) and self.name[0].isalnum(),
            "ways.name",
            self.name,
            "a non-empty name of lower-case letters, digits, '-' and '.', starting with a letter or digit "
            "(it starts the students' directory names)",
        )
