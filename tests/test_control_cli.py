"""The control track's command line: `isopo-bench control-train` records a FINISHED run with the flags it
was given and rejects unknown names clearly; `isopo-bench control-stability`'s fall-back detector on
hand-made curves, and the experiment end to end (resumable through the suite ledger)."""

from __future__ import annotations

import math

import pytest

from conftest import fresh_mlflow_uri
from isopo_bench import metric_names as M
from isopo_bench.cli import main as cli_main
from isopo_bench.control.stability import detect_fall_back, run_stability, stability_configs


def test_control_train_records_a_finished_run(workdir):
    from isopo_bench.leaderboard import load_runs

    uri = fresh_mlflow_uri(workdir)
    rc = cli_main(["control-train", "--algorithm.name", "rpo", "--control.env", "point-mass", "--control.num-envs", "16",
                   "--control.horizon", "20", "--control.eval-envs", "16", "--optim.steps", "2", "--optim.epochs", "2",
                   "--seed", "3", "--tracking.uri", uri, "--tracking.experiment", "ctl-cli", "--tracking.suite", "cli-test@v1"])
    assert rc == 0
    runs = load_runs(uri, "ctl-cli", "cli-test@v1")
    assert len(runs) == 1
    row = runs.iloc[0]
    assert row[M.LB_STATUS] == "FINISHED" and row[M.LB_STEPS] == 2
    assert (row[M.LB_ALGORITHM], row[M.LB_TASK], int(row[M.LB_SEED])) == ("rpo", "point-mass", 3)
    assert row[M.LB_FINAL_ACC] > row[M.LB_INITIAL_ACC]  # two RPO iterations already improve the return


@pytest.mark.parametrize("algorithm", ["npg_rank1_model", "isopo-interacting", "grpo"])
def test_control_train_runs_score_function_plugins(workdir, algorithm):
    """Every score-function plug-in runs on trajectories through the one step driver (npg_rank1_model's
    rerun of its Fisher sequence uses the track's log-prob function from the step context)."""
    from isopo_bench.leaderboard import load_runs

    uri = fresh_mlflow_uri(workdir)
    rc = cli_main(["control-train", "--algorithm.name", algorithm, "--control.num-envs", "16", "--control.horizon", "10",
                   "--control.eval-envs", "8", "--optim.steps", "2", "--optim.microbatch-size", "8",
                   "--tracking.uri", uri, "--tracking.experiment", "ctl-plugins", "--tracking.suite", "plugins@v1"])
    assert rc == 0
    runs = load_runs(uri, "ctl-plugins", "plugins@v1")
    assert list(runs[M.LB_STATUS]) == ["FINISHED"] and runs.iloc[0][M.LB_STEPS] == 2


@pytest.mark.parametrize(("flag", "name", "listed"), [("--control.env", "pendulm", "pendulum, point-mass"),
                                                      ("--algorithm.name", "rpoo", "bptt")])
def test_control_train_unknown_names_are_clear_errors(workdir, capsys, flag, name, listed):
    assert cli_main(["control-train", flag, name, "--tracking.uri", fresh_mlflow_uri(workdir)]) == 1
    err = capsys.readouterr().err
    assert f"`{name}`" in err and listed in err and "Traceback" not in err


RISE = [-300.0, -250.0, -200.0, -180.0]


def test_fall_back_that_recovers():
    curve = RISE + [-170.0, -172.0, -185.0, -178.0, -171.0, -165.0]
    result = detect_fall_back(curve, level=-170.0, threshold=10.0)
    assert (result.reached_at, result.largest_drop, result.fell_back_at, result.recovered) == (4, 15.0, 6, True)


def test_no_fall_back():
    curve = RISE + [-170.0, -175.0, -168.0, -169.0, -160.0]  # dips of 5 and 1 stay within the threshold
    result = detect_fall_back(curve, level=-170.0, threshold=10.0)
    assert (result.reached_at, result.largest_drop, result.fell_back_at, result.recovered) == (4, 5.0, None, None)


def test_fall_back_that_stays_down():
    curve = RISE + [-170.0, -182.0, -195.0, -190.0]
    result = detect_fall_back(curve, level=-170.0, threshold=10.0)
    assert (result.reached_at, result.largest_drop, result.fell_back_at, result.recovered) == (4, 25.0, 5, False)


def test_drops_before_the_level_do_not_count():
    curve = [-300.0, -200.0, -240.0, -210.0, -195.0]  # a drop of 40 on the way up
    assert detect_fall_back(curve, level=-199.0).fell_back_at is None
    assert detect_fall_back(curve, level=-199.0).largest_drop == 0.0
    never = detect_fall_back(curve, level=-170.0)
    assert (never.reached_at, never.largest_drop, never.fell_back_at, never.recovered) == (None, 0.0, None, None)
    assert detect_fall_back(curve, level=-200.0).fell_back_at == 2  # reached at 1, then 40 below


def test_stability_variants_differ_only_in_kl_and_band():
    (a_name, a), (b_name, b) = stability_configs(iterations=7, seeds=(4,))
    assert (a_name, b_name) == ("rpo", "rpo-no-kl-no-band")
    assert (a.control.kl_coef, a.control.band_low, a.control.band_high) == (0.1, 0.8, 1.0)
    assert (b.control.kl_coef, b.control.band_low, b.control.band_high) == (0.0, 1.0, math.inf)
    for cfg in (a, b):
        assert (cfg.control.env, cfg.control.num_envs, cfg.optim.lr, cfg.optim.steps, cfg.optim.epochs, cfg.seed) == (
            "pendulum", 64, 3e-3, 7, 5, 4)
        assert cfg.tracking.suite == "pendulum-stability@v1"
    assert a.config_hash() != b.config_hash()


@pytest.mark.slow
def test_control_stability_end_to_end_and_resume(workdir, monkeypatch):
    import isopo_bench.control.stability as stability

    uri = fresh_mlflow_uri(workdir)
    rows = run_stability(uri, "ctl-stab", iterations=2, seeds=(0,))
    assert [(r["variant"], r["seed"]) for r in rows] == [("rpo", 0), ("rpo-no-kl-no-band", 0)]
    curves = stability.finished_eval_curves(uri, "ctl-stab", stability.suite_label())
    assert sorted(len(c) for c in curves.values()) == [3, 3]  # before training and after each iteration
    hash_of = {variant: cfg.config_hash() for variant, cfg in stability_configs(2, (0,), uri, "ctl-stab")}
    for row in rows:
        curve = curves[hash_of[row["variant"]]]
        assert row["best return"] == round(max(curve), 1) and row["final return"] == round(curve[-1], 1)
        assert curve[-1] > curve[0]
    # A second call finds both runs FINISHED in the ledger: nothing is trained, the same table comes back.
    monkeypatch.setattr(stability, "train_recording_eval_curve", lambda cfg: pytest.fail(f"retrained {cfg.tracking.run_name}"))
    assert run_stability(uri, "ctl-stab", iterations=2, seeds=(0,)) == rows
