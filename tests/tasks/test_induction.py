import math
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from progdistill.core.config import ConfigError
from progdistill.core.settings import DistillationConfig
from progdistill.distill.losses import IGNORE_INDEX
from progdistill.experiment import build_model
from progdistill.models.language import GPT2LMConfig
from progdistill.recipes.presets import get_preset
from progdistill.tasks.induction import InductionSample, InductionTask, bigram_matrix


def test_hand_built_sequence_positions_and_targets():
    # V = 10, L = 8, one segment of S = 2 (a key-value pair): tokens 7 4 at positions 1-2, copied at 5-6.
    #   position: 0  1  2  3  4  5  6  7
    #   token:    3  7  4  0  2  7  4  9
    # Position t predicts token t + 1. Token 1 (7) and token 2 (4) are the first occurrence: not predictable.
    # Token 5 (7) starts the copy: not predictable. Token 6 (4) follows the key 7: in context (position 5).
    # Tokens 3, 4 and 7 are bigram draws: positions 2, 3 and 6. Position 7 predicts nothing.
    task = InductionTask(vocab_size=10, length=8, segment_length=2, pairs=1, mix=1.0)
    tokens = torch.tensor([[3, 7, 4, 0, 2, 7, 4, 9]])
    planted = torch.tensor([[-1, 0, 0, -1, -1, 0, 0, -1]])
    copy = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 0]], dtype=torch.bool)
    offset = torch.tensor([[-1, 0, 1, -1, -1, 0, 1, -1]])
    batch = task.batch_from_sample(InductionSample(tokens, planted, copy, offset))
    _ = IGNORE_INDEX
    assert batch.targets.tolist() == [[_, _, 0, 2, _, 4, 9, _]]
    assert batch.groups is not None
    assert batch.groups["in_context"].nonzero()[:, 1].tolist() == [5]
    assert batch.groups["bigram"].nonzero()[:, 1].tolist() == [2, 3, 6]
    assert torch.equal(batch.inputs, tokens)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    segment_length=st.integers(2, 5),
    pairs=st.integers(1, 3),
    mix=st.sampled_from([0.0, 0.3, 1.0]),
)
def test_copies_repeat_their_first_occurrence(seed, segment_length, pairs, mix):
    task = InductionTask(vocab_size=20, length=40, segment_length=segment_length, pairs=pairs, mix=mix)
    s = task.sample(16, torch.Generator().manual_seed(seed))
    half = task.length // 2
    for i in range(16):
        holds = bool((s.planted[i] >= 0).any())
        if mix == 0.0:
            assert not holds
        if mix == 1.0:
            assert holds
        if not holds:
            continue
        seen = set()
        for j in range(pairs):
            first = ((s.planted[i] == j) & ~s.copy[i]).nonzero().flatten()
            again = ((s.planted[i] == j) & s.copy[i]).nonzero().flatten()
            assert len(first) == len(again) == segment_length
            assert first.max() < half <= again.min()  # recalled later, in the second half
            assert torch.equal(first, torch.arange(first[0], first[0] + segment_length))  # contiguous
            assert torch.equal(again, torch.arange(again[0], again[0] + segment_length))
            assert torch.equal(s.tokens[i, first], s.tokens[i, again])
            seen |= set(s.tokens[i, first].tolist())
        assert len(seen) == pairs * segment_length  # all segment tokens distinct
    batch = task.batch_from_sample(s)
    assert batch.groups is not None
    ic, bg = batch.groups["in_context"], batch.groups["bigram"]
    assert not (ic & bg).any()
    assert torch.equal((batch.targets != IGNORE_INDEX), ic | bg)
    assert int(ic.sum()) == int((s.planted >= 0).any(1).sum()) * pairs * (segment_length - 1)


def test_bigram_positions_follow_the_chain():
    # With peaked rows (alpha 0.05) the walk's transitions have the chain's probabilities: the empirical
    # frequency of the most likely successor matches its probability.
    task = InductionTask(vocab_size=8, length=64, segment_length=2, pairs=1, mix=0.0, bigram_alpha=0.05)
    P = task.transition()
    assert torch.allclose(P.sum(1), torch.ones(8, dtype=torch.float64))
    s = task.sample(400, torch.Generator().manual_seed(0))
    prev, nxt = s.tokens[:, :-1].flatten(), s.tokens[:, 1:].flatten()
    counts = torch.zeros(8, 8, dtype=torch.float64).index_put_(
        (prev, nxt), torch.ones(len(prev), dtype=torch.float64), accumulate=True
    )
    freq = counts / counts.sum(1, keepdim=True)
    seen = counts.sum(1) > 500
    assert seen.sum() >= 2
    assert torch.allclose(freq[seen], P[seen], atol=0.05)


