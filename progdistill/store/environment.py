"""Where a run's figures were measured: CPU, cores, torch threads, device and library versions.

Wall times and even training curves depend on the machine (another CPU or thread count changes float
rounding, and a parity teacher's transition moves by hundreds of steps), so every results.json and
summary.md records the environment beside its figures.
"""

import importlib.metadata
import os
import platform

import torch

from progdistill.core.threads import chosen_by

# Distributions whose versions are recorded besides torch's (None when not installed).
PACKAGES = ("numpy", "transformers", "tokenizers")


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model(cpuinfo_path: str = "/proc/cpuinfo") -> str | None:
    """The CPU's "model name" from /proc/cpuinfo (Linux), else ``platform.processor()``; None if unknown."""
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or None


def _device_name(device: str | torch.device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def environment(device: str | torch.device = "cpu") -> dict:
    """The machine and software a run is measured on.

    Args:
        device: the device the run trains on ("cpu", "cuda", "cuda:1", or a ``torch.device``); a CUDA device
            is recorded by its name (e.g. "NVIDIA H200"), any other by its type.

    Returns:
        A JSON-ready dict: ``cpu`` (model name, or None if unknown), ``cpu_count`` (logical cores,
        ``os.cpu_count()``), ``torch_threads`` (intra-op threads, ``torch.get_num_threads()``), ``threads_chosen_by``
        (what set them: :func:`progdistill.core.threads.chosen_by`, None for torch's default), ``device``,
        ``python`` (e.g. "3.11.7"), ``torch``, ``numpy``, ``transformers``, ``tokenizers`` (installed
        distribution versions, None when not installed) and ``platform`` (``platform.platform()``).
    """
    env = {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "threads_chosen_by": chosen_by(),
        "device": _device_name(device),
        "python": platform.python_version(),
        # The imported module's version: what ran, even for a source build without distribution metadata.
        "torch": torch.__version__,
    }
    for name in PACKAGES:
        env[name] = _package_version(name)
    env["platform"] = platform.platform()
    return env


def environment_markdown(env: dict) -> str:
    """One line for summary.md naming the machine and versions in ``env`` (a dict from ``environment``).

    Example: "Measured on: AMD EPYC, 2 cores, 2 torch threads, cpu; torch 2.13.0+cpu, transformers 5.24.0,
    Python 3.11.7." Unknown values read "unknown CPU" / "?", a missing transformers "not installed".
    """
    cpu = env.get("cpu") or "unknown CPU"
    cores = env.get("cpu_count")
    threads = env.get("torch_threads")
    transformers = env.get("transformers") or "not installed"
    return (
        f"Measured on: {cpu}, {_count(cores, 'core')}, {_count(threads, 'torch thread')}, {env.get('device') or '?'}; "
        f"torch {env.get('torch') or '?'}, transformers {transformers}, Python {env.get('python') or '?'}."
    )


def _count(n: int | None, noun: str) -> str:
    """ "1 core", "2 cores", "? cores" (unknown)."""
    return f"{'?' if n is None else n} {noun}{'' if n == 1 else 's'}"
