"""Named experiments. A preset is a function returning an :class:`ExperimentConfig`; a new experiment is a
new preset, never an edit of the training loop."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from progdistill.core.config import ConfigError, flatten, to_dict
from progdistill.core.settings import DistillationConfig, OptimizerConfig, TrainConfig
from progdistill.distill.curricula import (
    CoTraining,
    HintDistillation,
    NoisedTeacher,
    TemperatureCurriculum,
    WeightPathCurriculum,
)
from progdistill.distill.schedules import CE, FINAL, KShot, OneShot, Progressive, TwoShotAuto
from progdistill.experiment import ExperimentConfig
from progdistill.models.language import BertMLMConfig, GPT2LMConfig
from progdistill.models.mlp import MLPConfig
from progdistill.models.parity_transformer import TransformerConfig  # importing it registers the "parity-gpt2" model
from progdistill.tasks.induction import InductionTask
from progdistill.tasks.parity import ParityTask
from progdistill.tasks.pcfg.task import GrammarSpec, PCFGMaskedLMTask, PCFGNextTokenTask
from progdistill.tasks.text.task import TextMaskedLMTask

PRESETS: dict[str, tuple[str, Callable[[], ExperimentConfig]]] = {}


def preset(name: str, description: str):
    def wrap(fn):
        PRESETS[name] = (description, fn)
        return fn

    return wrap


def preset_changes(config: ExperimentConfig) -> list[str]:
    """The config fields (dotted, as ``--set`` names them) in which ``config`` differs from today's preset of its
    ``preset`` name, e.g. ``["student.steps"]`` after ``--set student.steps=...``; empty for a config equal to its
    preset, or named after no preset (a config.json written by hand). A schedule list of another length is
    the one field ``schedules``."""
    if config.preset not in PRESETS:
        return []
    reference = get_preset(config.preset)
    ours, theirs = (flatten(to_dict(c, complete=True)) for c in (config, reference))
    missing = object()
    changed = [k for k in dict.fromkeys([*ours, *theirs]) if ours.get(k, missing) != theirs.get(k, missing)]
    if len(config.schedules) != len(reference.schedules):
        changed = [k for k in changed if not k.startswith("schedules.")] + ["schedules"]
    return changed


def get_preset(name: str) -> ExperimentConfig:
    """The config of preset ``name``; an unknown name is an error listing the presets."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; valid: {', '.join(PRESETS)} (see `progdistill list`)")
    return PRESETS[name][1]()


@preset("parity-mlp", "sparse parity (n=50, k=5), MLP teacher width 2000 -> students width 100; CPU, minutes")
def parity_mlp() -> ExperimentConfig:
    sgd = OptimizerConfig(name="sgd", lr=0.05)
    teacher = TrainConfig(
        model=MLPConfig(width=2000),
        optimizer=sgd,
        steps=50_000,
        batch_size=32,
        eval_every=1000,
        checkpoint_every=1000,
        seed=0,
    )
    # The students as in the authors' student scripts: 6% linear warmup, then cosine decay to 0, and the
    # teacher's argmax as the target (T = 0; their older scripts use T = 1e-20). Under this schedule a soft
    # teacher (T = 0.5 or 1) teaches no student, progressive included: the robustness map in
    # docs/reproduction.md ("Robustness of the headline"), from `progdistill ablate robustness`.
    cosine = OptimizerConfig(name="sgd", lr=0.05, lr_schedule="cosine", warmup_fraction=0.06)
    student = TrainConfig(
        model=MLPConfig(width=100),
        optimizer=cosine,
        steps=60_000,
        batch_size=32,
        eval_every=1000,
        checkpoint_every=1000,
        seed=0,
    )
    # 2-shot: the checkpoint in the middle of the teacher's transition (step 31,000, eval accuracy 0.76; the
    # teacher jumps from 0.5 at 29k to 0.95 at 34k), then the final checkpoint.
    two_shot = KShot(points=((31_000, 20_000), (FINAL, 40_000)))
    return ExperimentConfig(
        preset="parity-mlp",
        task=ParityTask(n=50, k=5),
        teacher=teacher,
        student=student,
        distillation=DistillationConfig(temperature=0.0),
        schedules=(CE(), OneShot(), Progressive(speed=1.0), two_shot, TwoShotAuto(first_steps=20_000)),
        seeds=3,
    )


