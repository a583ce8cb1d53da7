"""Probabilistic context-free grammars of the cfg3 family (paper §2).

The grammars come from Allen-Zhu & Li, "Physics of Language Models: Part 1"; the five the paper uses ship in
``progdistill/data/grammars/``. Text format, one production a line::

    # comment lines and blank lines are ignored
    s -> r q [0.5]
    a -> 'a' [1]

Lower-case names (``[a-z][a-z0-9_]*``) are nonterminals, quoted symbols (``'a'``) are terminals, the number in
brackets is the rule's probability. The start symbol is the left-hand side of the first production.

A :class:`Grammar` is frozen and canonical: nonterminals are ordered by level (shortest derivation depth from
the start symbol; the start symbol is level 0), then by name (digit runs compared as numbers); terminals are
sorted, and a terminal's token id is its index in ``Grammar.terminals`` (a, b, c -> 0, 1, 2, as in the
paper's code). The cfg3 grammars are *layered*: a level-L nonterminal expands into level-(L+1) nonterminals
only, and only the last level (the preterminals a, b, c) expands into terminals, so every token sits at depth
``num_levels`` of its tree. cfg3b has 7 levels: s | p q r | m n o | j k l | g h i | d e f | a b c.

Every malformed grammar raises :class:`GrammarError` (a ``ValueError``) naming where (file and line, or the
rule) and what is allowed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

PROBABILITY_TOLERANCE = 1e-6
NONTERMINAL_PATTERN = re.compile(r"[a-z][a-z0-9_]*")
TERMINAL_PATTERN = re.compile(r"'([^'\s]+)'")
_LINE = re.compile(r"(?P<lhs>\S+)\s*->\s*(?P<rhs>.*?)\s*\[\s*(?P<prob>[^\]]*?)\s*\]")
_ALLOWED_LINE = "allowed: 'lhs -> rhs... [probability]', a '#' comment or a blank line"
_ALLOWED_SYMBOL = (
    "allowed: nonterminal names matching [a-z][a-z0-9_]* or terminals in single quotes like 'a' (not double quotes)"
)


class GrammarError(ValueError):
    """A grammar file, grammar or generator argument is invalid; the message names where and what is allowed."""


@dataclass(frozen=True)
class Terminal:
    """A terminal symbol on a right-hand side (written quoted, ``'a'``); nonterminals are plain strings."""

    name: str

    def __repr__(self) -> str:
        return f"'{self.name}'"


Symbol = str | Terminal


@dataclass(frozen=True)
class Rule:
    """One production ``lhs -> rhs [probability]``."""

    lhs: str
    rhs: tuple[Symbol, ...]
    probability: float

    def __str__(self) -> str:
        rhs = " ".join(repr(s) if isinstance(s, Terminal) else s for s in self.rhs)
        return f"{self.lhs} -> {rhs} [{_format_probability(self.probability)}]"


def _natural(name: str) -> tuple:
    # 'n1_10' after 'n1_2': digit runs compare as numbers.
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def _format_probability(p: float) -> str:
    # Shortest text that reads back to the same float; integers without '.0', like the data files.
    return str(int(p)) if float(p).is_integer() else repr(float(p))


@dataclass(frozen=True)
class Grammar:
    """A validated, canonical probabilistic context-free grammar.

    Construct from ``start`` and ``rules``; the rules are regrouped in the canonical nonterminal order, keeping
    the given order within each left-hand side (that order fixes what the sampler draws). Two grammars are equal
    when they have the same start and the same productions in the same order per left-hand side.
    ``where`` (not compared) maps a rule to its source location for error messages. ``name`` is not compared.

    Raises :class:`GrammarError` when: a rule has an empty right-hand side or a probability outside (0, 1];
    a production appears twice; a nonterminal used on a right-hand side (or the start) has no rules; the
    probabilities of one left-hand side do not sum to 1 within 1e-6; a nonterminal is unreachable from the
    start; a nonterminal derives no finite string (recursion without an exit).
    """

    start: str
    rules: tuple[Rule, ...]
    name: str = field(default="", compare=False)
    where: dict[Rule, str] | None = field(default=None, compare=False, repr=False)
    nonterminals: tuple[str, ...] = field(init=False, compare=False, repr=False)
    terminals: tuple[str, ...] = field(init=False, compare=False, repr=False)
    levels: tuple[int, ...] = field(init=False, compare=False, repr=False)

    def __post_init__(self):
        rules = tuple(self.rules)
        where = self.where or {}

        def loc(rule: Rule) -> str:
            return where.get(rule) or f"rule '{rule}'"

        by_lhs: dict[str, list[Rule]] = {}
        seen: set[tuple[str, tuple[Symbol, ...]]] = set()
        for rule in rules:
            if not rule.rhs:
                raise GrammarError(f"{loc(rule)}: empty right-hand side; allowed: one or more symbols")
            if not (isinstance(rule.probability, (int, float)) and 0 < rule.probability <= 1):
                raise GrammarError(
                    f"{loc(rule)}: probability {rule.probability!r} is invalid; allowed: a number in (0, 1]"
                )
            if (rule.lhs, rule.rhs) in seen:
                raise GrammarError(f"{loc(rule)}: duplicate production '{rule}'; allowed: each production once")
            seen.add((rule.lhs, rule.rhs))
            by_lhs.setdefault(rule.lhs, []).append(rule)

        if self.start not in by_lhs:
            raise GrammarError(f"start symbol {self.start!r} has no rules; allowed: a nonterminal with rules")
        for rule in rules:
            for s in rule.rhs:
                if not isinstance(s, Terminal) and s not in by_lhs:
                    raise GrammarError(
                        f"{loc(rule)}: nonterminal {s!r} is used but has no rules; allowed: "
                        f"nonterminals defined on a left-hand side ({', '.join(by_lhs)})"
                    )
        for lhs, group in by_lhs.items():
            total = math.fsum(r.probability for r in group)
            if abs(total - 1) > PROBABILITY_TOLERANCE:
                raise GrammarError(
                    f"{loc(group[-1])}: probabilities of {lhs!r} sum to {total!r}; allowed: "
                    f"a sum of 1 within {PROBABILITY_TOLERANCE:g}"
                )

        # Levels: breadth-first distance from the start symbol.
        level = {self.start: 0}
        frontier = [self.start]
        while frontier:
            nxt = []
            for lhs in frontier:
                for rule in by_lhs[lhs]:
                    for s in rule.rhs:
                        if not isinstance(s, Terminal) and s not in level:
                            level[s] = level[lhs] + 1
                            nxt.append(s)
            frontier = nxt
        for lhs, group in by_lhs.items():
            if lhs not in level:
                raise GrammarError(
                    f"{loc(group[0])}: nonterminal {lhs!r} is unreachable from the start symbol "
                    f"{self.start!r}; allowed: every nonterminal reachable from the start"
                )

        productive: set[str] = set()
        changed = True
        while changed:
            changed = False
            for rule in rules:
                if rule.lhs not in productive and all(isinstance(s, Terminal) or s in productive for s in rule.rhs):
                    productive.add(rule.lhs)
                    changed = True
        for lhs, group in by_lhs.items():
            if lhs not in productive:
                raise GrammarError(
                    f"{loc(group[0])}: nonterminal {lhs!r} derives no finite string; allowed: "
                    "every nonterminal has a derivation that ends in terminals"
                )

        order = tuple(sorted(by_lhs, key=lambda s: (level[s], _natural(s))))
        terminals = sorted({s.name for r in rules for s in r.rhs if isinstance(s, Terminal)})
        object.__setattr__(self, "rules", tuple(r for lhs in order for r in by_lhs[lhs]))
        object.__setattr__(self, "nonterminals", order)
        object.__setattr__(self, "terminals", tuple(terminals))
        object.__setattr__(self, "levels", tuple(level[s] for s in order))

    # ------------------------------------------------------------------------------------------------------
    @property
    def num_levels(self) -> int:
        """Number of nonterminal levels, the start symbol's level 0 included (7 for cfg3b)."""
        return max(self.levels) + 1

    def level(self, nonterminal: str) -> int:
        """Level of ``nonterminal`` (shortest derivation depth from the start symbol)."""
        return self.levels[self.nonterminal_id(nonterminal)]

    def nonterminal_id(self, nonterminal: str) -> int:
        """Index of ``nonterminal`` in :attr:`nonterminals` (the id the sampler and parser use)."""
        try:
            return self.nonterminals.index(nonterminal)
        except ValueError:
            raise GrammarError(
                f"unknown nonterminal {nonterminal!r}; allowed: {', '.join(self.nonterminals)}"
            ) from None

    def nonterminals_at(self, level: int) -> tuple[str, ...]:
        """The nonterminals of one level, in canonical order."""
        return tuple(s for s, lv in zip(self.nonterminals, self.levels) if lv == level)

    def rules_for(self, lhs: str) -> tuple[Rule, ...]:
        """The productions of ``lhs``, in canonical order."""
        self.nonterminal_id(lhs)
        return tuple(r for r in self.rules if r.lhs == lhs)

    @property
    def is_layered(self) -> bool:
        """True when every token sits at depth ``num_levels`` of every tree: a level-L nonterminal expands
        into level-(L+1) nonterminals, and only the last level into terminals (the cfg3 family)."""
        lv = dict(zip(self.nonterminals, self.levels))
        last = self.num_levels - 1
        for r in self.rules:
            for s in r.rhs:
                if isinstance(s, Terminal) and lv[r.lhs] != last:
                    return False
                if not isinstance(s, Terminal) and lv[s] != lv[r.lhs] + 1:
                    return False
        return True

    def to_text(self, header: str | None = None) -> str:
        """The grammar in the text format :func:`parse_grammar` reads, one production a line.

        ``header`` (optional) is written first as ``#`` comment lines. ``parse_grammar(g.to_text()) == g``.
        """
        lines = [f"# {h}" if h else "#" for h in header.splitlines()] if header else []
        lines += [str(r) for r in self.rules]
        return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------
