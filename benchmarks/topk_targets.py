"""Top-k teacher targets at a large vocabulary: memory and time saved against full teacher logits.

    python benchmarks/topk_targets.py                       # vocab 50,257, 512 positions, k = 8, 32, 128
    python benchmarks/topk_targets.py --positions 256 --vocab 32000 --k 16 64

For each variant a fresh subprocess builds student logits (N, V) and the teacher targets -- full logits (N, V)
float32, or :func:`progdistill.distill.losses.top_k_targets` (indices int64 + log-probabilities float32, (N, k), and one
tail mass per position) -- then times the forward KL and its backward pass (median of ``--repeats``). Reported:
the bytes the teacher targets occupy (exact: ``Tensor.nbytes``), the peak resident memory added by one
loss + backward on top of the inputs (VmHWM after resetting it
through /proc/self/clear_refs, minus VmRSS before; Linux, CPU), and the median time. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time

import torch

from progdistill.distill.losses import forward_kl, top_k_divergence, top_k_targets


def _status_mb(field: str) -> float:
    """VmRSS (resident now) or VmHWM (peak since the last reset) of this process, MiB (Linux /proc)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # "5": reset the peak resident set size (VmHWM), Linux >= 4.0
        f.write("5")


def measure(positions: int, vocab: int, k: int | None, mode: str, repeats: int) -> dict:
    """One variant, in this process (run in a fresh one, so that allocator caches of other variants do not mix in)."""
    g = torch.Generator().manual_seed(0)
    student = torch.randn(positions, vocab, generator=g).requires_grad_()
    teacher_logits = torch.randn(positions, vocab, generator=g) * 3
    if k is None:
        targets, target_bytes = teacher_logits, teacher_logits.nbytes

        def loss_fn():
            return forward_kl(student, targets)
    else:
        targets = top_k_targets(teacher_logits, k, mode=mode)
        del teacher_logits  # what a stored / transferred target keeps: O(k) per position
        target_bytes = targets.indices.nbytes + targets.log_probs.nbytes + targets.tail_log_mass.nbytes

        def loss_fn():
            return top_k_divergence(student, targets, "forward_kl")

    _reset_peak()
    before = _status_mb("VmRSS")
    times = []
    for _ in range(repeats):
        student.grad = None
        start = time.perf_counter()
        loss_fn().backward()
        times.append(time.perf_counter() - start)
    return {
        "k": k,
        "mode": mode if k is not None else "full",
        "target_bytes": target_bytes,
        "target_mb": target_bytes / 2**20,
        "loss_peak_rss_added_mb": _status_mb("VmHWM") - before,
        "loss_and_backward_s_median": statistics.median(times),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=50_257)
    parser.add_argument("--k", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one variant "k:mode"
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.one is not None:
        k, mode = args.one.split(":")
        print(json.dumps(measure(args.positions, args.vocab, None if k == "full" else int(k), mode, args.repeats)))
        return {}
    variants = ["full:full"] + [f"{k}:{m}" for k in args.k for m in ("tail_bucket", "renormalized")]
    rows = []
    for variant in variants:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--one",
                variant,
                "--positions",
                str(args.positions),
                "--vocab",
                str(args.vocab),
                "--repeats",
                str(args.repeats),
                "--threads",
                str(args.threads),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        rows.append(json.loads(out.stdout))
    result = {
        "positions": args.positions,
        "vocab": args.vocab,
        "threads": args.threads,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.processor() or platform.machine(),
        "rows": rows,
    }
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