@preset(
    "parity-mlp-curricula",
    "parity-mlp's teacher; students from its final checkpoint alone (temperature, weight "
    "path, noise, hints) and co-training, against CE, one-shot and progressive",
)
def parity_mlp_curricula() -> ExperimentConfig:
    # The question of paper §5: can a curriculum be built without the intermediate checkpoints? Record:
    # docs/reproduction.md, "Curricula without stored checkpoints". The teacher is parity-mlp's (same task and
    # teacher config), so a run directory of either reuses the other's teacher (--overwrite).
    # The students train at a constant SGD rate with T = 0.5, the settings the record was measured with (unlike
    # parity-mlp's own students: warmup + cosine, T = 0), so that the record stays reproducible.
    schedules = (
        CE(),
        OneShot(),
        Progressive(speed=1.0),
        TemperatureCurriculum(start=8.0, end=0.5, fraction=0.5),  # hot to T = 0.5, first half
        TemperatureCurriculum(start=0.5, end=8.0, fraction=0.5),  # the reverse: a control
        WeightPathCurriculum(init="fresh", fraction=0.5),
        WeightPathCurriculum(init="trajectory", fraction=0.5),
        NoisedTeacher(start=1.0, fraction=0.5),
        HintDistillation(hint_steps=20_000),
        CoTraining(lag=0),
        CoTraining(lag=100),
    )
    base = parity_mlp()
    student = replace(base.student, optimizer=OptimizerConfig(name="sgd", lr=0.05))
    return replace(
        base,
        preset="parity-mlp-curricula",
        student=student,
        distillation=DistillationConfig(temperature=0.5),
        schedules=schedules,
    )


@preset("parity-mlp-paper", "sparse parity at paper scale (n=100, k=6, widths 50,000 -> 100, batch 1, 20M steps); GPU")
def parity_mlp_paper() -> ExperimentConfig:
    sgd = OptimizerConfig(name="sgd", lr=0.01)
    teacher = TrainConfig(
        model=MLPConfig(width=50_000),
        optimizer=sgd,
        steps=20_000_000,
        batch_size=1,
        eval_every=100_000,
        checkpoint_every=100_000,
        seed=0,
    )
    student = TrainConfig(
        model=MLPConfig(width=100),
        optimizer=sgd,
        steps=20_000_000,
        batch_size=1,
        eval_every=100_000,
        checkpoint_every=100_000,
        seed=0,
    )
    two_shot = KShot(points=((10_300_000, 4_000_000), (FINAL, 16_000_000)))
    return ExperimentConfig(
        preset="parity-mlp-paper",
        task=ParityTask(n=100, k=6),
        teacher=teacher,
        student=student,
        schedules=(CE(), OneShot(), Progressive(speed=1.0), two_shot),
        seeds=3,
    )


@preset(
    "parity-transformer",
    "sparse parity (n=12, k=3), 2-layer GPT-2 teacher 16 heads -> students 4 heads (head dim 8); CPU, minutes",
)
def parity_transformer() -> ExperimentConfig:
    # Search record and measured results: docs/parity-transformer-cpu-preset.md. With torch's 2 CPU threads
    # the teacher (seed 0) is at chance until step 400, then 0.78 / 0.65 / 0.76 / 0.68 at steps 500-800 and
    # 0.94 at 900; 4-head students trained on labels alone stay at chance for thousands of steps. (Training is
    # bit-exact for a given thread count, but another thread count changes the float sums and so the curve.)
    adam = OptimizerConfig(name="adam", lr=1e-3)
    teacher = TrainConfig(
        model=TransformerConfig(n_layer=2, n_head=16, head_dim=8),
        optimizer=adam,
        steps=2000,
        batch_size=32,
        eval_every=100,
        checkpoint_every=100,
        seed=0,
    )
    student = TrainConfig(
        model=TransformerConfig(n_layer=2, n_head=4, head_dim=8),
        optimizer=adam,
        steps=3000,
        batch_size=32,
        eval_every=100,
        checkpoint_every=100,
        seed=0,
    )
    # 2-shot: the first checkpoint inside the teacher's transition (step 500, eval accuracy 0.78), then the
    # final checkpoint.
    two_shot = KShot(points=((500, 1000), (FINAL, 2000)))
    return ExperimentConfig(
        preset="parity-transformer",
        task=ParityTask(n=12, k=3, eval_size=2048),
        teacher=teacher,
        student=student,
        distillation=DistillationConfig(temperature=1.0),
        schedules=(CE(), OneShot(), Progressive(speed=1.0), two_shot),
        seeds=3,
    )


