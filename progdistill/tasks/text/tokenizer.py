"""A BERT-style WordPiece tokenizer trained on a corpus, and packing into fixed-length sequences.

Paper §4 trains BERT with masked language modelling on Wikipedia + Books; this module gives the
matching subword tokenizer, trained with Hugging Face ``tokenizers`` on whatever corpus the run uses
(:mod:`progdistill.tasks.text.corpus`), so nothing is downloaded. Pipeline, as in BERT: ``BertNormalizer`` (clean text,
split CJK characters, strip accents and lowercase when ``lowercase``), ``BertPreTokenizer`` (whitespace and
punctuation), WordPiece with ``##`` continuation pieces, and ``[CLS] ... [SEP]`` added by
``encode(..., add_special_tokens=True)``.

The special tokens have fixed ids 0-4, in this order: ``[PAD] [UNK] [CLS] [SEP] [MASK]`` (BERT's own vocabulary
puts them at 0, 100-103; ours are first so every trained vocabulary agrees). Then come the continuation
characters ``##c`` and the characters ``c`` (each sorted by code point), then the merged pieces in the order
they were learnt. A tokenizer is saved as one file,
``tokenizer.json``, in a directory. Training and encoding are deterministic: the same corpus and config give
the same vocabulary and ids.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from progdistill.core.config import ConfigError, check, typed
from progdistill.core.files import atomic_write_text
from progdistill.core.optional import require

if TYPE_CHECKING:
    from tokenizers import Tokenizer, models

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = range(len(SPECIAL_TOKENS))
TOKENIZER_FILE = "tokenizer.json"


def _tokenizers():
    # The optional `tokenizers` package (extra "text"), imported when a tokenizer is trained or loaded, so that
    # importing this module (and so every task) needs only the core dependencies.
    return require("tokenizers", "text", "the WordPiece tokenizer of text tasks")


class TokenizerError(ValueError):
    """A tokenizer file is missing or inconsistent, or a corpus cannot be packed; the message says what."""


@typed("")
@dataclass(frozen=True)
class TokenizerConfig:
    """How to train the WordPiece tokenizer.

    ``vocab_size``: target vocabulary size, special tokens included; at least ``len(SPECIAL_TOKENS)`` (5).
    The vocabulary always holds the special tokens and, for every alphabet character ``c``, both ``c`` and
    ``##c``, even past ``vocab_size``; merges then fill it up to ``vocab_size`` and stop early when no pair occurs
    ``min_frequency`` times. So the trained size is at least 5 + 2 * alphabet size and can fall short of the
    target. ``min_frequency``: a merge needs this many occurrences (>= 1). ``lowercase``: BERT-uncased
    normalisation. ``limit_alphabet``: the most frequent characters kept as the alphabet (ties by code point;
    a word with any other character becomes ``[UNK]``), or None for all.

    Raises :class:`ConfigError` (a ``ValueError``) naming the field, the value and what is allowed.
    """

    vocab_size: int = 8192
    min_frequency: int = 2
    lowercase: bool = True
    limit_alphabet: int | None = 1000

    def __post_init__(self):
        minimum = len(SPECIAL_TOKENS)
        check(
            isinstance(self.vocab_size, int) and not isinstance(self.vocab_size, bool) and self.vocab_size >= minimum,
            "vocab_size",
            self.vocab_size,
            f"must be an integer >= {minimum} (the number of special tokens {' '.join(SPECIAL_TOKENS)})",
        )
        check(
            isinstance(self.min_frequency, int)
            and not isinstance(self.min_frequency, bool)
            and self.min_frequency >= 1,
            "min_frequency",
            self.min_frequency,
            "must be an integer >= 1",
        )
        check(isinstance(self.lowercase, bool), "lowercase", self.lowercase, "must be true or false")
        check(
            self.limit_alphabet is None
            or (
                isinstance(self.limit_alphabet, int)
                and not isinstance(self.limit_alphabet, bool)
                and self.limit_alphabet >= 1
            ),
            "limit_alphabet",
            self.limit_alphabet,
            "must be an integer >= 1 or None",
        )


def train_tokenizer(documents: Sequence[str], config: TokenizerConfig | int = TokenizerConfig()) -> Tokenizer:
    """Train a WordPiece tokenizer on ``documents`` (a list of strings, e.g. from :func:`load_corpus`).

    ``config`` is a :class:`TokenizerConfig` or just the vocabulary size. Returns a ``tokenizers.Tokenizer``
    whose ids 0-4 are ``[PAD] [UNK] [CLS] [SEP] [MASK]``. Raises :class:`ConfigError` for a bad config (a
    vocabulary size below 5 names the value and the minimum) and :class:`TokenizerError` for no documents.
    """
    if not isinstance(config, TokenizerConfig):
        config = TokenizerConfig(vocab_size=config)
    if isinstance(documents, str) or not all(isinstance(d, str) for d in documents):
        raise TokenizerError(f"documents must be a list of strings (one per document), not {type(documents).__name__}")
    if not any(d.strip() for d in documents):
        raise TokenizerError(f"cannot train a tokenizer on {len(documents)} documents holding no text")
    tk = _tokenizers()
    alphabet = _alphabet(documents, config)
    # Work around tokenizers issue #1794 (training is not deterministic): the trainer gives the '##c'
    # continuation tokens ids in hash-map order, and those ids break ties between equally frequent merges. Listing
    # them after the special tokens fixes their ids (sorted), and our own alphabet (ties broken by code point)
    # replaces the trainer's unstable sort. The special '##c' entries are dropped by rebuilding the model from the
    # vocabulary: WordPiece encodes by greedy longest match on the vocabulary alone.
    trainer = tk.trainers.WordPieceTrainer(
        vocab_size=config.vocab_size,
        min_frequency=config.min_frequency,
        special_tokens=list(SPECIAL_TOKENS) + [f"##{c}" for c in sorted(alphabet)],
        initial_alphabet=alphabet,
        limit_alphabet=len(alphabet),
        continuing_subword_prefix="##",
        show_progress=False,
    )
    trained = _pipeline(config, tk.models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##"))
    trained.train_from_iterator(list(documents), trainer=trainer, length=len(documents))
    tokenizer = _pipeline(
        config,
        tk.models.WordPiece(
            trained.get_vocab(with_added_tokens=False), unk_token="[UNK]", continuing_subword_prefix="##"
        ),
    )
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer.post_processor = tk.processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", CLS_ID), ("[SEP]", SEP_ID)],
    )
    _check_special_tokens(tokenizer, "the trained tokenizer")
    return tokenizer


def _pipeline(config: TokenizerConfig, model: models.WordPiece) -> Tokenizer:
    tk = _tokenizers()
    tokenizer = tk.Tokenizer(model)
    tokenizer.normalizer = tk.normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=config.lowercase
    )
    tokenizer.pre_tokenizer = tk.pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = tk.decoders.WordPiece(prefix="##")
    return tokenizer


def _alphabet(documents: Sequence[str], config: TokenizerConfig) -> list[str]:
    """The characters of the normalised, pre-tokenized corpus, most frequent first (ties by code point), at most
    ``config.limit_alphabet`` of them."""
    probe = _pipeline(config, _tokenizers().models.WordPiece(unk_token="[UNK]"))
    counts: collections.Counter[str] = collections.Counter()
    for doc in documents:
        for word, _span in probe.pre_tokenizer.pre_tokenize_str(probe.normalizer.normalize_str(doc)):
            counts.update(word)
    ranked = sorted(counts, key=lambda c: (-counts[c], ord(c)))
    return ranked[: config.limit_alphabet] if config.limit_alphabet is not None else ranked


def _check_special_tokens(tokenizer: Tokenizer, where: str) -> None:
    for expected, token in enumerate(SPECIAL_TOKENS):
        got = tokenizer.token_to_id(token)
        if got != expected:
            raise TokenizerError(
                f"{where}: special token {token} has id {got}, expected {expected}; allowed: "
                f"ids 0-{len(SPECIAL_TOKENS) - 1} for {' '.join(SPECIAL_TOKENS)}"
            )


def save_tokenizer(tokenizer: Tokenizer, directory: str | os.PathLike) -> Path:
    """Write ``directory/tokenizer.json`` (creating the directory), atomically; returns the file's path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / TOKENIZER_FILE
    atomic_write_text(path, tokenizer.to_str(pretty=True))
    return path


