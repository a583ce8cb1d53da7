"""PCFG masked language modelling: task, BERT models, the token training path, probes, the runner."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from progdistill.core.config import ConfigError, from_dict, to_dict
from progdistill.core.settings import DistillationConfig, OptimizerConfig, TrainConfig
from progdistill.distill.losses import distillation_loss
from progdistill.distill.phases import detect_phases
from progdistill.distill.schedules import CE, OneShot, Progressive, TwoShotAuto
from progdistill.experiment import ExperimentConfig
from progdistill.models.language import BertMLMConfig
from progdistill.probes.ngram import ngram_dependence, probe_ngram, probe_positions
from progdistill.probes.oracle import probe_oracle
from progdistill.recipes.runner import run
from progdistill.store.trajectory import Trajectory
from progdistill.tasks.pcfg.grammar import GrammarError
from progdistill.tasks.pcfg.task import GrammarSpec, PCFGMaskedLMTask, Vocabulary
from progdistill.train.loop import Member, fit, generator
from progdistill.train.steps import StepContext, token_step

TASK = PCFGMaskedLMTask(grammar=GrammarSpec(levels=4, seed=0), eval_size=32, max_length=64)
TINY = BertMLMConfig(n_layer=1, n_head=2, head_dim=4)


def build(cfg=TINY, seed=0):
    return cfg.build(TASK.input_size, TASK.num_classes, [generator(seed, "init")])


def test_task_batches_are_deterministic_and_supervise_terminals_only():
    a = TASK.sample_batch(16, generator(3, "data"))
    b = TASK.sample_batch(16, generator(3, "data"))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    vocab = TASK.vocabulary
    supervised = a.targets != -100
    assert supervised.any()
    assert (a.targets[supervised] < len(vocab.terminals)).all()  # only terminals are predicted
    assert not supervised[~a.attention_mask].any()  # never PAD
    assert a.inputs.shape == a.attention_mask.shape == a.targets.shape
    c = TASK.sample_batch(16, generator(4, "data"))
    assert not torch.equal(a.inputs, c.inputs)


def test_task_config_round_trip_and_bad_values():
    data = {k: v for k, v in to_dict(TASK).items() if k != "type"}  # the tag belongs to the enclosing union
    assert from_dict(PCFGMaskedLMTask, data) == TASK
    with pytest.raises(ConfigError, match="mask_rate"):
        PCFGMaskedLMTask(mask_rate=1.0)
    with pytest.raises(ConfigError, match="mask_rate"):
        PCFGMaskedLMTask(mask_rate=0)
    with pytest.raises(GrammarError, match="no-such-grammar"):
        PCFGMaskedLMTask(grammar=GrammarSpec(name="no-such-grammar")).load_grammar()


def test_sentence_longer_than_guard_is_a_clear_error():
    task = PCFGMaskedLMTask(grammar=GrammarSpec(levels=5), max_length=5)
    with pytest.raises(GrammarError, match="max_length=5"):
        task.sample_batch(8, generator(0, "data"))


def test_sequence_longer_than_positions_is_a_clear_error():
    model = BertMLMConfig(n_layer=1, n_head=2, head_dim=4, max_positions=8).build(
        TASK.input_size, TASK.num_classes, [generator(0, "init")]
    )
    batch = TASK.sample_batch(4, generator(0, "data"))
    assert batch.inputs.shape[1] > 8
    with pytest.raises(ValueError, match="longer than the model's 8 positions"):
        model(batch.inputs, batch.attention_mask)


def test_grad_accumulation_must_divide_batch():
    with pytest.raises(ConfigError, match="grad_accumulation"):
        TrainConfig(model=TINY, batch_size=10, grad_accumulation=3)


def _grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("teacher_too", [False, True])
def test_grad_accumulation_normalizes_by_the_whole_steps_supervised_tokens(teacher_too):
    # Micro-batches with very different numbers of masked tokens: a per-micro-batch mean would weight the
    # tokens of the sparse micro-batch more; the step's gradient must equal the one-batch gradient.
    batch = TASK.sample_batch(8, generator(1, "data"))
    targets = batch.targets.clone()
    targets[:4, ::2] = -100  # the first micro-batch keeps about half its supervised tokens
    batch = batch.with_targets(targets)
    teacher = build(seed=5).eval() if teacher_too else None
    distill = DistillationConfig(temperature=2.0, alpha=0.3)
    autocast = torch.autocast("cpu", enabled=False)
    grads, values = [], []
    for accumulation in (1, 2, 4):
        model = build()
        train = TrainConfig(model=TINY, batch_size=8, grad_accumulation=accumulation)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)  # the step leaves the gradients it took
        ctx = StepContext(model, opt, list(model.parameters()), train, autocast, torch.device("cpu"))
        values.append(token_step(ctx, batch, teacher, distill).loss)
        grads.append(_grads(model))
    for g, v in zip(grads[1:], values[1:]):
        assert torch.allclose(g, grads[0], atol=1e-6, rtol=1e-4)
        assert v == pytest.approx(values[0], rel=1e-5)
    # The value is the mean per-token loss of the step, computed independently:
    model = build()
    selected = batch.targets != -100
    logits = model(batch.inputs, batch.attention_mask)[selected]
    if teacher is None:
        expected = torch.nn.functional.cross_entropy(logits, batch.targets[selected])
    else:
        teacher_logits = teacher(batch.inputs, batch.attention_mask)[selected]
        expected = distillation_loss(logits, teacher_logits, batch.targets[selected], "forward_kl", 2.0, 0.3)
    assert values[0] == pytest.approx(float(expected.detach()), rel=1e-5)


@pytest.mark.e2e
def test_teacher_trajectory_and_students_train_deterministically(tmp_path):
    from progdistill.distill.teachers import TeacherPool
    from progdistill.store.trajectory import TrajectoryWriter

    adamw = OptimizerConfig(name="adamw", lr=3e-3, lr_schedule="cosine")
    train = TrainConfig(
        model=TINY, optimizer=adamw, steps=20, batch_size=8, eval_every=10, checkpoint_every=10, grad_accumulation=2
    )
    writer = TrajectoryWriter(tmp_path / "teacher", {"test": 1})
    history = fit(
        TASK, build(), train, [Member("teacher", 0, CE())], data_stream="teacher-data", checkpoint_writer=writer
    )
    writer.finish()
    assert [r["step"] for r in history[0]] == [0, 10, 20]
    assert history[0][-1]["eval_loss"] < history[0][0]["eval_loss"]
    trajectory = Trajectory(tmp_path / "teacher")
    assert trajectory.steps == [0, 10, 20]
    results = []
    for _ in range(2):
        pool = TeacherPool(trajectory, build, torch.device("cpu"))
        results.append(
            fit(
                TASK,
                build(seed=1),
                train,
                [Member("s", 0, Progressive())],
                data_stream="student",
                teachers=pool,
                distillation=DistillationConfig(temperature=1.0),
            )
        )
    assert results[0] == results[1]
    assert [r["teacher_checkpoint"] for r in results[0][0]] == [10, 10, 20]  # the next checkpoint ahead


def test_detect_phases_leaves_out_the_untrained_checkpoint():
    steps = list(range(0, 1600, 100))
    loss = [2.0, 1.05, 0.99, 0.98, 0.97, 0.96, 0.93, 0.8, 0.6, 0.48, 0.45, 0.43, 0.42, 0.41, 0.40, 0.40]
    phases = detect_phases(steps, loss)
    assert phases.plateau[0] == 0
    assert 500 <= phases.sharp_drop[0] <= 700 and 800 <= phases.sharp_drop[1] <= 1000
    assert TwoShotAuto(metric="eval_loss").pick(steps, loss) in (700, 800)


class _Bigram(torch.nn.Module):
    """Predicts position p from the token at p - 1 only (a planted bigram model)."""

    def __init__(self, vocab_size):
        super().__init__()
        self.table = torch.randn(vocab_size, vocab_size, generator=torch.Generator().manual_seed(0)) * 3

    def forward(self, ids, attention_mask=None):
        previous = torch.cat([ids[:, :1], ids[:, :-1]], dim=1)
        return self.table[previous]


class _Constant(torch.nn.Module):
    def forward(self, ids, attention_mask=None):
        return torch.zeros(*ids.shape, 7)


def test_ngram_dependence_on_planted_models():
    vocab = Vocabulary(("a", "b", "c"))
    sentences = [s.tokens for s in TASK.sample_sentences(16, generator(0, "probe"))]
    bigram = ngram_dependence(_Bigram(vocab.size), sentences, vocab)
    for w in (3, 5, 7):
        assert bigram[f"M_close/{w}"]["median"] == pytest.approx(0.0, abs=1e-6)  # the window keeps p - 1
        assert bigram[f"M_robust/{w}"]["median"] > 0.1  # masking the window removes it
        assert 0 <= bigram[f"M_robust/{w}"]["q25"] <= bigram[f"M_robust/{w}"]["q75"] <= 1
    constant = ngram_dependence(_Constant(), sentences, vocab)
    assert all(v["median"] == 0 for k, v in constant.items() if k.startswith("M_"))
    assert constant["cross_entropy"]["median"] == pytest.approx(np.log(7))  # uniform over the 7 ids
    with pytest.raises(ValueError, match="window 4"):
        ngram_dependence(_Constant(), sentences, vocab, windows=(4,))


class _CountsVisible(torch.nn.Module):
    """Ignores the token ids; its output depends only on how many positions the attention mask keeps."""

    def forward(self, ids, attention_mask):
        visible = attention_mask.float().sum(dim=1, keepdim=True)  # (B, 1)
        return torch.stack([visible, -visible, torch.zeros_like(visible)], dim=-1).expand(-1, ids.shape[1], -1)


def test_ngram_hiding_token_vs_attention_mask():
    """ "token" only replaces ids by MASK (the attention mask is untouched); "attention" also hides the masked
    positions from attention, as the authors' probe does."""
    vocab = Vocabulary(("a", "b", "c"))
    sentences = [s.tokens for s in TASK.sample_sentences(8, generator(0, "probe"))]
    token = ngram_dependence(_CountsVisible(), sentences, vocab, windows=(3,), hiding="token")
    assert all(v["median"] == 0 for k, v in token.items() if k.startswith("M_"))
    hidden = ngram_dependence(_CountsVisible(), sentences, vocab, windows=(3,), hiding="attention")
    assert hidden["M_robust/3"]["median"] > 0 and hidden["M_close/3"]["median"] > hidden["M_robust/3"]["median"]
    bigram = _Bigram(vocab.size)  # reads ids only: both ways of masking give the same scores
    assert ngram_dependence(bigram, sentences, vocab, hiding="attention") == ngram_dependence(bigram, sentences, vocab)
    with pytest.raises(ValueError, match="hiding='mask'"):
        ngram_dependence(bigram, sentences, vocab, hiding="mask")


