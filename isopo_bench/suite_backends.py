"""Where a suite's runs execute: `local` (this machine), `ray` (Ray tasks) or `slurm` (submitit jobs).

Every backend takes the runs still to do, [(RunConfig, resume flag)], and yields one Outcome per run as
the run ends, so the runner reports progress as runs finish and a killed driver loses nothing: the MLflow
ledger, read at the start of every invocation, decides what is already done, on any backend.

- local: serial, or a pool of spawned processes (--workers N) that die with the runner.
- ray: one plain Ray task per run (no Ray Tune), named `RUN_NAME-CONFIGHASH`, requesting --cpus-per-run and
  --gpus-per-run; the cluster runs as many at once as its resources allow. `--ray-address auto` (this node is
  part of a cluster) or `ray://head:10001` connects to a cluster; no address starts a Ray instance here,
  bound to loopback only, sized for --workers runs at a time. A killed driver takes its tasks down (Ray
  ends a dead driver's job).
- slurm: one submitit job per run, named like the Ray tasks. Jobs outlive a killed driver; their ids are kept
  in SLURM_FOLDER/jobs.json, and a rerun waits for a job still queued or running instead of submitting
  its run again.

On a cluster the runs execute on other machines, so everything a run reads or writes must be reachable from
all of them at the same path:
- the MLflow tracking URI: a tracking server every worker can reach (http://host:5000) or an sqlite file on
  a shared filesystem (sqlite:////shared/isopo/mlflow.db); a relative sqlite path with a remote Ray address
  is refused, since each worker would write its own store;
- --output-dir (checkpoints: a resumed run must find its checkpoint wherever it lands), the warm-start cache
  ($ISOPO_BENCH_CACHE) and --data-dir: a shared filesystem;
- isopo-bench itself, installed in the same Python environment on every node.
Relative paths are made absolute on the driver before runs are shipped. What a worker does with one run
(train it, skip it, or record its failure) is isopo_bench.suite_run.
"""

from __future__ import annotations

import concurrent.futures as cf
import importlib.util
import json
import logging
import math
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from isopo_bench.config import RunConfig, replace
from isopo_bench.errors import ConfigError, IsopoBenchError
from isopo_bench.suite_run import Outcome, execute, execute_on_worker, quiet_worker

if TYPE_CHECKING:
    from isopo_bench.suite import SuiteOptions

log = logging.getLogger(__name__)

BACKENDS = ("local", "ray", "slurm")
CLUSTER_PINS = "ray[default]==2.60.0 and submitit==1.5.4"
PIP_FIX = f"pip install 'isopo-bench[cluster]' (pins {CLUSTER_PINS})"
BACKEND_PACKAGE = {"ray": "ray", "slurm": "submitit"}
# Ray 2.60 on Linux binds its daemons to the host's primary address even when given 127.0.0.1; with this
# (internal) switch off it binds loopback. ray is pinned because of it, and run_ray verifies the result.
RAY_LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
LOCAL_RAY_OBJECT_STORE_BYTES = 256 * 2**20  # runs exchange configs and outcomes only, not tensors
SLURM_ACTIVE_STATES = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD",
                       "REQUEUE_FED", "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT"}
