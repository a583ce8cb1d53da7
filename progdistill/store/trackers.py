"""Experiment trackers: every metrics record of the native loop, as written to ``metrics.jsonl``, also goes to
TensorBoard, Weights & Biases or MLflow (``progdistill run --report-to tensorboard,wandb,mlflow``).

Each model of a run (the teacher, each student) is one tracked run, named after it ("teacher", "ce-seed0"),
with the run's whole config as its hyperparameters (plus its name, role, schedule and seed) and the metric names
of ``metrics.jsonl`` (``eval_accuracy``, ``eval_loss``, ``train_loss``, ``lr``, ``teacher_checkpoint``, ...; in
TensorBoard under ``teacher/`` or ``student/``). Everything stays in the run directory and works
offline:

- ``tensorboard``: ``RUN/tensorboard/<model>/`` event files, the config in the HParams dashboard. The default:
  used when the ``tensorboard`` extra is installed, silently left out when not (unless named).
- ``wandb``: offline runs in ``RUN/wandb/`` (upload later with ``wandb sync RUN/wandb/offline-run-*``), unless
  ``WANDB_MODE`` says otherwise; project ``WANDB_PROJECT`` (default "progdistill"), group: the run directory's
  name. Extra ``wandb``.
- ``mlflow``: MLflow's file store ``RUN/mlruns`` (``MLFLOW_ALLOW_FILE_STORE`` is set: MLflow 3 keeps that store
  in maintenance mode), unless ``MLFLOW_TRACKING_URI`` names another; experiment ``MLFLOW_EXPERIMENT_NAME``
  (default: the run directory's name). Extra ``mlflow`` (the tracking client, ``mlflow-skinny``).

A model resumed from its saved state starts a new tracked run that first gets the records kept from before; the
interrupted one stays (MLflow: marked KILLED; W&B: an offline run never finished; TensorBoard merges both in one
directory). A training that raises or is interrupted ends its tracked runs as failed (MLflow FAILED, W&B exit
code 1). W&B writes its run files from a background service: they are complete once the process has exited.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from progdistill.core.config import ConfigError, flatten, to_dict
from progdistill.core.files import naming_disk_full
from progdistill.core.optional import MissingExtraError, require
from progdistill.store.rundir import RunDir


class Tracker:
    """One model's tracked run: :meth:`start` with the hyperparameters, :meth:`log` every record, then
    :meth:`finish` (``failed``: training raised or was interrupted). ``run_dir``: the run directory; ``model``:
    "teacher" or a student's name; ``role``: "teacher" or "student"."""

    name: ClassVar[str]  # the --report-to name
    extra: ClassVar[str]  # the progdistill extra that installs it

    def __init__(self, run_dir: Path, model: str, role: str):
        self.run_dir, self.model, self.role = Path(run_dir), model, role

    @classmethod
    def check(cls) -> None:
        """Raise :class:`~progdistill.core.optional.MissingExtraError` when the tracker's package is not installed."""
        raise NotImplementedError

    def start(self, hyperparameters: dict[str, Any]) -> None:
        raise NotImplementedError

    def log(self, metrics: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def finish(self, failed: bool = False) -> None:
        raise NotImplementedError


def _param(value: Any) -> str | int | float | bool:
    """A flattened config value as a scalar trackers accept (None and empty lists as JSON text)."""
    return value if isinstance(value, (str, int, float, bool)) else json.dumps(value)


class TensorBoard(Tracker):
    name, extra = "tensorboard", "tensorboard"

    @classmethod
    def check(cls) -> None:
        with warnings.catch_warnings():  # torch's bridge warns about its own imports on some versions
            warnings.simplefilter("ignore")
            require("torch.utils.tensorboard", "tensorboard", "--report-to tensorboard", package="tensorboard")

    # The writer's thread writes the event file; an error there (a full disk) comes back at the next call, here
    # named after the directory (naming_disk_full).

    def start(self, hyperparameters: dict[str, Any]) -> None:
        board = require("torch.utils.tensorboard", "tensorboard", "--report-to tensorboard", package="tensorboard")
        self.log_dir = RunDir(self.run_dir).tensorboard(self.model)
        with naming_disk_full(self.log_dir):
            self.writer = board.SummaryWriter(log_dir=str(self.log_dir))
            self.prefix = f"{self.role}/"
            flat = {k: _param(v) for k, v in flatten(hyperparameters).items()}
            metrics = {f"{self.prefix}{m}": 0.0 for m in ("eval_accuracy", "eval_loss", "train_loss")}
            exp, start, self._end = board.summary.hparams(flat, metrics)  # the HParams dashboard's table
            for summary in (exp, start):
                self.writer.file_writer.add_summary(summary)

    def log(self, metrics: dict[str, float], step: int) -> None:
        with naming_disk_full(self.log_dir):
            for key, value in metrics.items():
                self.writer.add_scalar(f"{self.prefix}{key}", value, step)

    def finish(self, failed: bool = False) -> None:
        with naming_disk_full(self.log_dir):
            if not failed:  # the HParams dashboard's status: success
                self.writer.file_writer.add_summary(self._end)
            self.writer.close()


class WandB(Tracker):
    name, extra = "wandb", "wandb"

    @classmethod
    def check(cls) -> None:
        require("wandb", "wandb", "--report-to wandb")

    def start(self, hyperparameters: dict[str, Any]) -> None:
        wandb = require("wandb", "wandb", "--report-to wandb")
        # console="off": a stack of students is several runs at once, which must not each wrap stdout.
        settings = wandb.Settings(console="off", silent="WANDB_SILENT" not in os.environ, x_disable_stats=True)
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or "progdistill",
            group=self.run_dir.name,
            name=self.model,
            job_type=self.role,
            dir=str(self.run_dir),
            config=hyperparameters,
            mode=None if "WANDB_MODE" in os.environ else "offline",
            reinit="create_new",
            settings=settings,
        )

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def finish(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


class MLflow(Tracker):
    name, extra = "mlflow", "mlflow"
    BATCH = 100  # MLflow's limit of params per log_batch call

    @classmethod
    def check(cls) -> None:
        require("mlflow", "mlflow", "--report-to mlflow")

    def start(self, hyperparameters: dict[str, Any]) -> None:
        mlflow = require("mlflow", "mlflow", "--report-to mlflow")
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException

        uri = os.environ.get("MLFLOW_TRACKING_URI") or (self.run_dir / "mlruns").resolve().as_uri()
        if uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = mlflow.MlflowClient(tracking_uri=uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or self.run_dir.resolve().name
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            try:
                experiment_id = self.client.create_experiment(name)
            except MlflowException:  # created meanwhile by another job of the same run
                experiment_id = self.client.get_experiment_by_name(name).experiment_id
        else:
            experiment_id = experiment.experiment_id
        run_dir = str(self.run_dir.resolve())
        # A run of this model still RUNNING was interrupted (one process trains a model at a time): say so.
        stale = self.client.search_runs(
            [experiment_id],
            f"tags.mlflow.runName = '{self.model}' and "
            f"tags.`progdistill.run_dir` = '{run_dir}' and attributes.status = 'RUNNING'",
        )
        for run in stale:
            self.client.set_terminated(run.info.run_id, status="KILLED")
        tags = {"progdistill.run_dir": run_dir, "progdistill.role": self.role}
        self.run_id = self.client.create_run(experiment_id, run_name=self.model, tags=tags).info.run_id
        params = [Param(k, v if isinstance(v, str) else json.dumps(v)) for k, v in flatten(hyperparameters).items()]
        for i in range(0, len(params), self.BATCH):
            self.client.log_batch(self.run_id, params=params[i : i + self.BATCH])

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def finish(self, failed: bool = False) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


TRACKERS: dict[str, type[Tracker]] = {t.name: t for t in (TensorBoard, WandB, MLflow)}


def resolve_report_to(report_to: str | Sequence[str] | None) -> tuple[str, ...]:
    """The trackers to use, checked before anything is trained.

    ``report_to``: names from :data:`TRACKERS` (a list, or one comma-separated string as ``--report-to``
    takes), "none" for no tracker, or None for the default: TensorBoard when installed, else none. Raises
    ``ConfigError`` for an unknown name (listing the valid ones) and :class:`~progdistill.core.optional.
    MissingExtraError` for a named tracker whose package is not installed (naming the extra)."""
    if report_to is None:
        try:
            TensorBoard.check()
        except MissingExtraError:
            return ()
        return ("tensorboard",)
    names = [n.strip() for n in report_to.split(",")] if isinstance(report_to, str) else list(report_to)
    if names == ["none"]:
        return ()
    if "none" in names:
        raise ConfigError(
            f"--report-to {','.join(names)}: 'none' turns every tracker off, so it stands alone; "
            f"give none, or tracker names from {', '.join(TRACKERS)}"
        )
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise ConfigError(
            f"--report-to {','.join(names)}: unknown tracker(s) {', '.join(map(repr, unknown))}; "
            f"valid: {', '.join(TRACKERS)} (comma-separated), or none"
        )
    names = list(dict.fromkeys(names))
    for name in names:
        TRACKERS[name].check()
    return tuple(names)


def hyperparameters(
    config, model: str, schedule: Any = None, seed: int | None = None, way: str | None = None
) -> dict[str, Any]:
    """What a model's tracked run records as hyperparameters: the run's complete config (every field, as
    ``config.json`` with defaults filled in), and ``model_name``, ``role``, and for a student ``schedule``
    (its label) and ``seed``; for a student of a further way (``config.ways``), ``way`` (its name) and the
    way's settings as ``distillation``."""
    out = dict(to_dict(config, complete=True))
    out.update(model_name=model, role="teacher" if schedule is None else "student")
    if schedule is not None:
        out.update(schedule=schedule.label, seed=seed)
    if way is not None:
        settings = next(w.distillation for w in config.ways if w.name == way)
        out.update(way=way, distillation=to_dict(settings, complete=True))
    return out


def start_trackers(
    report_to: Sequence[str] | None, run_dir: str | Path, model: str, hyperparameters: dict[str, Any]
) -> list[Tracker]:
    """Start a tracked run of ``model`` in every tracker of ``report_to`` (:func:`resolve_report_to`)."""
    role = hyperparameters.get("role", "teacher")
    trackers = []
    for name in resolve_report_to(report_to):
        tracker = TRACKERS[name](Path(run_dir), model, role)
        tracker.start(hyperparameters)
        trackers.append(tracker)
    return trackers
