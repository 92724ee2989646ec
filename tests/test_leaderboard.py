"""The leaderboard against hand computation: on a store of real tiny runs (finished, failed and
incomplete) read back independently through MlflowClient, and on a hand-made table."""

from __future__ import annotations

import hashlib
import math
import statistics
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from conftest import smoke_config
from isopo_bench import leaderboard as lb
from isopo_bench import metric_names as M
from isopo_bench.config import replace
from isopo_bench.errors import NonFiniteError
from isopo_bench.plugins import TASKS
from isopo_bench.statistics import t_quantile
from isopo_bench.trainer import Trainer, train

Arithmetic = TASKS.get("arithmetic")


class CoinArithmetic(Arithmetic):
    """Arithmetic prompts scored by a hash coin of the completion: the random tiny model earns reward
    about half the time, so runs train, and their accuracies differ across seeds and learning rates."""

    scorer_version = "coin-1"

    def score(self, item, completion: str) -> float:
        return float(hashlib.sha256((item.question + completion).encode()).digest()[0] % 2)

    def score_details(self, item, completion: str) -> dict[str, float]:
        return {}


if "coin-arithmetic" not in TASKS.names():
    TASKS.register("coin-arithmetic")(CoinArithmetic)

ALGOS, LRS, SEEDS = ("reinforce", "grpo"), (1e-3, 3e-3), (0, 1)


def run_config(root, algo: str, lr: float, seed: int):
    cfg = smoke_config(root, seed=seed, **{"algorithm.name": algo, "optim.lr": lr, "optim.steps": 2,
                                           "eval.every": 1, "task.name": "coin-arithmetic", "task.eval_items": 16,
                                           "rollout.prompts_per_step": 2, "rollout.max_new_tokens": 12,
                                           "tracking.suite": "lb-test@v1", "tracking.log_samples": 0})
    return cfg


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """8 finished runs (2 algorithms x 2 lrs x 2 seeds), one FAILED (NaN guard at lr 1e30) and one that
    never finished (RUNNING), all in one suite."""
    root = tmp_path_factory.mktemp("lb")
    for algo in ALGOS:
        for lr in LRS:
            for seed in SEEDS:
                train(run_config(root, algo, lr, seed))
    failing = replace(run_config(root, "reinforce", 1e30, 0), **{"optim.grad_clip": 0.0})
    with pytest.raises(NonFiniteError):
        Trainer(failing).run()
    incomplete = Trainer(run_config(root, "grpo", 1e-3, 2))  # as if killed after its first evaluation
    incomplete.store.start(incomplete.task, {})
    incomplete._evaluate(step=0)
    return run_config(root, "reinforce", 1e-3, 0).tracking.uri