@preset(
    "parity-transformer-paper",
    "sparse parity at paper scale (n=100, k=6), GPT-2 2 layers, head dim 8, "
    "teacher 32 heads -> students 4 heads, Adam, batch 32, 8M steps; GPU",
)
def parity_transformer_paper() -> ExperimentConfig:
    # Paper §1: Adam, lr 1e-4 to 3e-4, 6% warmup then cosine; teacher transition ~3.1-3.6M steps;
    # CE and one-shot students stay at chance through 8M steps.
    adam = OptimizerConfig(name="adam", lr=1e-4, lr_schedule="cosine", warmup_fraction=0.06)
    teacher = TrainConfig(
        model=TransformerConfig(n_layer=2, n_head=32, head_dim=8),
        optimizer=adam,
        steps=8_000_000,
        batch_size=32,
        eval_every=100_000,
        checkpoint_every=100_000,
        seed=0,
    )
    student = TrainConfig(
        model=TransformerConfig(n_layer=2, n_head=4, head_dim=8),
        optimizer=adam,
        steps=8_000_000,
        batch_size=32,
        eval_every=100_000,
        checkpoint_every=100_000,
        seed=0,
    )
    # 2-shot: a checkpoint inside the paper's transition (~3.1-3.6M), then the final checkpoint.
    two_shot = KShot(points=((3_300_000, 2_000_000), (FINAL, 6_000_000)))
    return ExperimentConfig(
        preset="parity-transformer-paper",
        task=ParityTask(n=100, k=6),
        teacher=teacher,
        student=student,
        distillation=DistillationConfig(temperature=1.0),
        schedules=(CE(), OneShot(), Progressive(speed=1.0), two_shot),
        seeds=3,
    )


@preset(
    "pcfg-mlm",
    "PCFG masked LM: a generated 5-level grammar (~42 tokens), BERT teacher 4 layers x 8 heads "
    "-> students 4 x 2 heads (head dim 8); CPU, ~15 min",
)
def pcfg_mlm() -> ExperimentConfig:
    # Search record: docs/pcfg-cpu-preset.md. Grammar seed 3 was picked with `progdistill probe oracle`: its
    # Bayes-optimal predictor needs no local window at most positions (median M_robust 0), and a CPU teacher
    # gets far enough towards it in 4,000 steps that its 3-gram M_robust peaks in the sharp drop and then
    # falls. Teacher loss: ~1.0 to step ~400, a drop to ~0.4 by ~2,000, then a slow decay to ~0.32.
    adamw = OptimizerConfig(name="adamw", lr=1e-3, weight_decay=0.01, lr_schedule="cosine", warmup_fraction=0.06)
    task = PCFGMaskedLMTask(
        grammar=GrammarSpec(name="random", levels=5, nonterminals_per_level=3, rules_per_nonterminal=2, seed=3),
        mask_rate=0.3,
    )
    teacher = TrainConfig(
        model=BertMLMConfig(n_layer=4, n_head=8, head_dim=8),
        optimizer=adamw,
        steps=4000,
        batch_size=32,
        eval_every=200,
        checkpoint_every=200,
        seed=0,
    )
    # The small students need lr 3e-3 (at 1e-3 none left the plateau within the budget, on the earlier grammar).
    student = TrainConfig(
        model=BertMLMConfig(n_layer=4, n_head=2, head_dim=8),
        optimizer=OptimizerConfig(name="adamw", lr=3e-3, weight_decay=0.01, lr_schedule="cosine", warmup_fraction=0.06),
        steps=1000,
        batch_size=32,
        eval_every=100,
        seed=0,
    )
    # progressive at speed 8 walks the whole trajectory (checkpoints 200..4000) in the first 500 student steps;
    # 2-shot-auto spends its first 300 steps on the checkpoint in the middle of the detected drop.
    return ExperimentConfig(
        preset="pcfg-mlm",
        task=task,
        teacher=teacher,
        student=student,
        schedules=(CE(), OneShot(), Progressive(speed=8.0), TwoShotAuto(first_steps=300, metric="eval_loss")),
        seeds=3,
        threshold=0.6,
    )


