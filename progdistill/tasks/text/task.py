"""Masked language modelling on real text (paper §4: BERT on Wikipedia + Books).

:class:`TextMaskedLMTask` (task kind ``"text-mlm"``) follows the token-task contract of
:func:`progdistill.train.loop.fit` (see :mod:`progdistill.tasks.pcfg.task`): documents from
:mod:`progdistill.tasks.text.corpus`, a WordPiece tokenizer trained on the training documents
(:mod:`progdistill.tasks.text.tokenizer`), sequences packed to a fixed length (``[CLS] ... [SEP]``, no padding) and
BERT's 80/10/10 masking of non-special tokens.

Documents are split before tokenizing: every ``round(1 / eval_fraction)``-th document (0, k, 2k, ...) is held
out, so no held-out text is ever trained on and the tokenizer never sees it. A run saves its tokenizer as
``tokenizer/tokenizer.json`` in the run directory and reuses it on reruns: :meth:`TextMaskedLMTask.prepare`
returns a :class:`PreparedTextTask`, the same task carrying that tokenizer, which the run trains, probes and
loads models with. No module-level state: an unprepared task always trains its own tokenizer (deterministic, so
the ids are the same), whatever ran earlier in the process.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import torch

from progdistill.core.config import check, check_positive_int, register
from progdistill.tasks.base import Batch, TaskBase
from progdistill.tasks.masking import bert_mask
from progdistill.tasks.text.corpus import CorpusError, default_corpus, load_corpus, load_hf_dataset
from progdistill.tasks.text.tokenizer import (
    MASK_ID,
    SPECIAL_TOKENS,
    TokenizerConfig,
    TokenizerError,
    encode_documents,
    load_tokenizer,
    pack_sequences,
    save_tokenizer,
    train_tokenizer,
)

if TYPE_CHECKING:
    from tokenizers import Tokenizer

EVAL_BATCH = 64
TOKENIZER_DIR = "tokenizer"


@register("task")
@dataclass(frozen=True)
class TextMaskedLMTask(TaskBase):
    """BERT masked language modelling on a text corpus.

    ``corpus``: ``"default:wikipedia"`` / ``"default:lee-news"`` (offline corpora the ``gensim`` wheel ships;
    see :func:`progdistill.tasks.text.corpus.default_corpus`), a local ``.txt`` / ``.jsonl`` file or directory
    (``.jsonl`` documents in ``text_field``), or ``"hf:NAME"`` / ``"hf:NAME:CONFIG"`` for a Hugging Face dataset (needs
    ``datasets`` and network, or the local cache); several sources joined by ``+`` are concatenated in order.
    ``vocab_size``: the WordPiece vocabulary (special tokens included). ``sequence_length``: tokens per packed sequence.
    ``eval_fraction``: share of documents held out; ``eval_size``: held-out sequences evaluated (masked once from
    ``eval_seed``).
    """

    kind: ClassVar[str] = "text-mlm"
    per_position_targets: ClassVar[bool] = True
    probes: ClassVar[tuple[str, ...]] = ("ngram",)
    end_of_run_probes: ClassVar[tuple[str, ...]] = ("ngram",)
    accuracy_label: ClassVar[str] = "masked-token accuracy (validation)"

    corpus: str = "default:wikipedia"
    text_field: str = "text"
    vocab_size: int = 4096
    sequence_length: int = 64
    mask_rate: float = 0.15
    eval_fraction: float = 0.05
    eval_size: int = 256
    eval_seed: int = 12345

    def __post_init__(self):
        check(
            isinstance(self.corpus, str) and bool(self.corpus),
            "task.corpus",
            self.corpus,
            "default:wikipedia, default:lee-news, a .txt/.jsonl path or directory, or hf:NAME[:CONFIG]; several "
            "joined by +",
        )
        check(
            isinstance(self.vocab_size, int) and self.vocab_size >= len(SPECIAL_TOKENS),
            "task.vocab_size",
            self.vocab_size,
            f"must be an integer >= {len(SPECIAL_TOKENS)} (the special tokens {' '.join(SPECIAL_TOKENS)})",
        )
        check(
            isinstance(self.sequence_length, int) and self.sequence_length >= 3,
            "task.sequence_length",
            self.sequence_length,
            "must be an integer >= 3 ([CLS], one token, [SEP])",
        )
        check(
            isinstance(self.mask_rate, (int, float)) and 0 < self.mask_rate < 1,
            "task.mask_rate",
            self.mask_rate,
            "must lie in (0, 1)",
        )
        check(
            isinstance(self.eval_fraction, (int, float)) and 0 < self.eval_fraction <= 0.5,
            "task.eval_fraction",
            self.eval_fraction,
            "must lie in (0, 0.5]",
        )
        check_positive_int("task.eval_size", self.eval_size)
        check(
            isinstance(self.eval_seed, int) and self.eval_seed >= 0,
            "task.eval_seed",
            self.eval_seed,
            "must be an integer >= 0",
        )

    # -- data ------------------------------------------------------------------------------------------
    def documents(self) -> tuple[list[str], list[str]]:
        """(training documents, held-out documents). Raises :class:`CorpusError` naming the source."""
        return _documents(self, _files_stamp(self, fresh=True))

    def tokenizer(self):
        """The tokenizer trained on the training documents (deterministic: the same for the same corpus)."""
        return _trained_tokenizer(self, _files_stamp(self))

    def prepare(self, run_dir: str | Path) -> PreparedTextTask:
        """This task with the run's tokenizer: ``run_dir/tokenizer/tokenizer.json`` when it exists, else the
        trained one, saved there."""
        directory = Path(run_dir) / TOKENIZER_DIR
        if (directory / "tokenizer.json").exists():
            tokenizer = load_tokenizer(directory)
        else:
            tokenizer = self.tokenizer()
            save_tokenizer(tokenizer, directory)
        return PreparedTextTask(self, tokenizer)

    def data_digest(self) -> str:
        """sha256 of the documents (training, then held-out). Raises :class:`CorpusError` naming the source."""
        train, held_out = self.documents()
        return hashlib.sha256(("\x00".join(train) + "\x01" + "\x00".join(held_out)).encode("utf-8")).hexdigest()

    def positions_needed(self) -> int:
        return self.sequence_length

    def sequences(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Packed (train (N, L), held-out (E, L)) token ids. Raises :class:`TokenizerError` when a split is
        smaller than one sequence."""
        return _sequences(self, self.tokenizer(), _files_stamp(self))

    @property
    def num_classes(self) -> int:
        return self.tokenizer().get_vocab_size()

    @property
    def input_size(self) -> int:
        return self.sequence_length

    def _mask(self, ids: torch.Tensor, generator: torch.Generator) -> Batch:
        inputs, targets = bert_mask(
            ids, ids >= len(SPECIAL_TOKENS), MASK_ID, (len(SPECIAL_TOKENS), self.num_classes), self.mask_rate, generator
        )
        return Batch(inputs, targets, torch.ones_like(ids, dtype=torch.bool))

    def sample_batch(self, count: int, generator: torch.Generator) -> Batch:
        """``count`` training sequences drawn uniformly (with replacement), freshly masked."""
        train, _ = self.sequences()
        index = torch.randint(len(train), (count,), generator=generator)
        return self._mask(train[index], generator)

    def eval_ids(self) -> torch.Tensor:
        """The first ``eval_size`` held-out sequences (all of them when fewer), unmasked: (E, L)."""
        return self.sequences()[1][: self.eval_size]

    def eval_batches(self) -> list[Batch]:
        gen = torch.Generator().manual_seed(self.eval_seed)
        ids = self.eval_ids()
        return [self._mask(ids[i : i + EVAL_BATCH], gen) for i in range(0, len(ids), EVAL_BATCH)]

    def ngram_inputs(self, count: int, generator: torch.Generator):
        """Inputs of the n-gram probe: ``count`` held-out sequences (ids, attention, maskable, mask id)."""
        ids = self.eval_ids()
        ids = ids[torch.randperm(len(ids), generator=generator)[:count]]
        return ids, torch.ones_like(ids, dtype=torch.bool), ids >= len(SPECIAL_TOKENS), MASK_ID