def mlflow_truth(uri: str) -> dict:
    """Per finished run, straight from MlflowClient: (algo, lr, seed) -> final accuracy, update-time
    median, train time and the eval curve (step, elapsed, accuracy)."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("isopo-bench")
    out = {}
    for run in client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'"):
        hist = lambda k: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, k))
        elapsed = dict(hist(M.TIME_ELAPSED)) | {0: 0.0}
        key = (run.data.tags[M.TAG_ALGORITHM], float(run.data.tags[M.TAG_LR]), int(run.data.tags[M.TAG_SEED]))
        out[key] = dict(acc=run.data.metrics[M.FINAL_ACCURACY], update=statistics.median(v for _, v in hist(M.TIME_UPDATE)),
                        update_cpu=statistics.median(v for _, v in hist(M.TIME_CPU_UPDATE)),
                        elapsed=max(elapsed.values()), curve=[(s, elapsed[s], a) for s, a in hist(M.EVAL_ACCURACY)])
    return out


def ci(values: list[float], t: float) -> tuple[float, float, float]:
    mean = sum(values) / len(values)
    half = t * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def test_load_runs_reads_every_run_with_its_status(store):
    runs = lb.load_runs(store, "isopo-bench", suite="lb-test@v1")
    assert len(runs) == 10 and runs[M.LB_CONFIG_HASH].is_unique
    assert (runs[M.LB_STATUS] == "FINISHED").sum() == 8
    assert runs[runs[M.LB_LR] == 1e30][M.LB_STATUS].tolist() == ["FAILED"]
    assert (runs[M.LB_STATUS] == "RUNNING").sum() == 1
    finished = runs[runs[M.LB_STATUS] == "FINISHED"]
    assert finished[M.LB_STEPS].tolist() == [2] * 8 and finished[M.LB_PLANNED_STEPS].tolist() == [2] * 8
    assert all(len(c) == 3 for c in finished[M.LB_EVAL_CURVE])  # evaluations at steps 0, 1, 2
    assert lb.load_runs(store, "isopo-bench", suite="other@v1").empty


def test_accuracy_vs_lr_matches_hand_computation(store):
    truth = mlflow_truth(store)
    accs = [v["acc"] for v in truth.values()]
    assert len(set(accs)) > 2, "the coin task must give runs different accuracies for this test to mean anything"
    by_lr = lb.accuracy_vs_lr(lb.load_runs(store, suite="lb-test@v1")).set_index([M.LB_ALGORITHM, M.LB_LR])
    budget = min(max(v["elapsed"] for k, v in truth.items() if k[0] == a) for a in ALGOS)
    for algo in ALGOS:
        for lr in LRS:
            values = [truth[(algo, lr, s)]["acc"] for s in SEEDS]
            row = by_lr.loc[(algo, lr)]
            # two seeds: df = 1, t_{0.975,1} = 12.706205; the incomplete grpo seed 2 is not averaged in
            assert (row[M.LB_ACC_MEAN], row[M.LB_ACC_CI_LO], row[M.LB_ACC_CI_HI]) == pytest.approx(ci(values, 12.706205))
            assert row[M.LB_N_FINISHED] == 2 and row[M.LB_SEEDS] == "0,1"
            assert row[M.LB_N_INCOMPLETE] == (1 if (algo, lr) == ("grpo", 1e-3) else 0)
            at_budget = [[a for _, t, a in truth[(algo, lr, s)]["curve"] if t <= budget][-1] for s in SEEDS]
            assert row[M.LB_ACC_AT_BUDGET] == pytest.approx(sum(at_budget) / 2)
            assert row[M.LB_BUDGET_S] == pytest.approx(budget)
    failed = by_lr.loc[("reinforce", 1e30)]
    assert (failed[M.LB_N_FINISHED], failed[M.LB_N_FAILED]) == (0, 1) and math.isnan(failed[M.LB_ACC_MEAN])


def test_leaderboard_matches_hand_computation(store):
    truth = mlflow_truth(store)
    board = lb.leaderboard(lb.load_runs(store, suite="lb-test@v1"), baseline="reinforce").set_index(M.LB_ALGORITHM)
    mean_at = {(a, lr): statistics.mean(truth[(a, lr, s)]["acc"] for s in SEEDS) for a in ALGOS for lr in LRS}
    update = {a: statistics.median(v["update"] for k, v in truth.items() if k[0] == a) for a in ALGOS}
    # The ratio is in process CPU time (every run logged time_cpu/update), the seconds column in wall time.
    cpu = {a: statistics.median(v["update_cpu"] for k, v in truth.items() if k[0] == a) for a in ALGOS}
    for algo in ALGOS:
        row = board.loc[algo]
        means = [mean_at[(algo, lr)] for lr in LRS]
        assert row[M.LB_ROBUST_MEAN] == pytest.approx(sum(means) / 2)
        assert row[M.LB_ROBUST_WORST] == pytest.approx(min(means))
        best_lr = LRS[means.index(max(means))]
        assert row[M.LB_BEST_LR] == best_lr
        expected = ci([truth[(algo, best_lr, s)]["acc"] for s in SEEDS], 12.706205)
        assert (row[M.LB_ACC_MEAN], row[M.LB_ACC_CI_LO], row[M.LB_ACC_CI_HI]) == pytest.approx(expected)
        assert row[M.LB_UPDATE_S] == pytest.approx(update[algo])
        assert row[M.LB_OVERHEAD] == pytest.approx(cpu[algo] / cpu["reinforce"])
        assert row[M.LB_COMMITS] and len(row[M.LB_CONFIG_HASHES].split(",")) == 5
    assert (board.loc["reinforce", M.LB_N_FAILED], board.loc["reinforce", M.LB_LRS_FINISHED]) == (1, "2/3")
    assert (board.loc["grpo", M.LB_N_INCOMPLETE], board.loc["grpo", M.LB_LRS_FINISHED]) == (1, "2/2")
    # paired by (seed, lr): 4 pairs, df = 3, t_{0.975,3} = 3.182446
    diffs = [truth[("grpo", lr, s)]["acc"] - truth[("reinforce", lr, s)]["acc"] for lr in LRS for s in SEEDS]
    assert board.loc["grpo", M.LB_N_PAIRS] == 4
    got = (board.loc["grpo", M.LB_DIFF_MEAN], board.loc["grpo", M.LB_DIFF_CI_LO], board.loc["grpo", M.LB_DIFF_CI_HI])
    if statistics.stdev(diffs) > 0:
        assert got == pytest.approx(ci(diffs, 3.182446))
    else:
        assert got[0] == pytest.approx(statistics.mean(diffs))


def test_update_time_ratio_is_against_the_chosen_baseline(store):
    """In process CPU time (every run logged time_cpu/update), with the noise check's verdict beside it."""
    truth = mlflow_truth(store)
    update = {a: statistics.median(v["update_cpu"] for k, v in truth.items() if k[0] == a) for a in ALGOS}
    board = lb.leaderboard(lb.load_runs(store, suite="lb-test@v1"), baseline="grpo").set_index(M.LB_ALGORITHM)
    assert (board[M.LB_BASELINE] == "grpo").all()
    assert board.loc["reinforce", M.LB_OVERHEAD] == pytest.approx(update["reinforce"] / update["grpo"])
    assert board.loc["grpo", M.LB_OVERHEAD] == pytest.approx(1.0)
    assert (board[M.LB_OVERHEAD_CLOCK] == "process CPU").all()
    assert board[M.LB_OVERHEAD_RELIABLE].str.startswith("unchecked").all()  # no gspo/cispo run in this suite
    assert (board[M.LB_FLOOR] == 1.0).all()  # neither algorithm does extra work


