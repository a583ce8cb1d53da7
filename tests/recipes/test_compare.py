"""`progdistill compare`: one table and one figure across the finished runs of a sweep.

The unit tests build run directories from files alone (a config.json and a results.json with hand-picked
numbers), so every table value is checked against a hand computation; the e2e test trains three shrunk runs of
a temperature sweep and checks the table against each run's results.json.
"""

import csv
import json
import math
from dataclasses import replace

import pytest
from conftest import forget_plugin, plugin_config, tiny_config, write_plugin

from progdistill.cli import main
from progdistill.core.config import ConfigError, flatten
from progdistill.core.files import atomic_write_json
from progdistill.core.plugins import import_plugin
from progdistill.core.settings import DistillationConfig, Way
from progdistill.distill.schedules import CE, FINAL, KShot, Progressive
from progdistill.experiment import config_hash
from progdistill.recipes.compare import compare, compare_runs
from progdistill.recipes.presets import get_preset
from progdistill.recipes.runner import run


def sweep_config(temperature: float, **changes):
    base = tiny_config(seeds=2)
    return replace(
        base, distillation=DistillationConfig(temperature=temperature), schedules=(CE(), Progressive()), **changes
    )


def fake_run(path, config, students, teacher_steps=100):
    """A finished run directory made of files only: config.json and a results.json whose students are
    (schedule, seed, steps_to_threshold, final_accuracy) tuples."""
    path.mkdir(parents=True)
    atomic_write_json(path / "config.json", config.to_dict())
    results = {
        "preset": config.preset,
        "config_sha256": config_hash(config),
        "threshold": config.threshold,
        "wall_time_s": 1.0,
        "teacher": {"steps_to_threshold": teacher_steps, "final_accuracy": 1.0, "final_loss": 0.1, "steps": 300},
        "students": [
            {"schedule": s, "seed": k, "steps_to_threshold": t, "final_accuracy": a, "final_loss": 0.2, "steps": 300}
            for s, k, t, a in students
        ],
    }
    atomic_write_json(path / "results.json", results)
    return path


@pytest.fixture
def sweep(tmp_path):
    """Three runs of a temperature sweep, given out of order (2.0, 0.5, 1.0)."""
    return [
        fake_run(
            tmp_path / "t2",
            sweep_config(2.0),
            [("ce", 0, 150, 1.0), ("progressive", 0, None, 0.75), ("ce", 1, 250, 1.0), ("progressive", 1, None, 0.5)],
        ),
        fake_run(
            tmp_path / "t05",
            sweep_config(0.5),
            [("ce", 0, 150, 1.0), ("progressive", 0, 100, 1.0), ("ce", 1, 250, 1.0), ("progressive", 1, 200, 0.875)],
        ),
        fake_run(
            tmp_path / "t1",
            sweep_config(1.0),
            [("ce", 0, 150, 1.0), ("progressive", 0, 300, 0.9), ("ce", 1, 250, 1.0), ("progressive", 1, None, 0.7)],
        ),
    ]


def test_flatten_names_fields_as_set_does():
    assert flatten({"a": {"b": 1, "c": [2, {"d": None}]}, "e": [], "f": "x"}) == {
        "a.b": 1,
        "a.c.0": 2,
        "a.c.1.d": None,
        "e": [],
        "f": "x",
    }


