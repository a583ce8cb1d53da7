"""Command-line interface. Every command is a thin wrapper over an importable function."""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import warnings
from pathlib import Path

from progdistill import __version__
from progdistill.core.config import ConfigError, a_or_an, override, to_dict
from progdistill.core.distributed import barrier, init_from_env, is_main, local_slice, rank_world, shutdown
from progdistill.core.files import DiskFullError, disk_full, disk_full_error
from progdistill.core.optional import MissingExtraError
from progdistill.core.plugins import import_plugin
from progdistill.core.threads import set_threads
from progdistill.experiment import ExperimentConfig, load_config, step_size, student_names
from progdistill.models.language import LanguageModel
from progdistill.probes.curriculum_targets import POINTS, probe_curriculum_targets
from progdistill.probes.induction import probe_induction
from progdistill.probes.monomials import probe_monomials
from progdistill.probes.ngram import DISTANCE, WINDOWS, probe_ngram
from progdistill.probes.oracle import probe_oracle
from progdistill.recipes.ablation import ablate_two_shot
from progdistill.recipes.atlas import ATLAS_TASKS, AtlasFailedError, atlas
from progdistill.recipes.atlas import FIGURE as ATLAS_FIGURE
from progdistill.recipes.atlas import JSON as ATLAS_JSON
from progdistill.recipes.atlas import TABLE as ATLAS_TABLE
from progdistill.recipes.compare import CSV, FIGURE, JSON, TABLE, compare
from progdistill.recipes.launcher import JOB_PER, LAUNCHERS, JobsFailedError, LauncherConfig, launch, report
from progdistill.recipes.presets import PRESETS, get_preset
from progdistill.recipes.robustness import COLUMNS, LR_SCHEDULES, TEMPERATURES, ablate_robustness
from progdistill.recipes.runner import run
from progdistill.recipes.status import format_status, status
from progdistill.store.lock import RunLock, RunLockedError
from progdistill.store.rundir import RunDir
from progdistill.store.trackers import TRACKERS, resolve_report_to
from progdistill.store.trajectory import TrajectoryError
from progdistill.tasks.pcfg.task import SPECIALS, GrammarTask
from progdistill.train.loop import NonFiniteError

EPILOG = """examples:
  progdistill list
  progdistill run parity-mlp --seeds 3 --out runs/parity-mlp
  progdistill run parity-mlp --set distillation.temperature=1.0 --set student.steps=40000 --out runs/t1
  progdistill run runs/parity-mlp/config.json --out runs/again
  progdistill run parity-mlp --report-to tensorboard,wandb,mlflow --out runs/tracked
  progdistill run parity-mlp --seeds 3 --out /shared/runs/p --launcher slurm --partition gpu --gpus-per-job 1
  progdistill status /shared/runs/p
  progdistill run pcfg-mlm --seeds 3 --out runs/pcfg-mlm
  progdistill probe ngram runs/pcfg-mlm --windows 3 5 7
  progdistill probe oracle runs/pcfg-mlm
  progdistill compare runs/t0.5 runs/t1 runs/t2 --out runs/temperature
  progdistill atlas --out runs/atlas --seeds 3   (--smoke: every task's smallest version)
  progdistill run my-config.json --import my_task.py --out runs/mine   (your own task: docs/extending.md)
"""


def resolve_config(spec: str, seeds: int | None, sets: list[str]) -> ExperimentConfig:
    """A preset name or a config.json path, with ``--seeds`` and ``--set field.path=value`` applied."""
    config = load_config(spec) if spec.endswith(".json") or Path(spec).is_file() else get_preset(spec)
    data = to_dict(config, complete=True)  # every field, so that --set can set one left at its default
    if seeds is not None:
        data["seeds"] = seeds
    for assignment in sets:
        data = override(data, assignment)
    return ExperimentConfig.from_dict(data)


def _launcher_config(args) -> LauncherConfig:
    return LauncherConfig(
        kind=args.launcher,
        partition=args.partition,
        account=args.account,
        gpus_per_job=args.gpus_per_job,
        cpus_per_job=args.cpus_per_job,
        time_min=args.time,
        sbatch=tuple(args.sbatch or ()),
        job_per=args.job_per,
        node_local_ok=args.node_local_ok,
    )


