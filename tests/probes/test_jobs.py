import json
from dataclasses import replace

import pytest

from progdistill.core.config import ConfigError
from progdistill.core.files import read_metrics
from progdistill.core.settings import OptimizerConfig
from progdistill.distill.schedules import TwoShotAuto
from progdistill.probes.monomials import probe_monomials
from progdistill.recipes.ablation import ablate_two_shot, ablation_checkpoints
from progdistill.recipes.runner import run
from progdistill.store.trajectory import Trajectory


def quiet(*args):
    pass


@pytest.fixture(scope="module")
def slow_teacher_run(tmp_path_factory):
    """n=10, k=3 with a small learning rate: a teacher whose accuracy jumps mid-run (a transition)."""
    from conftest import tiny_config

    base = tiny_config(steps=1500)
    sgd = OptimizerConfig(name="sgd", lr=0.03)
    config = replace(
        base,
        task=replace(base.task, n=10, k=3),
        teacher=replace(
            base.teacher,
            optimizer=sgd,
            eval_every=100,
            checkpoint_every=100,
            model=replace(base.teacher.model, width=256),
        ),
        student=replace(base.student, steps=900, eval_every=100),
        schedules=(TwoShotAuto(first_steps=300),),
    )
    out = tmp_path_factory.mktemp("runs") / "run"
    run(config, out, log=quiet)
    return out


@pytest.mark.e2e
def test_two_shot_auto_picks_the_middle_of_the_transition(slow_teacher_run):
    traj = Trajectory(slow_teacher_run / "teacher")
    steps, acc = traj.curve("eval_accuracy")
    assert acc[0] < 0.6 and acc[-1] > 0.95, acc  # the fixture really has a transition
    resolved = TwoShotAuto(first_steps=300).resolve(traj)
    first = resolved.points[0][0]
    assert 0.55 <= traj.metrics(first)["eval_accuracy"] <= 0.95
    records = [
        json.loads(line)
        for line in (slow_teacher_run / "students" / "2-shot-auto-seed0" / "metrics.jsonl").read_text().splitlines()
    ]
    assert records[1]["teacher_checkpoint"] == first and records[-1]["teacher_checkpoint"] == steps[-1]


def test_two_shot_auto_on_a_flat_teacher_is_a_clear_error():
    class Flat:
        def curve(self, metric):
            return [0, 100, 200, 300, 400], [0.5, 0.5, 0.5, 0.5, 0.5]

    with pytest.raises(
        ConfigError,
        match=r"2-shot-auto needs a teacher whose eval_accuracy has a phase transition: "
        r"no rise .*\. Train the teacher longer \(teacher\.steps\) or leave "
        r"2-shot-auto out of the schedules$",
    ):
        TwoShotAuto(first_steps=10).resolve(Flat())
    with pytest.raises(ConfigError, match="schedule.metric"):
        TwoShotAuto(metric="accuracy")


@pytest.mark.e2e
def test_monomial_probe_over_a_run(slow_teacher_run):
    summary = probe_monomials(slow_teacher_run, students=True, num_samples=32768, log=quiet)
    lines = (slow_teacher_run / "probes" / "monomials.jsonl").read_text().splitlines()
    traj = Trajectory(slow_teacher_run / "teacher")
    assert len(lines) == len(traj.steps) + 1  # every checkpoint and the one student
    first = json.loads(lines[0])
    assert first["model"] == "teacher" and [d["degree"] for d in first["degrees"]] == [1, 2]
    assert (slow_teacher_run / "probes" / "monomials.png").stat().st_size > 10_000
    assert summary["peak_step"] in traj.steps
    # the paper's mechanism on this small instance: degree-1 in-support correlations rise above off-support
    assert summary["peak_degree1_in_support_mean"] > 1.5 * summary["degree1_off_support_mean_at_peak"]


def test_probe_on_a_run_without_teacher_is_an_error(tmp_path):
    from conftest import tiny_config

    from progdistill.store.trajectory import TrajectoryError

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps(tiny_config().to_dict()))
    with pytest.raises(TrajectoryError, match="does not exist"):
        probe_monomials(tmp_path / "run", log=quiet)


@pytest.mark.e2e
def test_two_shot_ablation(slow_teacher_run):
    picks = ablation_checkpoints(Trajectory(slow_teacher_run / "teacher"))
    assert picks["before"] < picks["during"] < picks["after"]
    summary = ablate_two_shot(slow_teacher_run, log=quiet)
    assert summary["first_steps"] == 300
    assert [s["variant"] for s in summary["students"]] == ["before", "during", "after"]
    assert (slow_teacher_run / "ablations" / "two-shot" / "accuracy.png").exists()
    acc = {v: summary["checkpoints"][v]["teacher_eval_accuracy"] for v in ("before", "during", "after")}
    assert acc["before"] < acc["during"] < acc["after"]
    # Same settings: the students are reused. Other first steps: refused (the stored students would be
    # relabelled), nothing deleted; --overwrite trains them again.
    messages = []
    assert ablate_two_shot(slow_teacher_run, log=messages.append) == summary
    assert "all students already finished" in messages
    with pytest.raises(ConfigError, match="bogus"):  # checked even though nothing needs training
        ablate_two_shot(slow_teacher_run, device="bogus", log=quiet)
    with pytest.raises(ConfigError, match="other settings.*first_steps.: 300.*first_steps.: 200"):
        ablate_two_shot(slow_teacher_run, first_steps=200, log=quiet)
    assert json.loads((slow_teacher_run / "ablations" / "two-shot" / "summary.json").read_text()) == summary
    again = ablate_two_shot(slow_teacher_run, first_steps=200, overwrite=True, log=quiet)
    assert again["first_steps"] == 200
    during = read_metrics(slow_teacher_run / "ablations" / "two-shot" / "during-seed0" / "metrics.jsonl")
    assert during[2]["teacher_checkpoint"] == picks["during"] and during[3]["teacher_checkpoint"] != picks["during"]


