import json
import shutil
from dataclasses import replace

import pytest

from progdistill.cli import main
from progdistill.core.config import ConfigError
from progdistill.core.files import read_metrics
from progdistill.distill.schedules import TwoShotAuto
from progdistill.recipes.robustness import ablate_robustness
from progdistill.recipes.runner import run
from progdistill.store.report import steps_to_threshold


def quiet(*args):
    pass


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished tiny parity run (teacher with a transition, so 2-shot-auto finds its checkpoint)."""
    from conftest import tiny_config

    out = tmp_path_factory.mktemp("runs") / "tiny"
    run(replace(tiny_config(), schedules=(TwoShotAuto(first_steps=100),)), out, log=quiet)
    return out


def _files(path):
    return {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}


def test_bad_options_are_refused_before_anything_is_written(tiny_run, capsys):
    before = _files(tiny_run)
    with pytest.raises(ConfigError, match=r"--temperatures: -0.5 is invalid: .* >= 0"):
        ablate_robustness(tiny_run, temperatures=[0, -0.5], log=quiet)
    with pytest.raises(ConfigError, match=r"unknown learning-rate schedule 'linear'; valid: constant, cosine"):
        ablate_robustness(tiny_run, lr_schedules=["constant", "linear"], log=quiet)
    with pytest.raises(ConfigError, match=r"--temperatures \[0.5, 0.5\] is invalid: .* each once"):
        ablate_robustness(tiny_run, temperatures=[0.5, 0.5], log=quiet)
    with pytest.raises(
        ConfigError,
        match=r"--schedules: unknown schedule '3-shot'; valid: ce, one-shot, progressive, "
        r"2-shot-auto",
    ):
        ablate_robustness(tiny_run, schedules=["progressive", "3-shot"], log=quiet)
    with pytest.raises(ConfigError, match=r"--schedules \[\] is invalid"):
        ablate_robustness(tiny_run, schedules=[], log=quiet)
    with pytest.raises(ConfigError, match="--seeds"):
        ablate_robustness(tiny_run, seeds=0, log=quiet)
    assert main(["ablate", "robustness", str(tiny_run), "--lr-schedules", "step"]) != 0
    assert "unknown learning-rate schedule 'step'" in capsys.readouterr().err
    assert _files(tiny_run) == before


def test_robustness_map(tiny_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    summary = ablate_robustness(run_dir, seeds=1, temperatures=[0, 1], log=quiet, device="cpu")
    directory = run_dir / "ablations" / "robustness"
    students = sorted(p.name for p in directory.iterdir() if p.is_dir())
    # per lr schedule: CE once, then {one-shot, progressive, 2-shot-auto} per temperature; one seed
    assert len(students) == 2 * (1 + 2 * 3)
    assert "constant-ce-seed0" in students and "cosine-T1-2-shot-auto-seed0" in students
    assert len(summary["cells"]) == 2 * (1 + 2 * 3)

    # every cell's numbers and text come from its students' metrics
    threshold, teacher_steps = summary["threshold"], summary["teacher_steps_to_threshold"]
    assert teacher_steps is not None
    table = (directory / "summary.md").read_text()
    for cell in summary["cells"]:
        curves = [read_metrics(directory / name / "metrics.jsonl") for name in cell["students"]]
        assert all(c[-1]["step"] == summary["budget"] for c in curves)
        steps = [steps_to_threshold(c, threshold) for c in curves]
        assert cell["steps_to_threshold"] == steps
        reached = [s for s in steps if s is not None]
        assert cell["seeds_reaching"] == len(reached)
        assert cell["final_accuracy_mean"] == pytest.approx(sum(c[-1]["eval_accuracy"] for c in curves) / len(curves))
        if reached:
            mean = sum(reached) / len(reached)
            assert cell["mean_ratio_to_teacher"] == pytest.approx(mean / teacher_steps)
            assert cell["text"] == f"{mean:.0f} ({len(reached)}/1, {mean / teacher_steps:.2f}x)"
        else:
            assert cell["text"] == f"never ({cell['final_accuracy_mean']:.2f})"
        temperatures = [0, 1] if cell["schedule"] == "ce" else [cell["temperature"]]
        for t in temperatures:  # CE's cell stands in each temperature's row
            row = next(line for line in table.splitlines() if line.startswith(f"| {cell['lr_schedule']} | {t:g} |"))
            column = ["ce", "one-shot", "progressive", "2-shot-auto"].index(cell["schedule"])
            assert row.split(" | ")[2 + column].rstrip(" |") == cell["text"]
    assert (directory / "heatmap.png").stat().st_size > 10_000

    # the grid really varies the student settings: the lr schedule and the temperature change the students
    def acc(name):
        return [r["eval_accuracy"] for r in read_metrics(directory / name / "metrics.jsonl")]

    assert acc("constant-T0-one-shot-seed0") != acc("cosine-T0-one-shot-seed0")
    assert acc("constant-T0-one-shot-seed0") != acc("constant-T1-one-shot-seed0")

    # a rerun trains nothing; other settings are refused, naming both
    messages = []
    assert ablate_robustness(run_dir, seeds=1, temperatures=[0, 1], log=messages.append, device="cpu") == summary
    assert messages.count("all students already finished") == 4
    with pytest.raises(
        ConfigError,
        match=r"other settings .*'temperatures': \[0.0, 1.0\].*now.*'temperatures': "
        r"\[0.5\]",
    ):
        ablate_robustness(run_dir, seeds=1, temperatures=[0.5], log=quiet)
    assert json.loads((directory / "summary.json").read_text()) == summary


def test_a_subset_of_schedules_is_trained_and_its_students_reused_by_a_fuller_map(tiny_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    directory = run_dir / "ablations" / "robustness"
    summary = ablate_robustness(
        run_dir,
        seeds=1,
        temperatures=[1],
        lr_schedules=["cosine"],
        schedules=["progressive", "ce"],
        log=quiet,
        device="cpu",
    )
    assert sorted(p.name for p in directory.iterdir() if p.is_dir()) == [
        "cosine-T1-progressive-seed0",
        "cosine-ce-seed0",
    ]
    assert summary["schedules"] == ["ce", "progressive"]  # the table's order, whatever the order asked
    assert [(c["schedule"], c["temperature"]) for c in summary["cells"]] == [("progressive", 1.0), ("ce", None)]
    header = (directory / "summary.md").read_text().splitlines()[4]
    assert header == "| student lr schedule | temperature | CE | progressive |"
    progressive = (directory / "cosine-T1-progressive-seed0" / "metrics.jsonl").read_bytes()

    messages = []
    summary = ablate_robustness(
        run_dir, seeds=1, temperatures=[1], lr_schedules=["cosine"], log=messages.append, device="cpu"
    )
    assert summary["schedules"] == ["ce", "one-shot", "progressive", "2-shot-auto"]
    assert len(summary["cells"]) == 4
    assert (directory / "cosine-T1-progressive-seed0" / "metrics.jsonl").read_bytes() == progressive
    assert sorted(p.name for p in directory.iterdir() if p.is_dir()) == [
        "cosine-T1-2-shot-auto-seed0",
        "cosine-T1-one-shot-seed0",
        "cosine-T1-progressive-seed0",
        "cosine-ce-seed0",
    ]
