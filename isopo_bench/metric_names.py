"""Every metric name in one place, namespaced by phase. Training, leaderboard and dashboard import these
constants instead of spelling strings."""

# Rollout and reward
ROLLOUT_TOKENS = "rollout/completion_tokens"
ROLLOUT_MEAN_LEN = "rollout/mean_completion_len"
ROLLOUT_TRUNCATED = "rollout/truncated_frac"
ROLLOUT_TOKENS_PER_S = "rollout/tokens_per_s"
REWARD_MEAN = "reward/mean"
REWARD_STD = "reward/std"
REWARD_SOLVED_GROUPS = "reward/all_correct_groups_frac"
REWARD_ZERO_GROUPS = "reward/all_wrong_groups_frac"
ADVANTAGE_ABS_MEAN = "reward/advantage_abs_mean"

# Policy update
LOSS = "algo/loss"
ENTROPY = "algo/entropy"
LR = "algo/lr"
GRAD_NORM = "grad/norm"
GRAD_CLIPPED = "grad/clipped"
PARALLEL_PARAM_SPREAD = "parallel/param_checksum_spread"
"""Data parallel: relative spread of the ranks' parameter checksums at each checkpoint (0 = replicas agree)."""

# vLLM sampler vs trainer log-prob mismatch
MISMATCH_MEAN_ABS = "rollout/logp_mismatch_mean_abs"
MISMATCH_MAX_ABS = "rollout/logp_mismatch_max_abs"
MISMATCH_RATIO_MEAN = "rollout/is_ratio_mean"
MISMATCH_RATIO_MAX = "rollout/is_ratio_max"
MISMATCH_RATIO_MIN = "rollout/is_ratio_min"

# Wall-clock per phase (seconds per training step); synchronised on GPU.
TIME_ROLLOUT = "time/rollout"
TIME_REWARD = "time/reward"
TIME_OLD_LOGP = "time/old_logp"
TIME_REF_LOGP = "time/ref_logp"
TIME_UPDATE = "time/update"
TIME_SYNC = "time/sync"
TIME_EVAL = "time/eval"
TIME_STEP = "time/step"
TIME_ELAPSED = "time/elapsed"
"""Cumulative training wall-clock (excluding evaluation) at the end of the step."""
TIME_CPU_UPDATE = "time_cpu/update"
"""Process CPU seconds of the update phase (timing.PhaseTimer.pop_cpu; also time_cpu/* and time_thread/* per phase)."""
COST_FLOP_FLOOR = "cost/flop_floor"
"""FLOP floor of the step's update relative to REINFORCE's (isopo_bench.flop_floor.update_floor)."""
TIME_DIAGNOSTICS = "time/diagnostics"
"""The per-step diagnostics (isopo_bench.diagnostics): never counted in time/update."""
TIME_PHASES = (TIME_ROLLOUT, TIME_REWARD, TIME_OLD_LOGP, TIME_REF_LOGP, TIME_UPDATE, TIME_SYNC, TIME_EVAL,
               TIME_DIAGNOSTICS)

# Per-step diagnostics (isopo_bench.diagnostics, docs/diagnostics.md): averaged over the optimizer steps
# of a training step at which they ran.
DIAG_KL_TOK = "diag/kl_tok"
"""Exact KL(pi_before || pi_after), full vocabulary, mean over the minibatch's response tokens."""
DIAG_KL_TOK_MAX_SEQ = "diag/kl_tok_max_seq"
"""Max over sequences of each sequence's token-mean KL."""
DIAG_KL_SEQ = "diag/kl_seq"
"""Sequence-level KL: mean over sequences of each sequence's summed token KL."""
DIAG_LOGRATIO_ABS = "diag/logratio_abs"
"""Mean |log pi_after(y_t) - log pi_before(y_t)| over taken response tokens."""
DIAG_DLOGP_POS = "diag/dlogp_pos"
"""Mean change of the sequence log-likelihood over sequences with A > 0."""
DIAG_DLOGP_NEG = "diag/dlogp_neg"
"""The same over sequences with A < 0."""
DIAG_SURROGATE = "diag/surrogate"
"""S = mean_i A_i (log pi_after(y_i) - log pi_before(y_i))."""
DIAG_SURROGATE_PER_KL = "diag/surrogate_per_kl"
"""S / diag/kl_tok."""
DIAG_FISHER_LEN = "diag/fisher_len_update"
"""Delta^T F Delta = |U Delta|^2 / B (half of it predicts diag/kl_seq to second order)."""
DIAG_DIRECTIONS = ("grad", "update")
"""`grad`: the algorithm's gradient before clipping (ascent: -.grad); `update`: the applied Delta."""
DIAG_AGAINST = ("vanilla", "natural", "layer_natural", "blockdiag_natural")


