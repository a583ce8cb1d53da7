"""Named experiments. A preset is a function returning an :class:`ExperimentConfig`; a new experiment is a
new preset, never an edit of the training loop."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from progdistill.core.config import ConfigError, flatten, to_dict
from progdistill.core.settings import DistillationConfig, OptimizerConfig, TrainConfig, Way
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
from progdistill.tasks.algorithmic import ModularAdditionTask, PointerChasingTask
from progdistill.tasks.boolean import SparseMajorityTask, StaircaseTask, SupportTask
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
    preset, or named after no preset (a config.json written by hand). A schedule list (or ``ways`` list) of
    another length is the one field ``schedules`` (``ways``)."""
    if config.preset not in PRESETS:
        return []
    reference = get_preset(config.preset)
    ours, theirs = (flatten(to_dict(c, complete=True)) for c in (config, reference))
    missing = object()
    changed = [k for k in dict.fromkeys([*ours, *theirs]) if ours.get(k, missing) != theirs.get(k, missing)]
    for name in ("schedules", "ways"):
        if len(getattr(config, name)) != len(getattr(reference, name)):
            changed = [k for k in changed if k != name and not k.startswith(f"{name}.")] + [name]
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
    # 2-shot: the checkpoint in the middle of the teacher's transition (step 31,000, eval accuracy 0.85; the
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


# The atlas of task structures: one CPU preset per task, each with the same five student schedules (CE,
# one-shot, progressive, 2-shot-auto, a noised final teacher). Search records: docs/atlas-algorithmic-presets.md.
def atlas_schedules(progressive_speed: float, first_steps: int) -> tuple:
    """The atlas's students: CE, one-shot, progressive at ``progressive_speed``, 2-shot-auto (``first_steps`` on the
    middle of the teacher's transition) and the final teacher noised at 1x its weights' RMS, annealed over the
    first half (as in parity-mlp-curricula)."""
    return (
        CE(),
        OneShot(),
        Progressive(speed=progressive_speed),
        TwoShotAuto(first_steps=first_steps),
        NoisedTeacher(start=1.0, fraction=0.5),
    )


@preset(
    "atlas-modular-addition",
    "(a + b) mod 47 from half of the pairs, AdamW with weight decay 1: an MLP teacher width 256 memorizes, "
    "then generalizes (grokking) -> students width 128; CPU, minutes",
)
def atlas_modular_addition() -> ExperimentConfig:
    # Grokking: the teacher fits the training pairs by step 500-1,000 while its held-out accuracy is 0.00, then
    # generalizes (0.42 at 3,000, 0.91 at 7,500). The students see the training pairs only; the threshold is
    # 0.4 held-out accuracy (chance 1/47) so that every schedule gets a number within 8,000 steps.
    adamw = OptimizerConfig(name="adamw", lr=5e-3, weight_decay=1.0)
    teacher = TrainConfig(
        model=MLPConfig(width=256),
        optimizer=adamw,
        steps=10_000,
        batch_size=128,
        eval_every=500,
        checkpoint_every=500,
        seed=0,
    )
    student = TrainConfig(
        model=MLPConfig(width=128), optimizer=adamw, steps=8000, batch_size=128, eval_every=500, seed=0
    )
    return ExperimentConfig(
        preset="atlas-modular-addition",
        task=ModularAdditionTask(p=47, train_fraction=0.5),
        teacher=teacher,
        student=student,
        distillation=DistillationConfig(temperature=1.0),
        schedules=atlas_schedules(progressive_speed=1.5, first_steps=2000),
        seeds=3,
        threshold=0.4,
    )


