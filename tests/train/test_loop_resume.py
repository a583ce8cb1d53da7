"""The resume state file: written atomically, read back only for the same members."""

import os

import pytest
import torch

# The functions under test, imported in one place.
from progdistill.train.loop import ResumeStateError, load_state, save_state


def test_a_saved_state_is_read_back_for_the_same_members(tmp_path):
    path = tmp_path / "resume.pt"
    weights = torch.arange(6.0).view(2, 3)
    save_state(path, {"names": ["ce-seed0", "progressive-seed0"], "step": 40, "model": {"w": weights}})
    state = load_state(path, ["ce-seed0", "progressive-seed0"])
    assert state["step"] == 40 and torch.equal(state["model"]["w"], weights)
    assert [p.name for p in tmp_path.iterdir()] == ["resume.pt"]  # no temporary file left behind


def test_a_state_of_other_members_is_not_resumed(tmp_path):
    path = tmp_path / "resume.pt"
    save_state(path, {"names": ["ce-seed0", "progressive-seed0"], "step": 40})
    assert load_state(path, ["ce-seed0"]) is None  # a stack of other students: start over
    assert load_state(path, ["progressive-seed0", "ce-seed0"]) is None  # same students, other order
    assert load_state(None, ["ce-seed0"]) is None
    assert load_state(tmp_path / "missing.pt", ["ce-seed0"]) is None


def test_an_unreadable_state_is_refused_naming_the_file_and_kept(tmp_path):
    # Saved atomically, a state cannot be cut off mid-write: an unreadable one was damaged since, and
    # starting over would replace it (and the progress it holds) with no one having asked.
    path = tmp_path / "resume.pt"
    path.write_bytes(b"damaged")
    with pytest.raises(ResumeStateError, match=f"resume state {path} is unreadable .*nothing was deleted"):
        load_state(path, ["ce-seed0", "progressive-seed0"])
    assert path.read_bytes() == b"damaged"
    assert isinstance(ResumeStateError("x"), ValueError)  # the CLI's one-line errors


def test_saving_replaces_the_previous_state_whole(tmp_path):
    path = tmp_path / "resume.pt"
    save_state(path, {"names": ["teacher"], "step": 10})
    save_state(path, {"names": ["teacher"], "step": 20})
    assert load_state(path, ["teacher"]) == {"names": ["teacher"], "step": 20}
    assert not any(p.name.startswith(f".resume.pt.tmp{os.getpid()}") for p in tmp_path.iterdir())
