"""How many threads torch trains with: the cores the machine's load leaves free, at least one.

    n = apply_thread_default()       # the CLI's train and quickstart, before training; ANMC_THREADS=N overrides

Measured (benchmarks/threads.py, docs/results.md *Threads*): on a 2-core machine at load average ~11,
one default training step took 0.61 s with one thread and 3.5-6.8 s with two (torch's default here):
threads that wait on each other across time slices the machine hands to other jobs. A quiet machine
gains from every core, so the rule is

    n = max(1, min(torch's default, cores - round(load average over 1 min)))
"""

from __future__ import annotations

import os

import torch


def choose_threads(cores: int, load: float, default: int) -> int:
    """max(1, min(default, cores - round(load)))."""
    return max(1, min(default, cores - round(load)))


def apply_thread_default() -> tuple[int, str]:
    """Set torch's thread count by `choose_threads` (or ANMC_THREADS); returns (n, why) for a log line."""
    env = os.environ.get("ANMC_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        n, why = int(env), "ANMC_THREADS"
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        n = choose_threads(cores, load, torch.get_num_threads())
        why = f"load {load:.1f} on {cores} cores; ANMC_THREADS=N overrides"
    torch.set_num_threads(n)
    return n, why
