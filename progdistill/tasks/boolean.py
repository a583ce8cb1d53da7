"""Boolean functions of a hidden support on uniform bits: the staircase (and its high-leap variant) and sparse
majority, the tasks beside sparse parity in the atlas of which task structures benefit from distillation.

x is uniform on {-1, +1}^n and the label depends on k hidden support coordinates S = (s_1, ..., s_k) only
(sorted; the first k coordinates, or k drawn from ``support_seed``), as in :mod:`progdistill.tasks.parity`.

- **Staircase** (Abbe et al. 2021, "The staircase property"): f(x) = sum over the terms' degrees d of the
  prefix monomial x_{s_1} x_{s_2} ... x_{s_d}. With ``leap`` = 1 the degrees are 1, 2, ..., k: every term
  adds one coordinate to the one before, so SGD can climb the staircase degree by degree. With ``leap`` = L
  the degrees are k - (m - 1) L, ..., k - L, k (m terms, the first of degree 1..L): each new term adds L
  coordinates at once, which SGD must find jointly, as in a degree-L parity (the leap of Abbe et al. 2023,
  "SGD learning on neural networks: leap complexity"). E.g. k = 7, L = 3: f = x1 + x1x2x3x4 + x1...x7.
- **Sparse majority**: the sign of x_{s_1} + ... + x_{s_k} (k odd): every support coordinate correlates
  with the label on its own (the degree-1 Fourier weight of majority is ~2/pi), so SGD needs no search --
  the negative control.

Labels are classes of the sign of f. The staircase's number of terms m must be odd: then f is a sum of an
odd number of +-1 terms and never 0, so there is no tie to break, and flipping x_{s_1} (in every term)
negates f, so the two classes are exactly balanced. An even m has ties on a large set (f = A (1 + B) is 0
for half of all inputs when m = 2), and any rule for them gives weight to monomials outside the staircase's
nested chain (class 1 iff f >= 0 is 1/2 + A/2 - B/2 + AB/2 in +-1 form: B alone, no leap), so it is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from progdistill.core.config import check, register
from progdistill.tasks.parity import SupportTask


@register("task")
@dataclass(frozen=True)
class StaircaseTask(SupportTask):
    """The staircase f(x) = sum_{d in degrees} x_{s_1} ... x_{s_d} (Abbe et al. 2021), as the class of its sign.

    ``degrees`` = (k - (m - 1) leap, ..., k - leap, k), the m = ceil(k / leap) terms' degrees: 1, 2, ..., k
    for ``leap`` = 1, (1, 4, 7) for k = 7 and leap = 3. Class 1 iff f(x) > 0; m must be odd, so that f is never
    0 (see the module docstring for why ties are refused rather than broken). Raises ``ConfigError`` for
    k > n, a leap outside 1..k, or an even number of terms.
    """

    kind: ClassVar[str] = "staircase"

    n: int = 20
    k: int = 5
    leap: int = 1

    def __post_init__(self):
        super().__post_init__()
        check(
            isinstance(self.leap, int) and not isinstance(self.leap, bool) and 1 <= self.leap <= self.k,
            "task.leap",
            self.leap,
            f"must be an integer in 1..k (k={self.k}): the degree added by each term of the staircase",
        )
        terms = -(-self.k // self.leap)
        check(
            terms % 2 == 1,
            "task.leap",
            self.leap,
            f"gives {terms} terms of degrees {self._degrees()} with k={self.k}; the number of terms "
            f"ceil(k / leap) must be odd so that the sign of f has no ties (e.g. k={self.k + self.leap} or "
            f"k={self.k - self.leap} with this leap)"
            if self.k > self.leap
            else f"gives {terms} terms; ceil(k / leap) must be odd",
        )

    def _degrees(self) -> tuple[int, ...]:
        return tuple(range(self.k, 0, -self.leap))[::-1]

    @property
    def degrees(self) -> tuple[int, ...]:
        """The degrees of the staircase's terms, ascending; the last is k."""
        return self._degrees()

    @property
    def terms(self) -> tuple[tuple[int, ...], ...]:
        """The support subsets of the terms, one per degree: the first d support coordinates (0-based)."""
        support = self.support
        return tuple(support[:d] for d in self.degrees)

    def staircase(self, x: torch.Tensor) -> torch.Tensor:
        """f(x): x (..., n) in {-1, +1} -> float32 (...), an odd integer in [-m, m] (m terms)."""
        prefix = x[..., list(self.support)].cumprod(dim=-1)  # (..., k): x_{s_1} ... x_{s_j} for j = 1..k
        return prefix[..., [d - 1 for d in self.degrees]].sum(dim=-1)

    def labels(self, x: torch.Tensor) -> torch.Tensor:
        """Class of the sign of the staircase: x (..., n) in {-1, +1} -> int64 (...), 1 iff f(x) > 0."""
        return (self.staircase(x) > 0).long()


@register("task")
@dataclass(frozen=True)
class SparseMajorityTask(SupportTask):
    """Majority of the k support coordinates: class 1 iff x_{s_1} + ... + x_{s_k} > 0. k must be odd (no ties).
    Raises ``ConfigError`` for k > n or an even k."""

    kind: ClassVar[str] = "sparse-majority"

    n: int = 20
    k: int = 5

    def __post_init__(self):
        super().__post_init__()
        check(self.k % 2 == 1, "task.k", self.k, "must be odd, so that the majority of k bits has no ties")

    def labels(self, x: torch.Tensor) -> torch.Tensor:
        """Class of the majority of the support: x (..., n) in {-1, +1} -> int64 (...), 1 iff sum x_S > 0."""
        return (x[..., list(self.support)].sum(dim=-1) > 0).long()
