import itertools
from dataclasses import replace

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from progdistill.core.config import ConfigError, to_dict
from progdistill.experiment import ExperimentConfig
from progdistill.probes.monomials import monomial_correlations
from progdistill.recipes.presets import get_preset
from progdistill.tasks.boolean import SparseMajorityTask, StaircaseTask


def cube(n: int) -> torch.Tensor:
    """All 2^n points of {-1, +1}^n, (2^n, n) float32."""
    return torch.tensor(list(itertools.product([-1.0, 1.0], repeat=n)))


def fourier(task) -> dict[tuple[int, ...], float]:
    """The nonzero Fourier coefficients of the +-1 label 2 * class - 1, exactly, by enumerating {-1, +1}^n:
    hat y(T) = 2^-n sum_x y(x) prod_{i in T} x_i."""
    x = cube(task.n)
    y = 2.0 * task.labels(x).double() - 1.0
    coefficients = {}
    for d in range(task.n + 1):
        for t in itertools.combinations(range(task.n), d):
            c = (y * x[:, list(t)].prod(dim=1).double()).mean().item()
            if abs(c) > 1e-12:
                coefficients[t] = c
    return coefficients


# By hand: sign(A + AB + ABC) = A sign(1 + B (1 + C)) for +-1 blocks A, B, C; 1 + B (1 + C) is negative only
# at B = -1, C = 1, so the sign is A (1 - 2 [B = -1][C = 1]) = A (1 - (1 - B)(1 + C) / 2)
# = A / 2 + AB / 2 - AC / 2 + ABC / 2.
def test_staircase_fourier_coefficients_by_hand():
    # x1 + x1x2 + x1x2x3 on n = 4: A = x1, B = x2, C = x3; coordinate 4 is off the support
    assert fourier(StaircaseTask(n=4, k=3)) == {(0,): 0.5, (0, 1): 0.5, (0, 2): -0.5, (0, 1, 2): 0.5}
    # leap 3: x1 + x1x2x3x4 + x1...x7 on n = 8: A = x1, B = x2x3x4, C = x5x6x7
    assert fourier(StaircaseTask(n=8, k=7, leap=3)) == {
        (0,): 0.5,
        (0, 1, 2, 3): 0.5,
        (0, 4, 5, 6): -0.5,
        (0, 1, 2, 3, 4, 5, 6): 0.5,
    }


def test_staircase_fourier_weight_sits_on_its_chain_and_support():
    task = StaircaseTask(n=7, k=5, support_seed=3)
    support = task.support
    coefficients = fourier(task)
    # every monomial with weight lies in the support and holds its first coordinate (x_{s_1} -> -x_{s_1}
    # negates f); the chain x_{s_1}, x_{s_1}x_{s_2}, ... carries 3/8 each: the largest weight, which SGD climbs
    assert all(set(t) <= set(support) and support[0] in t for t in coefficients)
    for d in range(1, 6):
        assert coefficients[support[:d]] == 0.375
    assert max(abs(c) for c in coefficients.values()) == 0.375
    assert sum(c * c for c in coefficients.values()) == pytest.approx(1.0)  # Parseval: y is +-1


def test_staircase_values_and_classes_on_written_inputs():
    task = StaircaseTask(n=6, k=5)  # f = x1 + x1x2 + x1x2x3 + x1..x4 + x1..x5
    x = torch.tensor(
        [
            [1.0, 1, 1, 1, 1, -1],  # 5
            [-1.0, 1, 1, 1, 1, 1],  # -5
            [1.0, -1, 1, 1, 1, 1],  # 1 - 1 - 1 - 1 - 1 = -3
            [1.0, 1, -1, 1, 1, 1],  # 1 + 1 - 1 - 1 - 1 = -1
            [1.0, 1, 1, 1, -1, 1],  # 1 + 1 + 1 + 1 - 1 = 3
        ]
    )
    assert task.staircase(x).tolist() == [5.0, -5.0, -3.0, -1.0, 3.0]
    assert task.labels(x).tolist() == [1, 0, 0, 0, 1]
    leap = StaircaseTask(n=7, k=7, leap=3)  # x1 + x1x2x3x4 + x1..x7
    assert leap.degrees == (1, 4, 7) and leap.terms == ((0,), (0, 1, 2, 3), tuple(range(7)))
    z = torch.tensor([[1.0, -1, 1, 1, 1, 1, 1], [1.0, -1, 1, 1, -1, 1, 1]])
    assert leap.staircase(z).tolist() == [1 - 1 - 1, 1 - 1 + 1]
    assert leap.labels(z).tolist() == [0, 1]


def test_staircase_and_majority_classes_are_exactly_balanced():
    for task in (StaircaseTask(n=5, k=5), StaircaseTask(n=7, k=7, leap=3), SparseMajorityTask(n=6, k=5)):
        assert task.labels(cube(task.n)).double().mean().item() == 0.5


def test_majority_labels_on_written_inputs():
    task = SparseMajorityTask(n=5, k=3)  # support (0, 1, 2)
    x = torch.tensor(
        [
            [1.0, 1, -1, -1, -1],  # 2 of 3 up, the rest down: 1
            [-1.0, -1, 1, 1, 1],  # 0
            [1.0, -1, -1, 1, 1],  # 0
            [-1.0, 1, 1, -1, -1],  # 1
            [1.0, 1, 1, -1, -1],  # 1
        ]
    )
    assert task.labels(x).tolist() == [1, 0, 0, 1, 1]
    seeded = SparseMajorityTask(n=5, k=3, support_seed=1)
    assert seeded.support == (0, 2, 4)  # torch.randperm(5) from seed 1, first 3, sorted
    assert seeded.labels(x).tolist() == [0, 1, 1, 0, 1]  # coordinates 0, 2, 4 of each row