def test_probe_positions_pick_only_maskable_positions():
    maskable = torch.zeros(2, 12, dtype=torch.bool)
    maskable[0, 1:11] = True  # BOS, 10 tokens, EOS
    maskable[1, 1:4] = True  # BOS, 3 tokens, EOS, PAD...
    maskable[0, 5] = False  # e.g. a [SEP] inside a packed text sequence
    where = probe_positions(maskable, per_sentence=4)
    assert all(maskable[s, p] for s, p in zip(where.sentence, where.position))
    assert (where.sentence == 0).sum() == 4 and (where.sentence == 1).sum() == 3


@pytest.mark.e2e
def test_pcfg_mlm_run_end_to_end(tmp_path):
    adamw = OptimizerConfig(name="adamw", lr=3e-3, lr_schedule="cosine")
    train = TrainConfig(model=TINY, optimizer=adamw, steps=40, batch_size=8, eval_every=10, checkpoint_every=10)
    config = ExperimentConfig(
        preset="tiny-pcfg",
        task=TASK,
        teacher=train,
        student=TrainConfig(
            model=BertMLMConfig(n_layer=1, n_head=1, head_dim=4), optimizer=adamw, steps=20, batch_size=8, eval_every=10
        ),
        schedules=(CE(), OneShot()),
        seeds=1,
        threshold=0.5,
    )
    results = run(config, tmp_path / "run", log=lambda *a: None)
    assert {s["schedule"] for s in results["students"]} == {"ce", "one-shot"}
    assert all(s["final_loss"] > 0 for s in results["students"])
    pcfg = results["probes"]["ngram"]
    assert pcfg["metric"] == "M_robust/3" and "students" in pcfg
    records = [json.loads(line) for line in (tmp_path / "run" / "probes" / "ngram.jsonl").read_text().splitlines()]
    assert len(records) == 5 + 2  # teacher checkpoints 0..40 and two students
    for name in ("ngram.png", "nonterminals.png"):
        assert (tmp_path / "run" / "probes" / name).stat().st_size > 0
    assert "## Probes" in (tmp_path / "run" / "summary.md").read_text()