def test_sampling_is_deterministic():
    task = InductionTask(vocab_size=16, length=32, segment_length=4, pairs=2, mix=0.5)
    a = task.sample_batch(50, torch.Generator().manual_seed(3))
    b = task.sample_batch(50, torch.Generator().manual_seed(3))
    c = task.sample_batch(50, torch.Generator().manual_seed(4))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.inputs, c.inputs)
    assert torch.equal(bigram_matrix(16, 0.1, 0), bigram_matrix(16, 0.1, 0))
    assert not torch.equal(bigram_matrix(16, 0.1, 0), bigram_matrix(16, 0.1, 1))
    e1, e2 = (
        task.eval_batches(),
        InductionTask(vocab_size=16, length=32, segment_length=4, pairs=2, mix=0.5).eval_batches(),
    )
    assert len(e1) == math.ceil(task.eval_size / 128)
    assert all(torch.equal(x.inputs, y.inputs) for x, y in zip(e1, e2))


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"mix": 1.5}, "task.mix"),
        ({"mix": -0.1}, "task.mix"),
        ({"length": 16, "segment_length": 4, "pairs": 2}, "task.length"),
        ({"vocab_size": 7, "segment_length": 4, "pairs": 2}, "task.vocab_size"),
        ({"segment_length": 1}, "task.segment_length"),
        ({"bigram_alpha": 0.0}, "task.bigram_alpha"),
    ],
)
def test_bad_fields_are_one_error_naming_them(fields, named):
    with pytest.raises(ConfigError, match=named):
        InductionTask(**fields)


def test_edges_that_fit_are_accepted():
    # length 18: each half holds 18 // 2 - 1 = 8 positions = 2 segments of 4; V = 8 = 2 * 4 distinct tokens.
    task = InductionTask(vocab_size=8, length=18, segment_length=4, pairs=2, mix=1.0)
    s = task.sample(30, torch.Generator().manual_seed(0))
    assert int((s.planted >= 0).sum()) == 30 * 2 * 2 * 4


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    length=st.integers(8, 40),
    segment_length=st.integers(2, 5),
    pairs=st.integers(1, 3),
)
def test_a_generation_prompt_holds_every_first_occurrence_and_no_copy(seed, length, segment_length, pairs):
    if pairs * segment_length > length // 2 - 1:
        return
    task = InductionTask(vocab_size=16, length=length, segment_length=segment_length, pairs=pairs, mix=1.0)
    sample = task.sample(16, torch.Generator().manual_seed(seed))
    p = task.prompt_length()
    first = (sample.planted >= 0) & ~sample.copy
    assert first[:, p:].sum() == 0 and first[:, :p].sum() == 16 * pairs * segment_length
    assert sample.copy[:, :p].sum() == 0 and sample.copy[:, p:].sum() == 16 * pairs * segment_length


def _tiny_lm(task):
    return build_model(task, GPT2LMConfig(n_layer=1, n_head=1, head_dim=8, mlp_ratio=1), [0], "student-init")


def test_generated_sequences_continue_the_first_half_of_task_sequences():
    task = InductionTask(vocab_size=16, length=20, segment_length=4, pairs=1, mix=1.0)
    model = _tiny_lm(task)
    batch = task.generate_batch(model, 6, torch.Generator().manual_seed(3))
    data = task.sample_batch(6, torch.Generator().manual_seed(3))  # the prompts' draws come first
    p = task.prompt_length()
    assert p == 10 and batch.inputs.shape == batch.targets.shape == (6, 20)
    assert torch.equal(batch.inputs[:, :p], data.inputs[:, :p])
    assert torch.equal(batch.targets[:, : p - 1], data.targets[:, : p - 1])  # the prompt's bigram positions
    assert torch.equal(batch.targets[:, p - 1 : -1], batch.inputs[:, p:])  # every generated token is a target
    assert (batch.targets[:, -1] == IGNORE_INDEX).all() and batch.attention_mask is not None
    assert batch.attention_mask.all() and int(batch.inputs.max()) < 16
    again = task.generate_batch(model, 6, torch.Generator().manual_seed(3))
    assert torch.equal(again.inputs, batch.inputs)  # every draw from the generator
    short = task.generate_batch(model, 6, torch.Generator().manual_seed(3), max_new_tokens=3)
    assert short.inputs.shape == (6, 13) and torch.equal(short.inputs, batch.inputs[:, :13])
    longest = task.generate_batch(model, 2, torch.Generator(), max_new_tokens=99)
    assert longest.inputs.shape == (2, 20)  # never past the task's length


def test_an_experiment_may_train_the_induction_task_on_generated_sequences():
    config = get_preset("induction-lm")
    assert InductionTask.generative
    for d in (DistillationConfig(seq_kd=True, alpha=1.0), DistillationConfig(lmbda=0.5)):
        assert replace(config, distillation=d).distillation == d  # validates (refused before: not generative)