def load_tokenizer(directory: str | os.PathLike) -> Tokenizer:
    """Read ``directory/tokenizer.json`` written by :func:`save_tokenizer`.

    Raises :class:`TokenizerError` naming the file when it is missing, unreadable, or its special tokens do
    not have ids 0-4.
    """
    path = Path(directory) / TOKENIZER_FILE
    if not path.is_file():
        raise TokenizerError(f"{path}: no such file; allowed: a directory written by save_tokenizer")
    tk = _tokenizers()
    try:
        tokenizer = tk.Tokenizer.from_file(str(path))
    except Exception as exc:  # the Rust side raises a bare Exception for any malformed file
        raise TokenizerError(f"{path}: not a valid tokenizer file: {exc}") from exc
    _check_special_tokens(tokenizer, str(path))
    return tokenizer


def as_transformers(tokenizer: Tokenizer, model_max_length: int = 512):
    """The tokenizer as a ``transformers.PreTrainedTokenizerFast`` (for ``DataCollatorForLanguageModeling``).

    Needs the optional ``transformers`` package (``pip install 'progdistill[transformers]'``).
    """
    transformers = require("transformers", "transformers", "as_transformers")
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        model_max_length=model_max_length,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


# ----------------------------------------------------------------------------------------------------------
# Packing