def test_bad_grammar_file_is_refused_before_the_run_directory_is_touched(tmp_path, capsys):
    from progdistill.cli import main

    grammar = tmp_path / "bad.txt"
    grammar.write_text("s -> a b [0.5]\ns -> b [0.4]\na -> 'a' [1]\nb -> 'b' [1]\n", encoding="utf-8")
    out = tmp_path / "run"
    assert main(["run", "pcfg-mlm", "--out", str(out), "--set", f"task.grammar.name={grammar}"]) == 2
    assert "bad.txt" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.e2e
def test_export_and_probe_cli_on_a_finished_run(tmp_path, capsys):
    from transformers import BertForMaskedLM

    from progdistill.cli import main

    adamw = OptimizerConfig(name="adamw", lr=3e-3)
    train = TrainConfig(model=TINY, optimizer=adamw, steps=20, batch_size=8, eval_every=10, checkpoint_every=10)
    config = ExperimentConfig(
        preset="tiny-pcfg", task=TASK, teacher=train, student=train, schedules=(CE(),), seeds=1, threshold=0.5
    )
    run(config, tmp_path / "run", log=lambda *a: None)
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "hf"), "--step", "10"]) == 0
    model = BertForMaskedLM.from_pretrained(tmp_path / "hf")
    vocab = json.loads((tmp_path / "hf" / "vocab.json").read_text())  # the token of each id
    assert vocab[TASK.vocabulary.mask] == "MASK" and vocab[: len(TASK.vocabulary.terminals)] == list(
        TASK.vocabulary.terminals
    )
    original = build()
    original.load_state_dict(Trajectory(tmp_path / "run" / "teacher").load(10))
    batch = TASK.sample_batch(2, generator(0, "x"))
    assert torch.allclose(
        model(input_ids=batch.inputs, attention_mask=batch.attention_mask).logits,
        original(batch.inputs, batch.attention_mask),
        atol=1e-5,
    )
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "hf")]) == 2  # never overwrites
    assert "is a directory that is not empty" in capsys.readouterr().err
    (tmp_path / "afile").write_text("mine")
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "afile")]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err and (tmp_path / "afile").read_text() == "mine"
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "final"), "--step", "-1"]) == 0  # -1 = final
    assert "(final checkpoint)" in capsys.readouterr().out
    assert main(["probe", "ngram", str(tmp_path / "run"), "--windows", "4"]) == 2
    assert "window 4" in capsys.readouterr().err
    assert main(["probe", "ngram", str(tmp_path / "run"), "--windows", "3", "3"]) == 2
    assert "repeat a size" in capsys.readouterr().err
    assert main(["probe", "ngram", str(tmp_path / "run"), "--windows", "999"]) == 2
    assert "window 999 is longer than every probed sequence" in capsys.readouterr().err
    probes = tmp_path / "run" / "probes"
    own, nonterminals = (probes / "ngram.jsonl").read_text(), (probes / "nonterminals.png").read_bytes()
    assert main(["probe", "ngram", str(tmp_path / "run"), "--windows", "3", "--no-students"]) == 0
    assert (probes / "ngram.jsonl").read_text() == own  # the run's own 3/5/7 results are not replaced
    assert (probes / "nonterminals.png").read_bytes() == nonterminals  # nor its non-terminal figure
    assert (probes / "ngram-windows-3-summary.json").exists()
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(results["probes"]) == {"ngram", "ngram-windows-3"}  # the report follows probes/
    # The grammar's Bayes-optimal predictor on the same sentences and positions, added to the report.
    assert main(["probe", "oracle", str(tmp_path / "run"), "--windows", "2"]) == 2
    assert "window 2" in capsys.readouterr().err
    assert main(["probe", "oracle", str(tmp_path / "run"), "--windows", "7", "5", "3"]) == 0  # the default set
    oracle = json.loads((probes / "ngram-oracle-summary.json").read_text())
    assert oracle["settings"]["positions"] > 0 and set(oracle["scores"]) == {
        "M_robust/3",
        "M_close/3",
        "M_robust/5",
        "M_close/5",
        "M_robust/7",
        "M_close/7",
        "cross_entropy",
    }
    assert 0 <= oracle["median"] <= 1 and oracle["scores"]["cross_entropy"]["mean"] >= 0
    assert oracle["masked_lm_loss"]["positions"] > 0 and oracle["masked_lm_loss"]["mean"] > 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["probes"]["ngram-oracle"] == oracle
    assert "Bayes-optimal masked LM" in (tmp_path / "run" / "summary.md").read_text()
    assert "cross_entropy" in json.loads((probes / "ngram.jsonl").read_text().splitlines()[0])["ngram"]
    # --no-students reprobes the teacher and keeps the students' stored records.
    students = [line for line in (probes / "ngram.jsonl").read_text().splitlines() if '"teacher"' not in line]
    assert students and main(["probe", "ngram", str(tmp_path / "run"), "--no-students"]) == 0
    assert [line for line in (probes / "ngram.jsonl").read_text().splitlines() if '"teacher"' not in line] == students
    # Refused before any work, naming the file: an oracle summary that cannot be read, a config edited after the run.
    before = {p.name: p.read_bytes() for p in probes.iterdir()}
    good = (probes / "ngram-oracle-summary.json").read_text()
    (probes / "ngram-oracle-summary.json").write_text(good[:100])
    assert main(["probe", "ngram", str(tmp_path / "run")]) == 2
    assert "ngram-oracle-summary.json is unreadable" in capsys.readouterr().err
    (probes / "ngram-oracle-summary.json").write_text(good)
    config_path = tmp_path / "run" / "config.json"
    saved = config_path.read_text()
    config_path.write_text(saved.replace('"mask_rate": 0.3', '"mask_rate": 0.2'))
    assert config_path.read_text() != saved
    assert main(["probe", "oracle", str(tmp_path / "run")]) == 2
    assert "was edited after the run" in capsys.readouterr().err
    config_path.write_text(saved)
    assert {p.name: p.read_bytes() for p in probes.iterdir()} == before
    # The paper's distance (L1 = 2 x TV) goes to its own files: the default results stay byte-identical, and every
    # score is exactly twice the default's.
    with pytest.raises(ValueError, match="distance='L1'"):
        probe_ngram(tmp_path / "run", distance="L1", log=lambda *a: None)
    summary = probe_ngram(tmp_path / "run", distance="l1", log=lambda *a: None)
    assert {p.name: p.read_bytes() for p in probes.iterdir() if p.name in before} == before
    default = json.loads((probes / "ngram-summary.json").read_text())
    assert summary["distance"] == "l1" and default["distance"] == "tv"
    assert summary["peak_median"] == 2 * default["peak_median"] and (probes / "ngram-l1.png").exists()
    tv_lines, l1_lines = ((probes / f"{n}.jsonl").read_text().splitlines() for n in ("ngram", "ngram-l1"))
    assert len(tv_lines) == len(l1_lines)
    for tv, l1 in zip(map(json.loads, tv_lines), map(json.loads, l1_lines)):
        assert (tv["model"], tv["step"]) == (l1["model"], l1["step"])
        assert l1["ngram"] == {
            k: {s: 2 * x for s, x in v.items()} if k.startswith("M_") else v for k, v in tv["ngram"].items()
        }
    oracle = probe_oracle(tmp_path / "run", windows=(3,), distance="l1", log=lambda *a: None)
    assert oracle["settings"]["distance"] == "l1"
    assert json.loads((probes / "ngram-oracle-summary.json").read_text()) != oracle  # the TV one is kept
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(results["probes"]) == {
        "ngram",
        "ngram-windows-3",
        "ngram-oracle",
        "ngram-l1",
        "ngram-oracle-l1-windows-3",
    }
    assert results["probes"]["ngram-l1"]["distance"] == "l1"


