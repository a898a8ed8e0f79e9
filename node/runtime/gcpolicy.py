"""Garbage collection of a node process: the startup heap is frozen out of full collections (issue 17).

A full (generation 2) collection walks every tracked container object the process holds. In a running node
about 110,000 of the ~127,000 are what imports and startup left (functions, types, module dicts of libp2p,
hypercorn, starlette, pydicom...), and they live as long as the process. Every node allocates at the same
pace under the same load, so their full collections came within a second of each other, each holding the
event loop (and the GIL) for 60-100 ms of CPU, 0.3-0.8 s of wall time on the shared 2-core machine: all four
members stopped at once, and every commit-mode call in flight waited for it (measured with a stall
instrument on the s6-latency branch; docs/PERFORMANCE.md, "What makes the half-load tail"). `gc.freeze()`
moves what exists after startup into the permanent generation, which collections never walk; what the node
allocates later is collected as before. The cost: a reference cycle among the frozen objects is never freed (a startup leftover: bounded).
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> int:
    """Collect what startup left as garbage, then freeze everything alive; returns how many were frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
