from dataclasses import replace

import pytest
import torch
from conftest import tiny_config
from matplotlib.container import BarContainer, ErrorbarContainer

from progdistill.core.seeding import generator
from progdistill.distill.schedules import CE, OneShot, Progressive
from progdistill.probes import nonterminal
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


def _nonterminal_records():
    records = [
        {"model": "teacher", "step": s, "nonterminal_accuracy": {"1": 0.3 + 0.2 * i, "2": 0.2 + 0.1 * i}}
        for i, s in enumerate((0, 100, 200))
    ]
    students = [("ce-seed0", 0.5), ("ce-seed1", 0.7), ("one-shot-seed0", 0.9)]
    records += [{"model": m, "step": 200, "nonterminal_accuracy": {"1": a, "2": a / 2}} for m, a in students]
    return records


def test_plot_nonterminals_draws_a_line_per_level_and_bars_per_schedule(monkeypatch, tmp_path):
    figures = []

    def keep(fig, path):
        figures.append(fig)
        fig.savefig(path)

    monkeypatch.setattr(nonterminal, "save_figure", keep)
    config = replace(tiny_config(), schedules=(CE(), OneShot(), Progressive()))  # progressive was not probed
    nonterminal.plot_nonterminals(_nonterminal_records(), config, tmp_path / "nonterminals.png")
    assert (tmp_path / "nonterminals.png").read_bytes()[:4] == b"\x89PNG"
    (fig,) = figures
    left, right = fig.axes
    assert [line.get_label() for line in left.get_lines()] == ["level 1", "level 2"]
    assert list(left.get_lines()[0].get_ydata()) == pytest.approx([0.3, 0.5, 0.7])
    bars = {c.get_label(): [p.get_height() for p in c.patches] for c in right.containers if isinstance(c, BarContainer)}
    errorbars = [c for c in right.containers if isinstance(c, ErrorbarContainer)]
    assert len(errorbars) == 1  # the seed std of ce; one-shot has one seed, so no error bar
    assert bars == {"ce": pytest.approx([0.6, 0.3]), "one-shot": pytest.approx([0.9, 0.45])}  # mean over seeds
    assert [t.get_text() for t in right.get_xticklabels()] == ["level 1", "level 2"]
