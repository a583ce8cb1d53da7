from pathlib import Path

import pytest

from progdistill.tasks.pcfg.grammar import (
    Grammar,
    GrammarError,
    Rule,
    Terminal,
    load_grammar,
    packaged_grammars,
    parse_grammar,
    random_grammar,
)

CFG3B_LEVELS = ["s", "p q r", "m n o", "j k l", "g h i", "d e f", "a b c"]
GOOD = "# toy\n\ns -> x y [0.25]\ns -> y x [0.75]\nx -> 'a' [1]\ny -> 'b' [0.5]\ny -> 'c' [0.5]\n"


def test_all_packaged_grammars_load_as_seven_layered_levels_of_three():
    assert packaged_grammars() == ("cfg3b", "cfg3f", "cfg3g", "cfg3h", "cfg3i")
    for name in packaged_grammars():
        g = load_grammar(name)
        assert g.name == name and g.start == "s" and g.terminals == ("a", "b", "c")
        assert g.num_levels == 7 and g.is_layered
        assert [len(g.nonterminals_at(level)) for level in range(7)] == [1, 3, 3, 3, 3, 3, 3]
        assert all(len(r.rhs) in (2, 3) for r in g.rules if g.level(r.lhs) < 6)
        assert [r.rhs for r in g.rules if g.level(r.lhs) == 6] == [(Terminal("a"),), (Terminal("b"),), (Terminal("c"),)]


def test_cfg3b_known_facts():
    g = load_grammar("cfg3b")
    assert [" ".join(g.nonterminals_at(level)) for level in range(7)] == CFG3B_LEVELS
    assert g.nonterminals == (
        "s",
        "p",
        "q",
        "r",
        "m",
        "n",
        "o",
        "j",
        "k",
        "l",
        "g",
        "h",
        "i",
        "d",
        "e",
        "f",
        "a",
        "b",
        "c",
    )
    assert len(g.rules) == 34
    assert g.rules_for("s") == (Rule("s", ("r", "q"), 0.5), Rule("s", ("q", "p"), 0.5))
    assert g.rules_for("f") == (Rule("f", ("c", "b", "a"), 1.0),)  # f is deterministic in cfg3b
    assert g.rules_for("a") == (Rule("a", (Terminal("a"),), 1.0),)


