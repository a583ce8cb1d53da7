import pytest
import torch

from progdistill.core.seeding import generator
from progdistill.probes.nonterminal import nonterminal_probe
from progdistill.tasks.pcfg.task import GrammarSpec, PCFGMaskedLMTask

TASK = PCFGMaskedLMTask(grammar=GrammarSpec(levels=4, seed=0), eval_size=32, max_length=64)


class _Oracle(torch.nn.Module):
    """Hidden state = one-hot of the level-1 ancestor, looked up from a planted table (and noise elsewhere)."""

    def __init__(self, sentences, vocab):
        super().__init__()
        self.lookup = {tuple(s.tokens.tolist()): s.ancestors[1] for s in sentences}
        self.vocab = vocab

    def hidden_states(self, ids, attention_mask=None):
        out = torch.zeros(*ids.shape, 8)
        for i, row in enumerate(ids):
            tokens = row[(row < len(self.vocab.terminals))]
            anc = self.lookup[tuple(tokens.tolist())]
            out[i, 1 : len(anc) + 1, :] = torch.nn.functional.one_hot(torch.from_numpy(anc).long(), 8).float()
        return out


def test_nonterminal_probe_reads_a_planted_representation():
    train = TASK.sample_sentences(32, generator(0, "train"))
    test = TASK.sample_sentences(16, generator(0, "test"))
    oracle = _Oracle(list(train) + list(test), TASK.vocabulary)
    accuracy = nonterminal_probe(oracle, train, test, TASK.vocabulary, [1])
    assert accuracy[1] == 1.0
    with pytest.raises(ValueError, match="level 9"):
        nonterminal_probe(oracle, train, test, TASK.vocabulary, [9])
