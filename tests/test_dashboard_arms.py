"""The dashboard's comparison rules on hand-made frames (no MLflow, no app): arm keys and labels, readable
model names, per-run smoothing and seed bands against hand-computed values, the never-across-lr rule,
grid-edge notes, the accuracy-against-lr figure, and the default start point."""

from __future__ import annotations

import math

import pandas as pd
import pytest

pytest.importorskip("plotly", reason="the dashboard extra is not installed: pip install 'isopo-bench[dashboard]'")

from isopo_bench import metric_names as M  # noqa: E402
from isopo_bench.dashboards import _arms, _charts, _start  # noqa: E402
from isopo_bench.start_check import select_start_hash  # noqa: E402

ARM = _arms.ARM


def runs_frame(rows: list[dict]) -> pd.DataFrame:
    """Runs with the columns the arm rules read; suite/task/model default to one group."""
    base = {M.LB_SUITE: "s@v1", M.LB_TASK: "arithmetic", M.LB_MODEL: "/cache/warmstart/abc123", M.LB_SEED: 0}
    return pd.DataFrame([base | {M.LB_RUN_ID: f"r{i}"} | row for i, row in enumerate(rows)])


def history(values: dict[str, list[float]]) -> pd.DataFrame:
    """run_id -> values at steps 1, 2, ..."""
    return pd.DataFrame([{M.LB_RUN_ID: run, "step": step, "value": v}
                         for run, vs in values.items() for step, v in enumerate(vs, start=1)])


# ------------------------------------------------------------------------------------------------
def test_arm_labels_separate_lr_and_optimizer_and_default_to_adamw():
    runs = runs_frame([
        {M.LB_ALGORITHM: "grpo", M.LB_LR: 1e-4, M.LB_OPTIMIZER: "adamw"},
        {M.LB_ALGORITHM: "grpo", M.LB_LR: 1e-4, M.LB_OPTIMIZER: "", M.LB_SEED: 1},  # logged before the tag
        {M.LB_ALGORITHM: "grpo", M.LB_LR: 3e-4, M.LB_OPTIMIZER: "adamw"},
        {M.LB_ALGORITHM: "grpo", M.LB_LR: 1e-4, M.LB_OPTIMIZER: "sgd"},
    ])
    table = _arms.arm_table(runs)
    assert list(table[ARM]) == ["grpo · lr 0.0001 · adamw", "grpo · lr 0.0001 · sgd", "grpo · lr 0.0003 · adamw"]
    assert list(table["runs"]) == [2, 1, 1]
    assert list(_arms.with_arm(runs)[ARM]) == ["grpo · lr 0.0001 · adamw", "grpo · lr 0.0001 · adamw",
                                               "grpo · lr 0.0003 · adamw", "grpo · lr 0.0001 · sgd"]
    no_column = runs.drop(columns=M.LB_OPTIMIZER)
    assert set(_arms.with_optimizer(no_column)[M.LB_OPTIMIZER]) == {"adamw"}


def test_arm_labels_name_the_group_when_the_selection_spans_several():
    runs = runs_frame([{M.LB_ALGORITHM: "grpo", M.LB_LR: 1e-3},
                       {M.LB_ALGORITHM: "grpo", M.LB_LR: 1e-3, M.LB_TASK: "gsm8k", M.LB_MODEL: "Qwen/Qwen3-0.6B"}])
    assert list(_arms.arm_table(runs)[ARM]) == ["s@v1/arithmetic/abc123 · grpo · lr 0.001 · adamw",
                                                "s@v1/gsm8k/Qwen/Qwen3-0.6B · grpo · lr 0.001 · adamw"]


