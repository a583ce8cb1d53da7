"""Public checkpoint trajectories: a Hugging Face Hub model repository's revisions as a teacher trajectory.

Pythia, OLMo, LLM360 and others publish intermediate checkpoints as revisions (branches) of one repository,
named by training step (``step1000``, ``step2000``, ...). :class:`HubTrajectory` lists them -- from the Hub, or
offline (``HF_HUB_OFFLINE=1``) from the Hugging Face cache's ``refs/`` -- takes each step from its name with a
pattern the user can give, and loads a checkpoint with ``from_pretrained(repo_id, revision=...)``, which goes
through the cache (downloading only when online and not cached). It is a trajectory for
:class:`progdistill.integrations.hf.ProgressiveDistillationTrainer` and
:class:`progdistill.distill.teachers.TeacherPool`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from progdistill.core.optional import require
from progdistill.store.trajectory import TrajectoryError

STEP_PATTERN = r"^step(\d+)$"  # Pythia / OLMo-style revision names


def cached_revisions(repo_id: str, cache_dir: str | Path | None = None) -> list[str]:
    """The revisions (branch and tag names) of model ``repo_id`` that the Hugging Face cache has a ref for:
    the files under ``<cache>/models--<org>--<name>/refs/``. Empty when the repository is not cached."""
    hub = require("huggingface_hub", "hf", "Hub trajectories")
    cache = Path(cache_dir if cache_dir is not None else hub.constants.HF_HUB_CACHE)
    refs = cache / hub.file_download.repo_folder_name(repo_id=repo_id, repo_type="model") / "refs"
    if not refs.is_dir():
        return []
    return sorted(str(p.relative_to(refs)) for p in refs.rglob("*") if p.is_file())


class HubTrajectory:
    """The revisions of Hub model repository ``repo_id`` whose names match ``revision_pattern``, as a trajectory.

    ``model_class``: e.g. ``AutoModelForCausalLM``. ``revision_pattern``: a regular expression with one group
    capturing the step (default ``^step(\\d+)$``); revisions that do not match are ignored. ``revisions``: the
    names to consider (default: the repository's branches and tags from the Hub, or offline the cached ones,
    :func:`cached_revisions`). ``cache_dir``: the Hugging Face cache (default: ``HF_HUB_CACHE``).
    Hub revisions carry no evaluation metrics, so ``curve`` raises: use fixed schedules (one-shot, progressive,
    k-shot), not 2-shot-auto. Raises :class:`TrajectoryError` for a pattern without exactly one group, one that
    matches no revision (naming the pattern and the revisions seen), or two revisions with the same step.
    """

    def __init__(
        self,
        repo_id: str,
        model_class: Any,
        revision_pattern: str = STEP_PATTERN,
        revisions: list[str] | None = None,
        cache_dir: str | Path | None = None,
    ):
        hub = require("huggingface_hub", "hf", "Hub trajectories")
        self.repo_id, self.model_class, self.cache_dir = repo_id, model_class, cache_dir
        try:
            pattern = re.compile(revision_pattern)
        except re.error as exc:
            raise TrajectoryError(f"revision_pattern={revision_pattern!r} is not a regular expression: {exc}") from None
        if pattern.groups != 1:
            raise TrajectoryError(
                f"revision_pattern={revision_pattern!r} is invalid: it needs exactly one group "
                r"capturing the step, e.g. '^step(\d+)$'"
            )
        if revisions is None:
            if hub.constants.HF_HUB_OFFLINE:
                revisions = cached_revisions(repo_id, cache_dir)
            else:
                refs = hub.list_repo_refs(repo_id)
                revisions = [r.name for r in [*refs.branches, *refs.tags]]
        self.revisions: dict[int, str] = {}
        for name in revisions:
            match = pattern.search(name)
            if match is None:
                continue
            step = int(match.group(1))
            if step in self.revisions:
                raise TrajectoryError(
                    f"revisions {self.revisions[step]!r} and {name!r} of {repo_id} both match "
                    f"revision_pattern={revision_pattern!r} with step {step}"
                )
            self.revisions[step] = name
        if not self.revisions:
            where = "in the Hugging Face cache (offline)" if hub.constants.HF_HUB_OFFLINE else "on the Hub"
            shown = ", ".join(revisions[:12]) + (" ..." if len(revisions) > 12 else "") or "none"
            raise TrajectoryError(
                f"revision_pattern={revision_pattern!r} matches no revision of {repo_id} {where}; revisions: {shown}"
            )

    def __repr__(self) -> str:
        return f"HubTrajectory({self.repo_id!r}, steps={self.steps})"

    @property
    def steps(self) -> list[int]:
        return sorted(self.revisions)

    @property
    def final_step(self) -> int:
        return self.steps[-1]

    def metrics(self, step: int) -> dict[str, Any]:
        self._check(step)
        return {}

    def curve(self, metric: str) -> tuple[list[int], list[float]]:
        raise TrajectoryError(
            f"{self.repo_id}: Hub revisions carry no {metric!r}; use a schedule that needs no "
            "teacher curve (one-shot, progressive, k-shot)"
        )

    def verify(self) -> None:
        """Nothing to check beforehand: the Hub's files are checked by ``huggingface_hub`` when downloaded."""

    def _check(self, step: int) -> None:
        if step not in self.revisions:
            raise TrajectoryError(f"{self.repo_id} has no revision for step {step}; steps: {self.steps}")

    def load_model(self, step: int, build: Any = None) -> torch.nn.Module:
        """The teacher at ``step``: ``from_pretrained(repo_id, revision=<its revision>)`` through the cache.
        ``build`` is unused (the revision names its architecture)."""
        self._check(step)
        try:
            return self.model_class.from_pretrained(
                self.repo_id, revision=self.revisions[step], cache_dir=self.cache_dir
            )
        except Exception as exc:  # transformers / huggingface_hub raise OSError and their own subclasses
            raise TrajectoryError(
                f"{self.repo_id} revision {self.revisions[step]!r} (step {step}) cannot be loaded: {exc}"
            ) from None
