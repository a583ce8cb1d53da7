"""Experiment trackers (``--report-to``): what each writes is read back from its own files, offline.

W&B offline runs are read from their ``run-*.wandb`` file (W&B's record log: a 7-byte header, then 32 KiB
blocks of records, each a 7-byte header -- CRC-32, little-endian length, type: 1 full, 2 first, 3 middle,
4 last -- and a piece of a protobuf ``Record``); MLflow runs from the file store's plain files (``params/<key>``:
the value; ``metrics/<name>``: lines "timestamp value step").
"""

import json
import struct
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import tiny_config

from progdistill.cli import main
from progdistill.core.config import ConfigError, flatten, to_dict
from progdistill.core.files import MetricsWriter, read_metrics
from progdistill.core.optional import MissingExtraError
from progdistill.core.settings import DistillationConfig
from progdistill.distill.schedules import CE, Progressive
from progdistill.recipes.runner import run
from progdistill.store.trackers import MLflow, TensorBoard, WandB, hyperparameters, resolve_report_to

HYPERPARAMETERS = {
    "task": {"type": "parity", "n": 8},
    "distillation": {"temperature": 0.5},
    "schedules": [{"type": "ce"}, {"type": "progressive", "speed": 1.0}],
    "support_seed": None,
    "model_name": "ce-seed0",
    "role": "student",
    "seed": 0,
}
RECORDS = [
    {"step": 0, "train_loss": None, "eval_loss": 0.75, "eval_accuracy": 0.5, "teacher_checkpoint": None, "lr": 0.1},
    {"step": 50, "train_loss": 0.625, "eval_loss": 0.5, "eval_accuracy": 0.875, "teacher_checkpoint": 50, "lr": 0.1},
]
# What a tracker gets of RECORDS: the numeric fields (None left out).
LOGGED = [
    {"eval_loss": 0.75, "eval_accuracy": 0.5, "lr": 0.1},
    {"train_loss": 0.625, "eval_loss": 0.5, "eval_accuracy": 0.875, "teacher_checkpoint": 50, "lr": 0.1},
]


def read_wandb(path: Path) -> list:
    """The protobuf records of a W&B run file."""
    pb = pytest.importorskip("wandb.proto.wandb_internal_pb2")
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            break
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            records.append(pb.Record.FromString(pending))
            pending = b""
    return records


