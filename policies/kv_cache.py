"""KV caches for the hf backend: growth without copies, and prefixes kept across calls.

- `GrowingLayer`: a transformers cache layer that writes each step's keys/values into a buffer
  reserved for the whole call (prompt + ``max_new_tokens``). The stock `DynamicLayer`
  concatenates, copying the whole cache every decode step (O(T^2) bytes over a reply).
- `PrefixStore`: after a generate call, each row's keys/values (its prompt and the reply
  tokens fed back) stay in memory, indexed by their token ids. A later prompt that starts with
  such a sequence reuses them, so only its new tokens are prefilled. In ``full`` context mode
  turn N+1's prompt is turn N's prompt + reply + the next observation, so each turn prefills
  only the observation instead of the whole conversation (prefill grows linearly, not
  quadratically, with turns). Entries are views of the last call's buffers (no copies); the
  store keeps one call's worth and is dropped when the weights change.

Shapes: keys/values (B, H_kv, T, D).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

# Candidate prefixes are indexed by (length, hash of their last _TAIL tokens) and then checked
# token by token, so a lookup costs O(stored lengths x _TAIL) plus one full comparison.
_TAIL = 16


class GrowingLayer(DynamicLayer):
    """A `DynamicLayer` that appends into a preallocated buffer of ``reserve`` positions
    (reallocating, with one copy, only if a call outgrows it)."""

    def __init__(self, reserve: int) -> None:
        super().__init__()
        self.reserve = reserve
        self.buf_k: torch.Tensor | None = None  # (B, H, capacity, D)
        self.buf_v: torch.Tensor | None = None

    def load(self, buf_k: torch.Tensor, buf_v: torch.Tensor, length: int) -> None:
        """Start from buffers whose first ``length`` positions are already filled."""
        self.dtype, self.device = buf_k.dtype, buf_k.device
        self.is_initialized = True
        self.buf_k, self.buf_v = buf_k, buf_v
        self.keys, self.values = buf_k[:, :, :length], buf_v[:, :, :length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = self.get_seq_length()
        need = n + key_states.shape[-2]
        bk = self.buf_k
        if (bk is None or bk.shape[-2] < need or bk.shape[0] != key_states.shape[0]
                or (n and self.keys.data_ptr() != bk.data_ptr())):
            # first call, outgrown, or the batch was reordered by someone else: reallocate
            b, h, _, d = key_states.shape
            cap = max(need, self.reserve)
            self.buf_k = key_states.new_empty((b, h, cap, d))
            self.buf_v = value_states.new_empty((b, h, cap, value_states.shape[-1]))
            if n:
                self.buf_k[:, :, :n] = self.keys
                self.buf_v[:, :, :n] = self.values
        assert self.buf_k is not None and self.buf_v is not None
        self.buf_k[:, :, n:need] = key_states
        self.buf_v[:, :, n:need] = value_states
        self.keys, self.values = self.buf_k[:, :, :need], self.buf_v[:, :, :need]
        return self.keys, self.values

    def select_rows(self, idx: torch.Tensor) -> None:
        """Keep rows ``idx`` (B',) of the batch, e.g. to fan a shared prefill out to a group."""
        assert self.buf_k is not None and self.buf_v is not None
        n = self.get_seq_length()
        self.load(self.buf_k.index_select(0, idx), self.buf_v.index_select(0, idx), n)


def growing_cache(config: Any, reserve: int) -> DynamicCache | None:
    """A cache of `GrowingLayer` for ``config``'s decoder, or None when its layers are not all
    plain full-attention layers (sliding-window or hybrid models keep the stock cache)."""
    cache = DynamicCache(config=config)
    if not cache.layers or any(type(layer) is not DynamicLayer for layer in cache.layers):
        return None
    cache.layers = [GrowingLayer(reserve) for _ in cache.layers]
    return cache


@dataclass
class _Chunk:
    """The keys/values of one finished generate chunk."""

    keys: list[torch.Tensor]  # per layer (B, H, T_cap, D)
    values: list[torch.Tensor]
    valid: torch.Tensor  # (B, T) bool: the columns holding row b's tokens, in order

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)


