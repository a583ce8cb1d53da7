"""Probes of masked language models on grammar sentences (PAPER.md section 2, "n-gram probes" and
"Non-terminal probe"). Pure functions of a model and data; :mod:`progdistill.probes.runs` runs them over a run
directory.

n-gram dependence, for a selected position p of a sentence and a window of w = 2r + 1 tokens centred on p:

- *base*: the sentence with p alone replaced by MASK;
- ``M_robust``: also mask the whole window (p - r .. p + r): how much the prediction at p depends on the
  window (large = the model leans on the local n-gram);
- ``M_close``: keep only the window visible (every other terminal masked): how far the window alone is from
  the full context (small = the window suffices).

Each score is the total-variation distance ``0.5 * sum_v |P_base(v) - P_perturbed(v)|`` between the model's
output distributions at p; we report the median and quartiles over (sentence, position).

How a token is masked (``hiding``): ``"token"`` replaces it by MASK, as in training; ``"attention"`` also sets
its attention-mask entry to 0, so no other position can attend to it -- what the authors' released probe
does (their scores are the full L1 distance, twice the TV reported here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..tasks.pcfg import Vocabulary, pad_sentences

WINDOWS = (3, 5, 7)
HIDING = ("token", "attention")
FORWARD_BATCH = 256  # sequences per forward pass


@dataclass(frozen=True)
class NgramPositions:
    """Which (sentence, position) pairs are probed: ``sentence`` and ``position`` (index in the padded ids,
    BOS at 0), both (P,) int64."""

    sentence: np.ndarray
    position: np.ndarray


def probe_positions(maskable: torch.Tensor, per_sentence: int = 8) -> NgramPositions:
    """Up to ``per_sentence`` evenly spaced positions per row among the ``maskable`` ones ((B, L) bool: ordinary
    tokens, never BOS / EOS / [CLS] / [SEP] / PAD). The paper uses every 30th position of cfg3b's ~300-token
    sentences: ~10 per sentence."""
    if not (isinstance(per_sentence, int) and per_sentence >= 1):
        raise ValueError(f"per_sentence={per_sentence!r} is invalid: must be a positive integer")
    sentence, position = [], []
    for i, row in enumerate(maskable):
        candidates = row.nonzero().flatten().numpy()
        n = len(candidates)
        if n == 0:
            continue
        picks = np.unique(np.linspace(0, n - 1, num=min(per_sentence, n) + 2)[1:-1].round().astype(int))
        sentence += [i] * len(picks)
        position += candidates[picks].tolist()
    return NgramPositions(np.array(sentence, dtype=np.int64), np.array(position, dtype=np.int64))


@torch.no_grad()
def _distributions(model, inputs: torch.Tensor, attention: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """Softmax outputs (N, V) of ``model`` at position ``at[i]`` of row i of ``inputs`` (N, L)."""
    out = []
    for j in range(0, len(inputs), FORWARD_BATCH):
        logits = model(inputs[j:j + FORWARD_BATCH], attention[j:j + FORWARD_BATCH])
        rows = torch.arange(len(logits))
        out.append(torch.softmax(logits[rows, at[j:j + FORWARD_BATCH]].float(), dim=-1))
    return torch.cat(out)


@torch.no_grad()
def ngram_dependence(model, sentences: Sequence[Sequence[int]], vocab: Vocabulary,
                     windows: Sequence[int] = WINDOWS, per_sentence: int = 8,
                     device: str | torch.device = "cpu", hiding: str = "token") -> dict[str, dict[str, float]]:
    """M_robust and M_close of ``model`` (a masked LM: ids (B, L), mask (B, L) -> logits (B, L, V)) on
    grammar sentences.

    ``sentences``: token-id sequences (terminals only); ``windows``: odd window sizes >= 3. Returns
    ``{"M_robust/3": {"median", "q25", "q75", "mean"}, "M_close/3": {...}, ...}`` -- total-variation distances
    in [0, 1] -- and ``"cross_entropy"``, the same quantiles of the base prediction's cross-entropy (nats) on
    the true token. ``hiding``: "token" or "attention" (module docstring). Raises ``ValueError`` for an even or
    too small window, an unknown ``hiding`` or no sentences.
    """
    check_windows(windows)
    ids, attention = pad_sentences(list(sentences), vocab)
    maskable = ids < len(vocab.terminals)
    return ngram_dependence_at(model, ids, attention, maskable, vocab.mask, probe_positions(maskable, per_sentence),
                               windows, device, hiding)


@torch.no_grad()
def ngram_dependence_at(model, ids: torch.Tensor, attention: torch.Tensor, maskable: torch.Tensor, mask_id: int,
                        where: NgramPositions, windows: Sequence[int] = WINDOWS,
                        device: str | torch.device = "cpu", hiding: str = "token") -> dict[str, dict[str, float]]:
    """M_robust and M_close at given positions of any token sequences (grammar sentences or text).

    ``ids``, ``attention``, ``maskable``: (B, L) -- the sequences, their attention mask and which positions
    hold ordinary tokens (never special ones; only these are masked for M_close); ``mask_id``: the MASK id;
    ``where``: the (sequence, position) pairs to score; ``hiding``: "token" or "attention" (module docstring).
    Returns the dict of :func:`ngram_dependence`.
    """
    check_windows(windows)
    check_hiding(hiding)
    sent, pos = torch.from_numpy(where.sentence), torch.from_numpy(where.position)
    base = ids[sent]  # (P, L)
    att = attention[sent]
    variants = _hidden_variants(maskable, where, windows)
    was_training = model.training
    model.eval()
    masked = torch.cat(variants)
    inputs = torch.where(masked, mask_id, base.repeat(len(variants), 1)).to(device)
    att = att.repeat(len(variants), 1)
    if hiding == "attention":
        att = att.masked_fill(masked, 0)
    att = att.to(device)
    probs = _distributions(model, inputs, att, pos.repeat(len(variants)).to(device)).view(len(variants), len(base), -1)
    model.train(was_training)
    return _scores(probs, windows, base[torch.arange(len(base)), pos])


def _hidden_variants(maskable: torch.Tensor, where: NgramPositions, windows: Sequence[int]) -> list[torch.Tensor]:
    """Which positions each probe input hides, (P, L) bool each: the base (p alone), then for every window
    M_robust (p and the window) and M_close (p and every ordinary token outside the window)."""
    sent, pos = torch.from_numpy(where.sentence), torch.from_numpy(where.position)
    rows = torch.arange(len(sent))
    index = torch.arange(maskable.shape[1])[None, :]  # (1, L)
    terminal = maskable[sent].clone()
    terminal[rows, pos] = True  # the masked position itself
    hidden = torch.zeros_like(terminal)
    hidden[rows, pos] = True
    variants = [hidden]
    for w in windows:
        r = w // 2
        inside = (index >= (pos - r)[:, None]) & (index <= (pos + r)[:, None]) & terminal
        variants.append(hidden | inside)                    # M_robust: mask the window
        variants.append(hidden | (terminal & ~inside))      # M_close: only the window stays
    return variants


def _scores(probs: torch.Tensor, windows: Sequence[int], truth: torch.Tensor) -> dict[str, dict[str, float]]:
    """Quantiles of the TV distance of each variant's prediction from the base's (``probs``: (variants, P, V)),
    and of the base prediction's cross-entropy (nats) on the true tokens ``truth`` (P,)."""
    out = {}
    for k, w in enumerate(windows):
        for j, name in enumerate(("M_robust", "M_close")):
            tv = 0.5 * (probs[0] - probs[1 + 2 * k + j]).abs().sum(-1)
            out[f"{name}/{w}"] = _quantiles(tv.cpu().numpy())
    true_p = probs[0, torch.arange(len(truth)), truth.to(probs.device)].double().clamp(min=1e-300)
    out["cross_entropy"] = _quantiles((0.0 - true_p.log()).cpu().numpy())  # 0.0 - : no -0.0
    return out


