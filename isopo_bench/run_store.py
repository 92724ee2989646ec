"""Where a run lives: its folder (checkpoints, resolved config, final model) and its MLflow record.

A run's folder is named by its config hash, so the same experiment always maps to the same folder and an
interrupted run is found again. Starting a run whose folder exists is refused unless resuming, so nothing
already done is overwritten.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch

from isopo_bench import __version__
from isopo_bench import metric_names as M
from isopo_bench.checkpoint import CHECKPOINT_DIR, read_trainer_state, verify_run_checkpoint
from isopo_bench.config import RunConfig
from isopo_bench.errors import IsopoBenchError, NonFiniteError
from isopo_bench.models import model_source
from isopo_bench.run_lock import is_main_rank
from isopo_bench.start_point import start_tags
from isopo_bench.store_init import ensure_store, sqlite_path
from isopo_bench.tracking import RunTracker, check_reachable, flatten, git_commit, resolve_uri

RUN_INFO = "run_info.json"


def run_dir_for(cfg: RunConfig) -> Path:
    name = f"{cfg.algorithm.name}-{cfg.task.name}-s{cfg.seed}-{cfg.config_hash()}"
    return Path(cfg.tracking.output_dir) / name


def machine_description() -> str:
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else (platform.processor() or platform.machine())
    return f"{device}; torch threads {torch.get_num_threads()}; {platform.system()}"


def check_run_recorded(info: dict, uri: str, folder: Path) -> None:
    """A run folder to resume must still have its MLflow run in the store (a store can be deleted or the
    URI changed); checked before anything is loaded, without creating a missing store."""
    db = sqlite_path(uri)
    fix = (f"pass --tracking.uri {info.get('tracking_uri', 'URI')} (the store the run was created in), or move "
           f"{folder} away to start the run again from step 0")
    if db is not None and not db.is_file():
        raise IsopoBenchError(f"the run folder {folder} belongs to MLflow run {info.get('run_id')}, but the store "
                              f"{db} does not exist. Fix: {fix}")
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(uri).get_run(info["run_id"])
    except MlflowException:
        raise IsopoBenchError(f"the run folder {folder} belongs to MLflow run {info.get('run_id')}, which is not in "
                              f"the store {uri}. Fix: {fix}") from None


class RunStore:
    def __init__(self, cfg: RunConfig, run_dir: Path, tracker: RunTracker):
        self.cfg = cfg
        self.run_dir = run_dir
        self.tracker = tracker

    @staticmethod
    def preflight(cfg: RunConfig, resume: bool) -> None:
        """Checks that need no model: the store is reachable and an existing run is not overwritten.
        Runs before anything is loaded or written, so a bad setting costs seconds and leaves no trace."""
        check_reachable(resolve_uri(cfg.tracking.uri))
        info_path = run_dir_for(cfg) / RUN_INFO
        if info_path.exists() and not resume:
            info = json.loads(info_path.read_text())
            raise IsopoBenchError(
                f"a run with this configuration already exists in {info_path.parent} (MLflow run {info['run_id']}). "
                "Fix: pass --resume to continue it, or set --tracking.output-dir to start a separate copy"
            )
        if info_path.exists():
            check_run_recorded(json.loads(info_path.read_text()), resolve_uri(cfg.tracking.uri), info_path.parent)
            if is_main_rank():  # a damaged checkpoint is an error now, before a model loads or the record changes
                verify_run_checkpoint(info_path.parent)

    @classmethod
    def open(cls, cfg: RunConfig, resume: bool) -> "RunStore":
        cls.preflight(cfg, resume)
        uri = resolve_uri(cfg.tracking.uri)
        run_dir = run_dir_for(cfg)
        info_path = run_dir / RUN_INFO
        run_name = cfg.tracking.run_name or f"{cfg.algorithm.name}-{cfg.task.name}-s{cfg.seed}"
        ensure_store(uri, cfg.tracking.experiment)  # one initialiser of a new store (isopo_bench.store_init)
        if info_path.exists():
            info = json.loads(info_path.read_text())
            tracker = RunTracker(uri, cfg.tracking.experiment, run_name, run_id=info["run_id"])
        else:
            run_dir.mkdir(parents=True, exist_ok=True)
            tracker = RunTracker(uri, cfg.tracking.experiment, run_name)
            info_path.write_text(json.dumps({"run_id": tracker.run_id, "tracking_uri": uri, "config_hash": cfg.config_hash()}))
            (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
        return cls(cfg, run_dir, tracker)

    def start(self, task, descriptive_params: dict[str, str]) -> None:
        cfg = self.cfg
        self.tracker.log_params(flatten(cfg.to_dict()) | {f"algorithm_policy.{k}": v for k, v in descriptive_params.items()})
        self.tracker.set_tags({
            M.TAG_ALGORITHM: cfg.tracking.algorithm_label or cfg.algorithm.name,
            M.TAG_TASK: cfg.task.name,
            M.TAG_SEED: cfg.seed,
            M.TAG_LR: cfg.optim.lr,
            M.TAG_OPTIMIZER: cfg.optim.optimizer,
            M.TAG_COMMIT: git_commit(),
            M.TAG_CONFIG_HASH: cfg.config_hash(),
            M.TAG_VERSION: __version__,
            M.TAG_SUITE: cfg.tracking.suite,
            M.TAG_SCORER_VERSION: f"{cfg.task.name}:{task.scorer_version}",
            M.TAG_MACHINE: machine_description(),
        } | start_tags(cfg.model, model_source(cfg.model, seed=0)))  # the trainer's source: built before this
        self.tracker.log_dict(cfg.to_dict(), "config.json")

    def has_checkpoint(self) -> bool:
        return read_trainer_state(self.run_dir) is not None and (self.run_dir / CHECKPOINT_DIR).exists()

    def fail(self, message: str, status: str = "FAILED") -> None:
        self.tracker.set_tags({M.TAG_STATUS_DETAIL: message[:4000]})
        self.tracker.finish(status)

    def fail_from(self, exc: BaseException) -> None:
        """Mark the run KILLED (Ctrl-C) or FAILED with the exception as the reason (a NonFiniteError's message
        as it stands: it explains itself)."""
        detail = str(exc) if isinstance(exc, NonFiniteError) else f"{type(exc).__name__}: {exc}"
        self.fail(detail, status="KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")

    def finish(self, state: dict) -> None:
        summary = {
            M.FINAL_ACCURACY: state["last_accuracy"],
            M.BEST_ACCURACY: state["best_accuracy"],
            M.INITIAL_ACCURACY: state["initial_accuracy"],
            M.TIME_ELAPSED: state["elapsed"],
            "steps": state["step"],
        }
        self.tracker.log_metrics({k: v for k, v in summary.items() if k.startswith("final/") and v is not None}, state["step"])
        self.tracker.log_dict(summary, "summary.json")
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        self.tracker.clear_tag(M.TAG_STATUS_DETAIL)  # an earlier failure's explanation no longer applies
        self.tracker.finish("FINISHED")