def cmd_run(args) -> int:
    config = resolve_config(args.preset, args.seeds, args.set or [])
    out = Path(args.out or f"runs/{config.preset}")
    report_to = resolve_report_to(args.report_to)  # an unknown or uninstalled tracker: refused before any work
    set_threads(args.threads, step_size(config))  # before any work: from the config and the cores, not the load
    device = init_from_env(args.device)  # joins the process group under torchrun
    if rank_world()[1] > 1:
        local_slice(config.teacher.batch_size, "teacher.batch_size")  # refuse an uneven split before any work
        local_slice(config.student.batch_size, "student.batch_size")
    launcher = _launcher_config(args)
    if launcher.kind != "local":
        launch(
            config,
            out,
            launcher,
            overwrite=args.overwrite,
            device=args.device,
            retrain_teacher=args.retrain_teacher,
            wait=args.wait or launcher.kind == "submitit-local",
            report_to=report_to,
        )
        if not (out / "summary.md").exists() or not (args.wait or launcher.kind == "submitit-local"):
            print(
                f"submitted; follow it with `progdistill status {out}` (jobs: {out / 'jobs'}; the last student's job "
                f"writes the report, or `progdistill report {out}`)"
            )
            return 0
        print((out / "summary.md").read_text(encoding="utf-8"))
        return 0
    main_process = is_main()  # asked before shutdown() leaves the process group
    try:
        run(
            config,
            out,
            overwrite=args.overwrite,
            device=device,
            retrain_teacher=args.retrain_teacher,
            report_to=report_to,
        )
        barrier()  # after a run that finished: no process leaves the group while another still talks to it
    finally:
        shutdown()
    if main_process:
        print((out / "summary.md").read_text(encoding="utf-8"))
        print(f"results: {out / 'results.json'}  figure: {out / 'accuracy.png'}")
    return 0


def cmd_atlas(args) -> int:
    summary = atlas(
        args.out,
        tasks=args.tasks,
        seeds=args.seeds,
        smoke=args.smoke,
        device=args.device,
        launcher=_launcher_config(args),
        overwrite=args.overwrite,
        wait=args.wait,
        threads=args.threads,
        report_to=resolve_report_to(args.report_to),  # an unknown or uninstalled tracker: refused before any work
    )
    out = Path(args.out)
    print(f"atlas of {len(summary['tasks'])} task(s): {out / ATLAS_TABLE} ({ATLAS_JSON})  figure: {out / ATLAS_FIGURE}")
    if summary["pending"]:
        print(
            f"pending: {', '.join(summary['pending'])} (their jobs have not ended); rerun the same command when "
            "they have, to add them"
        )
    return 0


def cmd_report(args) -> int:
    out = Path(args.run_dir)
    with RunLock(out):
        report(out, device=args.device)
    print((out / "summary.md").read_text(encoding="utf-8"))
    print(f"results: {out / 'results.json'}  figure: {out / 'accuracy.png'}")
    return 0


def cmd_status(args) -> int:
    print(format_status(status(args.run_dir)))
    return 0


def cmd_list(args) -> int:
    width = max(len(name) for name in PRESETS)
    for name, (description, _) in PRESETS.items():
        print(f"{name:<{width}}  {description}")
    return 0


def cmd_show(args) -> int:
    config = resolve_config(args.preset, args.seeds, args.set or [])
    print(json.dumps(config.to_dict(), indent=2))
    return 0


def cmd_probe(args) -> int:
    summary = probe_monomials(args.run_dir, students=args.students, num_samples=args.samples, degrees=args.degrees)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_probe_curricula(args) -> int:
    summary = probe_curriculum_targets(args.run_dir, points=args.points, num_samples=args.samples)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_probe_ngram(args) -> int:
    summary = probe_ngram(
        args.run_dir,
        students=not args.no_students,
        windows=tuple(args.windows),
        hiding=args.hiding,
        distance=args.distance,
    )
    print(json.dumps({k: v for k, v in summary.items() if k != "students"}, indent=2))
    return 0


