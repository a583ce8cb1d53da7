"""Several ways of distilling (``ExperimentConfig.ways``) against one teacher, in one run directory: each way's
student trains exactly as an experiment with that way's distillation settings would."""

import json
from dataclasses import replace

import pytest
from conftest import tiny_config
from safetensors.torch import load_file

from progdistill.core.config import ConfigError, from_dict, override, to_dict
from progdistill.core.files import read_metrics
from progdistill.core.settings import DistillationConfig, OptimizerConfig, TrainConfig, Way
from progdistill.distill.schedules import CE, FINAL, KShot, OneShot, Progressive
from progdistill.experiment import ExperimentConfig, config_hash, student_names, student_runs, student_stacks
from progdistill.models.language import GPT2LMConfig
from progdistill.recipes.presets import get_preset
from progdistill.recipes.runner import train_students, train_teacher
from progdistill.store.report import write_report
from progdistill.store.rundir import STUDENT_WEIGHTS, RunDir
from progdistill.tasks.pcfg.task import GrammarSpec, PCFGNextTokenTask

WAYS = (
    Way("jsd", DistillationConfig(loss="generalized_jsd", beta=0.5)),
    Way("seq-kd", DistillationConfig(seq_kd=True, alpha=1.0)),
    Way("on-policy", DistillationConfig(lmbda=0.5)),
)


def _lm_config(ways=WAYS) -> ExperimentConfig:
    """A pcfg-lm experiment shrunk to seconds: 1-layer GPT-2, teacher 20 steps, students 8."""
    adam = OptimizerConfig(name="adamw", lr=3e-3)
    model = GPT2LMConfig(n_layer=1, n_head=2, head_dim=4)
    return ExperimentConfig(
        preset="tiny-lm",
        task=PCFGNextTokenTask(grammar=GrammarSpec(levels=4, seed=0), eval_size=8, max_length=64),
        teacher=TrainConfig(model=model, optimizer=adam, steps=20, batch_size=4, eval_every=10, checkpoint_every=10),
        student=TrainConfig(model=model, optimizer=adam, steps=8, batch_size=4, eval_every=4),
        schedules=(CE(), OneShot(), Progressive()),
        seeds=1,
        ways=ways,
    )


def _train(config, out):
    RunDir(out).claim(config, overwrite=False)
    trajectory = train_teacher(config, out, "cpu", log=lambda *a: None)
    train_students(config, out, trajectory, "cpu", log=lambda *a: None)


def test_each_way_trains_bit_for_bit_as_an_experiment_with_its_distillation(tmp_path):
    config = _lm_config()
    _train(config, tmp_path / "ways")
    assert student_names(config) == [
        "ce-seed0",
        "one-shot-seed0",
        "progressive-seed0",
        *(f"{w.name}-{s}-seed0" for w in WAYS for s in ("one-shot", "progressive")),  # CE trains once
    ]
    for way in WAYS:
        alone = replace(config, distillation=way.distillation, ways=())
        _train(alone, tmp_path / way.name)
        for schedule in ("one-shot", "progressive"):
            ours = RunDir(tmp_path / "ways").students / f"{way.name}-{schedule}-seed0"
            theirs = RunDir(tmp_path / way.name).students / f"{schedule}-seed0"
            a, b = (load_file(str(d / STUDENT_WEIGHTS)) for d in (ours, theirs))
            assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a), (way.name, schedule)
            assert read_metrics(ours / "metrics.jsonl") == read_metrics(theirs / "metrics.jsonl")
    records = read_metrics(RunDir(tmp_path / "ways").students / "seq-kd-one-shot-seed0" / "metrics.jsonl")
    assert records[-1]["seq_kd_steps"] == 8  # the way's settings reached the loop (every step on teacher samples)

    results = write_report(tmp_path / "ways", wall_time_s=0.0)
    rows = {(s["way"], s["schedule"]) for s in results["students"]}
    assert rows == {("distillation", s) for s in ("ce", "one-shot", "progressive")} | {
        (w.name, s) for w in WAYS for s in ("one-shot", "progressive")
    }
    assert results["ways"]["seq-kd"] == to_dict(WAYS[1].distillation, complete=True)
    summary = (tmp_path / "ways" / "summary.md").read_text()
    assert "| way | schedule |" in summary and "| seq-kd | progressive |" in summary
    assert "- on-policy: lmbda=0.5" in summary
    assert json.loads((tmp_path / "ways" / "results.json").read_text())["ways"].keys() == {
        "distillation",
        "jsd",
        "seq-kd",
        "on-policy",
    }


