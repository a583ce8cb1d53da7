import torch

from progdistill.distill.losses import IGNORE_INDEX
from progdistill.tasks.base import Batch, TaskBase


def _sequence_batch():
    inputs = torch.arange(12).reshape(3, 4)
    targets = torch.tensor([[5, IGNORE_INDEX, IGNORE_INDEX, 7], [IGNORE_INDEX] * 4, [1, 2, 3, IGNORE_INDEX]])
    mask = torch.tensor([[True] * 4, [True, True, False, False], [True, True, True, False]])
    return Batch(inputs, targets, mask)


def test_ignore_index_is_pytorchs_default():
    assert IGNORE_INDEX == -100 == torch.nn.CrossEntropyLoss().ignore_index


def test_rows_keep_inputs_targets_and_mask_aligned():
    batch = _sequence_batch()
    sub = batch.rows(torch.tensor([2, 0]))
    assert torch.equal(sub.inputs, batch.inputs[[2, 0]]) and torch.equal(sub.targets, batch.targets[[2, 0]])
    assert sub.attention_mask is not None and torch.equal(sub.attention_mask, batch.attention_mask[[2, 0]])
    assert batch.rows(slice(1, 2)).inputs.shape == (1, 4)
    flat = Batch(torch.zeros(5, 8), torch.tensor([0, 1, 1, 0, 1]))
    assert flat.rows(slice(0, 2)).attention_mask is None and flat.rows(slice(0, 2)).targets.tolist() == [0, 1]


def test_num_supervised_counts_targets_other_than_minus_100():
    assert _sequence_batch().num_supervised == 5
    assert _sequence_batch().rows(slice(1, 2)).num_supervised == 0
    assert Batch(torch.zeros(4, 3), torch.tensor([0, 1, 1, 0])).num_supervised == 4


def test_with_targets_replaces_only_the_targets():
    batch = _sequence_batch()
    new = torch.full((3, 4), IGNORE_INDEX)
    other = batch.with_targets(new)
    assert other.targets is new and other.inputs is batch.inputs and other.attention_mask is batch.attention_mask
    assert other.num_supervised == 0 and batch.num_supervised == 5  # the batch is frozen: the original is kept


def test_model_inputs_carry_the_mask_only_when_there_is_one():
    batch = _sequence_batch()
    inputs, mask = batch.model_inputs
    assert inputs is batch.inputs and mask is batch.attention_mask
    flat = Batch(torch.zeros(2, 8), torch.tensor([0, 1]))
    assert len(flat.model_inputs) == 1 and flat.model_inputs[0] is flat.inputs


def test_to_moves_every_tensor():
    moved = _sequence_batch().to("meta")
    assert moved.inputs.is_meta and moved.targets.is_meta and moved.attention_mask.is_meta
    assert Batch(torch.zeros(2, 3), torch.zeros(2)).to("meta").attention_mask is None


def test_task_base_defaults(tmp_path):
    task = TaskBase()
    assert task.per_position_targets is False and task.generative is False
    assert task.probes == () and task.end_of_run_probes == ()
    assert task.accuracy_label == "eval accuracy"
    assert task.prepare(tmp_path) is task and list(tmp_path.iterdir()) == []  # a pure task writes nothing
    assert task.data_digest() is None and task.positions_needed() is None
