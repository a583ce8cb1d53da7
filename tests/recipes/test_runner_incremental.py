"""Incremental sweeps: a config that only adds seeds or schedules trains the missing students only."""

import json
from dataclasses import replace

import pytest
from conftest import tiny_config

from progdistill.core.config import ConfigError
from progdistill.distill.schedules import FINAL, KShot, Progressive
from progdistill.recipes.runner import run
from progdistill.store.rundir import RunDir, grows


def test_grows_only_when_seeds_or_schedules_are_added():
    old = tiny_config(seeds=2).to_dict()
    assert grows(old, tiny_config(seeds=3).to_dict())
    fewer = replace(tiny_config(seeds=2), schedules=tiny_config().schedules[:2]).to_dict()
    assert grows(fewer, old)  # two schedules added
    assert not grows(old, old)  # nothing added
    assert not grows(old, tiny_config(seeds=1).to_dict())  # a seed removed
    assert not grows(old, fewer)  # schedules removed
    other = tiny_config(seeds=3)
    assert not grows(old, replace(other, threshold=0.8).to_dict())  # and something else changed
    changed = replace(other, schedules=(*other.schedules[:3], KShot(points=((50, 100), (FINAL, 200)))))
    assert not grows(old, changed.to_dict())  # a schedule's setting changed


def test_removing_students_or_changing_what_they_depend_on_still_needs_overwrite(tmp_path):
    rundir = RunDir(tmp_path / "run")
    rundir.claim(tiny_config(seeds=2), overwrite=False)
    rundir.claim(tiny_config(seeds=3), overwrite=False)  # grown: accepted, config.json now has 3 seeds
    assert json.loads(rundir.config_file.read_text())["seeds"] == 3
    with pytest.raises(ConfigError, match=r"seeds: 3 != 2.*pass --overwrite"):
        rundir.claim(tiny_config(seeds=2), overwrite=False)
    config = tiny_config(seeds=4)
    with pytest.raises(ConfigError, match=r"student.steps: 300 != 200.*--overwrite"):
        rundir.claim(replace(config, student=replace(config.student, steps=200)), overwrite=False)


@pytest.mark.e2e
def test_two_seeds_then_three_trains_only_the_new_students_and_equals_a_fresh_run(tmp_path):
    out, fresh = tmp_path / "grown", tmp_path / "fresh"
    run(tiny_config(seeds=2), out, device="cpu", log=lambda *a: None)
    old = {p: p.stat().st_mtime_ns for p in (out / "students").rglob("*") if p.is_file()}
    teacher = {p: p.stat().st_mtime_ns for p in (out / "teacher").rglob("*") if p.is_file()}
    lines = []
    results = run(tiny_config(seeds=3), out, device="cpu", log=lines.append)  # no --overwrite
    assert "training 4 student(s) together: ce-seed2, one-shot-seed2, progressive-seed2, 2-shot-seed2" in lines
    assert any(line.startswith("reusing finished teacher") for line in lines)
    assert {p: p.stat().st_mtime_ns for p in old} == old  # seeds 0 and 1 untouched
    assert {p: p.stat().st_mtime_ns for p in teacher} == teacher
    assert len(results["students"]) == 12
    run(tiny_config(seeds=3), fresh, device="cpu", log=lambda *a: None)

    def strip(d):
        return {
            k: v
            for k, v in json.loads((d / "results.json").read_text()).items()
            if k not in ("wall_time_s", "environment")
        }

    assert strip(out) == strip(fresh)
    for name in (p.name for p in (fresh / "students").iterdir() if p.is_dir()):
        for f in ("metrics.jsonl", "final.safetensors"):
            assert (out / "students" / name / f).read_bytes() == (fresh / "students" / name / f).read_bytes()
    # and a schedule added later: only its students train
    more = replace(tiny_config(seeds=3), schedules=(*tiny_config().schedules, Progressive(speed=2.0)))
    lines.clear()
    results = run(more, out, device="cpu", log=lines.append)
    assert [line for line in lines if line.startswith("training")] == [
        "training 3 student(s) together: progressive-x2-seed0, progressive-x2-seed1, progressive-x2-seed2"
    ]
    assert len(results["students"]) == 15
