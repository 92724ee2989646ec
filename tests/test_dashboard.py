"""The Streamlit dashboard against a store of real tiny training runs (2 algorithms x 2 seeds, one suite):
every tab renders, and shows the numbers MLflow and the CLI leaderboard hold; and against a hand-written
store (tests/_dash_store.py: 2 algorithms x 2 learning rates x 2 seeds, plus an SGD arm) whose values are
formulas, for the per-arm curves, the accuracy-against-lr chart, the optimizer filter, the model names and
the start-point selector (a variant of that store with a second start hash in the same group).
Streamlit's AppTest runs the app in this process; the torch check runs it in a fresh one."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("streamlit", reason="the dashboard extra is not installed: pip install 'isopo-bench[dashboard]'")
pytest.importorskip("plotly", reason="the dashboard extra is not installed: pip install 'isopo-bench[dashboard]'")

from mlflow.tracking import MlflowClient  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

import _dash_store as S  # noqa: E402
from conftest import smoke_config  # noqa: E402
from isopo_bench import leaderboard as lb  # noqa: E402
from isopo_bench import metric_names as M  # noqa: E402
from isopo_bench.config import replace  # noqa: E402
from isopo_bench.dashboards import _arms  # noqa: E402
from isopo_bench.dashboard_launcher import OVERHEAD_FILE_ENV, absolute_uri, parse, streamlit_command  # noqa: E402
from isopo_bench.presets import algorithm_preset  # noqa: E402
from isopo_bench.start_check import select_start_hash  # noqa: E402

pytestmark = pytest.mark.slow  # the store fixture trains four tiny runs (about a minute on two cores)
APP = str(Path(__file__).resolve().parents[1] / "dashboards" / "app.py")
SUITE = "dash-test"
ALGORITHMS, SEEDS = ("reinforce", "grpo"), (0, 1)
SMOKE_LR = 1e-3
"""smoke_config's learning rate: the real store's one arm per algorithm is `algorithm · lr 0.001 · adamw`."""


def arm(algorithm: str, lr: float = SMOKE_LR, optimizer: str = "adamw") -> str:
    return f"{algorithm} · lr {lr:g} · {optimizer}"


def make_store(root: Path, algorithms=ALGORITHMS, seeds=SEEDS, steps: int = 3, lrs=(SMOKE_LR,)) -> str:
    """Real tiny-smoke runs forming one suite; artifacts go to root/mlruns (MLflow puts them under the cwd)."""
    from isopo_bench.trainer import train

    cwd = os.getcwd()
    os.chdir(root)
    try:
        for algorithm in algorithms:
            for lr in lrs:
                for seed in seeds:
                    cfg = smoke_config(root, seed=seed, algorithm=algorithm_preset(algorithm))
                    train(replace(cfg, **{"tracking.suite": SUITE, "optim.steps": steps, "optim.lr": lr}))
    finally:
        os.chdir(cwd)
    return f"sqlite:///{root}/mlflow.db"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return make_store(tmp_path_factory.mktemp("dashboard_store"))


def copy_store(uri: str, dest: Path) -> str:
    """A copy of a store's database (skips the slow schema creation of a new one); artifacts stay shared."""
    shutil.copy(uri[len("sqlite:///"):], dest / "mlflow.db")
    return f"sqlite:///{dest}/mlflow.db"


def run_app(uri: str, monkeypatch, overhead_file: str = "") -> AppTest:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    if overhead_file:
        monkeypatch.setenv(OVERHEAD_FILE_ENV, overhead_file)
    else:
        monkeypatch.delenv(OVERHEAD_FILE_ENV, raising=False)
    at = AppTest.from_file(APP, default_timeout=180).run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def decoded(value):
    """Plotly >= 6 ships numeric arrays as {"dtype", "bdata" (base64)}; plain lists stay lists."""
    if isinstance(value, dict) and "bdata" in value:
        array = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
        shape = [int(n) for n in str(value.get("shape", len(array))).split(",")]
        return array.reshape(shape).tolist()
    if isinstance(value, dict):
        return {k: decoded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decoded(v) for v in value]
    return value


def charts(block) -> list[dict]:
    return [decoded(json.loads(c.proto.spec)) for c in block.get("plotly_chart")]


def chart_by_ytitle(block, title: str) -> dict:
    found = [c for c in charts(block) if c["layout"]["yaxis"]["title"]["text"] == title]
    assert len(found) == 1, [c["layout"]["yaxis"]["title"]["text"] for c in charts(block)]
    return found[0]


