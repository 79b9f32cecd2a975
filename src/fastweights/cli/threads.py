"""CPU threads for torch: the ``--threads`` option that every command shares, and its default.

torch's intra-op thread pool (OpenMP) splits each operation over its threads and waits at the end
of every operation for the slowest one. If another job keeps one of the cores busy, the thread that
shares it runs a fraction of the time and every operation waits for it: on a 2-core machine with
one core busy, two threads trained the shakespeare-char model 2.4x slower than one thread (3,343
against 8,086 tokens/s; the issue that led here measured 22x with a heavier neighbour), while on
an idle machine two threads were 1.6x faster (13,424 against 8,365). So the default,
:func:`default_threads`, takes only the CPUs that are not busy: torch's own choice, but no more than
this process's CPUs less those that other work keeps busy now (measured over 0.1 s from
``/proc/stat``, for this process's CPUs only, so a container sees its own; elsewhere the 1-minute
load average), at least 1. ``OMP_NUM_THREADS``, when set, is taken as the user's choice, and
``--threads N`` overrides both. The number of threads does not change results beyond float
rounding (the losses above were equal to the last digit).
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Dict, Optional, Tuple

import torch

from .arguments import at_least

ENV = "OMP_NUM_THREADS"


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _cpu_times() -> Dict[int, Tuple[int, int]]:
    """``{cpu: (busy, total)}`` clock ticks of this process's CPUs since boot, from ``/proc/stat``."""
    mine = os.sched_getaffinity(0)
    times = {}
    with open("/proc/stat", encoding="ascii") as f:
        for line in f:
            name, *fields = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in mine:
                ticks = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
                times[int(name[3:])] = (sum(ticks) - ticks[3] - ticks[4], sum(ticks))
    return times


def busy_cpus(seconds: float = 0.1) -> int:
    """About how many of this process's CPUs other work keeps busy: their busy share over ``seconds``
    (Linux; this process sleeps meanwhile), rounded; elsewhere the 1-minute load average, rounded
    (0 where the OS has neither)."""
    try:
        before = _cpu_times()
        time.sleep(seconds)
        after = _cpu_times()
        return round(
            sum(
                (after[c][0] - b[0]) / (after[c][1] - b[1])
                for c, b in before.items()
                if c in after and after[c][1] > b[1]
            )
        )
    except (OSError, AttributeError, ValueError, IndexError):
        pass
    try:
        return round(os.getloadavg()[0])
    except (AttributeError, OSError):
        return 0


def default_threads() -> int:
    """The ``--threads`` default: ``$OMP_NUM_THREADS`` if set, else torch's default thread count
    limited to the CPUs that are not busy (:func:`usable_cpus` - :func:`busy_cpus`), at least 1."""
    if os.environ.get(ENV, "").strip():
        return torch.get_num_threads()  # torch reads the variable itself
    return max(1, min(torch.get_num_threads(), usable_cpus() - busy_cpus()))


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--threads N`` to a command's parser (``args.threads``: None until :func:`set_threads`)."""
    parser.add_argument(
        "--threads",
        type=at_least(1),
        metavar="N",
        help=f"CPU threads for torch (default: ${ENV} if set, else the CPUs that other work leaves idle, "
        f"at most torch's default of {torch.get_num_threads()}; fewer threads are much faster than "
        f"threads that share a core with another job)",
    )


def set_threads(requested: Optional[int]) -> int:
    """Set torch's CPU threads to ``requested`` or, if None, :func:`default_threads`; returns the number."""
    threads = requested if requested is not None else default_threads()
    torch.set_num_threads(threads)
    return threads


def describe_threads() -> str:
    """``1 thread(s) on 2 CPU(s)``: torch's threads and this process's CPUs, for the commands' status lines."""
    return f"{torch.get_num_threads()} thread(s) on {usable_cpus()} CPU(s)"