def test_table_values_by_hand(sweep, tmp_path):
    comparison = compare(sweep, tmp_path / "out")
    assert comparison["field"] == "distillation.temperature"
    assert comparison["varying"] == {"distillation.temperature": [0.5, 1.0, 2.0]}  # sorted by the field
    runs = {
        r["values"]["distillation.temperature"]: {s["schedule"]: s for s in r["schedules"]} for r in comparison["runs"]
    }
    prog = runs[0.5]["progressive"]
    assert prog["steps_to_threshold"]["mean"] == 150 and prog["seeds_reaching"] == 2
    assert prog["steps_to_threshold"]["std"] == pytest.approx(math.sqrt(2 * 50**2))  # sample std of 100, 200
    assert prog["final_accuracy"]["mean"] == 0.9375
    assert prog["final_accuracy"]["std"] == pytest.approx(math.sqrt(2 * 0.0625**2))
    assert runs[1.0]["progressive"]["steps_to_threshold"] == {"mean": 300, "std": None, "values": [300]}
    assert runs[1.0]["progressive"]["seeds_reaching"] == 1
    assert runs[2.0]["progressive"]["steps_to_threshold"]["mean"] is None
    assert runs[2.0]["progressive"]["final_accuracy"]["mean"] == 0.625
    assert runs[2.0]["ce"]["steps_to_threshold"]["mean"] == 200

    rows = list(csv.DictReader((tmp_path / "out" / "comparison.csv").open()))
    assert [(r["distillation.temperature"], r["schedule"]) for r in rows] == [
        ("0.5", "ce"),
        ("0.5", "progressive"),
        ("1.0", "ce"),
        ("1.0", "progressive"),
        ("2.0", "ce"),
        ("2.0", "progressive"),
    ]
    assert rows[1]["steps_to_threshold_mean"] == "150" and rows[1]["final_accuracy_mean"] == "0.9375"
    assert rows[5]["steps_to_threshold_mean"] == "" and rows[5]["seeds_reaching"] == "0"
    table = (tmp_path / "out" / "comparison.md").read_text()
    assert "| 0.5 | progressive | 2 | 150 +/- 71 | 2/2 | 0.9375 +/- 0.0884 | 100 |" in table
    assert "| 2.0 | progressive | 2 | not reached | 0/2 | 0.6250 +/- 0.1768 | 100 |" in table
    assert json.loads((tmp_path / "out" / "comparison.json").read_text()) == comparison
    assert (tmp_path / "out" / "comparison.png").stat().st_size > 10_000


def test_speed_sweep_keeps_one_curve_per_schedule(tmp_path):
    runs = [
        fake_run(
            tmp_path / f"x{speed}",
            replace(sweep_config(0.5), schedules=(CE(), Progressive(speed=speed))),
            [
                ("ce", 0, 100, 1.0),
                (Progressive(speed=speed).label, 0, 200, 1.0),
                ("ce", 1, 100, 1.0),
                (Progressive(speed=speed).label, 1, 200, 1.0),
            ],
        )
        for speed in (1.0, 2.0)
    ]
    comparison = compare_runs(runs)
    assert comparison["field"] == "schedules.1.speed"
    assert [[s["schedule"] for s in r["schedules"]] for r in comparison["runs"]] == [
        ["ce", "progressive"],
        ["ce", "progressive-x2"],
    ]
    assert {s["curve"] for r in comparison["runs"] for s in r["schedules"]} == {"ce", "progressive"}


def test_two_renamed_schedules_of_one_type_stay_two_curves(tmp_path):
    def kshot(name):
        return KShot(points=((100, 100), (FINAL, 200)), name=name)

    runs = [
        fake_run(
            tmp_path / tag,
            replace(sweep_config(0.5), schedules=(kshot(f"early-{tag}"), kshot(f"late-{tag}"))),
            [
                (f"early-{tag}", 0, 100, 1.0),
                (f"late-{tag}", 0, 200, 1.0),
                (f"early-{tag}", 1, 100, 1.0),
                (f"late-{tag}", 1, 200, 1.0),
            ],
        )
        for tag in ("a", "b")
    ]
    comparison = compare_runs(runs, field="schedules.0.name")
    assert [s["curve"] for s in comparison["runs"][0]["schedules"]] == ["k-shot (schedules.0)", "k-shot (schedules.1)"]


def test_several_varying_fields_need_field(sweep, tmp_path):
    other = fake_run(
        tmp_path / "wide",
        sweep_config(0.25, student=replace(tiny_config().student, steps=400)),
        [("ce", 0, 100, 1.0), ("progressive", 0, 100, 1.0), ("ce", 1, 100, 1.0), ("progressive", 1, 100, 1.0)],
    )
    with pytest.raises(
        ConfigError,
        match=r"2 config fields vary between the runs: student.steps \(300, 300, "
        r"300, 400\); distillation.temperature .*--field",
    ):
        compare_runs([*sweep, other])
    comparison = compare_runs([*sweep, other], field="distillation.temperature")
    assert list(comparison["varying"]) == ["student.steps", "distillation.temperature"]
    assert comparison["runs"][0]["values"] == {"student.steps": 400, "distillation.temperature": 0.25}
    with pytest.raises(ConfigError, match="--field seeds is the same in every run; the fields that vary"):
        compare_runs([*sweep, other], field="seeds")
    with pytest.raises(ConfigError, match="--field distillation.temprature is not a config field"):
        compare_runs(sweep, field="distillation.temprature")


