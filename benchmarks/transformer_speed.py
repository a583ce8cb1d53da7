"""Transformer training steps: eager vs SDPA attention, and micro-batches (grad_accumulation), interleaved.

    python benchmarks/transformer_speed.py                        # 2 rounds at 1 thread (~3-5 CPU minutes)
    python benchmarks/transformer_speed.py --presets pcfg-lm --roles teacher --steps 10 --rounds 1   # a quick look

For the teacher and the student config of each preset (``--presets``), every variant -- the attention
implementation ("sdpa", "eager") x ``grad_accumulation`` (1, 2, and the preset's own value; token tasks only: the
one-label parity transformer has no micro-batches) -- is built from the same seed and trained by
:class:`progdistill.train.loop.Training`'s own block of steps (batch sampling included, no evaluation): ``--warmup``
steps untimed, then ``--steps`` timed. The variants alternate within each of ``--rounds`` rounds. It prints ms
per step (wall, and CPU from ``time.process_time``) per round, each variant's ratio to the preset's current
setting (its time / the current one's; below 1: faster), and how far its numbers are from the current
setting's after the same steps: the largest absolute difference of any parameter and of the mean training
loss ("identical" when every parameter is bit-identical).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import torch

from progdistill.core.settings import DistillationConfig
from progdistill.distill.schedules import CE
from progdistill.experiment import build_model
from progdistill.models.language import BertMLMConfig, GPT2LMConfig
from progdistill.models.parity_transformer import TransformerConfig
from progdistill.recipes.presets import get_preset
from progdistill.train.loop import Member, Training

PRESETS = ("parity-transformer", "pcfg-mlm", "pcfg-lm", "induction-lm")
ATTENTION = ("sdpa", "eager")
TRANSFORMERS = (TransformerConfig, BertMLMConfig, GPT2LMConfig)


def backbone(model: torch.nn.Module):
    """The Hugging Face model inside one of our transformers (the parity transformer's ``gpt2``, an LM's
    ``backbone``)."""
    return model.gpt2 if hasattr(model, "gpt2") else model.backbone


def variants(task, cfg) -> list[tuple[str, int]]:
    """(attention, grad_accumulation) pairs, the preset's current setting first."""
    current = (backbone(build_model(task, cfg.model, [cfg.seed], "teacher-init")).config._attn_implementation,)
    accumulations = [cfg.grad_accumulation]
    if task.per_position_targets:  # micro-batches exist on token tasks only
        accumulations += [a for a in (1, 2) if a != cfg.grad_accumulation and cfg.batch_size % a == 0]
    attentions = [*current, *(a for a in ATTENTION if a != current[0])]
    return [(a, g) for g in accumulations for a in attentions]


def run_variant(task, cfg, attention: str, accumulation: int, warmup: int, steps: int, device: torch.device) -> dict:
    """Train one variant ``warmup`` + ``steps`` steps; the timed steps' wall and CPU seconds, parameters, loss."""
    train = dataclasses.replace(cfg, steps=warmup + steps, eval_every=warmup + steps, grad_accumulation=accumulation)
    model = build_model(task, train.model, [train.seed], "teacher-init")
    backbone(model).set_attn_implementation(attention)
    run = Training(
        task, model, train, [Member("m", train.seed, CE())], "teacher-data", DistillationConfig(),
        None, None, device, "bench", None,
    )  # fmt: skip
    block = run.train_token_steps if task.per_position_targets else run.train_stack_block
    block(0, run.plan(0, warmup))
    run.loss_sum.zero_()
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    sync()
    wall, cpu = time.perf_counter(), time.process_time()
    block(warmup, run.plan(warmup, warmup + steps))
    sync()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    params = torch.cat([p.detach().flatten() for p in model.parameters()]).cpu()
    return {"wall": wall, "cpu": cpu, "params": params, "loss": float(run.loss_sum.sum()) / steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), help=f"presets (default: {' '.join(PRESETS)})")
    parser.add_argument("--roles", nargs="+", default=["teacher", "student"], choices=["teacher", "student"])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per variant and round (default 30)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before them (default 5)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of all variants, alternated (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:i] (there, CPU time means little)")
    args = parser.parse_args()
    for name, value, low in (("--steps", args.steps, 1), ("--warmup", args.warmup, 1), ("--rounds", args.rounds, 1)):
        if value < low:
            parser.error(f"{name} must be at least {low}, got {value}")
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    try:
        device = torch.device(args.device)
    except RuntimeError as exc:
        parser.error(f"--device: {exc}")
    if device.type not in ("cpu", "cuda") or (device.type == "cuda" and not torch.cuda.is_available()):
        parser.error(f"--device: {args.device!r} is not available here; use cpu or a visible cuda device")
    presets = {}
    for name in args.presets:
        try:
            presets[name] = get_preset(name)
        except (KeyError, ValueError) as exc:
            parser.error(f"--presets: {exc}")
        models = [type(getattr(presets[name], role).model) for role in args.roles]
        if not all(issubclass(m, TRANSFORMERS) for m in models):
            kinds = ", ".join(m.kind for m in TRANSFORMERS)
            parser.error(f"--presets: {name!r} trains a model of kind {models[0].kind!r}; this measures {kinds}")
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, python {sys.version.split()[0]}, {device}, {args.threads} thread(s), "
        f"{args.warmup} + {args.steps} steps, load {os.getloadavg()[0]:.1f}"
    )
    header = "| preset | model | attention | grad_acc | ms/step wall (per round) | ms/step CPU | CPU ratio | numbers |"
    print(header + "\n" + "|---" * 8 + "|")
    for name, config in presets.items():
        task = config.task
        for role in args.roles:
            cfg = getattr(config, role)
            cases = variants(task, cfg)
            results: dict[tuple[str, int], list[dict]] = {case: [] for case in cases}
            for _ in range(args.rounds):
                for case in cases:  # interleaved: every variant once per round
                    results[case].append(run_variant(task, cfg, *case, args.warmup, args.steps, device))
            base = results[cases[0]]
            for case in cases:
                res = results[case]
                walls = " / ".join(f"{1000 * r['wall'] / args.steps:.1f}" for r in res)
                cpus = " / ".join(f"{1000 * r['cpu'] / args.steps:.1f}" for r in res)
                ratio = " / ".join(f"{r['cpu'] / b['cpu']:.2f}" for r, b in zip(res, base))
                dp = float((res[0]["params"] - base[0]["params"]).abs().max())
                dl = abs(res[0]["loss"] - base[0]["loss"])
                same = f"params {dp:.1e}, loss {dl:.1e}"
                if torch.equal(res[0]["params"], base[0]["params"]):
                    same = "identical"
                if any(not torch.equal(r["params"], res[0]["params"]) for r in res):
                    same += " (NOT reproducible across rounds)"
                label = f"{case[0]}{' (current)' if case == cases[0] else ''}"
                print(f"| {name} | {role} | {label} | {case[1]} | {walls} | {cpus} | {ratio} | {same} |", flush=True)
    print(f"load {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