def diag_cos(direction: str, against: str, rho: float | None = None) -> str:
    """`diag/cos_{direction}_{against}[_rho{rho}]`, e.g. diag/cos_update_natural_rho0.01."""
    return f"diag/cos_{direction}_{against}" + ("" if rho is None else f"_rho{rho:g}")


DIAG_COS_UPDATE_NAT = diag_cos("update", "natural", 1.0)
"""The leaderboard's update/natural-gradient cosine (rho = 1)."""

# Held-out evaluation (greedy)
EVAL_ACCURACY = "eval/accuracy"
EVAL_ACCURACY_FLEXIBLE = "eval/accuracy_flexible"
EVAL_MEAN_LEN = "eval/mean_completion_len"

# Summary values written at the end of a run (logged as metrics without a step, and to summary.json)
FINAL_ACCURACY = "final/eval_accuracy"
BEST_ACCURACY = "final/best_eval_accuracy"
INITIAL_ACCURACY = "final/initial_eval_accuracy"

# Tags every run carries
TAG_ALGORITHM = "algorithm"
TAG_TASK = "task"
TAG_MODEL = "model"
TAG_SEED = "seed"
TAG_COMMIT = "git_commit"
TAG_CONFIG_HASH = "config_hash"
TAG_VERSION = "isopo_bench_version"
TAG_SUITE = "suite"
TAG_SCORER_VERSION = "scorer_version"
TAG_LR = "lr"
TAG_OPTIMIZER = "optimizer"  # optim.optimizer: adamw | sgd (runs from before the optimizer axis read adamw)
TAG_MACHINE = "machine"
TAG_STATUS_DETAIL = "status_detail"
TAG_START_HASH = "start_hash"
"""Content hash of the run's starting weights (`content:<hex>`; `hub:<id>` for a hub model; isopo_bench.start_point)."""
TAG_MODEL_DISPLAY = "model_display"
"""Readable name of the starting model, e.g. `tiny-qwen3 0.605M + warm start arithmetic(max_operand=9) [1a2b3c4d]`."""
TAG_ITEMS_CORRECT = "eval_items_correct"
"""Per-item greedy correctness of the latest evaluation, in evaluation order (isopo_bench.item_record)."""
TAG_ITEMS_DIGEST = "eval_items_digest"
"""Short hash of the evaluated items: runs are paired item by item only when it agrees."""
TAG_ITEMS_STEP = "eval_items_step"
"""Training step of the evaluation TAG_ITEMS_CORRECT records."""

