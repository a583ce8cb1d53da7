"""Hugging Face Trainer integration with tiny GPT-2 models built from configs (no downloads)."""

import pytest

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from progdistill.config import ConfigError, DistillationConfig
from progdistill.hf import HFTrajectory, ProgressiveDistillationTrainer
from progdistill.losses import distillation_loss
from progdistill.schedules import OneShot, Progressive
from progdistill.trajectory import TrajectoryError


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
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=16, n_embd=8 * heads, n_layer=1,
                                      n_head=heads, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0))


def args(out, steps, **kw):
    return TrainingArguments(str(out), max_steps=steps, per_device_train_batch_size=8, learning_rate=1e-2,
                             save_strategy="steps", save_steps=5, report_to=[], use_cpu=True,
                             disable_tqdm=True, logging_steps=5, seed=0, **kw)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("hf") / "teacher"
    Trainer(model=gpt2(4), args=args(out, 20, eval_strategy="steps", eval_steps=5),
            train_dataset=Tokens(), eval_dataset=Tokens(n=16, seed=1)).train()
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

    class Watch(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            seen.append(trainer.checkpoint_in_use)

    trainer = ProgressiveDistillationTrainer(model=gpt2(1, seed=1), args=args(tmp_path / "s", 20),
                                             train_dataset=Tokens(seed=2), teacher_trajectory=traj,
                                             schedule=Progressive(speed=1.0), callbacks=[Watch()])
    trainer.train()
    assert seen == [5] * 5 + [10] * 5 + [15] * 5 + [20] * 5
    assert trainer.teacher_loads == 4  # once per change of checkpoint
    for teacher in trainer.teachers.models.values():
        assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_loss_is_the_shifted_distillation_loss(teacher_run, tmp_path):
    traj = HFTrajectory(teacher_run, GPT2LMHeadModel)
    student = gpt2(1, seed=3)
    trainer = ProgressiveDistillationTrainer(model=student, args=args(tmp_path / "s", 5), train_dataset=Tokens(),
                                             teacher_trajectory=traj, schedule=OneShot(),
                                             distillation=DistillationConfig(temperature=2.0, alpha=0.25))
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
    trainer = ProgressiveDistillationTrainer(model=gpt2(1, vocab=24), args=args(tmp_path / "s", 5),
                                             train_dataset=Tokens(), teacher_trajectory=traj, schedule=OneShot())
    batch = {k: torch.stack([Tokens()[i][k] for i in range(4)]) for k in ("input_ids", "labels")}
    with pytest.raises(ConfigError, match="teacher output size 16 .* differs from the student's 24"):
        trainer.compute_loss(trainer.model, batch)
