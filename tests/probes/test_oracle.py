import numpy as np
import pytest
from pcfg_language import AMBIGUOUS, conditional, whole_language

from progdistill.probes.ngram import probe_positions
from progdistill.probes.oracle import oracle_masked_lm_loss, oracle_ngram_dependence_at
from progdistill.tasks.pcfg.grammar import parse_grammar
from progdistill.tasks.pcfg.task import Vocabulary, pad_sentences


def test_oracle_ngram_probe_equals_brute_force_on_every_position():
    """The oracle probe's M_robust / M_close / cross-entropy, from padded ids and probe positions (BOS at 0), equal
    direct conditioning over the language at the same sentence positions."""

    g = parse_grammar(AMBIGUOUS)
    language = whole_language(g)
    sentences = sorted(language)[::7]
    ids, _ = pad_sentences(sentences, Vocabulary(g.terminals))
    maskable = ids < 3
    where = probe_positions(maskable, per_sentence=3)
    got = oracle_ngram_dependence_at(g, ids, maskable, where, windows=(3,))
    robust, close, nll = [], [], []
    for s, q in zip(where.sentence, where.position):
        tokens, p = sentences[s], int(q) - 1
        n = len(tokens)
        window = {i for i in (p - 1, p, p + 1) if 0 <= i < n}
        base = conditional(language, tokens, [], p, 3)
        robust.append(0.5 * np.abs(base - conditional(language, tokens, window, p, 3)).sum())
        close.append(0.5 * np.abs(base - conditional(language, tokens, set(range(n)) - window, p, 3)).sum())
        nll.append(-np.log(base[tokens[p]]))
    for key, values in (("M_robust/3", robust), ("M_close/3", close), ("cross_entropy", nll)):
        assert got[key]["median"] == pytest.approx(float(np.median(values)), abs=1e-9)
        assert got[key]["mean"] == pytest.approx(float(np.mean(values)), abs=1e-9)
    assert max(robust) > 0.05 and max(close) > 0.05  # the check has something to compare


def test_oracle_masked_lm_loss_equals_brute_force_for_the_same_hidden_sets():

    g = parse_grammar(AMBIGUOUS)
    language = whole_language(g)
    sentences = sorted(language)[::5]
    got = oracle_masked_lm_loss(g, sentences, 0.4, np.random.default_rng(3), per_sentence=2)
    rng, nll = np.random.default_rng(3), []  # the same draws, scored by conditioning over the language
    for tokens in sentences:
        hidden = np.flatnonzero(rng.random(len(tokens)) < 0.4)
        if len(hidden):
            for p in rng.choice(hidden, size=min(2, len(hidden)), replace=False):
                nll.append(-np.log(conditional(language, tokens, set(hidden.tolist()), int(p), 3)[tokens[p]]))
    assert got["positions"] == len(nll) > 20
    assert got["mean"] == pytest.approx(np.mean(nll), abs=1e-9) and got["mean"] > 0.1
    nothing = oracle_masked_lm_loss(g, sentences[:3], 1e-6, np.random.default_rng(0))  # no token hidden
    assert nothing["positions"] == 0 and nothing["mean"] is None and nothing["std_error"] is None
    with pytest.raises(ValueError, match="mask_rate=1"):
        oracle_masked_lm_loss(g, sentences, 1, np.random.default_rng(0))


@pytest.mark.parametrize("rate", [0.0, 1.0, -0.1])
def test_oracle_masked_lm_loss_refuses_a_mask_rate_outside_zero_one(rate):
    with pytest.raises(ValueError, match=rf"mask_rate={rate!r} is invalid: must lie in \(0, 1\)"):
        oracle_masked_lm_loss(parse_grammar(AMBIGUOUS), [[0, 1, 1, 1]], rate, np.random.default_rng(0))
