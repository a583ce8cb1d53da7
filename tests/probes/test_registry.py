from typing import ClassVar

import pytest

from progdistill.probes import generation, ngram
from progdistill.probes.registry import END_OF_RUN, end_of_run_probes
from progdistill.tasks.base import TaskBase
from progdistill.tasks.parity import ParityTask
from progdistill.tasks.pcfg.task import PCFGMaskedLMTask, PCFGNextTokenTask
from progdistill.tasks.text.task import TextMaskedLMTask


@pytest.mark.parametrize("task", [ParityTask, PCFGMaskedLMTask, PCFGNextTokenTask, TextMaskedLMTask])
def test_every_declared_probe_of_every_task_resolves(task):
    probes = end_of_run_probes(task)
    assert all(name in END_OF_RUN for name in task.end_of_run_probes)
    assert len(probes) == len({p.summary for p in probes})  # each once


def test_the_ngram_and_nonterminal_probes_are_one_run():
    assert [p.run for p in end_of_run_probes(PCFGMaskedLMTask)] == [ngram.run_end_of_run]
    assert end_of_run_probes(PCFGNextTokenTask)[0].run is generation.run_end_of_run
    assert end_of_run_probes(PCFGNextTokenTask)[0].summary == "generation-summary.json"
    assert end_of_run_probes(ParityTask) == []


def test_an_unknown_probe_is_an_error_listing_the_valid_ones():
    class Odd(TaskBase):
        kind: ClassVar[str] = "odd"
        end_of_run_probes: ClassVar[tuple[str, ...]] = ("ngram", "spectral")

    listed = r"task 'odd' declares end-of-run probes \['spectral'\].*valid: ngram, nonterminal, generation"
    with pytest.raises(ValueError, match=listed):
        end_of_run_probes(Odd())