def test_round_trip_and_text_matches_the_files():
    for name in packaged_grammars():
        g = load_grammar(name)
        assert parse_grammar(g.to_text(header=f"{name}\nround trip")) == g
        source = Path(__file__).parents[3] / "progdistill" / "data" / "grammars" / f"{name}.txt"
        rule_lines = [ln for ln in source.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        assert g.to_text().splitlines() == rule_lines
        assert load_grammar(source) == g  # by path


def test_canonical_order_regroups_rules_by_level_then_name():
    interleaved = "s -> x y [0.25]\ny -> 'b' [0.5]\nx -> 'a' [1]\ns -> y x [0.75]\ny -> 'c' [0.5]\n"
    assert parse_grammar(interleaved) == parse_grammar(GOOD)
    assert parse_grammar(interleaved).to_text() == parse_grammar(GOOD).to_text()
    swapped = GOOD.replace("s -> x y [0.25]\ns -> y x [0.75]", "s -> y x [0.75]\ns -> x y [0.25]")
    assert parse_grammar(swapped) != parse_grammar(GOOD)  # order within a left-hand side counts
    assert parse_grammar("t -> 'a' [1]\n").start == "t"  # first production's left-hand side
    numbered = parse_grammar("s -> n10 n2 [1]\nn10 -> 'a' [1]\nn2 -> 'b' [1]\n")
    assert numbered.nonterminals == ("s", "n2", "n10")  # digit runs compare as numbers


@pytest.mark.parametrize(
    "text, line, words",
    [
        (GOOD + "x -> Q [1]\n", 8, "unknown symbol 'Q'"),
        (GOOD.replace("x y [0.25]", 'x "y" [0.25]'), 3, "unknown symbol"),
        (GOOD.replace("[0.75]", "[0.7]"), 4, "sum to 0.95"),
        (GOOD + "z -> 'a' [1]\n", 8, "'z' is unreachable"),
        (GOOD.replace("x -> 'a' [1]", "x -> w [1]"), 5, "'w' is used but has no rules"),
        (GOOD.replace("x -> 'a' [1]", "x -> 'a' 1"), 5, "malformed line"),
        (GOOD.replace("x -> 'a' [1]", "x 'a' [1]"), 5, "malformed line"),
        (GOOD.replace("[0.25]", "[zero]"), 3, "probability 'zero'"),
        (GOOD.replace("[0.25]", "[1.5]"), 3, "probability '1.5'"),
        (GOOD.replace("x -> 'a' [1]", "X -> 'a' [1]"), 5, "left-hand side 'X'"),
        (GOOD.replace("x -> 'a' [1]", "x -> [1]"), 5, "empty right-hand side"),
        (GOOD + "y -> 'b' [0.5]\n", 8, "duplicate production"),
    ],
)
def test_bad_input_names_file_line_and_allowed(text, line, words):
    with pytest.raises(GrammarError) as err:
        parse_grammar(text, source="toy.txt")
    message = str(err.value)
    assert words in message
    assert "allowed" in message
    assert f"toy.txt:line {line}:" in message


def test_non_productive_recursion_and_unknown_names():
    with pytest.raises(GrammarError, match=r"loop.txt:line 3: nonterminal 'x' derives no finite string"):
        parse_grammar("s -> 'a' [0.5]\ns -> x x [0.5]\nx -> x x [1]\n", source="loop.txt")
    with pytest.raises(GrammarError, match="no productions"):
        parse_grammar("# only a comment\n")
    with pytest.raises(GrammarError, match="cfg3b, cfg3f"):
        load_grammar("cfg3z")
    with pytest.raises(GrammarError, match="unknown nonterminal 'zz'"):
        load_grammar("cfg3b").rules_for("zz")


def test_programmatic_grammar_errors_name_the_rule():
    with pytest.raises(GrammarError, match=r"rule 's -> 'a' \[0.5\]'.*sum to 0.5"):
        Grammar(start="s", rules=(Rule("s", (Terminal("a"),), 0.5),))


def test_random_grammar_is_deterministic_valid_and_layered():
    g = random_grammar(levels=5, nonterminals_per_level=3, rules_per_nonterminal=2, seed=7)
    assert g == random_grammar(5, 3, 2, seed=7)
    assert g != random_grammar(5, 3, 2, seed=8)
    assert g.num_levels == 5 and g.is_layered and g.terminals == ("a", "b", "c")
    assert [len(g.nonterminals_at(level)) for level in range(5)] == [1, 3, 3, 3, 3]
    assert all(len(g.rules_for(s)) == 2 for s in g.nonterminals if g.level(s) < 4)
    assert all(len(r.rhs) in (2, 3) for r in g.rules if g.level(r.lhs) < 4)
    assert parse_grammar(g.to_text()) == g
    wide = random_grammar(
        levels=3, nonterminals_per_level=4, rules_per_nonterminal=3, rule_lengths=(2,), terminals=("x", "y"), seed=0
    )
    assert wide.terminals == ("x", "y") and all(len(r.rhs) == 2 for r in wide.rules if r.lhs not in "xy")


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(levels=1), "levels"),
        (dict(nonterminals_per_level=0), "nonterminals_per_level"),
        (dict(rule_lengths=(1, 2)), "rule_lengths"),
        (dict(terminals=("s",)), "terminals"),
        (dict(rules_per_nonterminal=100, rule_lengths=(2,)), "rules_per_nonterminal"),
    ],
)
def test_random_grammar_rejects_bad_arguments(kwargs, name):
    args = dict(levels=4, nonterminals_per_level=3, rules_per_nonterminal=2, seed=0) | kwargs
    with pytest.raises(GrammarError, match=rf"^{name}=.* is invalid"):
        random_grammar(**args)