def test_readable_model_names():
    assert _arms.short_model_name("/root/.cache/isopo_bench/warmstart/0f3c9a1e/") == "0f3c9a1e"
    assert _arms.short_model_name("./models/tiny") == "tiny"
    assert _arms.short_model_name("Qwen/Qwen3-0.6B") == "Qwen/Qwen3-0.6B"  # a hub id as it is
    assert _arms.short_model_name("tiny") == "tiny"
    runs = runs_frame([{M.LB_MODEL: "/a/warm/x1", M.LB_MODEL_DISPLAY: ""},
                       {M.LB_MODEL: "/a/warm/x1", M.LB_MODEL_DISPLAY: "qwen3-sft"},
                       {M.LB_MODEL: "/a/warm/y2", M.LB_MODEL_DISPLAY: ""},
                       {M.LB_MODEL: "/a/warm/z3", M.LB_MODEL_DISPLAY: "/a/warm/z3"}])  # load_runs' fill-in
    assert _arms.model_names(runs) == {"/a/warm/x1": "qwen3-sft", "/a/warm/y2": "y2", "/a/warm/z3": "z3"}
    assert _arms.model_names(runs.drop(columns=M.LB_MODEL_DISPLAY)) == {"/a/warm/x1": "x1", "/a/warm/y2": "y2",
                                                                        "/a/warm/z3": "z3"}


# ------------------------------------------------------------------------------------------------
def test_ema_and_rolling_mean_match_hand_values_per_run():
    hist = history({"a": [0.0, 1.0, 1.0, 0.0], "b": [4.0, 0.0, 2.0, 2.0]})
    ema = _arms.smoothed(hist, "EMA", 0.5).set_index([M.LB_RUN_ID, "step"])["value"]
    # s1 = y1, s_k = 0.5 s_{k-1} + 0.5 y_k, each run on its own
    assert list(ema["a"]) == pytest.approx([0.0, 0.5, 0.75, 0.375])
    assert list(ema["b"]) == pytest.approx([4.0, 2.0, 2.0, 2.0])
    rolling = _arms.smoothed(hist, "rolling mean", 2).set_index([M.LB_RUN_ID, "step"])["value"]
    assert list(rolling["a"]) == pytest.approx([0.0, 0.5, 1.0, 0.5])
    assert list(rolling["b"]) == pytest.approx([4.0, 2.0, 1.0, 2.0])
    unsmoothed = hist.sort_values([M.LB_RUN_ID, "step"])["value"].tolist()
    assert _arms.smoothed(hist, "EMA", 0.0)["value"].tolist() == unsmoothed  # beta = 0: s_k = y_k
    assert _arms.smoothed(hist, "none") is hist


def test_smoothing_rejects_bad_settings_with_the_fix():
    hist = history({"a": [0.0, 1.0]})
    with pytest.raises(ValueError, match=r"outside \[0, 1\).*Fix"):
        _arms.smoothed(hist, "EMA", 1.0)
    with pytest.raises(ValueError, match="under one step.*Fix"):
        _arms.smoothed(hist, "rolling mean", 0)
    with pytest.raises(ValueError, match="unknown smoothing 'median'.*Fix: use one of none, EMA, rolling mean"):
        _arms.smoothed(hist, "median")
    with pytest.raises(ValueError, match="unknown band 'sd'"):
        _arms.seed_band(hist.assign(**{ARM: "x"}), "step", "sd")


def test_seed_band_range_and_t_interval_match_hand_values():
    hist = history({"a": [0.2, 1.0], "b": [0.4, 2.0], "c": [0.6, 3.0]}).assign(**{ARM: "grpo · lr 0.001 · adamw"})
    rng = _arms.seed_band(hist, "step", "range")
    assert list(rng["mean"]) == pytest.approx([0.4, 2.0])
    assert list(rng["lo"]) == pytest.approx([0.2, 1.0]) and list(rng["hi"]) == pytest.approx([0.6, 3.0])
    assert list(rng["seeds"]) == [3, 3]
    t95 = _arms.seed_band(hist, "step", "t95")
    # sd of (0.2, 0.4, 0.6) = 0.2, of (1, 2, 3) = 1; t_{0.975, 2} = 4.302653; half = t sd / sqrt(3)
    half = [4.302653 * 0.2 / math.sqrt(3), 4.302653 * 1.0 / math.sqrt(3)]
    assert list(t95["lo"]) == pytest.approx([0.4 - half[0], 2.0 - half[1]])
    assert list(t95["hi"]) == pytest.approx([0.4 + half[0], 2.0 + half[1]])
    single = _arms.seed_band(history({"a": [0.3]}).assign(**{ARM: "x"}), "step", "t95")
    assert (single["lo"].iloc[0], single["hi"].iloc[0]) == (0.3, 0.3)  # one seed: no interval


