"""The overhead benchmark runs every registered algorithm on identical batches and reports ratios to
REINFORCE (timing claims themselves live in the benchmark's output, not in tests)."""

from __future__ import annotations

import torch

from isopo_bench.overhead import Shape, main, markdown_table, run_overhead, variants
from isopo_bench.plugins import ALGORITHMS

torch.set_num_threads(1)
MICRO = Shape("micro", 64, 96, 2, 1, 32, 1, 50, 12, 2, microbatches=2, num_probes=5)


def test_every_algorithm_is_timed_against_reinforce():
    rows = run_overhead([MICRO], repeats=1, warmup=0)
    labels = {r["algorithm"] for r in rows}
    expected = {label for label, _ in variants(ALGORITHMS.names(), faithful=True)}
    assert labels == expected
    assert {"isopo (fast)", "isopo (faithful)", "isopo-interacting (fast)", "isopo-interacting (faithful)"} <= labels
    base = next(r for r in rows if r["algorithm"] == "reinforce")
    assert base["ratio"] == 1.0
    for r in rows:
        assert r["median_s"] > 0 and abs(r["ratio"] - r["median_s"] / base["median_s"]) < 1e-12
    table = markdown_table(rows)
    assert table.count("\n") == len(rows) + 1 and "| micro | 12 | 2 | 64 | 5 | reinforce |" in table


def test_cli_prints_the_table(capsys, monkeypatch):
    from isopo_bench import overhead

    monkeypatch.setitem(overhead.SUITES, "tiny", (lambda: [MICRO], ["reinforce", "isopo"], False))
    assert main(["--suite", "tiny", "--repeats", "1", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    assert "| micro | 12 | 2 | 64 | 5 | isopo (fast) |" in out and "faithful" not in out


def test_breakdown_names_the_engine_stages_only_while_profiling(monkeypatch):
    """Profiler ranges are entered only when a profiler runs (they cost ~10 us each otherwise), and
    `--breakdown` still sees every stage of interacting ISOPO, on the small-layer batched path and on the
    per-layer one."""
    import contextlib

    from isopo_bench.layerwise import batched
    from isopo_bench.layerwise.kernels import stage
    from isopo_bench.overhead import breakdown

    assert isinstance(stage("isopo/x"), contextlib.nullcontext)

    def stages():
        rows = breakdown(MICRO, variants(["reinforce", "isopo-interacting"], False), torch.device("cpu"), torch.float32)
        return {r["op"] for r in rows if r["op"].startswith("isopo/")}

    assert "isopo/batched" in stages()
    monkeypatch.setattr(batched, "MAX_BATCHED_MB", 0)
    assert {"isopo/ntk", "isopo/combine"} <= stages()


def test_the_tier_shape_is_the_cpu_suites_update():
    """`--suite tier` times what quick and cpu run per optimizer step, so their in-suite ratios have a
    benchmark of the same shape: the shipped warm start's widths, microbatch size and microbatches per step."""
    import json
    from importlib import resources

    from isopo_bench.overhead import CPU_TIER
    from isopo_bench.suites import get_suite

    base = get_suite("quick").base
    per_step = base.rollout.prompts_per_step * base.rollout.samples_per_prompt // base.optim.minibatches_per_step
    assert (CPU_TIER.microbatch, CPU_TIER.microbatches) == (base.optim.microbatch_size, per_step // base.optim.microbatch_size)
    folder = next(p for p in resources.files("isopo_bench").joinpath("warm_starts").iterdir() if p.is_dir())
    config = json.loads(folder.joinpath("config.json").read_text())
    assert (config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"], config["vocab_size"],
            config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (
        CPU_TIER.hidden, CPU_TIER.intermediate, CPU_TIER.layers, CPU_TIER.vocab, CPU_TIER.heads, CPU_TIER.kv_heads,
        CPU_TIER.head_dim)
    assert CPU_TIER.seq_len >= 26 + 8  # a 26-token chat prompt and a typical completion fit
