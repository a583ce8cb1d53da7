"""Comparing finished runs of a sweep (a temperature, a progressive speed, a width, ...): one table and one figure.

The varied config field is found from the runs' ``config.json`` files: every field whose value is not the same
in all runs (dotted paths, as ``--set`` takes them, e.g. ``distillation.temperature``, ``schedules.2.speed``).
Per run and schedule, the numbers come from the run's ``results.json`` (:mod:`progdistill.store.report`): steps to
the threshold accuracy (mean and sample std over the seeds that reached it; paper §1, Figure 1) and final
accuracy (mean and sample std over all seeds). Files alone: nothing is trained or loaded.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # figures are files: no display needed, whatever the environment says
import matplotlib.pyplot as plt

from progdistill.core.config import ConfigError, flatten, to_dict
from progdistill.core.files import atomic_write_json, atomic_write_text
from progdistill.experiment import ExperimentConfig, config_hash
from progdistill.store.report import caption, curve_style, save_figure
from progdistill.store.rundir import RunDir

TABLE, CSV, JSON, FIGURE = "comparison.md", "comparison.csv", "comparison.json", "comparison.png"


@dataclass(frozen=True)
class _Run:
    path: Path
    config: ExperimentConfig
    fields: dict[str, Any]  # flattened complete config
    results: dict[str, Any]


def load_run(path: str | Path) -> _Run:
    """A finished run directory's config and results. Raises ``ConfigError`` naming the directory when it is
    not a run directory, not finished (no ``results.json``), or its ``results.json`` is of another config."""
    rundir = RunDir(path)
    if not rundir.path.is_dir():
        raise ConfigError(f"{rundir.path} is not a directory; give run directories written by `progdistill run`")
    if not rundir.config_file.exists():
        raise ConfigError(
            f"{rundir.path} is not a run directory (no config.json); give run directories written by `progdistill run`"
        )
    try:
        config = rundir.config(lenient=True)  # files alone: a plugin that cannot be imported shows its type name
    except ConfigError as exc:
        raise ConfigError(f"{rundir.config_file}: {exc}") from None
    if not rundir.results_file.exists():
        raise ConfigError(
            f"{rundir.path} is not a finished run (no results.json): finish it first by rerunning "
            f"`progdistill run {rundir.config_file} --out {rundir.path}`"
        )
    try:
        results = json.loads(rundir.results_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {rundir.results_file}: {exc}") from None
    # results.json holds the hash of the config as read (today's type names) or, written before a rename, as written
    if results.get("config_sha256") not in (config_hash(config), config_hash(rundir.config_json())):
        raise ConfigError(
            f"{rundir.results_file} belongs to another config than {rundir.config_file} (its "
            f"config_sha256 differs): rerun `progdistill run {rundir.config_file} --out "
            f"{rundir.path}` to rewrite it"
        )
    return _Run(rundir.path, config, flatten(to_dict(config, complete=True)), results)


def varying_fields(configs: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """The flattened-config fields whose values differ between ``configs`` (each :func:`~progdistill.core.config.
    flatten`-ed), in config order, with each config's value (None where a config lacks the field)."""
    order = list(dict.fromkeys(key for c in configs for key in c))
    return {
        key: [c.get(key) for c in configs]
        for key in order
        if any(c.get(key, _MISSING) != configs[0].get(key, _MISSING) for c in configs)
    }


_MISSING = object()


def comparable_fields(runs: Sequence[_Run]) -> list[dict[str, Any]]:
    """Each run's flattened config, where the runs' configs can be matched item by item: a list whose length
    differs between the runs (different schedule lists), or a list item whose type differs (a progressive
    schedule here, a k-shot one there), is one field, valued by its schedules' labels (other lists: as
    written), instead of item fields that some runs lack."""
    datas = [to_dict(run.config, complete=True) for run in runs]
    whole = _unmatched(datas, "")
    out = []
    for run, data in zip(runs, datas):
        fields: dict[str, Any] = {}
        for key, value in run.fields.items():
            w = next((w for w in whole if key == w or key.startswith(w + ".")), None)
            if w is None:
                fields[key] = value
            elif w not in fields:  # the unmatched part, once, where its first item field was
                fields[w] = _labels(run.config, w, _at(data, w))
        out.append(fields)
    return out


def _labels(config: ExperimentConfig, path: str, value: Any) -> Any:
    """The value of an unmatched part of ``config`` at ``path``: the schedules' labels for its schedules or one
    schedule, else the JSON form as written."""
    parts = path.split(".")
    if parts[0] == "schedules" and len(parts) == 1:
        return [s.label for s in config.schedules]
    if parts[0] == "schedules" and len(parts) == 2:
        return config.schedules[int(parts[1])].label
    return value


