"""One candidate of the induction-lm teacher search (docs/induction-cpu-preset.md): a plain training loop with
the library's parts (the task's batches, the GPT-2 config, AdamW from OptimizerConfig, the held-out evaluation
with its in-context / bigram split), 50 steps per block of fresh batches, evaluated every ``eval_every`` steps.

    python benchmarks/induction_teacher_search.py '{"task": {...InductionTask fields}, "model": {...GPT2LMConfig
        fields}, "steps": 2000, "lr": 3e-3, "sched": "constant", "batch": 64, "eval_every": 100}'

Prints the wall time, the load average, then ``step:in-context loss/in-context accuracy`` at every evaluation and
the bigram loss at every fourth. Its data stream is not `progdistill run`'s (another generator), so its curve
differs from the preset's in detail, not in shape.
"""

import json
import sys
import time
from pathlib import Path

import torch

from progdistill.core.settings import OptimizerConfig
from progdistill.distill.losses import cross_entropy
from progdistill.models.language import GPT2LMConfig
from progdistill.tasks.induction import InductionTask
from progdistill.train.evaluation import evaluate_tokens
from progdistill.train.optim import make_optimizer

BLOCK = 50

a = json.loads(sys.argv[1])
task = InductionTask(**a.get("task", {}))
seed = a.get("seed", 0)
steps, batch, every = a.get("steps", 1500), a.get("batch", 32), a.get("eval_every", 50)
optimizer = OptimizerConfig(
    name="adamw",
    lr=a.get("lr", 1e-3),
    weight_decay=a.get("wd", 0.01),
    lr_schedule=a.get("sched", "cosine"),
    warmup_fraction=0.06,
)
init = [torch.Generator().manual_seed(seed)]
model = GPT2LMConfig(**a.get("model", {})).build(task.input_size, task.num_classes, init)
opt, lr_schedule = make_optimizer(model.parameters(), optimizer, steps)
data = torch.Generator().manual_seed(1000 + seed)
held_out = task.eval_batches()
start, curve = time.time(), []


def evaluate(step):
    groups = {}
    evaluate_tokens(model, held_out, groups)
    curve.append((step, groups["eval_in_context_loss"], groups["eval_in_context_accuracy"], groups["eval_bigram_loss"]))


for block in range(0, steps, BLOCK):
    if block % every == 0:
        evaluate(block)
    rows = task.sample_batch(BLOCK * batch, data)
    for i in range(BLOCK):
        b = rows.rows(slice(i * batch, (i + 1) * batch))
        supervised = b.targets != -100
        loss = cross_entropy(model(*b.model_inputs)[supervised], b.targets[supervised])
        opt.zero_grad()
        loss.backward()
        opt.step()
        lr_schedule.step()
evaluate(steps)
load = Path("/proc/loadavg").read_text().split()[0]
print(json.dumps(a), f"time {time.time() - start:.0f}s load {load}")
print(" ".join(f"{s}:{il:.3f}/{ia:.3f}" for s, il, ia, _ in curve))
print("bigram loss", " ".join(f"{bl:.3f}" for *_, bl in curve[::4]))
