"""isopo-bench: a controlled benchmark of proximal policy methods for LLM reinforcement learning."""

__version__ = "0.1.0"
