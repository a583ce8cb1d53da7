"""Hub revisions as a trajectory, offline: a Hugging Face cache directory built in the test."""

import re

import pytest

transformers = pytest.importorskip("transformers")
huggingface_hub = pytest.importorskip("huggingface_hub")
pytest.importorskip("accelerate")

import torch
from transformers import GPT2Config, GPT2LMHeadModel, TrainerCallback, TrainingArguments

from progdistill.distill.schedules import Progressive
from progdistill.integrations.hf import ProgressiveDistillationTrainer
from progdistill.integrations.hub import HubTrajectory, cached_revisions
from progdistill.store.trajectory import TrajectoryError

REPO = "example-org/tiny-pythia"
V, T = 16, 10


def tiny(seed):
    torch.manual_seed(seed)
    return GPT2LMHeadModel(
        GPT2Config(
            vocab_size=V, n_positions=T, n_embd=16, n_layer=1, n_head=2, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0
        )
    )


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """The cache layout huggingface_hub writes: models--org--name/refs/<revision> holds a commit hash, whose files
    are in snapshots/<hash>/. Revisions step10, step20, step30 and a branch 'main' (not a step)."""
    repo = tmp_path / "hub" / "models--example-org--tiny-pythia"
    for k, revision in enumerate(["step10", "step20", "step30", "main"]):
        commit = f"{k + 1:040x}"
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / revision).write_text(commit)
        tiny(seed=k).save_pretrained(repo / "snapshots" / commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once at import
    return tmp_path / "hub"


def test_revisions_are_read_from_the_cache_and_steps_from_their_names(offline_cache):
    assert cached_revisions(REPO, offline_cache) == ["main", "step10", "step20", "step30"]
    traj = HubTrajectory(REPO, GPT2LMHeadModel, cache_dir=offline_cache)
    assert traj.steps == [10, 20, 30] and traj.revisions[20] == "step20"
    model = traj.load_model(20)
    expected = tiny(seed=1)  # step20 was saved from seed 1
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), expected.state_dict().values()))
    custom = HubTrajectory(REPO, GPT2LMHeadModel, revision_pattern=r"^step(\d)0$", cache_dir=offline_cache)
    assert custom.steps == [1, 2, 3]


def test_a_pattern_matching_nothing_names_it_and_the_revisions(offline_cache):
    pattern = r"^ckpt-(\d+)$"
    expected = (
        f"revision_pattern={pattern!r} matches no revision of example-org/tiny-pythia in the Hugging Face "
        "cache (offline); revisions: main, step10, step20, step30"
    )
    with pytest.raises(TrajectoryError, match=re.escape(expected)):
        HubTrajectory(REPO, GPT2LMHeadModel, revision_pattern=r"^ckpt-(\d+)$", cache_dir=offline_cache)
    with pytest.raises(TrajectoryError, match="exactly one group"):
        HubTrajectory(REPO, GPT2LMHeadModel, revision_pattern=r"^step\d+$", cache_dir=offline_cache)
    with pytest.raises(TrajectoryError, match="both match"):
        HubTrajectory(REPO, GPT2LMHeadModel, revision_pattern=r"(\d)$", cache_dir=offline_cache)
    with pytest.raises(TrajectoryError, match="carry no 'eval_loss'"):
        HubTrajectory(REPO, GPT2LMHeadModel, cache_dir=offline_cache).curve("eval_loss")


class Rows(torch.utils.data.Dataset):
    def __init__(self):
        self.ids = torch.randint(0, V, (16, T), generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def test_distilling_from_hub_revisions_offline_follows_the_schedule(offline_cache, tmp_path):
    seen = []

    class Record(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            seen.append(trainer.checkpoint_in_use)

    args = TrainingArguments(
        str(tmp_path / "student"),
        max_steps=4,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    trainer = ProgressiveDistillationTrainer(
        model=tiny(seed=9),
        args=args,
        train_dataset=Rows(),
        callbacks=[Record()],
        teacher_trajectory=HubTrajectory(REPO, GPT2LMHeadModel, cache_dir=offline_cache),
        schedule=Progressive(speed=10.0),
        lmbda=0.5,
        beta=0.5,
        max_new_tokens=4,
    )
    trainer.train()
    assert seen == [10, 20, 30, 30]  # student step t uses the first revision after 10 t
    assert trainer.teacher_loads == 3