class PreparedTextTask(TextMaskedLMTask):
    """A :class:`TextMaskedLMTask` carrying its run's tokenizer (:meth:`TextMaskedLMTask.prepare`).

    Not a dataclass of its own: its fields, serialized form and hash are the task's; the tokenizer is an
    attribute outside them. Equal only to another prepared task of the same fields."""

    def __init__(self, task: TextMaskedLMTask, tokenizer):
        super().__init__(**{f.name: getattr(task, f.name) for f in fields(task)})
        self._tokenizer: Tokenizer
        object.__setattr__(self, "_tokenizer", tokenizer)

    def tokenizer(self):
        return self._tokenizer

    def prepare(self, run_dir: str | Path) -> PreparedTextTask:
        return self


# Memoization only (no state a result depends on): the stamps below and the lru_caches are keyed on the
# immutable task and the corpus files' (path, size, mtime), so an edited corpus is read again.
_STAMPS: dict[TextMaskedLMTask, tuple] = {}


def _files_stamp(task: TextMaskedLMTask, fresh: bool = False) -> tuple:
    """(path, size, mtime) of every local file behind ``task.corpus``: part of the caches' keys below, so that
    a corpus edited between two runs in one process is read again instead of served stale. The files are
    looked at again only when ``fresh`` (:meth:`TextMaskedLMTask.documents`, which every run calls first through
    :meth:`~TextMaskedLMTask.data_digest`), not on every training batch."""
    if fresh or task not in _STAMPS:
        _STAMPS[task] = _local_files_stamp(task.corpus)
    return _STAMPS[task]


