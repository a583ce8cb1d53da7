import errno
import json
import os
import re
import subprocess
import sys

import pytest

import progdistill
from progdistill.cli import build_parser, cmd_probe_ngram, cmd_probe_oracle, main


def test_help_explains_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    # every sub-command is listed, and each one's help parses (argparse exits 0)
    commands = ("run", "list", "show", "probe", "export", "ablate")
    assert all(f"    {name}" in out for name in commands), out
    for name in commands:
        with pytest.raises(SystemExit) as sub_exc:
            main([name, "--help"])
        assert sub_exc.value.code == 0 and capsys.readouterr().out.startswith(f"usage: progdistill {name}")
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"progdistill {progdistill.__version__}"


def test_show_applies_overrides(capsys):
    assert main(["show", "parity-mlp", "--seeds", "2", "--set", "student.steps=20077"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["seeds"] == 2 and config["student"]["steps"] == 20077


def test_bad_override_is_an_error(capsys, tmp_path):
    assert main(["run", "parity-mlp", "--set", "student.stepz=1", "--out", str(tmp_path / "o")]) == 2
    assert "no field 'student.stepz'" in capsys.readouterr().err
    assert main(["show", "parity-mlp", "--set", "schedules.9.speed=2"]) == 2
    assert "schedules.9 is not a valid index; valid here: 0..4" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "missing.json")]) == 2
    assert "cannot read config" in capsys.readouterr().err


def test_input_mistakes_get_one_clear_line(capsys, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("keep")
    assert main(["run", "parity-mlp", "--out", str(afile)]) == 2  # --out names a file
    assert "is a file, not a directory" in capsys.readouterr().err and afile.read_text() == "keep"
    assert main(["run", "parity-mlp", "--out", str(afile / "sub")]) == 2  # a file along the path
    assert "a part of that path is a file" in capsys.readouterr().err and afile.read_text() == "keep"
    config = json.loads(
        subprocess.run(
            [sys.executable, "-m", "progdistill.cli", "show", "parity-mlp"], capture_output=True, text=True, check=True
        ).stdout
    )
    del config["teacher"]
    (tmp_path / "c.json").write_text(json.dumps(config))
    assert main(["run", str(tmp_path / "c.json"), "--out", str(tmp_path / "o")]) == 2
    assert "required field(s) teacher missing" in capsys.readouterr().err
    # a k-shot whose first points use up the budget never reaches its last checkpoint
    assert main(["show", "parity-mlp", "--set", "schedules.3.points=[[31000,70000],[-1,1]]"]) == 2
    assert "schedules.3.points" in capsys.readouterr().err and not (tmp_path / "o").exists()


@pytest.mark.e2e
def test_shrunk_parity_mlp_preset_end_to_end(tmp_path):
    """The real preset through the real command line, shrunk to seconds (same code path as the full run)."""
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "progdistill.cli",
        "run",
        "parity-mlp",
        "--seeds",
        "2",
        "--out",
        str(out),
        "--set",
        "task.n=10",
        "--set",
        "task.k=3",
        "--set",
        "task.eval_size=1024",
        "--set",
        "teacher.steps=2000",
        "--set",
        "student.steps=2000",
        "--set",
        "teacher.model.width=256",
        "--set",
        "teacher.eval_every=250",
        "--set",
        "teacher.checkpoint_every=250",
        "--set",
        "student.eval_every=250",
        "--set",
        "schedules.3.points=[[500,500],[-1,1500]]",
        "--set",
        "schedules.4.first_steps=500",
    ]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "| progressive |" in proc.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["preset"] == "parity-mlp" and len(results["students"]) == 10
    assert results["teacher"]["final_accuracy"] > 0.9  # n=10, k=3 is learned in 2000 steps
    assert (out / "accuracy.png").stat().st_size > 10_000
    # a second identical command reuses everything and changes nothing
    before = (out / "results.json").read_text()
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "reusing finished teacher" in proc.stdout

    def strip(r):
        return {k: v for k, v in json.loads(r).items() if k != "wall_time_s"}

    assert strip((out / "results.json").read_text()) == strip(before)


def test_own_warnings_print_as_one_line_and_others_as_python_does():
    import warnings

    import progdistill.store.lock
    from progdistill.cli import _format_warning

    assert (
        _format_warning("lock taken over", UserWarning, progdistill.store.lock.__file__, 64)
        == "progdistill: warning: lock taken over\n"
    )
    other = _format_warning("deprecated", DeprecationWarning, "/site-packages/torch/x.py", 3, line="")
    assert other == warnings.formatwarning("deprecated", DeprecationWarning, "/site-packages/torch/x.py", 3, line="")
    assert "torch/x.py:3" in other


