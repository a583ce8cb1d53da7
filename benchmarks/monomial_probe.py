"""Time the monomial-correlation probe on one parity-mlp teacher checkpoint (n=50, k=5, width 2000,
100,000 samples; issue target: at most 2 s per checkpoint on 2 CPU cores).

    python benchmarks/monomial_probe.py [--threads 2] [--repeats 3]

Prints the time per checkpoint (best and median of the repeats) for the probe and for the model's forward
pass alone on the same inputs, so the probe's own overhead can be read off as a ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from progdistill.models.mlp import MLPConfig
from progdistill.probes.monomials import mlp_class1_probability, monomial_correlations
from progdistill.tasks.parity import ParityTask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, default=100_000)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    task = ParityTask(n=50, k=5)
    model = MLPConfig(width=2000).build(50, 2, [torch.Generator().manual_seed(0)]).eval()
    predict = mlp_class1_probability(model, 0)
    probe, forward = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        monomial_correlations(predict, task, num_samples=args.samples, generator=torch.Generator().manual_seed(1))
        probe.append(time.perf_counter() - start)
        x = task.sample_inputs(args.samples, torch.Generator().manual_seed(1))
        start = time.perf_counter()
        for i in range(0, args.samples, 8192):
            predict(x[i : i + 8192])
        forward.append(time.perf_counter() - start)
    out = {
        "threads": args.threads,
        "samples": args.samples,
        "probe_s_best": min(probe),
        "probe_s_median": statistics.median(probe),
        "forward_only_s_best": min(forward),
        "probe_over_forward": min(probe) / min(forward),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
