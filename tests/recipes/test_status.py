"""`progdistill status RUN`: the teacher and each student done, running, failed, interrupted or not started."""

import json
import os
import socket

import pytest

from progdistill.recipes import runner
from progdistill.cli import main
from progdistill.experiment import student_name
from progdistill.store.lock import RunLock
from progdistill.store.rundir import RunDir
from progdistill.recipes.runner import train_students, train_teacher
from progdistill.recipes.status import status
from progdistill.train.loop import NonFiniteError

from conftest import tiny_config


def test_a_finished_a_failed_a_running_and_unstarted_students(tmp_path, monkeypatch, capsys):
    config = tiny_config(steps=150)
    out = tmp_path / "run"
    RunDir(out).claim(config, overwrite=False)
    trajectory = train_teacher(config, out, "cpu", log=lambda *a: None)
    ce, one_shot, progressive, k_shot = (student_name(s, 0) for s in config.schedules)
    train_students(config, out, trajectory, "cpu", log=lambda *a: None, runs=[(ce, config.schedules[0], 0)])

    def fail(*args, **kwargs):
        raise NonFiniteError("one-shot-seed0: non-finite training loss at step 7")
    monkeypatch.setattr(runner, "fit", fail)
    with pytest.raises(NonFiniteError):
        train_students(config, out, trajectory, "cpu", log=lambda *a: None, runs=[(one_shot, config.schedules[1], 0)])
    monkeypatch.undo()
    (out / "jobs").mkdir()
    (out / "jobs" / "launch.json").write_text(json.dumps({"launcher": "submitit-local", "teacher": "41",
                                                          "students": {one_shot: "42"}}))
    with RunLock(out / "students" / progressive):  # this process trains it
        rows = {r["name"]: r for r in status(out)}
        assert rows["teacher"] == {"name": "teacher", "state": "done", "detail": "", "job": "41"}
        assert rows[ce]["state"] == "done"
        assert rows[one_shot] == {"name": one_shot, "state": "failed", "job": "42",
                                  "detail": "progdistill.train.loop.NonFiniteError: one-shot-seed0: non-finite training "
                                            "loss at step 7"}
        assert rows[progressive]["state"] == "running"
        assert rows[progressive]["detail"] == f"process {os.getpid()} on {socket.gethostname()}"
        assert rows[k_shot] == {"name": k_shot, "state": "not started", "detail": "", "job": None}
        assert main(["status", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[2].split() == [one_shot, "failed", "job", "42", "progdistill.train.loop.NonFiniteError:", "one-shot-seed0:",
                                  "non-finite", "training", "loss", "at", "step", "7"]
    assert printed[-1] == "2 done, 1 running, 1 failed, 1 not started"
    # the failure is cleared when the student trains again, and an unfinished student reads "interrupted"
    (out / "students" / one_shot / "metrics.jsonl").write_text('{"step": 0}\n{"step": 50}\n')
    (out / "students" / one_shot / "error.txt").unlink()
    assert {r["name"]: r for r in status(out)}[one_shot]["detail"] == "at step 50/150; rerunning resumes it"


def test_report_refuses_a_run_with_unfinished_students(tmp_path, capsys):
    config = tiny_config(steps=150)
    out = tmp_path / "run"
    RunDir(out).claim(config, overwrite=False)
    assert main(["report", str(out)]) == 2
    assert "4 student(s) of" in capsys.readouterr().err and not (out / "results.json").exists()
