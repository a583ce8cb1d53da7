"""The run directory on its own (no training): its paths, which config owns it, what a rerun keeps or deletes,
failure and wall-time records, and the errors on a directory that is not a run or was changed after it."""

import json
import os
from dataclasses import replace

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import save_file

from progdistill.core.config import ConfigError
from progdistill.core.files import atomic_write_json
from progdistill.experiment import build_model, config_hash

# The module under test, imported in one place.
from progdistill.store.rundir import (
    EARLIER_WALL_TIME,
    FAILURE,
    OUTPUTS,
    RESUME_STATE,
    STUDENT_WEIGHTS,
    TEACHER_OUTPUTS,
    RunDir,
)
from progdistill.store.trajectory import TrajectoryError


def _files(root):
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def _fake_outputs(rundir: RunDir) -> None:
    """A file in each place a run writes, as if it had finished."""
    for name in (
        "teacher/metrics.jsonl",
        "students/ce-seed0/metrics.jsonl",
        "probes/ngram.jsonl",
        "tensorboard/teacher/events",
        "tensorboard/ce-seed0/events",
        "results.json",
    ):
        path = rundir.path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}\n")


def test_paths_are_the_documented_layout(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.path == tmp_path / "run" and repr(run) == f"RunDir({str(tmp_path / 'run')!r})"
    root = tmp_path / "run"
    assert [
        run.config_file,
        run.teacher,
        run.students,
        run.probes,
        run.results_file,
        run.summary_file,
        run.accuracy_figure,
        run.tokenizer_file,
        run.ablations,
    ] == [
        root / "config.json",
        root / "teacher",
        root / "students",
        root / "probes",
        root / "results.json",
        root / "summary.md",
        root / "accuracy.png",
        root / "tokenizer" / "tokenizer.json",
        root / "ablations",
    ]
    assert run.tensorboard("progressive-seed0") == root / "tensorboard" / "progressive-seed0"
    assert run.student_metrics("ce-seed1") == root / "students" / "ce-seed1" / "metrics.jsonl"
    assert (STUDENT_WEIGHTS, FAILURE, RESUME_STATE) == ("final.safetensors", "error.txt", "resume.pt")
    # Everything that --overwrite may delete is something a run writes; the config files go last.
    assert set(TEACHER_OUTPUTS) <= {o.split("/")[0] for o in OUTPUTS} | {"tensorboard/teacher"}
    assert OUTPUTS[-2:] == ("config.sha256", "config.json")


def test_claim_records_the_config_its_hash_and_the_data_hash(tmp_path):
    config = tiny_config()
    run = RunDir(tmp_path / "a" / "run")  # parents are created
    run.claim(config, overwrite=False, data_digest="abc123")
    assert json.loads(run.config_file.read_text()) == config.to_dict()
    assert (run.path / "config.sha256").read_text() == config_hash(config) + "\n"
    assert (run.path / "data.sha256").read_text() == "abc123\n"
    assert run.config() == config
    RunDir(tmp_path / "b").claim(config, overwrite=False)
    assert not (tmp_path / "b" / "data.sha256").exists()  # a task without data records none


def test_claiming_again_with_the_same_config_keeps_everything(tmp_path):
    config = tiny_config()
    run = RunDir(tmp_path / "run")
    run.claim(config, overwrite=False)
    _fake_outputs(run)
    before = _files(run.path)
    run.claim(config, overwrite=False)
    run.claim(config, overwrite=True)  # same config: --overwrite has nothing to replace
    assert _files(run.path) == before


def test_another_config_is_refused_naming_the_fields_then_replaced_with_overwrite(tmp_path):
    config = tiny_config()
    run = RunDir(tmp_path / "run")
    run.claim(config, overwrite=False)
    _fake_outputs(run)
    before = _files(run.path)
    other = replace(config, student=replace(config.student, steps=200))
    with pytest.raises(
        ConfigError,
        match=r"different config \(student\.steps: 300 != 200\).*--overwrite keeps the "
        r"finished teacher",
    ):
        run.claim(other, overwrite=False)
    assert _files(run.path) == before  # refused: nothing touched
    run.claim(other, overwrite=True)
    # Same task and teacher: the teacher (and its TensorBoard run) stays, the students' results go.
    assert _files(run.path) == {"config.json", "config.sha256", "teacher/metrics.jsonl", "tensorboard/teacher/events"}
    assert run.config() == other


def test_retrain_teacher_deletes_the_teacher_too(tmp_path):
    config = tiny_config()
    run = RunDir(tmp_path / "run")
    run.claim(config, overwrite=False)
    _fake_outputs(run)
    run.claim(config, overwrite=False, retrain_teacher=True)
    assert _files(run.path) == {"config.json", "config.sha256"}


def test_a_config_json_edited_by_hand_is_refused(tmp_path):
    config = tiny_config()
    run = RunDir(tmp_path / "run")
    run.claim(config, overwrite=False)
    edited = config.to_dict()
    edited["threshold"] = 0.5
    atomic_write_json(run.config_file, edited)
    with pytest.raises(ConfigError, match="it was edited"):
        run.claim(config, overwrite=False)
    with pytest.raises(ConfigError, match=r"config\.json was edited after the run .*nothing was written"):
        run.check_inputs(run.config(), teacher=False)  # what a probe reads


def test_changed_task_data_is_refused_without_overwrite(tmp_path):
    config = tiny_config()
    run = RunDir(tmp_path / "run")
    run.claim(config, overwrite=False, data_digest="old")
    _fake_outputs(run)
    with pytest.raises(ConfigError, match=r"other task data.*data\.sha256"):
        run.claim(config, overwrite=False, data_digest="new")
    run.claim(config, overwrite=True, data_digest="new")  # everything trained on the old data goes
    assert _files(run.path) == {"config.json", "config.sha256", "data.sha256"}
    assert (run.path / "data.sha256").read_text() == "new\n"


def test_directories_that_are_not_runs_are_never_claimed(tmp_path):
    config = tiny_config()
    a_file = tmp_path / "file"
    a_file.write_text("mine")
    with pytest.raises(ConfigError, match="is a file, not a directory"):
        RunDir(a_file).claim(config, overwrite=True)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match=r"not empty and is not a progdistill run directory \(no config\.json\)"):
        RunDir(mine).claim(config, overwrite=True)
    hf = tmp_path / "hf-model"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ConfigError, match="its config.json is not a progdistill config"):
        RunDir(hf).claim(config, overwrite=True)
    assert (mine / "notes.txt").read_text() == "keep me" and _files(hf) == {"config.json"}
    locked = tmp_path / "locked"  # a directory holding only its lock is an empty run directory
    locked.mkdir()
    (locked / ".lock").write_text("{}")
    RunDir(locked).claim(config, overwrite=False)
    assert RunDir(locked).config() == config


