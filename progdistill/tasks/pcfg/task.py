"""Masked language modelling on sentences of a probabilistic context-free grammar (paper §2).

:class:`PCFGMaskedLMTask` (task kind ``"pcfg-mlm"``) turns the grammar (:mod:`progdistill.tasks.pcfg.grammar`), the
sampler (:mod:`progdistill.tasks.pcfg.sampler`) and BERT masking (:mod:`progdistill.tasks.masking`) into the *token
task* contract of :func:`progdistill.train.loop.fit`:

- ``sample_batch(count, generator)`` -> :class:`~progdistill.tasks.base.Batch` of ``count`` fresh sentences, masked;
- ``eval_batches()`` -> the fixed held-out set as a list of :class:`~progdistill.tasks.base.Batch`;
- ``num_classes`` (the vocabulary size: terminals + BOS, EOS, PAD, MASK) and ``input_size`` (the positions a
  sentence may need: ``max_length + 2``).

Every draw comes from the caller's ``torch.Generator``: the sentences from a numpy generator seeded by one
draw of it, the masking from the generator itself, so a data stream is a function of its seed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from progdistill.core.config import check, check_positive_int, register, typed
from progdistill.tasks.base import Batch, TaskBase
from progdistill.tasks.masking import bert_mask
from progdistill.tasks.pcfg.grammar import Grammar, GrammarError, load_grammar, packaged_grammars, random_grammar
from progdistill.tasks.pcfg.sampler import Sentence, SentenceBatch, sample_sentences

EVAL_BATCH = 64  # sentences per forward pass when evaluating

# ----------------------------------------------------------------------------------------------------------
# Vocabulary: the grammar's terminals (ids 0..T-1, e.g. a, b, c) followed by the special tokens BOS, EOS, PAD
# and MASK. A sentence becomes ``BOS tokens EOS``; a batch is padded with PAD to its longest sentence.

SPECIALS = ("BOS", "EOS", "PAD", "MASK")


@dataclass(frozen=True)
class Vocabulary:
    """Terminal names (ids 0..T-1) and the special tokens after them."""

    terminals: tuple[str, ...]

    @property
    def size(self) -> int:
        return len(self.terminals) + len(SPECIALS)

    def special(self, name: str) -> int:
        """The id of special token ``name`` (one of BOS, EOS, PAD, MASK)."""
        check(name in SPECIALS, "special token", name, f"one of {', '.join(SPECIALS)}")
        return len(self.terminals) + SPECIALS.index(name)

    @property
    def bos(self) -> int:
        return self.special("BOS")

    @property
    def eos(self) -> int:
        return self.special("EOS")

    @property
    def pad(self) -> int:
        return self.special("PAD")

    @property
    def mask(self) -> int:
        return self.special("MASK")


def pad_sentences(
    sentences: Sequence[Sequence[int] | np.ndarray], vocab: Vocabulary, max_positions: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``BOS s EOS`` for every sentence, padded with PAD: ids (B, L) int64 and attention mask (B, L) bool,
    L = longest sentence + 2. Raises ``ValueError`` naming the length when L exceeds ``max_positions`` (the
    model's position embeddings) and when a token is not a terminal id."""
    check(len(sentences) > 0, "sentences", len(sentences), "need at least one sentence")
    longest = max(len(s) for s in sentences) + 2
    if max_positions is not None and longest > max_positions:
        raise ValueError(
            f"a sentence of {longest - 2} tokens needs {longest} positions (with BOS and EOS), "
            f"more than the model's max_positions={max_positions}"
        )
    ids = torch.full((len(sentences), longest), vocab.pad, dtype=torch.long)
    for i, sentence in enumerate(sentences):
        tokens = torch.as_tensor(sentence, dtype=torch.long)
        if len(tokens) and (tokens.min() < 0 or tokens.max() >= len(vocab.terminals)):
            raise ValueError(f"sentence {i} has a token outside the terminal ids 0..{len(vocab.terminals) - 1}")
        ids[i, 0] = vocab.bos
        ids[i, 1 : len(tokens) + 1] = tokens
        ids[i, len(tokens) + 1] = vocab.eos
    return ids, ids != vocab.pad


