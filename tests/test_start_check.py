"""The leaderboard never compares runs that started from different weights: on a real MLflow store holding
runs from one warm start, from a same-named warm start with other bits (another machine's training) and
one recorded before the start_hash tag existed; and on hand-made tables."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file, save_file

from conftest import smoke_config
from isopo_bench import leaderboard as lb
from isopo_bench import metric_names as M
from isopo_bench.config import ModelConfig, TaskConfig
from isopo_bench.start_check import (
    MixedStartError, describe_start_conflicts, require_single_start, select_start_hash, start_conflicts,
)
from isopo_bench.tasks.arithmetic import ArithmeticSettings
from isopo_bench.trainer import train
from isopo_bench.warmstart import WarmStartConfig, warm_start

SMALL = WarmStartConfig(
    model=ModelConfig(tiny_hidden_size=64, tiny_layers=2, tiny_heads=2, tiny_kv_heads=1, tiny_intermediate_size=128),
    task=TaskConfig(settings=ArithmeticSettings(num_terms=2, max_operand=9, ops="+")), lr=3e-3, batch_size=16,
    warmup_steps=10, eval_items=8, max_new_tokens=8, max_steps=4, eval_every=4, target_low=1.0, target_high=1.0)


def other_machines_copy(folder, dest):
    """The same warm start (same key, same report) whose weights differ in one value, as another machine's
    rounding would leave them."""
    shutil.copytree(folder, dest)
    weights = load_file(dest / "model.safetensors")
    name = sorted(weights)[0]
    weights[name] = weights[name].clone()
    weights[name].view(-1)[0] += 1e-3
    save_file(weights, dest / "model.safetensors", metadata={"format": "pt"})
    return dest


@pytest.fixture(scope="module")
def mixed_store(tmp_path_factory):
    """uri and {label: (run id, start hash)}: `a0`, `a1` from warm start A, `b0` from B (same key, other
    bits), `old` from A with its start_hash tag removed (as runs recorded before the tag)."""
    root = tmp_path_factory.mktemp("mixed")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # MLflow's artifacts land next to the store, not in the checkout
        mp.setenv("ISOPO_BENCH_CACHE", str(root / "cache"))
        folder_a = warm_start(SMALL)
        folder_b = other_machines_copy(folder_a, root / "machine-b" / folder_a.name)
        runs = {}
        plan = (("a0", folder_a, 0), ("a1", folder_a, 1), ("b0", folder_b, 0), ("old", folder_a, 2))
        for label, folder, seed in plan:
            cfg = smoke_config(root, seed=seed, **{"model.init_from": str(folder), "optim.steps": 1,
                                                   "tracking.suite": "start-test@v1", "tracking.log_samples": 0})
            run_id = train(cfg).run_id
            runs[label] = (run_id, MlflowClient(cfg.tracking.uri).get_run(run_id).data.tags[M.TAG_START_HASH])
    uri = smoke_config(root).tracking.uri
    MlflowClient(uri).delete_tag(runs["old"][0], M.TAG_START_HASH)
    return uri, runs


def test_runs_read_back_with_their_start_hash(mixed_store):
    uri, runs = mixed_store
    df = lb.load_runs(uri).set_index(M.LB_RUN_ID)
    assert runs["a0"][1] == runs["a1"][1] == runs["old"][1] != runs["b0"][1]
    for label in ("a0", "a1", "b0"):
        assert df.loc[runs[label][0], M.LB_START_HASH] == runs[label][1]
    assert df.loc[runs["old"][0], M.LB_START_HASH] == "unknown"
    assert df[M.LB_MODEL].nunique() == 1 and df[M.LB_MODEL].iloc[0].startswith("warmstart/")  # one group
    assert df.loc[runs["b0"][0], M.LB_MODEL_DISPLAY].endswith(f"[{runs['b0'][1].split(':')[1][:8]}]")


def test_leaderboard_refuses_the_mixed_group_naming_hashes_counts_and_fix(mixed_store):
    uri, runs = mixed_store
    df = lb.load_runs(uri)
    with pytest.raises(MixedStartError) as refused:
        lb.leaderboard(df)
    message = str(refused.value)
    hash_a, hash_b = runs["a0"][1], runs["b0"][1]
    model = df[M.LB_MODEL].iloc[0]
    assert (f"suite start-test@v1, task arithmetic, model {model}: "
            + ", ".join(sorted([f"{hash_a} (2 runs)", f"{hash_b} (1 run)", "unknown (1 run)"]))) in message
    assert "Fix: keep one starting point with --start-hash HASH" in message
    assert describe_start_conflicts(df) == message  # the dashboard's variant: the same words, no exception
    with pytest.raises(MixedStartError):
        lb.main(["--tracking-uri", uri])


def test_start_hash_option_keeps_one_starting_point(mixed_store, capsys):
    uri, runs = mixed_store
    df = lb.load_runs(uri)
    digits = runs["a0"][1].split(":")[1][:8]
    kept = select_start_hash(df, digits)
    assert set(kept[M.LB_RUN_ID]) == {runs["a0"][0], runs["a1"][0]}
    assert set(select_start_hash(df, runs["b0"][1])[M.LB_RUN_ID]) == {runs["b0"][0]}
    assert set(select_start_hash(df, "unknown")[M.LB_RUN_ID]) == {runs["old"][0]}
    board = lb.leaderboard(kept)
    assert board[M.LB_N_FINISHED].sum() == 2
    assert lb.main(["--tracking-uri", uri, "--start-hash", digits]) == 0
    assert "start-test@v1" in capsys.readouterr().out


def table(rows) -> pd.DataFrame:
    columns = [M.LB_SUITE, M.LB_TASK, M.LB_MODEL, M.LB_START_HASH]
    return pd.DataFrame(rows, columns=columns)


def test_only_hashes_within_one_group_conflict():
    df = table([("s", "t", "m1", "content:aa"), ("s", "t", "m2", "content:bb"), ("s", "t", "m1", "content:aa")])
    assert start_conflicts(df) == [] and describe_start_conflicts(df) == ""
    require_single_start(df)
    df = pd.concat([df, table([("s", "t", "m2", "")])])  # an empty tag reads as unknown
    assert start_conflicts(df) == [(("s", "t", "m2"), {"content:bb": 1, "unknown": 1})]
    old = table([("s", "t", "m", None)]).drop(columns=M.LB_START_HASH)  # a table from before the column
    assert start_conflicts(pd.concat([old, old])) == []


def test_start_hash_selection_errors_name_what_was_recorded():
    df = table([("s", "t", "m", "content:ab12"), ("s", "t", "m", "content:ab34"), ("s", "t", "m", "hub:org/x")])
    assert len(select_start_hash(df, "")) == 3
    assert list(select_start_hash(df, "ab1")[M.LB_START_HASH]) == ["content:ab12"]
    assert list(select_start_hash(df, "hub:org/x")[M.LB_START_HASH]) == ["hub:org/x"]
    with pytest.raises(MixedStartError, match="prefix 'ab' matches content:ab12, content:ab34. Fix: give more digits"):
        select_start_hash(df, "ab")
    recorded = r"\(recorded: content:ab12, content:ab34, hub:org/x\)"
    with pytest.raises(MixedStartError, match=r"no run has start hash 'ff' " + recorded):
        select_start_hash(df, "ff")


def test_the_dashboards_check_needs_no_torch():
    import subprocess
    import sys

    code = ("import sys; import isopo_bench.start_check, isopo_bench.leaderboard; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