def oracle_ngram_dependence_at(grammar, ids: torch.Tensor, maskable: torch.Tensor, where: NgramPositions,
                               windows: Sequence[int] = WINDOWS, progress: bool = False) -> dict[str, dict[str, float]]:
    """M_robust and M_close (PAPER.md section 2) of the Bayes-optimal masked LM of ``grammar`` -- the exact
    posterior of the token at p given the visible tokens (:func:`progdistill.tasks.pcfg_parser.masked_posterior`) --
    at the same inputs and positions as :func:`ngram_dependence_at`: where a model's probes end as its loss
    reaches the grammar's entropy.

    ``ids`` (B, L): grammar sentences laid out as ``BOS s EOS PAD...`` (:func:`~progdistill.tasks.masking.pad_sentences`);
    ``maskable`` (B, L): their terminal positions. Returns the dict of :func:`ngram_dependence` (its
    ``"cross_entropy"`` is the grammar's own uncertainty about a token with it alone hidden). Cost:
    (1 + 2 * len(windows)) * T inside passes per position, ~10 ms each for a 130-token sentence, ~0.1 s for
    cfg3b's ~300 tokens. Raises ``ValueError`` for a bad window, and when a sentence is not in the grammar's language.
    """
    from tqdm.auto import tqdm

    from ..tasks.pcfg_parser import masked_posterior

    check_windows(windows)
    variants = torch.stack(_hidden_variants(maskable, where, windows))  # (variants, P, L)
    probs = torch.zeros(len(variants), len(where.sentence), len(grammar.terminals), dtype=torch.float64)
    for i in tqdm(range(len(where.sentence)), desc="oracle n-gram probe", unit="position",
                  disable=None if progress else True):  # no bar without a terminal
        row = ids[where.sentence[i]]
        terminal = maskable[where.sentence[i]]
        tokens = row[terminal].numpy()  # the sentence; terminal positions are 1..n (BOS at 0)
        p = int(where.position[i]) - 1
        for v in range(len(variants)):
            hidden = (variants[v, i][terminal]).nonzero().flatten().tolist()
            probs[v, i] = torch.from_numpy(masked_posterior(grammar, tokens, hidden, p))
    return _scores(probs, windows, ids[torch.from_numpy(where.sentence), torch.from_numpy(where.position)])


