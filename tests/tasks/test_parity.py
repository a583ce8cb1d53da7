import itertools

import pytest
import torch

from progdistill.core.config import ConfigError
from progdistill.tasks.parity import ParityTask


def test_labels_are_parity_of_support():
    task = ParityTask(n=4, k=3)
    for bits in itertools.product([-1.0, 1.0], repeat=4):
        x = torch.tensor(bits)
        expected = 1 if bits[0] * bits[1] * bits[2] > 0 else 0
        assert task.labels(x).item() == expected


def test_support_first_k_or_seeded():
    assert ParityTask(n=10, k=3).support == (0, 1, 2)
    seeded = ParityTask(n=50, k=5, support_seed=7).support
    assert seeded == ParityTask(n=50, k=5, support_seed=7).support
    assert len(set(seeded)) == 5 and all(0 <= i < 50 for i in seeded)
    assert seeded != ParityTask(n=50, k=5, support_seed=8).support


def test_labels_follow_seeded_support():
    task = ParityTask(n=20, k=3, support_seed=1)
    x, y = task.sample(500, torch.Generator().manual_seed(0))
    assert torch.equal(y, (x[:, list(task.support)].prod(1) > 0).long())


def test_sampling_is_deterministic_and_balanced():
    task = ParityTask(n=30, k=4)
    a = task.sample(2000, torch.Generator().manual_seed(3))
    b = task.sample(2000, torch.Generator().manual_seed(3))
    c = task.sample(2000, torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert set(a[0].unique().tolist()) == {-1.0, 1.0}
    assert 0.45 < a[1].float().mean().item() < 0.55


def test_eval_set_fixed_by_its_seed():
    task = ParityTask(n=10, k=2, eval_size=128)
    x, y = task.eval_set()
    torch.randint(2, (1000,))  # the global generator moving on changes nothing
    assert torch.equal(ParityTask(n=10, k=2, eval_size=128).eval_set()[0], x) and x.shape == (128, 10)
    assert torch.equal(y, task.labels(x))
    assert not torch.equal(ParityTask(n=10, k=2, eval_size=128, eval_seed=1).eval_set()[0], x)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"n": 5, "k": 0}, "task.k"),
        ({"n": 5, "k": 6}, "task.k"),
        ({"n": 0, "k": 1}, "task.n"),
        ({"eval_size": 0}, "task.eval_size"),
        ({"support_seed": -1}, "task.support_seed"),
    ],
)
def test_bad_task_values_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        ParityTask(**kwargs)
