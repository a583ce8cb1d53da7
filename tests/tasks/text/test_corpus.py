import hashlib
import importlib.util
import json
import os
import sys
import types

import pytest

from progdistill.tasks.text.corpus import CorpusError, corpus_summary, default_corpus, load_corpus, load_hf_dataset


def snapshot(root):
    """Every file under ``root`` with its bytes' hash and modification time: to check nothing was written."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            with open(p, "rb") as fh:
                out[p] = (hashlib.sha256(fh.read()).hexdigest(), os.stat(p).st_mtime_ns)
    return out


# ----------------------------------------------------------------------------------------------------------
# Each input kind


def test_txt_documents_are_separated_by_blank_lines(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("\ufeffFirst doc, line one.\nLine two.\n\n\n  \nSecond doc.\r\n\r\nThird\tdoc.  \n", encoding="utf-8")
    assert load_corpus(f) == ["First doc, line one.\nLine two.", "Second doc.", "Third\tdoc."]
    assert load_corpus(str(f)) == load_corpus(f)


def test_directory_reads_txt_files_recursively_in_sorted_order(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.txt").write_text("from b/z", encoding="utf-8")
    (tmp_path / "a.txt").write_text("from a, one\n\nfrom a, two", encoding="utf-8")
    (tmp_path / "b" / "c.TXT").write_text("from b/c", encoding="utf-8")
    (tmp_path / "empty.txt").write_text("\n\n", encoding="utf-8")
    (tmp_path / "notes.md").write_text("ignored", encoding="utf-8")
    assert load_corpus(tmp_path) == ["from a, one", "from a, two", "from b/c", "from b/z"]


def test_jsonl_reads_the_named_field(tmp_path):
    f = tmp_path / "d.jsonl"
    lines = [
        json.dumps({"id": 1, "body": "Alpha beta.\n\nGamma."}),
        "",
        json.dumps({"body": "   ", "id": 2}),
        json.dumps({"body": "caf\u00e9 \u2603", "text": "other"}),
    ]
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert load_corpus(f, text_field="body") == ["Alpha beta.\n\nGamma.", "caf\u00e9 \u2603"]


def test_corpus_summary_counts_documents_characters_and_words():
    assert corpus_summary(["a bc  d", "e\nf"]) == {"documents": 2, "characters": 10, "words": 5}
    assert corpus_summary([]) == {"documents": 0, "characters": 0, "words": 0}


# ----------------------------------------------------------------------------------------------------------
# Bad input


def test_missing_path(tmp_path):
    with pytest.raises(CorpusError, match=r"nope\.txt: no such file or directory"):
        load_corpus(tmp_path / "nope.txt")


@pytest.mark.parametrize("content", ["", "\n \n\t\n"])
def test_empty_file(tmp_path, content):
    f = tmp_path / "e.txt"
    f.write_text(content, encoding="utf-8")
    with pytest.raises(CorpusError, match=r"e\.txt: file holds no text"):
        load_corpus(f)


def test_empty_jsonl_file(tmp_path):
    f = tmp_path / "e.jsonl"
    f.write_text(json.dumps({"text": " "}) + "\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"e\.jsonl: file holds no text"):
        load_corpus(f)


def test_empty_directory(tmp_path):
    with pytest.raises(CorpusError, match="directory holds no .txt files") as info:
        load_corpus(tmp_path)
    assert str(tmp_path) in str(info.value)
    (tmp_path / "x.txt").write_text("  \n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"directory holds no text \(its 1 \.txt files"):
        load_corpus(tmp_path)


def test_jsonl_line_without_the_field_names_line_field_and_present_fields(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"text": "ok"}) + "\n\n" + json.dumps({"title": "t", "body": "b"}) + "\n", encoding="utf-8")
    with pytest.raises(CorpusError) as info:
        load_corpus(f)
    assert str(info.value) == f"{f}:line 3: no field 'text'; the line has fields: 'title', 'body'"


def test_jsonl_invalid_json_names_the_line(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"text": "ok"}\n{"text": "unterminated}\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"d\.jsonl:line 2: not valid JSON \(Unterminated string"):
        load_corpus(f)


@pytest.mark.parametrize("line, kind", [("[1, 2]", "list"), ('"text"', "str"), ("3", "int")])
def test_jsonl_line_that_is_not_an_object(tmp_path, line, kind):
    f = tmp_path / "d.jsonl"
    f.write_text(line + "\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=rf"d\.jsonl:line 1: a JSON {kind}, not an object"):
        load_corpus(f)


def test_jsonl_field_that_is_not_a_string(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"text": ["a"]}\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"line 1: field 'text' holds a JSON list; allowed: a string"):
        load_corpus(f)


def test_jsonl_lone_surrogate_is_rejected(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"text": "ab\\ud800c"}\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"line 1: text holds a lone surrogate '\\ud800' at character 2"):
        load_corpus(f)


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_invalid_utf8_reports_path_byte_offset_and_line(tmp_path, suffix):
    good = '{"text": "caf\u00e9"}\n' if suffix == ".jsonl" else "caf\u00e9 ok\n"
    prefix = good.encode("utf-8") * 3  # multi-byte characters before the bad byte
    f = tmp_path / f"bad{suffix}"
    f.write_bytes(prefix + b"\xff rest\n")
    with pytest.raises(CorpusError) as info:
        load_corpus(f)
    offset = len(prefix)
    assert str(info.value).startswith(f"{f}: not valid UTF-8: byte 0xff at byte offset {offset} (line 4)")


def test_invalid_utf8_inside_a_directory_names_the_file(tmp_path):
    (tmp_path / "a.txt").write_text("fine", encoding="utf-8")
    (tmp_path / "b.txt").write_bytes(b"ab\xc3(")  # a truncated two-byte sequence at offset 2
    with pytest.raises(CorpusError, match=r"b\.txt: not valid UTF-8: byte 0xc3 at byte offset 2 \(line 1\)"):
        load_corpus(tmp_path)


@pytest.mark.parametrize("name", ["data.csv", "data.json", "README"])
def test_unsupported_extension(tmp_path, name):
    f = tmp_path / name
    f.write_text("text", encoding="utf-8")
    with pytest.raises(
        CorpusError, match="unsupported extension.*allowed: a .txt file, a .jsonl file or a directory"
    ) as info:
        load_corpus(f)
    assert str(f) in str(info.value)


def test_bad_arguments():
    with pytest.raises(CorpusError, match="source=3 is invalid"):
        load_corpus(3)
    with pytest.raises(CorpusError, match="text_field='' is invalid"):
        load_corpus("x.jsonl", text_field="")


def test_nothing_on_disk_changes(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.txt").write_text("one\n\ntwo", encoding="utf-8")
    (tmp_path / "d.jsonl").write_text('{"text": "x"}\n{"nope": 1}\n', encoding="utf-8")
    (tmp_path / "bad.txt").write_bytes(b"\xfe\xff")
    (tmp_path / "e.csv").write_text("a,b", encoding="utf-8")
    before = snapshot(tmp_path)
    load_corpus(tmp_path / "sub")
    for bad in ("d.jsonl", "bad.txt", "e.csv", "missing.txt"):
        with pytest.raises(CorpusError):
            load_corpus(tmp_path / bad)
    with pytest.raises(CorpusError):
        load_corpus(tmp_path)  # bad.txt is part of the directory
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------------------------------------
# Hugging Face datasets (a fake module: tests never touch the network)


class FakeDataset:
    def __init__(self, rows):
        self.rows = rows
        self.column_names = list(rows[0]) if rows else []

    def __getitem__(self, column):
        return [row[column] for row in self.rows]


def fake_datasets(monkeypatch, load):
    module = types.ModuleType("datasets")
    module.load_dataset = load
    monkeypatch.setitem(sys.modules, "datasets", module)


def test_hf_dataset_missing_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    with pytest.raises(CorpusError, match=r"pip install .progdistill\[datasets\]."):
        load_hf_dataset("wikitext", "wikitext-2-raw-v1")


def test_hf_dataset_offline_failure_says_offline_and_suggests_a_local_path(monkeypatch):
    def load(name, config=None, split=None):
        raise ConnectionError("Couldn't reach 'wikitext' on the Hub (LocalEntryNotFoundError)")

    fake_datasets(monkeypatch, load)
    with pytest.raises(CorpusError) as info:
        load_hf_dataset("wikitext", "wikitext-2-raw-v1", split="validation")
    message = str(info.value)
    assert "'wikitext'" in message and "cannot be loaded offline" in message
    assert "local path" in message and "load_corpus" in message and "ConnectionError" in message


def test_hf_dataset_loads_the_text_column(monkeypatch):
    calls = []

    def load(name, config=None, split=None):
        calls.append((name, config, split))
        return FakeDataset([{"text": "Hello there."}, {"text": " \n"}, {"text": "General Kenobi."}])

    fake_datasets(monkeypatch, load)
    assert load_hf_dataset("wikitext", "wikitext-2-raw-v1", split="test") == ["Hello there.", "General Kenobi."]
    assert calls == [("wikitext", "wikitext-2-raw-v1", "test")]


def test_hf_dataset_missing_column_lists_columns(monkeypatch):
    fake_datasets(monkeypatch, lambda name, config=None, split=None: FakeDataset([{"title": "a", "body": "b"}]))
    with pytest.raises(CorpusError, match=r"no column 'text'; its columns: 'title', 'body'"):
        load_hf_dataset("x")


# ----------------------------------------------------------------------------------------------------------
# The offline default corpus (gensim's Wikipedia sample; docs/text-corpus.md)

needs_gensim = pytest.mark.skipif(
    importlib.util.find_spec("gensim") is None,
    reason="the default corpus ships in gensim: pip install 'progdistill[text]'",
)


@needs_gensim
def test_default_corpus_is_the_documented_wikipedia_sample():
    docs = default_corpus()
    summary = corpus_summary(docs)
    # Documented in default_corpus and docs/text-corpus.md (gensim 4.4.0); filter_wiki may shift a few words
    # between gensim versions, the article count cannot.
    assert summary["documents"] == 103
    assert abs(summary["words"] - 408_015) <= 0.01 * 408_015
    assert abs(summary["characters"] - 2_579_756) <= 0.01 * 2_579_756
    assert docs[0].startswith("Anarchism is a political philosophy that advocates self-governed societies")
    assert docs[-1].startswith("Flow chart of an algorithm (Euclid's algorithm)")  # its image caption
    assert all(isinstance(d, str) and d == d.strip() and "[[" not in d and "{{" not in d for d in docs)
    assert "'''" not in "".join(docs)
    assert default_corpus() == docs and default_corpus() is not docs  # same documents, a fresh list


@needs_gensim
def test_default_corpus_lee_news():
    docs = default_corpus("lee-news")
    assert corpus_summary(docs) == {"documents": 300, "characters": 359_484, "words": 59_890}
    assert docs[0].startswith(
        "Hundreds of people have been forced to vacate their homes in the Southern Highlands of New South Wales"
    )


def test_default_corpus_unknown_name():
    with pytest.raises(CorpusError, match="default corpus 'books' is unknown; valid: wikipedia, lee-news"):
        default_corpus("books")


def test_default_corpus_without_gensim_names_the_package(monkeypatch):
    from importlib import metadata

    from progdistill.tasks.text import corpus

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(corpus.metadata, "distribution", missing)
    monkeypatch.setattr(corpus, "_wikipedia", corpus._wikipedia.__wrapped__)  # bypass a cached parse
    corpus._gensim_file.cache_clear()
    try:
        with pytest.raises(
            CorpusError,
            match=r"'gensim' package, which is not installed: pip install "
            r"'progdistill\[text\]'",
        ):
            default_corpus()
    finally:
        corpus._gensim_file.cache_clear()