@preset(
    "pcfg-mlm-curricula",
    "pcfg-mlm's teacher; students from its final checkpoint alone (temperature, weight "
    "path) against CE, one-shot and progressive",
)
def pcfg_mlm_curricula() -> ExperimentConfig:
    # BERT students train one at a time, so each schedule costs 3 students' time: the two curricula the parity
    # probe tells apart (docs/reproduction.md, "Curricula without stored checkpoints").
    schedules = (
        CE(),
        OneShot(),
        Progressive(speed=8.0),
        TemperatureCurriculum(start=4.0, end=1.0, fraction=0.5),
        WeightPathCurriculum(init="trajectory", fraction=0.5),
    )
    return replace(pcfg_mlm(), preset="pcfg-mlm-curricula", schedules=schedules)


@preset(
    "pcfg-mlm-paper",
    "PCFG masked LM at paper scale: cfg3b, BERT 4x32 heads -> 4x8 heads, batch 512 (8 x 64), 8k steps; GPU",
)
def pcfg_mlm_paper() -> ExperimentConfig:
    adamw = OptimizerConfig(
        name="adamw", lr=5e-3, betas=(0.9, 0.95), weight_decay=0.0, lr_schedule="cosine", warmup_fraction=0.06
    )
    task = PCFGMaskedLMTask(grammar=GrammarSpec(name="cfg3b"), mask_rate=0.3, max_length=510)
    teacher = TrainConfig(
        model=BertMLMConfig(n_layer=4, n_head=32, head_dim=8),
        optimizer=adamw,
        steps=8000,
        batch_size=512,
        grad_accumulation=8,
        eval_every=200,
        checkpoint_every=200,
        seed=0,
    )
    student = TrainConfig(
        model=BertMLMConfig(n_layer=4, n_head=8, head_dim=8),
        optimizer=adamw,
        steps=8000,
        batch_size=512,
        grad_accumulation=8,
        eval_every=200,
        checkpoint_every=200,
        seed=0,
    )
    return ExperimentConfig(
        preset="pcfg-mlm-paper",
        task=task,
        teacher=teacher,
        student=student,
        schedules=(CE(), OneShot(), Progressive(speed=1.0), TwoShotAuto(first_steps=2000, metric="eval_loss")),
        seeds=3,
        threshold=0.9,
    )


@preset(
    "pcfg-lm",
    "autoregressive PCFG: a generated 5-level grammar (~47 tokens), GPT-2 teacher 4 layers x 8 heads "
    "-> students 4 x 2 heads (head dim 8); CPU, ~15 min",
)
def pcfg_lm() -> ExperimentConfig:
    adamw = OptimizerConfig(name="adamw", lr=1e-3, weight_decay=0.01, lr_schedule="cosine", warmup_fraction=0.06)
    task = PCFGNextTokenTask(grammar=GrammarSpec(name="random", levels=5, seed=0), level=0)
    teacher = TrainConfig(
        model=GPT2LMConfig(n_layer=4, n_head=8, head_dim=8),
        optimizer=adamw,
        steps=1500,
        batch_size=32,
        eval_every=100,
        checkpoint_every=100,
        seed=0,
    )
    student = TrainConfig(
        model=GPT2LMConfig(n_layer=4, n_head=2, head_dim=8),
        optimizer=adamw,
        steps=800,
        batch_size=32,
        eval_every=100,
        seed=0,
    )
    return ExperimentConfig(
        preset="pcfg-lm",
        task=task,
        teacher=teacher,
        student=student,
        schedules=(CE(), OneShot(), Progressive(speed=2.0), TwoShotAuto(first_steps=300, metric="eval_loss")),
        seeds=3,
        threshold=0.6,
    )


