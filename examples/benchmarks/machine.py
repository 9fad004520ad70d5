"""What every benchmark prints next to its figures: the machine, its load, and its limits.

- `describe()`: CPU model, cores, torch threads, torch/transformers versions, load average.
- `matmul_flops()`: fp32 GEMM FLOP/s measured now, at the current thread count (the ceiling a
  training update could reach).
- `memory_bandwidth()`: bytes/s of a large tensor copy (the ceiling for decoding, which reads
  every weight and the KV cache once per step).
- `alternate()`: run A, B, A, B, ... so both sides see the same load; ratios come from pairs.

Absolute figures on a shared machine move with its load; the ratios measured in one run,
alternating, are what to compare.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load_average() -> str:
    try:
        a, b, c = os.getloadavg()
    except OSError:
        return "load n/a"
    return f"load average {a:.2f} {b:.2f} {c:.2f} (1/5/15 min)"


def describe() -> str:
    """One paragraph: hardware, software, threads and load right now."""
    import transformers

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    dev = "CPU"
    if torch.cuda.is_available():
        dev = f"GPU {torch.cuda.get_device_name(0)}"
    return (f"machine: {cpu_model()}, {cores} usable cores ({os.cpu_count()} online), {dev}; "
            f"torch {torch.__version__} with {torch.get_num_threads()} threads, transformers "
            f"{transformers.__version__}; {load_average()}")


def _best_rate(fn: Callable[[], None], work: float, repeats: int) -> float:
    fn()  # warm up (allocation, kernel choice)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return work / best


def matmul_flops(n: int = 512, repeats: int = 5) -> float:
    """fp32 FLOP/s of an n x n x n matmul (best of ``repeats``: the machine's ceiling now)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    return _best_rate(lambda: torch.mm(a, b, out=out), 2.0 * n ** 3, repeats)


def memory_bandwidth(mbytes: int = 256, repeats: int = 5) -> float:
    """Bytes/s moved by a copy of ``mbytes`` MiB (read + write counted)."""
    n = mbytes * 2 ** 20 // 4
    src, dst = torch.randn(n), torch.empty(n)
    return _best_rate(lambda: dst.copy_(src), 2.0 * 4 * n, repeats)


def limits() -> dict[str, float]:
    """Measured ceilings: ``flops`` (fp32 GEMM FLOP/s) and ``bandwidth`` (bytes/s)."""
    return {"flops": matmul_flops(), "bandwidth": memory_bandwidth()}


def alternate(runs: dict[str, Callable[[], Any]], pairs: int) -> dict[str, list[Any]]:
    """Call every run once per round, in a rotating order, ``pairs`` rounds.

    Rotating the order (A B, B A, A B, ...) spreads any drift of the machine's load evenly.
    """
    names = list(runs)
    out: dict[str, list[Any]] = {k: [] for k in names}
    for i in range(pairs):
        order = names if i % 2 == 0 else names[::-1]
        for k in order:
            out[k].append(runs[k]())
    return out


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def paired_ratios(num: list[float], den: list[float]) -> list[float]:
    """num[i] / den[i] for each pair."""
    return [a / b for a, b in zip(num, den) if b > 0]


def header(title: str) -> None:
    print(f"\n=== {title} ===")
    print(describe())


# ----------------------------------------------------------------------- model-side limits

def kv_bytes_per_token(config: Any, dtype_bytes: int = 4) -> int:
    """Bytes of keys + values one token leaves in the cache (all layers)."""
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim * dtype_bytes


def train_flops(model: Any, tokens: int, mean_len: float) -> float:
    """Forward + backward FLOPs of ``tokens`` tokens in sequences of ``mean_len``: 6 x
    (non-embedding parameters) per token plus causal attention (QK^T and AV: 2 x 2 x L/2 x d per
    layer, forward; x3 with the backward)."""
    c = model.config
    emb = model.get_input_embeddings().weight.numel()
    # the LM head is a matmul even when tied to the (lookup-only) input embedding
    dense = sum(p.numel() for p in model.parameters()) - emb
    if getattr(c, "tie_word_embeddings", False):
        dense += emb
    attn = 3 * 2 * 2 * (mean_len / 2) * c.hidden_size * c.num_hidden_layers
    return tokens * (6 * dense + attn)


def decode_step_seconds(model: Any, batch: int, context: int, steps: int = 12) -> float:
    """Median seconds of one decode step of ``batch`` rows over ``context`` cached tokens."""
    from transformers.cache_utils import DynamicCache

    ids = torch.zeros((batch, context), dtype=torch.long)
    times = []
    with torch.inference_mode():
        out = model(input_ids=ids, use_cache=True, past_key_values=DynamicCache(config=model.config),
                    logits_to_keep=1)
        past = out.past_key_values
        for i in range(steps):
            t0 = time.perf_counter()
            out = model(input_ids=ids[:, :1], position_ids=torch.full((batch, 1), context + i),
                        past_key_values=past, use_cache=True)
            times.append(time.perf_counter() - t0)
            past = out.past_key_values
    return median(times)


def parser(doc: str | None) -> Any:
    """An argument parser with the options every benchmark takes: ``--pairs`` (alternating
    rounds) and ``--threads`` (torch threads)."""
    import argparse

    ap = argparse.ArgumentParser(description=(doc or "").split("\n")[0])
    ap.add_argument("--pairs", type=int, default=3, help="alternating rounds (>= 3 for a median)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    return ap
