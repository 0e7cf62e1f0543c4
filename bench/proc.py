"""CPU time from Linux's /proc, for the benchmarks that split a server's CPU by thread."""

from __future__ import annotations

import os
from pathlib import Path


def cpu_seconds(stat: Path) -> float:
    """User+system CPU seconds so far of a process (``/proc/PID/stat``) or a thread (``task/TID/stat``)."""
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
    except OSError:  # a thread that is not there (yet), or has ended
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
