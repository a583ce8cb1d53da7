"""Tests of progdistill.probes.monomials: planted functions give their known correlations; the probe is exact on the
full cube, deterministic, and rejects bad degrees."""

import itertools
import json
import math
from dataclasses import dataclass

import pytest
import torch

from progdistill.models.mlp import MLPConfig
from progdistill.probes.monomials import (
    MonomialCorrelations,
    membership_matrix,
    mlp_class1_probability,
    monomial_correlations,
    monomials,
    off_support_subsets,
)
from progdistill.tasks.parity import ParityTask

N_SAMPLES = 20_000
TOL = 4 / math.sqrt(N_SAMPLES)  # >= 4 std of an estimate: std(chi_T p) = sqrt(E[p^2] - corr^2) <= 1
TASK = ParityTask(n=10, k=4)  # support (0, 1, 2, 3)


def probe(f, task=TASK, **kwargs):
    kwargs.setdefault("num_samples", N_SAMPLES)
    kwargs.setdefault("generator", torch.Generator().manual_seed(0))
    return monomial_correlations(f, task, **kwargs)


def all_values(result):
    return [
        (e.degree, t, c)
        for e in result.degrees
        for t, c in zip(e.in_support_subsets + e.off_support_subsets, e.in_support + e.off_support)
    ]


def assert_same(a, b):
    """Same subsets, same correlations up to float32 rounding (matmul shapes change the summation order;
    batch sums are float32, ~1e-6 here, far below the sampling error)."""
    assert (a.n, a.support, a.num_samples) == (b.n, b.support, b.num_samples)
    for (d1, t1, c1), (d2, t2, c2) in zip(all_values(a), all_values(b), strict=True):
        assert (d1, t1) == (d2, t2) and c1 == pytest.approx(c2, abs=1e-5)


@dataclass(frozen=True)
class FullCubeTask(ParityTask):
    """A parity task whose "samples" are the 2^n points of the cube, so correlations are exact expectations."""

    def sample_inputs(self, count, generator):
        cube = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=self.n)))  # (2^n, n)
        assert count == len(cube)
        return cube


def test_monomials_match_a_brute_force_product():
    n = 7
    x = ParityTask(n=n, k=3).sample_inputs(64, torch.Generator().manual_seed(1))
    subsets = [t for d in range(1, n + 1) for t in itertools.combinations(range(n), d)]
    chi = monomials(x, membership_matrix(subsets, n))  # (64, 127)
    expected = torch.stack([x[:, list(t)].prod(dim=1) for t in subsets], dim=1)
    assert torch.equal(chi, expected)


def test_membership_matrix():
    mask = membership_matrix([(0, 2), (1,), (0, 1, 3)], 4)
    assert mask.tolist() == [[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 0, 1]]


def test_exact_correlations_on_the_full_cube():
    task = FullCubeTask(n=6, k=3, support_seed=7)
    s = task.support
    # p = 0.5 + 0.1 chi_{s0} - 0.2 chi_{s0, s1} + 0.05 chi_{s0, s2, 4th off-support coordinate}
    off = next(i for i in range(6) if i not in s)

    def f(x):
        return 0.5 + 0.1 * x[:, s[0]] - 0.2 * x[:, s[0]] * x[:, s[1]] + 0.05 * x[:, s[0]] * x[:, s[2]] * x[:, off]

    r = monomial_correlations(f, task, num_samples=64, batch_size=64, degrees=[1, 2, 3])
    planted = {(s[0],): 0.1, (s[0], s[1]): 0.2, tuple(sorted((s[0], s[2], off))): 0.05}
    for _, t, c in all_values(r):
        assert c == pytest.approx(planted.get(t, 0.0), abs=1e-6), t


def test_planted_degree_one():
    r = probe(lambda x: 0.5 + 0.1 * x[:, 0])
    d1 = r.degree(1)
    assert d1.in_support_subsets == ((0,), (1,), (2,), (3,))
    assert d1.in_support[0] == pytest.approx(0.1, abs=TOL)
    assert max(d1.in_support[1:]) < TOL
    assert d1.in_support_max == pytest.approx(0.1, abs=TOL)
    assert d1.in_support_mean == pytest.approx(0.1 / 4, abs=TOL)
    for e in r.degrees:
        assert e.off_support_max < TOL
        if e.degree > 1:
            assert e.in_support_max < TOL


