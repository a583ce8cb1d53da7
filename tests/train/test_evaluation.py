import math

import pytest
import torch

from progdistill.tasks.base import Batch
from progdistill.train.evaluation import evaluate_stack, evaluate_tokens


class Fixed(torch.nn.Module):
    """Logits that ignore the input: a stack of M models (M, B, C), or one token model (B, L, C)."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits  # (M, C)

    def forward(self, x, attention_mask=None):
        if attention_mask is None:  # one-label inputs (B, n)
            return self.logits[:, None, :].expand(-1, x.shape[0], -1)
        return self.logits[0].expand(*x.shape, -1)  # token ids (B, L)


def test_stack_evaluation_by_hand_over_several_batches():
    # Model 0 predicts p = [1/4, 3/4] (class 1), model 1 p = [3/4, 1/4] (class 0).
    model = Fixed(torch.tensor([[0.0, math.log(3.0)], [math.log(3.0), 0.0]]))
    batches = [Batch(torch.zeros(3, 2), torch.tensor([1, 1, 0])), Batch(torch.zeros(1, 2), torch.tensor([1]))]
    loss, accuracy = evaluate_stack(model, batches)
    assert loss.tolist() == pytest.approx(
        [(3 * -math.log(0.75) + math.log(4)) / 4, (3 * math.log(4) - math.log(0.75)) / 4]
    )
    assert accuracy.tolist() == [0.75, 0.25]


def test_token_evaluation_counts_supervised_positions_only():
    model = Fixed(torch.tensor([[0.0, math.log(3.0)]]))
    inputs = torch.zeros(2, 3, dtype=torch.long)
    targets = torch.tensor([[1, -100, 0], [-100, -100, 1]])
    loss, accuracy = evaluate_tokens(model, [Batch(inputs, targets, torch.ones(2, 3, dtype=torch.bool))])
    assert loss.tolist() == pytest.approx([(2 * -math.log(0.75) + math.log(4)) / 3])
    assert accuracy.tolist() == pytest.approx([2 / 3])


def test_token_evaluation_reports_position_groups_by_hand():
    # One model predicting p = [1/4, 3/4] everywhere. Batch 1: targets [1, 0, -100]; batch 2: [0, 1, 1].
    # Group "a" holds the positions of targets 1, 0 (batch 1) and 1 (batch 2): loss (2 ln 4/3 + ln 4) / 3,
    # accuracy 2/3. Group "b" holds only the ignored position and the first of batch 2 (target 0): 1 position.
    model = Fixed(torch.tensor([[0.0, math.log(3.0)]]))
    ones = torch.ones(1, 3, dtype=torch.bool)
    a1, a2 = torch.tensor([[True, True, False]]), torch.tensor([[False, False, True]])
    b1, b2 = torch.tensor([[False, False, True]]), torch.tensor([[True, False, False]])
    batches = [
        Batch(torch.zeros(1, 3, dtype=torch.long), torch.tensor([[1, 0, -100]]), ones, {"a": a1, "b": b1}),
        Batch(torch.zeros(1, 3, dtype=torch.long), torch.tensor([[0, 1, 1]]), ones, {"a": a2, "b": b2}),
    ]
    groups: dict[str, float] = {}
    loss, accuracy = evaluate_tokens(model, batches, groups)
    assert groups["eval_a_loss"] == pytest.approx((2 * math.log(4 / 3) + math.log(4)) / 3)
    assert groups["eval_a_accuracy"] == pytest.approx(2 / 3)
    assert groups["eval_b_loss"] == pytest.approx(math.log(4))
    assert groups["eval_b_accuracy"] == 0.0
    assert set(groups) == {"eval_a_loss", "eval_a_accuracy", "eval_b_loss", "eval_b_accuracy"}
    assert float(loss[0]) == pytest.approx((3 * math.log(4 / 3) + 2 * math.log(4)) / 5)
    # Without a dict (or without groups) nothing else changes.
    assert evaluate_tokens(model, batches) == (loss, accuracy)
    empty: dict[str, float] = {}
    evaluate_tokens(model, [Batch(b.inputs, b.targets, b.attention_mask) for b in batches], empty)
    assert empty == {}
