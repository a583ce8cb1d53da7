"""Files a run writes: atomic writes (a temporary file and a rename, so a killed process never leaves a half-written
file), metrics files, one JSON object per line (``metrics.jsonl``), mirrored to experiment trackers
(:mod:`progdistill.store.trackers`), and the error of a write that failed for want of space (:class:`DiskFullError`)."""

from __future__ import annotations

import errno
import json
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# A full disk and an exhausted quota; torch.save and safetensors report them in their own error types, whose
# message or chained OSError says so (see disk_full).
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
DISK_FULL_MESSAGES = ("No space left on device", "Disk quota exceeded", "os error 28", "os error 122")


class DiskFullError(OSError):
    """A write failed because the disk is full (or the quota exhausted); the message names the file."""

    def __str__(self) -> str:
        return str(self.strerror)


def disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an error it was raised from or while handling, is a full disk or exhausted quota."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return True
        if any(text in str(exc) for text in DISK_FULL_MESSAGES):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def disk_full_error(path: str | os.PathLike | None) -> DiskFullError:
    """The one-line error of a write of ``path`` (None: unknown) that failed for want of space."""
    where = f"writing {path}" if path is not None else "writing a file"
    return DiskFullError(
        errno.ENOSPC,
        f"no space left on the device (disk full or quota exceeded) {where}; free some space, or choose another "
        "--out, and rerun: what was saved before is kept and the run resumes from it",
        None if path is None else str(path),
    )


@contextmanager
def naming_disk_full(path: str | os.PathLike) -> Iterator[None]:
    """Turn an error of a write of ``path`` that failed for want of space into a :class:`DiskFullError` naming
    ``path``; other errors pass through."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as exc:
        if disk_full(exc):
            raise disk_full_error(path) from None
        raise


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Write ``path`` through ``write(temporary path)`` and a rename: a killed process never leaves a half-written
    ``path``, a failed write leaves no temporary file behind, and a full disk raises :class:`DiskFullError`
    naming ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with naming_disk_full(path):
            write(tmp)
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a flushed temporary file and a rename (:func:`atomic_write`)."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())

    atomic_write(path, write)


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
        with naming_disk_full(self.path):
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
        with naming_disk_full(self.path):
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
        try:
            with naming_disk_full(self.path):
                self._fh.close()
        finally:
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
