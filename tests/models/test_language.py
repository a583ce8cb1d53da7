"""MaskedLM / CausalLM keep the Hugging Face model in .backbone; checkpoints that use the "bert." prefix load."""

import pytest
import torch

from progdistill.experiment import build_model
from progdistill.models.language import BertMLMConfig, CausalLM, GPT2LMConfig, LanguageModel, MaskedLM
from progdistill.models.parity_transformer import ATTENTION, TransformerConfig
from progdistill.recipes.presets import get_preset

transformers = pytest.importorskip("transformers")

SMALL = [
    BertMLMConfig(n_layer=1, n_head=2, head_dim=4),
    GPT2LMConfig(n_layer=1, n_head=2, head_dim=4),
    TransformerConfig(n_layer=1, n_head=2, head_dim=4),
]


def hf_model(model):
    """The Hugging Face model inside one of our transformers."""
    return model.gpt2 if hasattr(model, "gpt2") else model.backbone


@pytest.mark.parametrize(
    "config", [BertMLMConfig(n_layer=1, n_head=2, head_dim=4), GPT2LMConfig(n_layer=1, n_head=2, head_dim=4)]
)
def test_a_checkpoint_with_the_bert_prefix_loads_into_backbone(config):
    model = config.build(8, 10, [torch.Generator().manual_seed(0)])
    state = model.state_dict()
    assert all(k.startswith("backbone.") for k in state)
    old = {"bert." + k[len("backbone.") :]: v.clone() + 1 for k, v in state.items()}  # early trajectories' keys
    fresh = config.build(8, 10, [torch.Generator().manual_seed(1)])
    fresh.load_state_dict(old)  # strict: every key found under .backbone
    assert all(torch.equal(fresh.state_dict()[k], state[k] + 1) for k in state)
    ids = torch.randint(0, 10, (2, 5))
    assert fresh(ids).shape == (2, 5, 10)


def test_the_causal_and_the_masked_model_share_a_base_not_a_lineage():
    assert issubclass(MaskedLM, LanguageModel) and issubclass(CausalLM, LanguageModel)
    assert not issubclass(CausalLM, MaskedLM) and not issubclass(MaskedLM, CausalLM)


@pytest.mark.parametrize("config", SMALL, ids=lambda c: c.kind)
def test_the_attention_is_sdpa_even_where_transformers_would_default_to_eager(config, monkeypatch):
    # eager and SDPA round differently: a change of transformers' default must not change our numbers silently.
    assert ATTENTION == "sdpa"
    pretrained = transformers.PreTrainedModel
    if not hasattr(pretrained, "get_correct_attn_implementation"):
        pytest.skip("this transformers resolves its default attention elsewhere")
    monkeypatch.setattr(
        pretrained, "get_correct_attn_implementation", lambda self, requested, is_init_check=False: requested or "eager"
    )
    default = transformers.GPT2Model(transformers.GPT2Config(n_embd=8, n_layer=1, n_head=2))
    assert default.config._attn_implementation == "eager"  # the simulated default
    model = config.build(8, 2, [torch.Generator().manual_seed(0)])
    assert hf_model(model).config._attn_implementation == "sdpa"


@pytest.mark.parametrize("name", ["parity-transformer", "pcfg-mlm", "pcfg-lm", "induction-lm"])
def test_every_transformer_preset_trains_with_sdpa(name):
    config = get_preset(name)
    for train in (config.teacher, config.student):
        model = build_model(config.task, train.model, [train.seed], "teacher-init")
        assert hf_model(model).config._attn_implementation == "sdpa"


@pytest.mark.parametrize("config", SMALL[:2], ids=lambda c: c.kind)
def test_eager_and_sdpa_compute_the_same_logits_up_to_rounding(config):
    model = config.build(12, 10, [torch.Generator().manual_seed(0)])
    ids = torch.randint(1, 10, (3, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[0, 8:] = False  # padding at the end of one row
    sdpa = model(ids, mask)
    model.backbone.set_attn_implementation("eager")
    eager = model(ids, mask)
    assert model.backbone.config._attn_implementation == "eager"
    keep = mask[..., None].expand_as(sdpa)  # padded positions' outputs are not used
    torch.testing.assert_close(eager[keep], sdpa[keep], rtol=1e-5, atol=1e-5)