def cmd_probe_induction(args) -> int:
    summary = probe_induction(args.run_dir, students=not args.no_students)
    print(json.dumps(summary["teacher"] | {"students": summary["students"]}, indent=2))
    return 0


def cmd_probe_oracle(args) -> int:
    summary = probe_oracle(args.run_dir, windows=tuple(args.windows), distance=args.distance)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_export(args) -> int:
    rundir, out = RunDir(args.run_dir), Path(args.out)
    config = rundir.config()
    if args.step == -1:  # -1 names the final checkpoint, as in k-shot schedules
        args.step = None
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file, not a directory; choose a new directory (nothing was written)")
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} is a directory that is not empty; choose a new one (nothing was written)")
    names = student_names(config)
    if args.which != "teacher":
        if args.which not in names:
            raise ConfigError(
                f"--which {args.which!r} is not a model of {rundir.path}; valid: teacher, {', '.join(names)}"
            )
        if args.step is not None:
            raise ConfigError("--step selects a teacher checkpoint; a student has only its final weights")
    with RunLock(rundir.path):  # not while a run is writing the directory
        task = rundir.task(config)
        model = rundir.load_model(config, args.which, args.step, task=task)
        if not isinstance(model, LanguageModel):  # our Hugging Face language models
            raise ConfigError(
                f"{args.which} of {rundir.path} is {a_or_an(type(model).__name__)}, not a Hugging Face "
                "model; its weights are already a safetensors file in the run directory"
            )
        model.save_pretrained(out)
    extra = ""
    if rundir.tokenizer_file.exists():  # text runs: the tokenizer goes with the model
        (out / "tokenizer.json").write_bytes(rundir.tokenizer_file.read_bytes())
        extra = ", tokenizer.json"
    if isinstance(task, GrammarTask):  # grammar runs: the token of each id (a list: names may repeat)
        names = list(task.vocabulary.terminals) + list(SPECIALS)
        (out / "vocab.json").write_text(json.dumps(names) + "\n", encoding="utf-8")
        extra = ", vocab.json"
    at = "" if args.which != "teacher" else f" at step {args.step}" if args.step is not None else " (final checkpoint)"
    print(f"wrote the Hugging Face model (config.json, model.safetensors{extra}) of {args.which}{at} to {out}")
    return 0


def cmd_compare(args) -> int:
    comparison = compare(args.runs, args.out, field=args.field)
    out = Path(args.out)
    print((out / TABLE).read_text(encoding="utf-8"))
    print(f"table: {out / TABLE} ({CSV}, {JSON})  figure: {out / FIGURE}  (x axis: {comparison['field']})")
    return 0


def cmd_ablate(args) -> int:
    ablate_two_shot(args.run_dir, first_steps=args.first_steps, device=args.device, overwrite=args.overwrite)
    print(f"results: {Path(args.run_dir) / 'ablations' / 'two-shot'}/summary.json and accuracy.png")
    return 0


def cmd_ablate_robustness(args) -> int:
    ablate_robustness(
        args.run_dir,
        seeds=args.seeds,
        temperatures=args.temperatures,
        lr_schedules=args.lr_schedules,
        schedules=args.schedules,
        device=args.device,
        overwrite=args.overwrite,
    )
    print(f"results: {Path(args.run_dir) / 'ablations' / 'robustness'}/summary.md, summary.json and heatmap.png")
    return 0


def _add_windows(p) -> None:
    p.add_argument(
        "--windows",
        type=int,
        nargs="+",
        default=list(WINDOWS),
        help="n-gram window sizes, odd integers >= 3, in any order (default 3 5 7)",
    )


def _report_to_arg(p) -> None:
    p.add_argument(
        "--report-to",
        metavar="TRACKERS",
        help=f"experiment trackers, comma-separated, from {', '.join(TRACKERS)}; or none (default: "
        "tensorboard when installed). Each model's metrics (the names of metrics.jsonl) and the "
        "config as hyperparameters, inside the run directory: RUN/tensorboard, RUN/wandb (offline "
        "unless WANDB_MODE says otherwise), RUN/mlruns (MLflow file store unless "
        "MLFLOW_TRACKING_URI is set); wandb and mlflow are extras: pip install "
        '"progdistill[wandb,mlflow]"',
    )