def _unmatched(datas: list[Any], path: str) -> list[str]:
    """Paths below ``path`` at which ``datas`` (JSON-form configs, or parts) cannot be matched item by item."""
    if all(isinstance(d, list) for d in datas):
        if len({len(d) for d in datas}) > 1:
            return [path]
        return [p for i in range(len(datas[0])) for p in _unmatched([d[i] for d in datas], f"{path}.{i}".lstrip("."))]
    if all(isinstance(d, dict) for d in datas):
        if len({d.get("type") for d in datas}) > 1:
            return [path]
        keys = dict.fromkeys(k for d in datas for k in d)
        return [
            p
            for k in keys
            if all(k in d for d in datas)
            for p in _unmatched([d[k] for d in datas], f"{path}.{k}".lstrip("."))
        ]
    return []


def _at(data: Any, path: str) -> Any:
    for part in path.split("."):
        data = data[int(part)] if isinstance(data, list) else data[part]
    return data


def compare_runs(paths: Sequence[str | Path], field: str | None = None) -> dict[str, Any]:
    """The comparison of finished runs ``paths`` (at least two, of one task type) against config ``field``
    (default: the one field that varies between them); ``comparison.json``'s content.

    Raises ``ConfigError`` (before anything is written) for fewer than two runs, a directory given twice, a
    directory that is not a finished run, runs of different task types, runs whose configs are identical,
    several varying fields and no ``field``, or a ``field`` that does not vary between the runs.
    """
    if len(paths) < 2:
        raise ConfigError(
            f"compare needs at least two run directories (got {len(paths)}: "
            f"{', '.join(map(str, paths)) or 'none'}); give the runs of a sweep"
        )
    seen: dict[Path, str] = {}
    for p in paths:
        key = Path(p).resolve()
        if key in seen:
            raise ConfigError(f"run directory {p} is given twice (also as {seen[key]}); give each run once")
        seen[key] = str(p)
    runs = [load_run(p) for p in paths]
    tasks = [run.fields["task.type"] for run in runs]
    if len(set(tasks)) > 1:
        raise ConfigError(
            "compare needs runs of one task; these are of different tasks: "
            + ", ".join(f"{run.path} ({task})" for run, task in zip(runs, tasks))
        )
    fields = comparable_fields(runs)
    varying = varying_fields(fields)
    if not varying:
        raise ConfigError(
            f"the configs of {', '.join(str(r.path) for r in runs)} are identical: no config field "
            "varies to compare against (a sweep's runs differ in one field, e.g. "
            "--set distillation.temperature=1.0)"
        )
    listing = "; ".join(f"{k} ({', '.join(_show(v) for v in values)})" for k, values in varying.items())
    if field is None:
        if len(varying) > 1:
            raise ConfigError(
                f"{len(varying)} config fields vary between the runs: {listing}; choose the "
                f"figure's x axis with --field, e.g. --field {next(iter(varying))} (the table "
                "lists every varying field)"
            )
        field = next(iter(varying))
    elif field not in varying:
        where = "is the same in every run" if field in fields[0] else "is not a config field"
        raise ConfigError(f"--field {field} {where}; the fields that vary between the runs: {listing}")
    order = sorted(range(len(runs)), key=lambda i: _sort_key(varying[field][i], i))
    runs = [runs[i] for i in order]
    varying = {k: [values[i] for i in order] for k, values in varying.items()}
    keys = _schedule_keys(runs)
    return {
        "field": field,
        "task": tasks[0],
        "varying": varying,
        "runs": [_run_entry(run, {k: v[i] for k, v in varying.items()}, keys[i]) for i, run in enumerate(runs)],
    }


def _sort_key(value: Any, i: int) -> tuple:
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return (0, value, i) if numeric else (1, 0, i)  # numbers ascending first, the rest in the order given


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _schedule_keys(runs: list[_Run]) -> list[list[str]]:
    """Per run, the name of the figure's curve of each of its schedules. When every run has the same schedule
    types in the same order, a schedule is known by its position (a speed sweep renames "progressive" to
    "progressive-x2"): its label where that is the same in all runs, else its type; otherwise by its label."""
    types = [[s.kind for s in run.config.schedules] for run in runs]
    if any(t != types[0] for t in types):
        return [[s.label for s in run.config.schedules] for run in runs]
    names = []
    for i, kind in enumerate(types[0]):
        labels = {run.config.schedules[i].label for run in runs}
        names.append(labels.pop() if len(labels) == 1 else kind)
    # two positions of one type whose labels both vary (two k-shot schedules): named by their position
    names = [f"{name} (schedules.{i})" if names.count(name) > 1 else name for i, name in enumerate(names)]
    return [names for _ in runs]


