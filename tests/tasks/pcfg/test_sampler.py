import numpy as np
import pytest

from progdistill.tasks.pcfg.grammar import GrammarError, load_grammar, parse_grammar, random_grammar
from progdistill.tasks.pcfg.sampler import SentenceTooLongError, sample_sentences


@pytest.fixture(scope="module")
def cfg3b():
    return load_grammar("cfg3b")


@pytest.fixture(scope="module")
def cfg3b_batch(cfg3b):
    return sample_sentences(cfg3b, 300, np.random.default_rng(0))


def _same(a, b):
    return all(
        np.array_equal(getattr(a, f), getattr(b, f))
        for f in ("tokens", "ancestors", "boundaries", "offsets", "log_probability")
    )


def test_same_seed_same_sentences(cfg3b, cfg3b_batch):
    assert _same(cfg3b_batch, sample_sentences(cfg3b, 300, np.random.default_rng(0)))
    other = sample_sentences(cfg3b, 300, np.random.default_rng(1))
    assert not np.array_equal(cfg3b_batch.lengths, other.lengths)
    small = random_grammar(4, 3, 2, seed=0)  # several chunks, so chunking is deterministic too
    assert _same(
        sample_sentences(small, 2500, np.random.default_rng(5)), sample_sentences(small, 2500, np.random.default_rng(5))
    )


def test_cfg3b_lengths_match_the_paper(cfg3b_batch):
    lengths = cfg3b_batch.lengths
    assert len(cfg3b_batch) == 300 and lengths.sum() == len(cfg3b_batch.tokens)
    assert lengths.min() >= 161 and lengths.max() <= 432  # the grammar's shortest and longest sentences
    assert abs(lengths.mean() - 294) < 6  # exact expectation 294.0; std of mean ~3
    assert set(np.unique(cfg3b_batch.tokens)) == {0, 1, 2}


def test_arrays_have_documented_shapes_and_types(cfg3b, cfg3b_batch):
    s = cfg3b_batch[3]
    n = len(s)
    assert s.tokens.shape == (n,) and s.tokens.dtype == np.int64
    assert s.ancestors.shape == s.boundaries.shape == (7, n) and s.ancestors.dtype == np.int32
    assert set(np.unique(s.boundaries)) <= {0, 1}
    assert (s.ancestors[0] == cfg3b.nonterminal_id("s")).all()
    levels = np.array(cfg3b.levels)
    for d in range(7):
        assert (levels[s.ancestors[d]] == d).all()  # layered: depth d holds level-d nonterminals
    assert (s.boundaries[0] == np.eye(1, n, n - 1, dtype=np.int8)[0]).all()  # the root ends at the last token
    assert (s.boundaries[6] == 1).all()  # preterminals span one token each


def test_every_ancestor_derives_its_tokens(cfg3b, cfg3b_batch):
    # Within each depth-d node's span the ancestor is constant, and the depth-(d+1) nodes inside it, read left
    # to right, are a right-hand side of that node's nonterminal: the ancestors form a derivation of the tokens.
    rhs_of = {(r.lhs, r.rhs) for r in cfg3b.rules}
    for s in list(cfg3b_batch)[:40]:
        ends = [np.flatnonzero(b) + 1 for b in s.boundaries]
        for d in range(6):
            starts = np.concatenate(([0], ends[d][:-1]))
            for a, b in zip(starts, ends[d]):
                parent = cfg3b.nonterminals[s.ancestors[d, a]]
                assert (s.ancestors[d, a:b] == s.ancestors[d, a]).all()
                child_ends = ends[d + 1][(ends[d + 1] > a) & (ends[d + 1] <= b)]
                children = tuple(cfg3b.nonterminals[s.ancestors[d + 1, e - 1]] for e in child_ends)
                assert (parent, children) in rhs_of
        leaves = tuple(cfg3b.nonterminals[x] for x in s.ancestors[6])
        assert leaves == tuple(cfg3b.terminals[t] for t in s.tokens)  # a -> 'a', b -> 'b', c -> 'c'


def test_boundaries_mark_where_the_ancestor_node_changes(cfg3b_batch):
    for s in list(cfg3b_batch)[:40]:
        changes = np.append(s.ancestors[:, 1:] != s.ancestors[:, :-1], np.ones((7, 1), bool), axis=1)
        # A change of ancestor id is always a boundary (a boundary without a change separates two adjacent
        # nodes of the same nonterminal)...
        assert (s.boundaries[changes] == 1).all()
        # ...and boundaries nest: a span that ends at depth d ends at every deeper depth too.
        assert (s.boundaries[1:] >= s.boundaries[:-1]).all()
        spans = s.spans()
        assert spans[0] == (0, 0, len(s))
        assert len(spans) == s.boundaries.sum()


def test_log_probability_is_the_sum_over_the_tree(cfg3b_batch):
    # cfg3b: every rule has probability 1/2 except f -> c b a and the three preterminal rules (probability 1).
    for s in list(cfg3b_batch)[:40]:
        nodes = s.spans()
        halves = sum(1 for x, _, _ in nodes if x not in (15, 16, 17, 18))  # f, a, b, c
        assert s.log_probability == pytest.approx(halves * np.log(0.5), abs=1e-9)


def test_indexing_and_empty_batch(cfg3b):
    batch = sample_sentences(cfg3b, 3, np.random.default_rng(0))
    assert np.array_equal(batch[-1].tokens, batch[2].tokens)
    with pytest.raises(IndexError):
        batch[3]
    empty = sample_sentences(cfg3b, 0, np.random.default_rng(0))
    assert len(empty) == 0 and empty.ancestors.shape == (7, 0)
    with pytest.raises(GrammarError, match="count=-1"):
        sample_sentences(cfg3b, -1, np.random.default_rng(0))
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        sample_sentences(cfg3b, 1, 0)


def test_recursion_guard_names_the_limit():
    exploding = parse_grammar("s -> s s [0.9]\ns -> x [0.1]\nx -> 'a' [1]\n", name="exploding")
    with pytest.raises(SentenceTooLongError, match=r"max_length=500 tokens; the grammar 'exploding'"):
        sample_sentences(exploding, 50, np.random.default_rng(0), max_length=500)
    deep = parse_grammar("s -> s [0.97]\ns -> x [0.03]\nx -> 'a' [1]\n", name="deep")  # never lengthens
    with pytest.raises(SentenceTooLongError, match=r"deeper than max_depth=20; the grammar 'deep'"):
        sample_sentences(deep, 50, np.random.default_rng(0), max_depth=20)


def test_non_layered_grammar_pads_short_paths_with_minus_one():
    # s -> x s | 'a': the tree is a right comb; token t < n-1 is a 'b' under x at depth t+1.
    g = parse_grammar("s -> x s [0.6]\ns -> 'a' [0.4]\nx -> 'b' [1]\n")
    assert not g.is_layered and g.num_levels == 2
    for s in sample_sentences(g, 50, np.random.default_rng(0)):
        n = len(s)
        assert list(s.tokens) == [1] * (n - 1) + [0]
        assert (s.ancestors[0] == 0).all() and s.boundaries[0, -1] == 1 and s.boundaries[0].sum() == 1
        if n > 1:  # depth 1: x over the first token, s over the rest
            assert list(s.ancestors[1]) == [1] + [0] * (n - 1)
            assert list(s.boundaries[1]) == [1] + [0] * (n - 2) + [1]
        else:  # a lone 'a': the path root -> token is one node long
            assert list(s.ancestors[1]) == [-1] and list(s.boundaries[1]) == [0]
        assert s.log_probability == pytest.approx((n - 1) * np.log(0.6) + np.log(0.4))