def _tiny_config(task=TASK, **student):
    adamw = OptimizerConfig(name="adamw", lr=3e-3)
    train = TrainConfig(model=TINY, optimizer=adamw, steps=20, batch_size=8, eval_every=10, checkpoint_every=10)
    return ExperimentConfig(
        preset="tiny-pcfg",
        task=task,
        teacher=train,
        student=TrainConfig(**{**dict(model=TINY, optimizer=adamw, steps=10, batch_size=8, eval_every=10), **student}),
        schedules=(CE(),),
        seeds=1,
        threshold=0.5,
    )


@pytest.mark.e2e
def test_a_run_with_two_teacher_checkpoints_ends_with_a_report(tmp_path):
    """Too few checkpoints to look for loss phases is said in the probe summary, not a crash at the run's end."""
    config = _tiny_config()
    config = replace(config, teacher=replace(config.teacher, steps=10, checkpoint_every=10))
    results = run(config, tmp_path / "run", log=lambda *a: None)
    summary = results["probes"]["ngram"]
    assert summary["phases"] is None and "at least 3 checkpoints" in summary["no_transition"]
    assert "No sharp drop detected" in (tmp_path / "run" / "summary.md").read_text()


@pytest.mark.e2e
def test_a_grammar_file_edited_in_place_is_refused_not_mixed(tmp_path):
    from progdistill.tasks.pcfg.grammar import random_grammar

    path = tmp_path / "g.txt"
    path.write_text(random_grammar(4, 3, 2, seed=0).to_text(), encoding="utf-8")
    config = _tiny_config(PCFGMaskedLMTask(grammar=GrammarSpec(name=str(path)), eval_size=16, max_length=64))
    run(config, tmp_path / "run", log=lambda *a: None)
    assert (tmp_path / "run" / "data.sha256").exists()
    run(config, tmp_path / "run", log=lambda *a: None)  # same content: reused
    path.write_text(random_grammar(4, 3, 2, seed=1).to_text(), encoding="utf-8")
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    with pytest.raises(ConfigError, match="content of the grammar or corpus"):
        run(config, tmp_path / "run", log=lambda *a: None)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before
    run(config, tmp_path / "run", overwrite=True, log=lambda *a: None)  # explicitly replaced


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(model=BertMLMConfig(n_layer=1, n_head=2, head_dim=4, max_positions=8)), "student.model.max_positions=8"),
    ],
)
def test_size_errors_are_found_before_anything_is_written(tmp_path, change, match):
    with pytest.raises(ConfigError, match=match):
        run(_tiny_config(**change), tmp_path / "run", log=lambda *a: None)
    assert not (tmp_path / "run").exists()


