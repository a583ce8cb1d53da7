"""Real text corpora for masked language modelling (paper §4: Wikipedia + Books, BERT).

A corpus is a ``list[str]`` of documents, in a fixed order. Sources:

- a ``.txt`` file: documents are separated by one or more blank lines (lines holding only whitespace count as
  blank); the lines of one document are kept, joined by ``"\\n"``, and each document is stripped. A file with
  one document a line therefore needs blank lines between them; paragraphs are the natural unit of prose files.
- a directory: every ``*.txt`` file below it (recursively, sorted by relative path), each read as above, in
  that order; other files are ignored.
- a ``.jsonl`` file: one JSON object a line, the document in ``text_field``; blank lines are skipped.
- :func:`load_hf_dataset`: a Hugging Face dataset, through the optional ``datasets`` package.
- :func:`default_corpus`: a sample of English Wikipedia that the ``gensim`` package ships in its wheel, so a
  text preset runs without network (``pip install 'progdistill[text]'``; ``docs/text-corpus.md`` says why).

Documents that are empty or whitespace-only are dropped. Files are decoded as strict UTF-8 (a leading byte order
mark is dropped). Every bad input raises :class:`CorpusError` (a ``ValueError``) naming the path, and for a bad
line its number. Nothing on disk is ever written.
"""

from __future__ import annotations

import bz2
import functools
import hashlib
import json
import os
import re
from importlib import metadata
from pathlib import Path

TEXT_SUFFIXES = (".txt",)
JSONL_SUFFIXES = (".jsonl",)
_ALLOWED_SOURCE = "allowed: a .txt file, a .jsonl file or a directory of .txt files"
_BLANK_LINE = re.compile(r"\n[ \t\f\v]*\n")


class CorpusError(ValueError):
    """A corpus source is missing, empty or malformed; the message names the path (and line) and what is allowed."""


# ----------------------------------------------------------------------------------------------------------
# Local files


def load_corpus(source: str | os.PathLike, text_field: str = "text") -> list[str]:
    """Load the documents of a ``.txt`` file, a ``.jsonl`` file or a directory of ``.txt`` files.

    See the module docstring for how each kind splits into documents. ``text_field`` names the JSON field that
    holds a ``.jsonl`` document (ignored for ``.txt``). Returns the documents, each a non-empty string.

    Raises :class:`CorpusError` naming the path when the path does not exist; the file or directory holds no
    text; a file is not valid UTF-8 (with the byte offset and line of the first bad byte); a ``.jsonl`` line is
    not valid JSON, not an object, lacks ``text_field`` (listing the fields it has) or holds a non-string there;
    the extension is not supported.
    """
    if not isinstance(source, (str, os.PathLike)):
        raise CorpusError(f"source={source!r} is invalid: must be a path; {_ALLOWED_SOURCE}")
    if not isinstance(text_field, str) or not text_field:
        raise CorpusError(f"text_field={text_field!r} is invalid: must be a non-empty string")
    path = Path(source)
    if not path.exists():
        raise CorpusError(f"{path}: no such file or directory; {_ALLOWED_SOURCE}")
    if path.is_dir():
        files = sorted(
            (p for p in path.rglob("*") if p.suffix.lower() in TEXT_SUFFIXES and p.is_file()),
            key=lambda p: p.relative_to(path).as_posix(),
        )
        if not files:
            raise CorpusError(f"{path}: directory holds no .txt files; {_ALLOWED_SOURCE}")
        documents = [doc for f in files for doc in _split_text(_read_text(f))]
        if not documents:
            raise CorpusError(
                f"{path}: directory holds no text (its {len(files)} .txt files are empty or whitespace-only)"
            )
        return documents
    if not path.is_file():
        raise CorpusError(f"{path}: not a regular file or directory; {_ALLOWED_SOURCE}")
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        documents = _split_text(_read_text(path))
    elif suffix in JSONL_SUFFIXES:
        documents = _parse_jsonl(_read_text(path), path, text_field)
    else:
        raise CorpusError(f"{path}: unsupported extension {path.suffix or '(none)'!r}; {_ALLOWED_SOURCE}")
    if not documents:
        raise CorpusError(f"{path}: file holds no text (empty or whitespace-only)")
    return documents


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CorpusError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise CorpusError(
            f"{path}: not valid UTF-8: byte 0x{data[exc.start]:02x} at byte offset {exc.start} "
            f"(line {line}) {exc.reason}; allowed: UTF-8 text"
        ) from exc
    return text[1:] if text.startswith("\ufeff") else text


