"""MaskedLM / CausalLM keep the Hugging Face model in .backbone; checkpoints that use the "bert." prefix load."""

import pytest
import torch

from progdistill.models.language import BertMLMConfig, CausalLM, GPT2LMConfig, LanguageModel, MaskedLM

pytest.importorskip("transformers")


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