SLURM_POLL_S = 2.0
# Forwarded to Ray workers on other machines (a local instance's workers inherit the environment anyway).
FORWARDED_ENV_PREFIXES = ("ISOPO_BENCH_", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HOME")


# ------------------------------------------------------------------------------------------------
def check_backend(options: SuiteOptions) -> None:
    """Refuse, before anything runs, a backend that cannot work: unknown name, package not installed,
    settings a cluster cannot honour."""
    from isopo_bench.tracking import resolve_uri

    backend = options.backend
    if backend not in BACKENDS:
        raise IsopoBenchError(f"unknown suite backend `{backend}`. Known backends: {', '.join(BACKENDS)}")
    package = BACKEND_PACKAGE.get(backend)
    if package and importlib.util.find_spec(package) is None:
        raise IsopoBenchError(f"--backend {backend} needs the `{package}` package, which is not installed. "
                              f"Fix: {PIP_FIX}")
    check_workers(options)
    if options.cpus_per_run <= 0 or options.gpus_per_run < 0:
        raise IsopoBenchError("--cpus-per-run must be > 0 and --gpus-per-run >= 0")
    uri = resolve_uri(options.tracking_uri)
    if backend == "ray" and options.ray_address and _relative_sqlite(uri):
        raise IsopoBenchError(
            f"tracking URI {uri} is a relative sqlite path, but the runs execute on the Ray cluster at "
            f"{options.ray_address}, where each worker would write a store of its own. Fix: a tracking server "
            "every worker reaches (--tracking-uri http://HOST:5000) or an absolute sqlite path on a shared "
            "filesystem (--tracking-uri sqlite:////shared/isopo/mlflow.db)")
    if backend == "slurm":
        if options.slurm_cluster not in ("slurm", "local"):
            raise IsopoBenchError(f"--slurm-cluster must be slurm or local, not `{options.slurm_cluster}`")
        if options.slurm_cluster == "slurm" and shutil.which("sbatch") is None:
            raise IsopoBenchError("--backend slurm: no `sbatch` on PATH. Fix: run the suite on the cluster's "
                                  "login node, or pass --slurm-cluster local to run the jobs as local processes")
        if options.gpus_per_run != int(options.gpus_per_run) or options.cpus_per_run != int(options.cpus_per_run):
            raise IsopoBenchError("--backend slurm needs whole numbers for --cpus-per-run and --gpus-per-run")


def check_workers(options: SuiteOptions) -> None:
    if options.workers < 1:
        raise ConfigError("suite --workers", f"must be >= 1, got {options.workers}", "use 1 (runs one after another) "
                          "or the number of runs to train at once")


def run_backend(todo: list[tuple[RunConfig, bool]], options: SuiteOptions) -> Iterator[Outcome]:
    """Execute the runs on options.backend, yielding each outcome as its run ends."""
    if not todo:
        return iter(())  # nothing to run: no Ray instance, no submission
    if options.backend == "local":
        return run_local(todo, options.workers)
    todo = [(portable(cfg), resume) for cfg, resume in todo]
    return run_ray(todo, options) if options.backend == "ray" else run_slurm(todo, options)


def portable(cfg: RunConfig) -> RunConfig:
    """The run with absolute store and folder paths: a worker's working directory is not the driver's
    (neither path is part of the config hash)."""
    from isopo_bench.tracking import resolve_uri

    uri = resolve_uri(cfg.tracking.uri)
    if _relative_sqlite(uri):
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    return replace(cfg, **{"tracking.uri": uri, "tracking.output_dir": str(Path(cfg.tracking.output_dir).resolve())})


def _relative_sqlite(uri: str) -> bool:
    return uri.startswith("sqlite:///") and not uri[len("sqlite:///"):].startswith("/")


# ------------------------------------------------------------------------------------------------
def _init_pool_worker(slot=None, cores: tuple[int, ...] = ()) -> None:
    """Spawned pool worker: one thread (two single-thread workers use two cores better than one two-thread
    run: the tiny model's ops are too small to split), pinned to its own core (`slot` counts workers; timings
    then measure the method, not the scheduler), and death with the parent so a SIGKILLed suite leaves no
    orphan training a run."""
    if slot is not None and cores:
        from isopo_bench.suite_pinning import pin_worker

        pin_worker(slot, cores)
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
        if os.getppid() == 1:  # the parent died before prctl took effect
            os._exit(1)
    quiet_worker(1)


def run_local(todo: list[tuple[RunConfig, bool]], workers: int) -> Iterator[Outcome]:
    if workers <= 1:
        for cfg, resume in todo:
            yield execute(cfg, resume)
        return
    context = multiprocessing.get_context("spawn")  # fork after torch/OpenMP start-up is unsafe
    from isopo_bench.suite_pinning import pool_slots

    slot, cores = pool_slots(context, workers)
    with cf.ProcessPoolExecutor(workers, mp_context=context, initializer=_init_pool_worker,
                                initargs=(slot, cores)) as pool:
        futures = [pool.submit(execute, cfg, resume) for cfg, resume in todo]
        try:
            for future in cf.as_completed(futures):
                yield future.result()
        except cf.process.BrokenProcessPool as exc:  # a worker died hard (SIGKILL, out of memory)
            raise IsopoBenchError("a worker process died; its runs are resumable: run the same command again") from exc
        except BaseException:  # includes the consumer abandoning the generator
            pool.shutdown(wait=False, cancel_futures=True)
            raise


# ------------------------------------------------------------------------------------------------
def task_name(cfg: RunConfig) -> str:
    return f"{cfg.tracking.run_name}-{cfg.config_hash()}"


def run_ray(todo: list[tuple[RunConfig, bool]], options: SuiteOptions) -> Iterator[Outcome]:
    start_here = not options.ray_address
    if start_here:
        os.environ[RAY_LOOPBACK_SWITCH] = "0"  # read when ray is imported; inherited by the daemons it starts
    import ray

    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES)}
    common = dict(log_to_driver=False, runtime_env={"env_vars": env})
    if start_here:
        from ray._private import ray_constants

        if getattr(ray_constants, "ENABLE_RAY_CLUSTER", False):
            raise IsopoBenchError(f"ray was imported in this process before {RAY_LOOPBACK_SWITCH}=0 was set, so a "
                                  "local instance would listen on the network. Fix: run the suite in a fresh process")
        # --workers runs at a time on this machine, as on the local backend
        context = ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False,
                           num_cpus=math.ceil(max(1, options.workers) * options.cpus_per_run),
                           num_gpus=_local_gpus(options), object_store_memory=LOCAL_RAY_OBJECT_STORE_BYTES, **common)
    else:
        context = ray.init(address=options.ray_address, **common)
    try:
        if start_here and context.address_info.get("node_ip_address") != "127.0.0.1":
            raise IsopoBenchError(f"the local Ray instance bound {context.address_info.get('node_ip_address')}, "
                                  f"not loopback: this ray release ignores {RAY_LOOPBACK_SWITCH}. Fix: {PIP_FIX}")
        _warn_if_short(ray.cluster_resources(), options)
        remote_run = ray.remote(execute_on_worker)
        threads = max(1, int(options.cpus_per_run))
        pending = {}
        for cfg, resume in todo:
            # max_retries=0: a crashed worker's run is left resumable for the next invocation, which decides
            # from the ledger and the run folder; a retry would reuse a resume flag that is stale by then.
            ref = remote_run.options(name=task_name(cfg), num_cpus=options.cpus_per_run,
                                     num_gpus=options.gpus_per_run, max_retries=0).remote(cfg, resume, threads)
            pending[ref] = cfg
        log.info("ray: %d tasks submitted to %s (per run: %g CPU, %g GPU)", len(pending),
                 options.ray_address or "a local loopback-only instance", options.cpus_per_run, options.gpus_per_run)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            cfg = pending.pop(done[0])
            try:
                outcome = ray.get(done[0])
            except ray.exceptions.RayError as exc:  # the worker died (out of memory, node lost)
                outcome = Outcome(cfg, "FAILED", error=f"{type(exc).__name__}: {str(exc)[-1000:]}; the run is "
                                  "resumable: run the suite again")
            yield outcome
    finally:
        ray.shutdown()  # a local instance stops; a cluster ends this driver's job and its tasks


