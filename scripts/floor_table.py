"""Prints the FLOP-floor table of COST_NOTES.md: every algorithm variant at the tiny, Qwen3-0.6B-widths, paper and sweep shapes (no timing)."""
import dataclasses, torch
from isopo_bench import overhead as O, flop_floor as F
from isopo_bench.plugin_settings import build_algorithm
PAPER = dataclasses.replace(O.QWEN3_06B, name="paper (d28, T2048, V151936, B8)", layers=28, vocab=151936, seq_len=2048)
print("| shape | algorithm | FLOP floor | extra GFLOP | REINFORCE GFLOP | S | per-seq state MiB | planner |")
print("|---|---|---:|---:|---:|---:|---:|---|")
for shape in [O.TINY, O.QWEN3_06B, PAPER] + O.sweep_shapes():
    mbs = O.build_microbatches(shape, torch.device("cpu"))
    names = ["reinforce","gspo","isopo","isopo-interacting","npg_rank1","npg_rank1_model"] if ":" not in shape.name else ["isopo","isopo-interacting"]
    for label, cfg in O.variants(names, ":" not in shape.name):
        a = build_algorithm(O.with_probes(cfg, shape.num_probes))
        c = F.floor_columns(shape, a, mbs)
        print(f"| {shape.name} | {label} | {c['floor']:.4f} | {c['extra_gflop']:.2f} | {c['base_gflop']:.1f} | {c['probes_used']} | {c['state_mib']:.0f} | {c['floor_note']} |")