def test_claim_removes_temporaries_of_killed_writes_only(tmp_path):
    run = RunDir(tmp_path / "run")
    run.claim(tiny_config(), overwrite=False)
    (run.teacher).mkdir()
    (run.teacher / ".manifest.json.tmp4242").write_text("half")
    (run.path / ".accuracy.tmp4242.png").write_bytes(b"half")
    (run.path / ".notes.tmp").write_text("the user's")  # no pid: not ours
    run.claim(tiny_config(), overwrite=False)
    assert _files(run.path) == {"config.json", "config.sha256", ".notes.tmp"}


def test_remove_outputs_keeps_what_is_asked_and_what_is_not_a_runs(tmp_path):
    run = RunDir(tmp_path / "run")
    run.claim(tiny_config(), overwrite=False)
    _fake_outputs(run)
    (run.path / "README.txt").write_text("the user's")
    run.remove_outputs(keep=("tensorboard/teacher", "probes"))
    assert _files(run.path) == {"README.txt", "tensorboard/teacher/events", "probes/ngram.jsonl"}


def test_failures_are_recorded_read_and_cleared(tmp_path):
    run = RunDir(tmp_path / "run")
    student = run.students / "ce-seed0"
    assert RunDir.failure(student) is None
    try:
        raise FloatingPointError("train loss: non-finite training loss at step 7")
    except FloatingPointError as exc:
        run.record_failure(student, exc)
    text = (student / FAILURE).read_text()
    assert text.startswith("# host ") and f"process {os.getpid()}" in text.splitlines()[0]
    assert "Traceback" in text
    assert RunDir.failure(student) == "FloatingPointError: train loss: non-finite training loss at step 7"
    run.clear_failure(student)
    assert RunDir.failure(student) is None and not (student / FAILURE).exists()
    run.clear_failure(student)  # clearing twice is fine


