"""`isopo-bench suite NAME`: run a named suite (isopo_bench.suites), resumably, then print its leaderboard.

Runs are identified by their config hash. Before anything runs, the MLflow experiment is read as the
ledger: a run FINISHED there is not redone; a run whose folder exists (killed, crashed) is resumed from
its checkpoint in the same MLflow run; a FAILED run is kept as a result (a diverged learning rate is one)
unless --retry-failed. A failing run is recorded as FAILED and the suite goes on.

Where runs execute is --backend's choice (isopo_bench.suite_backends): `local` (serial, or --workers N
spawned processes with one torch thread each, dying with the runner), `ray` (one Ray task per run on a
cluster, or on a loopback-only instance started here) or `slurm` (one submitit job per run). On every
backend the ledger decides what is done, so an interrupted suite resumes by running the same command again.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import time
from pathlib import Path

from isopo_bench.config import RunConfig, replace
from isopo_bench.errors import IsopoBenchError
from isopo_bench.suite_backends import BACKENDS, check_backend, check_workers, run_backend
from isopo_bench.suite_run import Outcome
from isopo_bench.suites import SUITES, Suite, estimate_lines, get_suite, param_count, power_lines

log = logging.getLogger(__name__)
GSM8K_ENV = "ISOPO_BENCH_GSM8K_DIR"


@dataclasses.dataclass(frozen=True)
class SuiteOptions:
    tracking_uri: str = ""
    """MLflow URI; empty = $MLFLOW_TRACKING_URI or sqlite:///mlflow.db."""
    output_dir: str = "isopo_runs"
    """Parent folder of the run folders (checkpoints)."""
    experiment: str = "isopo-bench"
    workers: int = 1
    """Runs at a time on this machine: local backend, local Ray instance, --slurm-cluster local."""
    retry_failed: bool = False
    backend: str = "local"
    """local, ray or slurm (isopo_bench.suite_backends)."""
    ray_address: str = ""
    """Ray cluster to run on (`auto`, `ray://HOST:10001`); empty = start a loopback-only instance here."""
    cpus_per_run: float = 1
    """CPUs each run asks the cluster for (ray, slurm); also its torch threads."""
    gpus_per_run: float = 0
    """GPUs each run asks for (ray: may be fractional; slurm: whole)."""
    slurm_partition: str = ""
    """Empty = the cluster's default partition."""
    slurm_time_min: int = 240
    """Job time limit; a run killed by it resumes from its checkpoint on the next invocation."""
    slurm_mem_gb: float = 0
    """Memory per job; 0 = the partition's default."""
    slurm_folder: str = ""
    """submitit's job folder (scripts, logs, results, jobs.json); empty = OUTPUT_DIR/slurm."""
    slurm_cluster: str = "slurm"
    """`local` runs the jobs as local processes through the same code path (trying it out, tests)."""


# ------------------------------------------------------------------------------------------------
def localise(suite: Suite, options: SuiteOptions, base: RunConfig | None = None) -> list[RunConfig]:
    """The suite's configs writing to this machine's store and folders (none of these is in the hash
    except the experiment name)."""
    base = base or suite.base
    base = replace(base, **{"tracking.uri": options.tracking_uri, "tracking.output_dir": options.output_dir,
                            "tracking.experiment": options.experiment})
    return suite.configs(base)


def warm_start_base(suite: Suite, train: bool = True) -> tuple[RunConfig, Path | None]:
    """The suite's base with model.init_from set to its warm start; (base, None) when it has none, or when
    train=False and it is not cached yet. One warm start (seed 0) serves every seed of the suite, so
    seeds vary the RL run only. It uses the runs' thread count (1), not the idle workers' cores: its
    weights must not depend on --workers."""
    if not suite.warm_start:
        return suite.base, None
    from isopo_bench.warmstart import find_warm_start, from_run_config, warm_start

    ws_cfg = dataclasses.replace(from_run_config(replace(suite.base, seed=0)), threads=suite.base.threads,
                                 **dict(suite.warm_start_settings))
    folder = warm_start(ws_cfg) if train else find_warm_start(ws_cfg)  # shipped, cached, or (train) trained
    if folder is None:
        return suite.base, None
    return replace(suite.base, **{"model.init_from": str(folder)}), folder


