"""The monomial-correlation probe of sparse parity (paper §1, "Mechanism").

For a subset T of the n coordinates, the monomial (parity character) chi_T(x) = prod_{i in T} x_i, and

    corr(T) = | E_x[ chi_T(x) * p(class 1 | x) ] |,    x uniform on {-1, +1}^n,

estimated on fresh samples. *In-support* subsets are all subsets of the task's support S of a given degree;
*off-support* subsets are random subsets of the same degree that are not subsets of S. A mid-transition
teacher correlates with low-degree in-support monomials (degree 1 spikes to ~0.1) while off-support ones stay
at the sampling noise; a perfect parity predictor p = (1 + chi_S) / 2 has corr(S) = 0.5 and 0 elsewhere.

The estimate is vectorised over subsets: a (S_total, n) 0/1 membership matrix turns the parity of the
number of -1 entries of x inside every T into one matrix product, chi = 1 - 2 * ((x < 0) @ M^T mod 2), and
the correlations of a batch are one more product, p @ chi (computed as sum(p) - 2 p @ parity). No Python loop
runs over subsets or samples.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from progdistill.core.config import ConfigError
from progdistill.core.files import atomic_write_json, atomic_write_text
from progdistill.distill.phases import detect_transition
from progdistill.experiment import ExperimentConfig
from progdistill.probes.jobs import PROBE_SEED, model_jobs, refresh_report, run_jobs
from progdistill.probes.monomials_figure import monomial_figure
from progdistill.store.lock import RunLock
from progdistill.store.report import save_figure
from progdistill.store.rundir import RunDir
from progdistill.store.trajectory import Trajectory
from progdistill.tasks.parity import ParityTask

Subset = tuple[int, ...]
ENUMERATE_LIMIT = 50_000  # enumerate all C(n, d) subsets below this many; rejection-sample above


# ----------------------------------------------------------------------------------------------------------
# Results


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


@dataclass(frozen=True)
class DegreeCorrelations:
    """Correlations of one degree d: ``in_support[j]`` = corr(``in_support_subsets[j]``), likewise for
    off-support. Subsets are sorted tuples of 0-based coordinates. Summary statistics are None when their
    list is empty (there are no off-support subsets when n = k)."""

    degree: int
    in_support_subsets: tuple[Subset, ...]
    in_support: tuple[float, ...]
    off_support_subsets: tuple[Subset, ...]
    off_support: tuple[float, ...]

    @property
    def in_support_mean(self) -> float | None:
        return _mean(self.in_support)

    @property
    def in_support_max(self) -> float | None:
        return max(self.in_support, default=None)

    @property
    def off_support_mean(self) -> float | None:
        return _mean(self.off_support)

    @property
    def off_support_std(self) -> float | None:
        """Population std (ddof = 0) of the off-support correlations."""
        return statistics.pstdev(self.off_support) if self.off_support else None

    @property
    def off_support_max(self) -> float | None:
        return max(self.off_support, default=None)

    def stats(self) -> dict[str, float | None]:
        return {
            "in_support_mean": self.in_support_mean,
            "in_support_max": self.in_support_max,
            "off_support_mean": self.off_support_mean,
            "off_support_std": self.off_support_std,
            "off_support_max": self.off_support_max,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "degree": self.degree,
            "in_support": [
                {"subset": list(t), "correlation": c} for t, c in zip(self.in_support_subsets, self.in_support)
            ],
            "off_support": [
                {"subset": list(t), "correlation": c} for t, c in zip(self.off_support_subsets, self.off_support)
            ],
            **self.stats(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DegreeCorrelations:
        return cls(
            degree=d["degree"],
            in_support_subsets=tuple(tuple(e["subset"]) for e in d["in_support"]),
            in_support=tuple(float(e["correlation"]) for e in d["in_support"]),
            off_support_subsets=tuple(tuple(e["subset"]) for e in d["off_support"]),
            off_support=tuple(float(e["correlation"]) for e in d["off_support"]),
        )


@dataclass(frozen=True)
class MonomialCorrelations:
    """The probe's result for one model: one :class:`DegreeCorrelations` per probed degree, ascending."""

    n: int
    support: Subset
    num_samples: int
    degrees: tuple[DegreeCorrelations, ...]

    def degree(self, d: int) -> DegreeCorrelations:
        for entry in self.degrees:
            if entry.degree == d:
                return entry
        raise KeyError(f"degree {d} was not probed; probed: {[e.degree for e in self.degrees]}")

    def summary(self) -> dict[str, float | None]:
        """Flat statistics for a metrics line: ``{"degree1/in_support_mean": ..., ...}``."""
        return {f"degree{e.degree}/{k}": v for e in self.degrees for k, v in e.stats().items()}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``json.dumps`` accepts it); :meth:`from_dict` reads it back to an equal result."""
        return {
            "n": self.n,
            "support": list(self.support),
            "num_samples": self.num_samples,
            "degrees": [e.to_dict() for e in self.degrees],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MonomialCorrelations:
        return cls(
            n=d["n"],
            support=tuple(d["support"]),
            num_samples=d["num_samples"],
            degrees=tuple(DegreeCorrelations.from_dict(e) for e in d["degrees"]),
        )


# ----------------------------------------------------------------------------------------------------------
# Subsets and monomials


def membership_matrix(subsets: Sequence[Subset], n: int) -> torch.Tensor:
    """0/1 float32 matrix of shape (len(subsets), n): row s has ones at the coordinates of subset s."""
    mask = torch.zeros(len(subsets), n)
    rows = [s for s, t in enumerate(subsets) for _ in t]
    cols = [i for t in subsets for i in t]
    mask[rows, cols] = 1.0
    return mask


def monomial_parities(x: torch.Tensor, membership: torch.Tensor) -> torch.Tensor:
    """(number of -1 entries of x inside T) mod 2 for every row T of ``membership``: x (B, n) in {-1, +1},
    membership (S, n) 0/1 -> (B, S) float32 in {0, 1}, so that chi_T(x) = 1 - 2 * parity."""
    negatives = (x < 0).to(torch.float32) @ membership.to(torch.float32).T  # (B, S), exact small integers
    return negatives.fmod_(2.0)


def monomials(x: torch.Tensor, membership: torch.Tensor) -> torch.Tensor:
    """chi_T(x) = prod_{i in T} x_i for every row T of ``membership``: x (B, n) in {-1, +1}, membership
    (S, n) 0/1 -> (B, S) float32 in {-1, +1}."""
    return 1.0 - 2.0 * monomial_parities(x, membership)


def in_support_subsets(support: Sequence[int], degree: int) -> list[Subset]:
    """All C(k, degree) subsets of ``support`` of size ``degree``, sorted."""
    return list(itertools.combinations(sorted(support), degree))


def off_support_subsets(
    n: int, support: Sequence[int], degree: int, count: int, generator: torch.Generator
) -> list[Subset]:
    """``count`` distinct random subsets of {0..n-1} of size ``degree`` that are not subsets of ``support``,
    sorted; all of them when fewer than ``count`` exist (C(n, d) - C(k, d)).

    Small families (C(n, d) <= ``ENUMERATE_LIMIT``) are enumerated and a random ``count`` kept; large ones
    are rejection-sampled. Deterministic given the generator's state.
    """
    inside = set(support)
    available = math.comb(n, degree) - math.comb(len(inside), degree)
    if count == 0 or available == 0:
        return []
    if math.comb(n, degree) <= ENUMERATE_LIMIT or count > available // 2:
        family = [t for t in itertools.combinations(range(n), degree) if not inside.issuperset(t)]
        keep = torch.randperm(len(family), generator=generator)[:count]
        return sorted(family[i] for i in keep.tolist())
    chosen: dict[Subset, None] = {}  # insertion-ordered set
    while len(chosen) < count:
        draws = torch.rand(2 * (count - len(chosen)) + 16, n, generator=generator)
        candidates = draws.argsort(dim=1)[:, :degree].sort(dim=1).values  # (draws, d) uniform d-subsets
        for t in map(tuple, candidates.tolist()):
            if len(chosen) < count and not inside.issuperset(t):
                chosen[t] = None
    return sorted(chosen)


def check_degrees(degrees: Sequence[int] | None, k: int) -> list[int]:
    if degrees is None:
        if k < 2:
            raise ValueError(f"task.k={k} has no in-support degrees 1..k-1; pass degrees=[1] to probe the parity")
        return list(range(1, k))
    degrees = list(degrees)
    if not degrees:
        raise ValueError(f"degrees={degrees!r} is invalid: must name at least one degree in 1..{k}")
    for d in degrees:
        if not (isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= k):
            raise ValueError(
                f"degree {d!r} in degrees={degrees!r} is invalid: each degree must be an integer "
                f"in 1..k = 1..{k} (k is the full parity)"
            )
    if len(set(degrees)) != len(degrees):
        raise ValueError(f"degrees={degrees!r} is invalid: degrees must be distinct")
    return sorted(degrees)


# ----------------------------------------------------------------------------------------------------------
# The probe


def monomial_correlations(
    predict_proba: Callable[[torch.Tensor], torch.Tensor],
    task: ParityTask,
    num_samples: int = 100_000,
    off_support_per_degree: int = 100,
    degrees: Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 8192,
) -> MonomialCorrelations | list[MonomialCorrelations]:
    """corr(T) for every in-support subset of each degree and ``off_support_per_degree`` off-support ones.

    ``predict_proba`` maps inputs (B, n) float32 in {-1, +1} to p(class 1 | x) of shape (B,), or (M, B) for
    a stack of M models (see :func:`mlp_class1_probability`); any real-valued function may be probed.
    ``degrees`` defaults to 1..k-1; degree k (the parity itself, the label correlation) is allowed when asked.
    ``generator`` (default: seeded with 0) first draws the off-support subsets, then ``num_samples`` inputs
    in batches of ``batch_size``; pass a freshly seeded generator per checkpoint so that every checkpoint is
    probed on the same subsets and inputs. The sampling error (std) of each correlation is
    sqrt((E[p^2] - corr^2) / num_samples): at most 1 / sqrt(num_samples) for probabilities, ~0.5 / sqrt of it
    when p stays near 0.5 (0.0016 at 100k samples). Batch sums are float32 (rounding ~1e-6), totals float64.

    Returns one :class:`MonomialCorrelations` for a (B,) output, a list of M (in stack order) for (M, B).
    Raises ``ValueError`` for degrees outside 1..k, non-positive sizes, or an output of the wrong shape.
    """
    for name, value, least in [
        ("num_samples", num_samples, 1),
        ("batch_size", batch_size, 1),
        ("off_support_per_degree", off_support_per_degree, 0),
    ]:
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= least):
            raise ValueError(f"{name}={value!r} is invalid: must be an integer >= {least}")
    degree_list = check_degrees(degrees, task.k)
    if generator is None:
        generator = torch.Generator().manual_seed(0)

    support = task.support
    inside = [in_support_subsets(support, d) for d in degree_list]
    outside = [off_support_subsets(task.n, support, d, off_support_per_degree, generator) for d in degree_list]
    subsets = [t for group in inside + outside for t in group]
    membership = membership_matrix(subsets, task.n)  # (S, n)

    sums = None  # (M, S) float64
    for start in range(0, num_samples, batch_size):
        x = task.sample_inputs(min(batch_size, num_samples - start), generator)  # (B, n)
        p = torch.as_tensor(predict_proba(x)).detach().to("cpu", torch.float32)
        if p.dim() not in (1, 2) or p.shape[-1] != x.shape[0]:
            raise ValueError(
                f"predict_proba returned shape {tuple(p.shape)} for {x.shape[0]} inputs: must be "
                f"(B,) or (M, B) with B = {x.shape[0]}"
            )
        single = p.dim() == 1
        p = p.reshape(-1, x.shape[0])  # (M, B)
        # sum_x chi_T(x) p(x) = sum_x p(x) - 2 sum_x parity_T(x) p(x): one elementwise pass fewer than chi
        batch = p.sum(dim=1, keepdim=True) - 2.0 * (p @ monomial_parities(x, membership))  # (M, S)
        sums = batch.double() if sums is None else sums + batch.double()
    assert sums is not None  # num_samples >= 1: one batch at least
    corr = (sums / num_samples).abs().tolist()  # (M, S)

    bounds = list(itertools.accumulate((len(g) for g in inside + outside), initial=0))
    D = len(degree_list)

    def part(row: list[float], j: int) -> tuple[float, ...]:  # the correlations of group j of subsets
        return tuple(row[bounds[j] : bounds[j + 1]])

    results = [
        MonomialCorrelations(
            task.n,
            tuple(support),
            num_samples,
            tuple(
                DegreeCorrelations(d, tuple(inside[j]), part(row, j), tuple(outside[j]), part(row, D + j))
                for j, d in enumerate(degree_list)
            ),
        )
        for row in corr
    ]
    return results[0] if single else results


def mlp_class1_probability(
    model: torch.nn.Module, model_index: int | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """p(class 1 | x) of a stacked model (such as :class:`progdistill.models.mlp.MLP`, logits (M, B, C)) as a
    callable for :func:`monomial_correlations`: x (B, n) -> (M, B), or (B,) for model ``model_index`` alone.
    Runs without gradients on the model's device; returns CPU float32."""
    num_models = getattr(model, "num_models", None)
    if model_index is not None and num_models is not None and not 0 <= model_index < num_models:
        raise ValueError(f"model_index={model_index!r} is invalid: must be in 0..{num_models - 1}")
    device = next(model.parameters()).device

    def predict(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            logits = model(x.to(device))  # (M, B, C)
            p = torch.softmax(logits.float(), dim=-1)[..., 1]  # (M, B)
        return (p if model_index is None else p[model_index]).cpu()

    return predict


# ----------------------------------------------------------------------------------------------------------
# Over a run directory: every teacher checkpoint (and final student), a summary and a figure


def _record(model, task, num_samples: int, degrees) -> dict[str, Any]:
    result = monomial_correlations(
        mlp_class1_probability(model, 0),
        task,
        num_samples=num_samples,
        degrees=degrees,
        generator=torch.Generator().manual_seed(PROBE_SEED),
    )
    assert isinstance(result, MonomialCorrelations)  # one model's (B,) probabilities: one result
    return result.to_dict() | {"summary": result.summary()}


def probe_monomials(
    run_dir: str | Path, students: bool = False, num_samples: int = 100_000, degrees: list[int] | None = None, log=print
) -> dict[str, Any]:
    """Monomial correlations over every teacher checkpoint of ``run_dir`` (and its final students).

    Returns the summary: the transition detected on the teacher's eval accuracy, the checkpoint where the mean
    degree-1 in-support correlation peaks, its value, the off-support mean there, their ratio and whether the
    peak lies inside the transition window. ``degrees`` defaults to 1..k-1 and must include 1. Raises
    ``ConfigError`` for a run that is not sparse parity, ``ValueError`` for a degree outside 1..k and
    :class:`~progdistill.store.trajectory.TrajectoryError` for a run without teacher checkpoints.
    """
    rundir = RunDir(run_dir)
    config = rundir.config()
    if "monomials" not in config.task.probes:
        raise ConfigError(f"the monomial probe needs a sparse parity run; {rundir.path} has task {config.task.kind!r}")
    if config.task.k < 2:
        raise ConfigError(f"task.k={config.task.k}: the monomial probe needs k >= 2 (degrees 1..k-1)")
    if not (isinstance(num_samples, int) and num_samples >= 1):
        raise ValueError(f"--samples {num_samples!r} is invalid: must be a positive integer")
    if degrees is not None:
        check_degrees(degrees, config.task.k)  # each within 1..k
        if 1 not in degrees:
            raise ValueError(f"degrees={degrees!r} is invalid: must include 1 (the summary and figure are of degree 1)")
    with RunLock(rundir.path):
        rundir.check_inputs(config)
        summary = _probe_monomials(rundir, config, students, num_samples, degrees, log)
        refresh_report(rundir, log)
        return summary


def _probe_monomials(
    rundir: RunDir, config: ExperimentConfig, students: bool, num_samples: int, degrees, log
) -> dict[str, Any]:
    trajectory = Trajectory(rundir.teacher)
    if not trajectory.steps:
        raise ConfigError(f"{rundir.teacher} has no checkpoints to probe")
    out = rundir.probes
    out.mkdir(exist_ok=True)
    jobs = model_jobs(config, trajectory.steps, students)
    task = rundir.task(config)
    settings = {"settings": {"num_samples": num_samples, "degrees": degrees, "seed": PROBE_SEED}}

    def compute(name: str, step: int) -> dict[str, Any]:
        model = rundir.load_model(config, name, step if name == "teacher" else None, task=task)
        extra = {"eval_accuracy": trajectory.metrics(step)["eval_accuracy"]} if name == "teacher" else {}
        return {**extra, **_record(model, task, num_samples, degrees)}

    done = run_jobs(out / ".monomials.partial.jsonl", settings, jobs, compute, "monomial probe", log)
    records = [done[job] for job in jobs]
    atomic_write_text(out / "monomials.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    summary = _summarize([r for r in records if r["model"] == "teacher"])
    atomic_write_json(out / "monomials-summary.json", summary)
    save_figure(monomial_figure(records, summary, config.preset), out / "monomials.png")
    (out / ".monomials.partial.jsonl").unlink()
    log(f"wrote {out / 'monomials.jsonl'}, {out / 'monomials-summary.json'}, {out / 'monomials.png'}")
    return summary


def _summarize(teacher: list[dict]) -> dict[str, Any]:
    steps = [r["step"] for r in teacher]
    degree1 = [r["summary"]["degree1/in_support_mean"] for r in teacher]
    peak = max(range(len(teacher)), key=lambda i: degree1[i])
    off = teacher[peak]["summary"]["degree1/off_support_mean"]
    summary: dict[str, Any] = {
        "peak_step": steps[peak],
        "peak_degree1_in_support_mean": degree1[peak],
        "degree1_off_support_mean_at_peak": off,
        "ratio": degree1[peak] / off if off else None,
    }
    try:
        window = detect_transition(steps, [r["eval_accuracy"] for r in teacher], "rise")
        summary["transition"] = window.to_dict()
        summary["peak_inside_transition"] = window.start <= steps[peak] <= window.end
    except ValueError as exc:  # NoTransitionError, or too few checkpoints to look for one
        summary["transition"] = None
        summary["no_transition"] = str(exc)
    return summary
