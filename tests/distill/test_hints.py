import math
from types import SimpleNamespace

import pytest
import torch

from progdistill.core.config import ConfigError
from progdistill.core.seeding import generator
from progdistill.distill.hints import HintProjections, Hints, hidden_layer
from progdistill.models.mlp import MLPConfig


def test_hidden_layer_resolves_negative_one_and_refuses_others():
    assert hidden_layer([8, 16, 4], -1, "teacher", "f") == 2
    assert hidden_layer([8, 16, 4], 1, "teacher", "f") == 1
    with pytest.raises(ConfigError, match=r"f=3 is invalid: the student has 3 hidden layer\(s\).*0\.\.2 or -1"):
        hidden_layer([8, 16, 4], 3, "student", "f")
    with pytest.raises(ConfigError, match="f=-2 is invalid"):
        hidden_layer([8], -2, "student", "f")
    with pytest.raises(ConfigError, match="f: hint distillation needs a teacher that returns hidden states"):
        hidden_layer([], 0, "teacher", "f")


def test_projection_shapes_and_seeded_initialization():
    proj = HintProjections([3, 7], d_student=4, d_teacher=6)
    assert proj.weight.shape == (2, 4, 6) and proj.bias.shape == (2, 1, 6)
    bound = 1 / math.sqrt(4)
    assert proj.weight.abs().max() <= bound and proj.bias.abs().max() <= bound
    again = HintProjections([7], d_student=4, d_teacher=6)  # model m depends on its own seed only
    assert torch.equal(again.weight[0], proj.weight[1]) and torch.equal(again.bias[0], proj.bias[1])
    gen = generator(3, "hint-projection")
    assert torch.equal(proj.weight[0], torch.empty(4, 6).uniform_(-bound, bound, generator=gen))


def test_hint_loss_is_the_mean_squared_error_of_the_projection():
    proj = HintProjections([0, 1], d_student=2, d_teacher=2)
    with torch.no_grad():
        proj.weight[1] = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
        proj.bias[1] = torch.tensor([[0.5, 0.0]])
    student = torch.tensor([[1.0, 1.0], [2.0, 0.0]])
    teacher = torch.tensor([[1.0, 1.0], [0.0, 0.0]], requires_grad=True)
    # projected: [1+0+0.5, 2-1+0] = [1.5, 1]; [2+0.5, 4+0] = [2.5, 4]
    # squared errors: [0.25, 0] -> 0.125; [6.25, 16] -> 11.125
    loss = proj.loss(1, student, teacher)
    assert loss.shape == (2,) and loss.tolist() == pytest.approx([0.125, 11.125])
    loss.sum().backward()
    assert teacher.grad is None and proj.weight.grad is not None  # the projection learns, the teacher does not
    assert torch.equal(proj.weight.grad[0], torch.zeros(2, 2))  # model 0's projection is untouched


def _mlp(width, depth, models=1):
    return MLPConfig(width=width, depth=depth).build(5, 2, [generator(i, "init") for i in range(models)])


def test_hints_resolve_layers_and_build_one_projection_per_model():
    hints = Hints(_mlp(8, 2, models=3), _mlp(16, 3), [(0, -1), None, (-1, 2)], seeds=[0, 1, 2])
    assert hints.layers == [(0, 2), None, (1, 2)]
    assert hints.projections.weight.shape == (3, 8, 16)
    assert len(list(hints.parameters())) == 2


def test_hints_refuse_a_missing_layer_and_two_widths():
    with pytest.raises(ConfigError, match=r"schedules \(model 1\) layer=3 is invalid: the teacher has 3"):
        Hints(_mlp(8, 1, models=2), _mlp(16, 3), [None, (0, 3)], seeds=[0, 1])
    teacher = SimpleNamespace(hidden_sizes=[4, 6])  # two hint students on layers of two widths
    with pytest.raises(ConfigError, match="one pair of widths"):
        Hints(_mlp(8, 1, models=2), teacher, [(0, 0), (0, 1)], seeds=[0, 1])
    with pytest.raises(ConfigError, match="needs a student that returns hidden states"):
        Hints(SimpleNamespace(), teacher, [(0, 0)], seeds=[0])


def test_replace_swaps_only_the_rows_of_hint_steps():
    student, teacher = _mlp(8, 1, models=2), _mlp(16, 1)
    hints = Hints(student, teacher, [(0, 0), None], seeds=[0, 1])
    x = torch.randn(4, 5, generator=generator(0, "x"))
    _, hidden = student(x, hidden=True)
    per_example = torch.full((2, 4), 9.0)
    specs = [SimpleNamespace(hint_layer=(0, 0)), SimpleNamespace(hint_layer=None)]
    teachers = SimpleNamespace(get=lambda spec: teacher)
    out = hints.replace(per_example, hidden, specs, lambda m: x, teachers)
    expected = hints.projections.loss(0, hidden[0][0], teacher(x, hidden=True)[1][0][0])
    assert torch.allclose(out[0], expected) and torch.equal(out[1], per_example[1])
