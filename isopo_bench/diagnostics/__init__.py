"""Per-step diagnostics of what an update does to the policy (docs/diagnostics.md): proximity (exact token
KL before/after the step, log-ratio statistics, surrogate improvement) and alignment with the damped natural
gradient of the batch (Woodbury form on the layer-wise engine's capture path).

- settings.py: `DiagnosticsConfig` (RunConfig.diagnostics; not part of the config hash);
- proximity.py: chunked full-vocabulary KL from head inputs;
- capture.py: per-sequence scores (Linear a_t / g_t, norms, embedding) from one capture backward;
- alignment.py: K, U x, the cosines and the Fisher length;
- monitor.py: `StepDiagnostics`, the two calls the trainer makes around each optimizer step.
"""

from isopo_bench.diagnostics.settings import DiagnosticsConfig

__all__ = ["DiagnosticsConfig"]