@preset(
    "pcfg-lm-generation",
    "autoregressive PCFG, shrunk for comparing token-level, sequence-level "
    "(--set distillation.seq_kd=true) and on-policy (--set distillation.lmbda=...) "
    "distillation: 4-level grammar, GPT-2 2 x 4 heads -> 2 x 1 head; CPU, minutes",
)
def pcfg_lm_generation() -> ExperimentConfig:
    # Record and commands: docs/reproduction.md ("Sequence-level and on-policy distillation"). One experiment
    # distils one way (distillation is per experiment): the comparison reruns it with --set into copies of the
    # run directory, whose finished teacher --overwrite keeps.
    adamw = OptimizerConfig(name="adamw", lr=3e-3, weight_decay=0.01, lr_schedule="cosine", warmup_fraction=0.06)
    task = PCFGNextTokenTask(
        grammar=GrammarSpec(name="random", levels=4, seed=0), level=0, max_length=64, eval_size=256
    )
    teacher = TrainConfig(
        model=GPT2LMConfig(n_layer=2, n_head=4, head_dim=8),
        optimizer=adamw,
        steps=600,
        batch_size=16,
        eval_every=100,
        checkpoint_every=100,
        seed=0,
    )
    student = TrainConfig(
        model=GPT2LMConfig(n_layer=2, n_head=1, head_dim=8),
        optimizer=adamw,
        steps=300,
        batch_size=16,
        eval_every=100,
        seed=0,
    )
    return ExperimentConfig(
        preset="pcfg-lm-generation",
        task=task,
        teacher=teacher,
        student=student,
        distillation=DistillationConfig(max_new_tokens=None),
        schedules=(CE(), OneShot(), Progressive(speed=2.0)),
        seeds=3,
        threshold=0.6,
    )


@preset(
    "induction-lm",
    "in-context recall over a bigram language (V=32, length 32, a 12-token segment repeated): GPT-2 teacher "
    "2 layers x 4 heads, whose in-context loss sits on a plateau and drops when its induction head forms "
    "-> students 2 x 1 head; CPU, minutes",
)
def induction_lm() -> ExperimentConfig:
    # Search record: docs/induction-cpu-preset.md. The teacher's in-context loss leaves log V (~3.5) slowly,
    # creeps to ~2.2 by step 350 and drops to ~0.4 by step 450 (its induction heads form); the bigram positions
    # reach ~2.1 nats by step 100. A constant rate: the search's cosine-decay candidates never dropped.
    adamw = OptimizerConfig(name="adamw", lr=3e-3, weight_decay=0.01)
    task = InductionTask(vocab_size=32, length=32, segment_length=12, pairs=1, mix=1.0)
    teacher = TrainConfig(
        model=GPT2LMConfig(n_layer=2, n_head=4, head_dim=16, mlp_ratio=1),
        optimizer=adamw,
        steps=800,
        batch_size=64,
        eval_every=25,
        checkpoint_every=25,
        seed=0,
    )
    student = TrainConfig(
        model=GPT2LMConfig(n_layer=2, n_head=1, head_dim=32, mlp_ratio=1),
        optimizer=adamw,
        steps=600,
        batch_size=64,
        eval_every=25,
        seed=0,
    )
    return ExperimentConfig(
        preset="induction-lm",
        task=task,
        teacher=teacher,
        student=student,
        schedules=(
            CE(),
            OneShot(),
            Progressive(speed=2.0),
            TwoShotAuto(first_steps=200, metric="eval_loss"),
            NoisedTeacher(start=1.0, fraction=0.5),
        ),
        seeds=3,
        threshold=0.6,
    )