def _local_gpus(options: SuiteOptions) -> int | None:
    """GPUs of a local instance: what the runs ask for (Ray's detection when they ask for none)."""
    return math.ceil(max(1, options.workers) * options.gpus_per_run) if options.gpus_per_run else None


def _warn_if_short(resources: dict, options: SuiteOptions) -> None:
    """Ray queues a task no node can hold without an error; say why nothing starts."""
    for name, need in (("CPU", options.cpus_per_run), ("GPU", options.gpus_per_run)):
        if need > resources.get(name, 0):
            log.warning("ray: each run asks for %g %s but the cluster has %g now; runs wait until the cluster "
                        "grows", need, name, resources.get(name, 0))


# ------------------------------------------------------------------------------------------------
def run_slurm(todo: list[tuple[RunConfig, bool]], options: SuiteOptions) -> Iterator[Outcome]:
    import submitit

    folder = Path(options.slurm_folder or Path(options.output_dir) / "slurm").resolve()
    executor = submitit.AutoExecutor(folder=folder, cluster=options.slurm_cluster)
    executor.update_parameters(
        timeout_min=int(options.slurm_time_min), cpus_per_task=int(options.cpus_per_run),
        gpus_per_node=int(options.gpus_per_run), nodes=1, tasks_per_node=1,
        mem_gb=options.slurm_mem_gb or None, slurm_partition=options.slurm_partition or None,
    )
    registry = JobRegistry(folder / "jobs.json")
    # SLURM queues what it cannot start yet; local processes would all start at once, so --workers caps them.
    limit = max(1, options.workers) if options.slurm_cluster == "local" else len(todo)
    queue, jobs = list(todo), []
    while queue or jobs:
        while queue and len(jobs) < limit:
            cfg, resume = queue.pop(0)
            jobs.append((_submit_or_reattach(executor, registry, cfg, resume, options, folder), cfg))
        for job, cfg in [(j, c) for j, c in jobs if not _job_active(j)]:
            jobs.remove((job, cfg))
            yield _job_outcome(job, cfg)
        if jobs:
            time.sleep(SLURM_POLL_S)