def _stats(values: list[float]) -> dict[str, Any]:
    """Mean and sample std (None for fewer than 2 values; both None for none)."""
    return {
        "mean": statistics.mean(values) if values else None,
        "std": statistics.stdev(values) if len(values) > 1 else None,
    }


def _run_entry(run: _Run, values: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    results = run.results
    schedules = []
    # one row per schedule, and per further way (config.ways) of the schedules that learn from a teacher
    rows: list[tuple[str | None, Any, str]] = [(None, sched, key) for sched, key in zip(run.config.schedules, keys)]
    rows += [
        (way.name, sched, key)
        for way in run.config.ways
        for sched, key in zip(run.config.schedules, keys)
        if sched.needs_teacher
    ]
    for way, sched, key in rows:
        students = [
            s
            for s in results["students"]
            if s["schedule"] == sched.label and s.get("way", "distillation") == (way or "distillation")
        ]
        reached = [s["steps_to_threshold"] for s in students if s["steps_to_threshold"] is not None]
        accuracy = [s["final_accuracy"] for s in students]
        schedules.append(
            {
                "schedule": sched.label if way is None else f"{way}-{sched.label}",
                "curve": key if way is None else f"{way}-{key}",
                "seeds": len(students),
                "seeds_reaching": len(reached),
                "steps_to_threshold": {**_stats(reached), "values": reached},
                "final_accuracy": {**_stats(accuracy), "values": accuracy},
            }
        )
    teacher = results["teacher"]
    return {
        "run": str(run.path),
        "values": values,
        "threshold": results["threshold"],
        "teacher": {"steps_to_threshold": teacher["steps_to_threshold"], "final_accuracy": teacher["final_accuracy"]},
        "schedules": schedules,
    }


def _mean_std(stats: dict[str, Any], fmt: str) -> str:
    if stats["mean"] is None:
        return "-"
    return format(stats["mean"], fmt) + ("" if stats["std"] is None else f" +/- {format(stats['std'], fmt)}")


def _thresholds(comparison: dict[str, Any]) -> str:
    levels = {run["threshold"] for run in comparison["runs"]}
    return f"{levels.pop():.0%}" if len(levels) == 1 else "threshold"


def comparison_markdown(comparison: dict[str, Any]) -> str:
    """The comparison as a Markdown table: one row per run and schedule, keyed by every varying field."""
    fields, thr = list(comparison["varying"]), _thresholds(comparison)
    runs = comparison["runs"]
    others = [f for f in fields if f != comparison["field"]]
    lines = [
        f"# {len(runs)} {comparison['task']} runs against {comparison['field']}",
        "",
        f"Config fields that vary between the runs: {', '.join(fields)}."
        + (
            f" The figure's x axis is {comparison['field']}; the other varying fields ({', '.join(others)}) "
            "change with it."
            if others
            else ""
        ),
        "",
        "| run | " + " | ".join(fields) + f" | schedule | seeds | steps to {thr} (mean +/- std) | seeds reaching "
        f"{thr} | final accuracy (mean +/- std) | teacher steps to {thr} |",
        "|---" * (len(fields) + 7) + "|",
    ]
    for run in runs:
        cells = " | ".join(_show(run["values"][f]) for f in fields)
        teacher = run["teacher"]["steps_to_threshold"]
        for s in run["schedules"]:
            steps = _mean_std(s["steps_to_threshold"], ".0f") if s["seeds_reaching"] else "not reached"
            lines.append(
                f"| {run['run']} | {cells} | {s['schedule']} | {s['seeds']} | {steps} | "
                f"{s['seeds_reaching']}/{s['seeds']} | {_mean_std(s['final_accuracy'], '.4f')} | "
                f"{'not reached' if teacher is None else teacher} |"
            )
    lines += [
        "",
        "Steps to the threshold: mean +/- sample std over the seeds that reached it; final accuracy: over "
        "all seeds. From each run's results.json.",
        "",
    ]
    return "\n".join(lines)


def comparison_csv(comparison: dict[str, Any]) -> str:
    """The comparison as CSV, one row per run and schedule (empty cells: no value)."""
    fields = list(comparison["varying"])
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        [
            "run",
            *fields,
            "schedule",
            "seeds",
            "seeds_reaching",
            "steps_to_threshold_mean",
            "steps_to_threshold_std",
            "final_accuracy_mean",
            "final_accuracy_std",
            "threshold",
            "teacher_steps_to_threshold",
            "teacher_final_accuracy",
        ]
    )
    for run in comparison["runs"]:
        for s in run["schedules"]:
            steps, acc = s["steps_to_threshold"], s["final_accuracy"]
            row = [
                run["run"],
                *(_show(run["values"][f]) for f in fields),
                s["schedule"],
                s["seeds"],
                s["seeds_reaching"],
                steps["mean"],
                steps["std"],
                acc["mean"],
                acc["std"],
                run["threshold"],
                run["teacher"]["steps_to_threshold"],
                run["teacher"]["final_accuracy"],
            ]
            writer.writerow(["" if v is None else v for v in row])
    return buffer.getvalue()