def trace(chart: dict, name: str) -> dict:
    return next(t for t in chart["data"] if t.get("name") == name)


def histories(uri: str, metric: str) -> dict[tuple[str, int], list[tuple[int, float]]]:
    """(algorithm, seed) -> sorted (step, value), read straight from MLflow."""
    client = MlflowClient(uri)
    out = {}
    for run in client.search_runs([e.experiment_id for e in client.search_experiments()]):
        key = (run.data.tags[M.TAG_ALGORITHM], int(run.data.tags[M.TAG_SEED]))
        out[key] = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, metric))
    return out


# ------------------------------------------------------------------------------------------------
def test_leaderboard_tab_shows_the_cli_leaderboard(store, monkeypatch):
    at = run_app(store, monkeypatch)
    assert [t.label for t in at.tabs] == ["Leaderboard", "Curves", "Overhead", "Run details", "Diagnostics"]
    shown = at.tabs[0].dataframe[0].value.reset_index(drop=True)
    runs = lb.load_runs(store)
    expected = lb.leaderboard(runs)[list(shown.columns)]
    expected[M.LB_MODEL] = expected[M.LB_MODEL].map(_arms.model_names(runs))  # shown by readable name
    pd.testing.assert_frame_equal(shown, expected, check_dtype=False)
    assert list(shown.columns[:4]) == [M.LB_SUITE, M.LB_TASK, M.LB_MODEL, M.LB_ALGORITHM]
    final = histories(store, M.FINAL_ACCURACY)
    for algorithm in ALGORITHMS:
        row = shown[shown[M.LB_ALGORITHM] == algorithm].iloc[0]
        assert row[M.LB_N_FINISHED] == 2 and row[M.LB_SUITE] == SUITE
        assert row[M.LB_ACC_MEAN] == pytest.approx(sum(final[(algorithm, s)][-1][1] for s in SEEDS) / 2)
    bars = chart_by_ytitle(at.tabs[0], "final held-out accuracy (fraction correct)")["data"][0]
    assert dict(zip(bars["x"], bars["y"])) == dict(zip(expected[M.LB_ALGORITHM], expected[M.LB_ACC_MEAN]))


def test_sidebar_filter_restricts_every_tab(store, monkeypatch):
    at = run_app(store, monkeypatch)
    at.sidebar.multiselect(key=f"filter-{M.LB_ALGORITHM}").set_value(["grpo"]).run()
    assert not at.exception
    assert list(at.tabs[0].dataframe[0].value[M.LB_ALGORITHM]) == ["grpo"]
    assert "2 runs selected" in [c.value for c in at.sidebar.caption]
    reward = chart_by_ytitle(at.tabs[1], "mean training reward (0-1)")
    assert {t["name"] for t in reward["data"] if t.get("showlegend", True)} == {arm("grpo")}


def test_curves_are_the_mean_over_seeds_against_step_and_wall_clock(store, monkeypatch):
    at = run_app(store, monkeypatch)
    entropy = histories(store, M.ENTROPY)
    chart = chart_by_ytitle(at.tabs[1], "policy entropy (nats per token)")
    line = trace(chart, arm("grpo"))
    steps = [s for s, _ in entropy[("grpo", 0)]]
    assert line["x"] == steps
    pairs = list(zip(entropy[("grpo", 0)], entropy[("grpo", 1)]))
    assert line["y"] == pytest.approx([(a + b) / 2 for (_, a), (_, b) in pairs])
    band = trace(chart, f"{arm('grpo')} lowest to highest seed")  # hi over the steps, then lo backwards
    assert band["y"][: len(steps)] == pytest.approx([max(a, b) for (_, a), (_, b) in pairs])
    at.radio(key="curve_x").set_value("wall-clock time (time/elapsed)").run()
    assert not at.exception
    elapsed = histories(store, M.TIME_ELAPSED)
    line = trace(chart_by_ytitle(at.tabs[1], "policy entropy (nats per token)"), arm("grpo"))
    pairs = list(zip(elapsed[("grpo", 0)], elapsed[("grpo", 1)]))
    assert line["x"] == pytest.approx([(a + b) / 2 for (_, a), (_, b) in pairs])
    accuracy = trace(chart_by_ytitle(at.tabs[1], "held-out accuracy (fraction correct, greedy)"), arm("reinforce"))
    assert accuracy["x"][0] == 0.0  # the evaluation before training sits at 0 s


