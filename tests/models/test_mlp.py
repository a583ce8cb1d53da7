import pytest
import torch

from progdistill.core.seeding import generator
from progdistill.core.settings import OptimizerConfig
from progdistill.models.mlp import MLPConfig
from progdistill.train.optim import make_optimizer


def test_shapes_and_default_one_hidden_layer():
    model = MLPConfig(width=7).build(5, 2, [torch.Generator().manual_seed(0)])
    assert [tuple(w.shape) for w in model.weights] == [(1, 5, 7), (1, 7, 2)]
    assert model(torch.randn(3, 5)).shape == (1, 3, 2)
    deep = MLPConfig(width=4, depth=3).build(5, 2, [torch.Generator().manual_seed(0)] * 2)
    assert len(deep.weights) == 4 and deep(torch.randn(2, 3, 5)).shape == (2, 3, 2)


def test_stack_equals_separate_models_forward_and_training():
    """Stacking is only a speed-up: model m of a stack follows the same trajectory as a lone model."""
    cfg = MLPConfig(width=16)
    seeds = [3, 4, 5]
    stack = cfg.build(6, 2, [generator(s, "init") for s in seeds])
    singles = [cfg.build(6, 2, [generator(s, "init")]) for s in seeds]
    for m, single in enumerate(singles):
        for ws, w1 in zip(stack.weights, single.weights):
            assert torch.equal(ws[m], w1[0])
    opt_s, _ = make_optimizer(stack.parameters(), OptimizerConfig(name="adam", lr=0.01), 10)
    opts = [make_optimizer(s.parameters(), OptimizerConfig(name="adam", lr=0.01), 10)[0] for s in singles]
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        x = torch.randn(3, 8, 6, generator=gen)
        y = torch.randint(0, 2, (3, 8), generator=gen)
        loss = torch.nn.functional.cross_entropy(stack(x).reshape(-1, 2), y.reshape(-1), reduction="sum") / 8
        opt_s.zero_grad()
        loss.backward()
        opt_s.step()
        for m, (single, opt) in enumerate(zip(singles, opts)):
            l1 = torch.nn.functional.cross_entropy(single(x[m])[0], y[m])
            opt.zero_grad()
            l1.backward()
            opt.step()
    for m, single in enumerate(singles):
        assert torch.allclose(stack(x)[m], single(x[m])[0], atol=1e-5)


def test_init_matches_linear_default_range():
    model = MLPConfig(width=1000).build(50, 2, [torch.Generator().manual_seed(0)])
    bound = 1 / 50**0.5
    assert model.weights[0].abs().max() <= bound and model.weights[0].abs().max() > 0.95 * bound


def test_hand_written_sgd_step_equals_autograd_sgd():
    """MLP.sgd_step (gradients by hand, updates in place) is the update torch.optim.SGD makes from autograd's
    gradients of sum_m mean_b CE(target, softmax(logits)), for shared and per-model inputs, depth 1 and 2, a
    stack of two and a stack of one (which takes the 2-D addmm path)."""
    for depth, shared, M in ((1, True, 2), (1, False, 2), (2, False, 2), (1, True, 1), (2, False, 1)):
        cfg = MLPConfig(width=12, depth=depth)
        hand = cfg.build(6, 3, [generator(s, "init") for s in range(M)])
        auto = cfg.build(6, 3, [generator(s, "init") for s in range(M)])
        opt = torch.optim.SGD(auto.parameters(), lr=0.3)
        gen = torch.Generator().manual_seed(depth)
        for _ in range(4):
            x = torch.randn(*(() if shared else (M,)), 8, 6, generator=gen)
            target = torch.softmax(torch.randn(M, 8, 3, generator=gen), dim=-1)  # soft targets (distillation)
            loss_hand = hand.sgd_step(x, target, lr=0.3)
            per_example = -(target * torch.log_softmax(auto(x), dim=-1)).sum(-1)  # (M, B)
            opt.zero_grad()
            per_example.mean(dim=1).sum().backward()
            opt.step()
            assert torch.allclose(loss_hand, per_example.detach(), atol=1e-6)
        for p_hand, p_auto in zip(hand.parameters(), auto.parameters()):
            assert torch.allclose(p_hand, p_auto, atol=1e-6), (depth, shared, M)


def _autograd_sgd_steps(model, xs, targets, lrs):
    """The reference: autograd's gradients of sum_m mean_b CE(target, softmax(logits)) and torch.optim.SGD."""
    opt = torch.optim.SGD(model.parameters(), lr=lrs[0])
    losses = []
    for x, target, lr in zip(xs, targets, lrs):
        opt.param_groups[0]["lr"] = lr
        per_example = -(target * torch.log_softmax(model(x), dim=-1)).sum(-1)  # (M, B)
        opt.zero_grad()
        per_example.mean(dim=1).sum().backward()
        opt.step()
        losses.append(per_example.detach().mean(dim=1))
    return torch.stack(losses)  # (L, M)


@pytest.mark.parametrize(("M", "depth", "shared", "classes"), [(1, 1, True, 2), (1, 2, True, 3), (3, 1, False, 2)])
def test_a_block_of_hand_written_steps_equals_autograd_sgd(M, depth, shared, classes):
    """MLP.sgd_steps (a block of steps with the last layer held transposed) follows autograd + torch.optim.SGD
    within float32 rounding over 50 steps at changing rates, the teacher's stack of one included, and writes the
    last layer back into the parameters."""
    cfg = MLPConfig(width=40, depth=depth)
    hand = cfg.build(10, classes, [generator(s, "init") for s in range(M)])
    auto = cfg.build(10, classes, [generator(s, "init") for s in range(M)])
    gen = torch.Generator().manual_seed(M + depth)
    L, B = 50, 16
    xs = torch.randn(L, *(() if shared else (M,)), B, 10, generator=gen)
    targets = torch.nn.functional.one_hot(torch.randint(classes, (L, M, B), generator=gen), classes).float()
    lrs = [0.2 * (1 - i / L) for i in range(L)]
    losses = hand.sgd_steps(xs, targets, lrs)
    expected = _autograd_sgd_steps(auto, xs, targets, lrs)
    assert losses.shape == (L, M)
    torch.testing.assert_close(losses, expected, rtol=1e-5, atol=1e-5)
    initial = cfg.build(10, classes, [generator(s, "init") for s in range(M)])
    for p_hand, p_auto, p_init in zip(hand.parameters(), auto.parameters(), initial.parameters()):
        assert not torch.equal(p_hand, p_init)  # every parameter trained, the last layer's written back
        torch.testing.assert_close(p_hand, p_auto, rtol=1e-4, atol=1e-5)


def test_a_block_of_steps_is_step_by_step_bit_for_bit():
    """sgd_steps is sgd_step L times: the same arithmetic, the same bits (a block only saves the set-up)."""
    cfg = MLPConfig(width=30)
    block = cfg.build(8, 2, [generator(0, "init")])
    single = cfg.build(8, 2, [generator(0, "init")])
    gen = torch.Generator().manual_seed(0)
    xs = torch.randn(20, 12, 8, generator=gen)
    targets = torch.softmax(torch.randn(20, 1, 12, 2, generator=gen), dim=-1)
    losses = block.sgd_steps(xs, targets, [0.1] * 20)
    step_losses = torch.stack([single.sgd_step(x, t, 0.1).mean(dim=1) for x, t in zip(xs, targets)])
    assert torch.equal(losses, step_losses)
    assert all(torch.equal(a, b) for a, b in zip(block.parameters(), single.parameters()))
    assert all(p.is_contiguous() for p in block.parameters())  # the transposed copy was written back in place
