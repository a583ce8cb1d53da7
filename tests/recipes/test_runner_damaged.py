"""A damaged file in a run directory stops `progdistill run` before anything is deleted or written: one line naming
the file and the way out, exit status 2, every file as it was. Only the user's explicit request deletes
(`--retrain-teacher`, `--overwrite`, or deleting the file the error names)."""

import json
import os
import re
import shutil
from dataclasses import replace

import pytest
import torch
from conftest import tiny_config

import progdistill.recipes.runner as runner
from progdistill.cli import main
from progdistill.distill.schedules import CE, Progressive
from progdistill.store.trajectory import MANIFEST

STEPS = 200


def _snapshot(root):
    """Every file under ``root``: relative path -> (size, mtime_ns)."""
    out = {}
    for directory, _, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            stat = os.stat(path)
            out[os.path.relpath(path, root)] = (stat.st_size, stat.st_mtime_ns)
    return out


def _stopped_at_step_100(role: str):
    """``runner.fit`` that stops the ``role`` ("teacher" or "students") with Ctrl-C after its record at step 100."""
    fit = runner.fit

    def stopping_fit(*args, **kwargs):
        if (kwargs["desc"] == "teacher") == (role == "teacher"):
            on_record = kwargs["on_record"]

            def stop(step):
                on_record(step)
                if step >= 100:
                    raise KeyboardInterrupt

            kwargs["on_record"] = stop
        return fit(*args, **kwargs)

    return stopping_fit


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three run directories of one tiny config: finished, stopped in the teacher, stopped in the students."""
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("runs")
    config = replace(tiny_config(steps=STEPS), schedules=(CE(), Progressive()))
    runner.run(config, root / "finished", log=lambda *a: None, report_to=())
    for role in ("teacher", "students"):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(runner, "fit", _stopped_at_step_100(role))
            with pytest.raises(KeyboardInterrupt):
                runner.run(config, root / f"stopped-in-{role}", log=lambda *a: None, report_to=())
    return root


def _garble(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] + b"\x00garbage{")


def _copy(runs, tmp_path, base):
    out = tmp_path / base
    shutil.copytree(runs / base, out)
    return out


# (run directory, damaged file, how, what the one line says)
DAMAGES = [
    ("finished", f"teacher/{MANIFEST}", "garble", r"manifest.json is not valid JSON.*--retrain-teacher"),
    ("finished", f"teacher/{MANIFEST}", "delete", r"manifest.json is missing, but .* holds 5 checkpoint file"),
    ("finished", "teacher/metrics.jsonl", "garble", r"teacher's .*metrics.jsonl is unreadable.*--retrain-teacher"),
    ("finished", "teacher/metrics.jsonl", "delete", r"teacher's .*metrics.jsonl is missing.*--retrain-teacher"),
    ("finished", "config.json", "garble", r"config.json is unreadable .*Restore it, or pass --overwrite"),
    ("finished", "config.sha256", "garble", r"config.sha256 is damaged .*Restore it, or delete it"),
    ("finished", "students/ce-seed0/metrics.jsonl", "garble", r"student ce-seed0 is damaged.*metrics.jsonl"),
    ("finished", "students/ce-seed0/metrics.jsonl", "delete", r"student ce-seed0 is damaged.*metrics.jsonl is miss"),
    ("finished", "students/ce-seed0/final.safetensors", "garble", r"student ce-seed0 is damaged.*final.safetensors"),
    ("finished", "results.json", "garble", r"results.json is unreadable.*wall time"),
    ("stopped-in-teacher", "teacher/resume.pt", "garble", r"teacher's resume state .*resume.pt is unreadable"),
    ("stopped-in-teacher", "teacher/resume.pt", "delete", r"checkpoints up to step 50 but no resume state"),
    ("stopped-in-students", "students/.resume-ce-seed0.pt", "garble", r"students' resume state .* is unreadable"),
    ("stopped-in-students", "teacher/checkpoints/step_00000100.safetensors", "garble", r"step 100 is corrupted"),
]


@pytest.mark.parametrize(("base", "damaged", "how", "message"), DAMAGES, ids=[f"{d[1]}-{d[2]}" for d in DAMAGES])
def test_a_damaged_file_stops_run_before_anything_changes(runs, tmp_path, capsys, base, damaged, how, message):
    out = _copy(runs, tmp_path, base)
    config = shutil.copy(out / "config.json", tmp_path / "config.json")  # (config.json itself may be damaged)
    path = out / damaged
    if how == "garble":
        _garble(path)
    else:
        path.unlink()
    before = _snapshot(out)
    capsys.readouterr()
    assert main(["run", str(config), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("progdistill: error: "), err
    assert str(path.parent) in err[0] and "nothing was deleted or written" in err[0]
    assert re.search(message, err[0]), err[0]
    assert _snapshot(out) == before  # names, sizes and modification times: nothing deleted, written or touched


def test_retrain_teacher_is_the_way_out_of_a_damaged_manifest(runs, tmp_path, capsys):
    out = _copy(runs, tmp_path, "finished")
    _garble(out / "teacher" / MANIFEST)
    assert main(["run", str(out / "config.json"), "--out", str(out), "--retrain-teacher"]) == 0
    fresh = json.loads((out / "teacher" / MANIFEST).read_text())
    assert (
        fresh["complete"]
        and fresh["checkpoints"] == json.loads((runs / "finished/teacher" / MANIFEST).read_text())["checkpoints"]
    )  # trained again, the same numbers


def test_overwrite_replaces_a_run_whose_config_json_is_damaged_keeping_its_teacher(runs, tmp_path, capsys):
    out = _copy(runs, tmp_path, "finished")
    config = shutil.copy(out / "config.json", tmp_path / "config.json")
    _garble(out / "config.json")
    checkpoints = _snapshot(out / "teacher" / "checkpoints")
    assert main(["run", str(config), "--out", str(out), "--overwrite"]) == 0
    assert (out / "config.json").read_text() == (runs / "finished" / "config.json").read_text()
    assert _snapshot(out / "teacher" / "checkpoints") == checkpoints  # its manifest records this teacher: kept


def test_a_teacher_stopped_before_being_marked_complete_is_marked_not_retrained(runs, tmp_path, capsys):
    # Killed between its last checkpoint (and the end of its resume state) and the manifest's "complete".
    out = _copy(runs, tmp_path, "finished")
    manifest = json.loads((out / "teacher" / MANIFEST).read_text())
    (out / "teacher" / MANIFEST).write_text(json.dumps({**manifest, "complete": False}))
    checkpoints = _snapshot(out / "teacher" / "checkpoints")
    assert main(["run", str(out / "config.json"), "--out", str(out)]) == 0
    assert json.loads((out / "teacher" / MANIFEST).read_text())["complete"]
    assert _snapshot(out / "teacher" / "checkpoints") == checkpoints


def test_a_rerun_of_a_finished_run_rewrites_no_file(runs, tmp_path, capsys):
    out = _copy(runs, tmp_path, "finished")
    before = _snapshot(out)
    assert main(["run", str(out / "config.json"), "--out", str(out)]) == 0
    after = _snapshot(out)
    kept = {"config.json", "config.sha256", "teacher/manifest.json", "teacher/metrics.jsonl"}
    assert {k: after[k] for k in kept} == {k: before[k] for k in kept}


# report reads the same files a rerun reuses: a damaged or edited one stops it before it writes anything
REPORT_DAMAGES = [
    ("teacher/metrics.jsonl", "truncate", r"metrics.jsonl is unreadable"),
    ("config.sha256", "edit", r"config.json was edited after the run|config.sha256"),
    ("results.json", "garble", r"results.json is unreadable"),
    ("students/ce-seed0/final.safetensors", "garble", r"final.safetensors"),
]


@pytest.mark.parametrize(("damaged", "how", "message"), REPORT_DAMAGES, ids=[d[0] for d in REPORT_DAMAGES])
def test_a_damaged_file_stops_report_before_anything_changes(runs, tmp_path, capsys, damaged, how, message):
    out = _copy(runs, tmp_path, "finished")
    path = out / damaged
    if how == "truncate":
        path.write_bytes(path.read_bytes()[:100])
    elif how == "edit":
        path.write_text("0" * 64 + "\n")
    else:
        _garble(path)
    before = _snapshot(out)
    capsys.readouterr()
    assert main(["report", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("progdistill: error: "), err
    assert re.search(message, err[0]), err[0]
    assert _snapshot(out) == before