@preset(
    "pcfg-lm-paper",
    "autoregressive PCFG at paper scale: cfg3f, GPT-2 4x32 heads (hidden 256) -> 4x8 heads "
    "(hidden 64), batch 512 (8 x 64), 8k steps; GPU",
)
def pcfg_lm_paper() -> ExperimentConfig:
    adamw = OptimizerConfig(
        name="adamw", lr=5e-3, betas=(0.9, 0.95), weight_decay=0.0, lr_schedule="cosine", warmup_fraction=0.06
    )
    task = PCFGNextTokenTask(grammar=GrammarSpec(name="cfg3f"), level=0, max_length=510)
    teacher = TrainConfig(
        model=GPT2LMConfig(n_layer=4, n_head=32, head_dim=8),
        optimizer=adamw,
        steps=8000,
        batch_size=512,
        grad_accumulation=8,
        eval_every=200,
        checkpoint_every=200,
        seed=0,
    )
    student = TrainConfig(
        model=GPT2LMConfig(n_layer=4, n_head=8, head_dim=8),
        optimizer=adamw,
        steps=8000,
        batch_size=512,
        grad_accumulation=8,
        eval_every=200,
        seed=0,
    )
    return ExperimentConfig(
        preset="pcfg-lm-paper",
        task=task,
        teacher=teacher,
        student=student,
        schedules=(CE(), OneShot(), Progressive(speed=1.0), TwoShotAuto(first_steps=2000, metric="eval_loss")),
        seeds=3,
        threshold=0.9,
    )


@preset(
    "text-mlm",
    "BERT masked LM on real text (the offline Wikipedia sample gensim ships, 408k words), "
    "WordPiece 1024, teacher 4 layers x 8 heads -> students 4 x 4 heads (head dim 8); CPU, ~15 min",
)
def text_mlm() -> ExperimentConfig:
    # Search record: docs/text-cpu-preset.md. At this scale the teacher learns the unigram distribution and then
    # creeps; the sharp drop of paper §4 (after ~4k steps of a BERT-base) is out of a CPU budget.
    task = TextMaskedLMTask(corpus="default:wikipedia", vocab_size=1024, sequence_length=64, mask_rate=0.15)
    teacher = TrainConfig(
        model=BertMLMConfig(n_layer=4, n_head=8, head_dim=8),
        optimizer=OptimizerConfig(name="adamw", lr=2e-3, weight_decay=0.01, lr_schedule="cosine", warmup_fraction=0.06),
        steps=1500,
        batch_size=32,
        eval_every=100,
        checkpoint_every=100,
        seed=0,
    )
    student = TrainConfig(
        model=BertMLMConfig(n_layer=4, n_head=4, head_dim=8),
        optimizer=OptimizerConfig(name="adamw", lr=3e-3, weight_decay=0.01, lr_schedule="cosine", warmup_fraction=0.06),
        steps=600,
        batch_size=32,
        eval_every=100,
        seed=0,
    )
    return ExperimentConfig(
        preset="text-mlm",
        task=task,
        teacher=teacher,
        student=student,
        schedules=(CE(), OneShot(), Progressive(speed=2.5), TwoShotAuto(first_steps=200, metric="eval_loss")),
        seeds=3,
        threshold=0.12,
    )


@preset(
    "text-mlm-paper",
    "BERT masked LM on Wikipedia + BookCorpus via Hugging Face datasets (network or cache), "
    "BERT-base-like teacher 12 x 12 heads (hidden 768) -> student 4 x 8 heads (hidden 512); "
    "GPU",
)
def text_mlm_paper() -> ExperimentConfig:
    adamw = OptimizerConfig(
        name="adamw", lr=1e-4, betas=(0.9, 0.999), weight_decay=0.01, lr_schedule="cosine", warmup_fraction=0.06
    )
    task = TextMaskedLMTask(
        corpus="hf:wikimedia/wikipedia:20231101.en+hf:bookcorpus/bookcorpus",
        vocab_size=30522,
        sequence_length=128,
        mask_rate=0.15,
        eval_fraction=0.01,
        eval_size=4096,
    )
    teacher = TrainConfig(
        model=BertMLMConfig(n_layer=12, n_head=12, head_dim=64),
        optimizer=adamw,
        steps=120_000,
        batch_size=256,
        eval_every=2000,
        checkpoint_every=2000,
        seed=0,
        precision="bf16",
    )
    student = TrainConfig(
        model=BertMLMConfig(n_layer=4, n_head=8, head_dim=64),
        optimizer=adamw,
        steps=120_000,
        batch_size=256,
        eval_every=2000,
        seed=0,
        precision="bf16",
    )
    return ExperimentConfig(
        preset="text-mlm-paper",
        task=task,
        teacher=teacher,
        student=student,
        schedules=(CE(), OneShot(), Progressive(speed=1.0), TwoShotAuto(first_steps=24_000, metric="eval_loss")),
        seeds=3,
        threshold=0.5,
    )