def test_overhead_tab_phase_times_and_offline_results(store, monkeypatch, tmp_path):
    rows = [{"shape": "tiny", "T": 96, "B": 8, "hidden": 128, "probes": 250, "algorithm": a, "median_s": s,
             "min_s": s, "ratio": s / 0.02} for a, s in (("reinforce", 0.02), ("isopo (fast)", 0.03))]
    (tmp_path / "overhead.json").write_text(json.dumps(rows))
    at = run_app(store, monkeypatch, overhead_file=str(tmp_path / "overhead.json"))
    tab = at.tabs[2]
    update = histories(store, M.TIME_UPDATE)
    bars = trace(chart_by_ytitle(tab, "wall-clock per training step (s)"), "update")
    per_run = {k: sum(v for _, v in h) / len(h) for k, h in update.items()}
    expected = {a: (per_run[(a, 0)] + per_run[(a, 1)]) / 2 for a in ALGORITHMS}
    assert dict(zip(bars["x"], bars["y"])) == pytest.approx(expected)
    ratio = tab.dataframe[0].value
    board = lb.leaderboard(lb.load_runs(store))
    assert ratio.set_index(M.LB_ALGORITHM)[M.LB_OVERHEAD].to_dict() == pytest.approx(
        board.set_index(M.LB_ALGORITHM)[M.LB_OVERHEAD].to_dict())
    assert ratio.set_index(M.LB_ALGORITHM).loc["reinforce", M.LB_OVERHEAD] == 1.0
    offline = chart_by_ytitle(tab, "update-step time / reinforce (median ratio)")
    assert list(offline["data"][0]["y"]) == pytest.approx([1.0, 1.5])
    assert list(tab.dataframe[1].value["algorithm"]) == ["reinforce", "isopo (fast)"]


def test_overhead_results_from_an_mlflow_run(store, monkeypatch, tmp_path):
    uri = copy_store(store, tmp_path)
    client = MlflowClient(uri)
    run_id = client.create_run(client.get_experiment_by_name("isopo-bench").experiment_id,
                               tags={M.TAG_KIND: M.KIND_OVERHEAD}).info.run_id
    client.log_dict(run_id, [{"shape": "tiny", "algorithm": "reinforce", "median_s": 0.5, "ratio": 1.0},
                             {"shape": "tiny", "algorithm": "grpo", "median_s": 0.6, "ratio": 1.2}], "overhead.json")
    client.set_terminated(run_id)
    tab = run_app(uri, monkeypatch).tabs[2]
    offline = chart_by_ytitle(tab, "update-step time / reinforce (median ratio)")
    assert list(offline["data"][0]["x"]) == ["reinforce", "grpo"] and offline["data"][0]["y"] == pytest.approx([1.0, 1.2])
    assert any(run_id in c.value for c in tab.caption)


def test_run_details_show_tags_config_samples_and_mismatch(store, monkeypatch, tmp_path):
    at = run_app(store, monkeypatch)
    tab = at.tabs[3]
    label = tab.selectbox(key="detail-run").value
    client = MlflowClient(store)
    run = next(r for r in client.search_runs([e.experiment_id for e in client.search_experiments()])
               if r.info.run_id.startswith(label[-8:]))
    run_id = run.info.run_id
    tags = tab.table[0].value
    assert tags.loc[M.TAG_COMMIT].iloc[0] == run.data.tags[M.TAG_COMMIT]
    assert tags.loc[M.TAG_CONFIG_HASH].iloc[0] == run.data.tags[M.TAG_CONFIG_HASH]
    assert tab.json[0].value and json.loads(tab.json[0].value)["seed"] == int(run.data.tags[M.TAG_SEED])
    samples = tab.dataframe[0].value
    logged = json.loads(Path(client.download_artifacts(run_id, "samples/eval_step_00003.json", str(tmp_path))).read_text())
    assert list(samples["completion"]) == [r["completion"] for r in logged]
    assert list(samples["reward"]) == [r["reward"] for r in logged]
    mismatch = chart_by_ytitle(tab, "nats (|log p| differences) or ratio")
    assert {t["name"] for t in mismatch["data"]} >= {"mean |log p sampler - log p trainer| (nats)"}


