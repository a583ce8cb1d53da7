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
    with pytest.raises(ConfigError, match=r"output size \(teacher 16, student 24\)"):
        trainer.compute_loss(trainer.model, batch)
    batch["input_ids"][0, 0] = 23  # a token the teacher cannot embed: named before its forward pass
    with pytest.raises(ConfigError, match="input id 23 is outside the teacher's vocabulary of 16 tokens .*has 24"):
        trainer.compute_loss(trainer.model, batch)


@pytest.mark.parametrize("average_tokens", [True, False])
def test_data_parallel_over_gpus_divides_by_the_whole_batch(teacher_run, tmp_path, average_tokens):
    """nn.DataParallel (n_gpu > 1): compute_loss sees the outputs of all GPUs; Trainer passes the whole count
    (averaging tokens) or its per-GPU share, and the loss must still be the one of a single device."""
    traj = HFTrajectory(teacher_run, GPT2LMHeadModel)
    trainer = ProgressiveDistillationTrainer(
        model=gpt2(1, seed=3), args=args(tmp_path / "s", 5, average_tokens_across_devices=average_tokens),
        train_dataset=Tokens(), teacher_trajectory=traj, schedule=OneShot())
    batch = {k: torch.stack([Tokens()[i][k] for i in range(4)]) for k in ("input_ids", "labels")}
    count = torch.tensor(4 * 11)  # labelled positions after the shift
    one_device = trainer.compute_loss(trainer.model, batch, num_items_in_batch=count)
    trainer.args._n_gpu = 2
    passed = count if average_tokens else count // 2  # what Trainer hands compute_loss under DataParallel
    assert trainer.compute_loss(trainer.model, batch, num_items_in_batch=passed).item() == \
        pytest.approx(one_device.item(), rel=1e-6)


def test_gradient_accumulation_gives_the_same_update(teacher_run, tmp_path):
    """Trainer does not divide a loss-kwargs model's loss by the accumulation steps: 8 x 1 and 2 x 4 examples
    must give the same student after a step (a per-micro-batch mean would be 4x too large)."""
    traj = HFTrajectory(teacher_run, GPT2LMHeadModel)
    students = []
    for batch, accumulation in ((8, 1), (2, 4)):
        student = gpt2(1, seed=5)
        a = TrainingArguments(str(tmp_path / f"ga{accumulation}"), max_steps=2, per_device_train_batch_size=batch,
                              gradient_accumulation_steps=accumulation, learning_rate=1e-2, save_strategy="no",
                              report_to=[], use_cpu=True, disable_tqdm=True, seed=0)
        ProgressiveDistillationTrainer(model=student, args=a, train_dataset=Tokens(), teacher_trajectory=traj,
                                       schedule=Progressive(speed=1.0),
                                       distillation=DistillationConfig(alpha=0.5)).train()
        students.append(student)
    changed = False
    for (name, p1), p2 in zip(students[0].named_parameters(), students[1].parameters()):
        assert torch.allclose(p1, p2, atol=1e-5), name
        changed |= not torch.equal(p1, gpt2(1, seed=5).get_parameter(name))
    assert changed


def _classifier(labels, vocab, seed=0):
    from transformers import GPT2ForSequenceClassification
    torch.manual_seed(seed)
    return GPT2ForSequenceClassification(GPT2Config(vocab_size=vocab, n_positions=16, n_embd=8, n_layer=1, n_head=1,
                                                    num_labels=labels, pad_token_id=0))


@pytest.mark.parametrize("teacher_labels, student_vocab, error", [
    (3, 16, r"output size \(teacher 3, student 2\)"),  # label sets differ: refused
    (2, 24, None),  # the same labels over other vocabularies: fine for a classifier
])
def test_classifiers_compare_label_sets_not_vocabularies(tmp_path, teacher_labels, student_vocab, error):
    from transformers import GPT2ForSequenceClassification
    _classifier(teacher_labels, 16).save_pretrained(tmp_path / "teacher" / "checkpoint-5")
    trainer = ProgressiveDistillationTrainer(
        model=_classifier(2, student_vocab, seed=1), args=args(tmp_path / "s", 1), train_dataset=Tokens(),
        teacher_trajectory=HFTrajectory(tmp_path / "teacher", GPT2ForSequenceClassification), schedule=OneShot())
    batch = {"input_ids": torch.randint(1, 16, (4, 6)), "labels": torch.tensor([0, 1, 1, 0])}
    if error is None:
        assert torch.isfinite(trainer.compute_loss(trainer.model, batch))
    else:
        with pytest.raises(ConfigError, match=error):
            trainer.compute_loss(trainer.model, batch)


def test_checkpoints_without_weights_or_with_odd_names_are_reported(teacher_run, tmp_path):
    import shutil
    out = tmp_path / "teacher"
    shutil.copytree(teacher_run, out)
    (out / "checkpoint-20").rename(out / "checkpoint-final")
    with pytest.warns(UserWarning, match="ignoring checkpoint-final"):
        assert HFTrajectory(out, GPT2LMHeadModel).steps == [5, 10, 15]
    (out / "checkpoint-10" / "model.safetensors").unlink()
    with pytest.warns(UserWarning), pytest.raises(TrajectoryError, match="checkpoint-10 for step 10 has no weights"):
        HFTrajectory(out, GPT2LMHeadModel)
    (out / "checkpoint-10" / "adapter_model.safetensors").write_bytes(b"")  # a PEFT adapter checkpoint counts
    with pytest.warns(UserWarning):
        assert HFTrajectory(out, GPT2LMHeadModel).steps == [5, 10, 15]


DDP_SCRIPT = '''
import os, sys, torch
sys.path.insert(0, {tests!r})
from test_hf import Tokens, gpt2
from transformers import GPT2LMHeadModel, TrainingArguments
from progdistill import DistillationConfig, Progressive
from progdistill.hf import HFTrajectory, ProgressiveDistillationTrainer
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
'''


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
    one = subprocess.run([sys.executable, str(script), "8", "1", str(tmp_path / "one")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(script), "2", "2", str(tmp_path / "two")], env=env, capture_output=True, text=True,
                         timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    init = gpt2(1, seed=5).state_dict()
    assert max((a[k] - init[k]).abs().max().item() for k in a) > 1e-3  # the step moved the weights
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
