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


def require(module: str, extra: str, feature: str) -> types.ModuleType:
    """Import ``module`` (e.g. ``"tokenizers"``) and return it.

    ``extra``: the ``progdistill[...]`` extra that installs it (e.g. ``"text"``); ``feature``: what needs it, for
    the message (e.g. ``"the WordPiece tokenizer of text tasks"``). Raises :class:`MissingExtraError` (an
    ``ImportError``) saying ``pip install "progdistill[extra]"`` when the module's package is not installed;
    an installed package that fails to import raises its own error.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        top = module.split(".")[0]
        if exc.name is None or exc.name.split(".")[0] != top:
            raise  # the package is there but one of its own dependencies is missing: its error says which
        raise MissingExtraError(f"{feature} needs the optional package {top!r}, which is not installed: "
                                f'pip install "progdistill[{extra}]"') from exc