def test_dashboard_never_imports_torch(store):
    code = (f"import os, sys; os.environ['MLFLOW_TRACKING_URI'] = {store!r}\n"
            "from streamlit.testing.v1 import AppTest\n"
            f"at = AppTest.from_file({APP!r}, default_timeout=180).run()\n"
            "assert not at.exception and len(at.tabs) == 5, [e.value for e in at.exception]\n"
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'isopo_bench.trainer'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


# ------------------------------------------------------------------------------------------------
def test_missing_and_empty_store_give_a_message(store, monkeypatch, tmp_path):
    missing = tmp_path / "nothing" / "mlflow.db"
    at = run_app(f"sqlite:///{missing}", monkeypatch)
    assert "There is no MLflow store" in at.info[0].value and not missing.exists()
    empty = copy_store(store, tmp_path)
    client = MlflowClient(empty)
    for run in client.search_runs([e.experiment_id for e in client.search_experiments()]):
        client.delete_run(run.info.run_id)
    at = run_app(empty, monkeypatch)
    assert at.info[0].value.startswith("No runs in") and not at.tabs


def test_running_run_and_run_without_metrics_render(store, monkeypatch, tmp_path):
    """A run in progress (one step logged, no evaluation, no summary) and a run that logged nothing."""
    from isopo_bench.trainer import Trainer

    uri = copy_store(store, tmp_path)
    cfg = replace(smoke_config(tmp_path), **{"tracking.uri": uri, "tracking.suite": SUITE, "seed": 7,
                                             "eval.at_start": False})
    trainer = Trainer(cfg)  # creates its MLflow run (RUNNING, no tags yet) before loading the model
    at = run_app(uri, monkeypatch)
    assert "5 runs selected" in [c.value for c in at.sidebar.caption]
    trainer.store.start(trainer.task, trainer.algorithm.attach(trainer.model))
    trainer.store.tracker.log_metrics(trainer._train_step(1), 1)
    client = MlflowClient(uri)
    bare = client.create_run(client.get_experiment_by_name("isopo-bench").experiment_id).info.run_id
    client.set_tag(bare, M.TAG_ALGORITHM, "grpo")
    client.set_terminated(bare, "FAILED")
    at.run()  # seconds later, well within the cache's TTL
    assert "5 runs selected" in [c.value for c in at.sidebar.caption], "cached until refreshed"
    at.sidebar.button[0].click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert "6 runs selected" in [c.value for c in at.sidebar.caption]
    board = at.tabs[0].dataframe[0].value
    reinforce = board[(board[M.LB_ALGORITHM] == "reinforce") & (board[M.LB_SUITE] == SUITE)].iloc[0]
    assert (reinforce[M.LB_N_FINISHED], reinforce[M.LB_N_INCOMPLETE]) == (2, 1)
    running = next(o for o in at.tabs[3].selectbox(key="detail-run").options if "RUNNING" in o)
    at.tabs[3].selectbox(key="detail-run").set_value(running).run()
    assert not at.exception and not at.error
    infos = [i.value for i in at.tabs[3].info]
    assert any("no sample completions yet" in i for i in infos) and any("No summary yet" in i for i in infos)
    assert at.tabs[3].metric[3].value == "not yet"


def test_launcher_binds_localhost_and_passes_an_absolute_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = parse([])
    assert (args.host, args.port) == ("127.0.0.1", 8501)
    assert absolute_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path}/mlflow.db"
    assert absolute_uri("http://mlflow:5000") == "http://mlflow:5000"
    cmd = streamlit_command("127.0.0.1", 8601)
    assert cmd[cmd.index("--server.address") + 1] == "127.0.0.1" and Path(cmd[4]) == Path(APP)


def test_diagnostics_tab_curves_and_accuracy_against_kl(store, monkeypatch):
    """The runs log diag/ metrics (default cadence: the first optimizer step at least); the tab draws their
    curves and one point per (algorithm, lr) at the leaderboard's median per-step KL and final accuracy."""
    at = run_app(store, monkeypatch)
    tab = at.tabs[4]
    runs = lb.load_runs(store)
    by_lr = lb.accuracy_vs_lr(runs)
    assert by_lr[M.LB_DIAG_KL].notna().all()
    tradeoff = chart_by_ytitle(tab, "final held-out accuracy (fraction correct)")
    for algorithm in ALGORITHMS:
        point = trace(tradeoff, f"{algorithm} · adamw")
        row = by_lr[by_lr[M.LB_ALGORITHM] == algorithm].iloc[0]
        assert point["x"][0] == pytest.approx(row[M.LB_DIAG_KL]) and point["y"][0] == pytest.approx(row[M.LB_ACC_MEAN])
    kl = chart_by_ytitle(tab, "token KL(pi_before || pi_after) per step (nats)")
    expected = histories(store, M.DIAG_KL_TOK)
    line = trace(kl, arm("reinforce"))
    mean_first = sum(expected[("reinforce", s)][0][1] for s in SEEDS) / len(SEEDS)
    assert line["y"][0] == pytest.approx(mean_first)


