"""The run directory: where an experiment's files live, and the rules for claiming, reusing and reading one.

Layout::

    config.json, config.sha256        the full resolved ExperimentConfig and its hash
    data.sha256                       the task data's hash (grammar, corpus), for tasks with data
    teacher/manifest.json             the teacher trajectory (see progdistill.store.trajectory)
    teacher/checkpoints/...
    teacher/metrics.jsonl
    students/<schedule>-seed<k>/metrics.jsonl, final.safetensors
    students/<schedule>-seed<k>/.lock, error.txt   its trainer's lock; the error that stopped it
    jobs/                             `run --launcher`: launch.json (the job ids) and submitit's job files
    tokenizer/                        a text task's tokenizer
    probes/                           the probes' JSONL, summaries and figures
    ablations/                        `progdistill ablate`
    tensorboard/                      when TensorBoard is installed (progdistill.store.trackers)
    wandb/, mlruns/                   with --report-to wandb, mlflow
    results.json, summary.md, accuracy.png

A run directory belongs to one config: rerunning the same config reuses the finished teacher and finished
students; a config that only adds seeds or schedules (:func:`grows`) keeps them too and trains the new
students; any other config is refused (with the differing fields) unless ``overwrite=True``. Every module
that reads or writes a run directory goes through :class:`RunDir` instead of re-deriving these paths.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import traceback
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from progdistill.core.config import ConfigError, current_names, diff
from progdistill.core.distributed import is_main
from progdistill.core.files import atomic_write_json, atomic_write_text, read_metrics
from progdistill.experiment import (
    ExperimentConfig,
    build_model,
    check_task_data,
    config_hash,
    load_config,
    student_names,
    teacher_header,
    without_plugins,
)
from progdistill.store.lock import job_id, lock_holder
from progdistill.store.trajectory import MANIFEST, Trajectory, TrajectoryError
from progdistill.tasks.base import Task

STUDENT_WEIGHTS = "final.safetensors"
# The error that stopped a student's (or the teacher's) training, in its directory; `progdistill status` shows
# its last line. Removed when training starts again.
FAILURE = "error.txt"
RESUME_STATE = "resume.pt"
# Seconds spent by earlier invocations of `run` that did not finish (added to the run's wall time); updated at
# every evaluation record, so a SIGKILL loses only the seconds since the last one.
EARLIER_WALL_TIME = ".wall-time-of-interrupted-runs.json"
# What a run whose task and teacher are unchanged keeps when --overwrite replaces the rest.
TEACHER_OUTPUTS = ("teacher", "tokenizer", "tensorboard/teacher")
# What a run (and `ablate`) writes into its directory; --overwrite deletes these, the config files last, so that
# an interrupted deletion leaves a directory the next --overwrite still recognizes as a run.
OUTPUTS = (
    "teacher",
    "students",
    "jobs",
    "ablations",
    "tensorboard",
    "wandb",
    "mlruns",
    "probes",
    "tokenizer",
    "results.json",
    "summary.md",
    "accuracy.png",
    EARLIER_WALL_TIME,
    "data.sha256",
    "config.sha256",
    "config.json",
)
# The fields summary.md reads of a probe summary, by summary name prefix: a summary without them is refused.
SUMMARY_KEYS = {"ngram-oracle": {"scores", "masked_lm_loss", "metric", "median"}}


class RunDir:
    """The run directory at ``path`` (which need not exist yet)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # -- layout ----------------------------------------------------------------------------------------------
    @property
    def config_file(self) -> Path:
        return self.path / "config.json"

    @property
    def teacher(self) -> Path:
        return self.path / "teacher"

    @property
    def students(self) -> Path:
        return self.path / "students"

    @property
    def probes(self) -> Path:
        return self.path / "probes"

    @property
    def results_file(self) -> Path:
        return self.path / "results.json"

    @property
    def summary_file(self) -> Path:
        return self.path / "summary.md"

    @property
    def accuracy_figure(self) -> Path:
        return self.path / "accuracy.png"

    @property
    def tokenizer_file(self) -> Path:
        return self.path / "tokenizer" / "tokenizer.json"

    @property
    def ablations(self) -> Path:
        return self.path / "ablations"

    def tensorboard(self, name: str) -> Path:
        return self.path / "tensorboard" / name

    def student_metrics(self, name: str) -> Path:
        return self.students / name / "metrics.jsonl"

    def teacher_metrics(self) -> list[dict]:
        return read_metrics(self.teacher / "metrics.jsonl")

    def config(self, lenient: bool = False) -> ExperimentConfig:
        """The run's config.json, with the plugins it records imported. Raises ``ConfigError`` when it is missing or
        invalid, or a plugin cannot be imported -- unless ``lenient`` (commands that only show files): then a
        missing plugin's variants are stand-ins that keep their type name (:meth:`ExperimentConfig.from_dict`)."""
        return load_config(self.config_file, lenient=lenient)

    def config_json(self) -> dict[str, Any]:
        """config.json as written (the content its recorded hash was computed from); ``ConfigError`` if unreadable."""
        try:
            return json.loads(self.config_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config {self.config_file}: {exc}") from None

    # -- claiming ----------------------------------------------------------------------------------------------
    def claim(
        self, config: ExperimentConfig, overwrite: bool, data_digest: str | None = None, retrain_teacher: bool = False
    ) -> None:
        """Make this the run directory of ``config`` (``config.json`` plus its hash in ``config.sha256``, and
        the task data's hash in ``data.sha256``); refuse a directory that holds another run's results, listing
        the differing fields, or results trained on a grammar / corpus whose content has changed since.
        Raises ``ConfigError`` saying what to do.

        ``overwrite`` of a run whose task and teacher are unchanged keeps the teacher (:data:`TEACHER_OUTPUTS`);
        its checkpoints are verified first, so a damaged teacher raises ``TrajectoryError`` before anything is
        deleted (:meth:`verify_teacher`). ``retrain_teacher`` deletes the teacher too, and with it everything
        trained from it, even when the config is unchanged. A run that is kept (the same config, or one grown by
        seeds or schedules) is checked first (:meth:`check_reusable`), and a config.json or config.sha256 that
        cannot be read is refused unless ``overwrite``; files that already hold what would be written are not
        rewritten."""
        out = self.path
        saved, digest, data = out / "config.json", out / "config.sha256", out / "data.sha256"
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out} is a file, not a directory; choose another --out")
        recorded_data = data.read_text(encoding="utf-8").strip() if data.exists() else None
        if saved.exists() and recorded_data not in (None, data_digest) and not overwrite:
            raise ConfigError(
                f"{out} holds results trained on other task data: the content of the grammar or "
                "corpus file named in the config has changed since (its sha256 differs from "
                "data.sha256); choose another --out or pass --overwrite to replace them"
            )
        if saved.exists() and recorded_data not in (None, data_digest):
            self.remove_outputs()  # --overwrite on a run whose data changed: drop its results (config files last)
        elif saved.exists():
            self._claim_run(config, overwrite, retrain_teacher)
        elif out.exists() and any(p.name != ".lock" for p in out.iterdir()):
            # never delete in a directory that is not ours, even with --overwrite
            raise ConfigError(
                f"{out} is not empty and is not a progdistill run directory (no config.json); "
                "choose another --out (--overwrite replaces only progdistill runs)"
            )
        out.mkdir(parents=True, exist_ok=True)
        for path, text in (
            (saved, json.dumps(config.to_dict(), indent=2) + "\n"),
            (digest, config_hash(config) + "\n"),
            (data, None if data_digest is None else data_digest + "\n"),
        ):
            if text is not None and not _holds(path, text):  # a rerun rewrites nothing
                atomic_write_text(path, text)
        self._remove_stale_temporaries()

    def _claim_run(self, config: ExperimentConfig, overwrite: bool, retrain_teacher: bool) -> None:
        """:meth:`claim` of a directory that holds a config.json: reuse, grow, replace or refuse the run in it,
        after checking what is kept (:meth:`check_reusable`, :meth:`_check_kept_teacher`)."""
        out, saved, digest = self.path, self.config_file, self.path / "config.sha256"
        nothing = "nothing was deleted or written"
        # the plugins' file paths are rewritten, never compared (a run whose plugin file moved is the same run)
        new = without_plugins(config.to_dict())
        recorded = digest.read_text(encoding="utf-8").strip() if digest.exists() else None
        try:
            old = without_plugins(json.loads(saved.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            if recorded is None:
                old = None  # not a progdistill run (refused below)
            elif not (overwrite or retrain_teacher):  # config.sha256 beside it: our run, its config.json damaged
                raise ConfigError(
                    f"{saved} is unreadable ({exc}), though {digest.name} beside it marks {out} as a "
                    f"progdistill run; {nothing}. Restore it, or pass --overwrite to replace the run"
                ) from None
            else:
                self._replace_unknown_run(config, retrain_teacher)
                return
        if not _is_run_config(old):  # e.g. a Hugging Face model directory: never ours to replace
            raise ConfigError(
                f"{out} is not a progdistill run directory (its config.json is not a progdistill "
                "config); choose another --out (--overwrite replaces only progdistill runs)"
            )
        if recorded is not None and not re.fullmatch(r"[0-9a-f]{64}", recorded):
            if not overwrite:
                raise ConfigError(
                    f"{digest} is damaged (it holds no sha256 hash); {nothing}. Restore it, or delete it if "
                    f"{saved} is this run's own config (a rerun writes it again), or pass --overwrite to "
                    "replace the run"
                )
            edited = True  # replaced as an edited config is
        else:
            edited = recorded not in (None, config_hash(old))
        old = current_names(old)  # a run written before a variant's rename is the same run
        if not edited and not retrain_teacher and grows(old, new):
            self.check_reusable(config)  # a grown sweep: the finished students stay, run trains the new ones
        elif old != new or edited:
            same_teacher = not edited and all(old.get(k) == new[k] for k in ("task", "teacher"))
            if not overwrite:
                changes = diff(old, new)
                if edited:
                    changes.insert(0, f"config.json no longer matches the hash in {digest.name}; it was edited")
                raise ConfigError(
                    f"{out} holds results of a different config ({'; '.join(changes[:8])}); "
                    "choose another --out or pass --overwrite to replace them"
                    + (
                        " (the task and teacher are unchanged: --overwrite keeps the finished "
                        "teacher and trains only the students again)"
                        if same_teacher
                        else ""
                    )
                )
            # The teacher depends on the task and teacher config only (train_teacher checks its trajectory's
            # header again before reusing it); everything else is replaced -- once what is kept is known
            # to be usable, so that a failure deletes nothing.
            keep = TEACHER_OUTPUTS if same_teacher and not retrain_teacher else ()
            if keep:
                self._check_kept_teacher(config, "rerun with --retrain-teacher")
            self.remove_outputs(keep=keep)
        elif retrain_teacher:
            self.remove_outputs()
        else:
            self.check_reusable(config)  # the same config: run reuses and resumes what is there

    def _replace_unknown_run(self, config: ExperimentConfig, retrain_teacher: bool) -> None:
        """``--overwrite`` (or ``retrain_teacher``) of a run whose config.json is unreadable: everything goes but
        a teacher whose manifest records ``config``'s teacher (verified first, as :meth:`claim` keeps one)."""
        try:
            same_teacher = Trajectory(self.teacher).header == teacher_header(config)
        except TrajectoryError:
            same_teacher = False
        keep = TEACHER_OUTPUTS if same_teacher and not retrain_teacher else ()
        if keep:
            self._check_kept_teacher(config, "rerun with --retrain-teacher")
        self.remove_outputs(keep=keep)

    def _check_kept_teacher(self, config: ExperimentConfig, again: str) -> None:
        """Verify the teacher files that a run of ``config`` would reuse (:meth:`reusable_teacher`, every
        checkpoint hashed; the tokenizer)."""
        trajectory = self.reusable_teacher(config, again)
        if trajectory is not None and trajectory.complete:
            self.verify_teacher(trajectory, again)
        if self.tokenizer_file.exists():
            self.task(config)  # loads the saved tokenizer (a damaged one raises here, before any deletion)

    def reusable_teacher(self, config: ExperimentConfig, again: str | None = None) -> Trajectory | None:
        """The teacher trajectory that a run of ``config`` reuses (complete) or resumes (not complete), or None
        when there is none worth keeping: no teacher directory, one that a run stopped before its first
        checkpoint left (no manifest, no checkpoint file, no resume state), or the single final checkpoint of a
        co-training-only run when ``config`` needs the whole trajectory (:func:`teacher_header`).

        Reads the manifest and the metrics, and looks for the checkpoint files (they are hashed when used:
        :meth:`verify_teacher`). Raises ``TrajectoryError`` (:meth:`damaged_teacher`: nothing was deleted or
        written; restore the file or train the teacher again, ``again``) for an unreadable or missing manifest
        beside checkpoints, a manifest of another teacher config, a finished trajectory with a missing
        checkpoint file or unfinished or unreadable ``metrics.jsonl``, and an unreadable resume state."""
        directory, header = self.teacher, teacher_header(config)
        if not directory.is_dir():
            return None
        state = directory / RESUME_STATE
        if not (directory / MANIFEST).exists():
            saved = sorted((directory / "checkpoints").glob("*.safetensors"))
            if not saved and not state.exists():
                return None
            raise self.damaged_teacher(
                TrajectoryError(
                    f"{directory / MANIFEST} is missing, but {directory} holds "
                    + (f"{len(saved)} checkpoint file(s)" if saved else f"the resume state {state.name}")
                ),
                again,
            )
        try:
            trajectory = Trajectory(directory)
        except TrajectoryError as exc:
            raise self.damaged_teacher(exc, again) from None
        if trajectory.header != header:
            if trajectory.header == {**header, "co_training": True}:
                return None  # a co-training-only run's final checkpoint, grown by schedules that need them all
            changes = diff(trajectory.header, header)
            raise self.damaged_teacher(
                TrajectoryError(
                    f"{directory / MANIFEST} records a teacher of another config than {self.config_file.name} "
                    f"({'; '.join(changes[:4])})"
                ),
                again,
            )
        if trajectory.complete:
            missing = [s for s in trajectory.steps if not (directory / trajectory.entry(s)["file"]).exists()]
            if missing:  # files are hashed when students load them; a missing one is named now
                raise self.damaged_teacher(
                    TrajectoryError(
                        f"the finished teacher trajectory {directory} is damaged: the checkpoint file of step "
                        f"{missing[0]} is missing ({len(missing)} missing)"
                    ),
                    again,
                )
            problem = _unfinished_metrics(directory / "metrics.jsonl", config.teacher.steps)
            if problem is not None:
                raise self.damaged_teacher(TrajectoryError(f"the finished teacher's {problem}"), again)
        elif state.exists():
            problem = _unreadable_state(state, ["teacher"])
            if problem is not None:
                raise self.damaged_teacher(TrajectoryError(f"the teacher's resume state {problem}"), again)
        elif trajectory.steps[-1:] == [config.teacher.steps]:  # stopped after its last checkpoint, unmarked:
            problem = _unfinished_metrics(directory / "metrics.jsonl", config.teacher.steps)  # train_teacher marks it
            if problem is not None:
                raise self.damaged_teacher(TrajectoryError(f"the teacher's {problem}"), again)
        elif max(trajectory.steps, default=0) > 0:
            raise self.damaged_teacher(
                TrajectoryError(
                    f"the unfinished teacher trajectory {directory} has checkpoints up to step "
                    f"{trajectory.steps[-1]} but no resume state {state.name} to continue from"
                ),
                again,
            )
        else:
            return None  # stopped before its first resume state: nothing to keep
        return trajectory

    def check_reusable(self, config: ExperimentConfig) -> None:
        """Refuse, before a rerun of ``config`` writes or deletes anything, the files it would reuse or resume
        from but cannot read: the teacher's (:meth:`reusable_teacher`: ``TrajectoryError``), a finished student's
        final weights (unreadable) or ``metrics.jsonl`` (missing, unreadable or not ending at the last step), a
        student's resume state (unreadable) and ``results.json`` (unreadable: it holds the run's wall time).
        Raises ``ConfigError`` naming the file, saying that nothing was deleted or written and what to do."""
        self.reusable_teacher(config)
        nothing = "nothing was deleted or written"
        for name in student_names(config):
            directory = self.students / name
            if not (directory / STUDENT_WEIGHTS).exists():
                continue  # not finished: trained or resumed from its state
            problem = _unreadable_weights(directory / STUDENT_WEIGHTS) or _unfinished_metrics(
                directory / "metrics.jsonl", config.student.steps
            )
            if problem is not None:
                raise ConfigError(
                    f"the finished student {name} is damaged: its {problem}; {nothing}. Restore the file, "
                    f"or delete {directory} to train that student again"
                )
        for state in sorted(self.students.glob(".resume-*.pt")) if self.students.is_dir() else ():
            problem = _unreadable_state(state)
            if problem is not None:
                raise ConfigError(
                    f"the students' resume state {problem}; {nothing}. Restore it, or delete it to train "
                    "those students from step 0"
                )
        if self.results_file.exists() and self.finished_results() is None:
            raise ConfigError(
                f"{self.results_file} is unreadable (empty or not JSON); {nothing}. Restore it, or delete it: "
                "a rerun writes it again from the run's files, but the wall time of the earlier invocations "
                "it recorded is lost"
            )

    def verify_teacher(self, trajectory: Trajectory | None = None, again: str | None = None) -> Trajectory:
        """The teacher trajectory (default: read now) with every checkpoint file checked against its sha256.
        Raises ``TrajectoryError`` naming the missing or corrupted file, saying that nothing was deleted or
        written and how to train the teacher again: ``again`` (default: the ``progdistill run ...
        --retrain-teacher`` command of this directory)."""
        trajectory = Trajectory(self.teacher) if trajectory is None else trajectory
        try:
            trajectory.verify()
        except TrajectoryError as exc:
            raise self.damaged_teacher(exc, again) from None
        return trajectory

    def damaged_teacher(self, exc: TrajectoryError, again: str | None = None) -> TrajectoryError:
        """``exc`` (a missing or corrupted checkpoint file of the teacher) saying that nothing was deleted or
        written and how to train the teacher again (see :meth:`verify_teacher`)."""
        again = again or f"train it again with `progdistill run {self.config_file} --out {self.path} --retrain-teacher`"
        return TrajectoryError(
            f"{exc}; nothing was deleted or written. Restore the file, or {again} (this "
            "deletes the teacher and everything trained from it: students, probes, "
            "ablations, results)"
        )

    def _remove_stale_temporaries(self) -> None:
        """Delete the ``.NAME.tmpPID`` files that atomic writes (:mod:`progdistill.store.trajectory`; figures as
        ``.STEM.tmpPID.png``) leave behind when a process is killed mid-write; called under the run's lock, so
        no live writer owns one -- except student jobs of a launcher (:mod:`progdistill.recipes.launcher`), which hold
        their students' locks only: nothing under students/ is touched while one of them runs."""
        busy = self.students.is_dir() and any(lock_holder(d) for d in self.students.iterdir() if d.is_dir())
        for path in self.path.rglob(".*.tmp*"):
            if busy and self.students in path.parents:
                continue
            if re.fullmatch(r"\..+\.tmp\d+(\.\w+)?", path.name) and path.is_file():  # also .accuracy.tmpPID.png
                path.unlink()

    def remove_outputs(self, keep: tuple[str, ...] = ()) -> None:
        """Delete what a run wrote (:data:`OUTPUTS`) except the paths in ``keep`` (relative, such as
        "tensorboard/teacher"), the config files last."""
        for name in OUTPUTS:
            path = self.path / name
            if name in keep:
                continue
            kept_children = {k.split("/", 1)[1] for k in keep if k.startswith(name + "/")}
            targets = (
                [c for c in path.iterdir() if c.name not in kept_children]
                if kept_children and path.is_dir()
                else [path]
            )
            for target in targets:
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()

    # -- failures ----------------------------------------------------------------------------------------------
    def record_failure(self, directory: Path, exc: BaseException) -> None:
        """Write the traceback of ``exc``, which stopped the training in ``directory`` (the teacher's or a
        student's), to ``directory/error.txt``, headed by the host, process and job. Best effort: a write that
        fails (a full disk, often the very error) is skipped, so that ``exc`` is what propagates."""
        where = f"host {socket.gethostname()}, process {os.getpid()}" + (f", job {job_id()}" if job_id() else "")
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        try:
            directory.mkdir(parents=True, exist_ok=True)
            atomic_write_text(directory / FAILURE, f"# {where}\n{text}")
        except OSError:
            pass

    def clear_failure(self, directory: Path) -> None:
        (directory / FAILURE).unlink(missing_ok=True)

    @staticmethod
    def failure(directory: Path) -> str | None:
        """The last line of the error recorded in ``directory`` (e.g. "NonFiniteError: ..."), or None."""
        try:
            lines = [line for line in (directory / FAILURE).read_text(encoding="utf-8").splitlines() if line.strip()]
        except OSError:
            return None
        return lines[-1].strip() if lines else None

    # -- reading -----------------------------------------------------------------------------------------------
    def finished_results(self) -> dict[str, Any] | None:
        """The results.json of a run that finished before, or None (absent or unreadable)."""
        try:
            return json.loads(self.results_file.read_text())
        except (OSError, ValueError):
            return None

    def student_finished(self, name: str, steps: int, students: Path | None = None) -> bool:
        """Whether student ``name`` (under ``students``, default ``students/``) wrote its final weights and
        the metrics of its last step ``steps``."""
        directory = (students or self.students) / name
        if not (directory / "metrics.jsonl").exists() or not (directory / STUDENT_WEIGHTS).exists():
            return False
        records = read_metrics(directory / "metrics.jsonl")
        return bool(records) and records[-1]["step"] == steps

    def task(self, config: ExperimentConfig) -> Task:
        """``config.task`` prepared for this run (:meth:`~progdistill.tasks.base.Task.prepare`: e.g. a text
        task with the run's tokenizer, loaded from the directory or trained and saved into it)."""
        return config.task.prepare(self.path)

    def load_model(self, config: ExperimentConfig, which: str, step: int | None = None, task: Task | None = None):
        """A trained model of this run, frozen in eval mode: ``which`` = "teacher" (at checkpoint ``step``,
        default the final one) or a student name such as "progressive-seed0" (its final weights). ``task``:
        the prepared task (default: prepared now). Raises ``TrajectoryError`` when the weights are missing."""
        if task is None:
            task = self.task(config) if is_main() else config.task
        if which == "teacher":
            trajectory = Trajectory(self.teacher)
            state = trajectory.load(trajectory.final_step if step is None else step)
            model_cfg = config.teacher.model
        else:
            path = self.students / which / STUDENT_WEIGHTS
            if not path.exists():
                raise TrajectoryError(f"student weights {path} are missing (has the student finished?)")
            state = load_file(str(path))
            model_cfg = config.student.model
        model = build_model(task, model_cfg, [0], "unused")
        model.load_state_dict(state)
        return model.eval().requires_grad_(False)

    def probe_summaries(self) -> dict[str, dict[str, Any]]:
        """Every ``probes/<name>-summary.json``, by name. Raises ``ConfigError`` naming the file when one is not
        valid JSON, or lacks the fields the report reads (:data:`SUMMARY_KEYS`)."""
        summaries = {}
        for path in sorted(self.probes.glob("*-summary.json")):
            try:
                summary = json.loads(path.read_text(encoding="utf-8"))
                for prefix, keys in SUMMARY_KEYS.items():
                    if path.name.startswith(prefix) and not keys <= set(summary):
                        raise ValueError(f"it lacks {sorted(keys - set(summary))}")
            except ValueError as exc:
                raise ConfigError(
                    f"{path} is unreadable ({exc}); delete it and rerun the probe that writes it"
                ) from None
            summaries[path.name[: -len("-summary.json")]] = summary
        return summaries

    def check_inputs(self, config: ExperimentConfig, teacher: bool = True) -> None:
        """Refuse, before a probe does any work, a run directory whose config.json or task data (grammar,
        corpus) changed after the run (the probe would describe another config than the one trained), a
        damaged or unreadable results.json, a probe summary the report cannot read, and -- when the probe reads
        the teacher (``teacher``) -- a teacher trajectory that is unfinished (still training, or interrupted:
        the probe would describe part of it), has a missing or corrupted checkpoint, or has lost its metrics.
        Raises ``ConfigError`` (or ``TrajectoryError`` for a missing or damaged teacher) saying that nothing
        was written."""
        run_dir = self.path
        if self.results_file.exists() and self.finished_results() is None:
            raise ConfigError(
                f"{self.results_file} is unreadable (empty or not JSON); rerun `progdistill run "
                f"{self.config_file} --out {run_dir}` to rewrite it (nothing was written)"
            )
        if teacher:
            trajectory = Trajectory(self.teacher)  # TrajectoryError: no teacher directory or manifest
            if not trajectory.complete:
                raise ConfigError(
                    f"the teacher trajectory {self.teacher} is unfinished (still training, or "
                    f"interrupted at step {max(trajectory.steps, default=0)} of "
                    f"{config.teacher.steps}); finish it with `progdistill run "
                    f"{self.config_file} --out {run_dir}` first (nothing was written)"
                )
            self.verify_teacher(trajectory)
        if (teacher or self.results_file.exists()) and not (self.teacher / "metrics.jsonl").exists():
            raise ConfigError(
                f"{run_dir} is damaged: its teacher has no metrics.jsonl; rerun the experiment (nothing was written)"
            )
        digest = run_dir / "config.sha256"
        if digest.exists() and digest.read_text(encoding="utf-8").strip() != config_hash(self.config_json()):
            raise ConfigError(
                f"{self.config_file} was edited after the run (it no longer matches "
                f"{digest.name}); restore it or rerun the experiment (nothing was written)"
            )
        data = run_dir / "data.sha256"
        if data.exists() and data.read_text(encoding="utf-8").strip() != check_task_data(config):
            raise ConfigError(
                f"the task data (grammar or corpus) of {run_dir} changed after the run (it no longer "
                f"matches {data.name}); restore it or rerun the experiment (nothing was written)"
            )
        self.probe_summaries()

    # -- wall time -------------------------------------------------------------------------------------------
    def earlier_wall_time(self) -> float:
        """Seconds spent by earlier invocations that did not finish (0 when none, or unreadable): recorded at
        every evaluation record while training and when an invocation stops on an exception, so one killed
        outright (SIGKILL) loses only the seconds since its last record."""
        try:
            return float(json.loads((self.path / EARLIER_WALL_TIME).read_text(encoding="utf-8"))["seconds"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0.0

    def record_interrupted_wall_time(self, seconds: float) -> None:
        atomic_write_json(self.path / EARLIER_WALL_TIME, {"seconds": seconds})

    def clear_interrupted_wall_time(self) -> None:
        (self.path / EARLIER_WALL_TIME).unlink(missing_ok=True)


def grows(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether config ``new`` (a config.json's content) only adds students to ``old``: every field equal except
    ``seeds`` (not fewer) and ``schedules`` (each old schedule still there, unchanged), and at least one added.
    Every student of ``old`` is then a student of ``new`` trained exactly as ``new`` would train it (a
    student's numbers do not depend on the others it trains beside: :func:`progdistill.train.loop.fit`), so a
    rerun trains the missing ones only (an incremental sweep)."""
    if not (isinstance(old, dict) and isinstance(new, dict)) or old.keys() != new.keys():
        return False
    rest = [k for k in new if k not in ("seeds", "schedules")]
    try:
        seeds_grow = int(new["seeds"]) >= int(old["seeds"])
        schedules_kept = all(s in new["schedules"] for s in old["schedules"])
    except (TypeError, ValueError, KeyError):
        return False
    return (
        all(old[k] == new[k] for k in rest)
        and seeds_grow
        and schedules_kept
        and (new["seeds"] > old["seeds"] or len(new["schedules"]) > len(old["schedules"]))
    )


def _is_run_config(data: Any) -> bool:
    """Whether a parsed config.json has the shape of an ExperimentConfig (a run directory's, maybe another
    version's or hand-edited), as opposed to some other tool's config.json."""
    return isinstance(data, dict) and {"preset", "task", "teacher", "student", "schedules"} <= set(data)


def _unfinished_metrics(path: Path, steps: int) -> str | None:
    """What is wrong with the ``metrics.jsonl`` at ``path`` of a model that finished ``steps`` steps (missing,
    unreadable, not ending at the last step), or None."""
    try:
        records = read_metrics(path, strict=True)
    except FileNotFoundError:
        return f"{path} is missing"
    except (OSError, ValueError) as exc:
        return f"{path} is unreadable ({exc})"
    last = records[-1].get("step") if records and isinstance(records[-1], dict) else None
    if last != steps:
        return f"{path} ends at step {last}, not at the last step {steps}"
    return None


def _unreadable_weights(path: Path) -> str | None:
    """Why the safetensors file at ``path`` cannot be read (its header, and a size that holds every tensor
    the header lists: a truncated or garbled file), or None; the tensors' bytes are not read."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            for key in fh.keys():  # noqa: SIM118 (a safetensors handle is no dict: it has no __iter__)
                fh.get_slice(key).get_shape()
    except Exception as exc:  # safetensors raises its own error types
        return f"{path} is unreadable ({exc})"
    return None


def _unreadable_state(path: Path, names: list[str] | None = None) -> str | None:
    """Why the resume state at ``path`` (``torch.save``, a zip archive) cannot be resumed from (unreadable, not
    a training state, or, given ``names``, another model's), or None. The archive is memory-mapped (its tensors
    are not read), so this costs little whatever the model's size."""
    try:
        state = torch.load(path, mmap=True, weights_only=False, map_location="cpu")
    except Exception as exc:  # zip, pickle and torch errors alike: the file cannot be resumed from
        return f"{path} is unreadable ({_first_sentence(exc)})"
    if not isinstance(state, dict) or "names" not in state or "step" not in state:
        return f"{path} is not a training state (no member names and step)"
    if names is not None and state["names"] != names:
        return f"{path} is the state of {state['names']}, not of {names}"
    return None


def _first_sentence(exc: Exception) -> str:
    """The first sentence of an error message (torch's go on with advice that does not apply here)."""
    return str(exc).split(". ")[0].strip()


def _holds(path: Path, text: str) -> bool:
    """Whether the file at ``path`` holds exactly ``text``."""
    try:
        return path.read_text(encoding="utf-8") == text
    except (OSError, UnicodeDecodeError):
        return False