def _split_text(text: str) -> list[str]:
    # Normalise line endings first, so '\r\n\r\n' separates documents like '\n\n'.
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return [doc.strip() for doc in _BLANK_LINE.split(text) if doc.strip()]


def _parse_jsonl(text: str, path: Path, text_field: str) -> list[str]:
    documents = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        at = f"{path}:line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorpusError(
                f"{at}: not valid JSON ({exc.msg} at column {exc.colno}); allowed: one JSON object a line"
            ) from exc
        except RecursionError as exc:
            raise CorpusError(f"{at}: not valid JSON (nested too deeply); allowed: one JSON object a line") from exc
        if not isinstance(record, dict):
            raise CorpusError(
                f"{at}: a JSON {type(record).__name__}, not an object; allowed: one JSON object "
                f"a line with a {text_field!r} field"
            )
        if text_field not in record:
            fields = ", ".join(repr(k) for k in record) or "none"
            raise CorpusError(f"{at}: no field {text_field!r}; the line has fields: {fields}")
        value = record[text_field]
        if not isinstance(value, str):
            raise CorpusError(f"{at}: field {text_field!r} holds a JSON {type(value).__name__}; allowed: a string")
        _check_encodable(value, at)
        if value.strip():
            documents.append(value)
    return documents


def _check_encodable(text: str, at: str) -> None:
    # JSON may spell lone surrogates ("\ud800"), which are not Unicode text and break every tokenizer.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CorpusError(
            f"{at}: text holds a lone surrogate {text[exc.start]!r} at character {exc.start}; allowed: Unicode text"
        ) from exc


def corpus_summary(documents: list[str]) -> dict[str, int]:
    """Size of a corpus: ``{"documents": ..., "characters": ..., "words": ...}``.

    ``words`` counts whitespace-separated tokens (``str.split()``), before any subword tokenization.
    """
    return {
        "documents": len(documents),
        "characters": sum(len(d) for d in documents),
        "words": sum(len(d.split()) for d in documents),
    }


# ----------------------------------------------------------------------------------------------------------
# Hugging Face datasets


def load_hf_dataset(name: str, config: str | None = None, split: str = "train", text_field: str = "text") -> list[str]:
    """The documents of one split of a Hugging Face dataset (``datasets.load_dataset(name, config, split)``).

    Needs the optional ``datasets`` package and, unless the dataset is in the local Hugging Face cache, the
    network. Whitespace-only documents are dropped. Raises :class:`CorpusError` when ``datasets`` is not
    installed (saying ``pip install 'progdistill[datasets]'``), when the dataset cannot be loaded (for example
    offline: the message says so and suggests a local path for :func:`load_corpus`), when ``text_field`` is not a column
    (listing the columns) or a row holds no string there.
    """
    for arg, value in (("name", name), ("split", split), ("text_field", text_field)):
        if not isinstance(value, str) or not value:
            raise CorpusError(f"{arg}={value!r} is invalid: must be a non-empty string")
    try:
        import datasets
    except ImportError as exc:
        raise CorpusError(
            f"Hugging Face dataset {name!r} needs the 'datasets' package: pip install "
            "'progdistill[datasets]' "
            "(or pass a local .txt/.jsonl file or directory to load_corpus)"
        ) from exc
    try:
        dataset = datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # the hub client raises many types (ConnectionError, FileNotFoundError, ...)
        raise CorpusError(
            f"Hugging Face dataset {name!r} (config={config!r}, split={split!r}) could not be "
            f"loaded: {type(exc).__name__}: {exc}. Without network a dataset cannot be loaded "
            "offline unless it is already in the local Hugging Face cache; download it where "
            "there is network, save it as .txt or .jsonl and pass that local path to "
            "load_corpus"
        ) from exc
    columns = list(getattr(dataset, "column_names", None) or [])
    if text_field not in columns:
        raise CorpusError(
            f"Hugging Face dataset {name!r} split {split!r}: no column {text_field!r}; its "
            f"columns: {', '.join(map(repr, columns)) or 'none'}"
        )
    documents = []
    for index, value in enumerate(dataset[text_field]):
        if not isinstance(value, str):
            raise CorpusError(
                f"Hugging Face dataset {name!r} split {split!r} row {index}: column "
                f"{text_field!r} holds {type(value).__name__}; allowed: a string"
            )
        if value.strip():
            documents.append(value)
    if not documents:
        raise CorpusError(f"Hugging Face dataset {name!r} split {split!r}: column {text_field!r} holds no text")
    return documents


# ----------------------------------------------------------------------------------------------------------
# The offline default corpus


