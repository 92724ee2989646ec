"""The FLOP floor of one policy-update step: an exact count of the arithmetic REINFORCE's update does and
of the extra arithmetic each method's chosen exact form adds, at a given shape.

What is counted (multiply-add = 2 flops; a padded B x T grid is computed in full, as the code does):
- every nn.Linear (q, k, v, o, gate, up, down per layer, and the LM head): forward 2 N d_in d_out, input
  gradient 2 N d_in d_out, weight gradient 2 N d_in d_out, i.e. 6 N d_in d_out with N = B T;
- attention per layer: Q K^T and P V forward (2 B h T^2 d_head each) and their four backward products:
  12 B h T^2 d_head. The full T x T square is counted: with a padding mask SDPA computes all of it;
- nothing else: norms, RoPE, softmax, the log-softmax over V and AdamW are O(N d + N V + P) elementwise
  work, below 0.2% at every shape here (reported as not counted).

Extra work of a layer-wise method (isopo_bench.layerwise), mirroring `statistics.compute` and
`engine._weight_grad` with the engine's own planner (`planner.plan_layer`) for every Linear:
- materialised G_i (plan `materialise` with a statistic that reads them): the bmm forming them replaces
  the weight-gradient matmul (same 2 N D, D = d_in d_out); the final sum_i w_i G_i costs 2 B D, and the
  B x B Gram (interacting) 2 B^2 D, a row of it (npg `one`) 2 B D, the norms (p, r != 0) 2 B D; the G_i
  are B D numbers written once and read once or twice: memory traffic, not arithmetic, dominates there;
- `chunked` (G_i over the budget): the G_i are formed by row chunks for the statistic (2 N D) and the
  final gradient is formed again from tokens (2 N D): +2 N D, plus the statistic on the chunks;
- ghost / probe forms: probe products x_S x^T on both sides, 2 S N (d_in + d_out), the input half
  shared by the Linears reading the same tensor (q/k/v, gate/up); segment sums 2 S N; ghost norms
  2 B T^2 (d_in + d_out); ghost NTK row 2 T N (d_in + d_out); ghost NTK 2 N^2 (d_in + d_out); the input half
  again shared where the engine shares it;
- the damped B x B solve and the O(S) / O(B) scalars are below 1e-4 of the step and not counted;
- faithful mode: materialised G_i everywhere, probe overlaps g_k^T G_i a_k from them (2 B S D).
npg_rank1_model: one extra forward + backward of the drawn sequence alone (its trimmed length).
GRPO / CISPO / GSPO / REINFORCE: no extra work per optimizer step (their ratio terms are elementwise on
B x T). The per-rollout-batch pi_old forward of GRPO / CISPO is counted by `pi_old_forward_flops`.

The floor ratio is (REINFORCE flops + extra flops) / REINFORCE flops: the ratio an implementation
that adds nothing but the method's own arithmetic would measure on a compute-bound machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from isopo_bench.layerwise.options import EngineOptions, Needs
from isopo_bench.layerwise.planner import plan_layer


@dataclass(frozen=True)
class LinearSpec:
    name: str
    d_in: int
    d_out: int
    input_key: str
    """Linears with the same key read the same input tensor (their input-side products are shared)."""


@dataclass(frozen=True)
class MicrobatchShape:
    B: int
    T: int
    """Padded length of the microbatch's grid."""
    real_tokens: int
    """Non-padding tokens (the probe draw's population)."""


@dataclass
class FlopCount:
    matmul: float = 0.0
    """Matrix-matrix products (what torch.utils.flop_counter counts)."""
    other: float = 0.0
    """Matrix-vector products and the named elementwise terms (segment sums, Gram masks, norms)."""
    state_bytes: float = 0.0
    """Bytes of per-sequence state (materialised G_i, S x N probe products) formed per step."""
    plans: dict = field(default_factory=dict)
    """Planner choice -> number of Linear layers (summed over microbatches)."""
    probes: int = 0
    """Probe tokens per microbatch (the largest)."""

    @property
    def flops(self) -> float:
        return self.matmul + self.other

    def add_plan(self, plan: str) -> None:
        self.plans[plan] = self.plans.get(plan, 0) + 1


def qwen3_linears(hidden: int, intermediate: int, heads: int, kv_heads: int, head_dim: int, layers: int,
                  vocab: int) -> list[LinearSpec]:
    """The nn.Linear layers of a Qwen3ForCausalLM in module order (checked against the built model in tests)."""
    out = []
    q, kv = heads * head_dim, kv_heads * head_dim
    for i in range(layers):
        p = f"model.layers.{i}"
        out += [
            LinearSpec(f"{p}.self_attn.q_proj", hidden, q, f"{p}/attn_in"),
            LinearSpec(f"{p}.self_attn.k_proj", hidden, kv, f"{p}/attn_in"),
            LinearSpec(f"{p}.self_attn.v_proj", hidden, kv, f"{p}/attn_in"),
            LinearSpec(f"{p}.self_attn.o_proj", q, hidden, f"{p}/attn_out"),
            LinearSpec(f"{p}.mlp.gate_proj", hidden, intermediate, f"{p}/mlp_in"),
            LinearSpec(f"{p}.mlp.up_proj", hidden, intermediate, f"{p}/mlp_in"),
            LinearSpec(f"{p}.mlp.down_proj", intermediate, hidden, f"{p}/mlp_mid"),
        ]
    out.append(LinearSpec("lm_head", hidden, vocab, "final_norm"))
    return out


