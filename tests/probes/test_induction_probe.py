import json
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from progdistill.cli import main
from progdistill.distill.schedules import CE, OneShot
from progdistill.models.language import GPT2LMConfig
from progdistill.probes.induction import (
    attention_patterns,
    head_scores,
    induction_record,
    probe_induction,
    repeated_sequences,
    summarize,
)
from progdistill.recipes.presets import get_preset
from progdistill.recipes.runner import run
from progdistill.store.lock import LOCK, RunLockedError
from progdistill.tasks.induction import InductionTask


def _previous_token(T: int) -> torch.Tensor:
    """(T, T): position t attends to t - 1 (position 0 to itself)."""
    a = torch.zeros(T, T)
    a[0, 0] = 1.0
    a[torch.arange(1, T), torch.arange(0, T - 1)] = 1.0
    return a


def _induction(ids: torch.Tensor) -> torch.Tensor:
    """(B, T, T): position t attends to the token after the latest earlier occurrence of ids[t] (to itself
    when there is none)."""
    B, T = ids.shape
    a = torch.zeros(B, T, T)
    for b in range(B):
        for t in range(T):
            earlier = [s for s in range(t) if ids[b, s] == ids[b, t]]
            a[b, t, earlier[-1] + 1 if earlier else t] = 1.0
    return a


def test_hand_built_heads_score_one_on_their_own_pattern():
    R, T = 5, 10
    ids = repeated_sequences(vocab_size=12, length=T, count=3)
    assert ids.shape == (3, T) and torch.equal(ids[:, :R], ids[:, R:])
    assert all(len(set(row[:R].tolist())) == R for row in ids)
    uniform = torch.tril(torch.ones(T, T)) / torch.arange(1, T + 1)[:, None]
    # Layer 0: heads (previous token, uniform); layer 1: heads (induction, previous token).
    layer0 = torch.stack([_previous_token(T).expand(3, T, T), uniform.expand(3, T, T)], dim=1)  # (B, H, T, T)
    layer1 = torch.stack([_induction(ids), _previous_token(T).expand(3, T, T)], dim=1)
    prev, induction = head_scores([layer0, layer1], R)
    assert prev.shape == induction.shape == (2, 2)
    assert prev[0, 0] == 1.0 and induction[1, 0] == 1.0 and prev[1, 1] == 1.0
    # A previous-token head never looks R - 1 back (R > 2); the induction head looks back one only at t = R.
    assert induction[0, 0] == 0.0 and induction[1, 1] == 0.0
    # The induction head attends to itself in the first half (no earlier occurrence) and R - 1 back in the second.
    assert prev[1, 0] == 0.0
    # Uniform attention: 1 / (t + 1) on each earlier position.
    assert prev[0, 1] == pytest.approx(np.mean([1 / (t + 1) for t in range(1, T)]), rel=1e-6)
    assert induction[0, 1] == pytest.approx(np.mean([1 / (t + 1) for t in range(R, T)]), rel=1e-6)


