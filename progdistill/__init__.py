"""progdistill: progressive knowledge distillation from a teacher's training trajectory.

Implements Panigrahi, Liu, Malladi, Risteski, Goel, "Progressive distillation induces an implicit
curriculum" (ICLR 2025). See the README for the command line and the module map.

Importing the package imports every module that registers a task, model or schedule variant (through the
presets and the names below), so ``ExperimentConfig.from_dict`` of any config.json finds every kind;
tests/test_imports.py checks it. Each of those modules imports with the core dependencies alone: an optional
package is imported where a feature needs it (:func:`progdistill.core.optional.require`).
"""

from progdistill.core.config import ConfigError
from progdistill.core.settings import DistillationConfig, OptimizerConfig, TrainConfig
from progdistill.distill.schedules import CE, FINAL, KShot, OneShot, Progressive, TwoShotAuto
from progdistill.experiment import ExperimentConfig
from progdistill.models.language import BertMLMConfig, GPT2LMConfig
from progdistill.models.mlp import MLP, MLPConfig
from progdistill.recipes.presets import PRESETS, get_preset
from progdistill.recipes.runner import run
from progdistill.store.trajectory import Trajectory, TrajectoryError, TrajectoryWriter
from progdistill.tasks.boolean import SparseMajorityTask, StaircaseTask
from progdistill.tasks.induction import InductionTask
from progdistill.tasks.parity import ParityTask
from progdistill.tasks.pcfg.task import GrammarSpec, PCFGMaskedLMTask, PCFGNextTokenTask
from progdistill.tasks.text.task import TextMaskedLMTask

__version__ = "0.1.0"

__all__ = [
    "CE",
    "FINAL",
    "MLP",
    "PRESETS",
    "BertMLMConfig",
    "ConfigError",
    "DistillationConfig",
    "ExperimentConfig",
    "GPT2LMConfig",
    "GrammarSpec",
    "InductionTask",
    "KShot",
    "MLPConfig",
    "OneShot",
    "OptimizerConfig",
    "PCFGMaskedLMTask",
    "PCFGNextTokenTask",
    "ParityTask",
    "Progressive",
    "SparseMajorityTask",
    "StaircaseTask",
    "TextMaskedLMTask",
    "TrainConfig",
    "Trajectory",
    "TrajectoryError",
    "TrajectoryWriter",
    "TwoShotAuto",
    "get_preset",
    "run",
]