def test_two_learning_rates_of_one_algorithm_are_two_curves_never_averaged():
    runs = runs_frame([{M.LB_ALGORITHM: "grpo", M.LB_LR: lr, M.LB_SEED: seed}
                       for lr in (1e-4, 1e-3) for seed in (0, 1)])  # r0, r1 at 1e-4; r2, r3 at 1e-3
    hist = history({"r0": [0.1, 0.2], "r1": [0.3, 0.4], "r2": [0.5, 0.6], "r3": [0.9, 1.0]})
    hist = hist.merge(_arms.with_arm(runs)[[M.LB_RUN_ID, ARM]], on=M.LB_RUN_ID)
    figure = _charts.curve_figure(_arms.seed_band(hist, "step"), M.REWARD_MEAN, "step")
    lines = {t.name: list(t.y) for t in figure.data if t.showlegend is not False}
    assert lines == {"grpo · lr 0.0001 · adamw": pytest.approx([0.2, 0.3]),
                     "grpo · lr 0.001 · adamw": pytest.approx([0.7, 0.8])}
    band = next(t for t in figure.data if t.name == "grpo · lr 0.001 · adamw seed range")
    assert list(band.y) == pytest.approx([0.9, 1.0, 0.6, 0.5])  # high ends forwards, low ends backwards


# ------------------------------------------------------------------------------------------------
def arm_rows(points: list[tuple[str, str, float, float]]) -> pd.DataFrame:
    """(algorithm, optimizer, lr, mean final accuracy) rows shaped like _arms.by_arm's."""
    return pd.DataFrame([{M.LB_ALGORITHM: a, M.LB_OPTIMIZER: o, M.LB_LR: lr, M.LB_ACC_MEAN: acc}
                         for a, o, lr, acc in points])


def test_edge_notes_flag_a_best_lr_at_the_grid_edge_only():
    inside = arm_rows([("grpo", "adamw", 1e-4, 0.3), ("grpo", "adamw", 3e-4, 0.5), ("grpo", "adamw", 1e-3, 0.4)])
    assert _arms.edge_notes(inside) == []
    rows = arm_rows([("grpo", "adamw", 1e-4, 0.6), ("grpo", "adamw", 3e-4, 0.5), ("grpo", "adamw", 1e-3, math.nan),
                     ("cispo", "sgd", 1e-4, 0.1), ("cispo", "sgd", 1e-3, 0.2), ("gspo", "adamw", 1e-3, 0.2),
                     # the best finished lr is below a larger one that failed: bracketed, as on the leaderboard
                     ("dapo", "adamw", 1e-4, 0.2), ("dapo", "adamw", 1e-3, 0.5), ("dapo", "adamw", 3e-3, math.nan)])
    assert _arms.edge_notes(rows) == [
        "cispo (sgd): the best learning rate 0.001 is the largest tried; a larger one may do better.",
        "grpo (adamw): the best learning rate 0.0001 is the smallest tried; a smaller one may do better.",
        "gspo (adamw): only one learning rate (0.001) has finished runs, so its best is unknown.",
    ]


