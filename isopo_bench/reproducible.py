"""Same bits whatever the caller's settings: a context for CPU work whose result is cached and shipped.

Float reductions are not associative, so a matmul split over 1 or 2 threads can round differently; a
training run that starts from such a difference drifts away (a warm start trained on 2 threads and on 1
is a different model). Inside `reproducible_cpu(seed)` torch runs `threads` intra-op threads, uses only
deterministic algorithms, and the torch, Python and NumPy generators start from `seed`; on exit every one
of these is restored, so the caller's thread count and random streams are as they were.
"""

from __future__ import annotations

import random
from contextlib import contextmanager

import numpy as np
import torch


@contextmanager
def reproducible_cpu(seed: int, threads: int = 1):
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    saved_threads = torch.get_num_threads()
    saved_deterministic = (torch.are_deterministic_algorithms_enabled(),
                           torch.is_deterministic_algorithms_warn_only_enabled())
    saved_python, saved_numpy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):  # CPU generator only: the work here runs on the CPU
        try:
            torch.set_num_threads(threads)
            torch.use_deterministic_algorithms(True)
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2**32)
            yield
        finally:
            torch.set_num_threads(saved_threads)
            torch.use_deterministic_algorithms(saved_deterministic[0], warn_only=saved_deterministic[1])
            random.setstate(saved_python)
            np.random.set_state(saved_numpy)
