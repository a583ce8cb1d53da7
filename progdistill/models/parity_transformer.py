"""GPT-2 style transformers for sparse parity (paper §1, "Transformer").

The n input bits are a sequence of n tokens over a two-token vocabulary (token 1 where x_i = -1, token 0
where x_i = +1), with learned positional embeddings and causal self-attention; the class is predicted from
the hidden state at the *last* position, which attends to every bit, through one linear head. The paper uses
2 layers of head dimension 8, a teacher with 32 heads and a student with 4.

The network is Hugging Face ``transformers``' :class:`~transformers.GPT2Model` built from a
:class:`~transformers.GPT2Config` (never downloaded), with SDPA attention (:data:`ATTENTION`). Transformers are
not stacked: a "stack" holds exactly one model, and :func:`progdistill.train.loop.fit` trains the students one after
another.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from progdistill.core.config import ConfigError, check, check_positive_int, register
from progdistill.core.optional import require

# The attention implementation, named rather than left to transformers' default (SDPA since 4.36 where torch has
# it, else eager), so that a change of that default cannot silently change our numbers: eager and SDPA round
# differently. SDPA on every device: on a GPU it is the fast one, and on the CPU eager is not >10% faster at
# these sizes and would change the presets' numbers (docs/benchmarks.md, "Transformers: attention and
# micro-batches"). Probes that need the attention weights switch to eager for their forward pass.
ATTENTION = "sdpa"


@register("model")
@dataclass(frozen=True)
class TransformerConfig:
    """``n_layer`` GPT-2 blocks of ``n_head`` heads of dimension ``head_dim`` (hidden size
    ``n_head * head_dim``; the MLP of each block has ``mlp_ratio`` times the hidden size)."""

    kind: ClassVar[str] = "parity-gpt2"
    aliases: ClassVar[tuple[str, ...]] = ("gpt2",)  # its former name: old config.json files still load
    stackable: ClassVar[bool] = False  # one model per stack; students train one at a time

    n_layer: int = 2
    n_head: int = 4
    head_dim: int = 8
    mlp_ratio: int = 4

    def __post_init__(self):
        check_positive_int("model.n_layer", self.n_layer)
        check_positive_int("model.n_head", self.n_head)
        check_positive_int("model.head_dim", self.head_dim)
        check_positive_int("model.mlp_ratio", self.mlp_ratio)

    @property
    def hidden_size(self) -> int:
        return self.n_head * self.head_dim

    def build(self, in_features: int, num_classes: int, generators: Sequence[torch.Generator]) -> ParityTransformer:
        return ParityTransformer(in_features, num_classes, self, generators)

    def estimated_bytes(
        self, input_size: int, num_classes: int, batch_size: int, stack: int
    ) -> dict[str, tuple[int, tuple[str, ...]]]:
        """Bytes in training, from the sizes alone (nothing is built), as
        :meth:`progdistill.models.mlp.MLPConfig.estimated_bytes`: ``"weights"`` (weights, gradients, two optimizer
        moments) and ``"activations"`` of a step over ``batch_size`` sequences of ``input_size`` tokens (GPT-2's
        per-layer hidden states and attention maps, kept for the backward pass, and their gradients), and
        ``"forward"`` without gradients (evaluation: one layer's states and attention scores at a time)."""
        h, t = self.hidden_size, input_size
        per_layer = (4 + 2 * self.mlp_ratio) * h * h + (9 + self.mlp_ratio) * h
        params = self.n_layer * per_layer + (2 + t) * h + 2 * h + h * num_classes + num_classes
        per_sequence = self.n_layer * (t * h * (10 + 2 * self.mlp_ratio) + 3 * self.n_head * t * t)
        fields = ("n_layer", "n_head", "head_dim")
        return {
            "weights": (4 * 4 * stack * params, fields),
            "activations": (2 * 4 * stack * batch_size * per_sequence, fields),
            "forward": (4 * stack * batch_size * (t * h * (3 + self.mlp_ratio) + self.n_head * t * t), fields),
        }

    def check_task(self, task) -> None:
        """Refuse a task whose inputs are not bits in {-1, +1} (the model reads one token per bit, -1 or not:
        anything else would train silently on tokens that do not carry the input). Looks at the task's held-out
        inputs and a small batch drawn from a generator of its own (no draw from the training streams)."""
        batches = [*task.eval_batches(), task.sample_batch(64, torch.Generator().manual_seed(0))]
        for batch in batches:
            x = batch.inputs
            if x.dim() != 2 or not torch.is_floating_point(x) or not bool(((x == 1) | (x == -1)).all()):
                bad = x[(x != 1) & (x != -1)] if torch.is_floating_point(x) else x.flatten()
                example = f"e.g. {bad.flatten()[0].item():g}" if bad.numel() else f"shape {tuple(x.shape)}"
                raise ConfigError(
                    f"model type {self.kind!r} (the parity transformer) reads inputs of shape (B, n) "
                    f"with values -1 or +1 only (one token per bit), and task {task.kind!r} gives "
                    f"other inputs ({x.dtype}, {example}): use a model for its inputs, e.g. "
                    "{'type': 'mlp'}"
                )


class ParityTransformer(nn.Module):
    """A GPT-2 encoder over the bits plus a linear head on the last position.

    ``forward(x)``: x (B, n) float in {-1, +1} -> logits (1, B, num_classes); the leading 1 is the stack
    dimension that :func:`progdistill.train.loop.fit` expects (see :class:`progdistill.models.mlp.MLP`).

    Initialization is GPT-2's (normal, std 0.02; the head like ``nn.Linear``), drawn from the global RNG
    *inside* :func:`torch.random.fork_rng` seeded with ``generators[0].initial_seed()``: the weights are a
    function of that generator's seed, and the caller's global RNG state is left untouched. All dropout
    probabilities are 0, so training draws no random numbers either.

    Raises :class:`~progdistill.core.config.ConfigError` unless exactly one generator is given.
    """

    def __init__(
        self, in_features: int, num_classes: int, config: TransformerConfig, generators: Sequence[torch.Generator]
    ):
        super().__init__()
        transformers = require("transformers", "transformers", "the parity transformer")

        check(
            len(generators) == 1,
            "generators",
            len(generators),
            "a transformer is not stackable: exactly one generator per model",
        )
        check_positive_int("in_features", in_features)
        check_positive_int("num_classes", num_classes)
        self.config = config
        self.num_models = 1
        self.in_features = in_features
        gpt2 = transformers.GPT2Config(
            vocab_size=2,
            n_positions=in_features,
            n_embd=config.hidden_size,
            n_layer=config.n_layer,
            n_head=config.n_head,
            n_inner=config.mlp_ratio * config.hidden_size,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            use_cache=False,
            bos_token_id=0,
            eos_token_id=0,
            attn_implementation=ATTENTION,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(generators[0].initial_seed())
            self.gpt2 = transformers.GPT2Model(gpt2)
            self.head = nn.Linear(config.hidden_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, n) in {-1, +1} -> logits (1, B, C)."""
        tokens = (x < 0).long()  # (B, n): token 1 where the bit is -1, token 0 where it is +1
        hidden = self.gpt2(input_ids=tokens).last_hidden_state  # (B, n, H)
        return self.head(hidden[:, -1]).unsqueeze(0)  # (1, B, C)
