"""Exclusive ownership of a run directory by one process at a time (a lock file holding the process id).

A second process that opens the same directory is refused with a message naming the holder. A lock left by a
process that is gone (killed, crashed, rebooted; on Linux also a killed process its parent has not reaped yet,
a zombie) is taken over, saying so.
"""

from __future__ import annotations

import json
import os
import socket
import time
import warnings
from pathlib import Path

from progdistill.core.files import naming_disk_full

LOCK = ".lock"


class RunLockedError(RuntimeError):
    """Another live process holds the run directory's lock."""


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (killed, and not yet reaped by its parent: it will
    never write again)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """Whether ``pid`` is in state Z (Linux: /proc/PID/stat, whose state follows the parenthesized command
    name, which may itself contain ")"); False where /proc is not available."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    fields = stat.rsplit(")", 1)[-1].split()
    return bool(fields) and fields[0] == "Z"


WRITE_GRACE_S = 2.0  # an unreadable lock younger than this is being written, not left behind


def _age(path: Path) -> float:
    """Seconds since ``path`` was last modified (0 when it is gone: ask again)."""
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def job_id() -> str | None:
    """The scheduler's id of the job this process runs in (Slurm's ``SLURM_JOB_ID``, submitit's local
    executor's ``SUBMITIT_LOCAL_JOB_ID``), or None outside a job; recorded in locks for `progdistill status`."""
    return os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID")


def lock_holder(directory: str | os.PathLike) -> dict | None:
    """The live holder of ``directory``'s lock ({pid, host, job?}), or None when unlocked or left by a process
    that is gone (a holder on another host is taken to be alive)."""
    try:
        data = json.loads((Path(directory) / LOCK).read_text(encoding="utf-8"))
        pid = int(data["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if data.get("host") not in (None, socket.gethostname()) or _alive(pid):
        return data
    return None


class RunLock:
    """``with RunLock(directory): ...`` holds ``directory/.lock`` for the block (re-entrant per process)."""

    def __init__(self, directory: str | os.PathLike):
        self.path = Path(directory) / LOCK
        self.owned = False

    def __enter__(self) -> RunLock:
        if self.path.parent.exists() and not self.path.parent.is_dir():
            raise NotADirectoryError(f"{self.path.parent} is a file, not a directory; choose another directory")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):  # a file somewhere along the path
            raise NotADirectoryError(
                f"{self.path.parent} cannot be created: a part of that path is a file, not a "
                "directory; choose another directory"
            ) from None
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        if job_id() is not None:
            me["job"] = job_id()
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    holder = json.loads(self.path.read_text(encoding="utf-8"))
                    pid = int(holder["pid"])
                except (OSError, ValueError, KeyError, TypeError):
                    holder, pid = {}, None
                if pid == os.getpid():
                    return self  # this process already holds it (nested use)
                if pid is None and _age(self.path) < WRITE_GRACE_S:
                    time.sleep(0.05)  # created by a live process that has not written its id yet: ask again
                    continue
                same_host = holder.get("host") in (None, me["host"])
                if pid is not None and (not same_host or _alive(pid)):
                    job = f" (job {holder['job']})" if holder.get("job") else ""
                    raise RunLockedError(
                        f"{self.path.parent} is in use by process {pid}{job} on "
                        f"{holder.get('host', 'this host')} (lock file {self.path}); wait for it "
                        "to finish or choose another directory"
                    ) from None
                warnings.warn(f"taking over the lock {self.path} left by process {pid}, which is gone", stacklevel=2)
                self.path.unlink(missing_ok=True)
                continue
            try:
                with naming_disk_full(self.path), os.fdopen(fd, "w") as fh:
                    json.dump(me, fh)
            except BaseException:
                self.path.unlink(missing_ok=True)  # no empty lock left behind (a full disk)
                raise
            self.owned = True
            return self

    def __exit__(self, *exc) -> None:
        if self.owned:
            self.path.unlink(missing_ok=True)
            self.owned = False
