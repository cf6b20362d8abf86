"""Rows grouped by the value of an index (edges by receiver), for kernels that scatter by it: the
native CPU kernels (`fusionc.runtime.native`) and the Triton table kernel's grouped scatters
(`fusionc.runtime.tables`) run each group's rows in row order, one group per thread or lane, so
that every sum lands the same way run after run."""

from __future__ import annotations

import threading

import torch

#: Groupings kept: a few graphs at once (forward, backward and double backward share one)
KEPT = 8

_lock = threading.Lock()
_kept: dict[tuple[int, int, int], tuple[torch.Tensor, torch.Tensor]] = {}


def groups(index: torch.Tensor, count: int) -> torch.Tensor:
    """int64 on the index's device: the start of each of `count` groups (count + 1 values), then the
    rows in group order, each group's in row order. Made once per index tensor: kept for the last
    few (by identity and version, the tensor held so that its identity is not reused)."""
    key = (id(index), index._version, count)
    found = _kept.get(key)
    if found is not None and found[0] is index:
        return found[1]
    order = torch.argsort(index, stable=True)
    start = torch.zeros(count + 1, dtype=torch.int64, device=index.device)
    torch.cumsum(torch.bincount(index, minlength=count), 0, out=start[1:])
    grouped = torch.cat([start, order])
    with _lock:
        if len(_kept) >= KEPT:
            _kept.pop(next(iter(_kept)))
        _kept[key] = (index, grouped)
    return grouped
