"""The Gaussian MLP policy: mean mu(obs) from a tanh MLP, a state-independent log std.

Built to fit the per-layer machinery of ISOPO / npg_rank1 (trajectories = sequences, steps = tokens):
- Linear layers have no bias (that machinery zeroes Linear bias gradients); a constant-1 input feature
  gives the first layer its offset instead.
- The log std is a one-row nn.Embedding looked up at index 0 for every step, so the machinery's per-token
  embedding rule gives it its REINFORCE gradient; for every other method it is a plain parameter vector.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class GaussianMLP(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 64, init_log_std: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(obs_dim + 1, hidden, bias=False), nn.Tanh(),
            nn.Linear(hidden, hidden, bias=False), nn.Tanh(),
            nn.Linear(hidden, act_dim, bias=False),
        )
        self.log_std = nn.Embedding(1, act_dim)
        with torch.no_grad():
            self.net[-1].weight.mul_(0.01)  # initial actions are the exploration noise, not a random drift
            self.log_std.weight.fill_(init_log_std)

    def forward(self, obs_xO: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, log_std), both shaped like obs with the last dim = act_dim; any leading dims."""
        ones_x1 = torch.ones(*obs_xO.shape[:-1], 1, dtype=obs_xO.dtype, device=obs_xO.device)
        mu_xA = self.net(torch.cat([obs_xO, ones_x1], dim=-1))
        index_x = torch.zeros(obs_xO.shape[:-1], dtype=torch.long, device=obs_xO.device)
        return mu_xA, self.log_std(index_x)


def gaussian_logp(action_xA: torch.Tensor, mu_xA: torch.Tensor, log_std_xA: torch.Tensor) -> torch.Tensor:
    """log N(action; mu, diag(exp(log_std))^2), summed over action dims."""
    z_xA = (action_xA - mu_xA) * torch.exp(-log_std_xA)
    return (-0.5 * z_xA.pow(2) - log_std_xA - 0.5 * math.log(2 * math.pi)).sum(-1)


def gaussian_entropy(log_std_xA: torch.Tensor) -> torch.Tensor:
    return (log_std_xA + 0.5 * math.log(2 * math.pi * math.e)).sum(-1)


def gaussian_kl(mu_old_xA, log_std_old_xA, mu_xA, log_std_xA) -> torch.Tensor:
    """KL(pi_old || pi) of diagonal Gaussians, summed over action dims."""
    var_ratio_xA = torch.exp(2 * (log_std_old_xA - log_std_xA))
    mean_term_xA = (mu_old_xA - mu_xA).pow(2) * torch.exp(-2 * log_std_xA)
    return (0.5 * (var_ratio_xA + mean_term_xA - 1) + log_std_xA - log_std_old_xA).sum(-1)
