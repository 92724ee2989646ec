"""Issue 13, items 2-3: a damaged checkpoint is an error naming the file and the fix (never a silent resume),
checkpoints load with weights_only=True, and the finite-state guard keeps inf/nan out of the weights and out
of every checkpoint."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import smoke_config
from isopo_bench import cli
from isopo_bench import metric_names as M
from isopo_bench.checkpoint import CHECKPOINT_DIR, MANIFEST, CheckpointError, load_checkpoint, write_manifest
from isopo_bench.errors import NonFiniteError
from isopo_bench.finite_guard import check_finite_state, first_nonfinite, sampling_error
from isopo_bench.trainer import Trainer, train

STEPS = 2


def argv(root: Path, *extra: str) -> list[str]:
    return ["train", "--preset", "tiny-smoke", "--optim.steps", str(STEPS), "--optim.lr", "1e-3",
            "--optim.microbatch-size", "4", "--eval.no-at-start", "--task.eval-items", "2",
            "--tracking.checkpoint-every", "2", "--tracking.uri", f"sqlite:///{root}/mlflow.db",
            "--tracking.output-dir", str(root / "runs"), "--threads", "1", *extra]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    assert cli.main(argv(root)) == 0
    return root


@pytest.fixture
def run_copy(finished_run, tmp_path):
    """A private copy of the finished run (store and folder) to damage."""
    root = tmp_path / "copy"
    shutil.copytree(finished_run, root)
    [folder] = (root / "runs").iterdir()
    return root, folder


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _zero_64k(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 65536] = bytes(65536)
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncated-weights": ("model.safetensors", _truncate, "bytes"),
    "zeroed-64KiB-of-weights": ("model.safetensors", _zero_64k, "sha256"),
    "truncated-training-state": ("training_state.pt", _truncate, "bytes"),
    "deleted-weights": ("model.safetensors", Path.unlink, "missing"),
    "emptied-trainer-state": ("trainer_state.json", lambda p: p.write_text(""), "trainer_state.json"),
    "deleted-trainer-state": ("trainer_state.json", Path.unlink, "missing"),
    "deleted-manifest": (MANIFEST, Path.unlink, MANIFEST),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_checkpoint_is_refused_with_the_file_and_the_fix(run_copy, capsys, case):
    root, folder = run_copy
    name, damage, problem = DAMAGE[case]
    damage(folder / CHECKPOINT_DIR / name)
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    [run] = client.search_runs([client.get_experiment_by_name("isopo-bench").experiment_id])
    rc = cli.main(argv(root, "--resume"))
    out = capsys.readouterr()
    assert "Traceback" not in out.err + out.out
    assert rc == 1 and str(folder / CHECKPOINT_DIR / name) in out.err and problem in out.err, out.err
    assert "Fix:" in out.err and "--resume" in out.err
    after = client.get_run(run.info.run_id)
    assert after.info.status == "FINISHED" and after.data.tags == run.data.tags, "the record must not change"


def test_intact_checkpoint_resumes(run_copy):
    root, folder = run_copy
    assert cli.main(argv(root, "--resume")) == 0


def test_checkpoint_is_loaded_without_unpickling_code(run_copy):
    """A training_state.pt rewritten with a pickled callable (and a manifest to match) is refused, and the
    callable never runs."""
    root, folder = run_copy
    marker = root / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    ckpt = folder / CHECKPOINT_DIR
    state = torch.load(ckpt / "training_state.pt", weights_only=True)
    state["extra"] = Payload()
    torch.save(state, ckpt / "training_state.pt")
    write_manifest(ckpt)
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        load_checkpoint(folder, torch.nn.Linear(1, 1), None, None, None)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------
def test_huge_learning_rate_fails_at_the_step_and_keeps_a_finite_checkpoint(workdir):
    """lr 1e30: weight decay drives the weights to inf while the clipped gradients stay finite."""
    cfg = smoke_config(workdir, **{"optim.lr": 1e30, "optim.steps": 4, "tracking.checkpoint_every": 1,
                                   "eval.at_start": False, "task.eval_items": 2})
    with pytest.raises(NonFiniteError) as failed:
        train(cfg)
    message = str(failed.value)
    assert "training step" in message and "1e+30" in message and "--optim.lr" in message, message
    ckpts = list(Path(cfg.tracking.output_dir).glob(f"*/{CHECKPOINT_DIR}/model.safetensors"))
    from safetensors.torch import load_file

    for path in ckpts:
        assert all(torch.isfinite(t).all() for t in load_file(path).values()), "a checkpoint holds inf/nan"
    client = MlflowClient(cfg.tracking.uri)
    [run] = client.search_runs([client.get_experiment_by_name("isopo-bench").experiment_id])
    assert run.info.status == "FAILED" and "not finite" in run.data.tags[M.TAG_STATUS_DETAIL]


def test_guard_finds_inf_in_optimizer_moments_and_ignores_huge_finite_weights():
    model = torch.nn.Linear(4, 4)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 4)).sum().backward()
    optimizer.step()
    check_finite_state(model, optimizer, step=1, lr=1e-3)
    with torch.no_grad():
        model.weight.fill_(3e38)  # finite, though its norm overflows float32
    check_finite_state(model, optimizer, step=1, lr=1e-3)
    optimizer.state[model.bias]["exp_avg_sq"][0] = float("inf")
    with pytest.raises(NonFiniteError, match=r"step 3 \(optimizer exp_avg_sq of bias holds 1 of 4 values inf/nan\).*--optim.lr \(now 0\.5"):
        check_finite_state(model, optimizer, step=3, lr=0.5)
    assert first_nonfinite([("w", torch.tensor([1.0, float("nan")]))]) == ("w", 1, 2)


def test_sampling_on_nonfinite_weights_is_a_nonfinite_error(workdir):
    from isopo_bench.rollout.api import SamplingSettings

    trainer = Trainer(smoke_config(workdir, **{"eval.at_start": False, "task.eval_items": 2}))
    with torch.no_grad():
        next(trainer.model.parameters()).fill_(float("nan"))
    with pytest.raises(NonFiniteError, match="probabilities contain inf/nan") as failed:
        trainer.engine.generate([[1, 2, 3]], SamplingSettings(n=2, temperature=1.0, top_p=1.0, max_new_tokens=4, seed=0))
    assert "--optim.lr" in str(failed.value)
    assert sampling_error(RuntimeError("something else"), 1e-3) is None


def test_checkpoint_from_a_nonfinite_model_is_refused(tmp_path):
    from isopo_bench.checkpoint import save_checkpoint

    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match="refusing to checkpoint"):
        save_checkpoint(tmp_path, model, None, None, None, {"step": 1})
    assert not (tmp_path / CHECKPOINT_DIR).exists()


def test_the_fix_of_a_damaged_checkpoint_works(run_copy, capsys):
    """Following the error's advice (delete the checkpoint, --resume) retrains in the same MLflow run with
    no step logged twice."""
    root, folder = run_copy
    _zero_64k(folder / CHECKPOINT_DIR / "model.safetensors")
    assert cli.main(argv(root, "--resume")) == 1
    shutil.rmtree(folder / CHECKPOINT_DIR)
    assert cli.main(argv(root, "--resume")) == 0
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    [run] = client.search_runs([client.get_experiment_by_name("isopo-bench").experiment_id])
    steps = [m.step for m in client.get_metric_history(run.info.run_id, M.REWARD_MEAN)]
    assert run.info.status == "FINISHED" and steps == list(range(1, STEPS + 1))
