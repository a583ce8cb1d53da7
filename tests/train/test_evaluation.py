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
