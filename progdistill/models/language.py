"""BERT masked and GPT-2 causal language models built from a config (paper §2, §3 and §4).

:class:`BertMLMConfig` (model kind ``"bert"``) builds a Hugging Face :class:`~transformers.BertForMaskedLM`
from a :class:`~transformers.BertConfig` -- never downloaded -- with ``n_layer`` layers of ``n_head`` heads of
dimension ``head_dim`` (the paper: teacher 4 x 32 x 8, hidden 256; student 4 x 8 x 8, hidden 64). Dropout is
0, so training draws no random numbers besides the data. Attention is SDPA on every device, named explicitly
(:data:`progdistill.models.parity_transformer.ATTENTION`). Token models are not stacked: a "stack" holds one
model and :func:`progdistill.train.loop.fit` trains students one after another.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from progdistill.core.config import check, check_positive_int, register
from progdistill.core.optional import require
from progdistill.models.parity_transformer import ATTENTION


@dataclass(frozen=True)
class _LMConfig:
    """Sizes shared by the language-model configs below."""

    n_layer: int = 4
    n_head: int = 8
    head_dim: int = 8
    mlp_ratio: int = 4
    max_positions: int | None = None

    def __post_init__(self):
        check_positive_int("model.n_layer", self.n_layer)
        check_positive_int("model.n_head", self.n_head)
        check_positive_int("model.head_dim", self.head_dim)
        check_positive_int("model.mlp_ratio", self.mlp_ratio)
        check(
            self.max_positions is None or (isinstance(self.max_positions, int) and self.max_positions >= 2),
            "model.max_positions",
            self.max_positions,
            "None (the task's need) or an integer >= 2",
        )

    @property
    def hidden_size(self) -> int:
        return self.n_head * self.head_dim


@register("model")
@dataclass(frozen=True)
class BertMLMConfig(_LMConfig):
    """``n_layer`` BERT layers of ``n_head`` heads of dimension ``head_dim`` (hidden ``n_head * head_dim``,
    feed-forward ``mlp_ratio`` times that). ``max_positions``: position embeddings; None = what the task's
    longest allowed sequence needs."""

    kind: ClassVar[str] = "bert"
    stackable: ClassVar[bool] = False

    def build(self, positions: int, vocab_size: int, generators: Sequence[torch.Generator]) -> MaskedLM:
        """A :class:`MaskedLM` for sequences of up to ``positions`` tokens over ``vocab_size`` ids."""
        return MaskedLM(positions if self.max_positions is None else self.max_positions, vocab_size, self, generators)


class LanguageModel(nn.Module):
    """A Hugging Face language model with the calling convention of :func:`progdistill.train.loop.fit`'s token
    tasks; :class:`MaskedLM` and :class:`CausalLM` say which model (``_hf_model``) and where its last hidden
    layer is (``hidden_states``).

    ``forward(input_ids, attention_mask)``: (B, L) int64 ids and (B, L) bool -> logits (B, L, vocab_size).
    ``hidden_states(...)``: the last layer's hidden states (B, L, hidden), for probes. The Hugging Face model
    is ``.backbone``; checkpoints that name it ``bert.`` (the attribute's name in early trajectories) load too.
    Initialization is BERT's (normal, std 0.02), drawn inside :func:`torch.random.fork_rng` seeded with
    ``generators[0].initial_seed()``: a function of the seed that leaves the global RNG untouched.
    Raises ``ValueError`` naming the length when a sequence is longer than the position embeddings.
    """

    def __init__(self, positions: int, vocab_size: int, config: _LMConfig, generators: Sequence[torch.Generator]):
        super().__init__()
        check(
            len(generators) == 1,
            "generators",
            len(generators),
            "a language model is not stackable: exactly one generator per model",
        )
        check_positive_int("vocab_size", vocab_size)
        self.config = config
        self.num_models = 1
        self.positions = positions
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(generators[0].initial_seed())
            # A Hugging Face model (transformers is optional here: typed as what it is used for).
            self.backbone: Any = self._hf_model(positions, vocab_size, config)

    @staticmethod
    def _hf_model(positions: int, vocab_size: int, config: _LMConfig) -> nn.Module:
        raise NotImplementedError

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Early trajectories hold the Hugging Face model under "bert." (GPT-2's too): those keys load into .backbone.
        old = prefix + "bert."
        for key in [k for k in state_dict if k.startswith(old)]:
            state_dict[prefix + "backbone." + key[len(old) :]] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _check(self, input_ids: torch.Tensor) -> None:
        if input_ids.shape[-1] > self.positions:
            raise ValueError(
                f"a sequence of {input_ids.shape[-1]} tokens is longer than the model's "
                f"{self.positions} positions (model.max_positions); raise it or shorten the data"
            )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        self._check(input_ids)
        return self.backbone(input_ids=input_ids, attention_mask=attention_mask).logits

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def save_pretrained(self, directory) -> None:
        """Write the Hugging Face model (config.json + model.safetensors) to ``directory``."""
        self.backbone.save_pretrained(directory)


class MaskedLM(LanguageModel):
    """``BertForMaskedLM`` (:class:`LanguageModel`'s calling convention): position t predicts the token masked
    there."""

    @staticmethod
    def _hf_model(positions: int, vocab_size: int, config: _LMConfig) -> nn.Module:
        transformers = require("transformers", "transformers", "BERT models")
        return transformers.BertForMaskedLM(
            transformers.BertConfig(
                vocab_size=vocab_size,
                hidden_size=config.hidden_size,
                num_hidden_layers=config.n_layer,
                num_attention_heads=config.n_head,
                intermediate_size=config.mlp_ratio * config.hidden_size,
                max_position_embeddings=positions,
                type_vocab_size=1,
                hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0,
                pad_token_id=0,
                attn_implementation=ATTENTION,
            )
        )

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Last-layer hidden states (B, L, hidden) -- the input of the MLM head."""
        self._check(input_ids)
        return self.backbone.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


@register("model")
@dataclass(frozen=True)
class GPT2LMConfig(_LMConfig):
    """A causal (next-token) language model: Hugging Face ``GPT2LMHeadModel`` from a config, ``n_layer`` blocks
    of ``n_head`` heads of dimension ``head_dim`` (paper §3: teacher 4 x 32 heads, hidden 256;
    student 4 x 8, hidden 64). ``max_positions``: None = what the task's longest sequence needs."""

    kind: ClassVar[str] = "gpt2-lm"
    stackable: ClassVar[bool] = False

    def build(self, positions: int, vocab_size: int, generators: Sequence[torch.Generator]) -> CausalLM:
        return CausalLM(positions if self.max_positions is None else self.max_positions, vocab_size, self, generators)


class CausalLM(LanguageModel):
    """``GPT2LMHeadModel`` (:class:`LanguageModel`'s calling convention): ``forward(input_ids, attention_mask)``
    -> logits (B, L, vocab_size), where position t predicts token t + 1."""

    @staticmethod
    def _hf_model(positions: int, vocab_size: int, config: _LMConfig) -> nn.Module:
        transformers = require("transformers", "transformers", "GPT-2 models")
        return transformers.GPT2LMHeadModel(
            transformers.GPT2Config(
                vocab_size=vocab_size,
                n_positions=positions,
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
        )

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        self._check(input_ids)
        return self.backbone.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    @torch.no_grad()
    def sample(
        self,
        prompt: torch.Tensor,
        allowed: torch.Tensor,
        stop_id: int,
        max_new_tokens: int,
        generator: torch.Generator,
        temperature: float = 1.0,
    ) -> list[list[int]]:
        """Continue each row of ``prompt`` (B, P) int64 by sampling (``temperature`` 0 = greedy) among the ids
        ``allowed`` (1-D), until ``stop_id`` or ``max_new_tokens``; returns the new ids of each row, ``stop_id``
        included when it was produced. Draws come from ``generator`` (on the CPU).

        Each step runs only the newest token of the unfinished rows, attending to the keys and values of the
        earlier ones (Hugging Face's ``DynamicCache``; a finished row's are dropped from it)."""
        out: list[list[int]] = [[] for _ in range(len(prompt))]
        block = torch.full((self.backbone.config.vocab_size,), float("-inf"))
        block[allowed] = 0.0
        was_training = self.training
        self.eval()
        transformers = require("transformers", "transformers", "GPT-2 sampling")
        cache = transformers.DynamicCache(config=self.backbone.config)  # filled in place by every forward pass below
        step_ids, active = prompt, torch.arange(len(prompt))  # active: the rows still in the cache
        for _ in range(max(0, min(max_new_tokens, self.positions - prompt.shape[1]))):
            # The cache is the second argument under either of its names (past_key_values before transformers
            # 5, cache since).
            logits = self.backbone(step_ids, cache, use_cache=True).logits[:, -1].float().cpu() + block  # (A, V)
            if temperature == 0:
                drawn = logits.argmax(-1)
            else:
                drawn = torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=generator)[:, 0]
            for i, token in zip(active.tolist(), drawn.tolist()):
                out[i].append(token)
            finished = drawn == stop_id
            if finished.all():
                break
            if finished.any():
                keep = (~finished).nonzero().flatten()
                cache.batch_select_indices(keep.to(prompt.device))
                active, drawn = active[keep], drawn[keep]
            step_ids = drawn.to(prompt.device)[:, None]
        self.train(was_training)
        return out