def test_planted_degree_two():
    r = probe(lambda x: 0.5 + 0.1 * x[:, 0] * x[:, 1])
    d2 = r.degree(2)
    j = d2.in_support_subsets.index((0, 1))
    assert d2.in_support[j] == pytest.approx(0.1, abs=TOL)
    assert max(c for i, c in enumerate(d2.in_support) if i != j) < TOL
    assert r.degree(1).in_support_max < TOL and r.degree(3).in_support_max < TOL


def test_perfect_parity_predictor():
    task = ParityTask(n=10, k=4, support_seed=3)

    def perfect(x):
        return task.labels(x).float()  # p = (1 + chi_S) / 2

    r = probe(perfect, task, degrees=[1, 2, 3, 4])
    for d in (1, 2, 3):
        assert r.degree(d).in_support_max < TOL
        assert r.degree(d).off_support_max < TOL
    full = r.degree(4)
    assert full.in_support_subsets == (task.support,)
    # p chi_S = (1 + chi_S) / 2 = p, so corr(S) is the sample mean of p, 0.5 up to sampling noise
    assert full.in_support[0] == pytest.approx(0.5, abs=TOL)
    assert full.off_support_max < TOL


def test_default_degrees_and_off_support_counts():
    r = probe(lambda x: 0.5 + 0 * x[:, 0], off_support_per_degree=20)
    assert [e.degree for e in r.degrees] == [1, 2, 3]
    assert [len(e.in_support) for e in r.degrees] == [4, 6, 4]
    # degree 1 has only n - k = 6 off-support subsets: all are taken
    assert [len(e.off_support) for e in r.degrees] == [6, 20, 20]
    assert all(c < TOL for _, _, c in all_values(r))  # a constant has no correlation with any monomial


@pytest.mark.parametrize("support_seed", [None, 11])
@pytest.mark.parametrize("n, k, degree, count", [(10, 4, 2, 30), (10, 4, 3, 100), (40, 6, 5, 50), (8, 8, 3, 5)])
def test_off_support_subsets_are_distinct_non_subsets(support_seed, n, k, degree, count):
    support = set(ParityTask(n=n, k=k, support_seed=support_seed).support)
    subsets = off_support_subsets(n, sorted(support), degree, count, torch.Generator().manual_seed(0))
    available = math.comb(n, degree) - math.comb(k, degree)
    assert len(subsets) == min(count, available)
    assert len(set(subsets)) == len(subsets)
    for t in subsets:
        assert len(t) == degree and list(t) == sorted(t) and all(0 <= i < n for i in t)
        assert not support.issuperset(t)


def test_off_support_subsets_rejection_sampling_branch():
    # C(60, 5) > ENUMERATE_LIMIT, so subsets are rejection-sampled
    subsets = off_support_subsets(60, [0, 1, 2, 3, 4, 5], 5, 200, torch.Generator().manual_seed(0))
    assert len(set(subsets)) == 200
    assert not any(set(t) <= set(range(6)) for t in subsets)
    again = off_support_subsets(60, [0, 1, 2, 3, 4, 5], 5, 200, torch.Generator().manual_seed(0))
    assert subsets == again


def test_determinism():
    def f(x):
        return torch.sigmoid(x[:, 0] + 0.5 * x[:, 1] * x[:, 5])

    a = probe(f, num_samples=5_000)
    b = probe(f, num_samples=5_000)
    assert a == b
    c = probe(f, num_samples=5_000, generator=torch.Generator().manual_seed(1))
    # 100 of the 116 off-support subsets of degree 3 (degree 2 has only 39, all taken whatever the seed)
    assert c.degree(3).off_support_subsets != a.degree(3).off_support_subsets
    assert c.degree(2).off_support_subsets == a.degree(2).off_support_subsets
    assert monomial_correlations(f, TASK, num_samples=5_000) == monomial_correlations(f, TASK, num_samples=5_000)


