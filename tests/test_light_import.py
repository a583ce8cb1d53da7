"""progdistill with only its core dependencies: the optional packages are made unimportable in a subprocess.

The same checks run in CI in a virtual environment holding only the core dependencies (.ci/core_only.py); this
test gives the quick local version: ``import progdistill``, every preset's config back from its JSON form, and
one clear error naming the extra when a feature needs a missing package.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from progdistill.core.optional import MissingExtraError, require

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

BLOCK = textwrap.dedent(f"""
    import importlib.abc, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {OPTIONAL!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)

    sys.meta_path.insert(0, Block())
""")


def run_blocked(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run(
        [sys.executable, "-c", BLOCK + textwrap.dedent(code)],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )


def test_core_only_import_and_configs():
    result = run_blocked(
        """
        import sys
        import progdistill
        from progdistill.experiment import ExperimentConfig
        from progdistill.core.optional import MissingExtraError, require
        from progdistill.tasks.text.tokenizer import train_tokenizer

        loaded = sorted(m for m in sys.modules if m.split(".")[0] in OPTIONAL)
        assert not loaded, loaded
        for name in progdistill.PRESETS:
            config = progdistill.get_preset(name)
            assert ExperimentConfig.from_dict(config.to_dict()) == config, name
        try:
            train_tokenizer(["some text"], 8)
        except MissingExtraError as exc:
            print(exc)
        else:
            raise AssertionError("train_tokenizer ran without tokenizers")
        # torch.utils.tensorboard is in every torch: the package whose absence matters is tensorboard.
        try:
            require("torch.utils.tensorboard", "tensorboard", "TensorBoard logging", package="tensorboard")
        except MissingExtraError as exc:
            print(exc)
        try:
            require("torch.utils.tensorboard", "tensorboard", "TensorBoard logging")
        except MissingExtraError:
            raise AssertionError("a missing tensorboard was blamed on torch")
        except ModuleNotFoundError as exc:
            print(exc.name)
    """.replace("OPTIONAL", repr(OPTIONAL))
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "the WordPiece tokenizer of text tasks needs the optional package 'tokenizers', which is not installed: "
        'pip install "progdistill[text]"',
        "TensorBoard logging needs the optional package 'tensorboard', which is not installed: "
        'pip install "progdistill[tensorboard]"',
        "tensorboard",
    ]


def test_require():
    assert require("json", "text", "x").dumps([1]) == "[1]"
    with pytest.raises(
        MissingExtraError,
        match=r"feature Y needs the optional package \'no_such_package_xyz\', "
        r'which is not installed: pip install "progdistill\[extra\]"',
    ):
        require("no_such_package_xyz.sub", "extra", "feature Y")
    assert issubclass(MissingExtraError, ImportError)