def test_probe_distance_option_reaches_the_probes():
    parser = build_parser()
    args = parser.parse_args(["probe", "ngram", "runs/x", "--distance", "l1"])
    assert (args.distance, args.func) == ("l1", cmd_probe_ngram)
    args = parser.parse_args(["probe", "oracle", "runs/x"])
    assert (args.distance, args.func) == ("tv", cmd_probe_oracle)


def test_a_closed_pipe_fails_a_working_command_but_not_a_printing_one(monkeypatch):
    """`run ... | head` stops the run part-way: exit 141 (as a process killed by SIGPIPE), so that a script's
    `&&` does not go on; `show | head` or `list | head` have printed what was read: exit 0."""
    import sys

    import progdistill.cli as cli

    def cut_off(args):
        raise BrokenPipeError

    monkeypatch.setattr(sys, "stdout", sys.stdout)  # main() points stdout at /dev/null; restored after the test
    monkeypatch.setattr(cli, "cmd_run", cut_off)
    monkeypatch.setattr(cli, "cmd_list", cut_off)
    assert cli.main(["run", "parity-mlp"]) == 141
    assert cli.main(["list"]) == 0


# A full disk: one line naming the file, exit status 2, no temporary file left, and a rerun resumes.


def _tiny_config_file(tmp_path):
    from dataclasses import replace

    from conftest import tiny_config

    from progdistill.distill.schedules import CE, Progressive

    config = replace(tiny_config(steps=200), schedules=(CE(), Progressive()))
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config.to_dict()))
    return path


def _error_lines(err: str) -> list[str]:
    """stderr without the progress lines (``teacher: step 0/200, ...``): what the command said went wrong."""
    return [line for line in err.strip().splitlines() if not re.match(r"[\w-]+: step \d+/\d+", line)]


def _no_space(errno_code=errno.ENOSPC):
    return OSError(errno_code, os.strerror(errno_code))


@pytest.mark.parametrize(
    ("full_at", "errno_code"),
    [
        ("config.json", errno.ENOSPC),
        ("manifest.json", errno.ENOSPC),
        ("resume.pt", errno.EDQUOT),
        ("final.safetensors", errno.ENOSPC),
        ("results.json", errno.ENOSPC),
        ("accuracy.png", errno.EDQUOT),
    ],
)
def test_a_full_disk_is_one_line_naming_the_file(capsys, tmp_path, monkeypatch, full_at, errno_code):
    config, out = _tiny_config_file(tmp_path), tmp_path / "run"
    replace = os.replace

    def full(src, dst):  # the disk fills up as this file is written
        if str(dst).endswith(full_at):
            raise _no_space(errno_code)
        replace(src, dst)

    monkeypatch.setattr(os, "replace", full)
    assert main(["run", str(config), "--out", str(out), "--report-to", "none"]) == 2
    err = _error_lines(capsys.readouterr().err)
    assert len(err) == 1, err
    assert err[0].startswith("progdistill: error: no space left on the device") and full_at in err[0], err[0]
    assert not [p for p in out.rglob("*") if ".tmp" in p.name], "a temporary file was left behind"
    assert not (out / ".lock").exists()


def test_torch_and_safetensors_disk_full_errors_are_one_line_too(capsys, tmp_path, monkeypatch):
    # torch.save reports a full disk as "unexpected pos" with the OSError as context; safetensors by message.
    import progdistill.store.trajectory as trajectory
    import progdistill.train.loop as loop

    config, out = _tiny_config_file(tmp_path), tmp_path / "run"

    def torch_save(state, fh):
        try:
            raise _no_space()
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534") from None

    monkeypatch.setattr(loop.torch, "save", torch_save)
    assert main(["run", str(config), "--out", str(out), "--report-to", "none"]) == 2
    err = _error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "no space left" in err[0] and "teacher/resume.pt" in err[0], err
    monkeypatch.undo()

    def save_file(state, path):
        raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(trajectory, "save_file", save_file)
    assert main(["run", str(config), "--out", str(tmp_path / "other"), "--report-to", "none"]) == 2
    err = _error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "no space left" in err[0] and "step_00000000.safetensors" in err[0], err


def test_a_full_disk_in_a_writer_thread_is_the_commands_error(capsys, monkeypatch):
    # TensorBoard writes its event files from a thread: its error is no traceback but the command's one line.
    import threading

    import progdistill.cli as cli

    def command(args):
        thread = threading.Thread(target=lambda: (_ for _ in ()).throw(_no_space()))
        thread.start()
        thread.join()
        return 0

    monkeypatch.setattr(cli, "cmd_list", command)
    assert main(["list"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [err[0]] and err[0].startswith("progdistill: error: no space left on the device"), err
