import json
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from safetensors.torch import load_file, save_file

from progdistill.cli import main
from progdistill.core.config import ConfigError, from_dict, register, to_dict, variants
from progdistill.core.seeding import generator
from progdistill.core.settings import OptimizerConfig, TrainConfig
from progdistill.distill.schedules import CE, FINAL, KShot, OneShot, Progressive
from progdistill.experiment import ExperimentConfig, check_task_data, config_hash
from progdistill.models.parity_transformer import ParityTransformer, TransformerConfig
from progdistill.recipes.compare import load_run
from progdistill.recipes.presets import get_preset
from progdistill.recipes.runner import run
from progdistill.store.trajectory import Trajectory
from progdistill.tasks.parity import ParityTask

TINY = TransformerConfig(n_layer=1, n_head=2, head_dim=4)


def bits(batch: int, n: int, seed: int = 0) -> torch.Tensor:
    return ParityTask(n=n, k=1).sample_inputs(batch, torch.Generator().manual_seed(seed))


def test_registered_and_round_trips_through_json():
    assert variants("model")["parity-gpt2"] is TransformerConfig and "gpt2" not in variants("model")
    cfg = TransformerConfig(n_layer=3, n_head=5, head_dim=2, mlp_ratio=2)
    data = to_dict(cfg)
    assert data == {"type": "parity-gpt2", "n_layer": 3, "n_head": 5, "head_dim": 2, "mlp_ratio": 2}
    assert from_dict(TrainConfig, {"model": data}).model == cfg


def test_a_config_written_under_the_former_name_gpt2_still_loads():
    old = {"type": "gpt2", "n_layer": 3, "n_head": 5, "head_dim": 2, "mlp_ratio": 2}
    cfg = from_dict(TrainConfig, {"model": old}).model
    assert cfg == TransformerConfig(n_layer=3, n_head=5, head_dim=2, mlp_ratio=2)
    assert to_dict(cfg)["type"] == "parity-gpt2"  # written under its name from now on
    assert (
        from_dict(
            ExperimentConfig, {**get_preset("parity-transformer").to_dict(), "teacher": {"model": old}}
        ).teacher.model
        == cfg
    )
    assert cfg.hidden_size == 10 and TransformerConfig.stackable is False


def test_shapes_for_any_batch_size():
    model = TINY.build(7, 3, [generator(0, "init")])
    assert isinstance(model, ParityTransformer)
    for batch in (1, 5):
        assert model(bits(batch, 7)).shape == (1, batch, 3)
    assert model.gpt2.config.n_embd == 8 and model.gpt2.config.n_inner == 32


def test_init_is_a_function_of_the_generator_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = TINY.build(6, 2, [generator(1, "init")]).state_dict()
    b = TINY.build(6, 2, [generator(1, "init")]).state_dict()
    c = TINY.build(6, 2, [generator(2, "init")]).state_dict()
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["gpt2.h.0.attn.c_attn.weight"], c["gpt2.h.0.attn.c_attn.weight"])
    assert not torch.equal(a["head.weight"], c["head.weight"])


def test_no_dropout_training_draws_no_random_numbers():
    model = TINY.build(6, 2, [generator(0, "init")]).train()
    x = bits(16, 6)
    before = torch.get_rng_state()
    out1, out2 = model(x), model(x)
    torch.nn.functional.cross_entropy(out1[0], torch.zeros(16, dtype=torch.long)).backward()
    assert torch.equal(out1, out2)
    assert torch.equal(torch.get_rng_state(), before)


def test_prediction_reads_every_bit_and_examples_independently():
    """The last position attends (causally) to all n bits: flipping any bit, even the first, moves the
    logits. Examples of a batch do not interact, and the tokens are 1 where x = -1."""
    n = 6
    model = TINY.build(n, 2, [generator(0, "init")]).eval()
    x = bits(4, n, seed=1)
    out = model(x)
    for i in range(n):
        flipped = x.clone()
        flipped[:, i] *= -1
        assert (model(flipped) - out).abs().amax(dim=-1).min() > 1e-6, f"bit {i} does not reach the output"
    singles = torch.cat([model(x[j : j + 1]) for j in range(4)], dim=1)
    assert torch.allclose(singles, out, atol=1e-6)
    hidden = model.gpt2(input_ids=(x < 0).long()).last_hidden_state  # (B, n, H)
    assert torch.allclose(model.head(hidden[:, -1]).unsqueeze(0), out, atol=1e-6)


def test_state_dict_round_trips_through_safetensors(tmp_path):
    model = TINY.build(5, 2, [generator(0, "init")]).eval()
    save_file(model.state_dict(), tmp_path / "w.safetensors")
    other = TINY.build(5, 2, [generator(9, "init")]).eval()
    other.load_state_dict(load_file(tmp_path / "w.safetensors"))
    x = bits(8, 5)
    assert torch.equal(model(x), other(x))


@pytest.mark.parametrize("field,value", [("n_layer", 0), ("n_head", -1), ("head_dim", 1.5), ("mlp_ratio", True)])
def test_invalid_fields_name_the_field(field, value):
    with pytest.raises(ConfigError, match=f"model.{field}"):
        TransformerConfig(**{field: value})


def test_a_stack_of_two_is_refused():
    with pytest.raises(ConfigError, match="generators"):
        TINY.build(5, 2, [generator(0, "a"), generator(1, "b")])


