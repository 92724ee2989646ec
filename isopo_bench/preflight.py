"""Checks of a run's data that need the task and the tokenizer but no MLflow run: called by the trainer
after the model and task loaded and before the run is created, so a broken or empty data file, or a prompt
the settings cannot hold, is an error that leaves no FAILED record blocking a plain rerun.

File-backed tasks read their whole training split here (the rows are parsed and validated once and cached);
prompt lengths are checked for the evaluation items, the first step's items and the longest training
questions (by characters), which catches a too-small rollout.max_prompt_tokens before any step.
"""

from __future__ import annotations

from isopo_bench.errors import ConfigError, DataError

LONGEST_CHECKED = 32


def check_task_data(cfg, task, tokenizer, eval_items: list) -> None:
    from isopo_bench.models import encode_prompt

    name = cfg.task.name
    if not eval_items:
        raise DataError(f"task {name}: the evaluation split has no items, so accuracy would be over 0 items. Fix: "
                        "give test data with at least one row (task.data_dir) and task.eval_items >= 1")
    n_train = task.num_items("train")  # reads and validates a file-backed split
    if n_train == 0:
        raise DataError(f"task {name}: the training split has no items. Fix: give a train.jsonl with rows (task.data_dir)")
    candidates = [("evaluation", item) for item in eval_items]
    candidates += [("training", item) for item in task.train_items(0, cfg.rollout.prompts_per_step)]
    if n_train is not None:
        items = [task.item("train", i) for i in range(n_train)]
        candidates += [("training", item) for item in sorted(items, key=lambda it: -len(task.prompt(it)))[:LONGEST_CHECKED]]
    limit = cfg.rollout.max_prompt_tokens
    longest, which = 0, None
    for split, item in candidates:
        n = len(encode_prompt(tokenizer, task.prompt(item)))
        if n > longest:
            longest, which = n, split
    if longest > limit:
        raise ConfigError("rollout.max_prompt_tokens", f"{limit} is shorter than a {which} prompt of task {name} "
                          f"({longest} tokens; prompts are never truncated)",
                          f"raise it to at least {longest} (--rollout.max-prompt-tokens {longest})")
