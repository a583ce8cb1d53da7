"""Autoregressive PCFG: next-token targets, span-closing levels, sampling, parser acceptance, the runner."""

import pytest
import torch

from progdistill.core.seeding import generator
from progdistill.core.settings import OptimizerConfig, TrainConfig
from progdistill.distill.schedules import CE, OneShot
from progdistill.experiment import ExperimentConfig
from progdistill.models.language import GPT2LMConfig
from progdistill.recipes.runner import run
from progdistill.tasks.pcfg.grammar import GrammarError
from progdistill.tasks.pcfg.task import GrammarSpec, PCFGNextTokenTask

TASK = PCFGNextTokenTask(grammar=GrammarSpec(levels=4, seed=0), eval_size=32, max_length=64)


def test_targets_are_next_tokens_and_level_keeps_span_ends():
    sentences = TASK.sample_sentences(4, generator(0, "d"))
    batch = TASK.batch_from_sentences(sentences)
    eos = TASK.vocabulary.eos
    for i, s in enumerate(sentences):
        n = len(s)
        assert batch.targets[i, :n].tolist() == s.tokens.tolist()  # BOS predicts token 0, ...
        assert batch.targets[i, n] == eos and (batch.targets[i, n + 1 :] == -100).all()
    level = PCFGNextTokenTask(grammar=TASK.grammar, level=1).batch_from_sentences(sentences)
    for i, s in enumerate(sentences):
        n = len(s)
        kept = (level.targets[i, :n] != -100).numpy()
        assert (kept == s.boundaries[1].astype(bool)).all()
        assert level.targets[i, n] == eos
    with pytest.raises(GrammarError, match="task.level=9"):
        PCFGNextTokenTask(grammar=TASK.grammar, level=9).batch_from_sentences(sentences)


def _sample_by_recomputing(model, prompt, allowed, stop_id, max_new_tokens, generator, temperature):
    """The sampling loop without a cache: every step runs the model on the whole sequence so far."""
    ids, out = prompt.clone(), [[] for _ in range(len(prompt))]
    block = torch.full((model.backbone.config.vocab_size,), float("-inf"))
    block[allowed] = 0.0
    for _ in range(max_new_tokens):
        active = [i for i, o in enumerate(out) if not o or o[-1] != stop_id]
        if not active or ids.shape[1] >= model.positions:
            break
        logits = model(ids[active])[:, -1] + block
        drawn = (
            logits.argmax(-1)
            if temperature == 0
            else torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=generator)[:, 0]
        )
        nxt = torch.full((len(ids),), stop_id)
        nxt[active] = drawn
        for i in active:
            out[i].append(int(nxt[i]))
        ids = torch.cat([ids, nxt[:, None]], dim=1)
    return out


@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_sample_with_cache_matches_recomputing_and_stops_at_eos(temperature):
    model = GPT2LMConfig(n_layer=2, n_head=2, head_dim=4).build(12, TASK.num_classes, [generator(0, "i")])
    with torch.no_grad():  # large weights: each next token depends strongly on the earlier ones
        for p in model.parameters():
            p.mul_(4)
    vocab = TASK.vocabulary
    allowed = torch.tensor([0, 1, 2, vocab.eos])
    args = (torch.full((16, 1), vocab.bos), allowed, vocab.eos, 30)
    out = model.sample(*args, torch.Generator().manual_seed(0), temperature=temperature)
    assert out == _sample_by_recomputing(model, *args, torch.Generator().manual_seed(0), temperature)
    for tokens in out:
        assert set(tokens) <= {0, 1, 2, vocab.eos}
        assert vocab.eos not in tokens[:-1] and len(tokens) <= 11  # 12 positions, BOS included
    if temperature:  # rows finish at different steps (the cache drops finished rows) or run out of positions
        assert len({len(t) for t in out}) > 2
    assert model.sample(torch.full((2, 12), vocab.bos), *args[1:], torch.Generator()) == [[], []]


@pytest.mark.e2e
def test_pcfg_lm_run_end_to_end(tmp_path):
    adamw = OptimizerConfig(name="adamw", lr=3e-3)
    model = GPT2LMConfig(n_layer=1, n_head=2, head_dim=4)
    config = ExperimentConfig(
        preset="tiny-lm",
        task=TASK,
        teacher=TrainConfig(model=model, optimizer=adamw, steps=20, batch_size=8, eval_every=10, checkpoint_every=10),
        student=TrainConfig(model=model, optimizer=adamw, steps=10, batch_size=8, eval_every=5),
        schedules=(CE(), OneShot()),
        seeds=1,
        threshold=0.5,
    )
    results = run(config, tmp_path / "run", log=lambda *a: None)
    generation = results["probes"]["generation"]
    assert set(generation["students"]) == {"ce", "one-shot"}
    assert 0 <= generation["teacher"]["acceptance"] <= generation["teacher"]["finished"] <= 1
    assert "Generations the grammar accepts" in (tmp_path / "run" / "summary.md").read_text()


def test_a_level_beyond_the_trees_is_refused_before_anything_is_written(tmp_path):
    adamw = OptimizerConfig(name="adamw", lr=3e-3)
    model = GPT2LMConfig(n_layer=1, n_head=2, head_dim=4)
    task = PCFGNextTokenTask(grammar=TASK.grammar, level=9, eval_size=8, max_length=64)
    config = ExperimentConfig(
        preset="x",
        task=task,
        teacher=TrainConfig(model=model, optimizer=adamw, steps=10),
        student=TrainConfig(model=model, optimizer=adamw, steps=10),
        schedules=(CE(),),
        seeds=1,
    )
    with pytest.raises(GrammarError, match="task.level=9"):
        run(config, tmp_path / "run", log=lambda *a: None)
    assert not (tmp_path / "run").exists()