def _local_files_stamp(corpus: str) -> tuple:
    stamp = []
    for part in corpus.split("+"):
        if part.startswith(("default:", "hf:")):
            continue
        path = Path(part)
        files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
        for f in files:
            try:
                info = f.stat()
            except OSError:  # missing: load_corpus names it
                continue
            stamp.append((str(f), info.st_size, info.st_mtime_ns))
    return tuple(stamp)


@lru_cache(maxsize=4)
def _documents(task: TextMaskedLMTask, files_stamp: tuple) -> tuple[list[str], list[str]]:
    source = task.corpus
    documents = []
    for part in source.split("+"):
        if part.startswith("default:"):
            documents += default_corpus(part.split(":", 1)[1])
        elif part.startswith("hf:"):
            name, _, config = part[3:].partition(":")
            documents += load_hf_dataset(name, config or None, text_field=task.text_field)
        else:
            documents += load_corpus(part, text_field=task.text_field)
    every = max(2, round(1 / task.eval_fraction))
    held_out = [d for i, d in enumerate(documents) if i % every == 0]
    train = [d for i, d in enumerate(documents) if i % every != 0]
    if not held_out or not train:
        raise CorpusError(
            f"task.corpus={source!r} has {len(documents)} document(s): too few to hold out every "
            f"{every}-th one for evaluation and train on the rest; use a larger corpus"
        )
    return train, held_out


@lru_cache(maxsize=4)
def _trained_tokenizer(task: TextMaskedLMTask, files_stamp: tuple):
    return train_tokenizer(task.documents()[0], TokenizerConfig(vocab_size=task.vocab_size))


@lru_cache(maxsize=4)
def _sequences(task: TextMaskedLMTask, tokenizer, files_stamp: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    train, held_out = task.documents()
    out = []
    for name, documents in (("training", train), ("held-out", held_out)):
        try:
            out.append(pack_sequences(encode_documents(tokenizer, documents), task.sequence_length))
        except TokenizerError as exc:
            raise TokenizerError(f"task.corpus={task.corpus!r}, {name} documents: {exc}") from None
    return out[0], out[1]
