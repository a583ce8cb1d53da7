"""The report of a run directory: results.json, summary.md and the accuracy figure, from the files alone."""

import json
from dataclasses import replace

import pytest
from conftest import tiny_config

from progdistill.core.files import read_metrics
from progdistill.distill.schedules import CE, FINAL, KShot, TwoShotAuto
from progdistill.recipes.runner import run
from progdistill.store.report import accuracy_figure
from progdistill.store.trajectory import Trajectory


def quiet(*args):
    pass


@pytest.fixture(scope="module")
def auto_run(tmp_path_factory):
    """2-shot-auto beside a 2-shot on step 100 and CE, two seeds each."""
    base = tiny_config()
    out = tmp_path_factory.mktemp("runs") / "run"
    schedules = (CE(), KShot(points=((100, 100), (FINAL, 200))), TwoShotAuto(first_steps=100))
    run(replace(base, schedules=schedules, seeds=2), out, log=quiet)
    return out


def test_the_checkpoint_2_shot_auto_picks_is_recorded(auto_run):
    results = json.loads((auto_run / "results.json").read_text())
    pick = results["picked_checkpoints"]["2-shot-auto"]
    trajectory = Trajectory(auto_run / "teacher")
    steps, values = trajectory.curve("eval_accuracy")
    window = TwoShotAuto().window(steps, values)
    used = read_metrics(auto_run / "students" / "2-shot-auto-seed1" / "metrics.jsonl")[1]["teacher_checkpoint"]
    assert pick == {
        "checkpoint": used,
        "metric": "eval_accuracy",
        "value": trajectory.metrics(used)["eval_accuracy"],
        "first_steps": 100,
        "transition": window.to_dict(),
    }
    assert used == window.middle
    summary = (auto_run / "summary.md").read_text()
    assert (
        f"2-shot-auto: the first checkpoint is step {used} (teacher eval_accuracy "
        f"{pick['value']:.4f}), the middle of the transition detected at steps {window.start}-{window.end}" in summary
    )


def test_accuracy_figure_keeps_every_curve_and_the_data_visible(auto_run):
    fig = accuracy_figure(auto_run)
    ax = fig.axes[0]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = ax.get_legend() or fig.legends[0]
    assert not legends.get_window_extent(renderer).overlaps(ax.get_window_extent(renderer))  # outside the data
    students = [line for line in ax.get_lines() if line.get_label().split(" ")[0] in ("ce", "2-shot", "2-shot-auto")]
    assert len(students) == 3
    styles = {(line.get_linestyle(), line.get_marker()) for line in students}
    assert len(styles) == 3 and all(marker not in ("None", "") for _, marker in styles)  # identical curves stay visible
    caption = " ".join(t.get_text() for t in fig.texts)
    assert "min-max over the 2 seeds" in caption and "mean" in caption


@pytest.mark.parametrize("curves", [1, 10, 12, 20, 30])
def test_no_two_curves_of_a_figure_share_a_colour(curves):
    from matplotlib.colors import to_hex

    from progdistill.store.report import curve_style

    colours = [to_hex(curve_style(i, 100, curves)["color"]) for i in range(curves)]
    assert len(set(colours)) == curves
    if curves <= 20:  # matplotlib's default ten first: figures of up to ten curves are unchanged
        assert colours[: min(curves, 10)] == [to_hex(f"C{i}") for i in range(min(curves, 10))]


def test_a_run_changed_from_its_preset_says_derived_from(tmp_path):
    from progdistill.recipes.presets import get_preset, preset_changes

    preset = get_preset("parity-mlp")
    assert preset_changes(preset) == []
    steps = replace(preset, student=replace(preset.student, steps=70_000), seeds=2)
    assert preset_changes(steps) == ["student.steps", "seeds"]
    assert preset_changes(replace(preset, schedules=preset.schedules[:2])) == ["schedules"]
    generation = get_preset("pcfg-lm-generation")  # a shorter list of ways is the one field "ways", as schedules
    assert preset_changes(replace(generation, ways=generation.ways[:2])) == ["ways"]
    assert preset_changes(replace(generation, ways=())) == ["ways"]
    assert preset_changes(tiny_config()) == []  # "tiny" names no preset
    # A run of a preset's name with other fields: results.json keeps "preset" (its readers) and adds "modified";
    # summary.md says "derived from".
    config = replace(tiny_config(steps=150), preset="parity-mlp", schedules=(CE(),))
    results = run(config, tmp_path / "run", log=quiet)
    assert results["preset"] == "parity-mlp" and results["modified"] == preset_changes(config)
    assert "student.steps" in results["modified"] and "task.n" in results["modified"]
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["modified"] == results["modified"]
    title = (tmp_path / "run" / "summary.md").read_text().splitlines()[0]
    assert title.startswith("# Derived from parity-mlp (modified: task.n, task.k, task.eval_size, teacher.model.width")