def test_batches_add_up():
    def f(x):
        return torch.sigmoid(x[:, 0] - x[:, 2] * x[:, 3])

    one = probe(f, num_samples=3_000, batch_size=3_000)
    many = probe(f, num_samples=3_000, batch_size=700)  # the stream of inputs is the same
    assert_same(one, many)


def test_stack_of_models_gives_one_result_per_model():
    planted = [lambda x: 0.5 + 0.1 * x[:, 0], lambda x: 0.5 + 0.2 * x[:, 1] * x[:, 2]]
    stacked = probe(lambda x: torch.stack([f(x) for f in planted]))  # (2, B)
    assert isinstance(stacked, list) and len(stacked) == 2
    for result, f in zip(stacked, planted):
        assert_same(result, probe(f))


def test_mlp_class1_probability():
    gens = [torch.Generator().manual_seed(s) for s in range(3)]
    model = MLPConfig(width=16).build(TASK.n, 2, gens)
    x = TASK.sample_inputs(5, torch.Generator().manual_seed(0))
    p = mlp_class1_probability(model)(x)
    assert p.shape == (3, 5)
    assert torch.allclose(p, torch.softmax(model(x), dim=-1)[..., 1])
    assert torch.equal(mlp_class1_probability(model, 2)(x), p[2])
    results = probe(mlp_class1_probability(model), num_samples=2_000)
    assert len(results) == 3
    assert_same(results[1], probe(mlp_class1_probability(model, 1), num_samples=2_000))
    with pytest.raises(ValueError, match="model_index=3 is invalid: must be in 0..2"):
        mlp_class1_probability(model, 3)


def test_json_round_trip():
    r = probe(lambda x: 0.5 + 0.1 * x[:, 0], num_samples=2_000, off_support_per_degree=5)
    d = json.loads(json.dumps(r.to_dict()))
    assert MonomialCorrelations.from_dict(d) == r
    assert d["degrees"][0]["in_support"][0]["subset"] == [0]
    assert set(d["degrees"][0]) >= {
        "in_support_mean",
        "in_support_max",
        "off_support_mean",
        "off_support_std",
        "off_support_max",
    }
    assert json.loads(json.dumps(r.summary()))["degree1/in_support_max"] == r.degree(1).in_support_max


def test_no_off_support_subsets_when_n_equals_k():
    r = probe(lambda x: 0.5 + 0.1 * x[:, 0], ParityTask(n=4, k=4), num_samples=2_000)
    assert all(e.off_support == () and e.off_support_max is None for e in r.degrees)
    json.dumps(r.to_dict())


@pytest.mark.parametrize(
    "degrees, match",
    [
        ([0], r"degree 0 .* 1\.\.k = 1\.\.4"),
        ([5], r"degree 5 .* 1\.\.k = 1\.\.4"),
        ([1, -1], "degree -1"),
        ([1.0], "degree 1.0"),
        ([True], "degree True"),
        ([], "at least one degree"),
        ([2, 2], "distinct"),
    ],
)
def test_bad_degrees(degrees, match):
    with pytest.raises(ValueError, match=match):
        probe(lambda x: x[:, 0], degrees=degrees)


def test_default_degrees_need_k_at_least_2():
    with pytest.raises(ValueError, match="task.k=1"):
        probe(lambda x: x[:, 0], ParityTask(n=5, k=1))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_samples": 0}, "num_samples=0"),
        ({"batch_size": -1}, "batch_size=-1"),
        ({"off_support_per_degree": -1}, "off_support_per_degree=-1"),
    ],
)
def test_bad_sizes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        probe(lambda x: x[:, 0], **kwargs)


@pytest.mark.parametrize("f", [lambda x: x[:5, 0], lambda x: x, lambda x: x[:, 0].reshape(1, 1, -1)])
def test_bad_output_shape(f):
    with pytest.raises(ValueError, match="predict_proba returned shape"):
        probe(f, num_samples=100)
