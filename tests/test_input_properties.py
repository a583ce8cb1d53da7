"""Property tests for the readers of outside input: grammar text and corpus files. Random and malformed input
ends in the module's own error (a ValueError naming where) or in a valid result, never in another exception."""

import json
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from progdistill.tasks.pcfg.grammar import Grammar, GrammarError, load_grammar, parse_grammar, random_grammar
from progdistill.tasks.text.corpus import CorpusError, load_corpus

SMALL = random_grammar(3, 2, 2, seed=1).to_text()
CFG3B = load_grammar("cfg3b").to_text()

# Pieces that grammar lines are made of, so random lines are often nearly valid.
pieces = st.sampled_from(
    [
        "s",
        "a",
        "b",
        "n1",
        "x_2",
        "A",
        "1a",
        "->",
        "-",
        ">",
        "'a'",
        "'b'",
        "''",
        "'a b'",
        "[1]",
        "[0.5]",
        "[0.25]",
        "[0.75]",
        "[0]",
        "[2]",
        "[-1]",
        "[nan]",
        "[inf]",
        "[1e-400]",
        "[x]",
        "[]",
        "[",
        "]",
        "#",
        " ",
        "\t",
    ]
)
lines = st.lists(pieces, min_size=0, max_size=8).map(" ".join) | st.text(max_size=20)


def mutate(text: str, edits: list[tuple[int, str]]) -> str:
    """Apply character edits to ``text``: at position p, insert (c != ''), or delete (c == '')."""
    for position, char in edits:
        p = position % (len(text) + 1)
        text = text[:p] + char + text[p:] if char else text[:p] + text[p + 1 :]
    return text


edits = st.lists(
    st.tuples(
        st.integers(0, 10**6),
        st.sampled_from(["", "'", "[", "]", "-", ">", " ", "\n", "#", "a", "0", ".", "5", "x", "\u00e9", "\x00"]),
    ),
    min_size=1,
    max_size=4,
)


def check_grammar_outcome(text: str) -> None:
    try:
        grammar = parse_grammar(text, source="random.txt", name="random")
    except GrammarError as exc:
        message = str(exc)
        assert re.search(r"random\.txt:line \d+", message) or message.startswith("random.txt: no productions"), message
        return
    assert isinstance(grammar, Grammar)
    assert parse_grammar(grammar.to_text(), source="again.txt") == grammar


@settings(max_examples=300, deadline=None)
@given(st.lists(lines, max_size=8).map("\n".join))
def test_random_grammar_text_is_a_grammar_or_a_grammar_error_naming_a_line(text):
    check_grammar_outcome(text)


@settings(max_examples=200, deadline=None)
@given(base=st.sampled_from([SMALL, CFG3B]), edits=edits)
def test_mutated_grammar_file_is_a_grammar_or_a_grammar_error_naming_a_line(base, edits):
    check_grammar_outcome(mutate(base, edits))


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=200))
def test_arbitrary_text_is_a_grammar_or_a_grammar_error(text):
    check_grammar_outcome(text)


def test_mutation_reaches_both_outcomes():
    # The generators above are only useful if they produce valid grammars as well as errors.
    outcomes = set()
    for position in range(0, len(SMALL), 7):
        try:
            parse_grammar(mutate(SMALL, [(position, " ")]))
            outcomes.add("grammar")
        except GrammarError:
            outcomes.add("error")
    assert outcomes == {"grammar", "error"}


# ----------------------------------------------------------------------------------------------------------
# Corpus files


def check_corpus_outcome(path, **kwargs):
    try:
        documents = load_corpus(path, **kwargs)
    except CorpusError as exc:
        assert str(path) in str(exc)
        return None
    assert isinstance(documents, list) and documents
    assert all(isinstance(d, str) and d.strip() for d in documents)
    return documents


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.binary(max_size=300) | st.text(max_size=200).map(lambda t: t.encode("utf-8")),
    suffix=st.sampled_from([".txt", ".jsonl"]),
)
def test_random_bytes_are_documents_or_a_corpus_error(tmp_path, data, suffix):
    path = tmp_path / f"random{suffix}"
    path.write_bytes(data)
    documents = check_corpus_outcome(path)
    if documents is not None and suffix == ".txt":
        # .txt documents are stripped and never span a blank line.
        text = data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
        assert all(d == d.strip() and not re.search(r"\n[ \t\f\v]*\n", d) and d in text for d in documents)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=5,
)
jsonl_lines = (
    st.dictionaries(st.sampled_from(["text", "body", "id"]), json_values, max_size=3).map(json.dumps)
    | json_values.map(json.dumps)
    | st.text(max_size=30)
    | st.just('{"text": "\\ud800"}')
    | st.just('{"text": "plain document"}')
    | st.just("")
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(jsonl_lines, max_size=6), field=st.sampled_from(["text", "body"]))
def test_random_jsonl_is_documents_or_a_corpus_error(tmp_path, rows, field):
    path = tmp_path / "random.jsonl"
    path.write_text("\n".join(rows), encoding="utf-8", errors="surrogatepass")
    documents = check_corpus_outcome(path, text_field=field)
    if documents is not None:
        expected = [json.loads(r)[field] for r in rows if r.strip()]
        assert documents == [d for d in expected if d.strip()]
