import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from progdistill import experiment
from progdistill.cli import main
from progdistill.core.config import ConfigError, override, to_dict
from progdistill.core.files import read_metrics
from progdistill.distill.schedules import KShot, Progressive
from progdistill.distill.teachers import TeacherPool
from progdistill.experiment import ExperimentConfig, check_memory, config_hash, estimate_memory
from progdistill.models.mlp import MLPConfig
from progdistill.recipes import runner
from progdistill.recipes.presets import PRESETS, get_preset
from progdistill.recipes.runner import run, train_teacher
from progdistill.store.trajectory import Trajectory
from progdistill.train.evaluation import EVAL_CHUNK
from progdistill.train.loop import BLOCK_STEPS, Member, fit, generator


def quiet(*args):
    pass


def test_tiny_run_writes_every_output(tmp_path, tiny):
    results = run(tiny, tmp_path / "run", log=quiet)
    out = tmp_path / "run"
    for name in (
        "config.json",
        "results.json",
        "summary.md",
        "accuracy.png",
        "teacher/manifest.json",
        "teacher/metrics.jsonl",
    ):
        assert (out / name).exists(), name
    assert ExperimentConfig.from_dict(json.loads((out / "config.json").read_text())) == tiny
    assert set(results) >= {"preset", "threshold", "wall_time_s", "teacher", "students"}
    assert set(results["teacher"]) >= {"steps_to_threshold", "final_accuracy", "steps"}
    assert [(s["schedule"], s["seed"]) for s in results["students"]] == [
        ("ce", 0),
        ("one-shot", 0),
        ("progressive", 0),
        ("2-shot", 0),
    ]
    for s in results["students"]:
        assert set(s) >= {"schedule", "seed", "steps_to_threshold", "final_accuracy", "steps"}
        assert s["steps"] == 300
    records = read_metrics(out / "students" / "progressive-seed0" / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(0, 301, 50))
    assert set(records[1]) == {"step", "train_loss", "eval_loss", "eval_accuracy", "teacher_checkpoint", "lr"}
    # progressive follows the timeline; 2-shot switches to the final checkpoint after 100 steps
    assert [r["teacher_checkpoint"] for r in records] == [50, 50, 100, 150, 200, 250, 300]
    two = read_metrics(out / "students" / "2-shot-seed0" / "metrics.jsonl")
    assert [r["teacher_checkpoint"] for r in two] == [100, 100, 100, 300, 300, 300, 300]
    assert "| progressive |" in (out / "summary.md").read_text()
    # the tiny task is learnable: the teacher solves it
    assert results["teacher"]["final_accuracy"] > 0.9