def test_two_shot_auto_needs_room_and_checkpoints(tmp_path):
    with pytest.raises(ConfigError, match=r"schedules\.0\.first_steps=400"):
        ExperimentConfig(
            preset="x",
            task=TASK,
            teacher=TrainConfig(model=TINY),
            student=TrainConfig(model=TINY, steps=100),
            schedules=(TwoShotAuto(first_steps=400),),
        )
    with pytest.raises(ConfigError, match="teacher.checkpoint_every=100 saves 2"):
        ExperimentConfig(
            preset="x",
            task=TASK,
            teacher=TrainConfig(model=TINY, steps=30, checkpoint_every=100),
            student=TrainConfig(model=TINY, steps=100),
            schedules=(TwoShotAuto(first_steps=40),),
        )


@pytest.mark.e2e
def test_cli_refuses_a_file_as_out_and_bad_export_requests(tmp_path, capsys):
    from progdistill.cli import main

    afile = tmp_path / "notes.txt"
    afile.write_text("keep me", encoding="utf-8")
    assert main(["run", "pcfg-mlm", "--out", str(afile)]) == 2
    assert afile.read_text(encoding="utf-8") == "keep me"
    run(_tiny_config(), tmp_path / "run", log=lambda *a: None)
    capsys.readouterr()
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "hf"), "--which", "nobody"]) == 2
    assert "valid: teacher, ce-seed0" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "hf"), "--which", "ce-seed0", "--step", "10"]) == 2
    assert main(["export", str(tmp_path / "run"), str(afile)]) == 2
    assert not (tmp_path / "hf").exists()


