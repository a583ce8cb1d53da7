import pytest
import torch

from progdistill.core.seeding import generator
from progdistill.probes.generation import generation_acceptance, grammar_kl
from progdistill.tasks.pcfg.prefix import next_token_distributions, viable_prefix_length
from progdistill.tasks.pcfg.task import GrammarSpec, PCFGNextTokenTask

TASK = PCFGNextTokenTask(grammar=GrammarSpec(levels=4, seed=0), eval_size=32, max_length=64)


class _Replay(torch.nn.Module):
    """A planted causal LM whose samples spell out fixed sentences (row i: sentence i mod len), then EOS."""

    def __init__(self, sentences, eos):
        super().__init__()
        self.sentences, self.eos = sentences, eos
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def sample(self, prompt, allowed, stop_id, max_new_tokens, generator):
        return [(self.sentences[i % len(self.sentences)] + [self.eos])[:max_new_tokens] for i in range(len(prompt))]


def test_generation_acceptance_of_planted_models():
    vocab = TASK.vocabulary
    good = [TASK.sample_sentences(1, generator(1, "d"))[0].tokens.tolist()]  # every row spells this sentence
    result = generation_acceptance(_Replay(good, vocab.eos), TASK, count=10)
    assert result == {"acceptance": 1.0, "finished": 1.0, "mean_length": len(good[0]) + 1, "grammatical_prefix": 1.0}
    bad = [[0] * 7]  # "aaaaaaa" is not a sentence of this grammar
    result = generation_acceptance(_Replay(bad, vocab.eos), TASK, count=4)
    assert result["acceptance"] == 0.0
    prefix = viable_prefix_length(TASK.load_grammar(), [0] * 7 + [vocab.eos], vocab.eos)
    assert prefix < 8 and result["grammatical_prefix"] == pytest.approx(prefix / 8)


class _Exact(torch.nn.Module):
    """A planted causal LM whose next-token distribution is the grammar's exact one (its logits are log g)."""

    def __init__(self, task):
        super().__init__()
        self.task = task
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, ids, attention_mask=None):
        vocab = self.task.vocabulary
        out = torch.full((*ids.shape, vocab.size), -1e4)
        grammar = self.task.load_grammar()
        for i, row in enumerate(ids.tolist()):
            n = row.index(vocab.eos) - 1
            g = torch.from_numpy(next_token_distributions(grammar, row[1 : n + 1])).float()
            out[i, : n + 1, : len(vocab.terminals)] = g[:, :-1].clamp(min=1e-30).log()
            out[i, : n + 1, vocab.eos] = g[:, -1].clamp(min=1e-30).log()
        return out


def test_grammar_kl_is_zero_for_the_grammar_itself_and_positive_for_a_uniform_model():
    exact = _Exact(TASK)
    assert grammar_kl(exact, TASK, count=4) == pytest.approx(0.0, abs=1e-5)
    uniform = _Exact(TASK)
    uniform.forward = lambda ids, attention_mask=None: torch.zeros(*ids.shape, TASK.vocabulary.size)
    assert grammar_kl(uniform, TASK, count=4) > 0.1