def test_accuracy_against_lr_figure_lines_error_bars_and_initial_line():
    pytest.importorskip("streamlit", reason="the dashboard extra is not installed")
    from isopo_bench.dashboards import _leaderboard

    rows = pd.DataFrame([
        {M.LB_ALGORITHM: "grpo", M.LB_OPTIMIZER: "adamw", M.LB_LR: 1e-3, M.LB_ACC_MEAN: 0.5, M.LB_ACC_CI_LO: 0.4,
         M.LB_ACC_CI_HI: 0.7, M.LB_SEEDS: "0,1"},
        {M.LB_ALGORITHM: "grpo", M.LB_OPTIMIZER: "adamw", M.LB_LR: 1e-4, M.LB_ACC_MEAN: 0.3, M.LB_ACC_CI_LO: math.nan,
         M.LB_ACC_CI_HI: math.nan, M.LB_SEEDS: "0"},
        {M.LB_ALGORITHM: "grpo", M.LB_OPTIMIZER: "sgd", M.LB_LR: 1e-2, M.LB_ACC_MEAN: 0.2, M.LB_ACC_CI_LO: 0.1,
         M.LB_ACC_CI_HI: 0.3, M.LB_SEEDS: "0,1"},
    ])
    fig = _leaderboard.lr_figure(rows, initial=0.25, colors={"grpo": "#123456"})
    lines = {t.name: t for t in fig.data}
    assert set(lines) == {"grpo · adamw", "grpo · sgd"}
    adamw = lines["grpo · adamw"]
    assert list(adamw.x) == [1e-4, 1e-3] and list(adamw.y) == [0.3, 0.5]  # sorted by lr
    assert list(adamw.error_y.array) == pytest.approx([0.0, 0.2])  # one seed at 1e-4: no interval
    assert list(adamw.error_y.arrayminus) == pytest.approx([0.0, 0.1])
    assert adamw.line.dash == "solid" and lines["grpo · sgd"].line.dash == "dash"
    assert fig.layout.xaxis.type == "log"
    (initial,) = fig.layout.shapes
    assert (initial.y0, initial.y1) == (0.25, 0.25)


# ------------------------------------------------------------------------------------------------
# The start point the dashboard shows (dashboards._start)
def starts_frame(hashes_by_model: dict[str, list[str]]) -> pd.DataFrame:
    """One run per listed start hash (None: recorded without the tag), per model."""
    return runs_frame([{M.LB_MODEL: model, M.LB_START_HASH: h} for model, hashes in hashes_by_model.items()
                       for h in hashes])


def test_start_counts_most_runs_first_ties_in_hash_order_and_untagged_runs_as_unknown():
    runs = starts_frame({"m": ["content:bb", "content:aa", "content:bb", None, "", "content:cc"]})
    assert _start.start_counts(runs) == [("content:bb", 2), ("unknown", 2), ("content:aa", 1), ("content:cc", 1)]


def test_default_start_is_the_majority_hash_only_where_a_group_mixes_start_points():
    mixed = starts_frame({"m": ["content:bb", "content:aa", "content:aa"]})
    assert _start.mixes_starts(mixed) and _start.default_start(mixed) == "content:aa"
    tie = starts_frame({"m": ["content:bb", "content:aa"]})
    assert _start.default_start(tie) == "content:aa"
    # two models, one start point each: nothing is compared across them, so nothing is hidden by default
    apart = starts_frame({"m1": ["content:aa"] * 3, "m2": ["content:bb"]})
    assert not _start.mixes_starts(apart) and _start.default_start(apart) == _start.ALL
    # ALL keeps every run: select_start_hash's empty choice, the CLI without --start-hash
    assert select_start_hash(apart, _start.ALL).equals(apart)


def test_start_labels_give_the_hash_and_its_run_count():
    counts = {"content:9ac4527b7ea3d5bf": 45, "unknown": 1}
    assert _start.start_label("content:9ac4527b7ea3d5bf", counts) == "content:9ac4527b7ea3d5bf (45 runs)"
    assert _start.start_label("unknown", counts) == "unknown (no start_hash tag) (1 run)"
    assert _start.start_label(_start.ALL, counts) == "all 2 start points (46 runs)"
