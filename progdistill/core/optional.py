"""Optional dependencies: import one where a feature needs it, or raise one error naming the extra to install.

The core install (torch, numpy, safetensors, tqdm, matplotlib) runs the parity experiments and the monomial
probe. Everything else is an extra of ``pyproject.toml``: ``text`` (tokenizers, gensim), ``transformers``,
``hf`` (transformers + accelerate, for the Trainer), ``tensorboard``, ``datasets``. A module that needs one
calls :func:`require` where the feature runs, never at import, so ``import progdistill`` works without it.
"""

from __future__ import annotations

import importlib
import types


class MissingExtraError(ImportError):
    """An optional package is not installed; the message names the feature and the extra that installs it."""


def require(module: str, extra: str, feature: str, package: str | None = None) -> types.ModuleType:
    """Import ``module`` (e.g. ``"tokenizers"``) and return it.

    ``extra``: the ``progdistill[...]`` extra that installs it (e.g. ``"text"``); ``feature``: what needs it, for
    the message (e.g. ``"the WordPiece tokenizer of text tasks"``); ``package``: the import name whose absence
    means the extra is missing, when it is not ``module``'s own top level (``require("torch.utils.tensorboard",
    "tensorboard", ..., package="tensorboard")``). Raises :class:`MissingExtraError` (an ``ImportError``) saying
    ``pip install "progdistill[extra]"`` when that package is not installed; an installed package that fails to
    import for another reason raises its own error.
    """
    package = package or module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] != package:
            raise  # something else is missing (one of the package's own dependencies): its error says which
        raise MissingExtraError(
            f"{feature} needs the optional package {package!r}, which is not installed: "
            f'pip install "progdistill[{extra}]"'
        ) from exc