def _submit_or_reattach(executor, registry: JobRegistry, cfg: RunConfig, resume: bool, options: SuiteOptions,
                        folder: Path):
    """A job running this run: the earlier invocation's when it is still queued or running (a second job
    would train the same run folder at the same time), else a new one."""
    job = registry.still_active(cfg, options.slurm_cluster, folder)
    if job is not None:
        log.info("slurm: %s is still queued or running as job %s from an earlier invocation; waiting for it",
                 task_name(cfg), job.job_id)
        return job
    executor.update_parameters(name=task_name(cfg))
    job = executor.submit(execute_on_worker, cfg, resume, int(options.cpus_per_run))
    registry.record(cfg, job.job_id)
    log.info("slurm: submitted %s as job %s (logs in %s)", task_name(cfg), job.job_id, folder)
    return job


class JobRegistry:
    """config hash -> id of the job last submitted for that run, in the submitit folder."""

    def __init__(self, path: Path):
        self.path = path
        self.ids: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}

    def record(self, cfg: RunConfig, job_id: str) -> None:
        self.ids[cfg.config_hash()] = job_id
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.ids, indent=1))
        tmp.replace(self.path)  # a driver killed mid-write leaves the previous registry whole

    def still_active(self, cfg: RunConfig, cluster: str, folder: Path):
        """The earlier job of this run when it is still queued or running, else None."""
        import submitit

        job_id = self.ids.get(cfg.config_hash())
        if job_id is None:
            return None
        if cluster == "local":
            job = submitit.LocalJob(folder, job_id)
            return job if _local_controller_alive(job_id, folder) else None
        job = submitit.SlurmJob(folder, job_id)
        state = job.get_info(mode="force").get("State", "UNKNOWN").split()[0].upper()
        return job if state in SLURM_ACTIVE_STATES else None


def _local_controller_alive(job_id: str, folder: Path) -> bool:
    """A local job's id is its controller's pid; check the pid still is that controller (pids are reused)."""
    try:
        cmdline = Path(f"/proc/{int(job_id)}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return False
    return b"submitit.local._local" in cmdline and str(folder).encode() in cmdline


def _job_active(job) -> bool:
    import submitit

    if job.paths.result_pickle.exists():
        return False
    if isinstance(job, submitit.LocalJob) and job._process is None:  # reattached: not our child
        return _local_controller_alive(job.job_id, job.paths.folder)
    return not job.done()


def _job_outcome(job, cfg: RunConfig) -> Outcome:
    try:
        return job.result()
    except Exception as exc:  # noqa: BLE001 - timeout, node failure, killed: the job left no result
        return Outcome(cfg, "FAILED", error=f"job {job.job_id} ended without a result ({type(exc).__name__}: "
                       f"{str(exc)[-1000:]}); the run is resumable: run the suite again")