def comparison_figure(comparison: dict[str, Any]):
    """Steps to threshold (left) and final accuracy (right) against the comparison's field: one line per
    schedule (mean, error bars: sample std over seeds), the teacher dashed black. A numeric field is a numeric
    axis; any other (a loss name, null) is categorical, in the runs' order, with points and no lines between
    them. A panel with no point (no run reached the threshold) says so. Returns the matplotlib figure."""
    field, runs = comparison["field"], comparison["runs"]
    values = [run["values"][field] for run in runs]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    xs = values if numeric else list(range(len(runs)))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    curves = list(dict.fromkeys(s["curve"] for run in runs for s in run["schedules"]))
    missing = False
    for ax, metric in zip(axes, ("steps_to_threshold", "final_accuracy")):
        teacher = [(x, run["teacher"][metric]) for x, run in zip(xs, runs) if run["teacher"][metric] is not None]
        # categories have no order to interpolate along: points only, the teacher a black bar at each
        line = {"ls": "--", "lw": 1} if numeric else {"ls": "none", "marker": "_", "markersize": 16}
        ax.plot([x for x, _ in teacher], [y for _, y in teacher], color="k", label="teacher", **line)
        drawn = bool(teacher)
        for i, curve in enumerate(curves):
            points = [(x, s) for x, run in zip(xs, runs) for s in run["schedules"] if s["curve"] == curve]
            shown = [(x, s) for x, s in points if s[metric]["mean"] is not None]
            missing |= len(shown) < len(points)
            drawn |= bool(shown)
            style = curve_style(i, len(shown), len(curves))
            style.pop("markevery")
            if not numeric:
                style["ls"] = "none"
            ax.errorbar(
                [x for x, _ in shown],
                [s[metric]["mean"] for _, s in shown],
                yerr=[s[metric]["std"] or 0.0 for _, s in shown],
                capsize=3,
                label=curve,
                **style,
            )
            if metric == "steps_to_threshold":
                for x, s in shown:
                    if s["seeds_reaching"] < s["seeds"]:
                        ax.annotate(
                            f"{s['seeds_reaching']}/{s['seeds']}",
                            (x, s[metric]["mean"]),
                            fontsize=7,
                            textcoords="offset points",
                            xytext=(4, 4),
                        )
        if not drawn:  # no run's teacher or student reached the threshold: say so, not an empty panel
            ax.text(
                0.5,
                0.5,
                f"no teacher or student reached\nthe threshold ({_thresholds(comparison)}) in any run",
                transform=ax.transAxes,
                ha="center",
                va="center",
                fontsize=10,
                color="0.3",
            )
        ax.set_xlabel(field)
        if not numeric:
            ax.set_xticks(xs, [_show(v) for v in values])
            ax.set_xlim(-0.5, len(xs) - 0.5)
        ax.grid(alpha=0.3)
    thr = _thresholds(comparison)
    axes[0].set_ylabel(f"student steps to {thr}")
    axes[1].set_ylabel("final accuracy")
    fig.suptitle(f"{comparison['task']}: {len(runs)} runs against {field}")
    axes[1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    others = [f for f in comparison["varying"] if f != field]
    caption(
        fig,
        "Points: mean over seeds (steps: over the seeds that reached the threshold, k/n where not all "
        "did); error bars: sample std. Dashed black: the teacher."
        + (" A missing point: no seed reached the threshold." if missing else "")
        + (f" Also varying: {', '.join(others)}." if others else ""),
    )
    return fig


def compare(paths: Sequence[str | Path], out: str | Path, field: str | None = None) -> dict[str, Any]:
    """Write ``comparison.md``, ``.csv``, ``.json`` and ``.png`` of the finished runs ``paths`` into ``out``
    (created; these four files replaced) and return the comparison (:func:`compare_runs`, whose errors it
    raises before writing). ``out`` must not be one of the runs."""
    comparison = compare_runs(paths, field)
    out = Path(out)
    if any(out.resolve() == Path(run["run"]).resolve() for run in comparison["runs"]):
        raise ConfigError(f"--out {out} is one of the compared runs; choose another directory")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a directory; choose a directory")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / TABLE, comparison_markdown(comparison))
    atomic_write_text(out / CSV, comparison_csv(comparison))
    atomic_write_json(out / JSON, comparison)
    save_figure(comparison_figure(comparison), out / FIGURE)
    return comparison