@pytest.mark.e2e
def test_probe_degree_outside_range_is_an_error(slow_teacher_run, capsys):
    from progdistill.cli import main

    assert main(["probe", "monomials", str(slow_teacher_run), "--degrees", "1", "4", "--samples", "1024"]) == 2
    assert "1..k" in capsys.readouterr().err
    assert main(["probe", "monomials", str(slow_teacher_run), "--degrees", "2", "--samples", "1024"]) == 2
    assert "must include 1" in capsys.readouterr().err


@pytest.mark.e2e
def test_probe_resumes_from_a_partial_file(slow_teacher_run):
    probe_monomials(slow_teacher_run, num_samples=2048, log=quiet)
    full = (slow_teacher_run / "probes" / "monomials.jsonl").read_text()
    lines = full.splitlines()
    settings = {"settings": {"num_samples": 2048, "degrees": None, "seed": 2024}}
    partial = slow_teacher_run / "probes" / ".monomials.partial.jsonl"
    # as left by a probe killed while writing its fourth record
    partial.write_text(json.dumps(settings) + "\n" + "\n".join(lines[:3]) + "\n" + lines[3][:40])
    messages = []
    with pytest.warns(UserWarning, match="truncated final line"):
        probe_monomials(slow_teacher_run, num_samples=2048, log=messages.append)
    assert any("3 of" in m for m in messages)
    assert (slow_teacher_run / "probes" / "monomials.jsonl").read_text() == full
    assert not partial.exists()


@pytest.fixture(scope="module")
def finished_tiny_run(tmp_path_factory):
    from conftest import tiny_config

    out = tmp_path_factory.mktemp("runs") / "tiny"
    run(replace(tiny_config(), schedules=(TwoShotAuto(first_steps=100),)), out, log=quiet)
    return out


def _mark_unfinished(run_dir):
    manifest = run_dir / "teacher" / "manifest.json"
    manifest.write_text(json.dumps(json.loads(manifest.read_text()) | {"complete": False}))


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            lambda d: (d / "config.json").write_text((d / "config.json").read_text().replace('"k": 2', '"k": 3')),
            "was edited after the run",
        ),
        (_mark_unfinished, "teacher trajectory .* is unfinished"),
        (lambda d: (d / "results.json").write_text(""), "results.json is unreadable"),
        (lambda d: (d / "teacher" / "metrics.jsonl").unlink(), "its teacher has no metrics.jsonl"),
    ],
)
def test_monomial_probe_refuses_a_changed_or_unfinished_run_and_writes_nothing(
    finished_tiny_run, tmp_path, damage, message
):
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(finished_tiny_run, run_dir)
    damage(run_dir)
    results = (run_dir / "results.json").read_bytes()
    with pytest.raises(ConfigError, match=message):
        probe_monomials(run_dir, num_samples=512, log=quiet)
    assert not (run_dir / "probes" / "monomials.jsonl").exists()
    assert (run_dir / "results.json").read_bytes() == results


def test_a_probe_on_a_run_without_results_says_that_run_will_report_it(finished_tiny_run, tmp_path):
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(finished_tiny_run, run_dir)
    (run_dir / "results.json").unlink()
    messages = []
    probe_monomials(run_dir, num_samples=512, log=messages.append)
    assert (run_dir / "probes" / "monomials.jsonl").exists() and not (run_dir / "results.json").exists()
    assert any("is not written yet" in m for m in messages), messages


def test_probe_and_ablation_on_a_damaged_teacher_write_nothing_and_say_how_to_recover(finished_tiny_run, tmp_path):
    import shutil

    from progdistill.store.trajectory import TrajectoryError

    run_dir = tmp_path / "copy"
    shutil.copytree(finished_tiny_run, run_dir)
    ckpt = run_dir / "teacher" / "checkpoints" / "step_00000100.safetensors"
    ckpt.write_bytes(ckpt.read_bytes()[:-3] + b"xyz")
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    recovery = r"step 100 is corrupted.*progdistill run .*config.json --out .* --retrain-teacher"
    with pytest.raises(TrajectoryError, match=recovery):
        probe_monomials(run_dir, num_samples=512, log=quiet)
    with pytest.raises(TrajectoryError, match=recovery):
        ablate_two_shot(run_dir, device="cpu", log=quiet)
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before  # no partial, no settings


def test_a_probe_that_fails_on_its_first_model_leaves_no_partial_file(finished_tiny_run, tmp_path, monkeypatch):
    import shutil

    from progdistill.store.rundir import RunDir

    run_dir = tmp_path / "copy"
    shutil.copytree(finished_tiny_run, run_dir)

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(RunDir, "load_model", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        probe_monomials(run_dir, num_samples=512, log=quiet)
    assert not (run_dir / "probes" / ".monomials.partial.jsonl").exists()