def mask_tokens(
    ids: torch.Tensor, vocab: Vocabulary, mask_rate: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's 80/10/10 masking of terminal positions: returns (inputs (B, L), targets (B, L)).

    ``targets`` is the original id at selected positions and -100 elsewhere; special tokens are never selected.
    Raises ``ValueError`` unless 0 < mask_rate < 1. Deterministic given ``generator``.
    """
    return bert_mask(ids, ids < len(vocab.terminals), vocab.mask, (0, len(vocab.terminals)), mask_rate, generator)


@typed("grammar")
@dataclass(frozen=True)
class GrammarSpec:
    """Which grammar: ``name`` is a packaged grammar (cfg3b, cfg3f, cfg3g, cfg3h, cfg3i), a path to a grammar
    file, or ``"random"`` for :func:`progdistill.tasks.pcfg.grammar.random_grammar` with the remaining fields."""

    name: str = "random"
    levels: int = 5
    nonterminals_per_level: int = 3
    rules_per_nonterminal: int = 2
    rule_lengths: tuple[int, ...] = (2, 3)
    seed: int = 0

    def __post_init__(self):
        check(
            isinstance(self.name, str) and bool(self.name),
            "grammar.name",
            self.name,
            f"'random', a packaged grammar ({', '.join(packaged_grammars())}) or a grammar file path",
        )

    def load(self) -> Grammar:
        """The grammar; raises :class:`GrammarError` (naming the file and line, or the argument). A grammar file
        is read again when it changes (cached by path, modification time and size)."""
        return _load(self, self.stamp())

    def stamp(self) -> tuple[int, int] | None:
        """(modification time in ns, size) of a grammar file; None for packaged and random grammars."""
        if self.name == "random" or self.name in packaged_grammars():
            return None
        try:
            st = Path(self.name).stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size


@lru_cache(maxsize=16)
def _load(spec: GrammarSpec, stamp: tuple[int, int] | None) -> Grammar:
    if spec.name == "random":
        return random_grammar(
            spec.levels,
            spec.nonterminals_per_level,
            spec.rules_per_nonterminal,
            tuple(spec.rule_lengths),
            seed=spec.seed,
        )
    return load_grammar(spec.name)


@dataclass(frozen=True)
class GrammarTask(TaskBase):
    """Fields and sampling shared by the grammar tasks: ``grammar``; ``max_length``, the longest sentence
    allowed (the sampler's guard: a longer one is an error naming the grammar); ``eval_size`` held-out
    sentences drawn once from ``eval_seed``."""

    grammar: GrammarSpec = field(default_factory=GrammarSpec)
    max_length: int = 512
    eval_size: int = 512
    eval_seed: int = 12345

    def __post_init__(self):
        check_positive_int("task.max_length", self.max_length)
        check_positive_int("task.eval_size", self.eval_size)
        check(
            isinstance(self.eval_seed, int) and self.eval_seed >= 0,
            "task.eval_seed",
            self.eval_seed,
            "must be an integer >= 0",
        )

    def load_grammar(self) -> Grammar:
        return self.grammar.load()

    def data_digest(self) -> str:
        """sha256 of the grammar's text. Raises :class:`GrammarError` for a bad grammar file."""
        return hashlib.sha256(self.load_grammar().to_text().encode("utf-8")).hexdigest()

    def positions_needed(self) -> int:
        """Positions of the longest held-out sentence (with BOS and EOS). Drawing the held-out set raises
        :class:`GrammarError` for a ``max_length`` or ``level`` the grammar's trees do not fit."""
        return max(b.inputs.shape[1] for b in self.eval_batches())

    @property
    def vocabulary(self) -> Vocabulary:
        return Vocabulary(self.load_grammar().terminals)

    @property
    def num_classes(self) -> int:
        """Vocabulary size: the model's output classes at every position."""
        return self.vocabulary.size

    @property
    def config_num_classes(self) -> int | None:
        """The vocabulary size of a packaged or random grammar (None for a grammar file, or one that does not
        load: :meth:`data_digest` says why before a run writes anything)."""
        if self.grammar.name != "random" and self.grammar.name not in packaged_grammars():
            return None
        try:
            return self.num_classes
        except (ValueError, OSError):  # GrammarError is a ValueError
            return None

    @property
    def input_size(self) -> int:
        """Positions the longest allowed sentence needs (with BOS and EOS)."""
        return self.max_length + 2

    def sample_sentences(self, count: int, generator: torch.Generator) -> SentenceBatch:
        """``count`` sentences with their trees, drawn through one draw of ``generator``."""
        rng = np.random.default_rng(int(torch.randint(2**62, (), generator=generator)))
        try:
            return sample_sentences(self.load_grammar(), count, rng, max_length=self.max_length)
        except GrammarError as exc:
            raise GrammarError(f"task.max_length={self.max_length}: {exc}") from None

    def eval_sentences(self) -> SentenceBatch:
        """The fixed held-out sentences (with their trees), drawn from ``eval_seed``."""
        return self.sample_sentences(self.eval_size, torch.Generator().manual_seed(self.eval_seed))

    def eval_batches(self) -> list[Batch]:
        """The fixed held-out set (:meth:`eval_sentences`, made into batches by ``batch_from_sentences`` with the
        same ``eval_seed`` generator, so any masking is drawn once) in batches of ``EVAL_BATCH`` sentences."""
        return _eval_batches(self, self.grammar.stamp())


@register("task")
@dataclass(frozen=True)
class PCFGMaskedLMTask(GrammarTask):
    """BERT-style masked language modelling on grammar sentences (paper §2).

    ``mask_rate``: fraction of terminal positions selected for prediction (BERT's 80/10/10 rule applies to
    them); the other fields are those of every grammar task (``grammar``, ``max_length``, ``eval_size``,
    ``eval_seed``).
    """

    kind: ClassVar[str] = "pcfg-mlm"
    per_position_targets: ClassVar[bool] = True
    probes: ClassVar[tuple[str, ...]] = ("ngram", "nonterminal", "oracle")
    end_of_run_probes: ClassVar[tuple[str, ...]] = ("ngram", "nonterminal")
    accuracy_label: ClassVar[str] = "masked-token accuracy (validation)"

    mask_rate: float = 0.3

    def __post_init__(self):
        super().__post_init__()
        check(
            isinstance(self.mask_rate, (int, float)) and 0 < self.mask_rate < 1,
            "task.mask_rate",
            self.mask_rate,
            "must lie in (0, 1)",
        )

    def batch_from_sentences(self, sentences: Sequence[Sentence] | SentenceBatch, generator: torch.Generator) -> Batch:
        """Pad and mask sampled sentences: a :class:`~progdistill.tasks.base.Batch` of shape (count, longest + 2)."""
        ids, attention = pad_sentences([s.tokens for s in sentences], self.vocabulary)
        inputs, targets = mask_tokens(ids, self.vocabulary, self.mask_rate, generator)
        return Batch(inputs, targets, attention)

    def sample_batch(self, count: int, generator: torch.Generator) -> Batch:
        """``count`` fresh masked sentences (the training stream)."""
        return self.batch_from_sentences(self.sample_sentences(count, generator), generator)

    def ngram_inputs(self, count: int, generator: torch.Generator):
        """Inputs of the n-gram probe: ``count`` fresh sentences as (ids (B, L), attention (B, L), maskable
        (B, L) -- the terminal positions, mask id)."""
        vocab = self.vocabulary
        ids, attention = pad_sentences([s.tokens for s in self.sample_sentences(count, generator)], vocab)
        return ids, attention, ids < len(vocab.terminals), vocab.mask


@lru_cache(maxsize=4)
def _eval_batches(task: PCFGMaskedLMTask | PCFGNextTokenTask, stamp: tuple[int, int] | None) -> list[Batch]:
    gen = torch.Generator().manual_seed(task.eval_seed)
    sentences = task.sample_sentences(task.eval_size, gen)
    return [
        task.batch_from_sentences([sentences[j] for j in range(i, min(i + EVAL_BATCH, len(sentences)))], gen)
        for i in range(0, len(sentences), EVAL_BATCH)
    ]


@register("task")
@dataclass(frozen=True)
class PCFGNextTokenTask(GrammarTask):
    """Autoregressive (next-token) language modelling on grammar sentences (paper §3).

    A sentence is ``BOS tokens EOS`` (padded with PAD); position t predicts token t + 1. ``level`` restricts the
    supervised positions to those whose next token closes a nonterminal span at that tree level (the sampler's
    ``boundaries``); level 0 supervises every next token. EOS (the end of the root span) is always supervised.
    Accuracy is next-token accuracy on the supervised positions. The other fields are those of every grammar
    task.
    """

    kind: ClassVar[str] = "pcfg-lm"
    per_position_targets: ClassVar[bool] = True
    generative: ClassVar[bool] = True
    probes: ClassVar[tuple[str, ...]] = ("generation",)
    end_of_run_probes: ClassVar[tuple[str, ...]] = ("generation",)
    accuracy_label: ClassVar[str] = "next-token accuracy (validation)"

    level: int = 0

    def __post_init__(self):
        super().__post_init__()
        check(
            isinstance(self.level, int) and self.level >= 0,
            "task.level",
            self.level,
            "must be an integer >= 0 (0 = every next token)",
        )

    def batch_from_sentences(
        self, sentences: Sequence[Sentence] | SentenceBatch, generator: torch.Generator | None = None
    ) -> Batch:
        """Inputs ``BOS s EOS`` padded (B, L) and next-token targets (B, L): -100 at unsupervised positions.
        ``generator`` is unused (nothing is random here). Raises ``GrammarError`` for a ``level`` the trees lack."""
        levels = len(sentences[0].ancestors)
        if self.level >= levels:
            raise GrammarError(f"task.level={self.level} is invalid: the grammar's trees have levels 0..{levels - 1}")
        ids, attention = pad_sentences([s.tokens for s in sentences], self.vocabulary)
        targets = torch.full_like(ids, -100)
        for i, s in enumerate(sentences):
            n = len(s)
            keep = torch.ones(n + 1, dtype=torch.bool)  # next tokens: s[0..n-1] and EOS
            if self.level > 0:
                keep[:n] = torch.from_numpy(s.boundaries[self.level].astype(bool))
            targets[i, : n + 1] = torch.where(keep, ids[i, 1 : n + 2], torch.full_like(keep, -100, dtype=torch.long))
        return Batch(ids, targets, attention)

    def sample_batch(self, count: int, generator: torch.Generator) -> Batch:
        return self.batch_from_sentences(self.sample_sentences(count, generator))

    def generation_limit(self) -> int:
        """Tokens a sampled sentence may have, EOS included: twice the longest held-out sentence (at most
        ``max_length``), plus one -- the generation probe's limit."""
        return min(self.max_length, 2 * int(self.eval_sentences().lengths.max())) + 1

    def generate_batch(
        self, model, count: int, generator: torch.Generator, temperature: float = 1.0, max_new_tokens: int | None = None
    ) -> Batch:
        """``count`` sentences sampled from ``model`` (a :class:`~progdistill.models.language.CausalLM`) after BOS,
        over the terminals and EOS, at ``temperature`` (0 = greedy), each up to EOS or ``max_new_tokens`` tokens
        (None: :meth:`generation_limit`), draws from ``generator``; as a batch (:meth:`batch_from_tokens`)."""
        vocab = self.vocabulary
        allowed = torch.tensor(list(range(len(vocab.terminals))) + [vocab.eos])
        device = next(model.parameters()).device
        prompt = torch.full((count, 1), vocab.bos, dtype=torch.long, device=device)
        limit = self.generation_limit() if max_new_tokens is None else max_new_tokens
        return self.batch_from_tokens(model.sample(prompt, allowed, vocab.eos, limit, generator, temperature))

    def batch_from_tokens(self, generated: Sequence[Sequence[int]]) -> Batch:
        """Generated continuations of BOS (terminal ids, EOS last when produced) as a batch: inputs ``BOS tokens``
        padded (B, L), L = 1 + the longest, and every next token as target (B, L), -100 at padding. No tree is
        known for a generated sentence, so every position is supervised whatever ``level``."""
        vocab = self.vocabulary
        longest = 1 + max((len(g) for g in generated), default=0)
        ids = torch.full((len(generated), longest), vocab.pad, dtype=torch.long)
        targets = torch.full_like(ids, -100)
        ids[:, 0] = vocab.bos
        for i, tokens in enumerate(generated):
            row = torch.as_tensor(list(tokens), dtype=torch.long)
            ids[i, 1 : len(row) + 1] = row
            targets[i, : len(row)] = row
        return Batch(ids, targets, ids != vocab.pad)
