"""`isopo-bench train` under torchrun with 2 ranks (DDP, gloo on CPU) equals the same run in one process.

To make the two runs comparable end to end, rollouts must not depend on how prompts are split over ranks:
the launcher registers a task whose reward is a deterministic function of the completion text and an
advantage equal to that reward, and sampling is greedy, so both runs generate, score and train on the same
batch. Then the whole trainer path is under test: rollout shares, the gather, pi_old rows per rank, the
global microbatch plan, the SUM reduction, ISOPO's reduced statistics, merged metrics, rank-0 logging,
checkpoints and export. The update-level equivalence for every algorithm and FSDP2 is tests/test_distributed.py.
The run's end is bounded in time: a rank stuck before the end-of-run barrier fails the run (and it resumes),
a rank that cannot exit is ended with its stacks (isopo_bench.shutdown; ISOPO_TEST_STALL in the launcher).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from conftest import kill_after_checkpoint
from isopo_bench import metric_names as M

LAUNCHER = """
import os, sys, torch
from isopo_bench.plugins import ADVANTAGES, TASKS
from isopo_bench.tasks.arithmetic import Arithmetic

@TASKS.register("text-shaped")
class TextShaped(Arithmetic):
    # A reward the random tiny model earns: it depends only on the completion text.
    def score(self, item, completion):
        return (sum(map(ord, completion)) % 7) / 6.0

CALLS = []

@ADVANTAGES.register("raw-reward")
def raw_reward(rewards_PG):
    # Called once per training step on every rank: ISOPO_TEST_CRASH_AT=k fails step k on all ranks.
    CALLS.append(1)
    if len(CALLS) == int(os.environ.get("ISOPO_TEST_CRASH_AT", 0)):
        raise RuntimeError("injected crash")
    return rewards_PG - 0.5

STALL = os.environ.get("ISOPO_TEST_STALL", "")  # "RANK:close" or "RANK:exit": that rank misbehaves at the end
if STALL and STALL.split(":")[0] == os.environ.get("RANK"):
    import threading, time
    from isopo_bench.rollout.hf_engine import HFEngine

    def never_ending_thread():
        threading.Event().wait()

    def misbehaving_close(self):  # every rank closes its engine first thing at the end of the run
        if STALL.endswith(":close"):
            time.sleep(3600)  # alive but stuck before the end-of-run barriers
        else:
            threading.Thread(target=never_ending_thread).start()  # not a daemon: the interpreter's exit joins it

    HFEngine.close = misbehaving_close

from isopo_bench.cli import main
sys.exit(main(sys.argv[1:]))
"""
WORLD = 2


def train_args(root: Path, name: str, algorithm: str, steps: int, world: int) -> list[str]:
    return ["train", "--preset", "tiny-smoke", "--algorithm.name", algorithm, "--task.name", "text-shaped",
            "--algorithm.advantage", "raw-reward", "--rollout.temperature", "0", "--rollout.prompts-per-step", "4",
            "--rollout.samples-per-prompt", "2", "--optim.minibatches-per-step", "2", "--optim.microbatch-size", "2",
            "--optim.steps", str(steps), "--optim.lr", "1e-3", "--eval.every", "2", "--tracking.checkpoint-every", "1",
            "--tracking.uri", f"sqlite:///{root}/mlflow.db", "--tracking.experiment", name,
            "--tracking.output-dir", str(root / name), "--threads", "1", "--parallel.world-size", str(world)]


def command(root: Path, world: int) -> list[str]:
    launcher = root / "launch.py"
    launcher.write_text(LAUNCHER)
    if world == 1:
        return [sys.executable, str(launcher)]
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    return [torchrun, "--standalone", f"--nproc_per_node={world}", str(launcher)]


def run(root: Path, name: str, algorithm: str, world: int, steps: int = 3, extra: tuple = (),
        env_extra: dict | None = None, expect_ok: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    """The training command. On timeout torchrun AND its ranks are killed (torchrun starts each rank in a
    session of its own: killing torchrun alone, as subprocess.run's timeout does, leaves the ranks behind
    holding the output pipes), then the test fails with their output."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"} | (env_extra or {})
    args = [*command(root, world), *train_args(root, name, algorithm, steps, world), *extra]
    with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as popen:
        try:
            out, err = popen.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for pid in launcher_processes(root):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            out, err = popen.communicate()
            pytest.fail(f"still running after {timeout:.0f} s; killed.\n{out[-3000:]}{err[-6000:]}")
    proc = subprocess.CompletedProcess(args, popen.returncode, out, err)
    if expect_ok:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert not launcher_processes(root), "a rank outlived torchrun"
    return proc