def test_noise_check_flags_an_unreliable_column():
    rows = [{M.LB_ALGORITHM: a, M.LB_OVERHEAD: r} for a, r in [("reinforce", 1.0), ("gspo", 1.03), ("isopo", 1.8)]]
    ok = lb.with_noise_check(rows)
    assert all(r[M.LB_OVERHEAD_NOISE] == pytest.approx(0.03) for r in ok)
    assert ok[0][M.LB_OVERHEAD_RELIABLE].startswith("yes: gspo 1.03x")
    rows.append({M.LB_ALGORITHM: "cispo", M.LB_OVERHEAD: 0.90})
    bad = lb.with_noise_check(rows)
    assert all(r[M.LB_OVERHEAD_RELIABLE].startswith("NOT RELIABLE: cispo 0.90x, gspo 1.03x") for r in bad)


def test_leaderboard_cli_exports_csv_and_markdown(store, tmp_path, capsys):
    csv, md = tmp_path / "board.csv", tmp_path / "board.md"
    assert lb.main(["--tracking-uri", store, "--suite", "lb-test@v1", "--csv", str(csv), "--markdown", str(md)]) == 0
    exported = pd.read_csv(csv)
    board = lb.leaderboard(lb.load_runs(store, suite="lb-test@v1"))
    assert exported[M.LB_ALGORITHM].tolist() == board[M.LB_ALGORITHM].tolist()
    assert exported[M.LB_ACC_MEAN].tolist() == pytest.approx(board[M.LB_ACC_MEAN].tolist())
    lines = md.read_text().splitlines()
    # 2 algorithms, 5 (algorithm, lr) rows, 2 comparisons with the baseline (grpo at each lr choice)
    assert sum(line.startswith("| lb-test@v1 |") for line in lines) == 2 + 5 + 2
    assert M.LB_CONFIG_HASHES in lines[0]
    assert "lb-test@v1" in capsys.readouterr().out