def oracle_masked_lm_loss(grammar, sentences: Sequence[Sequence[int]], mask_rate: float, rng: np.random.Generator,
                          per_sentence: int = 8) -> dict[str, float]:
    """Cross-entropy (nats) of the grammar's Bayes-optimal masked LM when each token is hidden with probability
    ``mask_rate``: the floor of a masked LM's loss on the grammar (PAPER.md section 2's teacher loss; for BERT's
    80/10/10 rule, approximately:
    there 10% of the selected tokens stay visible and 10% are replaced by random terminals).

    For each sentence the hidden set is drawn from ``rng``; the exact posterior (inside algorithm) is scored at
    up to ``per_sentence`` of its hidden positions (an unbiased sample of them; cost T inside passes each).
    Returns ``{"mean", "std_error", "positions", "mask_rate"}`` (mean None when no token was hidden,
    std_error None with fewer than 2 positions). Raises ``ValueError`` for a mask rate outside
    (0, 1) or a sentence that is not in the grammar's language.
    """
    from ..tasks.pcfg_parser import masked_posterior

    if not 0 < mask_rate < 1:
        raise ValueError(f"mask_rate={mask_rate!r} is invalid: must lie in (0, 1)")
    nll = []
    for tokens in sentences:
        tokens = np.asarray(tokens)
        hidden = np.flatnonzero(rng.random(len(tokens)) < mask_rate)
        if not len(hidden):
            continue
        for p in rng.choice(hidden, size=min(per_sentence, len(hidden)), replace=False):
            posterior = masked_posterior(grammar, tokens, hidden.tolist(), int(p))
            nll.append(0.0 - np.log(max(posterior[tokens[p]], 1e-300)))
    nll = np.array(nll)
    return {"mean": float(nll.mean()) if len(nll) else None,  # None (JSON null): no token was hidden
            "std_error": float(nll.std(ddof=1) / np.sqrt(len(nll))) if len(nll) > 1 else None,
            "positions": int(len(nll)), "mask_rate": float(mask_rate)}


