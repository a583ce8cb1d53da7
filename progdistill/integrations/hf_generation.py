"""Generated batches for :class:`progdistill.integrations.hf.ProgressiveDistillationTrainer`: TRL-style on-policy
(``lmbda``) and sequence-level (``seq_kd``) distillation from the scheduled teacher checkpoint, with Hugging Face
``generate`` (its KV cache).

A step's micro-batches are replaced together (:func:`generated_micro_batches`): their prompts are concatenated,
continued in one ``generate`` call, and split back, so any split of a batch into micro-batches and accumulation
steps trains on the same sequences, and Trainer's count of supervised tokens (``get_batch_samples``) is that of
the generated batch. Prompt: the tokens before the first supervised label position (at least one token; the
shortest such prefix over the step's rows, so that every row keeps a prompt of the same length). Labels: the
generated tokens up to and including EOS; -100 on the prompt and after EOS (attention mask 0 there too).
Sampling is seeded: one draw of the trainer's seeded generator seeds ``generate``'s global-RNG draws inside
:func:`torch.random.fork_rng`, so the global RNG is left as it was.
"""

from __future__ import annotations

from typing import Any

import torch

from progdistill.distill.losses import IGNORE_INDEX


def prompt_length(batches: list[dict[str, Any]]) -> int:
    """The shortest prefix before a supervised label over every row of ``batches`` (at least 1)."""
    first = []
    for batch in batches:
        labels = batch.get("labels")
        if labels is None:
            first.append(1)
            continue
        supervised = labels != IGNORE_INDEX  # (B, T)
        index = torch.where(supervised.any(-1), supervised.float().argmax(-1), torch.full_like(labels[:, 0], 1))
        first.append(int(index.min()))
    return max(1, min(first))


@torch.no_grad()
def generated_micro_batches(model, batches: list[dict[str, Any]], generator: torch.Generator,
                            max_new_tokens: int | None, temperature: float) -> list[dict[str, Any]]:
    """``batches`` (micro-batches of one step: dicts with ``input_ids`` (B_i, T_i), optional ``labels``) with
    their prompts continued by ``model.generate`` (``temperature`` 0 = greedy), as micro-batches of the same
    sizes with ``input_ids``, ``attention_mask`` and ``labels`` (B_i, P + new tokens)."""
    length = prompt_length(batches)
    prompts = torch.cat([b["input_ids"][:, :length] for b in batches])  # (B, P)
    sizes = [len(b["input_ids"]) for b in batches]
    config = model.generation_config if hasattr(model, "generation_config") else None
    eos = getattr(config, "eos_token_id", None)
    eos = eos[0] if isinstance(eos, (list, tuple)) else eos
    if eos is not None and eos >= model.get_input_embeddings().num_embeddings:
        eos = None  # a config default (GPT-2's 50256) outside a small vocabulary: never produced
    pad = 0 if eos is None else eos
    seed = int(torch.randint(2**62, (), generator=generator))
    was_training = model.training
    model.eval()
    devices = [prompts.device] if prompts.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if temperature > 0 \
                else dict(do_sample=False)
            out = model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts),
                                 max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=pad, **sampling)
    finally:
        model.train(was_training)
    new = out[:, length:]  # (B, N)
    if eos is None:
        keep = torch.ones_like(new, dtype=torch.bool)
    else:  # up to and including the first EOS
        keep = (new == eos).long().cumsum(-1).sub((new == eos).long()) == 0
    attention = torch.cat([torch.ones_like(prompts, dtype=torch.bool), keep], dim=1).long()
    labels = torch.cat([torch.full_like(prompts, IGNORE_INDEX), torch.where(keep, new, IGNORE_INDEX)], dim=1)
    parts = zip(out.split(sizes), attention.split(sizes), labels.split(sizes))
    return [{"input_ids": ids, "attention_mask": mask, "labels": lab} for ids, mask, lab in parts]