def launcher_processes(root: Path) -> list[int]:
    """PIDs of the processes whose command line names this test's launcher: torchrun and its ranks."""
    launcher = str(root / "launch.py").encode()
    pids = []
    for proc_dir in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):  # gone meanwhile
            if launcher in (proc_dir / "cmdline").read_bytes().split(b"\0"):
                pids.append(int(proc_dir.name))
    return pids


def record(root: Path, name: str):
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
    assert len(runs) == 1, f"{len(runs)} MLflow runs for one training run"
    run_ = runs[0]
    history = {k: [(m.step, m.value) for m in client.get_metric_history(run_.info.run_id, k)] for k in run_.data.metrics}
    return run_, history


def final_weights(root: Path, name: str) -> dict[str, torch.Tensor]:
    (folder,) = (root / name).glob("*/final_model")
    return load_file(str(next(folder.glob("*.safetensors"))))


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("algorithm,engine,mode", [
    ("grpo", "hf", "ddp"),
    ("isopo", "hf", "ddp"),
    pytest.param("isopo-interacting", "vllm", "fsdp2", marks=pytest.mark.vllm),
])
def test_two_rank_training_run_equals_one_process(workdir, algorithm, engine, mode):
    if engine == "vllm":
        pytest.importorskip("vllm")
    extra = ("--rollout.engine", engine, "--parallel.mode", mode)
    run(workdir, "one", algorithm, world=1, extra=extra)
    run(workdir, "two", algorithm, world=WORLD, extra=extra)
    one, h1 = record(workdir, "one")
    two, h2 = record(workdir, "two")
    assert one.info.status == two.info.status == "FINISHED"
    assert two.data.params["parallel.world_size"] == str(WORLD)
    assert two.data.params["parallel.mode"] == mode
    if mode == "ddp":  # replicas agreed at every checkpoint (FSDP2 holds shards, not replicas)
        assert [v for _, v in h2[M.PARALLEL_PARAM_SPREAD]] == [0.0, 0.0, 0.0]
    # Same batch, same reward statistics; same update: loss (a sum of the ranks' shares), gradient norm,
    # eval accuracy and final weights.
    for name in (M.REWARD_MEAN, M.ROLLOUT_TOKENS, M.LOSS, M.GRAD_NORM, M.EVAL_ACCURACY):
        assert [s for s, _ in h2[name]] == [s for s, _ in h1[name]], name
        assert [v for _, v in h2[name]] == pytest.approx([v for _, v in h1[name]], rel=1e-4, abs=1e-6), name
    assert h1[M.GRAD_NORM][-1][1] > 0
    w1, w2 = final_weights(workdir, "one"), final_weights(workdir, "two")
    assert sorted(w1) == sorted(w2)
    for key in w1:
        torch.testing.assert_close(w2[key], w1[key], rtol=0, atol=2e-5, msg=key)