def test_oracle_probe_needs_a_grammar_run(tmp_path, capsys):
    from progdistill.cli import main
    from progdistill.recipes.presets import get_preset

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps(get_preset("parity-mlp").to_dict()))
    assert main(["probe", "oracle", str(tmp_path / "run")]) == 2
    assert "needs a PCFG masked LM run (pcfg-mlm)" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.json"]  # nothing written


@pytest.mark.e2e
def test_the_pcfg_mlm_preset_runs_end_to_end_shrunk(tmp_path):
    """The preset's grammar, models and schedules (progressive at speed 8) on a few steps; 2-shot-auto needs a
    real transition, so the shrunk run keeps the other three schedules."""
    from progdistill.recipes.presets import get_preset

    preset = get_preset("pcfg-mlm")
    config = replace(
        preset,
        task=replace(preset.task, eval_size=16),
        seeds=1,
        schedules=preset.schedules[:3],
        teacher=replace(preset.teacher, steps=20, batch_size=4, checkpoint_every=10, eval_every=10),
        student=replace(preset.student, steps=4, batch_size=4, eval_every=2),
    )
    results = run(config, tmp_path / "run", log=lambda *a: None)
    assert [s["schedule"] for s in results["students"]] == ["ce", "one-shot", "progressive-x8"]
    progressive = [
        json.loads(line)
        for line in (tmp_path / "run" / "students" / "progressive-x8-seed0" / "metrics.jsonl").read_text().splitlines()
    ]
    # Speed 8: student step t uses the first checkpoint at or after 8t (records name the step before theirs).
    assert [(r["step"], r["teacher_checkpoint"]) for r in progressive] == [(0, 10), (2, 10), (4, 20)]
    assert set(results["probes"]["ngram"]["students"]) == {"ce", "one-shot", "progressive-x8"}


def test_an_interrupted_command_ends_with_one_line(monkeypatch, capsys):
    import progdistill.cli
    from progdistill.cli import main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(progdistill.cli, "probe_oracle", interrupted)
    assert main(["probe", "oracle", "anywhere"]) == 130
    assert capsys.readouterr().err.startswith("progdistill: interrupted;")


def test_sentences_too_short_for_the_end_of_run_probe_are_refused_before_training(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("s -> 'a' 'b' [1.0]\n", encoding="utf-8")
    config = _tiny_config(PCFGMaskedLMTask(grammar=GrammarSpec(name=str(path)), eval_size=16, max_length=64))
    with pytest.raises(ConfigError, match="ends with the n-gram probe .*window 5 is longer than every probed"):
        run(config, tmp_path / "run", log=lambda *a: None)
    assert not (tmp_path / "run").exists()