class _HandInduction(torch.nn.Module):
    """A causal LM implementing an induction head by hand: layer 0 attends to the previous token, layer 1 to the
    token after the current token's latest earlier occurrence, and the logits predict that token (uniform when
    there is none) -- with the ``backbone`` interface the probe reads (``output_attentions``)."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.backbone = _Backbone(self)

    def logits(self, ids):
        attend = _induction(ids)  # (B, T, T)
        predicted = (attend * ids[:, None, :].float()).sum(-1).long()  # the attended token
        found = attend.argmax(-1) != torch.arange(ids.shape[1])
        out = torch.zeros(*ids.shape, self.vocab_size)
        out.scatter_(2, predicted[..., None], torch.where(found, 30.0, 0.0)[..., None])
        return out

    def forward(self, ids, attention_mask=None):
        return self.logits(ids)


class _Backbone:
    def __init__(self, model):
        self.model, self.config = model, SimpleNamespace(_attn_implementation="eager")

    def __call__(self, ids, output_attentions=False):
        B, T = ids.shape
        prev = _previous_token(T).expand(B, 1, T, T)
        return SimpleNamespace(attentions=(prev, _induction(ids)[:, None]), logits=self.model.logits(ids))


def test_induction_record_of_a_hand_built_induction_model():
    task = InductionTask(vocab_size=16, length=16, segment_length=4, pairs=1, mix=1.0, eval_size=64)
    ids = repeated_sequences(task.vocab_size, task.length, count=4)
    record = induction_record(_HandInduction(task.vocab_size), task, ids)
    assert record["previous_token"] == [[1.0], [0.0]]
    assert record["induction"] == [[0.0], [1.0]]
    assert record["repeat_loss"] == pytest.approx(0.0, abs=1e-6)
    # On the task, the copy's tokens are found by the induction rule unless the bigram walk repeated the previous
    # copy token in between: in-context accuracy is high, bigram accuracy is that of a lookup of no use there.
    assert record["eval_in_context_accuracy"] > 0.6
    assert record["eval_in_context_loss"] < record["eval_bigram_loss"]


def test_summary_finds_the_first_formed_checkpoint_and_groups_students():
    def rec(model, step, ind):
        return {
            "model": model,
            "step": step,
            "induction": [[0.0, ind]],
            "previous_token": [[0.9, 0.1]],
            "eval_in_context_loss": 1.0 - ind,
            "eval_bigram_loss": 2.0,
        }

    records = [
        rec("teacher", 0, 0.05),
        rec("teacher", 10, 0.3),
        rec("teacher", 20, 0.8),
        rec("teacher", 30, 0.9),
        rec("ce-seed0", 100, 0.2),
        rec("ce-seed1", 100, 0.4),
    ]
    summary = summarize(records)
    assert summary["teacher"]["induction_formed_step"] == 20
    assert summary["teacher"]["best_induction"] == [0.05, 0.3, 0.8, 0.9]
    ce = summary["students"]["ce"]
    assert ce["best induction score"]["mean"] == pytest.approx(0.3)
    assert ce["eval_in_context_loss"]["mean"] == pytest.approx(0.7)


def test_attention_patterns_of_a_gpt2_give_its_own_logits():
    model = GPT2LMConfig(n_layer=2, n_head=2, head_dim=4).build(12, 10, [torch.Generator().manual_seed(0)])
    ids = repeated_sequences(10, 12, count=3)
    expected = model(ids)
    attentions, logits = attention_patterns(model, ids)
    assert len(attentions) == 2 and attentions[0].shape == (3, 2, 12, 12)
    assert torch.allclose(attentions[1].sum(-1), torch.ones(3, 2, 12), atol=1e-5)
    assert torch.allclose(torch.triu(attentions[0], diagonal=1), torch.zeros(3, 2, 12, 12))  # causal
    assert torch.allclose(logits, expected, atol=1e-5)


@pytest.mark.e2e
def test_induction_run_and_probe_end_to_end(tmp_path):
    # The induction-lm preset shrunk to seconds: the run ends with the probe, `progdistill probe induction` reruns it.
    base = get_preset("induction-lm")
    config = replace(
        base,
        task=replace(base.task, eval_size=64),
        teacher=replace(base.teacher, steps=20, eval_every=10, checkpoint_every=10),
        student=replace(base.student, steps=10, eval_every=5),
        schedules=(CE(), OneShot()),
        seeds=1,
    )
    results = run(config, tmp_path / "run", log=lambda *a: None)
    summary = results["probes"]["induction"]
    assert summary["teacher"]["steps"] == [0, 10, 20]
    assert set(summary["students"]) == {"ce", "one-shot"}
    records = [json.loads(line) for line in (tmp_path / "run" / "probes" / "induction.jsonl").read_text().splitlines()]
    assert [r["model"] for r in records] == ["teacher"] * 3 + ["ce-seed0", "one-shot-seed0"]
    assert np.asarray(records[0]["induction"]).shape == (2, 4) and np.asarray(records[-1]["induction"]).shape == (2, 1)
    assert all(0 <= v <= 1 for r in records for row in r["previous_token"] + r["induction"] for v in row)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "teacher" / "metrics.jsonl").read_text().splitlines()]
    assert records[2]["eval_in_context_loss"] == pytest.approx(metrics[-1]["eval_in_context_loss"], rel=1e-5)
    (tmp_path / "run" / "probes" / "induction.png").unlink()
    assert main(["probe", "induction", str(tmp_path / "run"), "--no-students"]) == 0
    assert (tmp_path / "run" / "probes" / "induction.png").exists()
    # Not while another process holds the run (training it, or probing it): refused, its files untouched.
    (tmp_path / "run" / LOCK).write_text(json.dumps({"pid": 1, "host": "another-host"}))
    before = (tmp_path / "run" / "probes" / "induction.jsonl").read_bytes()
    with pytest.raises(RunLockedError, match="another-host"):
        probe_induction(tmp_path / "run", students=False)
    assert (tmp_path / "run" / "probes" / "induction.jsonl").read_bytes() == before
