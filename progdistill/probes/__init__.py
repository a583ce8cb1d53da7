"""Probes over a run directory's checkpoints (files in, files out; see :mod:`progdistill.probes.jobs`).

One module per probe, holding its math and its run-directory driver: :mod:`~progdistill.probes.monomials`
(sparse parity, paper §1), :mod:`~progdistill.probes.ngram` and :mod:`~progdistill.probes.nonterminal` (masked
LMs, paper §2 and §4), :mod:`~progdistill.probes.oracle` (the grammar's optimal predictor, paper §2),
:mod:`~progdistill.probes.generation` (autoregressive grammars, paper §3). Which probes a run performs at its end
is :mod:`~progdistill.probes.registry`'s, by the names tasks declare.
"""
