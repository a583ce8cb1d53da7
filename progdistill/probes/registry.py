"""The probes that :func:`progdistill.recipes.runner.run` performs at the end of a run, by the names tasks declare in
``end_of_run_probes``. A new end-of-run probe is a module with a ``run`` and a ``check`` function, added here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from progdistill.probes import generation, induction, ngram
from progdistill.tasks.base import Task


@dataclass(frozen=True)
class EndOfRunProbe:
    """``run(rundir, config, task, log)`` writes ``probes/<summary>`` (and its other files) for a finished
    run; ``check(config)`` raises ``ConfigError`` before any training when the probe cannot run on the task."""

    summary: str
    run: Callable
    check: Callable


_NGRAM = EndOfRunProbe("ngram-summary.json", ngram.run_end_of_run, ngram.check_fits)
END_OF_RUN: dict[str, EndOfRunProbe] = {
    "ngram": _NGRAM,
    "nonterminal": _NGRAM,  # the non-terminal probe runs inside the n-gram probe, on the same models
    "generation": EndOfRunProbe("generation-summary.json", generation.run_end_of_run, generation.check_fits),
    "induction": EndOfRunProbe("induction-summary.json", induction.run_end_of_run, induction.check_fits),
}


def end_of_run_probes(task: Task) -> list[EndOfRunProbe]:
    """The probes of ``task.end_of_run_probes``, each once, in order. Raises ``ValueError`` for a name that is
    not registered, listing those that are."""
    unknown = [name for name in task.end_of_run_probes if name not in END_OF_RUN]
    if unknown:
        raise ValueError(
            f"task {task.kind!r} declares end-of-run probes {unknown} that do not exist; valid: {', '.join(END_OF_RUN)}"
        )
    return list(dict.fromkeys(END_OF_RUN[name] for name in task.end_of_run_probes))