def check_windows(windows: Sequence[int]) -> None:
    """Raise ``ValueError`` unless ``windows`` is a non-empty list of distinct odd integers >= 3."""
    if len(windows) == 0:
        raise ValueError("windows is empty: give at least one window size, e.g. 3 5 7")
    if len(set(windows)) != len(windows):
        raise ValueError(f"windows {list(windows)} repeat a size; give each window size once, e.g. 3 5 7")
    for w in windows:
        if not (isinstance(w, int) and w >= 3 and w % 2 == 1):
            raise ValueError(f"window {w!r} is invalid: window sizes are odd integers >= 3 (the (2r+1)-gram "
                             "centred on the masked position)")


def check_hiding(hiding: str) -> None:
    """Raise ``ValueError`` unless ``hiding`` is one of :data:`HIDING`."""
    if hiding not in HIDING:
        raise ValueError(f"hiding={hiding!r} is invalid: use 'token' (MASK in the input) or 'attention' (MASK and "
                         "attention mask 0, as the authors' probe)")


def _quantiles(values: np.ndarray) -> dict[str, float]:
    q25, median, q75 = np.quantile(values, [0.25, 0.5, 0.75])
    return {"median": float(median), "q25": float(q25), "q75": float(q75), "mean": float(values.mean())}


@torch.no_grad()
def _hidden_features(model, sentences, vocab: Vocabulary, device) -> torch.Tensor:
    """Last-layer hidden states of every terminal token, in sentence order: (T, H)."""
    ids, attention = pad_sentences([s.tokens for s in sentences], vocab)
    feats = []
    for j in range(0, len(ids), FORWARD_BATCH):
        hidden = model.hidden_states(ids[j:j + FORWARD_BATCH].to(device),
                                     attention[j:j + FORWARD_BATCH].to(device)).float().cpu()
        feats.append(hidden[ids[j:j + FORWARD_BATCH] < len(vocab.terminals)])
    return torch.cat(feats)


def nonterminal_probe(model, train_sentences, test_sentences, vocab: Vocabulary, levels: Sequence[int],
                      steps: int = 200, lr: float = 0.05,
                      device: str | torch.device = "cpu") -> dict[int, float]:
    """Linear probe on the frozen last hidden layer predicting each token's ancestor nonterminal at each level.

    ``train_sentences`` / ``test_sentences``: :class:`~progdistill.tasks.pcfg_sampler.SentenceBatch` (tokens and
    ancestors); ``levels``: tree levels to probe (1 .. num_levels - 2 are informative; 0 is the root).
    A softmax-regression head per level is fitted with full-batch Adam for ``steps`` steps on standardized
    features (initial weights 0, so the result is deterministic). Returns {level: test accuracy in [0, 1]}.
    Raises ``ValueError`` for a level outside the trees.
    """
    num_levels = train_sentences.ancestors.shape[0]
    for lv in levels:
        if not (isinstance(lv, int) and 0 <= lv < num_levels):
            raise ValueError(f"level {lv!r} is invalid: the trees have levels 0..{num_levels - 1}")
    was_training = model.training
    model.eval()
    x_train = _hidden_features(model, train_sentences, vocab, device)
    x_test = _hidden_features(model, test_sentences, vocab, device)
    model.train(was_training)
    mean, std = x_train.mean(0), x_train.std(0).clamp(min=1e-6)
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    out = {}
    for lv in levels:
        y_train = torch.from_numpy(train_sentences.ancestors[lv].astype(np.int64))
        y_test = torch.from_numpy(test_sentences.ancestors[lv].astype(np.int64))
        classes = int(max(y_train.max(), y_test.max())) + 1
        weight = torch.zeros(x_train.shape[1], classes, requires_grad=True)
        bias = torch.zeros(classes, requires_grad=True)
        opt = torch.optim.Adam([weight, bias], lr=lr)
        for _ in range(steps):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(x_train @ weight + bias, y_train).backward()
            opt.step()
        with torch.no_grad():
            out[lv] = float(((x_test @ weight + bias).argmax(-1) == y_test).float().mean())
    return out