def test_majority_fourier_coefficients_by_hand():
    # Maj3 = (x1 + x2 + x3) / 2 - x1x2x3 / 2; Maj5's degree-1 weight C(4, 2) / 2^4 = 3/8, degree 3 -1/8, degree 5 3/8
    assert fourier(SparseMajorityTask(n=4, k=3)) == {(0,): 0.5, (1,): 0.5, (2,): 0.5, (0, 1, 2): -0.5}
    five = fourier(SparseMajorityTask(n=5, k=5))
    assert {t: c for t, c in five.items() if len(t) == 1} == {(i,): 0.375 for i in range(5)}
    assert all(c == -0.125 for t, c in five.items() if len(t) == 3) and five[tuple(range(5))] == 0.375


@pytest.mark.parametrize(
    "task", [StaircaseTask(n=30, k=5, support_seed=2), StaircaseTask(n=30, k=7, leap=3), SparseMajorityTask(n=30)]
)
def test_sampling_is_seeded_and_eval_set_fixed(task):
    a = task.sample_batch(500, torch.Generator().manual_seed(3))
    b = task.sample_batch(500, torch.Generator().manual_seed(3))
    c = task.sample_batch(500, torch.Generator().manual_seed(4))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.inputs, c.inputs)
    assert a.inputs.shape == (500, 30) and a.inputs.dtype == torch.float32 and a.targets.dtype == torch.int64
    assert set(a.inputs.unique().tolist()) == {-1.0, 1.0} and torch.equal(a.targets, task.labels(a.inputs))
    torch.randint(2, (1000,))  # the global generator moving on changes nothing
    (first,) = task.eval_batches()
    (again,) = replace(task).eval_batches()  # a task built again from the same fields
    assert torch.equal(first.inputs, again.inputs) and first.inputs.shape == (task.eval_size, 30)
    assert torch.equal(first.targets, task.labels(first.inputs))
    (other,) = replace(task, eval_seed=1).eval_batches()
    assert not torch.equal(first.inputs, other.inputs)
    assert replace(task).support == task.support


@pytest.mark.parametrize(
    "cls, kwargs, field, allowed",
    [
        (StaircaseTask, {"n": 4, "k": 5}, "task.k", "1..n"),
        (StaircaseTask, {"k": 5, "leap": 0}, "task.leap", "1..k"),
        (StaircaseTask, {"k": 3, "leap": 4}, "task.leap", "1..k"),
        (StaircaseTask, {"k": 4}, "task.leap", "must be odd"),  # 4 terms: ties
        (StaircaseTask, {"k": 6, "leap": 3}, "task.leap", "must be odd"),  # x1x2x3 + x1..x6: f = 0 on half
        (StaircaseTask, {"k": 5, "support_seed": -1}, "task.support_seed", ">= 0"),
        (SparseMajorityTask, {"n": 4, "k": 5}, "task.k", "1..n"),
        (SparseMajorityTask, {"k": 4}, "task.k", "odd"),
        (SparseMajorityTask, {"eval_size": 0}, "task.eval_size", "positive"),
    ],
)
def test_bad_values_name_the_field(cls, kwargs, field, allowed):
    with pytest.raises(ConfigError, match=f"{field}=.*{allowed}"):
        cls(**kwargs)


def test_configs_round_trip_through_json():
    for task in (StaircaseTask(n=12, k=7, leap=3, support_seed=4), SparseMajorityTask(n=9, k=3)):
        config = ExperimentConfig.from_dict({**to_dict(get_preset("parity-mlp")), "task": to_dict(task)})
        assert config.task == task
    with pytest.raises(ConfigError, match="task.leap"):
        ExperimentConfig.from_dict(
            {**to_dict(get_preset("parity-mlp")), "task": {"type": "staircase", "k": 6, "leap": 3}}
        )


def test_monomial_probe_reads_the_staircase():
    # p(class 1 | x) = (1 + y) / 2 correlates with chi_T by |hat y(T)| / 2: 1/4 on x1, x1x2, x1x3, 0 on x2x3
    task = StaircaseTask(n=6, k=3)
    result = monomial_correlations(lambda x: task.labels(x).float(), task, num_samples=40_000)
    assert result.degree(1).in_support == pytest.approx((0.25, 0.0, 0.0), abs=0.02)
    assert result.degree(2).in_support == pytest.approx((0.25, 0.25, 0.0), abs=0.02)
    assert max(result.degree(1).off_support) < 0.02


@settings(max_examples=40, deadline=None)
@given(
    k=st.integers(1, 9),
    leap=st.integers(1, 4),
    extra=st.integers(0, 6),
    support_seed=st.one_of(st.none(), st.integers(0, 1000)),
    seed=st.integers(0, 2**31 - 1),
)
def test_staircase_label_flips_with_its_first_coordinate_and_ignores_the_rest(k, leap, extra, support_seed, seed):
    assume(leap <= k and (-(-k // leap)) % 2 == 1)
    task = StaircaseTask(n=k + extra, k=k, leap=leap, support_seed=support_seed)
    x = task.sample_inputs(256, torch.Generator().manual_seed(seed))
    f = task.staircase(x)
    assert set(f.abs().unique().tolist()) <= set(range(1, len(task.degrees) + 1, 2))  # odd: never 0
    first = x.clone()
    first[:, task.support[0]] *= -1  # every term holds x_{s_1}: f -> -f, the class flips
    assert torch.equal(task.staircase(first), -f) and torch.equal(task.labels(first), 1 - task.labels(x))
    off = [i for i in range(task.n) if i not in task.support]
    if off:
        other = x.clone()
        other[:, off] *= -1  # coordinates off the support change nothing
        assert torch.equal(task.labels(other), task.labels(x))