def test_same_seed_same_numbers(tmp_path, tiny):
    a = run(tiny, tmp_path / "a", log=quiet)
    b = run(tiny, tmp_path / "b", log=quiet)

    def strip(r):
        return {k: v for k, v in r.items() if k != "wall_time_s"}

    assert strip(a) == strip(b)
    for name in ("teacher/metrics.jsonl", "students/one-shot-seed0/metrics.jsonl"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()


def test_rerun_reuses_teacher_and_refuses_other_config(tmp_path, tiny):
    from progdistill.store.trajectory import TrajectoryError

    out = tmp_path / "run"
    first = run(tiny, out, log=quiet)
    before = (out / "teacher" / "manifest.json").read_text()
    (out / "teacher" / ".manifest.json.tmp4242").write_text("left by a process killed mid-write")
    (out / ".accuracy.tmp4242.png").write_bytes(b"half a figure")
    (out / ".notes.tmp").write_text("the user's")
    messages = []
    run(tiny, out, log=messages.append)
    assert not (out / "teacher" / ".manifest.json.tmp4242").exists() and (out / ".notes.tmp").exists()
    assert not (out / ".accuracy.tmp4242.png").exists()
    assert any("reusing finished teacher" in m for m in messages)
    assert any("already finished" in m for m in messages)
    assert any("already complete" in m for m in messages)
    assert (out / "teacher" / "manifest.json").read_text() == before
    assert json.loads((out / "results.json").read_text())["wall_time_s"] == first["wall_time_s"]  # kept
    checkpoint = next((out / "teacher" / "checkpoints").iterdir())
    saved = checkpoint.read_bytes()
    checkpoint.unlink()
    with pytest.raises(TrajectoryError, match="teacher trajectory .* is damaged: the checkpoint file of step"):
        run(tiny, out, log=quiet)  # named even though no student needs the file
    checkpoint.write_bytes(saved)
    other = replace(tiny, student=replace(tiny.student, steps=150))
    with pytest.raises(
        ConfigError,
        match=r"different config \(student.steps: 300 != 150.*keeps the finished "
        "teacher and trains only the students",
    ):
        run(other, out, log=quiet)
    assert (out / "results.json").exists() and (out / "teacher" / "manifest.json").read_text() == before
    (out / "tensorboard" / "teacher").mkdir(parents=True, exist_ok=True)
    (out / "tensorboard" / "stale-student").mkdir(parents=True, exist_ok=True)
    (out / "ablations" / "two-shot").mkdir(parents=True)  # trained with the replaced students' config
    messages = []
    results = run(other, out, overwrite=True, log=messages.append)
    assert results["students"][0]["steps"] == 150
    assert any("reusing finished teacher" in m for m in messages)  # only the student side changed
    assert checkpoint.read_bytes() == saved and (out / "tensorboard" / "teacher").is_dir()
    assert not (out / "tensorboard" / "stale-student").exists() and not (out / "ablations").exists()
    new_teacher = replace(other, teacher=replace(other.teacher, seed=1))
    with pytest.raises(
        ConfigError,
        match=r"teacher.seed: 0 != 1\); choose another --out or pass --overwrite to "
        r"replace them$",
    ):
        run(new_teacher, out, log=quiet)
    messages = []
    run(new_teacher, out, overwrite=True, log=messages.append)
    assert not any("reusing finished teacher" in m for m in messages)
    assert checkpoint.read_bytes() != saved


def test_an_evaluation_interval_longer_than_the_run_is_pointed_out(tmp_path, tiny):
    messages = []
    run(replace(tiny, student=replace(tiny.student, eval_every=1000)), tmp_path / "run", log=messages.append)
    assert any("student.eval_every=1000 exceeds student.steps=300" in m for m in messages)
    assert not any("teacher.eval_every" in m for m in messages)


def test_run_directory_records_its_config_hash(tmp_path, tiny):
    results = run(tiny, tmp_path / "run", log=quiet)
    assert (tmp_path / "run" / "config.sha256").read_text().strip() == config_hash(tiny) == results["config_sha256"]
    edited = json.loads((tmp_path / "run" / "config.json").read_text())
    edited["seeds"] = 2  # hand-edited config.json no longer matches its recorded hash
    (tmp_path / "run" / "config.json").write_text(json.dumps(edited))
    with pytest.raises(
        ConfigError,
        match=r"different config \(config.json no longer matches the hash in "
        r"config.sha256; it was edited\)",
    ):
        run(ExperimentConfig.from_dict(edited), tmp_path / "run", log=quiet)
    with pytest.raises(ConfigError, match="it was edited; seeds: 2 != 3"):  # the edit is named with the changes
        run(replace(tiny, seeds=3), tmp_path / "run", log=quiet)


def test_non_empty_foreign_directory_refused(tmp_path, tiny):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not a progdistill run directory"):
        run(tiny, tmp_path / "mine", log=quiet)
    (tmp_path / "mine" / "teacher").mkdir()
    (tmp_path / "mine" / "teacher" / "x.txt").write_text("mine too")
    with pytest.raises(ConfigError, match="replaces only progdistill runs"):  # --overwrite deletes nothing here
        run(tiny, tmp_path / "mine", overwrite=True, log=quiet)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert (tmp_path / "mine" / "teacher" / "x.txt").read_text() == "mine too"
    hf = tmp_path / "hf"  # another tool's directory with its own config.json (e.g. an exported HF model)
    hf.mkdir()
    (hf / "config.json").write_text('{"architectures": ["BertForMaskedLM"]}')
    (hf / "probes").mkdir()
    (hf / "probes" / "r.txt").write_text("keep")
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match="its config.json is not a progdistill config"):
            run(tiny, hf, overwrite=overwrite, log=quiet)
    assert (hf / "config.json").read_text() == '{"architectures": ["BertForMaskedLM"]}'
    assert (hf / "probes" / "r.txt").read_text() == "keep"


