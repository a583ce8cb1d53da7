"""A run directory's lock: held by one process, re-entrant within it, released on exit, and readable by
`progdistill status` (holder, host, job). Refusal of a live holder and takeover of a dead or zombie holder's
lock run with real processes in tests/train/test_loop_reliability.py."""

import json
import os
import socket
import subprocess
import sys

import pytest

# The names under test, imported in one place.
from progdistill.store.lock import LOCK, RunLock, RunLockedError, job_id, lock_holder


def test_the_lock_names_this_process_and_is_released_on_exit(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("SUBMITIT_LOCAL_JOB_ID", raising=False)
    directory = tmp_path / "run" / "students" / "ce-seed0"  # created with its parents
    assert lock_holder(directory) is None
    with RunLock(directory):
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        assert json.loads((directory / LOCK).read_text()) == me and lock_holder(directory) == me
        with RunLock(directory):  # re-entrant: a nested use in the same process
            pass
        assert (directory / LOCK).exists()  # the inner block did not release the outer one's lock
    assert not (directory / LOCK).exists() and lock_holder(directory) is None


def test_the_lock_is_released_when_the_block_raises(tmp_path):
    with pytest.raises(KeyError), RunLock(tmp_path):
        raise KeyError("boom")
    assert not (tmp_path / LOCK).exists()


def test_the_schedulers_job_id_is_recorded(tmp_path, monkeypatch):
    monkeypatch.delenv("SUBMITIT_LOCAL_JOB_ID", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert job_id() == "4242"
    with RunLock(tmp_path):
        assert lock_holder(tmp_path)["job"] == "4242"
    monkeypatch.delenv("SLURM_JOB_ID")
    monkeypatch.setenv("SUBMITIT_LOCAL_JOB_ID", "77")
    assert job_id() == "77"
    monkeypatch.delenv("SUBMITIT_LOCAL_JOB_ID")
    assert job_id() is None


def test_a_holder_on_another_host_is_taken_to_be_alive(tmp_path):
    # Its process id means nothing here: the lock is refused, naming the host and job, and left in place.
    holder = {"pid": 1, "host": "node-that-is-not-this-one", "job": "12"}
    (tmp_path / LOCK).write_text(json.dumps(holder))
    assert lock_holder(tmp_path) == holder
    with (
        pytest.raises(RunLockedError, match=r"in use by process 1 \(job 12\) on node-that-is-not-this-one"),
        RunLock(tmp_path),
    ):
        pass
    assert json.loads((tmp_path / LOCK).read_text()) == holder


def test_a_lock_of_a_finished_process_or_unreadable_has_no_holder(tmp_path):
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    (tmp_path / LOCK).write_text(json.dumps({"pid": int(finished.stdout), "host": socket.gethostname()}))
    assert lock_holder(tmp_path) is None
    (tmp_path / LOCK).write_text("not json")
    assert lock_holder(tmp_path) is None


def test_a_path_through_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError, match="is a file, not a directory"), RunLock(tmp_path / "file"):
        pass
    with pytest.raises(NotADirectoryError, match="a part of that path is a file"), RunLock(tmp_path / "file" / "run"):
        pass