def _threads_arg(p) -> None:
    p.add_argument(
        "--threads",
        type=int,
        help="CPU threads of this process (default: OMP_NUM_THREADS when set, else 1 for a small training step "
        "such as the parity MLPs' and every core for a larger one, decided from the config and the core count "
        "alone, per run; recorded in results.json)",
    )


def _launcher_args(p: argparse.ArgumentParser) -> None:
    """The ``--launcher`` options of ``run`` and ``atlas``."""
    g = p.add_argument_group(
        "launcher",
        'run the teacher and students as scheduler jobs (pip install "progdistill[launch]"; see docs/running.md)',
    )
    g.add_argument(
        "--launcher",
        default="local",
        choices=LAUNCHERS,
        help="local: one process, here (default); slurm: Slurm jobs through submitit (the teacher, then "
        "the students in jobs that depend on it); submitit-local: the same jobs as processes on "
        "this machine (waits for them)",
    )
    g.add_argument("--partition", help="Slurm partition")
    g.add_argument("--account", help="Slurm account")
    g.add_argument("--gpus-per-job", type=int, default=0, help="GPUs per job (default 0)")
    g.add_argument("--cpus-per-job", type=int, help="CPUs per job, also its torch threads (default: Slurm's)")
    g.add_argument("--time", type=int, default=24 * 60, help="time limit per job, minutes (default 1440)")
    g.add_argument(
        "--sbatch",
        action="append",
        metavar="--NAME[=VALUE]",
        help="an extra sbatch option, e.g. --sbatch=--qos=high; repeatable",
    )
    g.add_argument(
        "--job-per",
        choices=JOB_PER,
        default="stack",
        help="stack: a stack of MLP students is one job, other students one job each (default); "
        "seed: one job per seed; student: one job per student",
    )
    g.add_argument("--wait", action="store_true", help="slurm: wait until every job has ended")
    g.add_argument(
        "--node-local-ok",
        action="store_true",
        help="slurm: allow --out on a node-local filesystem (/tmp, tmpfs): the cluster is this machine",
    )