def test_k_shot_with_missing_checkpoint_is_refused_with_the_config(tmp_path, tiny):
    # The config alone says which checkpoints the teacher will save: building it refuses the point.
    with pytest.raises(ConfigError, match=r"^schedules\.0\.points\.0\.0=125 names a checkpoint"):  # the --set name
        replace(tiny, schedules=(KShot(points=((125, 10), (-1, 10))),))


@pytest.mark.parametrize(
    "device, message", [("bogus", "--device 'bogus' is invalid"), ("cuda:0", "CUDA is not available")]
)
def test_bad_device_is_refused_before_anything_is_written(tmp_path, tiny, device, message):
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match=message):
        run(tiny, tmp_path / "run", device=device, log=quiet)
    assert not (tmp_path / "run").exists()


def test_teacher_loaded_once_per_change_and_frozen(tmp_path, tiny):
    traj = train_teacher(tiny, tmp_path, log=quiet)
    assert traj.steps == [0, 50, 100, 150, 200, 250, 300]
    pool = TeacherPool(traj, lambda: tiny.teacher.model.build(8, 2, [torch.Generator()]), torch.device("cpu"))
    student = tiny.student.model.build(8, 2, [generator(0, "init")])
    fit(tiny.task, student, tiny.student, [Member("p", 0, Progressive())], data_stream="d", teachers=pool, desc="t")
    assert pool.loads == 6  # checkpoints 50..300, each once
    for model in pool.models.values():
        assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_corrupted_teacher_checkpoint_stops_students(tmp_path, tiny):
    import shutil

    from progdistill.store.trajectory import TrajectoryError

    out = tmp_path / "run"
    run(tiny, out, log=quiet)
    shutil.rmtree(out / "students")
    ckpt = out / "teacher" / "checkpoints" / "step_00000300.safetensors"
    ckpt.write_bytes(ckpt.read_bytes()[:-3] + b"xyz")
    with pytest.raises(TrajectoryError, match="step_00000300.safetensors for step 300 is corrupted"):
        run(tiny, out, log=quiet)
    assert ckpt.exists()  # nothing is replaced or retrained silently
    assert not (out / "students").exists()  # checked before any student file is written


def test_cli_errors_are_clear(tmp_path, capsys):
    from progdistill.cli import main

    assert main(["run", "no-such-preset", "--out", str(tmp_path / "x")]) == 2
    assert "unknown preset 'no-such-preset'" in capsys.readouterr().err
    assert main(["run", "parity-mlp", "--set", "task.k=0", "--out", str(tmp_path / "x")]) == 2
    assert "task.k=0" in capsys.readouterr().err
    assert main(["run", "parity-mlp", "--set", "student.batch_size=0", "--out", str(tmp_path / "x")]) == 2
    assert "batch_size=0" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert main(["list"]) == 0
    assert "parity-mlp-paper" in capsys.readouterr().out


def test_metrics_mirrored_to_tensorboard(tmp_path, tiny):
    pytest.importorskip("tensorboard")
    run(tiny, tmp_path / "run", log=quiet)
    events = list((tmp_path / "run" / "tensorboard").rglob("events.out.tfevents.*"))
    names = {p.parent.name for p in events}
    assert "teacher" in names and "progressive-seed0" in names


def test_wall_time_counts_an_interrupted_earlier_invocation(tmp_path, tiny, monkeypatch):
    import time

    import progdistill.recipes.runner as runner
    from progdistill.store.rundir import EARLIER_WALL_TIME

    real = runner.train_students

    def interrupted(*args, **kwargs):
        time.sleep(1.0)
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "train_students", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(tiny, tmp_path / "run", log=quiet)
    earlier = json.loads((tmp_path / "run" / EARLIER_WALL_TIME).read_text())["seconds"]
    assert earlier >= 1.0
    monkeypatch.setattr(runner, "train_students", real)
    started = time.perf_counter()
    results = run(tiny, tmp_path / "run", log=quiet)
    second = time.perf_counter() - started  # more than run's own timer (which stops before the report)
    assert earlier < results["wall_time_s"] <= earlier + second  # both invocations
    assert not (tmp_path / "run" / EARLIER_WALL_TIME).exists()