# Reading


def parse_grammar(text: str, source: str = "<string>", name: str = "") -> Grammar:
    """Parse the text format (see the module docstring) into a :class:`Grammar`.

    ``source`` names the text in error messages (``source:line N``). Raises :class:`GrammarError` for a
    malformed line, an unknown symbol, a bad probability, and everything :class:`Grammar` rejects, naming the
    line of the offending production.
    """
    rules: list[Rule] = []
    where: dict[Rule, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        at = f"{source}:line {number}"
        match = _LINE.fullmatch(line)
        if not match:
            raise GrammarError(f"{at}: malformed line {line!r}; {_ALLOWED_LINE}")
        lhs = match["lhs"]
        if not NONTERMINAL_PATTERN.fullmatch(lhs):
            raise GrammarError(
                f"{at}: unknown left-hand side {lhs!r}; allowed: a nonterminal name matching [a-z][a-z0-9_]*"
            )
        if not match["rhs"]:
            raise GrammarError(f"{at}: empty right-hand side in {line!r}; {_ALLOWED_LINE}")
        rhs: list[Symbol] = []
        for token in match["rhs"].split():
            if NONTERMINAL_PATTERN.fullmatch(token):
                rhs.append(token)
            elif t := TERMINAL_PATTERN.fullmatch(token):
                rhs.append(Terminal(t[1]))
            else:
                raise GrammarError(f"{at}: unknown symbol {token!r}; {_ALLOWED_SYMBOL}")
        try:
            probability = float(match["prob"])
        except ValueError:
            probability = math.nan
        if not 0 < probability <= 1:
            raise GrammarError(f"{at}: probability {match['prob']!r} is invalid; allowed: a number in (0, 1]")
        rule = Rule(lhs, tuple(rhs), probability)
        if rule in where:
            raise GrammarError(
                f"{at}: duplicate production '{rule}' (first at {where[rule]}); allowed: each production once"
            )
        where[rule] = at
        rules.append(rule)
    if not rules:
        raise GrammarError(f"{source}: no productions; {_ALLOWED_LINE}")
    return Grammar(start=rules[0].lhs, rules=tuple(rules), name=name, where=where)


def packaged_grammars() -> tuple[str, ...]:
    """Names of the grammars shipped in ``progdistill/data/grammars`` (cfg3b, cfg3f, cfg3g, cfg3h, cfg3i)."""
    folder = resources.files("progdistill") / "data" / "grammars"
    return tuple(sorted(p.name[:-4] for p in folder.iterdir() if p.name.endswith(".txt")))


def load_grammar(name_or_path: str | Path) -> Grammar:
    """Load a packaged grammar by name (``"cfg3b"``) or a grammar file by path.

    Raises :class:`GrammarError` for an unknown name (listing the packaged ones) or an invalid file.
    """
    text = str(name_or_path)
    if isinstance(name_or_path, str) and text in packaged_grammars():
        resource = resources.files("progdistill") / "data" / "grammars" / f"{text}.txt"
        return parse_grammar(resource.read_text(encoding="utf-8"), source=f"{text}.txt", name=text)
    path = Path(name_or_path)
    if not path.is_file():
        raise GrammarError(
            f"grammar {text!r} is neither a packaged grammar nor a file; allowed: "
            f"{', '.join(packaged_grammars())} or a path to a grammar .txt file"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise GrammarError(
            f"{path}: not valid UTF-8 (byte {exc.start}: {exc.reason}); allowed: a UTF-8 grammar text file"
        ) from None
    return parse_grammar(text, source=str(path), name=path.stem)


# ----------------------------------------------------------------------------------------------------------
# Generating


def _check(condition: bool, name: str, value, allowed: str) -> None:
    if not condition:
        raise GrammarError(f"{name}={value!r} is invalid: {allowed}")


def random_grammar(
    levels: int,
    nonterminals_per_level: int,
    rules_per_nonterminal: int,
    rule_lengths: tuple[int, ...] = (2, 3),
    terminals: tuple[str, ...] = ("a", "b", "c"),
    seed: int = 0,
) -> Grammar:
    """A random layered grammar of the cfg3 family, deterministic in ``seed``.

    ``levels`` counts nonterminal levels as :attr:`Grammar.num_levels` does: the start symbol ``s`` (level 0),
    ``levels - 2`` levels of ``nonterminals_per_level`` nonterminals named ``n{level}_{i}``, then one
    preterminal per terminal (named like it, ``a -> 'a' [1]``). Each non-preterminal gets
    ``rules_per_nonterminal`` distinct productions whose length is drawn uniformly from ``rule_lengths`` and
    whose symbols are drawn uniformly from the next level; a level is redrawn until every next-level symbol is
    used. Probabilities are uniform(1, 2) draws normalised per left-hand side (every rule keeps at least a
    third of its uniform share). cfg3b's shape is ``random_grammar(7, 3, 2)``; mean sentence length grows
    roughly like mean(rule_lengths) ** (levels - 1), e.g. ~40 tokens for ``random_grammar(5, 3, 2)``.

    Raises :class:`GrammarError` naming the argument for invalid arguments.
    """
    _check(isinstance(levels, int) and levels >= 2, "levels", levels, "must be an integer >= 2")
    _check(
        isinstance(nonterminals_per_level, int) and nonterminals_per_level >= 1,
        "nonterminals_per_level",
        nonterminals_per_level,
        "must be an integer >= 1",
    )
    _check(
        isinstance(rules_per_nonterminal, int) and rules_per_nonterminal >= 1,
        "rules_per_nonterminal",
        rules_per_nonterminal,
        "must be an integer >= 1",
    )
    _check(
        len(rule_lengths) > 0 and all(isinstance(k, int) and 2 <= k <= 8 for k in rule_lengths),
        "rule_lengths",
        rule_lengths,
        "must be a non-empty tuple of integers in 2..8 (no unary rules)",
    )
    _check(
        len(terminals) > 0
        and len(set(terminals)) == len(terminals)
        and all(isinstance(t, str) and re.fullmatch(r"[a-z][a-z0-9]*", t) and t != "s" for t in terminals),
        "terminals",
        terminals,
        "must be distinct names matching [a-z][a-z0-9]*, other than 's'",
    )
    _check(isinstance(seed, int) and seed >= 0, "seed", seed, "must be an integer >= 0")

    rng = np.random.default_rng(seed)
    names = [["s"]] + [[f"n{lv}_{i}" for i in range(nonterminals_per_level)] for lv in range(1, levels - 1)]
    names.append(list(terminals))
    lengths = sorted(set(rule_lengths))
    rules: list[Rule] = []
    for lv in range(levels - 1):
        parents, children = names[lv], names[lv + 1]
        capacity = sum(len(children) ** k for k in lengths)
        _check(
            capacity >= rules_per_nonterminal,
            "rules_per_nonterminal",
            rules_per_nonterminal,
            f"at most {capacity} distinct productions exist over {len(children)} symbols",
        )
        _check(
            len(parents) * rules_per_nonterminal * max(lengths) >= len(children),
            "nonterminals_per_level",
            nonterminals_per_level,
            f"too few productions to use all {len(children)} symbols of level {lv + 1}",
        )
        for _attempt in range(1000):
            level_rules = []
            for lhs in parents:
                rhss: list[tuple[str, ...]] = []
                while len(rhss) < rules_per_nonterminal:
                    k = int(rng.choice(lengths))
                    rhs = tuple(children[int(j)] for j in rng.integers(0, len(children), size=k))
                    if rhs not in rhss:
                        rhss.append(rhs)
                weights = rng.uniform(1.0, 2.0, size=len(rhss))
                probabilities = weights / weights.sum()
                level_rules += [Rule(lhs, rhs, float(p)) for rhs, p in zip(rhss, probabilities)]
            if {s for r in level_rules for s in r.rhs} == set(children):
                break
        else:
            raise GrammarError(
                f"could not use every symbol of level {lv + 1} in 1000 draws; "
                "allowed: more nonterminals_per_level * rules_per_nonterminal"
            )
        rules += level_rules
    rules += [Rule(t, (Terminal(t),), 1.0) for t in terminals]
    return Grammar(start="s", rules=tuple(rules), name=f"random-{levels}x{nonterminals_per_level}-seed{seed}")
