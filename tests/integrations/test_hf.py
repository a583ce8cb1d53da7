"""Hugging Face Trainer integration with tiny GPT-2 models built from configs (no downloads)."""

import pytest

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import copy
import json
import shutil
import warnings
from dataclasses import dataclass

import torch
from safetensors.torch import save_file
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.modeling_outputs import CausalLMOutput
from transformers.utils import logging as hf_logging

from progdistill.core.config import ConfigError
from progdistill.core.seeding import generator
from progdistill.core.settings import DistillationConfig
from progdistill.distill.losses import distillation_loss
from progdistill.distill.schedules import OneShot, Progressive, TwoShotAuto
from progdistill.integrations.hf import HFTrajectory, ProgressiveDistillationTrainer
from progdistill.store.trajectory import TrajectoryError
from progdistill.tasks.pcfg.task import GrammarSpec, PCFGNextTokenTask


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n=64, length=12, vocab=16, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, vocab, (n, length), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def gpt2(heads, vocab=16, seed=0):
    torch.manual_seed(seed)
    return GPT2LMHeadModel(
        GPT2Config(
            vocab_size=vocab,
            n_positions=16,
            n_embd=8 * heads,
            n_layer=1,
            n_head=heads,
            resid_pdrop=0,
            embd_pdrop=0,
            attn_pdrop=0,
        )
    )


def args(out, steps, **kw):
    return TrainingArguments(
        str(out),
        max_steps=steps,
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        save_strategy="steps",
        save_steps=5,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        logging_steps=5,
        seed=0,
        **kw,
    )


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("hf") / "teacher"
    Trainer(
        model=gpt2(4),
        args=args(out, 20, eval_strategy="steps", eval_steps=5),
        train_dataset=Tokens(),
        eval_dataset=Tokens(n=16, seed=1),
    ).train()
    return out


def test_hf_output_directory_is_a_trajectory(teacher_run, tmp_path):
    traj = HFTrajectory(teacher_run, GPT2LMHeadModel)
    assert traj.steps == [5, 10, 15, 20]
    assert "eval_loss" in traj.metrics(10)
    assert traj.curve("eval_loss")[0] == [5, 10, 15, 20]
    assert isinstance(traj.load_model(15), GPT2LMHeadModel)
    with pytest.raises(TrajectoryError, match="no checkpoint-7"):
        traj.load_model(7)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrajectoryError, match="has no checkpoint-<step> directories"):
        HFTrajectory(tmp_path / "empty", GPT2LMHeadModel)