def test_an_interrupted_overwrite_leaves_a_run_directory_the_next_overwrite_reclaims(tmp_path, tiny, monkeypatch):
    import shutil

    import progdistill.store.rundir as rundir

    out = tmp_path / "run"
    run(tiny, out, log=quiet)
    other = replace(tiny, teacher=replace(tiny.teacher, seed=1))
    real_rmtree = shutil.rmtree

    def interrupted(path, *args, **kwargs):
        if Path(path).name == "students":
            raise KeyboardInterrupt  # Ctrl-C while the old run is being deleted
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(rundir.shutil, "rmtree", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(other, out, overwrite=True, log=quiet)
    monkeypatch.setattr(rundir.shutil, "rmtree", real_rmtree)
    assert (out / "config.json").exists() and not (out / "teacher").exists()  # the config files go last
    assert run(other, out, overwrite=True, log=quiet)["config_sha256"] == config_hash(other)


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_overwrite_on_a_damaged_teacher_fails_before_deleting_anything(tmp_path, tiny):
    from progdistill.cli import main
    from progdistill.store.trajectory import TrajectoryError

    out = tmp_path / "run"
    run(tiny, out, log=quiet)
    ckpt = out / "teacher" / "checkpoints" / "step_00000200.safetensors"
    ckpt.write_bytes(ckpt.read_bytes()[:-3] + b"xyz")
    before = _files(out)
    other = replace(tiny, student=replace(tiny.student, steps=150))  # same teacher: --overwrite would keep it
    with pytest.raises(TrajectoryError, match=r"step 200 is corrupted.*nothing was deleted.*--retrain-teacher"):
        run(other, out, overwrite=True, log=quiet)
    assert _files(out) == before  # every file of the old run, byte for byte
    config = tmp_path / "other.json"
    config.write_text(json.dumps(other.to_dict()))
    assert main(["run", str(config), "--out", str(out), "--overwrite", "--device", "cpu"]) == 2
    assert _files(out) == before
    # the way out the error names: the teacher and everything trained from it are trained again
    assert main(["run", str(config), "--out", str(out), "--overwrite", "--retrain-teacher", "--device", "cpu"]) == 0
    assert Trajectory(out / "teacher").verify() is None
    assert json.loads((out / "results.json").read_text())["students"][0]["steps"] == 150


def test_retrain_teacher_of_the_same_config_replaces_the_whole_run(tmp_path, tiny):
    out = tmp_path / "run"
    run(tiny, out, log=quiet)
    ckpt = out / "teacher" / "checkpoints" / "step_00000300.safetensors"
    ckpt.unlink()
    (out / "probes").mkdir()
    (out / "probes" / "stale.jsonl").write_text("{}\n")
    messages = []
    run(tiny, out, retrain_teacher=True, log=messages.append)
    assert not any("reusing finished teacher" in m for m in messages)
    assert ckpt.exists() and not (out / "probes" / "stale.jsonl").exists()


def test_retraining_a_missing_student_adds_to_the_run_s_wall_time(tmp_path, tiny):
    import shutil

    out = tmp_path / "run"
    first = run(tiny, out, log=quiet)
    recorded = json.loads((out / "results.json").read_text()) | {"wall_time_s": 1000.0}  # a long original run
    (out / "results.json").write_text(json.dumps(recorded))
    shutil.rmtree(out / "students" / "one-shot-seed0")
    results = run(tiny, out, log=quiet)
    assert 1000.0 < results["wall_time_s"] < 1000.0 + first["wall_time_s"] + 60
    assert f"Wall time: {results['wall_time_s']:.1f} s" in (out / "summary.md").read_text()


def test_wall_time_is_persisted_at_every_record(tmp_path, tiny, monkeypatch):
    from progdistill.store.rundir import EARLIER_WALL_TIME, RunDir

    seen = []
    real = RunDir.record_interrupted_wall_time

    def spy(self, seconds):
        seen.append(seconds)
        real(self, seconds)

    monkeypatch.setattr(RunDir, "record_interrupted_wall_time", spy)
    run(tiny, tmp_path / "run", log=quiet)
    # teacher: steps 0, 50, ..., 300; the stack of students: the same 7 records
    assert len(seen) == 14 and seen == sorted(seen)
    assert not (tmp_path / "run" / EARLIER_WALL_TIME).exists()  # cleared when the run finishes


# Memory is estimated from the config before any work: absurd sizes are one line naming the field (exit 2).
GiB = 2**30


@pytest.fixture
def memory_64gib(monkeypatch):
    """64 GiB available, whatever this machine has; building the held-out set would fail the test."""
    monkeypatch.delenv(experiment.SKIP_MEMORY_CHECK, raising=False)
    monkeypatch.setattr(experiment, "available_memory", lambda: 64 * GiB)

    def no_data(config):
        raise AssertionError("the task's data was built before the memory check")

    monkeypatch.setattr(runner, "check_task_data", no_data)


@pytest.mark.parametrize(
    "override, field",
    [
        ("student.model.width=1000000000", "student.model.width=1000000000"),
        ("teacher.batch_size=100000000", "teacher.batch_size=100000000"),
        ("task.eval_size=1000000000", "task.eval_size=1000000000"),
        ("task.n=100000", "task.n=100000"),
    ],
)
def test_absurd_sizes_are_refused_before_any_work(memory_64gib, tmp_path, capsys, override, field):
    out = tmp_path / "run"
    assert main(["run", "parity-mlp", "--set", override, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and field in err[0] and "64.0 GiB available" in err[0], err
    assert not out.exists()


def test_every_preset_estimate_is_below_64gib():
    estimated = 0
    for name in PRESETS:
        parts = estimate_memory(get_preset(name), BLOCK_STEPS, EVAL_CHUNK)
        if parts is None:  # a task or model without estimated_bytes (the language tasks)
            continue
        estimated += 1
        total = sum(b for _, b in parts)
        assert 0 < total < 64 * GiB, (name, total)
        assert all(b >= 0 for _, b in parts)
    assert estimated >= 5  # every parity preset, *-paper included


def test_small_available_memory_refuses_a_normal_preset(monkeypatch):
    monkeypatch.delenv(experiment.SKIP_MEMORY_CHECK, raising=False)
    config = get_preset("parity-mlp")
    total = sum(b for _, b in estimate_memory(config, BLOCK_STEPS, EVAL_CHUNK))
    check_memory(config, BLOCK_STEPS, EVAL_CHUNK, available=total)  # fits exactly
    with pytest.raises(ConfigError, match="more than the 1.0 MiB available"):
        check_memory(config, BLOCK_STEPS, EVAL_CHUNK, available=2**20)
    monkeypatch.setattr(experiment, "available_memory", lambda: 2**20)
    with pytest.raises(ConfigError, match="PROGDISTILL_SKIP_MEMORY_CHECK=1"):
        check_memory(config, BLOCK_STEPS, EVAL_CHUNK)
    monkeypatch.setattr(experiment, "available_memory", lambda: None)  # unreadable: not checked
    check_memory(config, BLOCK_STEPS, EVAL_CHUNK)


def test_skip_memory_check_environment_variable(monkeypatch):
    monkeypatch.setattr(experiment, "available_memory", lambda: 2**20)
    monkeypatch.setenv(experiment.SKIP_MEMORY_CHECK, "1")
    check_memory(get_preset("parity-mlp"), BLOCK_STEPS, EVAL_CHUNK)


def test_mlp_estimate_counts_its_parameters():
    parts = MLPConfig(width=10, depth=2).estimated_bytes(5, 2, batch_size=3, stack=4)
    params = (5 * 10 + 10) + (10 * 10 + 10) + (10 * 2 + 2)
    assert parts["weights"][0] == 4 * 4 * 4 * params  # float32 x (weights, gradients, 2 moments) x stack
    assert parts["activations"][0] == 3 * 4 * 4 * 3 * (10 + 10 + 2)


def test_available_memory_is_positive():
    available = experiment.available_memory()
    assert available is None or available > 0


def test_a_float_for_an_int_field_says_an_integer_is_needed():
    with pytest.raises(ConfigError, match=r"must be an integer \(e.g. 1000000000, not 1e\+09\)"):
        ExperimentConfig.from_dict(override(to_dict(get_preset("parity-mlp")), "student.model.width=1e9"))