def test_a_bad_way_is_one_clear_error_naming_it():
    parity = tiny_config()
    with pytest.raises(ConfigError) as err:
        replace(parity, ways=(Way("seq-kd", DistillationConfig(seq_kd=True)),))
    message = str(err.value)
    assert message.startswith("ways.0 (seq-kd): distillation.seq_kd=True is invalid: trains on generated sequences")
    assert "parity" in message and "invalid settings" not in message  # one problem, reported once
    # from JSON, as `--set` or a config.json gives it: the way's own check, then the experiment's
    data = to_dict(parity, complete=True)
    bad = override(data, 'ways=[{"name": "rkl", "distillation": {"loss": "reverse_kl", "temperature": 0}}]')
    with pytest.raises(ConfigError, match=r"^ways.0.distillation.temperature=0.0 is invalid: reverse_kl needs"):
        from_dict(ExperimentConfig, bad)
    bad = override(data, 'ways=[{"name": "ok"}, {"name": "lm", "distillation": {"lmbda": 0.5}}]')
    with pytest.raises(ConfigError, match=r"^ways.1 \(lm\): distillation.lmbda=0.5 is invalid: trains on generated"):
        from_dict(ExperimentConfig, bad)
    with pytest.raises(ConfigError, match="ways.name='Seq KD' is invalid"):
        Way("Seq KD")
    with pytest.raises(ConfigError, match="way names must be distinct"):
        replace(parity, ways=(Way("a"), Way("a")))
    k_shot = KShot(points=((100, 100), (FINAL, 200)), name="kd-one-shot")
    with pytest.raises(ConfigError, match="the students kd-one-shot would share a name"):
        replace(parity, schedules=(OneShot(), k_shot), ways=(Way("kd"),))


def test_without_ways_configs_and_students_are_unchanged():
    parity = tiny_config(seeds=2)
    assert "ways" not in to_dict(parity)  # the hash of every earlier run directory stays what it was
    with_ways = replace(parity, ways=(Way("hot", DistillationConfig(temperature=4.0)),))
    assert config_hash(with_ways) != config_hash(parity)
    assert from_dict(ExperimentConfig, to_dict(with_ways)) == with_ways
    assert [r.name for r in student_runs(parity)] == [f"{s.label}-seed{k}" for k in range(2) for s in parity.schedules]
    # stackable students (MLPs) of different ways never share a stack: a stack trains with one objective
    stacks = student_stacks(with_ways, [r for r in student_runs(with_ways) if r.seed == 0])
    assert stacks == [
        ["ce-seed0", "one-shot-seed0", "progressive-seed0", "2-shot-seed0"],
        ["hot-one-shot-seed0", "hot-progressive-seed0", "hot-2-shot-seed0"],
    ]


def test_the_generation_preset_runs_every_way_in_one_experiment():
    config = get_preset("pcfg-lm-generation")
    ways = {w.name: w.distillation for w in config.ways}
    assert (ways["jsd"].loss, ways["jsd"].beta) == ("generalized_jsd", 0.5)
    assert ways["reverse-kl"].loss == "reverse_kl"
    assert (ways["seq-kd"].seq_kd, ways["seq-kd"].alpha) == (True, 1.0)
    assert (ways["on-policy-0.5"].lmbda, ways["on-policy-1"].lmbda) == (0.5, 1.0)
    assert config.distillation.loss == "forward_kl" and not config.distillation.generates


def test_the_induction_ways_preset_shares_induction_lm_teacher_and_validates_every_way():
    config, base = get_preset("induction-lm-ways"), get_preset("induction-lm")
    # the same task, teacher and students: a run directory's induction-lm teacher is reused
    assert (config.task, config.teacher, config.student) == (base.task, base.teacher, base.student)
    assert config.task.generative and config.distillation == DistillationConfig()
    ways = {w.name: w.distillation for w in config.ways}
    assert (ways["jsd"].loss, ways["jsd"].beta) == ("generalized_jsd", 0.5)
    assert ways["reverse-kl"].loss == "reverse_kl"
    assert (ways["seq-kd"].seq_kd, ways["seq-kd"].alpha) == (True, 1.0)
    assert (ways["on-policy-0.5"].lmbda, ways["on-policy-1"].lmbda) == (0.5, 1.0)
    for way in config.ways:  # each way is a valid experiment by itself
        assert replace(config, distillation=way.distillation, ways=()).distillation == way.distillation
    assert [s.label for s in config.schedules] == ["ce", "one-shot", "progressive-x2", "2-shot-auto"]
    labels = [r.label for r in student_runs(config) if r.seed == 0]
    assert len(labels) == 4 + 3 * 5 and labels.count("ce") == 1 and config.seeds == 3  # CE trains once


@pytest.mark.e2e
def test_the_induction_ways_preset_shrunk_runs_every_way_end_to_end(tmp_path):
    config = get_preset("induction-lm-ways")
    config = replace(
        config,
        task=replace(config.task, eval_size=64),
        teacher=replace(config.teacher, steps=20, eval_every=10, checkpoint_every=10),
        student=replace(config.student, steps=8, eval_every=4, batch_size=8),
        schedules=(CE(), OneShot(), Progressive()),
        seeds=1,
    )
    _train(config, tmp_path)
    students = RunDir(tmp_path).students
    last = {d.name: read_metrics(d / "metrics.jsonl")[-1] for d in students.iterdir()}
    assert len(last) == 1 + 2 * 6
    assert all("eval_in_context_accuracy" in r and "eval_bigram_loss" in r for r in last.values())
    assert last["seq-kd-one-shot-seed0"]["seq_kd_steps"] == 8  # every step on the teacher's continuations
    assert last["on-policy-1-progressive-seed0"]["on_policy_steps"] == 8
    assert 0 < last["on-policy-0.5-one-shot-seed0"]["on_policy_steps"] < 8
    assert last["one-shot-seed0"].get("seq_kd_steps", 0) == 0