# Leaderboard columns (isopo_bench.leaderboard; the dashboard and the CSV/Markdown exports use these names).
# Per run (load_runs):
LB_RUN_ID = "run_id"
LB_RUN_NAME = "run_name"
LB_STATUS = "status"
"""MLflow run status: FINISHED; FAILED; RUNNING / KILLED / SCHEDULED (= incomplete)."""
LB_STATUS_DETAIL = TAG_STATUS_DETAIL
LB_SUITE = TAG_SUITE
LB_TASK = TAG_TASK
LB_MODEL = TAG_MODEL
LB_ALGORITHM = TAG_ALGORITHM
LB_LR = TAG_LR
LB_OPTIMIZER = TAG_OPTIMIZER
LB_SEED = TAG_SEED
LB_COMMIT = TAG_COMMIT
LB_CONFIG_HASH = TAG_CONFIG_HASH
LB_MACHINE = TAG_MACHINE
LB_START_HASH = TAG_START_HASH
"""`unknown` for runs recorded before the tag existed (isopo_bench.start_check)."""
LB_MODEL_DISPLAY = TAG_MODEL_DISPLAY
LB_ITEMS_CORRECT = TAG_ITEMS_CORRECT
"""Per run: numpy uint8 array of the last evaluation's per-item correctness (empty when not recorded)."""
LB_ITEMS_DIGEST = TAG_ITEMS_DIGEST
LB_ITEMS_STEP = TAG_ITEMS_STEP
LB_STEPS = "steps_done"
LB_PLANNED_STEPS = "steps_planned"
LB_FINAL_ACC = "final_accuracy"
LB_BEST_ACC = "best_accuracy"
LB_INITIAL_ACC = "initial_accuracy"
LB_ELAPSED = "train_time_s"
"""Training wall clock of the whole run (time/elapsed: evaluation excluded)."""
LB_UPDATE_S = "update_s_per_step"
"""Median over steps of time/update (median: robust to a loaded machine)."""
LB_STEP_S = "total_s_per_step"
"""Median over steps of time/step (rollout + update + sync, evaluation excluded)."""
LB_EVAL_CURVE = "eval_curve"
"""List of (step, train_time_s, eval accuracy) of every evaluation."""
LB_START_TIME = "start_time"
# Aggregates (accuracy_vs_lr: per suite, task, model, algorithm, lr; leaderboard: per algorithm):
LB_N_FINISHED = "n_finished"
LB_N_FAILED = "n_failed"
LB_N_INCOMPLETE = "n_incomplete"
LB_SEEDS = "seeds"
LB_ACC_MEAN = "final_acc_mean"
LB_ACC_CI_LO = "final_acc_ci95_lo"
LB_ACC_CI_HI = "final_acc_ci95_hi"
LB_BEST_ACC_MEAN = "best_acc_mean"
LB_BUDGET_S = "equal_budget_s"
"""Equal wall-clock budget of a suite: min over algorithms of their longest finished run's train_time_s."""
LB_ACC_AT_BUDGET = "acc_at_equal_budget"
LB_LRS_FINISHED = "lrs_finished"
LB_ROBUST_MEAN = "acc_mean_over_lrs"
LB_ROBUST_WORST = "acc_worst_lr"
LB_BEST_LR = "best_lr"
LB_THRESHOLD = "threshold"
LB_STEPS_TO_THRESHOLD = "steps_to_threshold"
LB_THRESHOLD_REACHED = "threshold_reached"
LB_OVERHEAD = "update_time_vs_baseline"  # median update seconds over the --baseline algorithm's
LB_UPDATE_CPU_S = "update_cpu_s_per_step"  # median over steps of time_cpu/update
LB_FLOOR = "flop_floor"  # median over finished runs of cost/flop_floor: the update's FLOP floor vs REINFORCE
LB_OVERHEAD_CLOCK = "update_time_clock"  # `process CPU` (every run in the group logged it) or `wall`
LB_OVERHEAD_NOISE = "update_time_noise"  # |ratio - 1| of the group's no-extra-work algorithm (gspo/cispo)
LB_OVERHEAD_RELIABLE = "update_time_reliable"  # the noise check's verdict, in words
LB_BASELINE = "baseline"
LB_N_PAIRS = "n_pairs_pooled"
"""Pooled comparison (leaderboard.paired_differences): runs paired by (seed, lr) over every lr both ran."""
LB_DIFF_MEAN = "diff_pooled_seed_lr"
LB_DIFF_CI_LO = "diff_pooled_ci95_lo"
LB_DIFF_CI_HI = "diff_pooled_ci95_hi"
LB_GAIN_MEAN = "gain_mean"
"""Mean over finished seeds of final - initial accuracy."""
LB_LR_WINDOW = "lr_window_decades"
"""Width in decades of the lr window with gain >= 90% of the best gain (statistics.lr_window)."""
LB_LR_WINDOW_LOWER = "lr_window_is_lower_bound"
"""The window reaches the grid's edge (or a grid point without a result): the width is a lower bound."""
LB_BEST_LR_AT_EDGE = "best_lr_at_edge"
"""The best lr is the smallest or largest of the grid: the suite has not bracketed the optimum."""
# Seed-paired comparisons (isopo_bench.comparisons): one algorithm vs the baseline in one
# (suite, task, model, optimizer) cell, at a stated pair of learning rates.
LB_LR_CHOICE = "lr_choice"
"""`own best lr each` (each arm at its own best lr) or `baseline's best lr` (both at the baseline's)."""
LB_BASELINE_LR = "baseline_lr"
LB_N_SEEDS_PAIRED = "n_seeds_paired"
LB_SEED_DIFF = "diff_seed_paired"
"""Mean over paired seeds of (final accuracy - the baseline's final accuracy)."""
LB_SEED_DIFF_SD = "diff_sd_over_seeds"
LB_SEED_DIFF_T_LO = "diff_t95_lo"
LB_SEED_DIFF_T_HI = "diff_t95_hi"
LB_BOOT_LO = "diff_boot95_lo"
"""Two-stage paired bootstrap over seeds x evaluation items, 2.5% percentile."""
LB_BOOT_HI = "diff_boot95_hi"
LB_N_ITEMS = "n_items"
"""Evaluation items per seed the bootstrap resampled (0: no per-item record)."""
LB_MDE = "mde_80"
"""Minimum detectable difference at 80% power, two-sided alpha 0.05, from the sd over seeds."""
LB_VERDICT = "verdict"
LB_BOOT_NOTE = "bootstrap_note"
"""Why the bootstrap was not computed (no per-item record, different evaluation items)."""
LB_DIAG_KL = "median_kl_per_step"
"""Median over training steps of diag/kl_tok (per run; per (algorithm, lr): mean over seeds)."""
LB_DIAG_COS = "median_cos_update_nat"
"""Median of diag/cos_update_natural_rho1."""
LB_DIAG_GAIN_PER_KL = "median_gain_per_kl"
"""Median of diag/surrogate_per_kl."""
LB_DIAG_KL_CI_LO = "median_kl_ci95_lo"
LB_DIAG_KL_CI_HI = "median_kl_ci95_hi"
LB_COMMITS = "commits"
LB_CONFIG_HASHES = "config_hashes"

