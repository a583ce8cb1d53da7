"""The contract between tasks and the rest of the library: one batch type and the :class:`Task` protocol.

Every task yields :class:`Batch` objects -- inputs, targets with ``IGNORE_INDEX`` (-100) where nothing is
supervised, an optional attention mask -- and declares what the training loop, the runner, the probes and the
report need to know about it (:class:`Task`). Those layers never ask a task what kind it is: a new task is a
new module (or a class in a user's own file) that implements the protocol and registers itself with
``@register("task")``; nothing else changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar, Protocol, runtime_checkable

import torch

from progdistill.distill.losses import IGNORE_INDEX  # -100, PyTorch's default: a target position without supervision


@dataclass(frozen=True)
class Batch:
    """One batch of a task.

    ``inputs``: (B, ...) model inputs -- (B, n) float bits for sparse parity, (B, L) int64 token ids for
    sequence tasks. ``targets``: int64 class indices, (B,) for one label per example or (B, L) for one per
    position, ``IGNORE_INDEX`` where nothing is supervised. ``attention_mask``: (B, L) bool (False at padding)
    for sequence inputs, None otherwise. ``groups``: optional named sets of target positions, each a bool
    tensor shaped like ``targets`` (e.g. the induction task's ``in_context`` and ``bigram`` positions), for which
    evaluation also reports the loss and accuracy (``eval_<name>_loss``, ``eval_<name>_accuracy``).
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    attention_mask: torch.Tensor | None = None
    groups: dict[str, torch.Tensor] | None = None

    def to(self, device) -> Batch:
        mask = None if self.attention_mask is None else self.attention_mask.to(device)
        groups = None if self.groups is None else {k: v.to(device) for k, v in self.groups.items()}
        return Batch(self.inputs.to(device), self.targets.to(device), mask, groups)

    def rows(self, index) -> Batch:
        """The sub-batch of rows ``index`` (a slice or an index tensor)."""
        mask = None if self.attention_mask is None else self.attention_mask[index]
        groups = None if self.groups is None else {k: v[index] for k, v in self.groups.items()}
        return Batch(self.inputs[index], self.targets[index], mask, groups)

    def with_targets(self, targets: torch.Tensor) -> Batch:
        return replace(self, targets=targets)

    @property
    def model_inputs(self) -> tuple[torch.Tensor, ...]:
        """The positional arguments of a model's forward pass: (inputs,) or (inputs, attention_mask)."""
        return (self.inputs,) if self.attention_mask is None else (self.inputs, self.attention_mask)

    @property
    def num_supervised(self) -> int:
        """Supervised target positions in the batch."""
        return int((self.targets != IGNORE_INDEX).sum())


@runtime_checkable
class Task(Protocol):
    """What a task provides. Tasks are frozen config dataclasses registered with ``@register("task")``.

    Data:
      - ``sample_batch(count, generator) -> Batch``: ``count`` fresh training examples, every random draw from
        ``generator`` (same generator state, same batch, bit for bit);
      - ``eval_batches() -> list[Batch]``: the fixed held-out set;
      - ``per_position_targets``: True when targets are (B, L) over sequences (the loop trains one model at a
        time in micro-batches and normalizes by supervised positions); False for one label per example
        (models that support it train as a stack, with teacher targets computed once per block of steps).
    Models:
      - ``num_classes`` (C: output classes at every supervised position) and ``input_size`` (bits for parity,
        positions for sequences), from which a model config builds its model;
      - ``config_num_classes``: ``num_classes`` when the config alone gives it, without reading a user's file or
        training a tokenizer (None otherwise): the experiment's config refuses a ``distillation.top_k`` above it
        when it is built (the rest is checked before a run writes anything).
    Runs:
      - ``prepare(run_dir) -> Task``: the task with everything it derives from data (e.g. a trained
        tokenizer) loaded from or saved into the run directory; a pure task returns itself;
      - ``data_digest() -> str | None``: sha256 of the task's data (grammar, corpus), None without any; loading
        the data here is what refuses a bad grammar or corpus before a run writes anything;
      - ``positions_needed() -> int | None``: the longest sequence (in positions) a model must fit, checked
        against a model config's ``max_positions``; None for inputs that are not sequences;
      - ``probes``: names of the probes that apply to this task; ``end_of_run_probes``: those ``run`` performs;
      - ``accuracy_label``: the y-axis label of accuracy figures;
      - ``generative``: whether students may train on generated sequences (``distillation.seq_kd``,
        ``distillation.lmbda``); such a task provides ``generate_batch(model, count, generator, temperature,
        max_new_tokens) -> Batch``: ``count`` sequences sampled from ``model`` (a teacher checkpoint or the
        student), with next-token targets (:mod:`progdistill.train.generation`).
    :class:`TaskBase` gives the defaults of the run-level fields.
    """

    kind: ClassVar[str]
    per_position_targets: ClassVar[bool]
    probes: ClassVar[tuple[str, ...]]
    end_of_run_probes: ClassVar[tuple[str, ...]]
    accuracy_label: ClassVar[str]
    generative: ClassVar[bool]

    @property
    def num_classes(self) -> int: ...

    @property
    def input_size(self) -> int: ...

    def sample_batch(self, count: int, generator: torch.Generator) -> Batch: ...

    def eval_batches(self) -> Sequence[Batch]: ...

    def prepare(self, run_dir: str | Path) -> Task: ...

    def data_digest(self) -> str | None: ...

    def positions_needed(self) -> int | None: ...


class TaskBase:
    """Defaults of the run-level part of :class:`Task` for a task without data files or probes."""

    per_position_targets: ClassVar[bool] = False
    probes: ClassVar[tuple[str, ...]] = ()
    end_of_run_probes: ClassVar[tuple[str, ...]] = ()
    accuracy_label: ClassVar[str] = "eval accuracy"
    generative: ClassVar[bool] = False

    def prepare(self, run_dir: str | Path) -> TaskBase:
        return self

    def data_digest(self) -> str | None:
        return None

    def positions_needed(self) -> int | None:
        return None

    @property
    def config_num_classes(self) -> int | None:
        return None