def test_dashboard_api_does_not_import_torch(store):
    code = ("import sys; from isopo_bench import leaderboard as lb; "
            f"df = lb.leaderboard(lb.load_runs({store!r})); "
            "print(len(df), 'torch' in sys.modules, 'isopo_bench.trainer' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["2", "False", "False"]


# ------------------------------------------------------------------------------------------------
def curve(*points):
    return list(points)


def hand_table() -> pd.DataFrame:
    """Two algorithms x two lrs x three seeds with known accuracies; one extra FAILED run."""
    rows = []
    acc = {("reinforce", 1e-4): [0.40, 0.50, 0.60], ("reinforce", 3e-4): [0.10, 0.20, 0.30],
           ("isopo", 1e-4): [0.50, 0.55, 0.60], ("isopo", 3e-4): [0.45, 0.50, 0.65]}
    for (algo, lr), values in acc.items():
        for seed, a in enumerate(values):
            total = 10.0 if algo == "reinforce" else 20.0
            mid = a * (0.5 if algo == "reinforce" else 0.8)  # isopo learns faster per step
            rows.append({M.LB_STATUS: "FINISHED", M.LB_ALGORITHM: algo, M.LB_LR: lr, M.LB_SEED: seed, M.LB_FINAL_ACC: a,
                         M.LB_BEST_ACC: a + 0.05, M.LB_INITIAL_ACC: 0.1, M.LB_ELAPSED: total,
                         M.LB_UPDATE_S: 1.0 if algo == "reinforce" else 1.5, M.LB_STEP_S: 2.0,
                         M.LB_EVAL_CURVE: curve((0, 0.0, 0.1), (5, total / 2, mid), (10, total, a)),
                         M.LB_COMMIT: "abc", M.LB_CONFIG_HASH: f"{algo}{lr}{seed}", M.LB_MACHINE: "m"})
    rows.append(rows[0] | {M.LB_STATUS: "FAILED", M.LB_SEED: 3, M.LB_FINAL_ACC: 0.99, M.LB_CONFIG_HASH: "failed"})
    df = pd.DataFrame(rows)
    for col in lb.GROUP:
        df[col] = "x"
    return df


def test_aggregates_on_a_hand_made_table():
    board = lb.leaderboard(hand_table()).set_index(M.LB_ALGORITHM)
    t2 = 4.302653  # t_{0.975, 2}
    r, i = board.loc["reinforce"], board.loc["isopo"]
    assert (r[M.LB_N_FINISHED], r[M.LB_N_FAILED]) == (6, 1)  # the failed 0.99 is counted, not averaged
    assert (r[M.LB_ROBUST_MEAN], r[M.LB_ROBUST_WORST], r[M.LB_BEST_LR]) == pytest.approx((0.35, 0.2, 1e-4))
    half = t2 * 0.1 / 3**0.5  # sd of (0.4, 0.5, 0.6) is 0.1
    assert (r[M.LB_ACC_MEAN], r[M.LB_ACC_CI_LO], r[M.LB_ACC_CI_HI]) == pytest.approx((0.5, 0.5 - half, 0.5 + half))
    worse = 1.6 / 3  # isopo at 3e-4: mean of (0.45, 0.5, 0.65)
    assert (i[M.LB_ROBUST_MEAN], i[M.LB_ROBUST_WORST], i[M.LB_BEST_LR]) == pytest.approx(((0.55 + worse) / 2, worse, 1e-4))
    # equal budget = reinforce's 10 s: isopo is scored at its step-5 evaluation (0.8 of its final accuracy)
    assert r[M.LB_BUDGET_S] == 10.0 and r[M.LB_ACC_AT_BUDGET] == pytest.approx(0.5)
    assert i[M.LB_ACC_AT_BUDGET] == pytest.approx(0.8 * 0.55)
    # threshold half-way from the initial 0.1 to the best mean 0.55 = 0.325: reinforce's step-5 accuracies
    # (0.2, 0.25, 0.3) miss it, so it is reached at step 10; isopo's (0.4, 0.44, 0.48) reach it at step 5
    assert r[M.LB_THRESHOLD] == pytest.approx(0.325) and i[M.LB_THRESHOLD] == pytest.approx(0.325)
    assert (r[M.LB_STEPS_TO_THRESHOLD], r[M.LB_THRESHOLD_REACHED]) == (10.0, "3/3")
    assert (i[M.LB_STEPS_TO_THRESHOLD], i[M.LB_THRESHOLD_REACHED]) == (5.0, "3/3")
    fixed = lb.leaderboard(hand_table(), threshold=0.45).set_index(M.LB_ALGORITHM)
    assert fixed.loc["reinforce", M.LB_THRESHOLD_REACHED] == "2/3"  # seed 0 ends at 0.40
    assert i[M.LB_OVERHEAD] == pytest.approx(1.5) and r[M.LB_OVERHEAD] == 1.0
    # paired by (seed, lr): differences 0.1, 0.05, 0, 0.35, 0.3, 0.35
    d = [0.1, 0.05, 0.0, 0.35, 0.3, 0.35]
    assert i[M.LB_N_PAIRS] == 6
    assert (i[M.LB_DIFF_MEAN], i[M.LB_DIFF_CI_LO], i[M.LB_DIFF_CI_HI]) == pytest.approx(ci(d, 2.570582))


@pytest.mark.parametrize("df,expected", [(1, 12.706205), (2, 4.302653), (10, 2.228139), (30, 2.042272),
                                         (40, 2.021075), (60, 2.000298), (120, 1.979930)])
def test_t_quantiles(df, expected):
    """Table values of t_{0.975, df} (the hand table this replaced) against scipy's quantile."""
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=2e-6)


