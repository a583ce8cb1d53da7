import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from progdistill.core.config import ConfigError
from progdistill.tasks.algorithmic import ModularAdditionTask, PointerChasingTask


def decode_pairs(task: ModularAdditionTask, inputs: torch.Tensor) -> torch.Tensor:
    """Pair indices a * p + b read back from one-hot inputs (B, 2p)."""
    assert torch.equal(inputs.sum(1), torch.full((len(inputs),), 2.0))
    a = inputs[:, : task.p].argmax(1)
    b = inputs[:, task.p :].argmax(1)
    return a * task.p + b


def test_modular_addition_encodes_a_pair_by_hand():
    task = ModularAdditionTask(p=5, train_fraction=0.4)
    batch = task.encode(torch.tensor([3 * 5 + 4, 0, 2 * 5 + 3]))  # (3, 4), (0, 0), (2, 3)
    expected = torch.zeros(3, 10)
    expected[0, 3] = expected[0, 5 + 4] = 1.0
    expected[1, 0] = expected[1, 5] = 1.0
    expected[2, 2] = expected[2, 5 + 3] = 1.0
    assert torch.equal(batch.inputs, expected)
    assert batch.targets.tolist() == [2, 0, 0]  # 7 mod 5, 0, 5 mod 5
    assert (task.input_size, task.num_classes) == (10, 5)


def test_modular_addition_split_is_disjoint_complete_and_seeded():
    task = ModularAdditionTask(p=7, train_fraction=0.3, split_seed=4)
    train, held_out = task.split()
    assert len(train) == round(0.3 * 49) == 15 and len(held_out) == 34
    assert set(train.tolist()).isdisjoint(held_out.tolist())
    assert sorted(train.tolist() + held_out.tolist()) == list(range(49))
    again = ModularAdditionTask(p=7, train_fraction=0.3, split_seed=4).split()
    assert torch.equal(again[0], train) and torch.equal(again[1], held_out)
    assert not torch.equal(ModularAdditionTask(p=7, train_fraction=0.3, split_seed=5).split()[0], train)


def test_modular_addition_trains_on_its_split_and_evaluates_on_the_rest():
    task = ModularAdditionTask(p=7, train_fraction=0.5, split_seed=1)
    train, held_out = task.split()
    batch = task.sample_batch(2000, torch.Generator().manual_seed(0))
    drawn = decode_pairs(task, batch.inputs)
    assert set(drawn.tolist()) == set(train.tolist())  # 2000 draws reach each of the 24 training pairs
    assert torch.equal(batch.targets, (drawn // 7 + drawn % 7) % 7)
    (evaluation,) = task.eval_batches()
    assert decode_pairs(task, evaluation.inputs).tolist() == held_out.tolist()  # each held-out pair once
    (seen,) = task.train_batches()
    assert decode_pairs(task, seen.inputs).tolist() == train.tolist()


def test_modular_addition_batches_follow_the_generator():
    task = ModularAdditionTask(p=11, train_fraction=0.5)
    a = task.sample_batch(64, torch.Generator().manual_seed(3))
    b = task.sample_batch(64, torch.Generator().manual_seed(3))
    c = task.sample_batch(64, torch.Generator().manual_seed(4))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.inputs, c.inputs)
    torch.randint(2, (1000,))  # the global generator moving on changes nothing
    fresh = ModularAdditionTask(p=11, train_fraction=0.5)
    assert torch.equal(task.eval_batches()[0].inputs, fresh.eval_batches()[0].inputs)


def test_pointer_chase_resolved_by_hand():
    # f(0) = 2, f(1) = 0, f(2) = 3, f(3) = 1: from 0 the pointer visits 2, 3, 1, 0, 2, ...
    maps = torch.tensor([[2, 0, 3, 1]] * 5)
    starts = torch.tensor([0, 0, 0, 0, 3])
    visits = {1: [2], 2: [3], 3: [1], 4: [0], 5: [2]}
    for k, (first,) in visits.items():
        assert PointerChasingTask(m=4, k=k).chase(maps[:1], starts[:1]).tolist() == [first]
    # a map that is not a permutation: f = (1, 1, 3, 3); from 0 one hop reaches 1, and 1 maps to itself
    lumpy = torch.tensor([[1, 1, 3, 3], [1, 1, 3, 3]])
    assert PointerChasingTask(m=4, k=3).chase(lumpy, torch.tensor([0, 2])).tolist() == [1, 3]
    batch = PointerChasingTask(m=4, k=2).encode(maps[:1], torch.tensor([3]))
    expected = torch.zeros(1, 20)
    expected[0, [0 * 4 + 2, 1 * 4 + 0, 2 * 4 + 3, 3 * 4 + 1, 16 + 3]] = 1.0  # rows of f one-hot, then s
    assert torch.equal(batch.inputs, expected)
    assert batch.targets.tolist() == [0]  # f(f(3)) = f(1) = 0


@settings(max_examples=30, deadline=None)
@given(
    m=st.integers(2, 6),
    k=st.integers(1, 5),
    maps=st.sampled_from(["permutation", "function"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_pointer_chase_labels_follow_the_encoded_map(m, k, maps, seed):
    task = PointerChasingTask(m=m, k=k, maps=maps, eval_size=8)
    batch = task.sample_batch(16, torch.Generator().manual_seed(seed))
    assert batch.inputs.shape == (16, m * m + m) and task.input_size == m * m + m
    for x, y in zip(batch.inputs, batch.targets):
        rows = x[: m * m].view(m, m)
        assert torch.equal(rows.sum(1), torch.ones(m))  # each row of the map is one-hot
        f = rows.argmax(1).tolist()
        if maps == "permutation":
            assert sorted(f) == list(range(m))
        node = int(x[m * m :].argmax())
        for _ in range(k):
            node = f[node]
        assert int(y) == node


def test_pointer_chasing_is_deterministic_and_its_eval_set_fixed():
    task = PointerChasingTask(m=5, k=3, eval_size=100)
    a = task.sample_batch(50, torch.Generator().manual_seed(1))
    b = task.sample_batch(50, torch.Generator().manual_seed(1))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    (ev,) = task.eval_batches()
    assert torch.equal(ev.inputs, PointerChasingTask(m=5, k=3, eval_size=100).eval_batches()[0].inputs)
    assert not torch.equal(ev.inputs, PointerChasingTask(m=5, k=3, eval_size=100, eval_seed=1).eval_batches()[0].inputs)
    for maps in ("permutation", "function"):
        labels = PointerChasingTask(m=5, k=3, maps=maps, eval_size=5000).eval_batches()[0].targets
        assert labels.bincount(minlength=5).min() > 850  # f^k(s) uniform on [m]: ~1000 each


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"p": 1}, "task.p"),
        ({"p": True}, "task.p"),
        ({"train_fraction": 0.0}, "task.train_fraction"),
        ({"train_fraction": 1.0}, "task.train_fraction"),
        ({"train_fraction": 1.5}, "task.train_fraction"),
        ({"p": 3, "train_fraction": 0.01}, "task.train_fraction"),  # round(0.09) = 0 training pairs
        ({"split_seed": -1}, "task.split_seed"),
    ],
)
def test_bad_modular_addition_values_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        ModularAdditionTask(**kwargs)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"m": 1}, "task.m"),
        ({"k": 0}, "task.k"),
        ({"maps": "graph"}, "task.maps"),
        ({"eval_size": 0}, "task.eval_size"),
        ({"eval_seed": -2}, "task.eval_seed"),
    ],
)
def test_bad_pointer_chasing_values_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        PointerChasingTask(**kwargs)