def encode_documents(tokenizer: Tokenizer, documents: Sequence[str]) -> list[list[int]]:
    """Token ids of each document, without special tokens; one list per document, in order."""
    return [enc.ids for enc in tokenizer.encode_batch(list(documents), add_special_tokens=False)]


def pack_sequences(
    token_ids: Sequence[Sequence[int]], length: int, cls_id: int = CLS_ID, sep_id: int = SEP_ID
) -> torch.Tensor:
    """Pack tokenized documents into fixed-length training sequences for masked language modelling.

    The documents are concatenated into one stream, each followed by ``[SEP]`` (so a document boundary inside
    a sequence is marked, as in RoBERTa's full-sentence packing); the stream is cut into chunks of
    ``length - 2`` tokens and each chunk becomes ``[CLS] chunk [SEP]``. The last partial chunk is dropped, so
    no ``[PAD]`` appears. The first sequence is ``[CLS]`` followed by the first document's tokens.

    Returns a LongTensor of shape (num_sequences, length), num_sequences = stream tokens // (length - 2).
    Raises :class:`TokenizerError` when ``length`` < 3, or when the corpus (its token count, one ``[SEP]``
    per document included) is too small for one sequence, naming both numbers.
    """
    if not (isinstance(length, int) and not isinstance(length, bool) and length >= 3):
        raise TokenizerError(f"length={length!r} is invalid: must be an integer >= 3 ([CLS], one token, [SEP])")
    stream: list[int] = []
    for ids in token_ids:
        stream.extend(ids)
        stream.append(sep_id)
    body = length - 2
    num_sequences = len(stream) // body
    if num_sequences == 0:
        raise TokenizerError(
            f"the corpus has {len(stream)} tokens ({len(token_ids)} documents, one [SEP] "
            f"each), too few for one training sequence of length L={length}, which holds "
            f"{body} corpus tokens; use a larger corpus or a smaller length"
        )
    chunks = torch.tensor(stream[: num_sequences * body], dtype=torch.long).view(num_sequences, body)  # (N, L-2)
    cls = torch.full((num_sequences, 1), cls_id, dtype=torch.long)
    sep = torch.full((num_sequences, 1), sep_id, dtype=torch.long)
    return torch.cat([cls, chunks, sep], dim=1)  # (N, L)


def tokenize_corpus(tokenizer: Tokenizer, documents: Sequence[str], length: int) -> torch.Tensor:
    """:func:`encode_documents` then :func:`pack_sequences`: a LongTensor (num_sequences, length)."""
    return pack_sequences(encode_documents(tokenizer, documents), length)


__all__ = [
    "CLS_ID",
    "MASK_ID",
    "PAD_ID",
    "SEP_ID",
    "SPECIAL_TOKENS",
    "TOKENIZER_FILE",
    "UNK_ID",
    "ConfigError",
    "TokenizerConfig",
    "TokenizerError",
    "as_transformers",
    "encode_documents",
    "load_tokenizer",
    "pack_sequences",
    "save_tokenizer",
    "tokenize_corpus",
    "train_tokenizer",
]
