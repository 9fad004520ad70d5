"""Padding-free attention for packed training rows.

A packed row holds several sequences end to end. With transformers' ``sdpa`` attention and
position ids restarting per sequence, the model masks attention block-diagonally: correct, but
every row still pays attention over its whole length (``T**2``), and rows are bins as long as
the batch's longest sequence, so the room a bin leaves unfilled is computed too. Here the
sequences of a micro-batch are concatenated into one row with no filler at all, and attention
runs sequence by sequence (``sum(len_i**2)``), as flash-attention's varlen kernels do on GPU.

`enable_varlen` switches a model whose attention is ``sdpa`` to ``agentrl_varlen``: the same
``sdpa`` function (bitwise the same outputs) for every call that does not carry sequence
boundaries — generation, padded training — and the per-sequence loop for a call that passes
``cu_seq_lens_q`` (`varlen_call`). Models on flash-attention already run packed rows varlen.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

VARLEN = "agentrl_varlen"
# attention implementations that attend within the sequences of a packed row by themselves
VARLEN_NATIVE = ("flash_attention_2", "flash_attention_3", "flash_attention_4")

# set while `varlen_call` runs a packed row: the mask the model would build (T x T) is not needed
_PACKED_CALL: contextvars.ContextVar[bool] = contextvars.ContextVar("agentrl_packed_call",
                                                                      default=False)
_registered = False


def varlen_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor,
                     value: torch.Tensor, attention_mask: torch.Tensor | None,
                     dropout: float = 0.0, scaling: float | None = None,
                     is_causal: bool | None = None, **kwargs: Any,
                     ) -> tuple[torch.Tensor, None]:
    """transformers attention function. ``query`` (B, Hq, T, D), ``key``/``value``
    (B, Hkv, T, D). With ``cu_seq_lens_q`` (S+1,) (cumulative sequence starts; B = 1) each
    sequence attends causally to itself only; otherwise it is transformers' ``sdpa``.
    Returns (output (B, T, Hq, D), None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      dropout=dropout, scaling=scaling, is_causal=is_causal,
                                      **kwargs)
    if query.shape[0] != 1:
        raise ValueError(f"varlen attention: a packed call holds one row, got {query.shape[0]}")
    gqa = query.shape[1] != key.shape[1]
    p = dropout if module.training else 0.0
    window = kwargs.get("sliding_window")
    bounds = cu.tolist()
    if bounds[0] != 0 or bounds[-1] != query.shape[2]:
        raise ValueError(f"varlen attention: sequence boundaries {bounds[0]}..{bounds[-1]} do "
                         f"not cover the row's {query.shape[2]} tokens")
    sizes = [b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    outs = []
    # split, not slices: a split's backward is one concatenation, a slice's a full-size zero
    # tensor per sequence
    for q, k, v in zip(query.split(sizes, 2), key.split(sizes, 2), value.split(sizes, 2),
                       strict=True):
        n = q.shape[2]
        if n == 0:
            continue
        band = None
        if window is not None and n > window:  # causal within the window only
            i = torch.arange(n, device=q.device)
            band = (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] < window)
        outs.append(F.scaled_dot_product_attention(q, k, v, attn_mask=band, dropout_p=p,
                                                   is_causal=band is None, scale=scaling,
                                                   enable_gqa=gqa))
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None


def _varlen_mask(*args: Any, **kwargs: Any) -> Any:
    """The ``sdpa`` mask, except in a packed call, where attention needs none."""
    from transformers.masking_utils import sdpa_mask

    return None if _PACKED_CALL.get() else sdpa_mask(*args, **kwargs)


def register() -> None:
    """Make ``agentrl_varlen`` known to transformers (once per process)."""
    global _registered
    if not _registered:
        from transformers import AttentionInterface, AttentionMaskInterface

        AttentionInterface.register(VARLEN, varlen_attention)
        AttentionMaskInterface.register(VARLEN, _varlen_mask)
        _registered = True


def decoder(model: nn.Module) -> nn.Module:
    """The causal LM's decoder stack (``model.model``), which returns hidden states."""
    base = getattr(model, "model", None) or getattr(model, "base_model", None)
    if base is None:
        raise TypeError(f"{type(model).__name__}: cannot find the decoder (model.model)")
    return base


def _config(model: nn.Module) -> Any:
    return getattr(model, "config", None)


def runs_varlen(model: nn.Module) -> bool:
    """Whether ``model`` (or its decoder) attends per sequence in a packed row given the
    sequence boundaries."""
    cfg = _config(model)
    return getattr(cfg, "_attn_implementation", None) in (VARLEN, *VARLEN_NATIVE)


def enable_varlen(model: nn.Module) -> bool:
    """Switch ``model``'s ``sdpa`` attention to ``agentrl_varlen`` (unchanged for every call
    without sequence boundaries) and check that a packed row gives the hidden states of its
    sequences run alone; on a mismatch the model goes back to ``sdpa``. Returns whether the
    model now runs packed rows varlen (also true for flash-attention models)."""
    cfg = _config(model)
    impl = getattr(cfg, "_attn_implementation", None)
    if impl in VARLEN_NATIVE:
        return True
    if impl not in ("sdpa", VARLEN):
        return False
    register()
    cfg._attn_implementation = VARLEN
    if packs_exactly(model, varlen=True):
        return True
    cfg._attn_implementation = impl if impl != VARLEN else "sdpa"
    return False


def packs_exactly(model: nn.Module, varlen: bool = False) -> bool:
    """Whether a sequence packed in one row after another (position ids restarting at 0;
    with ``varlen``, its boundaries passed too) gives the hidden states it gives alone.
    Checked on a few tokens; a model whose call fails cannot pack."""
    dec = decoder(model)
    dev = next(model.parameters()).device
    vocab = model.get_input_embeddings().weight.shape[0]
    ids = (torch.arange(9, device=dev) * 7 + 3) % vocab
    extra = boundaries([4, 5], dev) if varlen else {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), varlen_call() if varlen else contextlib.nullcontext():
            alone = dec(input_ids=ids[None, 4:], position_ids=torch.arange(5, device=dev)[None],
                        use_cache=False).last_hidden_state[0]
            pos = torch.cat([torch.arange(4), torch.arange(5)]).to(dev)[None]
            packed = dec(input_ids=ids[None], attention_mask=None, position_ids=pos,
                         use_cache=False, **extra).last_hidden_state[0, 4:]
    except Exception:  # e.g. a model whose layers do not pass the boundaries through
        return False
    finally:
        model.train(was_training)
    return bool(torch.allclose(alone, packed, atol=1e-4, rtol=1e-3))


def boundaries(lengths: list[int], device: torch.device | str) -> dict[str, Any]:
    """The keyword arguments that carry a packed row's sequence boundaries to the attention
    (flash-attention's names): cumulative starts (S+1,) int32 and the longest length."""
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(lengths, dtype=torch.int32).cumsum(0)
    cu = cu.to(device)
    longest = max(lengths)
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest,
            "max_length_k": longest}


@contextlib.contextmanager
def varlen_call() -> Iterator[None]:
    """Within: the model builds no attention mask (a packed varlen row needs none)."""
    token = _PACKED_CALL.set(True)
    try:
        yield
    finally:
        _PACKED_CALL.reset(token)