@dataclass
class Hit:
    """A prompt's longest stored prefix: ``length`` cached tokens of ``chunk``'s row ``row``."""

    chunk: int
    row: int
    length: int


@dataclass
class PrefixStore:
    """Token sequences whose keys/values are kept, with lookup by longest stored prefix."""

    max_bytes: int
    chunks: list[_Chunk] = field(default_factory=list)
    index: dict[tuple[int, int], list[tuple[int, int, tuple[int, ...]]]] = field(
        default_factory=dict)
    lengths: list[int] = field(default_factory=list)  # distinct stored lengths, descending
    nbytes: int = 0

    def add(self, keys: list[torch.Tensor], values: list[torch.Tensor], valid: torch.Tensor,
            tokens: list[list[int]]) -> bool:
        """Keep one chunk's cache; ``tokens[b]`` are the ids in row b's valid columns. Returns
        False (nothing kept) when the store would exceed ``max_bytes``."""
        chunk = _Chunk(keys, values, valid)
        if self.nbytes + chunk.nbytes > self.max_bytes:
            return False
        ci = len(self.chunks)
        self.chunks.append(chunk)
        self.nbytes += chunk.nbytes
        lengths = set(self.lengths)
        for row, ids in enumerate(tokens):
            if len(ids) < 1:
                continue
            t = tuple(ids)
            self.index.setdefault((len(t), hash(t[-_TAIL:])), []).append((ci, row, t))
            lengths.add(len(t))
        self.lengths = sorted(lengths, reverse=True)
        return True

    def lookup(self, prompt: list[int]) -> Hit | None:
        """The longest stored sequence that is a prefix of ``prompt``; at most
        ``len(prompt) - 1`` of its tokens are used (the last prompt token must be run to get
        the next-token logits)."""
        n = len(prompt)
        for L in self.lengths:
            if L > n:
                continue
            for ci, row, t in self.index.get((L, hash(tuple(prompt[max(0, L - _TAIL):L]))), ()):
                if list(t) == prompt[:L]:
                    return Hit(ci, row, min(L, n - 1))
        return None

    def gather(self, hits: list[Hit | None], capacity: int,
               ) -> tuple[list[torch.Tensor], list[torch.Tensor], int]:
        """Keys/values for a new batch: row i gets ``hits[i].length`` cached positions,
        right-aligned to ``C = max length`` (zeros before them, to be masked).

        Returns per-layer buffers (B, H, capacity, D) with the first C positions filled, and C.
        """
        C = max((h.length for h in hits if h is not None), default=0)
        ref = self.chunks[0] if self.chunks else None
        if ref is None or C == 0:
            return [], [], 0
        B = len(hits)
        keys, values = [], []
        for lk, lv in zip(ref.keys, ref.values):
            k = lk.new_empty((B, lk.shape[1], capacity, lk.shape[3]))
            v = lv.new_empty((B, lv.shape[1], capacity, lv.shape[3]))
            k[:, :, :C].zero_()  # masked, but must be finite: 0 x NaN would leak through
            v[:, :, :C].zero_()
            keys.append(k)
            values.append(v)
        by_chunk: dict[int, list[int]] = {}
        for i, h in enumerate(hits):
            if h is not None and h.length > 0:
                by_chunk.setdefault(h.chunk, []).append(i)
        for ci, rows in by_chunk.items():
            ch = self.chunks[ci]
            src = torch.tensor([hits[i].row for i in rows], device=ref.keys[0].device)
            cols = torch.zeros((len(rows), C), dtype=torch.long)
            for j, i in enumerate(rows):
                h = hits[i]
                assert h is not None
                where = ch.valid[h.row].nonzero().squeeze(-1)[:h.length]
                cols[j, C - h.length:] = where.cpu()
            cols = cols.to(ref.keys[0].device)
            dst = torch.tensor(rows, device=ref.keys[0].device)
            for layer, (k, v) in enumerate(zip(keys, values)):
                # (n, C, H, D) from advanced indexing on dims 0 and 2 -> (n, H, C, D)
                k[dst, :, :C] = ch.keys[layer][src[:, None], :, cols, :].permute(0, 2, 1, 3)
                v[dst, :, :C] = ch.values[layer][src[:, None], :, cols, :].permute(0, 2, 1, 3)
        return keys, values, C
