"""Masked LM on real text: the text-mlm task (corpus split, tokenizer beside the run, packing, masking)."""

import json
from pathlib import Path

import pytest
import torch

from progdistill.core.config import ConfigError
from progdistill.core.seeding import generator
from progdistill.core.settings import OptimizerConfig, TrainConfig
from progdistill.distill.schedules import CE, Progressive
from progdistill.experiment import ExperimentConfig
from progdistill.models.language import BertMLMConfig
from progdistill.recipes.runner import run
from progdistill.tasks.text.corpus import CorpusError
from progdistill.tasks.text.task import TextMaskedLMTask
from progdistill.tasks.text.tokenizer import MASK_ID, SPECIAL_TOKENS, TokenizerError

WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "a",
    "mat",
    "while",
    "the",
    "dog",
    "ran",
    "over",
    "the",
    "hill",
    "and",
    "a",
    "bird",
    "sang",
    "in",
    "the",
    "tall",
    "green",
    "tree",
    "near",
    "the",
    "old",
    "stone",
    "bridge",
    "by",
    "the",
    "river",
]


@pytest.fixture
def corpus(tmp_path):
    paragraphs = []
    for i in range(40):
        words = [WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(60)]
        paragraphs.append(f"document {i}: " + " ".join(words) + ".")  # distinct documents
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(paragraphs), encoding="utf-8")
    return str(path)


def test_batches_mask_only_ordinary_tokens_deterministically(corpus):
    task = TextMaskedLMTask(corpus=corpus, vocab_size=200, sequence_length=16, mask_rate=0.3, eval_size=8)
    a = task.sample_batch(32, generator(0, "d"))
    b = task.sample_batch(32, generator(0, "d"))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert a.inputs.shape == (32, 16)
    supervised = a.targets != -100
    assert supervised.any() and (a.targets[supervised] >= len(SPECIAL_TOKENS)).all()
    assert (a.inputs[supervised] == MASK_ID).float().mean() > 0.5
    assert (a.inputs < task.num_classes).all()
    train, held_out = task.documents()
    assert len(held_out) == 2 and len(train) == 38  # every 20th document is held out
    assert not set(held_out) & set(train)


def test_tokenizer_is_saved_beside_the_run_and_reused(corpus, tmp_path):
    task = TextMaskedLMTask(corpus=corpus, vocab_size=200, sequence_length=16)
    task.prepare(tmp_path / "run")
    saved = tmp_path / "run" / "tokenizer" / "tokenizer.json"
    assert saved.exists()
    before = saved.read_bytes()
    task.prepare(tmp_path / "run")  # loads, never rewrites
    assert saved.read_bytes() == before
    assert task.tokenizer().get_vocab_size() == task.num_classes


def test_bad_text_inputs_are_clear_errors(corpus, tmp_path):
    with pytest.raises(ConfigError, match="vocab_size"):
        TextMaskedLMTask(vocab_size=3)
    with pytest.raises(ConfigError, match="mask_rate"):
        TextMaskedLMTask(mask_rate=1.5)
    with pytest.raises(ConfigError, match="eval_fraction"):
        TextMaskedLMTask(eval_fraction=0.9)
    with pytest.raises(CorpusError, match="missing.txt"):
        TextMaskedLMTask(corpus=str(tmp_path / "missing.txt")).documents()
    with pytest.raises(TokenizerError, match="too few for one training sequence"):
        TextMaskedLMTask(corpus=corpus, vocab_size=200, sequence_length=4000).sequences()
    one = tmp_path / "one.txt"
    one.write_text("just one document here", encoding="utf-8")
    with pytest.raises(CorpusError, match="too few"):
        TextMaskedLMTask(corpus=str(one)).documents()


@pytest.mark.e2e
def test_text_mlm_run_end_to_end(corpus, tmp_path):
    task = TextMaskedLMTask(corpus=corpus, vocab_size=200, sequence_length=16, eval_size=16)
    adamw = OptimizerConfig(name="adamw", lr=3e-3)
    model = BertMLMConfig(n_layer=1, n_head=2, head_dim=4)
    config = ExperimentConfig(
        preset="tiny-text",
        task=task,
        teacher=TrainConfig(model=model, optimizer=adamw, steps=30, batch_size=8, eval_every=10, checkpoint_every=10),
        student=TrainConfig(model=model, optimizer=adamw, steps=10, batch_size=8, eval_every=5),
        schedules=(CE(), Progressive(speed=3.0)),
        seeds=1,
        threshold=0.5,
    )
    results = run(config, tmp_path / "run", log=lambda *a: None)
    assert (tmp_path / "run" / "tokenizer" / "tokenizer.json").exists()
    summary = results["probes"]["ngram"]
    assert "teacher_final_nonterminal_accuracy" not in summary  # no grammar behind text
    lines = (tmp_path / "run" / "probes" / "ngram.jsonl").read_text().splitlines()
    assert len(lines) == 4 + 2
    assert all(0 <= json.loads(line)["ngram"]["M_robust/3"]["median"] <= 1 for line in lines)


def test_bad_corpus_is_refused_before_the_run_directory_is_touched(tmp_path):
    from progdistill.cli import main

    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    out = tmp_path / "run"
    code = main(["run", "text-mlm", "--out", str(out), "--set", f"task.corpus={bad}"])
    assert code == 2
    assert not out.exists()


def test_a_corpus_file_edited_in_the_same_process_is_read_again(corpus):
    """The in-process caches of documents, tokenizer and packed ids are keyed by the files' size and mtime."""
    task = TextMaskedLMTask(corpus=corpus, vocab_size=60, sequence_length=16)
    before_docs, before_ids = task.documents(), task.sequences()
    path = Path(corpus)
    path.write_text(
        path.read_text(encoding="utf-8") + "\n\nan extra closing paragraph about a red fox.", encoding="utf-8"
    )
    after_docs = task.documents()
    assert sum(map(len, after_docs)) == sum(map(len, before_docs)) + 1
    after_ids = task.sequences()  # the new 41st document is held out (every 10th is)
    assert torch.equal(after_ids[0], before_ids[0]) and len(after_ids[1]) > len(before_ids[1])