# ------------------------------------------------------------------------------------------------
# The hand-written store: 2 algorithms x 2 learning rates x 2 seeds with AdamW, and reinforce at 1e-3 with SGD.
@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> str:
    return S.make_synthetic_store(tmp_path_factory.mktemp("dashboard_synthetic"), arms=tuple(S.FINAL))


def reward_line(arm_key: tuple, seeds=(0, 1)) -> list[float]:
    return [sum(S.reward(arm_key, s, step) for s in seeds) / len(seeds) for step in range(1, S.STEPS + 1)]


def test_curves_default_to_each_algorithm_at_its_best_lr_and_add_a_chosen_arm(synthetic, monkeypatch):
    at = run_app(synthetic, monkeypatch)
    selector = at.tabs[1].multiselect(key="curve_arms")
    # best final accuracy (tests/_dash_store.FINAL): grpo at 1e-4, reinforce at 1e-3 (with each optimizer)
    best = [arm("grpo", 1e-4), arm("reinforce", 1e-3), arm("reinforce", 1e-3, "sgd")]
    assert selector.value == best
    assert selector.options == [arm("grpo", 1e-4), arm("grpo", 1e-3), arm("reinforce", 1e-4), *best[1:]]
    reward = chart_by_ytitle(at.tabs[1], "mean training reward (0-1)")
    assert {t["name"] for t in reward["data"] if t.get("showlegend", True)} == set(best)
    selector.set_value([arm("grpo", 1e-4), arm("grpo", 1e-3)]).run()
    assert not at.exception and not at.error
    reward = chart_by_ytitle(at.tabs[1], "mean training reward (0-1)")
    for lr in (1e-4, 1e-3):  # one curve per learning rate, each the mean of its own two seeds only
        assert trace(reward, arm("grpo", lr))["y"] == pytest.approx(reward_line(("grpo", lr, "adamw")))
        assert trace(reward, arm("grpo", lr))["x"] == list(range(1, S.STEPS + 1))
    accuracy = chart_by_ytitle(at.tabs[1], "held-out accuracy (fraction correct, greedy)")
    assert trace(accuracy, arm("grpo", 1e-3))["y"] == pytest.approx(
        [(S.eval_accuracy(("grpo", 1e-3, "adamw"), 0, st) + S.eval_accuracy(("grpo", 1e-3, "adamw"), 1, st)) / 2
         for st in S.EVAL_STEPS])


def test_curves_t_band_and_smoothing_leave_eval_curves_alone(synthetic, monkeypatch):
    at = run_app(synthetic, monkeypatch)
    at.tabs[1].multiselect(key="curve_arms").set_value([arm("reinforce", 1e-3)]).run()
    at.radio(key="curve_band").set_value("t95").run()
    key = ("reinforce", 1e-3, "adamw")
    band = trace(chart_by_ytitle(at.tabs[1], "mean training reward (0-1)"),
                 f"{arm('reinforce', 1e-3)} 95% Student-t interval over seeds")
    seeds = [[S.reward(key, s, step) for s in (0, 1)] for step in range(1, S.STEPS + 1)]
    # two seeds: half width t_{0.975, 1} * sd / sqrt(2) = 12.706205 * |a - b| / 2
    hi = [(a + b) / 2 + 12.706205 * abs(a - b) / 2 for a, b in seeds]
    assert band["y"][: S.STEPS] == pytest.approx(hi)
    at.radio(key="curve_smooth").set_value("EMA").run()
    at.slider(key="curve_ema").set_value(0.5).run()
    assert not at.exception and not at.error
    assert any("EMA, beta = 0.50" in c.value and "drawn unsmoothed" in c.value for c in at.tabs[1].caption)
    smoothed = []
    for s in (0, 1):  # s1 = y1, s_k = 0.5 s_{k-1} + 0.5 y_k per seed, then the mean over seeds
        ys, out = [S.reward(key, s, step) for step in range(1, S.STEPS + 1)], []
        for y in ys:
            out.append(y if not out else 0.5 * out[-1] + 0.5 * y)
        smoothed.append(out)
    line = trace(chart_by_ytitle(at.tabs[1], "mean training reward (0-1)"), arm("reinforce", 1e-3))
    assert line["y"] == pytest.approx([(a + b) / 2 for a, b in zip(*smoothed)])
    accuracy_chart = chart_by_ytitle(at.tabs[1], "held-out accuracy (fraction correct, greedy)")
    accuracy = trace(accuracy_chart, arm("reinforce", 1e-3))
    assert accuracy["y"] == pytest.approx([sum(S.eval_accuracy(key, s, st) for s in (0, 1)) / 2 for st in S.EVAL_STEPS])