def test_markdown_table():
    df = pd.DataFrame({"a": ["x|y", "/very/long/cache/path/warmstart/0123456789ab"], "b": [0.5, math.nan], "c": [3, 4]})
    assert lb.to_markdown(df).splitlines() == [
        "| a | b | c |", "|---|---|---|", "| x\\|y | 0.500 | 3 |", "| .../warmstart/0123456789ab | - | 4 |"]


# ------------------------------------------------------------------------------------------------
# Per-item records, seed-paired comparisons, the lr window and the optimizer axis.
def test_per_item_results_are_recorded_for_the_final_evaluation(store):
    """Every finished run carries the final evaluation's 16 items: their mean is its final accuracy, and
    the runs of one seed evaluated the same items (one digest). All ran AdamW."""
    runs = lb.load_runs(store, suite="lb-test@v1")
    fin = runs[runs[M.LB_STATUS] == "FINISHED"]
    for _, run in fin.iterrows():
        assert len(run[M.LB_ITEMS_CORRECT]) == 16 and run[M.LB_ITEMS_STEP] == run[M.LB_STEPS] == 2
        assert run[M.LB_ITEMS_CORRECT].mean() == pytest.approx(run[M.LB_FINAL_ACC])
    assert (fin.groupby(M.LB_SEED)[M.LB_ITEMS_DIGEST].nunique() == 1).all()
    assert (runs[M.LB_OPTIMIZER] == "adamw").all()


