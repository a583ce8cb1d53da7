"""The example task, model and schedule run from Python: ``python docs/examples/run_from_python.py [OUT]``.

The same experiment as my-config.json (docs/extending.md); prints each student's steps to 90% and final accuracy.
"""

import sys

from my_model import TanhMLPConfig  # this script's folder is on sys.path when it runs
from my_schedule import Stretched
from my_task import HalfspaceTask

import progdistill
from progdistill import CE, ExperimentConfig, OptimizerConfig, Progressive, TrainConfig


def config() -> ExperimentConfig:
    sgd = OptimizerConfig(name="sgd", lr=0.2)
    teacher = TrainConfig(
        model=TanhMLPConfig(width=64), optimizer=sgd, steps=300, batch_size=32, eval_every=25, checkpoint_every=25
    )
    student = TrainConfig(model=TanhMLPConfig(width=8), optimizer=sgd, steps=300, batch_size=32, eval_every=25)
    return ExperimentConfig(
        preset="halfspace-tanh",
        task=HalfspaceTask(n=20),
        teacher=teacher,
        student=student,
        schedules=(CE(), Progressive(), Stretched()),
        seeds=2,
        threshold=0.9,
    )


if __name__ == "__main__":  # not when a later command imports this file to read the run's config
    results = progdistill.run(config(), sys.argv[1] if len(sys.argv) > 1 else "runs/halfspace-tanh")
    for student in results["students"]:
        print(student["schedule"], student["seed"], student["steps_to_threshold"], student["final_accuracy"])
