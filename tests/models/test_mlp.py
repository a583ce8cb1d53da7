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
