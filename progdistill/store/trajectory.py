"""The teacher trajectory store: checkpoints saved during training, with a JSON manifest.

Layout of a trajectory directory::

    manifest.json                     format version, task and model config, one entry per checkpoint
    checkpoints/step_00001000.safetensors

Each manifest entry holds ``step``, ``file`` (relative path), ``sha256`` of the file, and the checkpoint's
evaluation metrics (``eval_accuracy``, ``eval_loss``, ...). Files are written to a temporary name, flushed
and renamed, and a checkpoint enters the manifest only after its file is complete and hashed, so a crash
never leaves the manifest pointing at a partial file. Loading verifies the hash; a missing or corrupted
checkpoint raises :class:`TrajectoryError` naming the file and the step -- never a silent fallback.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from progdistill.core.config import current_names
from progdistill.core.files import atomic_write, atomic_write_json
from progdistill.distill.schedules import FINAL

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class TrajectoryError(RuntimeError):
    """A trajectory directory, manifest or checkpoint is missing, corrupted or inconsistent."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cpu_state(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A copy of ``state_dict`` as separate contiguous CPU tensors, ready for ``safetensors``: weights a model
    ties (e.g. BERT's input embedding and output decoder) are stored once per name, and load back tied."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state_dict.items()}


class TrajectoryWriter:
    """Appends checkpoints to a trajectory directory.

    ``header`` (task and model config, training config) is written into the manifest; opening a directory
    that already has a manifest with a different header is an error, so one trajectory never mixes runs.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        header: dict[str, Any],
        max_checkpoints: int | None = None,
        budget_metric: str = "eval_accuracy",
    ):
        if max_checkpoints is not None and max_checkpoints < 3:
            raise TrajectoryError(
                f"max_checkpoints={max_checkpoints} is invalid: must be >= 3 (the first, "
                "the latest and at least one in between) or None for no budget"
            )
        self.max_checkpoints = max_checkpoints
        self.budget_metric = budget_metric
        self.directory = Path(directory)
        self.path = self.directory / MANIFEST
        if self.path.exists():
            manifest = read_manifest(self.directory)
            if manifest["header"] != header:
                raise TrajectoryError(
                    f"{self.path} belongs to a run with a different config; "
                    "choose another directory or remove it explicitly"
                )
            self.manifest = manifest
        else:
            self.manifest = {"format_version": FORMAT_VERSION, "header": header, "complete": False, "checkpoints": []}
        (self.directory / "checkpoints").mkdir(parents=True, exist_ok=True)

    @property
    def steps(self) -> list[int]:
        return [c["step"] for c in self.manifest["checkpoints"]]

    def save(self, step: int, state_dict: dict[str, torch.Tensor], metrics: dict[str, float]) -> None:
        """Save the weights at ``step`` (contiguous CPU copies) and add them to the manifest."""
        if self.steps and step <= self.steps[-1]:
            raise TrajectoryError(f"checkpoint step {step} must be after the last saved step {self.steps[-1]}")
        rel = f"checkpoints/step_{step:08d}.safetensors"
        hashed = []

        def write(tmp: Path) -> None:
            save_file(cpu_state(state_dict), str(tmp))
            hashed.append(sha256_file(tmp))

        atomic_write(self.directory / rel, write)
        digest = hashed[0]
        self.manifest["checkpoints"].append({"step": step, "file": rel, "sha256": digest, **metrics})
        if self.max_checkpoints is not None and len(self.manifest["checkpoints"]) > self.max_checkpoints:
            self._thin()
        self._flush()

    def _thin(self) -> None:
        """Drop the one interior checkpoint whose ``budget_metric`` is best predicted by linear interpolation
        between its neighbours: plateaus are thinned first and checkpoints stay dense where the curve moves
        fast (the phase transition). The first and the latest checkpoints are always kept. The dropped entry
        moves to the manifest's ``thinned`` list with the reason, and its file is deleted."""
        entries = self.manifest["checkpoints"]

        def error(i: int) -> float:
            a, b, c = entries[i - 1], entries[i], entries[i + 1]
            w = (b["step"] - a["step"]) / (c["step"] - a["step"])
            return abs(b[self.budget_metric] - ((1 - w) * a[self.budget_metric] + w * c[self.budget_metric]))

        victim = min(range(1, len(entries) - 1), key=lambda i: (error(i), entries[i]["step"]))
        gap = error(victim)
        dropped = entries.pop(victim)
        reason = (
            f"checkpoint budget {self.max_checkpoints}: {self.budget_metric} "
            f"{dropped[self.budget_metric]:.4g} lay within {gap:.3g} of the interpolation between its "
            "neighbours"
        )
        self.manifest.setdefault("thinned", []).append(
            {"step": dropped["step"], self.budget_metric: dropped[self.budget_metric], "reason": reason}
        )
        self.manifest["checkpoint_budget"] = self.max_checkpoints
        (self.directory / dropped["file"]).unlink(missing_ok=True)

    def truncate(self, after_step: int) -> None:
        """Forget the checkpoints saved after ``after_step`` (when a run resumes from an earlier state)."""
        keep = [c for c in self.manifest["checkpoints"] if c["step"] <= after_step]
        for entry in self.manifest["checkpoints"][len(keep) :]:
            (self.directory / entry["file"]).unlink(missing_ok=True)
        self.manifest["checkpoints"] = keep
        self.manifest["complete"] = False
        self._flush()

    def finish(self, **extra: Any) -> None:
        """Mark the trajectory complete (a finished run can be reused); ``extra`` goes into the manifest."""
        self.manifest.update(extra)
        self.manifest["complete"] = True
        self._flush()

    def _flush(self) -> None:
        atomic_write_json(self.path, self.manifest)


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    if not Path(directory).is_dir():
        raise TrajectoryError(f"trajectory directory {directory} does not exist")
    if not path.exists():
        raise TrajectoryError(f"{directory} is not a trajectory: it has no {MANIFEST}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TrajectoryError(f"{path} is not valid JSON: {exc}") from None
    for key in ("format_version", "header", "checkpoints"):
        if key not in manifest:
            raise TrajectoryError(f"{path} has no {key!r} field; is it a progdistill manifest?")
    if manifest["format_version"] != FORMAT_VERSION:
        raise TrajectoryError(
            f"{path} has format_version {manifest['format_version']}; this progdistill reads version {FORMAT_VERSION}"
        )
    return manifest


class Trajectory:
    """Read side of a trajectory directory: list steps, read metrics, load verified weights."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.manifest = read_manifest(self.directory)
        self._by_step = {c["step"]: c for c in self.manifest["checkpoints"]}
        self._verified: dict[int, tuple[int, int]] = {}  # step -> (mtime_ns, size) when its hash matched

    @property
    def header(self) -> dict[str, Any]:
        """What the trajectory was trained for (task, model, training config), with variants written under a
        former name read under today's (:func:`progdistill.core.config.current_names`)."""
        return current_names(self.manifest["header"])

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    @property
    def steps(self) -> list[int]:
        """Checkpoint steps in increasing order."""
        return sorted(self._by_step)

    @property
    def final_step(self) -> int:
        if not self._by_step:
            raise TrajectoryError(f"trajectory {self.directory} has no checkpoints")
        return self.steps[-1]

    def resolve_step(self, step: int) -> int:
        """``step`` itself, or the final checkpoint's step for :data:`~progdistill.distill.schedules.FINAL` (-1),
        as in a k-shot list. Raises :class:`TrajectoryError` for a step that has no checkpoint."""
        if step == FINAL and not isinstance(step, bool):
            return self.final_step
        if isinstance(step, bool) or not isinstance(step, int) or step not in self._by_step:
            raise TrajectoryError(
                f"trajectory {self.directory} has no checkpoint at step {step!r}; steps: {self.steps} "
                f"(or FINAL = {FINAL}, the final one)"
            )
        return step

    def entry(self, step: int) -> dict[str, Any]:
        """The manifest entry of the checkpoint at ``step`` (FINAL, -1: the final one): step, file, sha256 and
        its metrics. Raises :class:`TrajectoryError` for a step without a checkpoint."""
        return self._by_step[self.resolve_step(step)]

    def metrics(self, step: int) -> dict[str, Any]:
        """The metrics recorded with the checkpoint at ``step`` (FINAL, -1: the final one; eval_accuracy,
        eval_loss, ...)."""
        return {k: v for k, v in self.entry(step).items() if k not in ("step", "file", "sha256")}

    def curve(self, metric: str) -> tuple[list[int], list[float]]:
        """(steps, values) of one metric over all checkpoints."""
        steps = self.steps
        return steps, [self._by_step[s][metric] for s in steps]

    def verify(self) -> None:
        """Check every checkpoint file against its sha256; raise :class:`TrajectoryError` naming the first
        missing or corrupted one (file and step)."""
        for step in self.steps:
            self._checked_path(step)

    def _checked_path(self, step: int) -> Path:
        step = self.resolve_step(step)
        entry = self.entry(step)
        path = self.directory / entry["file"]
        if not path.exists():
            raise TrajectoryError(f"checkpoint file {path} for step {step} is missing")
        stat = path.stat()
        if self._verified.get(step) == (stat.st_mtime_ns, stat.st_size):
            return path  # hashed already (verify() before training) and unchanged since
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            raise TrajectoryError(
                f"checkpoint file {path} for step {step} is corrupted: sha256 {digest} "
                f"does not match the manifest's {entry['sha256']}"
            )
        self._verified[step] = (stat.st_mtime_ns, stat.st_size)
        return path

    def load(self, step: int, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """The state dict saved at ``step`` (FINAL, -1: the final checkpoint), after checking its sha256 against
        the manifest. Raises :class:`TrajectoryError` for a step without a checkpoint, or a missing, corrupted or
        unreadable file."""
        step = self.resolve_step(step)
        path = self._checked_path(step)
        try:
            return load_file(str(path), device=str(device))
        except Exception as exc:  # safetensors raises its own error types
            raise TrajectoryError(f"checkpoint file {path} for step {step} cannot be read: {exc}") from None

    def load_model(self, step: int, build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
        """A model from ``build()`` with the weights saved at ``step`` (FINAL: the final checkpoint; hash checked as
        in :meth:`load`)."""
        model = build()
        model.load_state_dict(self.load(step))
        return model