def wandb_runs(run_dir: Path) -> dict[str, dict]:
    """Per W&B run (by name): its config {key: value} and history [{metric: value}] (W&B's own _-keys left out)."""
    out = {}
    for path in sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb")):
        config, history, name = {}, [], None
        for rec in read_wandb(path):
            kind = rec.WhichOneof("record_type")
            if kind == "run":
                name = rec.run.display_name
                config.update({i.key: json.loads(i.value_json) for i in rec.run.config.update})
            elif kind == "config":
                config.update({i.key: json.loads(i.value_json) for i in rec.config.update})
            elif kind == "history":
                history.append({i.key or ".".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
        config = {
            k: v["value"] if isinstance(v, dict) and set(v) == {"value"} else v
            for k, v in config.items()
            if not k.startswith("_")
        }
        out[name] = {"config": config, "history": history}
    return out


def mlflow_runs(run_dir: Path) -> dict[str, dict]:
    """Per MLflow run of the file store RUN/mlruns (by run name): params, metric histories, tags, status."""
    out = {}
    for meta in (run_dir / "mlruns").glob("*/*/meta.yaml"):
        folder = meta.parent
        fields = dict(line.split(": ", 1) for line in meta.read_text().splitlines() if ": " in line)
        metrics = {}
        for path in (folder / "metrics").iterdir():
            rows = [line.split() for line in path.read_text().splitlines()]
            metrics[path.name] = [(int(step), float(value)) for _, value, step in rows]
        out[fields["run_name"]] = {
            "params": {p.name: p.read_text() for p in (folder / "params").iterdir()},
            "tags": {p.name: p.read_text() for p in (folder / "tags").iterdir()},
            "metrics": metrics,
            "status": int(fields["status"]),
        }
    return out


class Recorder:
    def __init__(self):
        self.calls = []

    def log(self, metrics, step):
        self.calls.append(("log", step, metrics))

    def finish(self, failed=False):
        self.calls.append(("finish", failed))


def test_metrics_writer_sends_numeric_fields_and_replays_on_resume(tmp_path):
    tracker = Recorder()
    writer = MetricsWriter(tmp_path / "m.jsonl", [tracker])
    writer.write(RECORDS[0])
    writer.rewrite(RECORDS)  # a resume: the new tracked run gets the kept history
    writer.close()
    assert tracker.calls == [("log", 0, LOGGED[0]), ("log", 0, LOGGED[0]), ("log", 50, LOGGED[1]), ("finish", False)]
    assert read_metrics(tmp_path / "m.jsonl") == RECORDS

    failing = Recorder()
    writer = MetricsWriter(tmp_path / "f.jsonl", [failing])
    with pytest.raises(KeyboardInterrupt):
        try:
            raise KeyboardInterrupt  # training interrupted
        finally:
            writer.close()
    assert failing.calls == [("finish", True)]


def test_report_to_names():
    assert resolve_report_to("none") == ()
    assert resolve_report_to([]) == ()
    assert resolve_report_to("tensorboard, tensorboard") == ("tensorboard",)
    with pytest.raises(ConfigError, match="unknown tracker\\(s\\) 'comet'; valid: tensorboard, wandb, mlflow"):
        resolve_report_to("tensorboard,comet")
    with pytest.raises(ConfigError, match="'none' turns every tracker off, so it stands alone"):
        resolve_report_to("tensorboard,none")


def test_default_is_tensorboard_when_installed_else_nothing(monkeypatch):
    pytest.importorskip("tensorboard")
    assert resolve_report_to(None) == ("tensorboard",)
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard", raising=False)
    assert resolve_report_to(None) == ()
    with pytest.raises(MissingExtraError, match='pip install "progdistill\\[tensorboard\\]"'):
        resolve_report_to("tensorboard")


@pytest.mark.parametrize("name", ["wandb", "mlflow"])
def test_uninstalled_tracker_is_refused_before_anything_is_written(name, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    with pytest.raises(
        MissingExtraError,
        match=f'--report-to {name} needs the optional package {name!r}.*pip install "progdistill\\[{name}\\]"',
    ):
        resolve_report_to(f"tensorboard,{name}")
    out = tmp_path / "run"
    assert main(["run", "parity-mlp", "--report-to", name, "--out", str(out)]) == 2
    assert f"progdistill[{name}]" in capsys.readouterr().err and not out.exists()


def test_unknown_tracker_is_refused_by_the_cli(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "parity-mlp", "--report-to", "wandb,tensorbord", "--out", str(out)]) == 2
    assert "unknown tracker(s) 'tensorbord'" in capsys.readouterr().err and not out.exists()


def test_hyperparameters_are_the_complete_config_and_the_model():
    config = tiny_config()
    hp = hyperparameters(config, "progressive-seed1", Progressive(), 1)
    assert {k: hp.pop(k) for k in ("model_name", "role", "schedule", "seed")} == {
        "model_name": "progressive-seed1",
        "role": "student",
        "schedule": "progressive",
        "seed": 1,
    }
    assert hp == to_dict(config, complete=True)
    teacher = hyperparameters(config, "teacher")
    assert teacher["role"] == "teacher" and "schedule" not in teacher


def test_wandb_offline_run_files(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb", reason='W&B is not installed: pip install "progdistill[wandb]"')
    monkeypatch.delenv("WANDB_MODE", raising=False)
    tracker = WandB(tmp_path, "ce-seed0", "student")
    tracker.start(HYPERPARAMETERS)
    for record in LOGGED:
        tracker.log(record, step=0 if "train_loss" not in record else 50)
    tracker.finish()
    wandb.teardown()  # the W&B service writes the run file in the background: wait for it (as at exit)
    runs = wandb_runs(tmp_path)
    assert list(runs) == ["ce-seed0"]
    assert runs["ce-seed0"]["config"] == HYPERPARAMETERS
    history = runs["ce-seed0"]["history"]
    assert [h["_step"] for h in history] == [0, 50]
    assert [{k: v for k, v in h.items() if not k.startswith("_")} for h in history] == LOGGED


def test_mlflow_file_store_run_files(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason='MLflow is not installed: pip install "progdistill[mlflow]"')
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # what the tracker sets, kept out of other tests
    tracker = MLflow(tmp_path, "ce-seed0", "student")
    tracker.start(HYPERPARAMETERS)
    tracker.log(LOGGED[0], 0)
    tracker.log(LOGGED[1], 50)
    tracker.finish()
    runs = mlflow_runs(tmp_path)
    assert list(runs) == ["ce-seed0"]
    assert runs["ce-seed0"]["params"] == {
        k: v if isinstance(v, str) else json.dumps(v) for k, v in flatten(HYPERPARAMETERS).items()
    }
    assert runs["ce-seed0"]["params"]["support_seed"] == "null"  # JSON text: a config.json reader gets it back
    assert runs["ce-seed0"]["metrics"] == {
        "eval_loss": [(0, 0.75), (50, 0.5)],
        "eval_accuracy": [(0, 0.5), (50, 0.875)],
        "lr": [(0, 0.1), (50, 0.1)],
        "train_loss": [(50, 0.625)],
        "teacher_checkpoint": [(50, 50.0)],
    }
    assert runs["ce-seed0"]["tags"]["progdistill.run_dir"] == str(tmp_path.resolve())
    assert runs["ce-seed0"]["status"] == 3  # FINISHED

    interrupted = MLflow(tmp_path, "teacher", "teacher")
    interrupted.start({"role": "teacher"})  # and never finished: the process was killed
    resumed = MLflow(tmp_path, "teacher", "teacher")
    resumed.start({"role": "teacher"})
    resumed.finish()
    crashed = MLflow(tmp_path, "ce-seed1", "student")
    crashed.start({"role": "student"})
    crashed.finish(failed=True)
    statuses = {
        folder.name: int(
            dict(line.split(": ", 1) for line in (folder / "meta.yaml").read_text().splitlines() if ": " in line)[
                "status"
            ]
        )
        for folder in (tmp_path / "mlruns").glob("*/*")
        if folder.is_dir() and (folder / "meta.yaml").exists()
    }
    assert statuses == {
        tracker.run_id: 3,
        interrupted.run_id: 5,
        resumed.run_id: 3,  # 3: FINISHED, 5: KILLED
        crashed.run_id: 4,
    }  # FAILED


@pytest.mark.e2e
def test_a_run_reports_to_wandb_and_mlflow_offline(tmp_path, monkeypatch):
    """A shrunk run: every model's W&B and MLflow run holds the run's config and exactly its metrics.jsonl."""
    wandb = pytest.importorskip("wandb", reason='W&B is not installed: pip install "progdistill[wandb]"')
    pytest.importorskip("mlflow", reason='MLflow is not installed: pip install "progdistill[mlflow]"')
    for var in ("WANDB_MODE", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    config = replace(
        tiny_config(steps=200), distillation=DistillationConfig(temperature=2.0), schedules=(CE(), Progressive())
    )
    out = tmp_path / "t2"
    run(config, out, log=lambda *a: None, report_to="wandb,mlflow")
    wandb.teardown()  # the W&B service writes the run files in the background: wait for it (as at exit)
    assert not (out / "tensorboard").exists()  # only the trackers named
    complete = to_dict(config, complete=True)
    by_wandb, by_mlflow = wandb_runs(out), mlflow_runs(out)
    models = {
        "teacher": out / "teacher" / "metrics.jsonl",
        "ce-seed0": out / "students" / "ce-seed0" / "metrics.jsonl",
        "progressive-seed0": out / "students" / "progressive-seed0" / "metrics.jsonl",
    }
    assert set(by_wandb) == set(by_mlflow) == set(models)
    for model, path in models.items():
        records = read_metrics(path)
        assert {k: v for k, v in by_wandb[model]["config"].items() if k in complete} == complete
        assert by_wandb[model]["config"]["model_name"] == model
        assert [{k: v for k, v in h.items() if not k.startswith("_")} for h in by_wandb[model]["history"]] == [
            {k: v for k, v in r.items() if k != "step" and v is not None} for r in records
        ]
        params = by_mlflow[model]["params"]
        assert params["distillation.temperature"] == "2.0" and params["model_name"] == model
        assert by_mlflow[model]["metrics"]["eval_accuracy"] == [(r["step"], r["eval_accuracy"]) for r in records]
        assert by_mlflow[model]["status"] == 3


def test_tensorboard_scalars_and_hparams(tmp_path):
    pytest.importorskip("tensorboard", reason='TensorBoard is not installed: pip install "progdistill[tensorboard]"')
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    tracker = TensorBoard(tmp_path, "ce-seed0", "student")
    tracker.start(HYPERPARAMETERS)
    tracker.log(LOGGED[0], 0)
    tracker.log(LOGGED[1], 50)
    tracker.finish()
    events = EventAccumulator(str(tmp_path / "tensorboard" / "ce-seed0"))
    events.Reload()
    assert [(s.step, s.value) for s in events.Scalars("student/eval_accuracy")] == [(0, 0.5), (50, 0.875)]
    assert [(s.step, s.value) for s in events.Scalars("student/train_loss")] == [(50, 0.625)]
    start = plugin_data_pb2.HParamsPluginData.FromString(
        events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    ).session_start_info
    assert start.hparams["distillation.temperature"].number_value == 0.5
    assert start.hparams["task.type"].string_value == "parity"
    assert start.hparams["support_seed"].string_value == "null"
