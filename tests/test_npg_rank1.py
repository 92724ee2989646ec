"""npg_rank1 equals an explicit per-layer solve lambda (lambda' I + sum_{u in S} u u^T)^-1 g in parameter
space (float64 tiny Qwen3, 4 padded sequences of unequal length), and reduces to ISOPO / REINFORCE where
SEED_METHODS.md says it does."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM
from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm

from isopo_bench.aggregation import aggregate
from isopo_bench.algorithms.isopo import IsopoSettings
from isopo_bench.algorithms.npg_rank1 import NpgSettings
from isopo_bench.batch import BatchTotals, TrainBatch, pad_and_stack, sequence_logprobs
from isopo_bench.config import AlgorithmConfig
from isopo_bench.layerwise import batched as layerwise_batched
from isopo_bench.layerwise.draws import sample_index
from isopo_bench.layerwise.kernels import EPS_DAMP
from isopo_bench.plugin_settings import build_algorithm
from isopo_bench.step_driver import accumulate

F64, VOCAB, SEED = torch.float64, 40, 0
ADV = [1.0, -0.5, 0.3, -0.8]
LENGTHS = [(3, 5), (2, 2), (4, 7), (1, 3)]
AGG = "seq-mean-token-sum"


@pytest.fixture(autouse=True)
def float64_rms_norm(monkeypatch):
    """Qwen3RMSNorm computes in float32 even in a float64 model; the explicit solve needs float64 throughout.
    (Class-level: the algorithm's own forward overrides are instance attributes.)"""

    def forward(self, hidden_BTD):
        variance_BT1 = hidden_BTD.pow(2).mean(-1, keepdim=True)
        return self.weight * (hidden_BTD * torch.rsqrt(variance_BT1 + self.variance_epsilon))

    monkeypatch.setattr(Qwen3RMSNorm, "forward", forward)


def tiny_model(tied: bool = False) -> torch.nn.Module:
    torch.manual_seed(1)
    config = Qwen3Config(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, max_position_embeddings=64, tie_word_embeddings=tied,
        pad_token_id=0, initializer_range=0.3,
    )
    return Qwen3ForCausalLM(config).to(F64).train()


def make_batch() -> TrainBatch:
    gen = torch.Generator().manual_seed(2)
    seqs = [torch.randint(1, VOCAB, (p + c,), generator=gen).tolist() for p, c in LENGTHS]
    ids, attn, resp, _ = pad_and_stack([s[:p] for s, (p, _) in zip(seqs, LENGTHS)],
                                       [s[p:] for s, (p, _) in zip(seqs, LENGTHS)], 0, "right")
    return TrainBatch(ids, attn, resp.to(F64), torch.tensor(ADV, dtype=F64))


def totals_of(mb: TrainBatch) -> BatchTotals:
    return BatchTotals(float(mb.response_mask_BT.sum()), mb.size, 1, 16)


def cfg_of(name: str, fisher: str = "one", npg_damping: float = 1.0, **engine) -> AlgorithmConfig:
    """npg_rank1 takes (fisher, npg_damping) and the engine settings; the isopo names take `engine` as theirs."""
    if name == "npg_rank1":
        return AlgorithmConfig(name=name, loss_agg=AGG, settings=NpgSettings(fisher, npg_damping, **engine))
    return AlgorithmConfig(name=name, loss_agg=AGG, settings=IsopoSettings(**engine) if "isopo" in name else None)


def algo_grads(model, cfg: AlgorithmConfig, mb: TrainBatch) -> dict[str, torch.Tensor]:
    if cfg.name == "reinforce":
        return reinforce_grads(model, mb)
    algo = build_algorithm(cfg, seed=SEED)
    algo.attach(model)
    accumulate(algo, model, [mb], totals_of(mb))
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def reinforce_grads(model, mb: TrainBatch) -> dict[str, torch.Tensor]:
    """The REINFORCE gradient from its definition, d/dtheta aggregate(-A logp)."""
    model.zero_grad(set_to_none=True)
    aggregate(-mb.advantages_B[:, None] * sequence_logprobs(model, mb), mb.response_mask_BT, AGG, totals_of(mb)).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def linear_seq_grads(model, mb: TrainBatch) -> dict[str, torch.Tensor]:
    """{Linear weight name: G_BD}, each sequence's gradient of its share of the advantage-free loss."""
    names = [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    params = dict(model.named_parameters())
    logp = sequence_logprobs(model, mb)
    out = {n: [] for n in names}
    for i in range(mb.size):
        row = torch.zeros(mb.size, 1, dtype=F64)
        row[i] = 1
        loss_i = aggregate(-logp, mb.response_mask_BT * row, AGG, totals_of(mb))
        for n, g in zip(names, torch.autograd.grad(loss_i, [params[n] for n in names], retain_graph=True)):
            out[n].append(g.flatten())
    return {n: torch.stack(v) for n, v in out.items()}


def explicit_solve(G_BD: torch.Tensor, A_B: torch.Tensor, fisher: str, c: float) -> torch.Tensor:
    """lambda (lambda' I + U^T U)^-1 g in parameter space (lambda' = lambda + ISOPO's 1e-8)."""
    B, D = G_BD.shape
    j = sample_index(SEED, 0, 0, B)
    # `one` scales its damping by the sampled sequence's |G_j|^2 (an unbiased estimate of tr K / B).
    lam = c * ((G_BD[j] ** 2).sum() if fisher == "one" else (G_BD**2).sum() / B)
    eye = torch.eye(D, dtype=F64)
    g_D = A_B @ G_BD
    if fisher == "own":  # each sequence's term preconditioned by its own score
        return sum(lam * torch.linalg.solve((lam + EPS_DAMP) * eye + torch.outer(G, G), a * G) for a, G in zip(A_B, G_BD))
    U = {"one": G_BD[[j]], "mean": G_BD.mean(0, keepdim=True), "all": G_BD}[fisher]
    return lam * torch.linalg.solve((lam + EPS_DAMP) * eye + U.T @ U, g_D)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("mode", ["fast", "faithful"])
@pytest.mark.parametrize("fisher", ["one", "own", "mean", "all"])
def test_each_setting_equals_explicit_per_layer_solve(fisher, mode):
    model, mb = tiny_model(), make_batch()
    actual = algo_grads(model, cfg_of("npg_rank1", fisher, npg_damping=0.3, mode=mode, other_params="reference"), mb)
    per_seq = linear_seq_grads(model, mb)
    assert len(per_seq) == 8  # q, k, v, o, gate, up, down, lm_head
    for name, G_BD in per_seq.items():
        expected = explicit_solve(G_BD, mb.advantages_B, fisher, 0.3)
        assert rel_err(actual[name].flatten(), expected) < 1e-10, name


@pytest.mark.parametrize("plan", ["ghost", "materialise", "chunked"])
@pytest.mark.parametrize("fisher", ["one", "own", "mean"])
def test_cost_plans_agree(fisher, plan):
    model, mb = tiny_model(tied=True), make_batch()
    forced = dict(fast_plan="materialise", materialise_budget_mb=0) if plan == "chunked" else dict(fast_plan=plan)
    ref = algo_grads(model, cfg_of("npg_rank1", fisher, mode="faithful"), mb)
    actual = algo_grads(model, cfg_of("npg_rank1", fisher, **forced), mb)
    for name in ref:
        assert rel_err(actual[name], ref[name]) < 1e-10, name


@pytest.mark.parametrize("batching", ["batched", "per-layer"])
def test_all_equals_isopo_interacting(batching, monkeypatch):
    if batching == "per-layer":
        monkeypatch.setattr(layerwise_batched, "MAX_BATCHED_MB", 0)
    model, mb = tiny_model(tied=True), make_batch()
    actual = algo_grads(model, cfg_of("npg_rank1", "all", npg_damping=0.2), mb)
    expected = algo_grads(model, cfg_of("isopo-interacting", damping=0.2), mb)
    assert set(actual) == set(expected)
    for name in expected:
        assert torch.equal(actual[name], expected[name]), name


def test_own_equals_isopo_p2_keep_small():
    model, mb = tiny_model(tied=True), make_batch()
    actual = algo_grads(model, cfg_of("npg_rank1", "own", npg_damping=0.5), mb)
    expected = algo_grads(model, cfg_of("isopo", p=2.0, q=0.0, r=0.0, reg_n=0.5, reg_form="keep-small"), mb)
    for name in expected:
        # ISOPO's own constants: x~ = sqrt(x^2 / (lambda + 1e-8) + 1), s = 1 / (x~^2 + 1e-8).
        assert rel_err(actual[name], expected[name]) < 1e-6, name


@pytest.mark.parametrize("fisher", ["one", "own", "mean", "all"])
def test_huge_damping_equals_reinforce(fisher):
    model, mb = tiny_model(tied=True), make_batch()
    actual = algo_grads(model, cfg_of("npg_rank1", fisher, npg_damping=1e9), mb)
    expected = algo_grads(model, cfg_of("reinforce"), mb)
    assert set(actual) == set(expected)
    for name in expected:
        # 1e-6, not 1e-10: ISOPO's per-token rule for norm weights (shared machinery) recomputes the norm in
        # float32 as the HF forward does, so upstream gradients round differently from REINFORCE's.
        assert rel_err(actual[name], expected[name]) < 1e-6, name


def test_mean_shifts_all_advantages_by_one_constant():
    """The `mean` gradient is REINFORCE's with A - c for one c per layer: solve for c on one layer."""
    model, mb = tiny_model(), make_batch()
    actual = algo_grads(model, cfg_of("npg_rank1", "mean", npg_damping=0.3, other_params="reference"), mb)
    G_BD = linear_seq_grads(model, mb)["model.layers.0.mlp.down_proj.weight"]
    w_B = torch.linalg.lstsq(G_BD.T, actual["model.layers.0.mlp.down_proj.weight"].flatten()).solution
    lam = 0.3 * (G_BD**2).sum() / 4
    shift_B = mb.advantages_B - w_B * (lam + EPS_DAMP) / lam
    assert float(shift_B.std()) < 1e-9 and abs(float(shift_B.mean())) > 1e-6