def test_leaderboard_accuracy_against_lr_with_intervals_initial_line_and_edge_notes(synthetic, monkeypatch):
    at = run_app(synthetic, monkeypatch)
    tab = at.tabs[0]
    chart = chart_by_ytitle(tab, "final held-out accuracy, mean over seeds")
    assert chart["layout"]["xaxis"]["type"] == "log"
    assert {t["name"] for t in chart["data"]} == {"grpo · adamw", "reinforce · adamw", "reinforce · sgd"}
    grpo = trace(chart, "grpo · adamw")
    finals = {lr: [S.final_accuracy(("grpo", lr, "adamw"), s) for s in (0, 1)] for lr in (1e-4, 1e-3)}
    assert grpo["x"] == pytest.approx([1e-4, 1e-3])
    assert grpo["y"] == pytest.approx([sum(v) / 2 for v in finals.values()])
    half = 12.706205 * abs(finals[1e-4][0] - finals[1e-4][1]) / 2  # t_{0.975, 1} sd / sqrt(2) with two seeds
    assert grpo["error_y"]["array"] == pytest.approx([half, half])
    (initial,) = chart["layout"]["shapes"]
    assert initial["y0"] == initial["y1"] == pytest.approx(S.INITIAL)
    notes = [c.value for c in tab.caption if c.value.startswith("Grid edge")]
    assert notes == [
        "Grid edge: grpo (adamw): the best learning rate 0.0001 is the smallest tried; a smaller one may do better.",
        "Grid edge: reinforce (adamw): the best learning rate 0.001 is the largest tried; a larger one may do better.",
        "Grid edge: reinforce (sgd): only one learning rate (0.001) has finished runs, so its best is unknown."]
    bars = chart_by_ytitle(tab, "final held-out accuracy (fraction correct)")["data"][0]  # never pooling optimizers
    mean_final = lambda key: sum(S.final_accuracy(key, s) for s in (0, 1)) / 2  # noqa: E731
    assert dict(zip(bars["x"], bars["y"])) == pytest.approx({
        "reinforce · adamw": mean_final(("reinforce", 1e-3, "adamw")),
        "grpo · adamw": mean_final(("grpo", 1e-4, "adamw")),
        "reinforce · sgd": mean_final(("reinforce", 1e-3, "sgd"))})
    assert set(tab.dataframe[0].value[M.LB_MODEL]) == {S.MODEL_DISPLAY}
    assert any(S.MODEL_DISPLAY in m.value and S.MODEL not in m.value for m in tab.markdown if "Leaderboard:" in m.value)


def test_optimizer_filter_and_model_names_in_the_sidebar(synthetic, monkeypatch):
    at = run_app(synthetic, monkeypatch)
    models = at.sidebar.multiselect(key=f"filter-{M.LB_MODEL}")
    assert models.options == [S.MODEL_DISPLAY]  # shown by name, filtering by the recorded path
    optimizer = at.sidebar.multiselect(key=f"filter-{M.LB_OPTIMIZER}")
    assert optimizer.options == ["adamw", "sgd"]
    optimizer.set_value(["sgd"]).run()
    assert not at.exception and not at.error
    assert "2 runs selected" in [c.value for c in at.sidebar.caption]
    assert at.tabs[1].multiselect(key="curve_arms").options == [arm("reinforce", 1e-3, "sgd")]
    reward = chart_by_ytitle(at.tabs[1], "mean training reward (0-1)")
    assert trace(reward, arm("reinforce", 1e-3, "sgd"))["y"] == pytest.approx(reward_line(("reinforce", 1e-3, "sgd")))