def test_progressive_distillation_trainer_follows_the_schedule(teacher_run, tmp_path):
    traj = HFTrajectory(teacher_run, GPT2LMHeadModel)
    seen = []

    class Watch(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            seen.append(trainer.checkpoint_in_use)

    trainer = ProgressiveDistillationTrainer(
        model=gpt2(1, seed=1),
        args=args(tmp_path / "s", 20),
        train_dataset=Tokens(seed=2),
        teacher_trajectory=traj,
        schedule=Progressive(speed=1.0),
        callbacks=[Watch()],
    )
    trainer.train()
    assert seen == [5] * 5 + [10] * 5 + [15] * 5 + [20] * 5
    logged = [(e["step"], e["teacher_checkpoint"]) for e in trainer.state.log_history if "loss" in e]
    assert logged == [(5, 5), (10, 10), (15, 15), (20, 20)]  # item 12: the checkpoint of each window's last step
    assert trainer.teacher_loads == 4  # once per change of checkpoint
    for teacher in trainer.teachers.models.values():
        assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_loss_is_the_shifted_distillation_loss(teacher_run, tmp_path):
    traj = HFTrajectory(teacher_run, GPT2LMHeadModel)
    student = gpt2(1, seed=3)
    trainer = ProgressiveDistillationTrainer(
        model=student,
        args=args(tmp_path / "s", 5),
        train_dataset=Tokens(),
        teacher_trajectory=traj,
        schedule=OneShot(),
        distillation=DistillationConfig(temperature=2.0, alpha=0.25),
    )
    batch = {k: torch.stack([Tokens()[i][k] for i in range(4)]) for k in ("input_ids", "labels")}
    loss = trainer.compute_loss(student, batch)
    teacher = traj.load_model(20).eval()
    with torch.no_grad():
        t_logits = teacher(input_ids=batch["input_ids"]).logits
    s_logits = student(input_ids=batch["input_ids"]).logits
    expected = distillation_loss(s_logits[:, :-1], t_logits[:, :-1], batch["labels"][:, 1:], "forward_kl", 2.0, 0.25)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_vocabulary_mismatch_names_both_sizes(teacher_run, tmp_path):
    traj = HFTrajectory(teacher_run, GPT2LMHeadModel)
    trainer = ProgressiveDistillationTrainer(
        model=gpt2(1, vocab=24),
        args=args(tmp_path / "s", 5),
        train_dataset=Tokens(),
        teacher_trajectory=traj,
        schedule=OneShot(),
    )
    batch = {k: torch.stack([Tokens()[i][k] for i in range(4)]) for k in ("input_ids", "labels")}
    with pytest.raises(ConfigError, match=r"output size \(teacher 16, student 24\)"):
        trainer.compute_loss(trainer.model, batch)
    batch["input_ids"][0, 0] = 23  # a token the teacher cannot embed: named before its forward pass
    with pytest.raises(ConfigError, match="input id 23 is outside the teacher's vocabulary of 16 tokens .*has 24"):
        trainer.compute_loss(trainer.model, batch)


@pytest.mark.parametrize("average_tokens", [True, False])
def test_data_parallel_over_gpus_divides_by_the_whole_batch(teacher_run, tmp_path, average_tokens):
    """nn.DataParallel (n_gpu > 1): compute_loss sees the outputs of all GPUs, get_batch_samples counts the whole
    batch (where Trainer would hand its per-GPU share), and the loss is the one of a single device."""
    traj = HFTrajectory(teacher_run, GPT2LMHeadModel)
    trainer = ProgressiveDistillationTrainer(
        model=gpt2(1, seed=3),
        args=args(tmp_path / "s", 5, average_tokens_across_devices=average_tokens),
        train_dataset=Tokens(),
        teacher_trajectory=traj,
        schedule=OneShot(),
    )
    batch = {k: torch.stack([Tokens()[i][k] for i in range(4)]) for k in ("input_ids", "labels")}
    one_device = trainer.compute_loss(trainer.model, batch, num_items_in_batch=torch.tensor(4 * 11))
    trainer.args._n_gpu = 2
    _, passed = trainer.get_batch_samples(iter([batch]), 1, torch.device("cpu"))
    assert int(passed) == 4 * 11  # labelled positions after the shift
    assert trainer.compute_loss(trainer.model, batch, num_items_in_batch=passed).item() == pytest.approx(
        one_device.item(), rel=1e-6
    )


def _classifier(labels, vocab, seed=0):
    from transformers import GPT2ForSequenceClassification

    torch.manual_seed(seed)
    return GPT2ForSequenceClassification(
        GPT2Config(vocab_size=vocab, n_positions=16, n_embd=8, n_layer=1, n_head=1, num_labels=labels, pad_token_id=0)
    )


@pytest.mark.parametrize(
    "teacher_labels, student_vocab, error",
    [
        (3, 16, r"output size \(teacher 3, student 2\)"),  # label sets differ: refused
        (2, 24, None),  # the same labels over other vocabularies: fine for a classifier
    ],
)
def test_classifiers_compare_label_sets_not_vocabularies(tmp_path, teacher_labels, student_vocab, error):
    from transformers import GPT2ForSequenceClassification

    _classifier(teacher_labels, 16).save_pretrained(tmp_path / "teacher" / "checkpoint-5")
    trainer = ProgressiveDistillationTrainer(
        model=_classifier(2, student_vocab, seed=1),
        args=args(tmp_path / "s", 1),
        train_dataset=Tokens(),
        teacher_trajectory=HFTrajectory(tmp_path / "teacher", GPT2ForSequenceClassification),
        schedule=OneShot(),
    )
    batch = {"input_ids": torch.randint(1, 16, (4, 6)), "labels": torch.tensor([0, 1, 1, 0])}
    if error is None:
        assert torch.isfinite(trainer.compute_loss(trainer.model, batch))
    else:
        with pytest.raises(ConfigError, match=error):
            trainer.compute_loss(trainer.model, batch)


def test_checkpoints_without_weights_or_with_odd_names_are_reported(teacher_run, tmp_path):
    out = tmp_path / "teacher"
    shutil.copytree(teacher_run, out)
    (out / "checkpoint-20").rename(out / "checkpoint-final")
    with pytest.warns(UserWarning, match="ignoring checkpoint-final"):
        assert HFTrajectory(out, GPT2LMHeadModel).steps == [5, 10, 15]
    (out / "checkpoint-10" / "model.safetensors").unlink()
    with pytest.warns(UserWarning), pytest.raises(TrajectoryError, match="checkpoint-10 for step 10 has no weights"):
        HFTrajectory(out, GPT2LMHeadModel)
    adapter = out / "checkpoint-10" / "adapter_model.safetensors"  # a PEFT adapter checkpoint counts
    save_file({"lora_A": torch.zeros(2, 2)}, str(adapter))
    with pytest.warns(UserWarning):
        assert HFTrajectory(out, GPT2LMHeadModel).steps == [5, 10, 15]


# ---- Normalization: the update of one big batch for every model, however its tokens are split ----

V, T = 16, 10
LENGTHS = (1, 9, 4, 10, 2, 7, 5, 3)  # tokens per sequence: uneven, so per-batch means would weight tokens unequally


class Padded(torch.utils.data.Dataset):
    """Sequences of LENGTHS tokens right-padded to T with id 0: attention mask 0 (and labels -100) there."""

    def __init__(self, lengths=LENGTHS, labels=True, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.rows = []
        for n in lengths:
            mask = (torch.arange(T) < n).long()
            ids = torch.randint(1, V, (T,), generator=g) * mask
            row = {"input_ids": ids, "attention_mask": mask}
            if labels:
                row["labels"] = ids.masked_fill(mask == 0, -100)
            self.rows.append(row)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def collate(rows):
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


class NoKwargs(torch.nn.Module):
    """A model whose forward takes no **kwargs, so Trainer hands compute_loss no num_items_in_batch."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed, self.head = torch.nn.Embedding(V, 16), torch.nn.Linear(16, V)

    def forward(self, input_ids, attention_mask=None):
        return CausalLMOutput(logits=self.head(torch.tanh(self.embed(input_ids))))  # (B, T, V)


def llama(seed=0):
    torch.manual_seed(seed)
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=V,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=T,
        )
    )


def gpt2_16(seed=0):
    torch.manual_seed(seed)
    return GPT2LMHeadModel(
        GPT2Config(
            vocab_size=V, n_positions=T, n_embd=16, n_layer=1, n_head=2, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0
        )
    )


# (student factory, shift_labels argument, whether position t is compared with token t+1)
STUDENTS = {
    "gpt2": (gpt2_16, None, True),  # Trainer counts its labels unshifted
    "llama": (llama, None, True),  # Trainer counts its labels shifted
    "no-kwargs": (NoKwargs, None, False),
    "no-kwargs-shifted": (NoKwargs, True, True),
}


@pytest.fixture(scope="module")
def teacher16(tmp_path_factory):
    out = tmp_path_factory.mktemp("hf16") / "teacher"
    gpt2_16(seed=7).save_pretrained(out / "checkpoint-1")
    return out


def reference_update(student, teacher, rows, lr, alpha, shift):
    """One SGD step on the mean per supervised token of alpha * CE + (1 - alpha) * KL(teacher || student) over
    all of ``rows`` at once, by hand (float64 loss): the update every split into micro-batches must give."""
    student = copy.deepcopy(student)
    batch = collate(rows)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    s = student(**inputs).logits  # (B, T, V)
    with torch.no_grad():
        t = teacher(**inputs).logits
    labels = batch["labels"]
    if shift:
        s, t, labels = s[:, :-1], t[:, :-1], labels[:, 1:]
    keep = labels != -100
    logp, logq = torch.log_softmax(s[keep].double(), -1), torch.log_softmax(t[keep].double(), -1)  # (N, V)
    kl = (logq.exp() * (logq - logp)).sum(-1)
    ce = -logp.gather(-1, labels[keep][:, None]).squeeze(-1)
    ((alpha * ce + (1 - alpha) * kl).sum() / keep.sum()).backward()
    return {n: -lr * p.grad for n, p in student.named_parameters()}


def trainer_update(student, teacher_dir, tmp_path, batch, accumulation, lr, alpha, shift_labels, data=None):
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    a = TrainingArguments(
        str(tmp_path / f"b{batch}x{accumulation}"),
        max_steps=1,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        learning_rate=lr,
        optim="sgd",
        lr_scheduler_type="constant",
        max_grad_norm=0,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    ProgressiveDistillationTrainer(
        model=student,
        args=a,
        train_dataset=data or Padded(),
        teacher_trajectory=HFTrajectory(teacher_dir, GPT2LMHeadModel),
        schedule=OneShot(),
        distillation=DistillationConfig(alpha=alpha),
        shift_labels=shift_labels,
    ).train()
    return {n: p.detach() - before[n] for n, p in student.named_parameters()}


@pytest.mark.parametrize("kind", sorted(STUDENTS))
def test_every_split_of_a_batch_gives_the_update_of_one_big_batch(teacher16, tmp_path, kind):
    """Items 9-10 and the acceptance test: for a model with **kwargs and one without, GPT-2 (Trainer counts its
    labels unshifted) and Llama-style shifting, 1 x 8, 2 x 4 and 4 x 2 examples (batch x accumulation) give the
    hand-computed update of one step on the mean per supervised token over all 8 sequences (1 to 10 tokens)."""
    make, shift_labels, shifted = STUDENTS[kind]
    lr, alpha = 1.0, 0.5
    expected = reference_update(
        make(seed=3),
        GPT2LMHeadModel.from_pretrained(teacher16 / "checkpoint-1").eval(),
        Padded().rows,
        lr,
        alpha,
        shifted,
    )
    assert max(u.abs().max().item() for u in expected.values()) > 1e-2  # a step large enough to tell errors apart
    for batch, accumulation in ((8, 1), (4, 2), (2, 4)):
        update = trainer_update(make(seed=3), teacher16, tmp_path, batch, accumulation, lr, alpha, shift_labels)
        for name, u in update.items():
            assert torch.allclose(u, expected[name], atol=1e-6, rtol=0), (batch, accumulation, name)


def test_the_short_sequence_is_not_overweighted_by_accumulation(teacher16, tmp_path):
    """Item 9 as reported: sequences of 1 and 9 tokens on a model without **kwargs (whose forward takes no
    labels, so Trainer would drop them), trained as 2 x 1 and as 1 x 2, give the hand-computed update of the mean
    over the 10 tokens (a per-micro-batch mean gave the 1-token sequence 5x its weight)."""
    data = Padded(lengths=(1, 9))
    teacher = GPT2LMHeadModel.from_pretrained(teacher16 / "checkpoint-1").eval()
    expected = reference_update(NoKwargs(seed=3), teacher, data.rows, lr=1.0, alpha=0.0, shift=False)
    for batch, accumulation in ((2, 1), (1, 2)):
        update = trainer_update(NoKwargs(seed=3), teacher16, tmp_path, batch, accumulation, 1.0, 0.0, None, data)
        for name, u in update.items():
            assert torch.allclose(u, expected[name], atol=1e-6, rtol=0), (batch, accumulation, name)


@pytest.mark.parametrize("make", [gpt2_16, llama], ids=["gpt2", "llama"])
def test_the_count_is_of_shifted_positions_whatever_the_causal_lm(teacher16, tmp_path, make):
    """Item 10: 4 sequences of T=10 tokens, every label supervised, have 4 x 9 = 36 positions once shifted
    (Trainer counts 40 for GPT-2, whose loss_type it does not recognise)."""
    trainer = ProgressiveDistillationTrainer(
        model=make(),
        args=args(tmp_path / "s", 1),
        train_dataset=Padded(),
        teacher_trajectory=HFTrajectory(teacher16, GPT2LMHeadModel),
        schedule=OneShot(),
    )
    batch = collate(Padded(lengths=(T,) * 4).rows)
    _, count = trainer.get_batch_samples(iter([batch]), 1, torch.device("cpu"))
    assert int(count) == 4 * (T - 1)


def test_a_fully_masked_batch_gives_zero_not_nan(teacher16, tmp_path):
    """Item 8: no supervised token anywhere (a masked LM batch without a masked token) is a loss of 0 with zero
    gradients, in training (count 0 from Trainer) and in evaluation, not 0 / 0."""
    masked = Padded()
    for row in masked.rows:
        row["labels"] = torch.full_like(row["labels"], -100)
    student = gpt2_16(seed=3)
    trainer = ProgressiveDistillationTrainer(
        model=student,
        args=args(tmp_path / "s", 1, logging_nan_inf_filter=False, per_device_eval_batch_size=4),
        train_dataset=masked,
        eval_dataset=masked,
        teacher_trajectory=HFTrajectory(teacher16, GPT2LMHeadModel),
        schedule=OneShot(),
        distillation=DistillationConfig(alpha=0.5),
    )
    loss = trainer.compute_loss(student, collate(masked.rows), num_items_in_batch=torch.tensor(0))
    loss.backward()
    assert loss.item() == 0.0
    assert all(p.grad is None or not p.grad.any() for p in student.parameters())
    metrics = trainer.evaluate()
    assert metrics["eval_loss"] == 0.0


def test_without_labels_the_attention_mask_decides_what_is_distilled(teacher16, tmp_path):
    """Item 11: with only input_ids and attention_mask, the loss is the mean KL over the positions whose next
    token is real (mask shifted by one for a causal LM), computed here by hand; padding is not distilled."""
    student, teacher = gpt2_16(seed=3), GPT2LMHeadModel.from_pretrained(teacher16 / "checkpoint-1").eval()
    trainer = ProgressiveDistillationTrainer(
        model=student,
        args=args(tmp_path / "s", 1),
        train_dataset=Padded(labels=False),
        teacher_trajectory=HFTrajectory(teacher16, GPT2LMHeadModel),
        schedule=OneShot(),
    )
    batch = collate(Padded(labels=False).rows)
    loss = trainer.compute_loss(student, batch)
    with torch.no_grad():
        s, t = student(**batch).logits[:, :-1].double(), teacher(**batch).logits[:, :-1].double()  # (B, T-1, V)
    keep = batch["attention_mask"][:, 1:].bool()
    logp, logq = torch.log_softmax(s[keep], -1), torch.log_softmax(t[keep], -1)
    expected = (logq.exp() * (logq - logp)).sum(-1).mean()
    assert keep.sum() == sum(n - 1 for n in LENGTHS)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # and the counted positions in training are the same ones
    _, count = trainer.get_batch_samples(iter([batch]), 1, torch.device("cpu"))
    assert int(count) == sum(n - 1 for n in LENGTHS)


# ---- eval_loss, eval_distillation_loss and the logs (item 12) ----


def test_eval_loss_is_the_plain_trainers_and_distillation_loss_is_logged_beside_it(teacher16, tmp_path):
    """Item 12: eval_loss is the label loss, equal to plain Trainer.evaluate() on the same model; the distillation
    loss against the checkpoint in use is eval_distillation_loss (the mean KL per supervised token, by hand)."""
    eval_data = Padded(seed=4)
    a = args(tmp_path / "s", 1, per_device_eval_batch_size=8)
    plain = Trainer(model=llama(seed=3), args=a, eval_dataset=eval_data).evaluate()
    student, teacher = llama(seed=3), GPT2LMHeadModel.from_pretrained(teacher16 / "checkpoint-1").eval()
    ours = ProgressiveDistillationTrainer(
        model=student,
        args=a,
        eval_dataset=eval_data,
        teacher_trajectory=HFTrajectory(teacher16, GPT2LMHeadModel),
        schedule=OneShot(),
        distillation=DistillationConfig(alpha=0.5),
    ).evaluate()
    assert ours["eval_loss"] == pytest.approx(plain["eval_loss"], rel=1e-6)
    batch = collate(eval_data.rows)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        s, t = student(**inputs).logits[:, :-1].double(), teacher(**inputs).logits[:, :-1].double()
    keep = batch["labels"][:, 1:] != -100
    logp, logq = torch.log_softmax(s[keep], -1), torch.log_softmax(t[keep], -1)
    kl = (logq.exp() * (logq - logp)).sum(-1).mean()
    assert ours["eval_distillation_loss"] == pytest.approx(kl.item(), rel=1e-5)
    assert ours["eval_distillation_loss"] != pytest.approx(ours["eval_loss"], rel=1e-2)


# ---- HFTrajectory and the smaller points (item 13) ----


def test_trajectory_repr_names_directory_class_and_steps(teacher_run):
    text = repr(HFTrajectory(teacher_run, GPT2LMHeadModel))
    assert text == f"HFTrajectory({str(teacher_run)!r}, GPT2LMHeadModel, steps=[5, 10, 15, 20])"


@pytest.mark.parametrize("enabled", [True, False])
def test_checkpoint_loads_show_no_progress_bar_and_restore_the_setting(teacher_run, enabled):
    seen = []

    class Spy(GPT2LMHeadModel):
        @classmethod
        def from_pretrained(cls, *a, **kw):
            seen.append(hf_logging.is_progress_bar_enabled())
            return GPT2LMHeadModel.from_pretrained(*a, **kw)

    previous = hf_logging.is_progress_bar_enabled()
    (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
    try:
        HFTrajectory(teacher_run, Spy).load_model(5)
        assert seen == [False]
        assert hf_logging.is_progress_bar_enabled() == enabled
    finally:
        (hf_logging.enable_progress_bar if previous else hf_logging.disable_progress_bar)()


def test_two_shot_auto_is_exported_at_the_top_level():
    import progdistill
    from progdistill import TwoShotAuto as exported

    assert exported is TwoShotAuto and "TwoShotAuto" in progdistill.__all__


def test_two_shot_auto_refuses_a_nearly_flat_loss_as_it_does_a_nearly_flat_accuracy():
    """Item 13: an HF teacher's eval_loss from 3.568 to 3.453 (3% of its level) is no sharp drop, as an accuracy
    creeping by 0.1 of its range is refused; a loss falling by a quarter of its level still is one."""
    steps = list(range(5, 55, 5))
    flat = [3.568, 3.565, 3.56, 3.55, 3.53, 3.50, 3.48, 3.465, 3.458, 3.453]
    with pytest.raises(ConfigError, match="eval_loss has a phase transition"):
        TwoShotAuto(metric="eval_loss").pick(steps, flat)
    with pytest.raises(ConfigError, match="eval_accuracy has a phase transition"):
        TwoShotAuto().pick(steps, [0.05, 0.05, 0.06, 0.06, 0.07, 0.08, 0.1, 0.12, 0.13, 0.14])
    drop = [3.57, 3.56, 3.56, 3.55, 3.3, 2.9, 2.7, 2.68, 2.67, 2.66]
    assert TwoShotAuto(metric="eval_loss").pick(steps, drop) in (25, 30)


def test_a_missing_metric_names_the_ones_logged(teacher_run):
    with pytest.raises(TrajectoryError, match="logged eval metrics: eval_loss.*metric='eval_loss'"):
        TwoShotAuto().resolve(HFTrajectory(teacher_run, GPT2LMHeadModel))


DDP_SCRIPT = """
import os, sys, torch
sys.path.insert(0, {tests!r})
from test_hf import Tokens, gpt2
from transformers import GPT2LMHeadModel, TrainingArguments
from progdistill import DistillationConfig, Progressive
from progdistill.integrations.hf import HFTrajectory, ProgressiveDistillationTrainer
batch, accumulation, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
student = gpt2(1, seed=5)
a = TrainingArguments(out, max_steps=1, per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
                      learning_rate=0.1, optim="sgd", save_strategy="no", report_to=[], use_cpu=True,
                      disable_tqdm=True, seed=0)
ProgressiveDistillationTrainer(model=student, args=a, train_dataset=Tokens(n=8),
                               teacher_trajectory=HFTrajectory({teacher!r}, GPT2LMHeadModel),
                               schedule=Progressive(speed=1.0), distillation=DistillationConfig(alpha=0.5)).train()
if int(os.environ.get("RANK", "0")) == 0:
    torch.save(student.state_dict(), out + ".pt")
if torch.distributed.is_initialized():  # leave the group: exiting inside it can abort in gloo's threads
    torch.distributed.destroy_process_group()
"""


@pytest.mark.e2e
def test_two_processes_give_the_update_of_one(teacher_run, tmp_path):
    """Under torchrun, Trainer counts the supervised positions of every process and DDP averages gradients: the
    loss is scaled back by the process count (as Trainer does for a model's own loss), so 2 processes x 2
    micro-batches of 2 give one process's update on all 8 examples."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "student.py"
    script.write_text(DDP_SCRIPT.format(tests=str(Path(__file__).parent), teacher=str(teacher_run)))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    one = subprocess.run(
        [sys.executable, str(script), "8", "1", str(tmp_path / "one")],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(script),
            "2",
            "2",
            str(tmp_path / "two"),
        ],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    init = gpt2(1, seed=5).state_dict()
    assert max((a[k] - init[k]).abs().max().item() for k in a) > 1e-3  # the step moved the weights
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


def gkd_update(student, teacher_dir, tmp_path, batch, accumulation, steps, **gkd):
    a = TrainingArguments(
        str(tmp_path / f"gkd{batch}x{accumulation}"),
        max_steps=steps,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        learning_rate=1.0,
        optim="sgd",
        lr_scheduler_type="constant",
        max_grad_norm=0,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    trainer = ProgressiveDistillationTrainer(
        model=student,
        args=a,
        train_dataset=Padded(),
        teacher_trajectory=HFTrajectory(teacher_dir, GPT2LMHeadModel),
        schedule=OneShot(),
        max_new_tokens=6,
        **gkd,
    )
    trainer.train()
    return {n: p.detach().clone() for n, p in student.named_parameters()}, trainer


@pytest.mark.e2e  # three trainings with generation
def test_on_policy_and_seq_kd_give_the_update_of_one_big_batch(teacher16, tmp_path):
    """lmbda = 0.5, beta = 0.5, seq_kd: three steps whose batches are generated (by the student or the teacher
    checkpoint) give the same weights whether a step's 8 rows come as 1 x 8, 2 x 4 or 4 x 2."""
    gkd = dict(lmbda=0.5, beta=0.5, seq_kd=True)
    expected, trainer = gkd_update(gpt2_16(seed=3), teacher16, tmp_path, 8, 1, 3, **gkd)
    assert trainer.distillation.loss == "generalized_jsd" and trainer.distillation.beta == 0.5
    assert trainer.generated_steps["student"] > 0 and trainer.generated_steps["teacher"] > 0  # both kinds ran
    moved = max((expected[n] - p).abs().max().item() for n, p in gpt2_16(seed=3).named_parameters())
    assert moved > 1e-3  # (the JSD is at most log 2: small steps, well above the tolerance below)
    for batch, accumulation in ((4, 2), (2, 4)):
        weights, _ = gkd_update(gpt2_16(seed=3), teacher16, tmp_path, batch, accumulation, 3, **gkd)
        for name, w in weights.items():
            assert torch.allclose(w, expected[name], atol=1e-6, rtol=0), (batch, accumulation, name)


def test_seq_kd_trains_on_the_checkpoints_continuations(teacher16, tmp_path):
    """seq_kd alone: the step's batch is the prompts (one token here) continued by the scheduled checkpoint,
    labels -100 on the prompt; the same seed gives the same sequences."""
    from progdistill.integrations.hf import generated_micro_batches

    teacher = GPT2LMHeadModel.from_pretrained(teacher16 / "checkpoint-1").eval()
    rows = [collate(Padded().rows[:4]), collate(Padded().rows[4:])]
    out = generated_micro_batches(teacher, rows, torch.Generator().manual_seed(0), 6, 1.0)
    again = generated_micro_batches(teacher, rows, torch.Generator().manual_seed(0), 6, 1.0)
    assert [len(b["input_ids"]) for b in out] == [4, 4]
    for b, b2, r in zip(out, again, rows):
        assert torch.equal(b["input_ids"], b2["input_ids"])
        assert b["input_ids"].shape[1] == 7 and torch.equal(b["input_ids"][:, 0], r["input_ids"][:, 0])
        assert (b["labels"][:, 0] == -100).all() and torch.equal(b["labels"][:, 1:], b["input_ids"][:, 1:])
    greedy = generated_micro_batches(teacher, rows[:1], torch.Generator(), 6, 0.0)[0]["input_ids"]
    with torch.no_grad():  # greedy continuation = the teacher's argmax at every position
        assert torch.equal(teacher(greedy).logits[:, :-1].argmax(-1)[:, 0:], greedy[:, 1:])


@pytest.mark.parametrize(
    "gkd,match",
    [
        ({"lmbda": 1.5}, "distillation.lmbda=1.5"),
        ({"beta": -0.5}, "distillation.beta=-0.5"),
        ({"beta": 0.5, "distillation": DistillationConfig(loss="reverse_kl")}, "beta=0.5 selects the generalized JSD"),
    ],
)
def test_bad_gkd_arguments_are_refused_before_training(teacher16, tmp_path, gkd, match):
    with pytest.raises(ConfigError, match=match):
        gkd_update(gpt2_16(seed=3), teacher16, tmp_path, 8, 1, 1, **gkd)


# ---- A TRL user's trainer: GKDConfig as args, resume, the teacher's checkpoints ----


@dataclass
class GKDArgs(TrainingArguments):
    """TRL's GKDConfig fields and defaults on TrainingArguments, as GKDConfig declares them (TRL itself is no
    dependency of the project)."""

    temperature: float = 0.9
    lmbda: float = 0.5
    beta: float = 0.5
    max_new_tokens: int = 128
    teacher_model_name_or_path: str | None = None
    teacher_model_init_kwargs: dict | None = None
    disable_dropout: bool = True
    seq_kd: bool = False


def gkd_args(out, **kw):
    return GKDArgs(
        str(out),
        max_steps=2,
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        **kw,
    )


def test_gkd_config_as_args_is_read(teacher16, tmp_path):
    """TRL's GKDConfig passed as args: its lmbda, beta, seq_kd, temperature (sampling) and max_new_tokens are
    the trainer's (they were ignored: forward KL, no generation), with TRL's defaults when left alone."""

    def trainer(a, **kw):
        return ProgressiveDistillationTrainer(
            model=gpt2_16(seed=3),
            args=a,
            train_dataset=Padded(),
            teacher_trajectory=HFTrajectory(teacher16, GPT2LMHeadModel),
            schedule=OneShot(),
            **kw,
        )

    def fields(d):
        return d.loss, d.beta, d.lmbda, d.seq_kd, d.sampling_temperature, d.max_new_tokens, d.temperature

    assert fields(trainer(gkd_args(tmp_path / "a")).distillation) == ("generalized_jsd", 0.5, 0.5, False, 0.9, 128, 1.0)
    a = gkd_args(tmp_path / "b", lmbda=0.25, beta=0.0, seq_kd=True, temperature=0.7, max_new_tokens=5)
    assert fields(trainer(a).distillation) == ("generalized_jsd", 0.0, 0.25, True, 0.7, 5, 1.0)
    # a keyword that agrees with args is no conflict; the loss temperature stays distillation's
    d = trainer(a, lmbda=0.25, distillation=DistillationConfig(temperature=2.0)).distillation
    assert fields(d) == ("generalized_jsd", 0.0, 0.25, True, 0.7, 5, 2.0)
    # and the run is what they say: lmbda = 1 generates every step from the student, 3 new tokens
    on_policy = trainer(gkd_args(tmp_path / "c", lmbda=1.0, max_new_tokens=3))
    on_policy.train()
    assert on_policy.generated_steps == {"teacher": 0, "student": 2}
    plain = trainer(args(tmp_path / "d", 1)).distillation  # plain TrainingArguments: the defaults stay ours
    assert fields(plain) == ("forward_kl", 0.5, 0.0, False, 1.0, 128, 1.0)


@pytest.mark.parametrize(
    "a,kw,match",
    [
        ({}, {"lmbda": 0.3}, r"lmbda=0.3 is given to the trainer and args.lmbda=0.5 \(GKDArgs\)"),
        ({"seq_kd": True}, {"seq_kd": False}, r"seq_kd=False is given to the trainer and args.seq_kd=True"),
        (
            {},
            {"distillation": DistillationConfig(sampling_temperature=0.7)},
            r"distillation.sampling_temperature=0.7 and args.temperature=0.9 \(GKDArgs\)",
        ),
        (
            {},
            {"distillation": DistillationConfig(loss="generalized_jsd", beta=0.2)},
            "distillation.beta=0.2 and args.beta=0.5",
        ),
        ({}, {"distillation": DistillationConfig(lmbda=0.2)}, "distillation.lmbda=0.2 and args.lmbda=0.5"),
        (
            {},
            {"distillation": DistillationConfig(loss="reverse_kl")},
            r"args.beta=0.5 \(GKDArgs\) selects the generalized JSD, but distillation.loss='reverse_kl'",
        ),
        ({"lmbda": 1.5}, {}, r"args.lmbda=1.5 \(GKDArgs\): distillation.lmbda=1.5"),
        ({"teacher_model_name_or_path": "gpt2"}, {}, "args.teacher_model_name_or_path='gpt2'.*teacher_trajectory"),
    ],
)
def test_gkd_config_conflicts_name_both_places(teacher16, tmp_path, a, kw, match):
    with pytest.raises(ConfigError, match=match):
        ProgressiveDistillationTrainer(
            model=gpt2_16(seed=3),
            args=gkd_args(tmp_path / "s", **a),
            train_dataset=Padded(),
            teacher_trajectory=HFTrajectory(teacher16, GPT2LMHeadModel),
            schedule=OneShot(),
            **kw,
        )


@pytest.mark.parametrize("disable", [True, False, None])  # None: plain TrainingArguments
def test_gkd_configs_disable_dropout_is_applied(teacher16, tmp_path, disable):
    torch.manual_seed(0)
    student = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_positions=T, n_embd=16, n_layer=1, n_head=2, resid_pdrop=0.1))
    a = args(tmp_path / "s", 1) if disable is None else gkd_args(tmp_path / "s", disable_dropout=disable, lmbda=0.0)
    ProgressiveDistillationTrainer(
        model=student,
        args=a,
        train_dataset=Padded(),
        teacher_trajectory=HFTrajectory(teacher16, GPT2LMHeadModel),
        schedule=OneShot(),
    )
    rates = {m.p for m in student.modules() if isinstance(m, torch.nn.Dropout)}
    assert rates == ({0.0} if disable else {0.1})


def test_resume_with_generation_trains_as_an_uninterrupted_run(teacher_run, tmp_path):
    """lmbda and seq_kd: 20 steps straight and 10 steps + resume_from_checkpoint for 10 give the same weights bit
    for bit (the coin and the sampling generators are saved with each checkpoint; they restarted from the seed,
    ~5e-3 apart); a checkpoint without them warns, a damaged one is refused naming the file."""

    def run(out, stop=None, resume=None):
        class Stop(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                control.should_training_stop = control.should_training_stop or state.global_step == stop

        student = gpt2(1, seed=1)
        trainer = ProgressiveDistillationTrainer(
            model=student,
            args=args(out, 20),
            train_dataset=Tokens(seed=2),
            teacher_trajectory=HFTrajectory(teacher_run, GPT2LMHeadModel),
            schedule=Progressive(speed=1.0),
            lmbda=0.5,
            seq_kd=True,
            max_new_tokens=4,
            callbacks=[Stop()],
        )
        trainer.train(resume_from_checkpoint=resume)
        return student.state_dict(), trainer

    straight, trainer = run(tmp_path / "straight")
    assert trainer.generated_steps["student"] > 0 and trainer.generated_steps["teacher"] > 0  # both kinds ran
    _, first = run(tmp_path / "resumed", stop=10)
    assert first.state.global_step == 10
    resumed, trainer2 = run(tmp_path / "resumed", resume=True)
    assert trainer2.state.global_step == 20 and trainer2.generated_steps == trainer.generated_steps
    init = gpt2(1, seed=1).state_dict()
    assert max((straight[k] - init[k]).abs().max().item() for k in straight) > 1e-2
    for k in straight:
        assert torch.equal(resumed[k], straight[k]), k

    checkpoint = tmp_path / "resumed" / "checkpoint-10"
    (checkpoint / "progdistill_generators.pt").write_bytes(b"garbled")
    with pytest.raises(TrajectoryError, match="checkpoint-10/progdistill_generators.pt cannot be read"):
        run(tmp_path / "resumed", resume=str(checkpoint))
    (checkpoint / "progdistill_generators.pt").unlink()
    with pytest.warns(UserWarning, match="checkpoint-10 has no progdistill_generators.pt"):
        run(tmp_path / "resumed", stop=11, resume=str(checkpoint))


def test_checkpoints_rotated_away_by_save_total_limit_are_reported(tmp_path):
    """A teacher trained with save_total_limit=2 keeps checkpoints 15 and 20 of 5..20: opening it is an error
    naming the missing ones (a progressive schedule stayed silently on checkpoint 15), or a warning when asked."""
    out = tmp_path / "teacher"
    Trainer(model=gpt2(1), args=args(out, 20, save_total_limit=2), train_dataset=Tokens()).train()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-15", "checkpoint-20"]
    with pytest.raises(
        TrajectoryError, match=r"every 5 steps .*checkpoint-5, checkpoint-10 are gone.*save_total_limit"
    ):
        HFTrajectory(out, GPT2LMHeadModel)
    with pytest.warns(UserWarning, match="checkpoint-5, checkpoint-10 are gone"):
        traj = HFTrajectory(out, GPT2LMHeadModel, missing_checkpoints="warn")
    assert traj.steps == [15, 20] and traj.missing_steps == [5, 10]
    with pytest.raises(ValueError, match="missing_checkpoints='ignore': one of 'error', 'warn'"):
        HFTrajectory(out, GPT2LMHeadModel, missing_checkpoints="ignore")


@pytest.mark.parametrize(
    "steps,state,missing",
    [
        ([15, 20], {"save_steps": 5, "global_step": 20, "epoch": 2.5}, [5, 10]),
        ([5, 20], {"save_steps": 5, "global_step": 20, "epoch": 2.5, "best_global_step": 5}, [10, 15]),
        ([5, 20], {"save_steps": 5, "global_step": 20, "best_model_checkpoint": "out/checkpoint-5"}, [10, 15]),
        ([20, 22], {"save_steps": 5, "global_step": 22, "epoch": 2.75}, [5, 10, 15]),  # a final save off the grid
        ([20], {"save_steps": 5, "global_step": 20, "epoch": 2.5}, [5, 10, 15]),  # save_total_limit=1
        ([5, 10, 15, 20], {"save_steps": 5, "global_step": 20, "epoch": 2.5}, []),
        ([1000, 2000, 3000], {"save_steps": 500, "global_step": 3000, "epoch": 3.0}, []),  # saved per epoch
        ([1000], {"save_steps": 500, "global_step": 1000, "epoch": 1.0}, []),  # one epoch: cannot tell
        ([10, 20], {"save_steps": 5, "global_step": 20, "epoch": 2.5}, []),  # not consecutive saves: cannot tell
        ([15, 20], None, []),  # no trainer_state.json
    ],
)
def test_missing_checkpoints_are_read_from_the_trainer_state(teacher_run, tmp_path, steps, state, missing):
    out = tmp_path / "teacher"
    for step in steps:
        shutil.copytree(teacher_run / "checkpoint-5", out / f"checkpoint-{step}")
        (out / f"checkpoint-{step}" / "trainer_state.json").unlink()
    if state is not None:
        (out / f"checkpoint-{steps[-1]}" / "trainer_state.json").write_text(json.dumps({**state, "log_history": []}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert HFTrajectory(out, GPT2LMHeadModel, missing_checkpoints="warn").missing_steps == missing
    if missing:
        with pytest.raises(TrajectoryError, match="are gone"):
            HFTrajectory(out, GPT2LMHeadModel)


@pytest.mark.parametrize("damage", ["truncated", "header", "shard", "bin", "trainer_state"])
def test_a_damaged_checkpoint_is_refused_when_the_trajectory_is_opened(teacher_run, tmp_path, damage):
    """Every checkpoint is checked before step 0, not when the schedule reaches it: a truncated or garbled
    safetensors file, a shard index naming a missing shard, a truncated pytorch_model.bin, a garbled
    trainer_state.json -- each one error naming the file."""
    out = tmp_path / "teacher"
    shutil.copytree(teacher_run, out)
    checkpoint = out / "checkpoint-15"
    weights = checkpoint / "model.safetensors"
    data = weights.read_bytes()
    if damage == "truncated":
        weights.write_bytes(data[: len(data) // 2])
        match = r"checkpoint-15/model.safetensors \(checkpoint of step 15\) cannot be loaded: .*bytes"
    elif damage == "header":
        weights.write_bytes((10**9).to_bytes(8, "little") + data[8:])
        match = r"checkpoint-15/model.safetensors \(checkpoint of step 15\) cannot be loaded"
    elif damage == "shard":
        weights.unlink()
        index = {"weight_map": {"transformer.wte.weight": "model-00001-of-00002.safetensors"}}
        (checkpoint / "model.safetensors.index.json").write_text(json.dumps(index))
        match = "model.safetensors.index.json .*names the shard model-00001-of-00002.safetensors, which is missing"
    elif damage == "bin":
        weights.unlink()
        torch.save(GPT2LMHeadModel.from_pretrained(checkpoint.parent / "checkpoint-5").state_dict(), checkpoint / "w")
        (checkpoint / "pytorch_model.bin").write_bytes((checkpoint / "w").read_bytes()[:-100])
        match = r"checkpoint-15/pytorch_model.bin \(checkpoint of step 15\) cannot be loaded: a damaged zip"
    else:
        state = out / "checkpoint-20" / "trainer_state.json"
        state.write_text(state.read_text()[:-40])
        match = "checkpoint-20/trainer_state.json is not valid JSON"
    with pytest.raises(TrajectoryError, match=match):
        HFTrajectory(out, GPT2LMHeadModel)


# ---- A TRL user on a language task: a teacher's checkpoint-* trajectory, a student distilled on its sentences ----


class Sentences(torch.utils.data.Dataset):
    """``n`` sentences of ``task`` (BOS s EOS), right-padded to ``width`` with the pad id: attention mask 0 and
    labels -100 there, and on BOS (the prompt that generation continues)."""

    def __init__(self, task, n, seed, width=32):
        batch = task.sample_batch(n, generator(seed, "hf-sentences"))
        ids = torch.full((n, width), task.vocabulary.pad, dtype=torch.long)
        ids[:, : batch.inputs.shape[1]] = batch.inputs
        mask = torch.zeros_like(ids)
        mask[:, : batch.inputs.shape[1]] = batch.attention_mask
        self.rows = [
            {
                "input_ids": i,
                "attention_mask": m,
                "labels": i.masked_fill(m == 0, -100).index_fill(0, torch.tensor(0), -100),
            }
            for i, m in zip(ids, mask)
        ]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def _held_out_loss(model, rows):
    """Next-token cross-entropy (nats per supervised position) of ``model`` on ``rows``."""
    batch = collate(rows)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)).item()


@pytest.mark.e2e  # a teacher's training and a student's with generation: 1-3 min on 2 busy cores
def test_a_trl_user_distils_a_gpt2_student_from_a_checkpoint_trajectory_on_grammar_sentences(tmp_path):
    """pcfg-lm sentences (a 4-level generated grammar): a GPT-2 teacher trained by a plain Trainer saves
    checkpoint-5..60; a 1-head GPT-2 student is distilled from them with a progressive schedule and TRL's GKD
    arguments (lmbda 0.5, beta 0.5, on GKDConfig-like args) through ProgressiveDistillationTrainer. The schedule
    walks the checkpoints in order, both on-policy and data steps run, and the student's held-out loss falls."""
    task = PCFGNextTokenTask(grammar=GrammarSpec(levels=4, seed=0), eval_size=8, max_length=64)
    vocab = task.num_classes
    train, held_out = Sentences(task, 256, seed=0), Sentences(task, 64, seed=1)

    def lm(heads, seed):
        torch.manual_seed(seed)
        config = GPT2Config(vocab_size=vocab, n_positions=64, n_embd=8 * heads, n_layer=1, n_head=heads)
        return GPT2LMHeadModel(config)

    out = tmp_path / "teacher"
    Trainer(model=lm(4, seed=0), args=args(out, 60, save_total_limit=None), train_dataset=train).train()
    trajectory = HFTrajectory(out, GPT2LMHeadModel)
    assert trajectory.steps == list(range(5, 61, 5))
    teacher = trajectory.load_model(60).eval()
    assert _held_out_loss(teacher, held_out.rows) < 0.8  # the teacher learned the grammar's next tokens

    student = lm(1, seed=3)
    before = _held_out_loss(student.eval(), held_out.rows)
    gkd = GKDArgs(
        str(tmp_path / "student"),
        max_steps=30,
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        logging_steps=5,
        seed=0,
        lmbda=0.5,
        beta=0.5,
        temperature=1.0,
        max_new_tokens=24,
    )
    trainer = ProgressiveDistillationTrainer(
        model=student, args=gkd, train_dataset=train, teacher_trajectory=trajectory, schedule=Progressive(speed=2.0)
    )
    trainer.train()
    d = trainer.distillation
    assert (d.loss, d.beta, d.lmbda, d.seq_kd) == ("generalized_jsd", 0.5, 0.5, False)
    assert 0 < trainer.generated_steps["student"] < 30 and trainer.generated_steps["teacher"] == 0  # and data steps
    used = [r["teacher_checkpoint"] for r in trainer.state.log_history if "teacher_checkpoint" in r]
    assert used == sorted(used) and used[0] < used[-1] == 60  # progressive: earlier checkpoints first
    after = _held_out_loss(student.eval(), held_out.rows)
    assert after < before - 0.3, (before, after)