def test_bad_inputs_one_clear_error_each(sweep, tmp_path):
    with pytest.raises(ConfigError, match="at least two run directories"):
        compare_runs(sweep[:1])
    with pytest.raises(ConfigError, match="is given twice"):
        compare_runs([sweep[0], tmp_path / "t2" / ".." / "t2"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="empty is not a run directory \\(no config.json\\)"):
        compare_runs([sweep[0], tmp_path / "empty"])
    atomic_write_json(tmp_path / "empty" / "config.json", {"preset": "x"})
    with pytest.raises(ConfigError, match="empty/config.json: config: required field\\(s\\) student, task, teacher"):
        compare_runs([sweep[0], tmp_path / "empty"])
    (sweep[1] / "results.json").unlink()
    with pytest.raises(ConfigError, match="t05 is not a finished run \\(no results.json\\)"):
        compare_runs(sweep)
    same = fake_run(tmp_path / "same", sweep_config(2.0), [])
    with pytest.raises(ConfigError, match="are identical: no config field varies"):
        compare_runs([sweep[0], same])
    atomic_write_json(sweep[2] / "config.json", sweep_config(3.0).to_dict())
    with pytest.raises(ConfigError, match="t1/results.json belongs to another config"):
        compare_runs([sweep[0], sweep[2]])


def test_runs_of_different_tasks_are_refused(sweep, tmp_path):
    grammar = fake_run(tmp_path / "grammar", get_preset("pcfg-mlm"), [])
    with pytest.raises(
        ConfigError,
        match=r"runs of one task; these are of different tasks: .*t2 \(parity\), "
        r".*grammar \(pcfg-mlm\)",
    ):
        compare_runs([sweep[0], grammar])


def test_cli_compare(sweep, tmp_path, capsys):
    assert main(["compare", *map(str, sweep), "--out", str(tmp_path / "cli")]) == 0
    assert "| 1.0 | progressive | 2 | 300 | 1/2 |" in capsys.readouterr().out
    assert main(["compare", str(sweep[0])]) == 2
    assert "at least two run directories (got 1" in capsys.readouterr().err


@pytest.mark.e2e
def test_temperature_sweep_end_to_end(tmp_path):
    """Three shrunk parity-mlp runs at temperatures 0.5, 1, 2: the table equals each run's results.json."""
    paths = []
    for temperature in (2.0, 0.5, 1.0):
        out = tmp_path / f"t{temperature}"
        run(sweep_config(temperature), out, log=lambda *a: None)
        paths.append(out)
    comparison = compare(paths, tmp_path / "out")
    assert [r["values"]["distillation.temperature"] for r in comparison["runs"]] == [0.5, 1.0, 2.0]
    for entry in comparison["runs"]:
        results = json.loads(
            (tmp_path / f"t{entry['values']['distillation.temperature']}" / "results.json").read_text()
        )
        assert entry["teacher"]["steps_to_threshold"] == results["teacher"]["steps_to_threshold"]
        for s in entry["schedules"]:
            students = [r for r in results["students"] if r["schedule"] == s["schedule"]]
            assert len(students) == s["seeds"] == 2
            assert s["final_accuracy"]["values"] == [r["final_accuracy"] for r in students]
            assert s["final_accuracy"]["mean"] == pytest.approx(sum(s["final_accuracy"]["values"]) / 2)
            reached = [r["steps_to_threshold"] for r in students if r["steps_to_threshold"] is not None]
            assert s["steps_to_threshold"]["values"] == reached
    assert (tmp_path / "out" / "comparison.png").stat().st_size > 10_000
    assert len((tmp_path / "out" / "comparison.csv").read_text().splitlines()) == 1 + 3 * 2


def test_compare_runs_whose_plugin_is_gone_by_type_name(tmp_path):
    name = "compare_plugin_gone"
    module = import_plugin(str(write_plugin(tmp_path, name)))
    try:
        runs = [
            fake_run(
                tmp_path / f"t{t}",
                replace(plugin_config(module, seeds=2), distillation=DistillationConfig(temperature=t)),
                [
                    ("ce", 0, 100, 1.0),
                    (f"{name}-schedule", 0, 200 * t, 0.9),
                    ("ce", 1, 100, 1.0),
                    (f"{name}-schedule", 1, None, 0.8),
                ],
            )
            for t in (0.5, 1.0)
        ]
    finally:
        forget_plugin(name)
    (tmp_path / f"{name}.py").unlink()
    assert json.loads((runs[0] / "config.json").read_text())["plugins"][0]["module"] == name
    with pytest.warns(UserWarning, match=f"cannot import plugin file .*{name}.py: it does not exist"):
        comparison = compare(runs, tmp_path / "out")
    assert comparison["task"] == f"{name}-task" and comparison["field"] == "distillation.temperature"
    mine = [r["schedules"][1] for r in comparison["runs"]]
    assert [s["schedule"] for s in mine] == [f"{name}-schedule"] * 2
    assert [s["steps_to_threshold"]["values"] for s in mine] == [[100.0], [200.0]]
    assert (
        f"| 1.0 | {name}-schedule | 2 | 200 | 1/2 | 0.8500 +/- 0.0707 | 100 |"
        in (tmp_path / "out" / "comparison.md").read_text()
    )


def test_runs_with_different_schedule_lists_vary_in_their_schedules(tmp_path):
    # The third schedule exists in one run only: before, its fields were listed as varying (null, null).
    two = replace(sweep_config(0.5), schedules=(CE(), Progressive()))
    three = replace(sweep_config(1.0), schedules=(CE(), Progressive(), KShot(points=((100, 100), (FINAL, 200)))))
    swapped = replace(sweep_config(2.0), schedules=(CE(), KShot(points=((100, 100), (FINAL, 200)))))
    students = [("ce", 0, 100, 1.0), ("progressive", 0, 200, 1.0), ("2-shot", 0, 150, 1.0)]
    runs = [fake_run(tmp_path / n, c, students) for n, c in (("two", two), ("three", three))]
    comparison = compare_runs(runs, field="distillation.temperature")
    assert comparison["varying"] == {
        "distillation.temperature": [0.5, 1.0],
        "schedules": [["ce", "progressive"], ["ce", "progressive", "2-shot"]],
    }
    runs = [runs[0], fake_run(tmp_path / "swapped", swapped, students)]  # same length, another type at 1
    comparison = compare_runs(runs, field="distillation.temperature")
    assert comparison["varying"] == {"distillation.temperature": [0.5, 2.0], "schedules.1": ["progressive", "2-shot"]}


def test_a_categorical_axis_has_points_not_lines_and_no_empty_panel(tmp_path):
    from progdistill.recipes.compare import comparison_figure

    losses = [("forward_kl", 1.0), ("reverse_kl", 1.0), ("total_variation", 1.0)]
    runs = [
        fake_run(
            tmp_path / loss,
            replace(sweep_config(t), distillation=DistillationConfig(loss=loss, temperature=t)),
            [("ce", 0, None, 0.5), ("progressive", 0, None, 0.6), ("ce", 1, None, 0.5), ("progressive", 1, None, 0.6)],
            teacher_steps=None,
        )
        for loss, t in losses
    ]
    comparison = compare_runs(runs)
    assert comparison["field"] == "distillation.loss"
    fig = comparison_figure(comparison)
    steps_panel, accuracy_panel = fig.axes[:2]
    for ax in (steps_panel, accuracy_panel):
        assert all(line.get_linestyle() == "None" for line in ax.lines)  # no line joins two categories
    assert any("no teacher or student reached" in t.get_text() for t in steps_panel.texts)
    assert not accuracy_panel.texts  # final accuracies: every run has them


def test_a_ways_students_are_rows_of_their_own(tmp_path):
    """Runs with further ways of distilling (config.ways): each way's students form their own rows
    ("<way>-<schedule>"), never mixed into the schedule's row of the experiment's own distillation."""
    runs = []
    for t in (0.5, 1.0):
        config = sweep_config(t, ways=(Way("hot", DistillationConfig(temperature=4.0)),))
        path = fake_run(
            tmp_path / f"t{t}",
            config,
            [("ce", 0, 150, 1.0), ("progressive", 0, 100, 1.0), ("progressive", 0, None, 0.5)],
        )
        results = json.loads((path / "results.json").read_text())
        for student, way in zip(results["students"], ("distillation", "distillation", "hot")):
            student["way"] = way
        atomic_write_json(path / "results.json", results)
        runs.append(path)
    comparison = compare(runs, tmp_path / "out")
    rows = {s["schedule"]: s for s in comparison["runs"][0]["schedules"]}
    assert list(rows) == ["ce", "progressive", "hot-progressive"]  # CE learns from no teacher: no way of its own
    assert rows["progressive"]["steps_to_threshold"]["values"] == [100]
    assert rows["hot-progressive"]["final_accuracy"]["values"] == [0.5]
