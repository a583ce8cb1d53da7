"""Generated training data: sequence-level and on-policy distillation from a trajectory.

At student step t the schedule names a teacher checkpoint c_t (:mod:`progdistill.distill.schedules`). Besides the task's
own data, a step of a generative task (``task.generative``, e.g. pcfg-lm) may train on

- the **teacher's samples** (``distillation.seq_kd``): ``batch_size`` sequences sampled from c_t, so that with a
  progressive schedule the data itself follows the teacher's training (sequence-level KD, Kim & Rush 2016; with
  ``alpha = 1`` the loss is their cross-entropy);
- the **student's own samples** (on-policy distillation, Agarwal et al. 2024 "GKD"; TRL's ``lmbda``): with
  probability ``distillation.lmbda`` per step, sequences sampled from the student, scored token by token against
  c_t with the divergence alone (no cross-entropy: the tokens are the student's, not the truth).

Sampling runs the model's cached decoding (:meth:`progdistill.models.language.CausalLM.sample`, Hugging Face's
``DynamicCache``) at ``distillation.sampling_temperature`` from the task's prompt (BOS for the unconditional
grammar tasks). Every draw comes from two seeded generators per student -- the per-step coin and the sampling
stream -- so a run is reproducible bit for bit on CPU, and the coin of step t does not depend on what earlier
steps sampled. Steps without a checkpoint (a CE schedule, or before the first) train on the task's data.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from progdistill.core.seeding import generator
from progdistill.core.settings import DistillationConfig
from progdistill.tasks.base import Batch

DATA, TEACHER, STUDENT = "data", "teacher", "student"  # where a step's batch came from


class GeneratedData:
    """The source of each step's batch for one student (seed ``seed``) and its generators.

    :meth:`batch` returns (batch, source, distillation): the batch to train on, its source -- ``DATA``, ``TEACHER``
    (seq_kd) or ``STUDENT`` (on-policy) -- and the objective for it (``alpha`` 0 on the student's own samples).
    ``counts`` tallies the sources."""

    def __init__(self, task, distillation: DistillationConfig, seed: int):
        self.task, self.distillation = task, distillation
        self.coin = generator(seed, "on-policy-coin")  # one draw per step, whatever the step does
        self.sampling = generator(seed, "generation")  # every sampled token
        self.counts = {DATA: 0, TEACHER: 0, STUDENT: 0}

    def batch(
        self,
        data: Batch,
        count: int,
        teacher: torch.nn.Module | None,
        student: torch.nn.Module,
        step: DistillationConfig | None = None,
    ) -> tuple[Batch, str, DistillationConfig]:
        """``data`` (the task's batch of this step) or ``count`` sequences sampled from ``teacher`` (the scheduled
        checkpoint; None: no checkpoint at this step) or from ``student``. ``step``: the step's objective (e.g.
        with a curriculum's temperature; default the one given at construction), returned as it is, or with
        ``alpha`` 0 on the student's own samples."""
        d = self.distillation
        step = d if step is None else step
        on_policy = d.lmbda > 0 and float(torch.rand((), generator=self.coin)) < d.lmbda
        source = DATA if teacher is None else STUDENT if on_policy else TEACHER if d.seq_kd else DATA
        self.counts[source] += 1
        if source == STUDENT:
            return self._sample(student, count), source, replace(step, alpha=0.0)
        if source == TEACHER and teacher is not None:  # (TEACHER is only chosen with a teacher)
            return self._sample(teacher, count), source, step
        return data, source, step

    def _sample(self, model: torch.nn.Module, count: int) -> Batch:
        d = self.distillation
        return self.task.generate_batch(model, count, self.sampling, d.sampling_temperature, d.max_new_tokens)

    def state(self) -> dict[str, Any]:
        return {"coin": self.coin.get_state(), "sampling": self.sampling.get_state(), "counts": dict(self.counts)}

    def load_state(self, state: dict) -> None:
        self.coin.set_state(state["coin"])
        self.sampling.set_state(state["sampling"])
        self.counts = dict(state["counts"])