def test_run_details_show_the_model_path_start_hash_and_optimizer(synthetic, monkeypatch):
    at = run_app(synthetic, monkeypatch)
    tab = at.tabs[3]
    label = tab.selectbox(key="detail-run").value
    assert label.startswith(arm("grpo", 1e-4) + " | seed 0 | FINISHED")
    tags = tab.table[0].value["value"]
    assert (tags[M.TAG_MODEL_DISPLAY], tags[M.TAG_MODEL]) == (S.MODEL_DISPLAY, S.MODEL)
    assert (tags[M.TAG_START_HASH], tags[M.TAG_OPTIMIZER], tags[M.TAG_LR]) == (S.START_HASH, "adamw", "0.0001")


def test_diagnostics_are_keyed_per_arm(synthetic, monkeypatch):
    at = run_app(synthetic, monkeypatch)
    tab = at.tabs[4]
    tradeoff = chart_by_ytitle(tab, "final held-out accuracy (fraction correct)")
    assert {t["name"] for t in tradeoff["data"]} == {"grpo · adamw", "reinforce · adamw", "reinforce · sgd"}
    grpo = trace(tradeoff, "grpo · adamw")  # per run the median over steps of diag/kl_tok, then the seed mean
    median_kl = {lr: [float(np.median([S.kl(("grpo", lr, "adamw"), s, st) for st in range(1, S.STEPS + 1)]))
                      for s in (0, 1)] for lr in (1e-4, 1e-3)}
    assert grpo["x"] == pytest.approx([sum(v) / 2 for v in median_kl.values()])
    at.tabs[4].multiselect(key="diag_arms").set_value([arm("grpo", 1e-4), arm("grpo", 1e-3)]).run()
    kl = chart_by_ytitle(at.tabs[4], "token KL(pi_before || pi_after) per step (nats)")
    for lr in (1e-4, 1e-3):
        expected = [sum(S.kl(("grpo", lr, "adamw"), s, st) for s in (0, 1)) / 2 for st in range(1, S.STEPS + 1)]
        assert trace(kl, arm("grpo", lr))["y"] == pytest.approx(expected)


# ------------------------------------------------------------------------------------------------
# Two starting points of one model in one group (tests/_dash_store.OTHER_START_HASH): the sidebar keeps one.
OTHER_START_ARMS = (("reinforce", 1e-3, "adamw"), ("grpo", 1e-3, "adamw"))


@pytest.fixture(scope="module")
def two_starts(tmp_path_factory) -> str:
    """8 runs from START_HASH (2 algorithms x 2 lrs x 2 seeds), 4 from OTHER_START_HASH (lr 1e-3 only)."""
    return S.make_synthetic_store(tmp_path_factory.mktemp("dashboard_two_starts"), other_start_arms=OTHER_START_ARMS)


def mean_final(arm_key: tuple, start: str) -> float:
    return sum(S.final_accuracy(arm_key, s, start) for s in (0, 1)) / 2


def board_by_algorithm(at: AppTest) -> pd.DataFrame:
    return at.tabs[0].dataframe[0].value.set_index(M.LB_ALGORITHM)


def test_one_start_point_is_shown_read_only(synthetic, monkeypatch):
    at = run_app(synthetic, monkeypatch)
    assert f"**Start point**: `{S.START_HASH}` (10 runs)" in [m.value for m in at.sidebar.markdown]
    assert "start-hash" not in [s.key for s in at.sidebar.selectbox]


