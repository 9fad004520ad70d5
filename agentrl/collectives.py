"""Global statistics across torchrun ranks, as thin calls into ``torch.distributed``.

Under ``torchrun`` every rank holds a shard of the iteration's groups. Whatever an algorithm or
the learner computes over "the batch" (a min, a mean, a count, a history) must be computed over
the union of the shards, or the update would depend on the number of ranks. These functions do
that with ``torch.distributed`` collectives; outside a process group (one process) each returns
its input's own statistic, computed exactly as before, so the one-process path is unchanged.

Every rank must call the same functions in the same order (they are collectives): a function
here is never called on one rank only, not even for an empty shard.
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def is_distributed() -> bool:
    """Whether a process group of more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def _reduce(values: list[float], op: str) -> list[float]:
    if not is_distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=getattr(dist.ReduceOp, op))
    return t.tolist()


def sum_floats(values: list[float]) -> list[float]:
    """Element-wise sum over ranks of ``values`` (the same length on every rank)."""
    return _reduce(values, "SUM")


def max_floats(values: list[float]) -> list[float]:
    """Element-wise max over ranks."""
    return _reduce(values, "MAX")


def min_floats(values: list[float]) -> list[float]:
    """Element-wise min over ranks."""
    return _reduce(values, "MIN")


def global_min(x: torch.Tensor) -> torch.Tensor:
    """Min of ``x`` (any shape) over every rank's elements; a rank's empty shard counts as +inf.
    0-dim, ``x``'s dtype."""
    if not is_distributed():
        return x.min()
    local = float(x.min()) if x.numel() else float("inf")
    return torch.tensor(min_floats([local])[0], dtype=x.dtype)


def global_max(x: torch.Tensor) -> torch.Tensor:
    """Max of ``x`` over every rank's elements; an empty shard counts as -inf."""
    if not is_distributed():
        return x.max()
    local = float(x.max()) if x.numel() else float("-inf")
    return torch.tensor(max_floats([local])[0], dtype=x.dtype)


def global_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over every rank's elements (each element counts once). 0-dim."""
    if not is_distributed():
        return x.mean()
    s, n = sum_floats([float(x.double().sum()), float(x.numel())])
    return torch.tensor(s / max(n, 1.0), dtype=x.dtype)


def global_mean_std(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, unbiased std) of the 1-D ``x`` over every rank's elements."""
    if not is_distributed():
        return x.mean(), x.std()
    xd = x.double()
    s, s2, n = sum_floats([float(xd.sum()), float((xd * xd).sum()), float(xd.numel())])
    mean = s / max(n, 1.0)
    var = max(s2 - n * mean * mean, 0.0) / max(n - 1.0, 1.0)
    return torch.tensor(mean, dtype=x.dtype), torch.tensor(var ** 0.5, dtype=x.dtype)


def merge_means(local: dict[Any, tuple[float, int]]) -> dict[Any, tuple[float, int]]:
    """Merge per-key (mean, count) statistics of every rank into global ones (keys present on
    any rank; counts add, means are count-weighted)."""
    if not is_distributed():
        return dict(local)
    parts: list[Any] = [None] * world_size()
    dist.all_gather_object(parts, local)
    total: dict[Any, list[float]] = {}
    for part in parts:
        for k, (m, n) in part.items():
            acc = total.setdefault(k, [0.0, 0])
            acc[0] += m * n
            acc[1] += n
    return {k: (s / max(n, 1), int(n)) for k, (s, n) in sorted(total.items())}


def gather_lists(local: list[T]) -> list[T]:
    """Every rank's list, concatenated in rank order (the same result on every rank)."""
    if not is_distributed():
        return list(local)
    parts: list[Any] = [None] * world_size()
    dist.all_gather_object(parts, list(local))
    return [x for part in parts for x in part]


def broadcast(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank (a picklable object)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any (stop decisions)."""
    return bool(max_floats([float(flag)])[0]) if is_distributed() else flag


def mean_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """Per-key mean over the ranks that logged the key (a rank may lack one, e.g. an
    ``alarm/`` or per-turn metric); the same dict on every rank."""
    if not is_distributed():
        return metrics
    parts: list[Any] = [None] * world_size()
    dist.all_gather_object(parts, dict(metrics))
    keys = sorted({k for p in parts for k in p})
    out = {}
    for k in keys:
        vals = [float(p[k]) for p in parts if k in p]
        out[k] = sum(vals) / len(vals)
    return out


def barrier() -> None:
    """Wait for every rank (nothing in one process)."""
    if is_distributed():
        dist.barrier()