# Non-training MLflow runs: `kind` tells them apart from training runs (which carry no such tag).
TAG_KIND = "kind"
KIND_OVERHEAD = "overhead"
"""A run holding `isopo-bench overhead` results as a JSON or CSV artifact (rows as overhead.run_overhead
returns them); the dashboard's Overhead tab shows the newest one."""

# Differentiable-control track (isopo_bench.control). Its runs also log the evaluation return under
# EVAL_ACCURACY / FINAL_ACCURACY / BEST_ACCURACY / INITIAL_ACCURACY, so the leaderboard reads them as its score.
CONTROL_RETURN = "control/return"
"""Mean return of the iteration's training trajectories."""
CONTROL_RETURN_STD = "control/return_std"
CONTROL_EVAL_RETURN = "control/eval_return"
"""Mean return on the fixed evaluation initial states and noise (sampled actions)."""
CONTROL_FINAL_RETURN = "final/return"
CONTROL_INITIAL_RETURN = "final/initial_return"

# Rollout correction of the sampler/trainer mismatch (isopo_bench.rollout_correction); logged only when
# `correction.mode` is not `off`. Fractions are of response tokens (token level) or of sequences (sequence level).
CORRECTION_WEIGHT_MEAN = "correction/weight_mean"
"""Mean correction weight over response tokens (after truncation / masking)."""
CORRECTION_RATIO_MEAN = "correction/ratio_mean"
"""Mean raw importance ratio pi_trainer_old / pi_sampler (token, or the sequence product) before truncation."""
CORRECTION_RATIO_MAX = "correction/ratio_max"
CORRECTION_CLIP_FRAC = "correction/clip_frac"
"""TIS: fraction of tokens / sequences whose ratio exceeded the threshold C and was truncated to C."""
CORRECTION_MASK_FRAC = "correction/mask_frac"
"""MIS: fraction of tokens / sequences masked out (ratio outside [1/C, C])."""

# Held-out sampled evaluation (eval.samples > 0): k samples per item at the rollout temperature.
EVAL_MEAN_AT_K = "eval/mean_at_k"
"""mean@k: the mean reward of the k samples, averaged over items (the expected single-sample accuracy)."""
EVAL_PASS_AT_K = "eval/pass_at_k"
"""pass@k (k = eval.pass_k) by the unbiased estimator 1 - C(n-c, k) / C(n, k) from n = eval.samples samples."""
LB_PASS_AT_K = "final_pass_at_k"
LB_MEAN_AT_K = "final_mean_at_k"
