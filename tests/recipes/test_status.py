"""`progdistill status RUN`: the teacher and each student done, running, failed, interrupted or not started."""

import json
import os
import socket

import pytest
from conftest import forget_plugin, plugin_config, tiny_config, write_plugin

from progdistill.cli import main
from progdistill.core.plugins import import_plugin
from progdistill.experiment import student_name, student_runs
from progdistill.recipes import runner
from progdistill.recipes.runner import train_students, train_teacher
from progdistill.recipes.status import status
from progdistill.store.lock import RunLock
from progdistill.store.rundir import RunDir
from progdistill.train.loop import NonFiniteError, load_state


def test_a_finished_a_failed_a_running_and_unstarted_students(tmp_path, monkeypatch, capsys):
    config = tiny_config(steps=150)
    out = tmp_path / "run"
    RunDir(out).claim(config, overwrite=False)
    trajectory = train_teacher(config, out, "cpu", log=lambda *a: None)
    ce, one_shot, progressive, k_shot = (student_name(s, 0) for s in config.schedules)
    train_students(config, out, trajectory, "cpu", log=lambda *a: None, runs=student_runs(config)[:1])

    def fail(*args, **kwargs):
        raise NonFiniteError("one-shot-seed0: non-finite training loss at step 7")

    monkeypatch.setattr(runner, "fit", fail)
    with pytest.raises(NonFiniteError):
        train_students(config, out, trajectory, "cpu", log=lambda *a: None, runs=student_runs(config)[1:2])
    monkeypatch.undo()
    (out / "jobs").mkdir()
    (out / "jobs" / "launch.json").write_text(
        json.dumps({"launcher": "submitit-local", "teacher": "41", "students": {one_shot: "42"}})
    )
    with RunLock(out / "students" / progressive):  # this process trains it
        rows = {r["name"]: r for r in status(out)}
        assert rows["teacher"] == {"name": "teacher", "state": "done", "detail": "", "job": "41"}
        assert rows[ce]["state"] == "done"
        assert rows[one_shot] == {
            "name": one_shot,
            "state": "failed",
            "job": "42",
            "detail": "progdistill.train.loop.NonFiniteError: one-shot-seed0: non-finite training loss at step 7",
        }
        assert rows[progressive]["state"] == "running"
        assert rows[progressive]["detail"] == f"process {os.getpid()} on {socket.gethostname()}"
        assert rows[k_shot] == {"name": k_shot, "state": "not started", "detail": "", "job": None}
        assert main(["status", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[2].split() == [
        one_shot,
        "failed",
        "job",
        "42",
        "progdistill.train.loop.NonFiniteError:",
        "one-shot-seed0:",
        "non-finite",
        "training",
        "loss",
        "at",
        "step",
        "7",
    ]
    assert printed[-1] == "2 done, 1 running, 1 failed, 1 not started"
    # the failure is cleared when the student trains again, and an unfinished student reads "interrupted"; with
    # no saved state to resume from, a rerun starts it over, and status says so
    (out / "students" / one_shot / "metrics.jsonl").write_text('{"step": 0}\n{"step": 50}\n')
    (out / "students" / one_shot / "error.txt").unlink()
    assert {r["name"]: r for r in status(out)}[one_shot]["detail"] == (
        "stopped at step 50/150; rerunning starts it over at step 0 (no saved state to resume from)"
    )


def _interrupt_at(step):
    def on_record(at):
        if at == step:
            raise KeyboardInterrupt  # Ctrl-C: no failure recorded

    return on_record


def test_status_says_what_a_rerun_does_from_the_saved_states(tmp_path):
    config = tiny_config(steps=150)
    out = tmp_path / "run"
    RunDir(out).claim(config, overwrite=False)
    trajectory = train_teacher(config, out, "cpu", log=lambda *a: None)
    names = [student_name(s, 0) for s in config.schedules]
    with pytest.raises(KeyboardInterrupt):  # the stack of four stops after its record at step 100 (state at 50)
        train_students(config, out, trajectory, "cpu", log=lambda *a: None, on_record=_interrupt_at(100))
    state = out / "students" / f".resume-{names[0]}.pt"
    assert load_state(state, names)["step"] == 50  # what a rerun resumes from
    rows = {r["name"]: r for r in status(out)}
    for name in names:
        assert (rows[name]["state"], rows[name]["detail"]) == ("interrupted", "at step 50/150; rerunning resumes it")
    # A rerun opens every student's metrics file before its stack resumes: interrupted then, the files are empty
    # and the progress sits in the stack's state alone. Status read "not started".
    for name in names:
        (out / "students" / name / "metrics.jsonl").write_text("")
    assert {r["name"]: r["detail"] for r in status(out)}[names[1]] == "at step 50/150; rerunning resumes it"
    # A truncated last record, and no state a rerun can use (this one holds a stack a rerun no longer trains:
    # the first student has finished since): status read "interrupted at step 100, rerunning resumes it".
    for name in names:
        (out / "students" / name / "metrics.jsonl").write_text('{"step": 0}\n{"step": 50}\n{"step": 100}\n{"st')
    (out / "students" / names[0] / "final.safetensors").write_bytes(b"")
    (out / "students" / names[0] / "metrics.jsonl").write_text('{"step": 0}\n{"step": 150}\n')
    rows = {r["name"]: r for r in status(out)}
    assert rows[names[0]]["state"] == "done" and load_state(state, names[1:]) is None
    assert (rows[names[2]]["state"], rows[names[2]]["detail"]) == (
        "interrupted",
        f"stopped at step 100/150; rerunning starts it over at step 0 (its saved state, at step 50, is that of a "
        f"stack trained with {names[0]})",
    )
    # a torn state file: a rerun stops on it, deleting nothing, and status says so
    (out / "students" / names[0] / "final.safetensors").unlink()
    state.write_bytes(b"torn")
    row = {r["name"]: r for r in status(out)}[names[0]]
    assert row["state"] == "interrupted" and row["detail"].startswith(f"at step 150/150; its saved state {state} ")
    assert row["detail"].endswith(
        ": a rerun stops there, deleting nothing; restore the file, or delete it to train from step 0"
    )


def test_report_refuses_a_run_with_unfinished_students(tmp_path, capsys):
    config = tiny_config(steps=150)
    out = tmp_path / "run"
    RunDir(out).claim(config, overwrite=False)
    assert main(["report", str(out)]) == 2
    assert "4 student(s) of" in capsys.readouterr().err and not (out / "results.json").exists()


def test_status_of_a_run_whose_plugin_is_gone_shows_type_names(tmp_path, capsys):
    name = "status_plugin_gone"
    module = import_plugin(str(write_plugin(tmp_path, name)))
    config = plugin_config(module, seeds=1, steps=150)
    out = tmp_path / "run"
    try:
        RunDir(out).claim(config, overwrite=False)
    finally:
        forget_plugin(name)
    (tmp_path / f"{name}.py").unlink()  # the plugin's file is gone
    for student in ("ce-seed0", f"{name}-schedule-seed0"):
        (out / "students" / student).mkdir(parents=True)
        (out / "students" / student / "metrics.jsonl").write_text('{"step": 0}\n{"step": 150}\n')
        (out / "students" / student / "final.safetensors").write_bytes(b"")
    with pytest.warns(UserWarning, match=f"cannot import plugin file .*{name}.py: it does not exist"):
        rows = status(out)
    assert [(r["name"], r["state"]) for r in rows] == [
        ("teacher", "not started"),
        ("ce-seed0", "done"),
        (f"{name}-schedule-seed0", "done"),
    ]
    with pytest.warns(UserWarning, match="showing its tasks, models and schedules by type name"):
        assert main(["status", str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "2 done, 1 not started"
    assert main(["report", str(out)]) == 2  # a command that needs the plugin: one clear error
    assert "progdistill: error: cannot import plugin file" in capsys.readouterr().err