def shape_linears(shape) -> list[LinearSpec]:
    """Linears of an overhead-benchmark `Shape` (a Qwen3 layout)."""
    return qwen3_linears(shape.hidden, shape.intermediate, shape.heads, shape.kv_heads, shape.head_dim,
                         shape.layers, shape.vocab)


def reinforce_flops(linears: list[LinearSpec], heads: int, head_dim: int, layers: int, mb: MicrobatchShape) -> float:
    """Forward + backward matmul flops of one microbatch (REINFORCE's update; AdamW not counted)."""
    N = mb.B * mb.T
    linear = sum(6 * N * s.d_in * s.d_out for s in linears)
    attention = layers * 12 * mb.B * heads * mb.T**2 * head_dim
    return float(linear + attention)


def _bytes(dt: torch.dtype) -> int:
    return torch.finfo(dt).bits // 8


def layerwise_extra(linears: list[LinearSpec], needs: Needs, opts: EngineOptions, mb: MicrobatchShape,
                    dt: torch.dtype = torch.float32, count: FlopCount | None = None) -> FlopCount:
    """Extra flops of one microbatch under the layer-wise engine (see the module docstring)."""
    c = count if count is not None else FlopCount()
    B, T = mb.B, mb.T
    N = B * T
    faithful = opts.mode == "faithful"
    S = min(opts.num_probes, mb.real_tokens)
    if needs.fisher_norms:
        c.probes = max(c.probes, S)
    shared: set[tuple] = set()

    def input_side(key: tuple, flops: float) -> float:
        """Input-side products are computed once per input tensor."""
        if key in shared:
            return 0.0
        shared.add(key)
        return flops

    nb = _bytes(dt)
    for s in linears:
        D = s.d_in * s.d_out
        plan = plan_layer(B, T, s.d_in, s.d_out, dt, needs.ntk, opts)
        keeps_G = plan == "materialise" and (needs.euclid_norms or needs.ntk or needs.ntk_row or faithful)
        # The form actually run: G_i kept, G_i by chunks (norms and NTK only), or token products.
        c.add_plan("materialise" if keeps_G else
                   "chunked" if plan == "chunked" and (needs.euclid_norms or needs.ntk) else "token products")
        mm = ew = 0.0
        if keeps_G:
            mm += 2 * B * D  # combine: sum_i w_i G_i (the bmm forming G_i replaces the weight gradient)
            c.state_bytes += B * D * nb
        if needs.euclid_norms:
            if keeps_G:
                ew += 2 * B * D
            elif plan == "chunked":
                mm += 2 * N * D
                ew += 2 * B * D
            else:
                mm += input_side((s.input_key, "gram"), 2 * B * T * T * s.d_in) + 2 * B * T * T * s.d_out
                ew += 2 * B * T * T
        if needs.fisher_norms:
            from_G = faithful or (keeps_G and B * S * D < S * N * (s.d_in + s.d_out))
            if from_G:
                mm += 2 * B * D * S
                ew += 2 * B * S * s.d_out
            else:
                key = ("probe", -1 if opts.share_probes else s.name)
                mm += input_side((s.input_key,) + key, 2 * S * N * s.d_in) + 2 * S * N * s.d_out
                ew += 2 * S * N
                c.state_bytes += S * N * nb * 2
        if needs.ntk:
            if keeps_G:
                mm += 2 * B * B * D
            elif plan == "chunked":
                mm += 2 * N * D + 2 * B * B * D
            else:
                mm += 2 * N * N * (s.d_in + s.d_out)
                ew += 2 * N * N
        if needs.ntk_row:
            if keeps_G:
                ew += 2 * B * D  # a matrix-vector product
            else:
                mm += input_side((s.input_key, "row"), 2 * T * N * s.d_in) + 2 * T * N * s.d_out
                ew += 2 * T * N
        c.matmul += mm
        c.other += ew
    return c


@dataclass(frozen=True)
class Floor:
    base_flops: float
    extra_flops: float
    extra_matmul: float
    """The matrix-matrix part of extra_flops."""
    state_bytes: float
    probes: int
    plans: dict
    note: str

    @property
    def ratio(self) -> float:
        return (self.base_flops + self.extra_flops) / self.base_flops