@functools.cache
def _gensim_file(relative: str, sha256: str) -> Path:
    try:
        dist = metadata.distribution("gensim")
    except metadata.PackageNotFoundError as exc:
        raise CorpusError(
            "the default corpus ships inside the 'gensim' package, which is not installed: "
            "pip install 'progdistill[text]' (or pip install gensim), or pass a local corpus "
            "to load_corpus"
        ) from exc
    path = Path(str(dist.locate_file(f"gensim/test/test_data/{relative}")))
    if not path.is_file():
        raise CorpusError(
            f"gensim {dist.version} is installed but lacks its test data file {path}; "
            "reinstall it from the PyPI wheel: pip install --force-reinstall gensim"
        )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != sha256:
        # A changed file would silently change every text experiment: refuse instead.
        raise CorpusError(
            f"{path} (gensim {dist.version}) has sha256 {digest}, expected {sha256}; the default "
            "corpus changed, so results would not be comparable"
        )
    return path


WIKIPEDIA_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
WIKIPEDIA_SHA256 = "a53f4648dec40467ebdcbc7a1307eddb51fe6e28e9309f6ebde81ba0d04bea2d"
LEE_FILE = "lee_background.cor"
LEE_SHA256 = "5d78d6dafd953bbf65797bef09a9ffb9ec430583381be705f8fd460000f370fb"
DEFAULT_CORPORA = ("wikipedia", "lee-news")
# Sections after which a Wikipedia article is lists of links and citations, not prose.
_END_SECTIONS = frozenset(
    {"references", "see also", "external links", "notes", "further reading", "bibliography", "sources", "footnotes"}
)
_HEADING = re.compile(r"=+\s*(.*?)\s*=+")
_MIN_PARAGRAPH_WORDS = 8


def default_corpus(name: str = "wikipedia") -> list[str]:
    """An offline corpus of real English prose, from files the ``gensim`` wheel ships (LGPL-2.1 package).

    ``"wikipedia"`` (default): the 106 articles (the others are redirects) of gensim's shortened English
    Wikipedia dump (``enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2``, Anarchism ...
    Algorithm; text CC BY-SA 3.0). Markup is removed with gensim's ``filter_wiki``; a document is one article's
    prose paragraphs (lines of at least 8 words that are not headings, list items or tables), joined by
    ``"\\n"``, up to its References / See also section; 3 pages keep no prose. With gensim 4.4.0: 103 documents,
    2,579,756 characters, 408,015 words (``docs/text-corpus.md``).

    ``"lee-news"``: the Lee background corpus (``lee_background.cor``; Lee, Pincombe & Welsh 2005, Australian
    news), one article a line: 300 documents, 359,484 characters, 59,890 words. Small, for quick runs.

    Deterministic: the file's sha256 is checked, and the same gensim version gives the same documents. Raises
    :class:`CorpusError` naming the package to install when gensim is absent, an unknown ``name`` listing the
    valid ones, and a data file whose hash differs from the one recorded here.
    """
    if name not in DEFAULT_CORPORA:
        raise CorpusError(f"default corpus {name!r} is unknown; valid: {', '.join(DEFAULT_CORPORA)}")
    return list(_wikipedia() if name == "wikipedia" else _lee())


@functools.cache
def _lee() -> tuple[str, ...]:
    path = _gensim_file(LEE_FILE, LEE_SHA256)
    # One article a line (gensim's .cor layout), unlike load_corpus's blank-line-separated .txt.
    return tuple(line.strip() for line in _read_text(path).splitlines() if line.strip())


@functools.cache
def _wikipedia() -> tuple[str, ...]:
    path = _gensim_file(WIKIPEDIA_FILE, WIKIPEDIA_SHA256)
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki  # slow import (scipy): only when asked

    documents = []
    with bz2.open(path) as fh:
        for _title, markup, _page_id in extract_pages(fh):
            if markup.lstrip().upper().startswith("#REDIRECT"):
                continue
            paragraphs = _prose_paragraphs(filter_wiki(markup))
            if paragraphs:
                documents.append("\n".join(paragraphs))
    return tuple(documents)


def _prose_paragraphs(text: str) -> list[str]:
    paragraphs = []
    for raw in text.splitlines():
        line = " ".join(re.sub(r"'{2,}", "", raw).split())  # drop ''italic''/'''bold''' quotes, \xa0
        heading = _HEADING.fullmatch(line)
        if heading:
            if heading[1].lower() in _END_SECTIONS:
                break
            continue
        if line and line[0] not in "*#:;|!{}" and len(line.split()) >= _MIN_PARAGRAPH_WORDS:
            paragraphs.append(line)
    return paragraphs