def test_finished_results_and_students(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.finished_results() is None
    run.path.mkdir()
    run.results_file.write_text("")  # an interrupted write
    assert run.finished_results() is None
    with pytest.raises(ConfigError, match=r"results\.json is unreadable .*nothing was written"):
        run.check_inputs(tiny_config(), teacher=False)
    run.results_file.write_text(json.dumps({"students": []}))
    assert run.finished_results() == {"students": []}

    directory = run.students / "ce-seed0"
    assert not run.student_finished("ce-seed0", 100)
    directory.mkdir(parents=True)
    (directory / "metrics.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in (0, 50, 100)))
    assert not run.student_finished("ce-seed0", 100)  # no final weights yet
    (directory / STUDENT_WEIGHTS).write_bytes(b"")
    assert run.student_finished("ce-seed0", 100)
    assert not run.student_finished("ce-seed0", 150)  # stopped before its last step
    assert run.student_finished("ce-seed0", 100, students=run.students)
    assert not run.student_finished("ce-seed0", 100, students=run.ablations)


def test_wall_time_of_interrupted_invocations(tmp_path):
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    assert run.earlier_wall_time() == 0.0
    run.record_interrupted_wall_time(12.5)
    assert run.earlier_wall_time() == 12.5
    (run.path / EARLIER_WALL_TIME).write_text("not json")
    assert run.earlier_wall_time() == 0.0
    run.record_interrupted_wall_time(3.0)
    run.clear_interrupted_wall_time()
    assert run.earlier_wall_time() == 0.0 and not (run.path / EARLIER_WALL_TIME).exists()
    run.clear_interrupted_wall_time()


def test_probe_summaries_are_read_by_name_and_bad_ones_named(tmp_path):
    run = RunDir(tmp_path / "run")
    run.probes.mkdir(parents=True)
    assert run.probe_summaries() == {}
    (run.probes / "ngram-summary.json").write_text(json.dumps({"teacher": 1}))
    assert run.probe_summaries() == {"ngram": {"teacher": 1}}
    (run.probes / "ngram-oracle-summary.json").write_text(json.dumps({"scores": []}))
    with pytest.raises(
        ConfigError,
        match=r"ngram-oracle-summary\.json is unreadable \(it lacks \['masked_lm_loss', "
        r"'median', 'metric'\]\)",
    ):
        run.probe_summaries()
    (run.probes / "ngram-oracle-summary.json").write_text("{")
    with pytest.raises(ConfigError, match=r"ngram-oracle-summary\.json is unreadable.*delete it and rerun"):
        run.probe_summaries()


def test_check_inputs_refuses_a_run_without_a_finished_teacher(tmp_path):
    config = tiny_config()
    run = RunDir(tmp_path / "run")
    run.claim(config, overwrite=False)
    with pytest.raises(TrajectoryError):
        run.check_inputs(config)  # no teacher trajectory at all
    run.check_inputs(config, teacher=False)  # a probe that does not read the teacher may go on


def test_load_model_gives_the_saved_student_frozen(tmp_path):
    config = tiny_config()
    run = RunDir(tmp_path / "run")
    run.claim(config, overwrite=False)
    with pytest.raises(TrajectoryError, match=r"student weights .*final\.safetensors are missing"):
        run.load_model(config, "ce-seed0")
    saved = build_model(config.task, config.student.model, [0], "some-stream")
    (run.students / "ce-seed0").mkdir(parents=True)
    save_file(saved.state_dict(), str(run.students / "ce-seed0" / STUDENT_WEIGHTS))
    model = run.load_model(config, "ce-seed0")
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    state = model.state_dict()
    assert state.keys() == saved.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in saved.state_dict().items())