def floor_for(algo, linears: list[LinearSpec], heads: int, head_dim: int, layers: int,
              mbs: list[MicrobatchShape], dt: torch.dtype = torch.float32,
              model_row_T: int | None = None) -> Floor:
    """The floor of `algo` (a built isopo_bench Algorithm) for microbatches `mbs` of one optimizer step.
    `model_row_T`: trimmed length of npg_rank1_model's drawn sequence (default: the first microbatch's T)."""
    from isopo_bench.layerwise.engine import LayerwiseAlgorithm

    base = sum(reinforce_flops(linears, heads, head_dim, layers, mb) for mb in mbs)
    if isinstance(algo, LayerwiseAlgorithm):
        c = FlopCount()
        for mb in mbs:
            layerwise_extra(linears, algo.needs, algo.options, mb, dt, c)
        plans = ", ".join(f"{k} {v}" for k, v in sorted(c.plans.items()))
        return Floor(base, c.flops, c.matmul, c.state_bytes, c.probes, c.plans, f"layer-wise ({plans})")
    if type(algo).__name__ == "NpgRank1Model":
        T = model_row_T or mbs[0].T
        extra = reinforce_flops(linears, heads, head_dim, layers, MicrobatchShape(1, T, T))
        return Floor(base, extra, extra, 0.0, 0, {}, "one extra forward+backward of one sequence")
    return Floor(base, 0.0, 0.0, 0.0, 0, {}, "no extra work per optimizer step")


def microbatch_shapes(mbs) -> list[MicrobatchShape]:
    """MicrobatchShapes of TrainBatches."""
    return [MicrobatchShape(mb.input_ids_BT.shape[0], mb.input_ids_BT.shape[1], int(mb.attention_mask_BT.sum()))
            for mb in mbs]


def pi_old_forward_flops(linears: list[LinearSpec], heads: int, head_dim: int, layers: int,
                         mbs: list[MicrobatchShape]) -> float:
    """A no-grad forward over the rollout batch (GRPO / CISPO's pi_old): 2 N d_in d_out per Linear and
    4 B h T^2 d_head of attention's 12 per layer."""
    total = 0.0
    for mb in mbs:
        N = mb.B * mb.T
        total += sum(2 * N * s.d_in * s.d_out for s in linears) + layers * 4 * mb.B * heads * mb.T**2 * head_dim
    return total


def shape_floor(shape, algo, mbs, dt: torch.dtype = torch.float32) -> Floor:
    """`floor_for` at an overhead-benchmark Shape with its TrainBatches (step 0, seed of `algo`'s setup)."""
    from isopo_bench.layerwise.draws import sample_index

    j = sample_index(getattr(algo.setup, "seed", 0), 0, -1, sum(mb.size for mb in mbs))
    for mb in mbs:
        if j < mb.size:
            break
        j -= mb.size
    row_T = int(mb.attention_mask_BT[j].sum())  # the drawn row trimmed (right padding)
    return floor_for(algo, shape_linears(shape), shape.heads, shape.head_dim, shape.layers, microbatch_shapes(mbs),
                     dt, row_T)


def floor_columns(shape, algo, mbs, dtype: torch.dtype = torch.float32) -> dict:
    """The overhead benchmark's floor columns for one (shape, algorithm variant) row."""
    from isopo_bench.layerwise.session import stats_dtype

    f = shape_floor(shape, algo, mbs, stats_dtype(dtype))
    return {"floor": f.ratio, "extra_gflop": f.extra_flops / 1e9, "base_gflop": f.base_flops / 1e9,
            "probes_used": f.probes, "state_mib": f.state_bytes / 2**20, "floor_note": f.note}


# ------------------------------------------------------------------------------------------------
# Training runs: the floor of each rollout batch's update, from the model itself (logged by the trainer).
_SHARED_INPUTS = {"q_proj": "attn_in", "k_proj": "attn_in", "v_proj": "attn_in", "gate_proj": "mlp_in",
                  "up_proj": "mlp_in"}


def model_linears(model: torch.nn.Module) -> list[LinearSpec]:
    """Every nn.Linear of `model` in module order; q/k/v and gate/up of one block share their input."""
    out = []
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear):
            parent, _, leaf = name.rpartition(".")
            block = parent.rpartition(".")[0] if leaf in _SHARED_INPUTS else parent
            out.append(LinearSpec(name, m.in_features, m.out_features, f"{block}/{_SHARED_INPUTS.get(leaf, leaf)}"))
    return out


def model_attention(model: torch.nn.Module) -> tuple[int, int, int]:
    """(query heads, head_dim, layers) from an HF config; (0, 0, 0) when the config does not say."""
    cfg = getattr(model, "config", None)
    heads = getattr(cfg, "num_attention_heads", 0) or 0
    layers = getattr(cfg, "num_hidden_layers", 0) or 0
    head_dim = getattr(cfg, "head_dim", None) or (getattr(cfg, "hidden_size", 0) // heads if heads else 0)
    return heads, head_dim, layers


def update_floor(algo, model: torch.nn.Module, minibatches: list[list]) -> float:
    """The FLOP-floor ratio of one rollout batch's update (every optimizer step's microbatches, as
    TrainBatches), for `algo` on `model`; 1.0 for algorithms with no extra work."""
    linears = model_linears(model)
    heads, head_dim, layers = model_attention(model)
    base = extra = 0.0
    for mbs in minibatches:
        shapes = microbatch_shapes(mbs)
        row_T = max(s.T for s in shapes)
        f = floor_for(algo, linears, heads, head_dim, layers, shapes, model_row_T=row_T)
        base, extra = base + f.base_flops, extra + f.extra_flops
    return (base + extra) / base if base else 1.0
