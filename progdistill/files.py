"""Files a run writes: atomic writes (a temporary file and a rename, so a killed process never leaves a half-written
file) and metrics files, one JSON object per line (``metrics.jsonl``), mirrored to TensorBoard when installed."""

from __future__ import annotations

import json
import os
import warnings
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

    When ``tensorboard`` is importable and ``tensorboard_dir`` is given, numeric fields are also written as
    TensorBoard scalars under ``tag_prefix`` at ``record["step"]``.
    """

    def __init__(self, path: str | os.PathLike, tensorboard_dir: str | os.PathLike | None = None,
                 tag_prefix: str = ""):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "w", encoding="utf-8")
        self._tb = None
        self._prefix = tag_prefix
        if tensorboard_dir is not None:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # TensorBoard is optional
                SummaryWriter = None
            if SummaryWriter is not None:
                self._tb = SummaryWriter(log_dir=str(tensorboard_dir))

    def write(self, record: dict[str, Any]) -> None:
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(f"{self._prefix}{key}", value, record["step"])

    def rewrite(self, records: list[dict[str, Any]]) -> None:
        """Replace the file's content with ``records`` (used when a run resumes from a saved state, so that
        a line written after that state, or cut short by a crash, does not survive)."""
        self._fh.seek(0)
        self._fh.truncate()
        for record in records:
            self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl``. A truncated final line (a crash mid-write) is dropped with a
    warning naming the file; a malformed line elsewhere is an error naming the file and line."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                warnings.warn(f"{path}: ignoring truncated final line {i + 1}")
                break
            raise ValueError(f"{path}: line {i + 1} is not valid JSON") from None
    return records
