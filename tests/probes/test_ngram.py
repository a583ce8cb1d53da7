"""The n-gram probes' distance (paper §2): the default total variation and the paper's L1 norm ||p - q||_1,
which the authors' released probe scores -- exactly twice the TV -- checked against a float64 numpy reference
on a planted model and on the grammar's optimal predictor (through a run directory:
tests/tasks/pcfg/test_task_mlm.py, test_export_and_probe_cli_on_a_finished_run)."""

import numpy as np
import pytest
import torch

from progdistill.core.seeding import generator
from progdistill.probes.ngram import ngram_dependence, probe_positions
from progdistill.probes.oracle import oracle_ngram_dependence_at
from progdistill.tasks.pcfg.task import GrammarSpec, PCFGMaskedLMTask, Vocabulary, pad_sentences

TASK = PCFGMaskedLMTask(grammar=GrammarSpec(levels=4, seed=0), eval_size=32, max_length=64)
VOCAB = Vocabulary(("a", "b", "c"))
STATS = ("median", "q25", "q75", "mean")


class _Planted(torch.nn.Module):
    """A masked LM whose output distributions are known in closed form: the logits at t are
    ``left[ids[t-1]] + right[ids[t+1]] + slope * (positions the attention mask keeps)``, in float64."""

    def __init__(self, vocab_size: int):
        super().__init__()
        rng = np.random.default_rng(0)
        self.left = rng.normal(size=(vocab_size, vocab_size)) * 2
        self.right = rng.normal(size=(vocab_size, vocab_size)) * 2
        self.slope = rng.normal(size=vocab_size) * 0.03

    def forward(self, ids, attention_mask):
        previous = torch.cat([ids[:, :1], ids[:, :-1]], dim=1)
        following = torch.cat([ids[:, 1:], ids[:, -1:]], dim=1)
        visible = attention_mask.double().sum(dim=1)  # (B,)
        return (
            torch.from_numpy(self.left)[previous]
            + torch.from_numpy(self.right)[following]
            + visible[:, None, None] * torch.from_numpy(self.slope)
        )  # (B, L, V)

    def reference(self, ids: np.ndarray, attention: np.ndarray, p: int) -> np.ndarray:
        """The output distribution at p, (V,), computed in numpy float64."""
        logits = self.left[ids[p - 1]] + self.right[ids[p + 1]] + attention.sum() * self.slope
        e = np.exp(logits - logits.max())
        return e / e.sum()


def _reference_l1(model: _Planted, sentences, window: int, hiding: str) -> dict[str, list[float]]:
    """||P_base - P_perturbed||_1 at every probed position, each probe input built here from the definitions
    (base: p alone masked; M_robust: also the window's terminals; M_close: every terminal outside the window)."""
    ids, attention = (t.numpy() for t in pad_sentences(sentences, VOCAB))
    where = probe_positions(torch.from_numpy(ids < 3))
    out = {"M_robust": [], "M_close": []}
    for s, p in zip(where.sentence, where.position):
        terminal = ids[s] < 3
        inside = (np.abs(np.arange(len(terminal)) - p) <= window // 2) & terminal

        def predict(hidden, s=s, p=p):  # called at once, in this iteration
            hidden = hidden.copy()
            hidden[p] = True
            x = np.where(hidden, VOCAB.mask, ids[s])
            a = np.where(hidden, 0, attention[s]) if hiding == "attention" else attention[s]
            return model.reference(x, a.astype(np.float64), p)

        base = predict(np.zeros_like(terminal))
        out["M_robust"].append(np.abs(base - predict(inside)).sum())
        out["M_close"].append(np.abs(base - predict(terminal & ~inside)).sum())
    return out


@pytest.mark.parametrize("hiding", ["token", "attention"])
def test_l1_is_exactly_twice_tv_and_equals_a_float64_reference(hiding):
    model = _Planted(VOCAB.size)
    sentences = [s.tokens for s in TASK.sample_sentences(12, generator(0, "probe"))]
    tv = ngram_dependence(model, sentences, VOCAB, windows=(3, 5), hiding=hiding)
    l1 = ngram_dependence(model, sentences, VOCAB, windows=(3, 5), hiding=hiding, distance="l1")
    assert ngram_dependence(model, sentences, VOCAB, windows=(3, 5), hiding=hiding, distance="tv") == tv  # default
    assert l1["cross_entropy"] == tv["cross_entropy"]
    for w in (3, 5):
        reference = _reference_l1(model, sentences, w, hiding)
        for score in ("M_robust", "M_close"):
            values = np.array(reference[score])
            expected = dict(zip(("q25", "median", "q75"), np.quantile(values, [0.25, 0.5, 0.75])), mean=values.mean())
            for stat in STATS:
                assert l1[f"{score}/{w}"][stat] == 2 * tv[f"{score}/{w}"][stat]  # exactly: halving is exact
                assert l1[f"{score}/{w}"][stat] == pytest.approx(expected[stat], rel=1e-5, abs=1e-6)
            assert values.max() <= 2
    assert l1["M_robust/3"]["median"] > 0.1  # the check compares something: masking the neighbours moves p
    if hiding == "attention":  # and so does hiding the rest of the sentence from attention
        assert l1["M_close/3"]["median"] > 0.1
    with pytest.raises(ValueError, match="distance='l2' is invalid"):
        ngram_dependence(model, sentences, VOCAB, distance="l2")


def test_oracle_l1_is_exactly_twice_tv():
    grammar = TASK.load_grammar()
    ids, _ = pad_sentences([s.tokens for s in TASK.sample_sentences(4, generator(0, "probe"))], VOCAB)
    maskable = ids < 3
    where = probe_positions(maskable, per_sentence=4)
    tv = oracle_ngram_dependence_at(grammar, ids, maskable, where, windows=(3,))
    l1 = oracle_ngram_dependence_at(grammar, ids, maskable, where, windows=(3,), distance="l1")
    assert l1["cross_entropy"] == tv["cross_entropy"]
    for score in ("M_robust/3", "M_close/3"):
        assert {k: 2 * v for k, v in tv[score].items()} == l1[score]
    assert tv["M_robust/3"]["mean"] > 0  # not all zeros
