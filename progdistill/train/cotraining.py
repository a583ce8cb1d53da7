"""Online co-training: students distil from a teacher that trains alongside them
(:class:`~progdistill.distill.curricula.CoTraining`).

Progressive distillation with zero stored checkpoints: the teacher's own training (its config, seed, data stream
and initialization, so the very teacher ``train_teacher`` would train) advances one step at a time as its students
ask for it, and the students distil from its current weights, or from those ``lag`` steps old, kept in an
in-memory ring buffer of ``lag + 1`` copies. Only the teacher's final weights are written.
"""

from __future__ import annotations

import collections
import copy
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from progdistill.core.files import MetricsWriter, atomic_write_json
from progdistill.core.settings import DistillationConfig, TrainConfig
from progdistill.distill.schedules import CE, TeacherSpec
from progdistill.store.trajectory import cpu_state
from progdistill.train.evaluation import ProgressLog
from progdistill.train.loop import Member, Training, fit


class LiveTeacher:
    """A teacher in training that serves its weights to students (the ``get`` of a
    :class:`progdistill.distill.teachers.TeacherPool`).

    ``model``: the teacher, freshly initialized; ``train``: its training config; ``seed``: its data seed (stream
    "teacher-data", as :func:`progdistill.recipes.runner.train_teacher`); ``lag``: the largest lag any student uses.
    ``get(spec)`` first trains the teacher up to step ``min(spec.now, train.steps)`` (the weights after that many
    updates; step 0 is the initialization), then returns the weights of step ``min(spec.checkpoint,
    train.steps)``; asking for weights older than the ring buffer keeps is an error. Steps must be asked for in
    increasing order of ``now`` (as :func:`progdistill.distill.teachers.block_teacher_logits` does).
    """

    def __init__(
        self,
        task,
        model: torch.nn.Module,
        train: TrainConfig,
        seed: int,
        device: torch.device,
        lag: int = 0,
        writer: MetricsWriter | None = None,
    ):
        self.training = Training(
            task,
            model,
            train,
            [Member("teacher (co-training)", seed, CE(), writer)],
            "teacher-data",
            DistillationConfig(),
            None,
            None,
            device,
            "teacher (co-training)",
            None,
        )
        self.training.progress_log = ProgressLog("teacher (co-training)", train.steps, enabled=False)
        self.model, self.total, self.lag, self.step = model, train.steps, lag, 0
        # The ring buffer: (step, frozen copy) of the last lag + 1 teacher steps; lag 0 serves the model itself.
        self.buffer: collections.deque = collections.deque(maxlen=lag + 1)
        self._push()
        self.training.record(0)
        self.steps: list[int] = []  # no stored checkpoints: schedules validate against none

    def check(self, schedules) -> None:
        pass  # nothing stored: co-training needs no checkpoint

    def prepare(self, specs) -> None:
        pass  # the teacher is built; its weights come step by step

    def retain(self, specs) -> None:
        pass  # the ring buffer keeps what a lag needs

    def _push(self) -> None:
        if self.lag == 0:
            self.buffer.append((self.step, self.model))
            return
        if len(self.buffer) == self.buffer.maxlen:  # reuse the oldest copy's storage
            _, frozen = self.buffer.popleft()
            with torch.no_grad():
                for dst, src in zip(frozen.parameters(), self.model.parameters()):
                    dst.copy_(src)
        else:
            frozen = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.buffer.append((self.step, frozen))

    def advance(self, until: int) -> None:
        """Train the teacher up to step ``min(until, train.steps)``, recording at its eval steps."""
        until = min(until, self.total)
        while self.step < until:
            self.training.train_stack_block(self.step, self.training.plan(self.step, self.step + 1))
            self.step += 1
            self._push()
            if self.training.records_at(self.step):
                self.training.record(self.step)

    def get(self, spec: TeacherSpec) -> torch.nn.Module:
        self.advance(spec.now if spec.now is not None else spec.checkpoint)
        want = min(spec.checkpoint, self.total)
        for step, model in self.buffer:
            if step == want:
                return model
        raise RuntimeError(
            f"co-training: the teacher's weights of step {want} are not in the ring buffer (it "
            f"holds steps {[s for s, _ in self.buffer]}); a student's lag exceeds the buffer's "
            f"{self.lag}"
        )

    def finish(self, path: Path | None = None) -> dict[str, torch.Tensor]:
        """Train the teacher to its last step (a student run shorter than the teacher's leaves it unfinished) and
        return its final weights (CPU), written as safetensors to ``path`` when given."""
        self.advance(self.total)
        state = cpu_state(self.model.state_dict())
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            save_file(state, str(tmp))
            tmp.replace(path)
        return state


def cotrain(
    task,
    teacher_model: torch.nn.Module,
    teacher_train: TrainConfig,
    teacher_seed: int,
    student_model: torch.nn.Module,
    student_train: TrainConfig,
    members: list[Member],
    fit_kwargs: dict,
    directory: Path,
    device: torch.device,
    stored_final: dict[str, torch.Tensor] | None = None,
) -> dict:
    """Train the co-training ``members`` (a stack, ``student_model``) alongside the teacher, then finish the
    teacher; writes ``directory``/final.safetensors (the teacher's only stored checkpoint), metrics.jsonl (the
    teacher's) and cotraining.json: wall and CPU time (this process, all threads) in seconds of teacher and
    students together, steps, and -- given the
    stored trajectory's final weights ``stored_final`` -- the largest absolute difference to them (0 when the live
    teacher is the stored one, bit for bit). Returns cotraining.json's content."""
    started, cpu_started = time.perf_counter(), time.process_time()
    writer = MetricsWriter(directory / "metrics.jsonl")
    try:
        lag = max(mem.schedule.lag for mem in members)
        live = LiveTeacher(task, teacher_model, teacher_train, teacher_seed, device, lag=lag, writer=writer)
        fit(task, student_model, student_train, members, teachers=live, device=device, **fit_kwargs)
        final = live.finish(directory / "final.safetensors")
    finally:
        writer.close()
    summary = {
        "wall_time_s": time.perf_counter() - started,
        "cpu_time_s": time.process_time() - cpu_started,
        "teacher_steps": teacher_train.steps,
        "student_steps": student_train.steps,
        "students": [mem.name for mem in members],
        "ring_buffer": lag + 1,
        "stored_checkpoints": 1,
    }
    if stored_final is not None:
        summary["final_max_abs_diff_vs_trajectory"] = max(
            float((final[k].float() - stored_final[k].float()).abs().max()) for k in final
        )
    atomic_write_json(directory / "cotraining.json", summary)
    return summary