def _command(p: argparse.ArgumentParser, func) -> None:
    """Make ``p`` the parser of command ``func``, with the ``--import`` every command takes."""
    p.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE_OR_FILE",
        help="import a module (dotted name) or a Python file that registers your own tasks, models or "
        "schedules, before anything else; repeatable. A run records them in its config.json, so "
        "later commands on it need no --import (docs/extending.md)",
    )
    p.set_defaults(func=func)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="progdistill",
        description="Progressive distillation: train a teacher, save its trajectory of checkpoints, and train "
        "students that learn from it (CE, one-shot, progressive, k-shot schedules).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"progdistill {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def config_args(p):
        p.add_argument("preset", help="a preset name (see `progdistill list`) or a config.json path")
        p.add_argument("--seeds", type=int, help="number of student seeds per schedule (default: the preset's)")
        p.add_argument(
            "--set",
            action="append",
            metavar="FIELD=VALUE",
            help="override a config field, e.g. --set student.steps=5000 (value parsed as JSON); repeatable",
        )

    p = sub.add_parser(
        "run",
        help="train the teacher (or reuse it) and every student; write results",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    config_args(p)
    p.add_argument("--out", help="run directory (default: runs/PRESET)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace results of a different config in --out (never done without this flag); a "
        "finished teacher of the same task and teacher config is kept and reused",
    )
    p.add_argument(
        "--retrain-teacher",
        action="store_true",
        help="delete the teacher in --out and everything trained from it (students, probes, ablations, "
        "results) and train them again: the way out of a damaged teacher checkpoint, which every "
        "command refuses with an error naming the file (with a different config, also pass "
        "--overwrite)",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    _threads_arg(p)
    _report_to_arg(p)
    _launcher_args(p)
    _command(p, cmd_run)

    p = sub.add_parser(
        "atlas",
        help="which tasks progressive distillation helps: each task's teacher (plateau length, transition "
        "sharpness) and its CE / one-shot / progressive / 2-shot-auto / noised-teacher students over seeds, a "
        "run directory per task; writes OUT/atlas.{json,md,png}",
        description="Run every task of the atlas (a preset each) into OUT/<task>, resumably (a finished task "
        "is not rerun, an interrupted one resumes), then write OUT/atlas.json, atlas.md (a row per task: "
        "teacher steps, each schedule's ratio to the teacher, seeds reaching the threshold) and atlas.png "
        "(benefit of progressive over one-shot against the teacher's plateau and transition sharpness). "
        "See docs/running.md.",
    )
    p.add_argument("--out", required=True, help="the atlas directory: OUT/<task> run directories and the tables")
    p.add_argument(
        "--tasks",
        nargs="+",
        metavar="TASK",
        help=f"tasks to run, space-separated, from {', '.join(ATLAS_TASKS)} (default all)",
    )
    p.add_argument("--seeds", type=int, help="students per schedule (default 3; with --smoke 1)")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="every task's smallest version (seconds each; the end-to-end check); a smoke atlas and a full "
        "one never share OUT",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a task's run directory holding another config (other seeds, an edited preset); a "
        "finished teacher of the same task and teacher config is kept",
    )
    _threads_arg(p)
    _report_to_arg(p)
    _launcher_args(p)
    _command(p, cmd_atlas)

    p = sub.add_parser(
        "status",
        help="where a run stands: the teacher and each student done, running (process, "
        "job), failed (its error), interrupted or not started",
    )
    p.add_argument("run_dir", help="a run directory written by `progdistill run`")
    _command(p, cmd_status)

    p = sub.add_parser(
        "report",
        help="write results.json, summary.md and accuracy.png of a run whose students have "
        "all finished (after `run --launcher`, the last student's job does this)",
    )
    p.add_argument("run_dir", help="a run directory written by `progdistill run`")
    p.add_argument("--device", default="auto", help="device of the end-of-run probes: auto, cpu, cuda, ...")
    _command(p, cmd_report)

    p = sub.add_parser(
        "list",
        help="list the presets, one line each",
        description="List the named experiments (presets), one line each.",
    )
    _command(p, cmd_list)

    p = sub.add_parser(
        "probe",
        help="probes over a finished run's checkpoints (monomial correlations; PCFG "
        "n-gram and non-terminal probes; the grammar's optimal predictor)",
    )
    probe = p.add_subparsers(dest="probe", required=True)
    p = probe.add_parser(
        "monomials",
        help="degree 1..k-1 monomial correlations of every teacher checkpoint "
        "(the paper's section 1 mechanism); writes "
        "RUN_DIR/probes/monomials.{jsonl,png}",
    )
    p.add_argument("run_dir", help="a run directory written by `progdistill run` (sparse parity)")
    p.add_argument("--students", action="store_true", help="also probe every final student")
    p.add_argument("--samples", type=int, default=100_000, help="fresh inputs per model (default 100000)")
    p.add_argument(
        "--degrees",
        type=int,
        nargs="+",
        help="monomial degrees to probe, space-separated, each in "
        "1..k; the list must contain 1, which the summary and "
        "figure are about (default 1..k-1)",
    )
    _command(p, cmd_probe)
    p = probe.add_parser(
        "curricula",
        help="degree 1..k monomial correlations of the targets each schedule gives "
        "its student at points of its run (curricula without checkpoints vs "
        "progressive); writes RUN_DIR/probes/curriculum-targets.json",
    )
    p.add_argument("run_dir", help="a run directory written by `progdistill run` (sparse parity)")
    p.add_argument(
        "--points",
        type=float,
        nargs="+",
        default=list(POINTS),
        help="shares of the student's run in [0, 1] (default: 0 0.125 0.25 0.375 0.5 0.75 1)",
    )
    p.add_argument("--samples", type=int, default=100_000, help="fresh inputs per target (default 100000)")
    _command(p, cmd_probe_curricula)
    p = probe.add_parser(
        "ngram",
        help="M_robust / M_close (n-gram dependence) and, on grammars, the "
        "non-terminal linear probe, for every teacher checkpoint and final student "
        "of a pcfg-mlm or text-mlm run; writes RUN_DIR/probes/ngram.jsonl, "
        "ngram.png, nonterminals.png (`progdistill run` already does this)",
    )
    p.add_argument("run_dir", help="a run directory written by `progdistill run` (task pcfg-mlm or text-mlm)")
    _add_windows(p)
    p.add_argument("--no-students", action="store_true", help="probe teacher checkpoints only")
    p.add_argument(
        "--hiding",
        choices=("token", "attention"),
        default="token",
        help="how a token is masked: 'token' puts MASK in its place (as in training; default); "
        "'attention' also sets its attention mask to 0, as the authors' released probe does, "
        "and writes probes/ngram-attention* beside the default results",
    )
    p.add_argument(
        "--distance",
        choices=DISTANCE,
        default="tv",
        help="'tv': total variation, in [0, 1] (default); 'l1': ||p - q||_1 = 2 x TV, the paper's axis, "
        "as the authors' released probe scores it; writes probes/ngram-l1* beside the default "
        "results (ngram-attention-l1* with --hiding attention)",
    )
    _command(p, cmd_probe_ngram)
    p = probe.add_parser(
        "induction",
        help="previous-token and induction (prefix-matching) score of every attention head, and the in-context / "
        "bigram loss split, for every teacher checkpoint and final student of an induction run; writes "
        "RUN_DIR/probes/induction.jsonl, induction-summary.json, induction.png (`progdistill run` already does this)",
    )
    p.add_argument("run_dir", help="a run directory written by `progdistill run` (task induction)")
    p.add_argument("--no-students", action="store_true", help="probe teacher checkpoints only")
    _command(p, cmd_probe_induction)
    p = probe.add_parser(
        "oracle",
        help="M_robust / M_close of the grammar's Bayes-optimal masked LM (exact, by the "
        "inside algorithm) on the sentences and positions `probe ngram` uses -- "
        "the values a teacher's n-gram probes approach as it converges -- and its "
        "masked-token loss (the floor of the validation loss); writes "
        "RUN_DIR/probes/ngram-oracle-summary.json and adds it to the n-gram figure "
        "and summary.md (pcfg-mlm runs; ~15 s for the CPU preset, minutes for "
        "cfg3b)",
    )
    p.add_argument("run_dir", help="a run directory written by `progdistill run` (task pcfg-mlm)")
    _add_windows(p)
    p.add_argument(
        "--distance",
        choices=DISTANCE,
        default="tv",
        help="'tv' (default) or 'l1' (= 2 x TV, the paper's axis); 'l1' writes probes/ngram-oracle-l1-summary.json",
    )
    _command(p, cmd_probe_oracle)

    p = sub.add_parser("ablate", help="ablations over a finished run")
    ablate = p.add_subparsers(dest="ablation", required=True)
    p = ablate.add_parser(
        "two-shot",
        help="2-shot with the first checkpoint before, during and after the "
        "teacher's transition; writes RUN_DIR/ablations/two-shot/",
    )
    p.add_argument("run_dir", help="a run directory written by `progdistill run`")
    p.add_argument(
        "--first-steps",
        type=int,
        help="student steps on the first checkpoint (default: the run's "
        "2-shot-auto setting, else a third of the budget)",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, ...")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="delete an ablation stored with other settings (first steps, checkpoints) and train it again",
    )
    _command(p, cmd_ablate)
    p = ablate.add_parser(
        "robustness",
        help="the headline under other student settings: lr schedule x temperature "
        "x {CE, one-shot, progressive, 2-shot-auto}; writes "
        "RUN_DIR/ablations/robustness/ (table and heat map)",
    )
    p.add_argument("run_dir", help="a run directory written by `progdistill run`")
    p.add_argument("--seeds", type=int, help="students per cell (default: the run's seeds)")
    p.add_argument(
        "--temperatures",
        type=float,
        nargs="+",
        default=list(TEMPERATURES),
        help="distillation temperatures, space-separated, each >= 0; 0 = teacher argmax (default 0 0.5 1)",
    )
    p.add_argument(
        "--lr-schedules",
        nargs="+",
        default=list(LR_SCHEDULES),
        help=f"student learning-rate schedules, space-separated, from {', '.join(LR_SCHEDULES)} (cosine: "
        "6%% linear warmup then cosine decay, as the authors' student scripts; default both)",
    )
    p.add_argument(
        "--schedules",
        nargs="+",
        default=list(COLUMNS),
        help=f"student schedules, space-separated, from {', '.join(COLUMNS)} (default all; a subset "
        "saves CPU on a slow model, and its students are reused by a later map of more)",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, ...")
    p.add_argument(
        "--overwrite", action="store_true", help="delete a map stored with other settings and train it again"
    )
    _command(p, cmd_ablate_robustness)

    p = sub.add_parser(
        "compare",
        help="one table and one figure across finished runs of a sweep (steps to "
        "threshold and final accuracy per schedule against the config field that "
        "varies between the runs); writes OUT/comparison.{md,csv,json,png}",
    )
    p.add_argument("runs", nargs="+", help="two or more run directories written by `progdistill run`, of one task")
    p.add_argument("--out", default="comparison", help="directory for the table and figure (default: comparison)")
    p.add_argument(
        "--field",
        help="the config field of the figure's x axis, as --set names it (e.g. "
        "distillation.temperature); needed when several fields vary between the runs",
    )
    _command(p, cmd_compare)

    p = sub.add_parser(
        "export",
        help="write a teacher checkpoint or final student as a Hugging Face model "
        "directory (save_pretrained), loadable with from_pretrained",
    )
    p.add_argument(
        "run_dir",
        help="a run directory written by `progdistill run` with a Hugging Face model "
        "(BERT or GPT-2 language models: the pcfg-mlm, pcfg-lm and text-mlm presets)",
    )
    p.add_argument("out", help="new directory to write (must not exist or be empty)")
    p.add_argument("--which", default="teacher", help="'teacher' (default) or a student name such as progressive-seed0")
    p.add_argument("--step", type=int, help="teacher checkpoint step (default, or -1: the final checkpoint)")
    _command(p, cmd_export)

    p = sub.add_parser("show", help="print the full resolved config of a preset as JSON")
    config_args(p)
    _command(p, cmd_show)
    return parser


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """progdistill's own warnings as one line, like its errors; others (torch, ...) as Python prints them."""
    package = Path(__file__).parent
    if Path(filename).parent == package or package in Path(filename).parents:
        return f"progdistill: warning: {message}\n"
    return _python_format_warning(message, category, filename, lineno, line)


_python_format_warning = warnings.formatwarning


# Errors that end a command with one line and exit status 2 (a full disk too, whatever its type: disk_full).
ONE_LINE_ERRORS = (
    ConfigError,
    TrajectoryError,
    NonFiniteError,
    RunLockedError,
    MissingExtraError,
    OSError,
    ValueError,
    JobsFailedError,
    AtlasFailedError,
)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.formatwarning = _format_warning
    # A writer thread (TensorBoard's) that meets a full disk: no traceback; its error is the command's.
    thread_errors: list[BaseException] = []
    python_excepthook = threading.excepthook

    def excepthook(hook_args) -> None:
        if disk_full(hook_args.exc_value):
            thread_errors.append(hook_args.exc_value)
        else:
            python_excepthook(hook_args)

    threading.excepthook = excepthook
    try:
        for spec in args.imports:
            import_plugin(spec)
        status = args.func(args)
        if thread_errors and status == 0:
            raise thread_errors[0]
        return status
    except BrokenPipeError:  # e.g. `progdistill show ... | head`: the reader stopped early
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (stays open: Python's exit flushes stdout into it)
        # A command that only prints has done its job; one that works (run, probe, ...) stopped part-way:
        # fail, as a process killed by SIGPIPE does (128 + 13), so that `run ... | head && next` stops.
        return 0 if args.command in ("list", "show") else 141
    except Exception as exc:
        if disk_full(exc):  # torch and safetensors wrap the OSError in their own types
            if not isinstance(exc, DiskFullError):
                exc = disk_full_error(getattr(exc, "filename", None))
        elif not isinstance(exc, ONE_LINE_ERRORS):
            raise
        print(f"progdistill: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "progdistill: interrupted; finished work is kept (a rerun of the same command resumes or redoes the rest)",
            file=sys.stderr,
        )
        return 130
    finally:
        warnings.formatwarning = _python_format_warning
        threading.excepthook = python_excepthook


if __name__ == "__main__":
    sys.exit(main())