def test_presets_follow_the_paper_and_name_real_checkpoints():
    paper = get_preset("parity-transformer-paper")
    assert (paper.task.n, paper.task.k) == (100, 6)
    assert (paper.teacher.model.n_layer, paper.teacher.model.n_head, paper.teacher.model.head_dim) == (2, 32, 8)
    assert (paper.student.model.n_layer, paper.student.model.n_head, paper.student.model.head_dim) == (2, 4, 8)
    opt = paper.teacher.optimizer
    assert (opt.name, paper.teacher.batch_size, opt.lr_schedule, opt.warmup_fraction) == ("adam", 32, "cosine", 0.06)
    assert 1e-4 <= opt.lr <= 3e-4
    for name in ("parity-transformer", "parity-transformer-paper"):
        cfg = get_preset(name)
        assert [s.label for s in cfg.schedules] == ["ce", "one-shot", "progressive", "2-shot"]
        first = cfg.schedules[3].points[0][0]
        assert first % cfg.teacher.checkpoint_every == 0 and 0 < first < cfg.teacher.steps
        assert ExperimentConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.e2e
def test_tiny_end_to_end_run(tmp_path):
    """The parity-transformer preset shrunk to seconds: every schedule trains one student after another."""
    adam = OptimizerConfig(name="adam", lr=3e-3)
    teacher = TrainConfig(
        model=TransformerConfig(n_layer=1, n_head=4, head_dim=4),
        optimizer=adam,
        steps=40,
        batch_size=16,
        eval_every=20,
        checkpoint_every=20,
    )
    student = TrainConfig(
        model=TransformerConfig(n_layer=1, n_head=1, head_dim=4), optimizer=adam, steps=40, batch_size=16, eval_every=20
    )
    config = ExperimentConfig(
        preset="tiny-transformer",
        task=ParityTask(n=6, k=2, eval_size=128),
        teacher=teacher,
        student=student,
        seeds=1,
        schedules=(CE(), OneShot(), Progressive(), KShot(points=((20, 20), (FINAL, 20)))),
    )
    results = run(config, tmp_path / "run", log=lambda *a: None)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["students"] == results["students"]
    assert [(s["schedule"], s["steps"]) for s in saved["students"]] == [
        ("ce", 40),
        ("one-shot", 40),
        ("progressive", 40),
        ("2-shot", 40),
    ]
    assert ExperimentConfig.from_dict(json.loads((tmp_path / "run" / "config.json").read_text())) == config


@register("task")
@dataclass(frozen=True)
class ZeroOneParity(ParityTask):
    """Sparse parity with bits in {0, 1} instead of {-1, +1}: the parity transformer would read all-zero tokens."""

    kind: ClassVar[str] = "zero-one-parity-test"

    def sample_inputs(self, count, generator):
        return super().sample_inputs(count, generator).add(1).div(2)


def test_refuses_inputs_that_are_not_bits_naming_model_and_task(tmp_path):
    task = ZeroOneParity(n=8, k=2, eval_size=64)
    config = ExperimentConfig(
        preset="zero-one",
        task=task,
        teacher=TrainConfig(model=TINY, steps=10),
        student=TrainConfig(model=TINY, steps=10),
        schedules=(CE(),),
        seeds=1,
    )
    with pytest.raises(
        ValueError,
        match=r"teacher.model: model type 'parity-gpt2' \(the parity transformer\) reads "
        r"inputs of shape \(B, n\) with values -1 or \+1 only .* task "
        r"'zero-one-parity-test' gives other inputs \(torch.float32, e.g. 0\)",
    ):
        check_task_data(config)
    with pytest.raises(ConfigError, match="zero-one-parity-test"):  # before anything is written
        run(config, tmp_path / "run", device="cpu", log=lambda *a: None, report_to="none")
    assert not (tmp_path / "run").exists()
    # the same model on bits in {-1, +1}: accepted, drawing from generators of its own (not the global one)
    before = torch.get_rng_state()
    TINY.check_task(ParityTask(n=8, k=2, eval_size=64))
    assert torch.equal(torch.get_rng_state(), before)


def test_a_run_written_under_the_former_name_gpt2_is_the_same_run(tmp_path, capsys):
    """A run directory written before the rename (config.json, its hash, the teacher's header and results.json
    under "gpt2") reads as the same run: status and report work, and a rerun trains nothing."""
    tiny = TrainConfig(
        model=TINY,
        optimizer=OptimizerConfig(name="adam", lr=3e-3),
        steps=6,
        batch_size=8,
        eval_every=3,
        checkpoint_every=3,
    )
    config = ExperimentConfig(
        preset="tiny-rename",
        task=ParityTask(n=4, k=2, eval_size=32),
        teacher=tiny,
        student=tiny,
        seeds=1,
        schedules=(CE(), Progressive()),
    )
    out = tmp_path / "run"
    run(config, out, device="cpu", log=lambda *a: None, report_to="none")
    # Rewrite the run as the former version wrote it: "gpt2" everywhere the model type appears, hashes to match.
    old = json.loads(json.dumps(config.to_dict()).replace('"parity-gpt2"', '"gpt2"'))
    old_hash = config_hash(old)
    assert old_hash != config_hash(config)
    (out / "config.json").write_text(json.dumps(old))
    (out / "config.sha256").write_text(old_hash + "\n")
    manifest = out / "teacher" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"parity-gpt2"', '"gpt2"'))
    results = json.loads((out / "results.json").read_text())
    (out / "results.json").write_text(json.dumps({**results, "config_sha256": old_hash}))
    weights = {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")}

    assert Trajectory(out / "teacher").header["model"]["type"] == "parity-gpt2"
    assert main(["status", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[-1] == "3 done", printed
    assert main(["report", str(out)]) == 0
    assert load_run(out).results["config_sha256"] == config_hash(config)  # report wrote today's hash: compare reads it
    run(ExperimentConfig.from_dict(old), out, device="cpu", log=lambda *a: None, report_to="none")
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")} == weights  # nothing trained again
    assert json.loads((out / "config.json").read_text())["teacher"]["model"]["type"] == "parity-gpt2"
