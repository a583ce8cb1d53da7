import importlib.metadata
import json
import os
import platform

import pytest
import torch

from progdistill.store import environment as environment_module
from progdistill.store.environment import environment, environment_markdown

KEYS = {
    "cpu",
    "cpu_count",
    "torch_threads",
    "threads_chosen_by",
    "device",
    "python",
    "torch",
    "numpy",
    "transformers",
    "tokenizers",
    "platform",
}


def test_environment_records_this_process():
    env = environment("cpu")
    assert set(env) == KEYS
    assert env["torch"] == torch.__version__
    assert env["torch_threads"] == torch.get_num_threads()
    assert env["cpu_count"] == os.cpu_count()
    assert env["device"] == "cpu"
    assert env["python"] == platform.python_version()
    assert env["numpy"] == importlib.metadata.version("numpy")
    assert env["platform"] == platform.platform()
    assert json.loads(json.dumps(env)) == env  # goes into results.json as it is


def test_thread_count_is_read_at_call_time():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert environment()["torch_threads"] == 1
    finally:
        torch.set_num_threads(before)


def test_missing_package_is_none(monkeypatch):
    real_version = importlib.metadata.version

    def version(name):
        if name == "transformers":
            raise importlib.metadata.PackageNotFoundError(name)
        return real_version(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    env = environment()
    assert env["transformers"] is None
    assert env["numpy"] == real_version("numpy")
    assert "transformers not installed" in environment_markdown(env)


def test_cpu_model_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n")
    assert environment_module._cpu_model(str(cpuinfo)) == "AMD EPYC 7B13"


def test_cpu_model_falls_back_to_platform(tmp_path, monkeypatch):
    monkeypatch.setattr(platform, "processor", lambda: "")
    assert environment_module._cpu_model(str(tmp_path / "absent")) is None
    monkeypatch.setattr(platform, "processor", lambda: "x86_64")
    assert environment_module._cpu_model(str(tmp_path / "absent")) == "x86_64"


def test_markdown_line_names_cpu_threads_and_versions():
    env = {
        "cpu": "AMD EPYC 7B13",
        "cpu_count": 2,
        "torch_threads": 2,
        "device": "cpu",
        "python": "3.11.7",
        "torch": "2.13.0+cpu",
        "numpy": "2.4.6",
        "transformers": "5.24.0",
        "tokenizers": "0.23.3",
        "platform": "Linux",
    }
    assert environment_markdown(env) == (
        "Measured on: AMD EPYC 7B13, 2 cores, 2 torch threads, cpu; "
        "torch 2.13.0+cpu, transformers 5.24.0, Python 3.11.7."
    )


def test_markdown_of_this_machine_names_cpu_and_torch():
    env = environment()
    line = environment_markdown(env)
    assert line.startswith("Measured on: ") and "\n" not in line
    assert (env["cpu"] or "unknown CPU") in line
    assert f"torch {torch.__version__}" in line
    assert f"{torch.get_num_threads()} torch threads" in line


def test_markdown_of_unknown_values():
    line = environment_markdown(
        {
            "cpu": None,
            "cpu_count": None,
            "torch_threads": 4,
            "device": "cuda",
            "torch": "2.13.0",
            "transformers": None,
            "python": "3.12.1",
        }
    )
    assert line == (
        "Measured on: unknown CPU, ? cores, 4 torch threads, cuda; torch 2.13.0, "
        "transformers not installed, Python 3.12.1."
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_device_is_recorded_by_name():
    assert environment("cuda")["device"] == torch.cuda.get_device_name(0)
    assert environment(torch.device("cuda", 0))["device"] == torch.cuda.get_device_name(0)


def test_one_core_and_one_thread_are_singular():
    env = {"cpu": "x", "cpu_count": 1, "torch_threads": 1, "device": "cpu", "torch": "2", "python": "3"}
    assert environment_markdown(env).startswith("Measured on: x, 1 core, 1 torch thread, cpu;")
    env.update(cpu_count=None, torch_threads=None)
    assert environment_markdown(env).startswith("Measured on: x, ? cores, ? torch threads, cpu;")
