"""docs/extending.md: its example task, model and schedule (docs/examples/) run from Python and from the command
line, and later commands on the run work without --import, each in a new process as a user types them."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "docs" / "examples"
STUDENTS = [f"{s}-seed{k}" for k in range(2) for s in ("ce", "progressive", "stretched")]


def progdistill(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "progdistill.cli", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.e2e
def test_the_examples_run_from_python_and_the_command_line(tmp_path):
    # from Python: the script builds the config from the classes and calls progdistill.run
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    py = subprocess.run(
        [sys.executable, str(EXAMPLES / "run_from_python.py"), str(tmp_path / "py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert py.returncode == 0, py.stderr
    printed = [line.split() for line in py.stdout.splitlines()[-6:]]
    assert [f"{s}-seed{k}" for s, k, *_ in printed] == STUDENTS
    assert all(float(acc) > 0.95 for *_, acc in printed)  # the halfspace is learned

    # from the command line, with copies of the example files that are deleted at the end
    mine = tmp_path / "mine"
    shutil.copytree(EXAMPLES, mine, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "cli"
    imports = [a for f in ("my_task.py", "my_model.py", "my_schedule.py") for a in ("--import", mine / f)]
    done = progdistill("run", mine / "my-config.json", *imports, "--out", out, "--report-to", "none", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    saved = json.loads((out / "config.json").read_text())
    assert saved["plugins"] == [
        {"module": m, "file": str(mine / f"{m}.py")} for m in ("my_model", "my_schedule", "my_task")
    ]
    assert saved["task"]["type"] == "halfspace" and saved["student"]["model"]["type"] == "tanh-mlp"
    # the same config as the Python script's (the plugins are no part of a run's identity), the same numbers
    assert (out / "config.sha256").read_text() == (tmp_path / "py" / "config.sha256").read_text()
    results = json.loads((out / "results.json").read_text())
    assert results["students"] == json.loads((tmp_path / "py" / "results.json").read_text())["students"]

    # later commands need no --import, from another directory
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    status = progdistill("status", out, cwd=elsewhere)
    assert status.returncode == 0, status.stderr
    assert status.stdout.splitlines()[-1] == "7 done"
    assert [line.split()[0] for line in status.stdout.splitlines()[1:-1]] == STUDENTS
    report = progdistill("report", out, cwd=elsewhere)
    assert report.returncode == 0, report.stderr
    assert (
        "| stretched |" in report.stdout
        and json.loads((out / "results.json").read_text())["students"] == results["students"]
    )
    weights = {n: (out / "students" / n / "final.safetensors").stat().st_mtime_ns for n in STUDENTS}
    rerun = progdistill("run", out / "config.json", "--out", out, "--report-to", "none", cwd=elsewhere)
    assert rerun.returncode == 0, rerun.stderr
    assert "reusing finished teacher" in rerun.stdout and "all students already finished" in rerun.stdout
    assert weights == {n: (out / "students" / n / "final.safetensors").stat().st_mtime_ns for n in STUDENTS}

    # the plugin files are gone: status still shows the run (type names, a warning); report is one clear error
    shutil.rmtree(mine)
    status = progdistill("status", out, cwd=elsewhere)
    assert status.returncode == 0 and status.stdout.splitlines()[-1] == "7 done"
    assert f"progdistill: warning: cannot import plugin file {mine / 'my_model.py'}: it does not exist" in status.stderr
    report = progdistill("report", out, cwd=elsewhere)
    assert report.returncode == 2
    assert report.stderr.strip().splitlines() == [
        f"progdistill: error: cannot import plugin file {mine / 'my_model.py'}: it does not exist. The run's "
        "config.json records it as plugin module 'my_model': restore the file, or pass --import with its new "
        "location"
    ]