@pytest.fixture(scope="module")
def paired_store(tmp_path_factory):
    """reinforce and grpo, seed 0, logging every evaluation item with its reward (the order reference)."""
    root = tmp_path_factory.mktemp("paired")
    for algo in ALGOS:
        train(replace(run_config(root, algo, 1e-3, 0), **{"tracking.log_samples": 16, "tracking.suite": "pair@v1"}))
    return root / "mlflow.db"


def copy_of(db, tmp_path) -> tuple[str, MlflowClient]:
    """A private copy of a store, to change its tags without touching the shared one."""
    import shutil

    shutil.copy(db, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return uri, MlflowClient(uri)


def test_item_record_round_trips_in_evaluation_order(paired_store, tmp_path):
    import json
    from pathlib import Path

    uri, client = copy_of(paired_store, tmp_path)
    runs = lb.load_runs(uri, suite="pair@v1")
    for _, run in runs.iterrows():
        logged = client.download_artifacts(run[M.LB_RUN_ID], "samples/eval_step_00002.json", str(tmp_path))
        rewards = [s["reward"] for s in json.loads(Path(logged).read_text())]
        assert run[M.LB_ITEMS_CORRECT].tolist() == [int(r >= 0.5) for r in rewards] and len(rewards) == 16
    table = lb.comparisons(runs, "reinforce")
    assert table[M.LB_N_ITEMS].tolist() == [16, 16] and table[M.LB_BOOT_NOTE].tolist() == ["", ""]


def test_hex_packed_record_round_trips_through_sqlite(paired_store, tmp_path):
    from isopo_bench.item_record import MAX_ITEMS, TAG_VALUE_LIMIT, encode_correct

    uri, client = copy_of(paired_store, tmp_path)
    run_id = lb.load_runs(uri, suite="pair@v1")[M.LB_RUN_ID].iloc[0]
    correct = [(i * 7) % 3 == 0 for i in range(MAX_ITEMS)]
    value = encode_correct([int(c) for c in correct])
    assert len(value) <= TAG_VALUE_LIMIT
    client.set_tag(run_id, M.TAG_ITEMS_CORRECT, value)
    runs = lb.load_runs(uri, suite="pair@v1").set_index(M.LB_RUN_ID)
    assert runs.loc[run_id, M.LB_ITEMS_CORRECT].tolist() == [int(c) for c in correct]


def test_pairing_refuses_runs_that_evaluated_different_items(paired_store, tmp_path):
    uri, client = copy_of(paired_store, tmp_path)
    runs = lb.load_runs(uri, suite="pair@v1")
    grpo = runs[runs[M.LB_ALGORITHM] == "grpo"][M.LB_RUN_ID].iloc[0]
    client.set_tag(grpo, M.TAG_ITEMS_DIGEST, "0" * 16)
    table = lb.comparisons(lb.load_runs(uri, suite="pair@v1"), "reinforce")
    assert table[M.LB_BOOT_NOTE].str.startswith("refused: seed 0 evaluated different items").all()
    assert table[M.LB_BOOT_LO].isna().all() and table[M.LB_N_SEEDS_PAIRED].tolist() == [1, 1]


def test_optimizer_tag_splits_the_cells(paired_store, tmp_path):
    """An sgd run is its own board row and never pairs with an adamw baseline; a run without the tag
    (recorded before it existed) reads adamw."""
    uri, client = copy_of(paired_store, tmp_path)
    runs = lb.load_runs(uri, suite="pair@v1").set_index(M.LB_ALGORITHM)
    client.set_tag(runs.loc["grpo", M.LB_RUN_ID], M.TAG_OPTIMIZER, "sgd")
    client.delete_tag(runs.loc["reinforce", M.LB_RUN_ID], M.TAG_OPTIMIZER)
    runs = lb.load_runs(uri, suite="pair@v1")
    board = lb.leaderboard(runs).set_index([M.LB_ALGORITHM, M.LB_OPTIMIZER])
    assert sorted(board.index) == [("grpo", "sgd"), ("reinforce", "adamw")]
    assert math.isnan(board.loc[("grpo", "sgd"), M.LB_SEED_DIFF]) and lb.comparisons(runs, "reinforce").empty


def with_items(df: pd.DataFrame, n_items: int = 20) -> pd.DataFrame:
    """Per-item records consistent with each run's final accuracy: the first round(acc x n) items correct."""
    out = df.copy()
    out[M.LB_ITEMS_CORRECT] = [np.array([1] * round(a * n_items) + [0] * (n_items - round(a * n_items)), np.uint8)
                               for a in out[M.LB_FINAL_ACC]]
    out[M.LB_ITEMS_DIGEST] = [f"items-s{s}" for s in out[M.LB_SEED]]
    out[M.LB_STEPS] = out[M.LB_ITEMS_STEP] = 10
    return out


def sgd_table() -> pd.DataFrame:
    """hand_table's adamw runs and an sgd cell where the best lrs differ: reinforce best at 3e-4, isopo at 1e-4."""
    adamw = hand_table()
    acc = {("reinforce", 1e-4): [0.20, 0.30, 0.40], ("reinforce", 3e-4): [0.30, 0.35, 0.40],
           ("isopo", 1e-4): [0.50, 0.60, 0.70], ("isopo", 3e-4): [0.30, 0.40, 0.35]}
    template = adamw.iloc[0]
    rows = [template.to_dict() | {M.LB_ALGORITHM: algo, M.LB_LR: lr, M.LB_SEED: seed, M.LB_FINAL_ACC: a,
                                  M.LB_OPTIMIZER: "sgd", M.LB_STATUS: "FINISHED", M.LB_CONFIG_HASH: f"sgd{algo}{lr}{seed}",
                                  M.LB_UPDATE_S: 2.0 if algo == "reinforce" else 5.0}
            for (algo, lr), values in acc.items() for seed, a in enumerate(values)]
    return with_items(pd.concat([adamw, pd.DataFrame(rows)], ignore_index=True))


def test_seed_paired_comparisons_by_hand():
    from isopo_bench.statistics import paired_bootstrap

    table = lb.comparisons(sgd_table(), "reinforce").set_index([M.LB_OPTIMIZER, M.LB_LR_CHOICE])
    half, mde = 4.302653 * 0.05 / 3**0.5, (4.302653 + 1.060660) * 0.05 / 3**0.5  # sd of the diffs is 0.05 in each
    own = table.loc[("sgd", "own best lr each")]  # isopo at 1e-4 vs reinforce at 3e-4: diffs 0.2, 0.25, 0.3
    assert (own[M.LB_LR], own[M.LB_BASELINE_LR], own[M.LB_N_SEEDS_PAIRED]) == (1e-4, 3e-4, 3)
    assert (own[M.LB_SEED_DIFF], own[M.LB_SEED_DIFF_T_LO], own[M.LB_SEED_DIFF_T_HI]) == pytest.approx(
        (0.25, 0.25 - half, 0.25 + half))
    assert (own[M.LB_SEED_DIFF_SD], own[M.LB_MDE]) == pytest.approx((0.05, mde))
    # items: isopo solves its first 10, 12, 14 of 20, reinforce its first 6, 7, 8
    diffs = [np.array([0] * b + [1] * (x - b) + [0] * (20 - x), float) for x, b in ((10, 6), (12, 7), (14, 8))]
    expected = paired_bootstrap(diffs, 2000, 0)
    assert (own[M.LB_BOOT_LO], own[M.LB_BOOT_HI], own[M.LB_N_ITEMS]) == pytest.approx((expected.low, expected.high, 20))
    assert expected.low > 0 and own[M.LB_VERDICT] == "difference detected; bootstrap agrees"
    at_base = table.loc[("sgd", "baseline's best lr")]  # both at 3e-4: diffs 0, 0.05, -0.05
    assert (at_base[M.LB_LR], at_base[M.LB_BASELINE_LR]) == (3e-4, 3e-4)
    assert (at_base[M.LB_SEED_DIFF], at_base[M.LB_SEED_DIFF_T_LO], at_base[M.LB_SEED_DIFF_T_HI]) == pytest.approx(
        (0.0, -half, half), abs=1e-7)  # the t table has 6 decimals
    assert at_base[M.LB_VERDICT].startswith(f"no difference detected; could have detected >= {mde:.3f}")
    # adamw: both best at 1e-4, diffs 0.1, 0.05, 0 (sd 0.05)
    adamw = table.loc[("adamw", "own best lr each")]
    assert (adamw[M.LB_LR], adamw[M.LB_SEED_DIFF], adamw[M.LB_MDE]) == pytest.approx((1e-4, 0.05, mde))


def test_board_per_optimizer_with_lr_window_and_edge_flag():
    board = lb.leaderboard(sgd_table()).set_index([M.LB_ALGORITHM, M.LB_OPTIMIZER])
    assert len(board) == 4
    isopo = board.loc[("isopo", "sgd")]
    # gains 0.5 (1e-4) and 0.25 (3e-4) over the initial 0.1: the 0.45 crossing is 0.8 of the way from
    # log10(3e-4) to log10(1e-4); the window starts at the grid's low edge, so it is a lower bound
    assert isopo[M.LB_LR_WINDOW] == pytest.approx(0.2 * math.log10(3)) and isopo[M.LB_LR_WINDOW_LOWER]
    assert isopo[M.LB_BEST_LR] == 1e-4 and isopo[M.LB_BEST_LR_AT_EDGE]
    assert isopo[M.LB_GAIN_MEAN] == pytest.approx(0.5)
    assert (isopo[M.LB_SEED_DIFF], isopo[M.LB_N_SEEDS_PAIRED]) == (pytest.approx(0.25), 3)
    # the update-time ratio within each optimizer: sgd 5.0 / 2.0, adamw 1.5 / 1.0
    assert isopo[M.LB_OVERHEAD] == pytest.approx(2.5) and board.loc[("isopo", "adamw"), M.LB_OVERHEAD] == pytest.approx(1.5)
    # the pooled (seed, lr) difference of the adamw cell is the one without the sgd runs
    pooled = lb.leaderboard(hand_table()).set_index(M.LB_ALGORITHM).loc["isopo"]
    assert board.loc[("isopo", "adamw"), M.LB_DIFF_MEAN] == pytest.approx(pooled[M.LB_DIFF_MEAN])
    assert math.isnan(board.loc[("reinforce", "sgd"), M.LB_SEED_DIFF])  # the baseline has no comparison
    shown = lb.readable(board.reset_index())
    assert shown.set_index([M.LB_ALGORITHM, M.LB_OPTIMIZER]).loc[("isopo", "sgd"), M.LB_LR_WINDOW] == ">=0.10"


def test_comparisons_without_item_records():
    """Tables without per-item columns (runs recorded before them): the t-interval only, with a note."""
    table = lb.comparisons(hand_table(), "reinforce")
    assert (table[M.LB_BOOT_NOTE] == "no per-item record of the final evaluation").all()
    assert table[M.LB_BOOT_LO].isna().all() and (table[M.LB_N_SEEDS_PAIRED] == 3).all()


def test_verdicts():
    from isopo_bench.comparisons import verdict

    assert verdict(0, math.nan, math.nan, math.nan, math.nan, math.nan) == "no paired seeds"
    assert verdict(1, math.nan, math.nan, 0.01, 0.05, math.nan) == (
        "difference detected from item noise only (1 seed: seed variance not included)")
    assert verdict(3, -0.1, 0.2, -0.01, 0.3, 0.15) == "no difference detected; could have detected >= 0.150"
    assert verdict(3, 0.02, 0.2, -0.01, 0.3, 0.15) == "difference detected; bootstrap CI includes 0"
    assert verdict(3, 0.0, 0.0, 0.0, 0.0, 0.0) == "no difference: identical final accuracy on every paired seed"