@pytest.mark.distributed
@pytest.mark.slow
def test_two_rank_run_killed_and_resumed_continues_one_mlflow_run(workdir):
    env = os.environ | {"OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    args = [*command(workdir, WORLD), *train_args(workdir, "killed", "isopo-interacting", 8, WORLD)]
    # A new session, so the SIGKILL reaches torchrun and both ranks.
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    killed_at = kill_after_checkpoint(proc, workdir / "killed", step=3, group=True)
    # torchrun starts each rank in a session of its own, so the group kill reaches torchrun only: kill the
    # ranks too (a crash of the whole job), and wait until none is left before resuming.
    for _ in range(100):
        pids = launcher_processes(workdir)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    assert not launcher_processes(workdir), "a rank survived SIGKILL"
    assert 3 <= killed_at < 8
    run(workdir, "killed", "isopo-interacting", world=WORLD, steps=8, extra=("--resume",))
    run_, history = record(workdir, "killed")
    assert run_.info.status == "FINISHED"
    steps = [s for s, _ in history[M.REWARD_MEAN]]
    assert steps == list(range(1, 9)), steps  # nothing missing, nothing logged twice
    assert all(v == 0.0 for _, v in history[M.PARALLEL_PARAM_SPREAD])


SHUTDOWN_S = 10  # the end-of-run deadline in the tests below (isopo_bench.shutdown)


@pytest.mark.distributed
@pytest.mark.slow
def test_a_rank_stuck_at_the_end_fails_the_run_in_bounded_time(workdir):
    """Rank 1 hangs after training, before the end-of-run barrier. Rank 0 must not mark the run FINISHED
    (one rank never finished) nor wait for the 30-minute collective timeout: past the deadline it fails the
    run naming rank 1, and torchrun ends rank 1."""
    start = time.monotonic()
    proc = run(workdir, "stuck", "isopo", WORLD, steps=1, expect_ok=False, timeout=240,
               env_extra={"ISOPO_TEST_STALL": "1:close", "ISOPO_BENCH_SHUTDOWN_TIMEOUT_S": str(SHUTDOWN_S)})
    assert proc.returncode != 0
    assert "rank 0: rank(s) [1] did not reach the end-of-run step `trained` within 10 s" in proc.stderr
    run_, _ = record(workdir, "stuck")
    assert run_.info.status == "FAILED"
    assert "ShutdownError: rank 0: rank(s) [1]" in run_.data.tags[M.TAG_STATUS_DETAIL]
    assert not list((workdir / "stuck").glob("*/final_model"))  # nothing exported for an unfinished run
    assert time.monotonic() - start < 200
    # Resumable as any failed run: from the final checkpoint, nothing trained or logged again.
    run(workdir, "stuck", "isopo", WORLD, steps=1, extra=("--resume",))
    run_, history = record(workdir, "stuck")
    assert run_.info.status == "FINISHED" and M.TAG_STATUS_DETAIL not in run_.data.tags
    assert [s for s, _ in history[M.REWARD_MEAN]] == [1]
    assert list((workdir / "stuck").glob("*/final_model"))


@pytest.mark.distributed
@pytest.mark.slow
def test_a_rank_that_cannot_exit_is_reported_in_bounded_time(workdir):
    """Rank 1 finishes its work but leaves a thread that never ends, so its interpreter cannot exit. The run
    is FINISHED (every rank finished training); the rank is ended past the deadline with its stacks, and
    torchrun reports it instead of waiting for ever."""
    start = time.monotonic()
    proc = run(workdir, "lingering", "isopo", WORLD, steps=1, expect_ok=False, timeout=240,
               env_extra={"ISOPO_TEST_STALL": "1:exit", "ISOPO_BENCH_SHUTDOWN_TIMEOUT_S": str(SHUTDOWN_S)})
    assert proc.returncode != 0
    assert "error: rank 1: the process's exit after the run did not end within 10 s" in proc.stderr
    assert "in never_ending_thread" in proc.stderr
    run_, _ = record(workdir, "lingering")
    assert run_.info.status == "FINISHED"
    assert time.monotonic() - start < 200


def test_world_size_must_match_the_launch(workdir):
    proc = subprocess.run([*command(workdir, 1), *train_args(workdir, "bad", "reinforce", 1, WORLD)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "parallel.world_size" in proc.stderr and "torchrun --standalone --nproc_per_node 2" in proc.stderr


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.vllm
def test_fsdp2_run_crashed_and_resumed_equals_uninterrupted_run(workdir):
    """FSDP2 checkpoints hold gathered model and optimizer states; resuming scatters them back into the
    shards. A run that crashes in step 3 and is resumed ends with the weights of a run never interrupted."""
    pytest.importorskip("vllm")
    extra = ("--rollout.engine", "vllm", "--parallel.mode", "fsdp2")
    crashed = run(workdir, "crashed", "isopo", WORLD, steps=4, extra=extra, env_extra={"ISOPO_TEST_CRASH_AT": "3"},
                  expect_ok=False)
    assert crashed.returncode != 0 and "injected crash" in crashed.stderr
    (state,) = (workdir / "crashed").glob("*/checkpoint/trainer_state.json")
    assert json.loads(state.read_text())["step"] == 2
    run(workdir, "crashed", "isopo", WORLD, steps=4, extra=(*extra, "--resume"))
    run(workdir, "straight", "isopo", WORLD, steps=4, extra=extra)
    resumed, h_resumed = record(workdir, "crashed")
    _, h_straight = record(workdir, "straight")
    assert resumed.info.status == "FINISHED"
    assert [s for s, _ in h_resumed[M.REWARD_MEAN]] == [1, 2, 3, 4]
    for name in (M.LOSS, M.GRAD_NORM):
        assert [v for _, v in h_resumed[name]] == pytest.approx([v for _, v in h_straight[name]], rel=1e-4), name
    w_resumed, w_straight = final_weights(workdir, "crashed"), final_weights(workdir, "straight")
    for key in w_straight:
        torch.testing.assert_close(w_resumed[key], w_straight[key], rtol=0, atol=2e-5, msg=key)
