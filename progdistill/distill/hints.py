"""Feature (hint) distillation, FitNets style: a student's hidden layer regressed onto a teacher's through a learned
linear projection (:class:`progdistill.distill.curricula.HintDistillation` decides when; this module computes it).

The projection is part of the objective, not of the student: it trains with the student's optimizer during the
hint phase and is not saved with the student's weights (it is in the resume state).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from progdistill.core.config import ConfigError
from progdistill.core.seeding import generator


def hidden_layer(sizes: Sequence[int], layer: int, role: str, field: str) -> int:
    """The index in ``sizes`` of hidden layer ``layer`` (-1: the last); ``ConfigError`` naming ``field`` when the
    model (``role``) has no such layer."""
    if not sizes:
        raise ConfigError(
            f"{field}: hint distillation needs a {role} that returns hidden states (an mlp); this {role} has none"
        )
    if not -1 <= layer < len(sizes):
        raise ConfigError(
            f"{field}={layer} is invalid: the {role} has {len(sizes)} hidden layer(s), so valid "
            f"layers are 0..{len(sizes) - 1} or -1 (the last)"
        )
    return layer % len(sizes)


class HintProjections(nn.Module):
    """One learned projection per model of a stack, from the student's hint layer (width d_s) to the teacher's
    (width d_t): ``weight`` (M, d_s, d_t), ``bias`` (M, 1, d_t), model m initialized from the generator (``seeds[m]``,
    "hint-projection") uniform on [-1/sqrt(d_s), 1/sqrt(d_s)] (``nn.Linear``'s default)."""

    def __init__(self, seeds: Sequence[int], d_student: int, d_teacher: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(len(seeds), d_student, d_teacher))
        self.bias = nn.Parameter(torch.empty(len(seeds), 1, d_teacher))
        bound = 1.0 / math.sqrt(d_student)
        with torch.no_grad():
            for m, seed in enumerate(seeds):
                gen = generator(seed, "hint-projection")
                self.weight[m].uniform_(-bound, bound, generator=gen)
                self.bias[m].uniform_(-bound, bound, generator=gen)

    def loss(self, m: int, student_hidden: torch.Tensor, teacher_hidden: torch.Tensor) -> torch.Tensor:
        """Mean squared error per example, (B,): student_hidden (B, d_s) of model m projected, against
        teacher_hidden (B, d_t) (no gradient flows into the teacher)."""
        projected = torch.addmm(self.bias[m], student_hidden, self.weight[m])  # (B, d_t)
        return (projected - teacher_hidden.detach()).pow(2).mean(dim=-1)


class Hints:
    """The hint phase of a stack: which models take hint steps, their layers and projections.

    ``hint_layers``: per model, (student layer, teacher layer) indices of hidden layers (-1: the last), or None for
    a model that never takes a hint step. Raises ``ConfigError`` (before training) for a layer that does not exist."""

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        hint_layers: Sequence[tuple[int, int] | None],
        seeds: Sequence[int],
    ):
        student_sizes = getattr(student, "hidden_sizes", [])
        teacher_sizes = getattr(teacher, "hidden_sizes", [])
        self.layers: list[tuple[int, int] | None] = []
        widths = set()
        for m, pair in enumerate(hint_layers):
            if pair is None:
                self.layers.append(None)
                continue
            s = hidden_layer(student_sizes, pair[0], "student", f"schedules (model {m}) student_layer")
            t = hidden_layer(teacher_sizes, pair[1], "teacher", f"schedules (model {m}) layer")
            self.layers.append((s, t))
            widths.add((student_sizes[s], teacher_sizes[t]))
        if len(widths) > 1:
            raise ConfigError(f"the hint students of one stack must project between one pair of widths; got {widths}")
        d_s, d_t = widths.pop()
        self.projections = HintProjections(seeds, d_s, d_t)

    @classmethod
    def for_stack(cls, student: nn.Module, teachers, first_specs: Sequence, seeds: Sequence[int]) -> Hints | None:
        """The hints of a stack whose models start with the teacher specs ``first_specs`` (step 0; hint steps come
        first), or None when no model takes hint steps."""
        layers = [None if spec is None else spec.hint_layer for spec in first_specs]
        if all(pair is None for pair in layers):
            return None
        teacher = teachers.get(next(s for s in first_specs if s is not None and s.hint_layer is not None))
        return cls(student, teacher, layers, seeds)

    def to(self, device) -> Hints:
        self.projections.to(device)
        return self

    def parameters(self):
        return self.projections.parameters()

    def replace(
        self, per_example: torch.Tensor, student_hidden: list[torch.Tensor], specs: Sequence, teacher_inputs, teachers
    ) -> torch.Tensor:
        """``per_example`` (M, B) with the rows of the models whose spec has a hint layer replaced by their hint
        loss: student_hidden, the student stack's hidden layers (M, B, width) each; ``teacher_inputs(m)`` model m's
        inputs (B, n); ``teachers.get(spec)`` the teacher."""
        rows = list(per_example.unbind(0))
        for m, spec in enumerate(specs):
            if spec is None or spec.hint_layer is None:
                continue
            layers = self.layers[m]
            assert layers is not None, "a spec with a hint layer has its projection (for_stack)"
            s, t = layers
            with torch.no_grad():
                teacher_hidden = teachers.get(spec)(teacher_inputs(m), hidden=True)[1][t][0]  # (B, d_t)
            rows[m] = self.projections.loss(m, student_hidden[s][m], teacher_hidden)
        return torch.stack(rows)