@preset(
    "atlas-pointer-chasing",
    "pointer chasing: f^4(s) for a random permutation f of 6 nodes given in the input, MLP teacher width 512 "
    "-> students width 128, Adam; CPU, minutes",
)
def atlas_pointer_chasing() -> ExperimentConfig:
    # The teacher sits at 0.51 to step ~750 ("answer s": right when s lies on a cycle of length 1, 2 or 4, 3 of
    # 6 nodes), then composes the hops: 0.75 at 2,000, 0.9 at 2,750, 0.99 at 4,000.
    adam = OptimizerConfig(name="adam", lr=1e-3)
    teacher = TrainConfig(
        model=MLPConfig(width=512),
        optimizer=adam,
        steps=4000,
        batch_size=128,
        eval_every=250,
        checkpoint_every=250,
        seed=0,
    )
    student = TrainConfig(
        model=MLPConfig(width=128), optimizer=adam, steps=8000, batch_size=128, eval_every=250, seed=0
    )
    return ExperimentConfig(
        preset="atlas-pointer-chasing",
        task=PointerChasingTask(m=6, k=4, eval_size=2048),
        teacher=teacher,
        student=student,
        distillation=DistillationConfig(temperature=1.0),
        schedules=atlas_schedules(progressive_speed=1.0, first_steps=1000),
        seeds=3,
        threshold=0.75,
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


def _atlas(
    name: str, task: SupportTask | ParityTask, teacher_steps: int, student_steps: int, first_steps: int
) -> ExperimentConfig:
    """The atlas's shape for a task of bits (search record: docs/atlas-presets.md): an MLP teacher of width 1000
    at SGD rate 0.1 for ``teacher_steps``, students of width 20 at SGD rate 0.05 for ``student_steps`` (batch 32;
    an evaluation, and a teacher checkpoint, every 1/40 of a run), T = 0.5 at a constant rate as in
    parity-mlp-curricula (whose noised teacher is reused), under CE, one-shot, progressive, 2-shot-auto
    (``first_steps`` on the middle of the teacher's transition) and the noised final teacher; 3 seeds."""
    teacher = TrainConfig(
        model=MLPConfig(width=1000),
        optimizer=OptimizerConfig(name="sgd", lr=0.1),
        steps=teacher_steps,
        batch_size=32,
        eval_every=teacher_steps // 40,
        checkpoint_every=teacher_steps // 40,
        seed=0,
    )
    student = TrainConfig(
        model=MLPConfig(width=20),
        optimizer=OptimizerConfig(name="sgd", lr=0.05),
        steps=student_steps,
        batch_size=32,
        eval_every=student_steps // 40,
        seed=0,
    )
    schedules = (
        CE(),
        OneShot(),
        Progressive(speed=1.0),
        TwoShotAuto(first_steps=first_steps),
        NoisedTeacher(start=1.0, fraction=0.5),
    )
    return ExperimentConfig(
        preset=name,
        task=task,
        teacher=teacher,
        student=student,
        distillation=DistillationConfig(temperature=0.5),
        schedules=schedules,
        seeds=3,
    )


@preset(
    "atlas-staircase",
    "staircase x1 + x1x2 + ... + x1..x5 (n=30), MLP teacher width 1000 -> students width 20; CPU, ~1 min",
)
def atlas_staircase() -> ExperimentConfig:
    # The teacher climbs the staircase: 0.67 at step 200, 0.81 at 1000, 0.95 at 1600, 1.0 at 2000.
    return _atlas("atlas-staircase", StaircaseTask(n=30, k=5), 4000, 8000, 1000)


@preset(
    "atlas-leap",
    "leap-3 staircase x1 + x1..x4 + x1..x7 (n=30), MLP teacher width 1000 -> students width 20; CPU, ~1 min",
)
def atlas_leap() -> ExperimentConfig:
    # The teacher learns x1 (worth 0.75) at once and sits at 0.64-0.75 until step 2100, then 0.79 at 2400, 0.84 at
    # 2700 and 0.97 at 3000: the leap to x1x2x3x4 and x1x5x6x7 is found jointly.
    return _atlas("atlas-leap", StaircaseTask(n=30, k=7, leap=3), 6000, 10_000, 2000)


@preset(
    "atlas-parity",
    "sparse parity (n=30, k=4) in the atlas's shape, MLP teacher width 1000 -> students width 20; CPU, ~1 min",
)
def atlas_parity() -> ExperimentConfig:
    # Sparse parity in the same shape as the staircases and the majority, so that the atlas compares tasks, not
    # settings: the prediction made from the atlas's rule before its students ran is in docs/atlas.md.
    return _atlas("atlas-parity", ParityTask(n=30, k=4), 4000, 8000, 2000)


@preset(
    "atlas-majority", "majority of 5 of 30 bits (no hardness), MLP teacher width 1000 -> students width 20; CPU, ~30 s"
)
def atlas_majority() -> ExperimentConfig:
    # No plateau: the teacher is at 0.83 after 10 steps and 0.99 after 20. 80 steps with a checkpoint every 2, so
    # that the rise from chance spans checkpoints and 2-shot-auto finds it (with one every 5 steps, the smoke
    # shrink's teacher is at 0.97 by its second checkpoint and no rise is found). Students 800 steps (an evaluation
    # every 20): they reach 90% in 100-150 steps.
    return _atlas("atlas-majority", SparseMajorityTask(n=30, k=5), 80, 800, 100)


# Each atlas preset shrunk to a smoke run of seconds, as --set overrides (`progdistill run atlas-leap --set ...`;
# tests/test_cli.py runs them; timings in docs/atlas-presets.md): a smaller task and teacher, one seed, every
# schedule still trained (2-shot-auto still finds the teacher's transition). Its students need not reach 90%.
_SMALL = ("seeds=1", "task.eval_size=1024", "teacher.model.width=256")
ATLAS_SMOKE: dict[str, tuple[str, ...]] = {
    "atlas-staircase": (
        *_SMALL,
        "task.n=12",
        "teacher.steps=800",
        "teacher.eval_every=20",
        "teacher.checkpoint_every=20",
        "student.steps=800",
        "student.eval_every=20",
        "schedules.3.first_steps=200",
    ),
    "atlas-leap": (
        *_SMALL,
        "task.n=12",
        "teacher.steps=1200",
        "teacher.eval_every=30",
        "teacher.checkpoint_every=30",
        "student.steps=1200",
        "student.eval_every=30",
        "schedules.3.first_steps=300",
    ),
    "atlas-majority": (*_SMALL, "student.steps=400", "student.eval_every=10", "schedules.3.first_steps=50"),
    # lr 1e-2: held-out 0.28 at step 1,000, 0.71 at 2,000 (search row M3)
    "atlas-modular-addition": (
        "teacher.optimizer.lr=0.01",
        "teacher.steps=2500",
        "teacher.eval_every=250",
        "teacher.checkpoint_every=250",
        "student.steps=1000",
        "student.eval_every=250",
        "schedules.3.first_steps=250",
    ),
    # the plateau at 0.5 to step ~750, 0.94 at 3,000 (search row P4)
    "atlas-pointer-chasing": (
        "task.eval_size=512",
        "teacher.steps=3000",
        "student.steps=500",
        "student.eval_every=125",
        "student.model.width=64",
        "schedules.3.first_steps=250",
    ),
}


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
    "atlas-pcfg-mlm",
    "pcfg-mlm shrunk for the atlas (progdistill atlas): teacher 2,400 steps, students 1,000 steps, threshold "
    "0.55, with a noised-teacher student; CPU, ~28 CPU-min",
)
def atlas_pcfg_mlm() -> ExperimentConfig:
    # The atlas runs each task's five student schedules x 3 seeds in <= 10 minutes on 2 cores; pcfg-mlm takes 15.
    # Same grammar and models; a shorter teacher (its cosine decays sooner, so its drop ends sooner) and students.
    # The teacher's measured curve (drop 400-1,400, 0.6 accuracy at step 600), the search for the students' budget
    # and threshold, and the times: docs/pcfg-cpu-preset.md ("The atlas task"). 500 student steps left every student
    # on the ~0.50 plateau; at 1,000 the CE student leaves it at ~700 steps. Threshold 0.55: the plateau (0.50, the
    # CE student's and the teacher's) + 0.05, which the teacher reaches at step 400, early in its drop.
    base = pcfg_mlm()
    return replace(
        base,
        preset="atlas-pcfg-mlm",
        teacher=replace(base.teacher, steps=2400),
        student=replace(base.student, steps=1000),
        threshold=0.55,
        # progressive at speed 6 walks the trajectory (checkpoints 200..2400) in the first 400 of the 1,000 steps
        schedules=(
            CE(),
            OneShot(),
            Progressive(speed=6.0),
            TwoShotAuto(first_steps=200, metric="eval_loss"),
            NoisedTeacher(start=1.0, fraction=0.5),
        ),
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
    "autoregressive PCFG, every way of distilling from one teacher: token-level forward KL, "
    "generalized JSD (beta 0.5), reverse KL, sequence-level KD, on-policy (lmbda 0.5 and 1); "
    "4-level grammar, GPT-2 2 x 4 heads -> 2 x 1 head; 93 students, CPU ~1.5 h",
)
def pcfg_lm_generation() -> ExperimentConfig:
    # Record and commands: docs/reproduction.md ("Sequence-level and on-policy distillation"). The experiment's own
    # distillation is token-level forward KL; each further way trains every taught schedule again against the
    # same teacher (TRL's GKD arguments: beta, lmbda, seq_kd). CE trains once.
    adamw = OptimizerConfig(name="adamw", lr=3e-3, weight_decay=0.01, lr_schedule="cosine", warmup_fraction=0.06)
    task = PCFGNextTokenTask(
        grammar=GrammarSpec(name="random", levels=4, seed=0), level=0, max_length=64, eval_size=256
    )
    # 1500 teacher steps (600 before 2026-12-06): the grammar accepts 66% of the final teacher's samples
    # (15% at 600 steps); search record in docs/reproduction.md. Progressive at speed 5 walks the checkpoints
    # 100..1500 over the students' 300 steps.
    teacher = TrainConfig(
        model=GPT2LMConfig(n_layer=2, n_head=4, head_dim=8),
        optimizer=adamw,
        steps=1500,
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
    ways = (
        Way("jsd", DistillationConfig(loss="generalized_jsd", beta=0.5)),
        Way("reverse-kl", DistillationConfig(loss="reverse_kl")),
        Way("seq-kd", DistillationConfig(seq_kd=True, alpha=1.0)),  # the cross-entropy on the teacher's samples
        Way("on-policy-0.5", DistillationConfig(lmbda=0.5)),
        Way("on-policy-1", DistillationConfig(lmbda=1.0)),
    )
    return ExperimentConfig(
        preset="pcfg-lm-generation",
        task=task,
        teacher=teacher,
        student=student,
        distillation=DistillationConfig(max_new_tokens=None),
        schedules=(
            CE(),
            OneShot(),
            Progressive(speed=5.0),
            TwoShotAuto(first_steps=100, metric="eval_loss"),
            NoisedTeacher(start=1.0, fraction=0.5),
            WeightPathCurriculum(init="trajectory", fraction=0.5),
        ),
        seeds=3,
        threshold=0.6,
        ways=ways,
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
    "induction-lm-ways",
    "induction-lm's task, teacher and students, every way of distilling from its one teacher: token-level "
    "forward KL, generalized JSD (beta 0.5), reverse KL, sequence-level KD, on-policy (lmbda 0.5 and 1); "
    "one-shot, progressive, 2-shot-auto (CE once); 57 students, CPU ~25 min (1 thread)",
)
def induction_lm_ways() -> ExperimentConfig:
    # Record and commands: docs/reproduction.md ("Which way of distilling"). The teacher is induction-lm's (same
    # config: its run directory's teacher is reused with --overwrite). Generated sequences continue the first half
    # of fresh task sequences (which holds the segment's first occurrence) for the 16 tokens of the second half,
    # where the copy lies (InductionTask.generate_batch); max_new_tokens None = up to the task's length.
    base = induction_lm()
    ways = (
        Way("jsd", DistillationConfig(loss="generalized_jsd", beta=0.5)),
        Way("reverse-kl", DistillationConfig(loss="reverse_kl")),
        Way("seq-kd", DistillationConfig(seq_kd=True, alpha=1.0)),  # the cross-entropy on the teacher's samples
        Way("on-policy-0.5", DistillationConfig(lmbda=0.5)),
        Way("on-policy-1", DistillationConfig(lmbda=1.0)),
    )
    return replace(
        base,
        preset="induction-lm-ways",
        schedules=(CE(), OneShot(), Progressive(speed=2.0), TwoShotAuto(first_steps=200, metric="eval_loss")),
        ways=ways,
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