def test_two_start_points_default_to_the_majority_and_picking_the_other_changes_every_tab(two_starts, monkeypatch):
    at = run_app(two_starts, monkeypatch)
    selector = at.sidebar.selectbox(key="start-hash")
    assert selector.options == [f"{S.START_HASH} (8 runs)", f"{S.OTHER_START_HASH} (4 runs)",
                                "all 2 start points (12 runs)"]
    assert selector.value == S.START_HASH
    captions = [c.value for c in at.sidebar.caption]
    assert "8 runs selected" in captions and any(c.startswith("Default: the start hash of the most runs (8 of 12)")
                                                 for c in captions)
    board = board_by_algorithm(at)  # numbers, not the refusal: reinforce best at 1e-3, grpo at 1e-4 (_dash_store)
    for algorithm, best_lr in (("reinforce", 1e-3), ("grpo", 1e-4)):
        assert board.loc[algorithm, M.LB_ACC_MEAN] == pytest.approx(mean_final((algorithm, best_lr, "adamw"), S.START_HASH))
    assert set(board[M.LB_MODEL]) == {S.MODEL_DISPLAY}

    selector.set_value(S.OTHER_START_HASH).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert "4 runs selected" in [c.value for c in at.sidebar.caption]
    board = board_by_algorithm(at)  # the other start point ran lr 1e-3 only, START_SHIFT higher
    for algorithm in ("reinforce", "grpo"):
        arm_key = (algorithm, 1e-3, "adamw")
        assert board.loc[algorithm, M.LB_ACC_MEAN] == pytest.approx(mean_final(arm_key, S.OTHER_START_HASH))
        assert board.loc[algorithm, M.LB_BEST_LR] == pytest.approx(1e-3)
    assert set(board[M.LB_MODEL]) == {S.DISPLAY[S.OTHER_START_HASH]}
    cli = lb.leaderboard(select_start_hash(lb.load_runs(two_starts), S.OTHER_START_HASH)).set_index(M.LB_ALGORITHM)
    assert board[M.LB_ACC_MEAN].to_dict() == pytest.approx(cli[M.LB_ACC_MEAN].to_dict())  # as --start-hash does
    assert at.tabs[1].multiselect(key="curve_arms").options == [arm("grpo", 1e-3), arm("reinforce", 1e-3)]
    reward = chart_by_ytitle(at.tabs[1], "mean training reward (0-1)")  # the arm kept from before, its new seeds
    assert trace(reward, arm("reinforce", 1e-3))["y"] == pytest.approx(
        [sum(S.reward(("reinforce", 1e-3, "adamw"), s, step, S.OTHER_START_HASH) for s in (0, 1)) / 2
         for step in range(1, S.STEPS + 1)])


def test_all_start_points_of_a_mixed_group_show_the_refusal_instead_of_the_tabs(two_starts, monkeypatch):
    at = run_app(two_starts, monkeypatch)
    at.sidebar.selectbox(key="start-hash").set_value("").run()
    assert not at.exception and not at.tabs
    (refusal,) = [e.value for e in at.error]
    assert refusal.startswith("runs started from different weights cannot be compared")
    assert f"{S.START_HASH} (8 runs), {S.OTHER_START_HASH} (4 runs)" in refusal
    assert refusal.endswith("In the dashboard: pick one start point in the sidebar.")


def test_the_start_point_choice_follows_the_filters_and_falls_back_to_the_default_when_filtered_out(
        two_starts, monkeypatch, tmp_path):
    """A third start hash: the other start point's grpo runs retagged, so filtering to grpo drops the choice."""
    uri, third = copy_store(two_starts, tmp_path), "start-c3f0"
    client = MlflowClient(uri)
    for run in client.search_runs([e.experiment_id for e in client.search_experiments()]):
        if (run.data.tags[M.TAG_START_HASH], run.data.tags[M.TAG_ALGORITHM]) == (S.OTHER_START_HASH, "grpo"):
            client.set_tag(run.info.run_id, M.TAG_START_HASH, third)
    at = run_app(uri, monkeypatch)
    at.sidebar.selectbox(key="start-hash").set_value(S.OTHER_START_HASH).run()
    at.sidebar.multiselect(key=f"filter-{M.LB_OPTIMIZER}").set_value(["adamw"]).run()  # keeps every run
    selector = at.sidebar.selectbox(key="start-hash")
    assert selector.value == S.OTHER_START_HASH and "2 runs selected" in [c.value for c in at.sidebar.caption]
    at.sidebar.multiselect(key=f"filter-{M.LB_ALGORITHM}").set_value(["grpo"]).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    selector = at.sidebar.selectbox(key="start-hash")  # grpo ran from START_HASH (4 runs) and the third (2)
    assert selector.options == [f"{S.START_HASH} (4 runs)", f"{third} (2 runs)", "all 2 start points (6 runs)"]
    assert selector.value == S.START_HASH and "4 runs selected" in [c.value for c in at.sidebar.caption]
    board = board_by_algorithm(at)
    assert list(board.index) == ["grpo"]
    assert board.loc["grpo", M.LB_ACC_MEAN] == pytest.approx(mean_final(("grpo", 1e-4, "adamw"), S.START_HASH))
