"""Files a run writes: atomic writes (a temporary file and a rename, so a killed process never leaves a half-written
file) and metrics files, one JSON object per line (``metrics.jsonl``), mirrored to experiment trackers
(:mod:`progdistill.store.trackers`)."""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a flushed temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    """``obj`` as indented JSON through :func:`atomic_write_text`."""
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


class MetricsWriter:
    """Append-only JSONL writer; each record is flushed as one complete line.

    ``trackers`` (:mod:`progdistill.store.trackers`: TensorBoard, W&B, MLflow, already started) get every record's
    numeric fields under the same names, at ``record["step"]``, and are finished by :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike, trackers: Sequence[Any] = ()):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 (the writer owns it: close() closes it)
        self._trackers = list(trackers)

    def write(self, record: dict[str, Any]) -> None:
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()
        self._track(record)

    def _track(self, record: dict[str, Any]) -> None:
        metrics = {
            key: value
            for key, value in record.items()
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)
        }
        for tracker in self._trackers:
            tracker.log(metrics, record["step"])

    def rewrite(self, records: list[dict[str, Any]]) -> None:
        """Replace the file's content with ``records`` (used when a run resumes from a saved state, so that
        a line written after that state, or cut short by a crash, does not survive); the trackers get them too
        (a tracked run started by this process has the whole history)."""
        self._fh.seek(0)
        self._fh.truncate()
        for record in records:
            self._fh.write(json.dumps(record) + "\n")
            self._track(record)
        self._fh.flush()

    def close(self) -> None:
        """Close the file and finish the trackers; called while an exception propagates (a ``finally`` after
        a failed or interrupted training), the trackers record the run as failed."""
        failed = sys.exc_info()[0] is not None
        self._fh.close()
        for tracker in self._trackers:
            tracker.finish(failed=failed)


def read_metrics(path: str | os.PathLike, strict: bool = False) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl``. A truncated final line (a crash mid-write) is dropped with a
    warning naming the file -- or, when ``strict`` (the metrics of a model that finished), refused as the
    malformed lines elsewhere are: ``ValueError`` naming the file and line."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1 and not strict:
                warnings.warn(f"{path}: ignoring truncated final line {i + 1}", stacklevel=2)
                break
            raise ValueError(f"{path}: line {i + 1} is not valid JSON") from None
    return records
