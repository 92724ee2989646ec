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

# vLLM sampler vs trainer log-prob mismatch
MISMATCH_MEAN_ABS = "rollout/logp_mismatch_mean_abs"
MISMATCH_MAX_ABS = "rollout/logp_mismatch_max_abs"
MISMATCH_RATIO_MEAN = "rollout/is_ratio_mean"
MISMATCH_RATIO_MAX = "rollout/is_ratio_max"

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
TIME_PHASES = (TIME_ROLLOUT, TIME_REWARD, TIME_OLD_LOGP, TIME_REF_LOGP, TIME_UPDATE, TIME_SYNC, TIME_EVAL)

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
TAG_MACHINE = "machine"
TAG_STATUS_DETAIL = "status_detail"
