"""Settings of the per-step diagnostics (RunConfig.diagnostics). Diagnostics never change training, so
these fields are not part of the experiment's identity (config.experiment_hash drops them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DiagnosticsConfig:
    proximity_every: int = 4
    """Proximity diagnostics (exact token KL before/after the step, log-ratio statistics, surrogate
    improvement) every this many optimizer steps, the first always; 1 = every step; 0 = off. They cost two
    no-grad forwards of the minibatch (about 30% of a quick-tier step), hence the default 4."""
    alignment_every: int = 20
    """Natural-gradient alignment (cosines with the damped natural gradient, Fisher length of the update)
    every this many optimizer steps, the first always; 0 = off. With proximity_every=4 the default keeps the
    quick tier's extra wall time under 15% (measured: README, "Per-step diagnostics"). Under FSDP2
    (sharded parameters) both are skipped, with a log line: they need full parameters and gradients."""
    rhos: tuple[float, ...] = (1e-2, 1.0)
    """Damping levels rho: lambda = rho * tr(K) / B^2 (per layer: rho * tr(K_l) / B^2)."""
    kl_chunk: int = 1024
    """Response positions whose full-vocabulary distributions are held at once (chunk x V logits)."""
    budget_mb: int = 256
    """Most memory (MiB) one parameter's per-sequence gradient chunk (B x rows x cols) may take."""

    def due(self, every: int, opt_step: int) -> bool:
        """`opt_step` counts optimizer steps from 0 over the run (StepContext.step)."""
        return every > 0 and opt_step % every == 0

    @property
    def enabled(self) -> bool:
        return self.proximity_every > 0 or self.alignment_every > 0
