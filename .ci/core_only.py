"""CI check: progdistill with only its core dependencies (torch, numpy, safetensors, tqdm, matplotlib).

Run with the python of a virtual environment that holds only those (``.ci/run`` makes one):
``python .ci/core_only.py``. It checks that the environment really lacks every optional package, that
``import progdistill`` works and loads none of them, that every preset's config comes back from its JSON form,
that a shrunk parity-mlp run and the monomial probe work through the command line, and that the presets needing
an extra fail with one error naming it. Exits 1 on any failure.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OPTIONAL = (
    "tokenizers",
    "transformers",
    "gensim",
    "datasets",
    "accelerate",
    "tensorboard",
    "submitit",
    "wandb",
    "mlflow",
)
ENV = dict(os.environ, PYTHONPATH=str(ROOT))
# parity-mlp shrunk to seconds: n=10, k=3, a width-256 teacher that learns by step ~500, students of 1000 steps.
TINY_PARITY = [
    "--seeds",
    "1",
    "--set",
    "task.n=10",
    "--set",
    "task.k=3",
    "--set",
    "teacher.model.width=256",
    "--set",
    "teacher.steps=1500",
    "--set",
    "teacher.eval_every=100",
    "--set",
    "teacher.checkpoint_every=100",
    "--set",
    "student.steps=1000",
    "--set",
    "student.eval_every=100",
    "--set",
    "schedules.3.points=[[500,300],[-1,700]]",
    "--set",
    "schedules.4.first_steps=300",
]
# Preset -> what its error must say when the extra is missing (the whole `pip install` line varies in quoting).
NEEDS_EXTRA = {
    "text-mlm": "progdistill[text]",
    "pcfg-mlm": "progdistill[transformers]",
    "parity-transformer": "progdistill[transformers]",
}

failures: list[str] = []


def check(name: str, ok: bool, detail: str = "") -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {name}" + (f"\n{detail}" if detail and not ok else ""), flush=True)
    if not ok:
        failures.append(name)


def cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "progdistill.cli", *args],
        check=False,
        capture_output=True,
        text=True,
        env=ENV,
        cwd=ROOT,
        timeout=timeout,
    )


def python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300
    )


def main() -> int:
    installed = [m for m in OPTIONAL if importlib.util.find_spec(m) is not None]
    check("the environment holds no optional package", not installed, f"installed: {', '.join(installed)}")

    result = python(
        "import sys, progdistill\n"
        f"loaded = sorted(m for m in sys.modules if m.split('.')[0] in {OPTIONAL!r})\n"
        "assert not loaded, loaded\n"
        "from progdistill.experiment import ExperimentConfig\n"
        "for name in progdistill.PRESETS:\n"
        "    config = progdistill.get_preset(name)\n"
        "    assert ExperimentConfig.from_dict(config.to_dict()) == config, name\n"
        "print(len(progdistill.PRESETS))\n"
    )
    check(
        "import progdistill; every preset's config round-trips through from_dict",
        result.returncode == 0,
        result.stderr[-3000:],
    )

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "parity-mlp"
        result = cli("run", "parity-mlp", *TINY_PARITY, "--out", str(out))
        check(
            "progdistill run parity-mlp (shrunk)",
            result.returncode == 0 and (out / "results.json").is_file() and (out / "accuracy.png").is_file(),
            (result.stdout + result.stderr)[-3000:],
        )
        result = cli("probe", "monomials", str(out), "--samples", "2000")
        check(
            "progdistill probe monomials",
            result.returncode == 0 and (out / "probes" / "monomials.jsonl").is_file(),
            (result.stdout + result.stderr)[-3000:],
        )
        check("no TensorBoard installed: the default tracker is left out", not (out / "tensorboard").exists())
        for tracker in ("tensorboard", "wandb", "mlflow"):
            result = cli("run", "parity-mlp", "--report-to", tracker, "--out", str(Path(tmp) / tracker))
            last = result.stderr.strip().splitlines()[-1:] or [""]
            check(
                f"progdistill run --report-to {tracker} fails naming progdistill[{tracker}], before any work",
                result.returncode != 0 and f"progdistill[{tracker}]" in last[0] and not (Path(tmp) / tracker).exists(),
                f"exit {result.returncode}; stderr:\n{result.stderr[-2000:]}",
            )
        for preset, extra in NEEDS_EXTRA.items():
            result = cli("run", preset, "--seeds", "1", "--out", str(Path(tmp) / preset), timeout=300)
            last = result.stderr.strip().splitlines()[-1:] or [""]
            check(
                f"progdistill run {preset} fails naming {extra}",
                result.returncode != 0 and extra in last[0] and last[0].startswith("progdistill: error:"),
                f"exit {result.returncode}; stderr ends:\n{result.stderr[-2000:]}",
            )
        launched = Path(tmp) / "launched"
        result = cli("run", "parity-mlp", "--out", str(launched), "--launcher", "submitit-local", timeout=300)
        last = result.stderr.strip().splitlines()[-1:] or [""]
        check(
            "progdistill run --launcher submitit-local fails naming progdistill[launch], writing nothing",
            result.returncode != 0 and "progdistill[launch]" in last[0] and not launched.exists(),
            f"exit {result.returncode}; stderr ends:\n{result.stderr[-2000:]}",
        )

    print(f"core-only: {len(failures)} failed" + (f": {'; '.join(failures)}" if failures else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