def ledger(uri: str, experiment: str, label: str) -> dict[str, str]:
    """config hash -> MLflow status of this suite's runs (FINISHED wins over any other record)."""
    from mlflow.tracking import MlflowClient

    from isopo_bench import metric_names as M
    from isopo_bench.tracking import check_reachable, resolve_uri

    uri = resolve_uri(uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        return {}  # nothing recorded yet; opening the store would create it (a dry run writes nothing)
    if uri.startswith(("http://", "https://")):
        check_reachable(uri)  # seconds, not MLflow's minutes of retries against a server that is not there
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return {}
    out: dict[str, str] = {}
    token = None
    while True:
        page = client.search_runs([exp.experiment_id], f"tags.{M.TAG_SUITE} = '{label}'", page_token=token)
        for run in page:
            key = run.data.tags.get(M.TAG_CONFIG_HASH, "")
            out[key] = "FINISHED" if out.get(key) == "FINISHED" else run.info.status
        token = page.token
        if not token:
            return out


def prepare_store(uri: str, experiment: str) -> None:
    """Create the store and the experiment once, here: workers creating a new SQLite store concurrently
    race on its schema migration."""
    from isopo_bench.store_init import ensure_store

    ensure_store(uri, experiment)  # under a lock beside the database: other suites and trains may start too


def plan(configs: list[RunConfig], statuses: dict[str, str], retry_failed: bool) -> tuple[list, list[Outcome]]:
    """(configs to run with their resume flag, outcomes of runs the ledger already settles)."""
    from isopo_bench.run_store import RUN_INFO, run_dir_for

    todo, settled = [], []
    for cfg in configs:
        status = statuses.get(cfg.config_hash())
        if status == "FINISHED" or (status == "FAILED" and not retry_failed):
            settled.append(Outcome(cfg, f"SKIPPED-{status}"))
        else:
            todo.append((cfg, (run_dir_for(cfg) / RUN_INFO).exists()))
    return todo, settled


# ------------------------------------------------------------------------------------------------
class Progress:
    """Log lines `[i/N] STATUS name ... ETA`, ETA from the mean time of runs executed so far."""

    def __init__(self, total: int, settled: int):
        self.total, self.done = total, settled
        self.start, self.executed = time.perf_counter(), 0

    def report(self, outcome: Outcome) -> None:
        self.done += 1
        self.executed += 1
        elapsed = time.perf_counter() - self.start
        remaining = self.total - self.done
        eta = elapsed / self.executed * remaining  # wall time per run already reflects the parallelism
        acc = "-" if outcome.accuracy is None else f"{outcome.accuracy:.3f}"
        log.info("[%d/%d] %s %s (%s) acc %s in %.0f s; suite %s elapsed, ETA %s%s", self.done, self.total,
                 outcome.status, outcome.cfg.tracking.run_name, outcome.cfg.config_hash(), acc, outcome.seconds,
                 _hms(elapsed), _hms(eta), f": {outcome.error[:200]}" if outcome.error else "")


def _hms(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m{s:02d}s"


# ------------------------------------------------------------------------------------------------
def run_suite(suite: Suite, options: SuiteOptions) -> list[Outcome]:
    """Warm start (cached), read the ledger, run what is missing; returns one outcome per config."""
    check_backend(options)
    if suite.needs_gpu and options.backend != "local":
        if options.gpus_per_run <= 0:
            raise IsopoBenchError(f"suite `{suite.label}` needs a CUDA GPU per run. Fix: pass --gpus-per-run 1")
    elif suite.needs_gpu:
        import torch

        if not torch.cuda.is_available():
            raise IsopoBenchError(f"suite `{suite.label}` needs a CUDA GPU. Fix: run it on a GPU machine, or "
                                  "use --dry-run here to validate it and print the plan")
    if suite.warm_start:
        log.info("warm start of %s (cached after the first time) ...", suite.base.model.name_or_path)
    base, folder = warm_start_base(suite)
    if folder:
        log.info("warm start: %s", folder)
    configs = localise(suite, options, base)
    for cfg in configs:
        cfg.validate()
    prepare_store(options.tracking_uri, options.experiment)
    todo, settled = plan(configs, ledger(options.tracking_uri, options.experiment, suite.label), options.retry_failed)
    where = f"{options.workers} worker(s)" if options.backend == "local" else f"backend {options.backend}"
    log.info("suite %s: %d runs, %d already settled, %d to run (%d resumed), %s", suite.label,
             len(configs), len(settled), len(todo), sum(r for _, r in todo), where)
    progress = Progress(len(configs), len(settled))
    executed = []
    for outcome in run_backend(todo, options):  # as runs end, so progress shows while the suite runs
        progress.report(outcome)
        executed.append(outcome)
    return settled + executed


def print_report(suite: Suite, options: SuiteOptions, outcomes: list[Outcome], seconds: float) -> int:
    from isopo_bench import leaderboard as lb
    from isopo_bench.tracking import resolve_uri

    failed = [o for o in outcomes if o.status in ("FAILED", "SKIPPED-FAILED")]
    print(f"\nsuite {suite.label}: {len(outcomes)} runs, {len(failed)} failed; wall time {_hms(seconds)}")
    for o in failed:
        print(f"  FAILED {o.cfg.tracking.run_name} ({o.cfg.config_hash()}): {o.error or 'failed in an earlier session'}")
    print_held_elsewhere(outcomes)
    uri = resolve_uri(options.tracking_uri)
    runs = lb.load_runs(uri, options.experiment, suite=suite.label)
    by_lr, board = lb.accuracy_vs_lr(runs), lb.leaderboard(runs)
    print(f"\nAccuracy by learning rate ({suite.label})\n" + lb.to_markdown(by_lr, lb.LR_DISPLAY_COLUMNS))
    print(f"\nLeaderboard ({suite.label}; accuracy columns at each algorithm's best lr)\n"
          + lb.to_markdown(lb.readable(board), lb.DISPLAY_COLUMNS))
    print(f"\n{lb.COMPARISONS_TITLE}\n" + lb.to_markdown(lb.comparisons(runs, lb.REINFORCE), lb.COMPARISON_DISPLAY_COLUMNS))
    out = Path(options.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    board.to_csv(out / f"leaderboard-{suite.label}.csv", index=False)
    (out / f"leaderboard-{suite.label}.md").write_text(lb.to_markdown(board) + "\n\n" + lb.to_markdown(by_lr) + "\n")
    print(f"\nwritten: {out / f'leaderboard-{suite.label}.csv'} and .md")
    print(f"dashboard: MLFLOW_TRACKING_URI={uri} isopo-bench dashboard")
    return 1 if failed else 0


def print_held_elsewhere(outcomes: list[Outcome]) -> None:
    """Runs another live process was training: skipped here, neither run twice nor marked FAILED."""
    from isopo_bench.suite_run import SKIPPED_LOCKED

    held = [o for o in outcomes if o.status == SKIPPED_LOCKED]
    for o in held:
        print(f"  IN PROGRESS ELSEWHERE {o.cfg.tracking.run_name} ({o.cfg.config_hash()}): {o.error.split(';')[0]}")
    if held:
        print(f"  {len(held)} run(s) skipped: another process is training them. Run the same command again after "
              "it ends to include their results")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="isopo-bench suite", description=__doc__.split("\n")[0])
    p.add_argument("name", help=f"suite name ({', '.join(SUITES.names())}), optionally NAME@vVERSION")
    p.add_argument("--workers", type=int, default=1,
                   help="runs at a time on this machine (local: processes with one torch thread each)")
    p.add_argument("--dry-run", action="store_true", help="validate, print the plan and a compute estimate")
    p.add_argument("--tracking-uri", default="", help="MLflow URI (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--output-dir", default="isopo_runs", help="parent folder of the run folders")
    p.add_argument("--experiment", default="isopo-bench", help="MLflow experiment")
    p.add_argument("--data-dir", default="", help=f"GSM8K folder (sets ${GSM8K_ENV}; the config hash does not depend on it)")
    p.add_argument("--retry-failed", action="store_true", help="run FAILED runs again (resuming from their checkpoint)")
    p.add_argument("--algorithms", nargs="+", default=(), metavar="PRESET",
                   help="replace the suite's algorithm presets (any registered preset, plug-ins' included), e.g. "
                        "`--algorithms reinforce isopo my-method` to benchmark a new method beside the built-ins")
    c = p.add_argument_group("cluster backends", "where runs execute (see isopo_bench/suite_backends.py); on a cluster "
                             "the tracking URI, --output-dir and the caches must be reachable from every worker")
    c.add_argument("--backend", default="local", help=f"{' | '.join(BACKENDS)} (default local; on a cluster its "
                   "resources set how many runs go at once, --workers only on this machine)")
    c.add_argument("--ray-address", default="", help="auto or ray://HOST:10001; empty starts a loopback-only Ray here")
    c.add_argument("--cpus-per-run", type=float, default=1, help="CPUs (and torch threads) per run (ray, slurm)")
    c.add_argument("--gpus-per-run", type=float, default=0, help="GPUs per run (ray, slurm)")
    c.add_argument("--slurm-partition", default="", help="SLURM partition (default: the cluster's)")
    c.add_argument("--slurm-time-min", type=int, default=240, help="SLURM time limit per run, minutes")
    c.add_argument("--slurm-mem-gb", type=float, default=0, help="SLURM memory per run (default: the partition's)")
    c.add_argument("--slurm-folder", default="", help="submitit job folder (default OUTPUT_DIR/slurm)")
    c.add_argument("--slurm-cluster", default="slurm", choices=("slurm", "local"),
                   help="local: run the jobs as local processes (to try the backend without SLURM)")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    """Exit code 0 when every run finished, 1 when any failed (the others still ran)."""
    args = parse_args(argv)
    if args.data_dir:
        os.environ[GSM8K_ENV] = str(Path(args.data_dir).resolve())  # spawned workers inherit it
    suite = get_suite(args.name, tuple(args.algorithms))
    options = SuiteOptions(
        tracking_uri=args.tracking_uri, output_dir=args.output_dir, experiment=args.experiment, workers=args.workers,
        retry_failed=args.retry_failed, backend=args.backend, ray_address=args.ray_address,
        cpus_per_run=args.cpus_per_run, gpus_per_run=args.gpus_per_run, slurm_partition=args.slurm_partition,
        slurm_time_min=args.slurm_time_min, slurm_mem_gb=args.slurm_mem_gb, slurm_folder=args.slurm_folder,
        slurm_cluster=args.slurm_cluster)
    check_workers(options)
    if args.dry_run:
        return dry_run(suite, options)
    start = time.perf_counter()
    outcomes = run_suite(suite, options)
    return print_report(suite, options, outcomes, time.perf_counter() - start)


# ------------------------------------------------------------------------------------------------
def dry_run(suite: Suite, options: SuiteOptions) -> int:
    """Validate everything checkable on this machine without training or downloading; print the plan
    and a compute estimate. Exit code 1 when a problem was found."""
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")  # a dry run never downloads
    base, folder = warm_start_base(suite, train=False)
    configs = localise(suite, options, base)
    problems: list[str] = []
    for cfg in configs:
        try:
            cfg.validate()
        except Exception as exc:  # noqa: BLE001 - every problem is reported, not just the first
            problems.append(str(exc))
    first = configs[0]
    model_line, params = _check_model(first)
    grids = " + ".join(arm.describe() for arm in suite.optimizer_arms)
    print(f"suite {suite.label}: {suite.description}\n{len(configs)} runs = {len(suite.algorithms)} algorithms x "
          f"({grids}) x {len(suite.seeds)} seeds")
    checks = [_check_data(first, problems), model_line, _engine_line(first)]
    if suite.warm_start:
        found = f"found at {folder}" if folder else "not shipped or cached yet (trained first, once)"
        checks.append(f"warm start: {found}")
    print("checks:\n" + "\n".join(f"  {line}" for line in checks))
    _print_plan(configs, options, suite.label)
    print(suite.budget)
    print("\n".join(estimate_lines(suite, configs, params)))
    print("\n".join(power_lines(len(suite.seeds), first.task.eval_items)))
    for p in dict.fromkeys(problems):
        print(f"PROBLEM ({problems.count(p)} of {len(configs)} runs): {p}")
    print(f"run count: {len(configs)}; {'valid' if not problems else f'{len(set(problems))} problem(s)'}")
    return 1 if problems else 0


def _check_data(cfg: RunConfig, problems: list[str]) -> str:
    from isopo_bench.plugins import TASKS

    try:
        task = TASKS.get(cfg.task.name)(cfg.task, cfg.seed)
        n_train, n_test = task.num_items("train"), task.num_items("test")
    except Exception as exc:  # noqa: BLE001 - missing files, offline hub, malformed rows
        problems.append(f"task `{cfg.task.name}` data: {exc}")
        return f"task {cfg.task.name}: data NOT available ({exc})"
    if n_test is not None and cfg.task.eval_items > n_test:
        problems.append(f"task.eval_items {cfg.task.eval_items} > {n_test} test items")
    where = cfg.task.data_dir or os.environ.get(GSM8K_ENV, "") if n_test is not None else "procedural"
    return (f"task {cfg.task.name} ({where}): {n_train or 'unbounded'} train / {n_test or 'unbounded'} test items; "
            f"evaluation on {cfg.task.eval_items}")


def _check_model(cfg: RunConfig) -> tuple[str, float | None]:
    """Model and tokenizer config when available offline, with the parameter count for the estimate."""
    m = cfg.model
    source = m.init_from or m.name_or_path
    if source == "tiny":
        return f"model: random tiny Qwen3 ({m.tiny_layers} layers, hidden {m.tiny_hidden_size}), built locally", None
    from transformers import AutoConfig, AutoTokenizer

    try:
        c = AutoConfig.from_pretrained(source, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError):
        if Path(source).is_absolute() or source.startswith("."):
            return f"model {source}: no such local folder (see the suite's description)", None
        return f"model {source}: not available offline on this machine (the run loads it from the hub)", None
    n = param_count(c)
    template = "chat template present" if tokenizer.chat_template else "NO chat template (plain prompts)"
    return (f"model {source}: {c.model_type}, {c.num_hidden_layers} layers, hidden {c.hidden_size}, "
            f"~{n / 1e6:.0f}M params (excluding the input embedding); tokenizer {len(tokenizer)} tokens, {template}"), n


def _engine_line(cfg: RunConfig) -> str:
    r = cfg.rollout
    line = (f"rollout: engine {r.engine}, {r.prompts_per_step} prompts x {r.samples_per_prompt} samples, <= "
            f"{r.max_new_tokens} new tokens, temperature {r.temperature}")
    if r.engine == "vllm":
        v = r.vllm
        max_len = v.max_model_len or r.max_prompt_tokens + max(r.max_new_tokens, cfg.eval.max_new_tokens)
        line += (f"; vLLM dtype {v.dtype}, max_model_len {max_len}, gpu_memory_utilization {v.gpu_memory_utilization}, "
                 f"enforce_eager {v.enforce_eager}, tensor_parallel {v.tensor_parallel_size}")
    return line


def _print_plan(configs: list[RunConfig], options: SuiteOptions, label: str) -> None:
    try:
        statuses = ledger(options.tracking_uri, options.experiment, label)
    except Exception as exc:  # noqa: BLE001 - the plan is still worth printing
        statuses = {}
        print(f"(ledger not readable: {exc})")
    print("plan:")
    for i, cfg in enumerate(configs, 1):
        print(f"  {i:>3}. {cfg.tracking.run_name:<32} {cfg.config_hash()}  {statuses.get(cfg.config_hash(), 'to run')}")
