"""The learner's forward pass: per-token logprobs, entropy and hidden states of the action
tokens of a batch, exactly as the sampler's behaviour distribution gives them
(`agentrl.policies.base.behaviour_logprobs`), and the micro-batch plans that keep it within a
token budget: rows packed without filler (`pack_rows`, padding-free attention through
`agentrl.learn.varlen`) or padded.

Logits are formed only at action positions (hidden states of those positions through the LM
head), which keeps memory at O(action tokens x vocab) instead of O(all tokens x vocab), and
only ``train.logits_chunk`` vocabulary values at a time (`head_outputs`), so at a real
vocabulary no micro-batch's float32 logits exist at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from agentrl.config import LOGITS_CHUNK
from agentrl.learn.batch import Batch, ModelOutputs
from agentrl.learn.varlen import boundaries, packs_exactly, runs_varlen, varlen_call
from agentrl.learn.varlen import decoder as _decoder
from agentrl.policies.base import behaviour_logprobs


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """First-fit-decreasing bins of row indices whose lengths sum to at most ``capacity``
    (a row longer than the capacity gets a bin of its own)."""
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for b, r in enumerate(room):
            if lengths[i] <= r:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(capacity - lengths[i])
    return bins


def _packed_hidden(decoder: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   capacity: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Run right-padded rows (n, L) packed: each sequence keeps its tokens and its positions
    0..len-1. A model that runs varlen (`agentrl.learn.varlen`) gets them all in one row with no
    filler (`_varlen_hidden`); otherwise they go several to a row of length ``capacity``
    (>= L), and position ids restarting at 0 make transformers mask attention
    block-diagonally (a token sees only its own sequence). Returns (hidden (R, row length,
    H), packed row of each input row (n,), its offset (n,)), or None when packing saves no row.
    """
    n, L = input_ids.shape
    L = max(L, capacity)
    lengths = attention_mask.sum(-1)
    if runs_varlen(decoder):
        return _varlen_hidden(decoder, input_ids, attention_mask, lengths.tolist())
    bins = pack_rows(lengths.tolist(), L)
    if len(bins) >= n:
        return None
    dev = input_ids.device
    row_of = torch.empty(n, dtype=torch.long)
    offset = torch.empty(n, dtype=torch.long)
    lens = lengths.tolist()
    for r, members in enumerate(bins):
        o = 0
        for i in members:
            row_of[i], offset[i] = r, o
            o += lens[i]
    row_of, offset = row_of.to(dev), offset.to(dev)
    i_idx, t_idx = attention_mask.nonzero(as_tuple=True)  # every real token
    dst_r, dst_c = row_of[i_idx], offset[i_idx] + t_idx
    ids = torch.zeros((len(bins), L), dtype=input_ids.dtype, device=dev)
    ids[dst_r, dst_c] = input_ids[i_idx, t_idx]
    # Filler after a bin's last sequence only follows it causally: nothing real attends to it.
    pos = torch.arange(L, device=dev).repeat(len(bins), 1)
    pos[dst_r, dst_c] = t_idx
    hidden = decoder(input_ids=ids, attention_mask=None, position_ids=pos,
                     use_cache=False).last_hidden_state
    return hidden, row_of, offset


def _varlen_hidden(decoder: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded rows (n, L) concatenated into one row of their real tokens only (no
    filler), each sequence attending to itself (`agentrl.learn.varlen`). Returns (hidden
    (1, sum(lengths), H), row 0 for every input row (n,), each row's offset (n,))."""
    dev = input_ids.device
    n = len(lengths)
    offset = torch.zeros(n, dtype=torch.long)
    offset[1:] = torch.tensor(lengths[:-1], dtype=torch.long).cumsum(0)
    i_idx, t_idx = attention_mask.nonzero(as_tuple=True)  # every real token, row by row
    ids, pos = input_ids[i_idx, t_idx][None], t_idx[None]
    with varlen_call():
        hidden = decoder(input_ids=ids, attention_mask=None, position_ids=pos, use_cache=False,
                         **boundaries(lengths, dev)).last_hidden_state
    return hidden, torch.zeros(n, dtype=torch.long, device=dev), offset.to(dev)


def supports_packing(model: nn.Module) -> bool:
    """Whether ``model`` masks attention between sequences packed in one row by their position
    ids (transformers' sdpa/eager/flash masks do; an older or custom model may not)."""
    return packs_exactly(model)


@dataclass(frozen=True)
class HeadSpec:
    """How the LM head's logits at the action positions become what the learner needs: the
    behaviour distribution (`behaviour_logprobs`: softcap, ``temperature``, the constraint mask
    ``allowed`` {row: {col: allowed ids}}, ``top_k`` / ``top_p``), the entropy if ``entropy``
    (with a graph if ``entropy_grad``), formed ``chunk`` vocabulary values at a time (0: all
    positions at once)."""

    temperature: float = 1.0
    softcap: float | None = None
    allowed: dict[int, dict[int, list[int]]] | None = None
    top_k: int = 0
    top_p: float = 1.0
    entropy: bool = False
    entropy_grad: bool = True
    chunk: int = LOGITS_CHUNK


def _head_piece(head: nn.Module, h: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                tok: torch.Tensor, spec: HeadSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Logprob (p,) and entropy (p,) (zeros unless ``spec.entropy``) of the tokens ``tok`` (p,)
    from hidden states ``h`` (p, H) at positions (``rows``, ``cols``): one chunk's logits."""
    logits = head(h).float()  # (p, V)
    allow = None
    if spec.allowed:
        mask = torch.zeros_like(logits, dtype=torch.bool)
        constrained = torch.zeros(len(rows), dtype=torch.bool, device=logits.device)
        for p, (r, c) in enumerate(zip(rows.tolist(), cols.tolist())):
            ids = spec.allowed.get(r, {}).get(c)
            if ids is not None:
                mask[p, ids] = True
                constrained[p] = True
        allow = mask | ~constrained[:, None]
    logp_all = behaviour_logprobs(logits, spec.temperature, spec.softcap, allow, spec.top_k,
                                  spec.top_p, keep=tok)
    lp = logp_all.gather(-1, tok[:, None]).squeeze(-1)
    if not spec.entropy:
        return lp, torch.zeros_like(lp)
    with torch.set_grad_enabled(spec.entropy_grad and torch.is_grad_enabled()):
        ent = -(logp_all.exp() * logp_all).sum(-1)
    return lp, ent


def _chunk_mask(allowed: dict[int, dict[int, list[int]]] | None, rows: torch.Tensor,
                cols: torch.Tensor, vocab: int, device: torch.device) -> torch.Tensor | None:
    """(p, V) bool: the ids a constrained position may draw (every id elsewhere); None when
    no position of the chunk is constrained."""
    if not allowed:
        return None
    mask = torch.ones((len(rows), vocab), dtype=torch.bool, device=device)
    any_ = False
    for p, (r, c) in enumerate(zip(rows.tolist(), cols.tolist())):
        ids = allowed.get(r, {}).get(c)
        if ids is not None:
            mask[p] = False
            mask[p, ids] = True
            any_ = True
    return mask if any_ else None


def _chunk_logits(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  spec: HeadSpec, allow: torch.Tensor | None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(softcapped logits y (p, V), behaviour logits z = y / T masked (p, V)), float32."""
    y = torch.nn.functional.linear(h, weight, bias).float()
    if spec.softcap:
        y = torch.tanh(y / spec.softcap) * spec.softcap
    z = y / spec.temperature if spec.temperature != 1.0 else y
    if allow is not None:
        z = torch.where(allow, z, torch.finfo(z.dtype).min)
    return y, z


class _ChunkedHead(torch.autograd.Function):
    """Logprob and entropy of ``tok`` under softmax(z) with z the behaviour logits of
    ``h @ weight.T + bias``, ``per`` positions at a time. Forward keeps only the logsumexp and
    the entropy per position; backward forms each chunk's logits again and applies the
    closed-form gradient: dlp/dz = onehot(tok) - p, dH/dz = -p (z - lse + H)."""

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                rows: torch.Tensor, cols: torch.Tensor, tok: torch.Tensor, spec: HeadSpec,
                per: int) -> tuple[torch.Tensor, torch.Tensor]:
        lps, lses, ents = [], [], []
        for s in range(0, len(tok), per):
            allow = _chunk_mask(spec.allowed, rows[s:s + per], cols[s:s + per],
                                weight.shape[0], h.device)
            _, z = _chunk_logits(h[s:s + per], weight, bias, spec, allow)
            logp = torch.log_softmax(z, dim=-1)
            t = tok[s:s + per, None]  # always allowed: lse = z - logp there
            lps.append(logp.gather(-1, t).squeeze(-1))
            lses.append(z.gather(-1, t).squeeze(-1) - lps[-1])
            if spec.entropy:
                ents.append(-logp.exp().mul_(logp).sum(-1))
        lse = torch.cat(lses)
        ent = torch.cat(ents) if spec.entropy else torch.zeros_like(lse)
        ctx.save_for_backward(h, weight, bias, rows, cols, tok, lse, ent)
        ctx.spec, ctx.per = spec, per
        if not spec.entropy:
            ctx.mark_non_differentiable(ent)
        return torch.cat(lps), ent

    @staticmethod
    def backward(ctx: Any, g_lp: torch.Tensor | None, g_ent: torch.Tensor | None
                 ) -> tuple[torch.Tensor | None, ...]:
        h, weight, bias, rows, cols, tok, lse, ent = ctx.saved_tensors
        spec, per = ctx.spec, ctx.per
        g_h = torch.zeros_like(h) if ctx.needs_input_grad[0] else None
        g_w = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        g_b = torch.zeros_like(bias, dtype=torch.float32) \
            if bias is not None and ctx.needs_input_grad[2] else None
        for s in range(0, len(tok), per):
            sl = slice(s, s + per)
            allow = _chunk_mask(spec.allowed, rows[sl], cols[sl], weight.shape[0], h.device)
            y, z = _chunk_logits(h[sl], weight, bias, spec, allow)
            # in place unless z is y and y is still needed (the softcap's gradient)
            logp = z - lse[sl, None] if z is y and spec.softcap else z.sub_(lse[sl, None])
            g_z = logp.exp()  # p, then the gradient in place
            if g_ent is not None and spec.entropy and spec.entropy_grad:
                if allow is not None:  # p = 0 there; a finite factor keeps 0 * it at 0
                    logp.masked_fill_(~allow, 0.0)
                coef = logp.add_(ent[sl, None]).mul_(g_ent[sl, None])
                if g_lp is not None:
                    coef.add_(g_lp[sl, None])
                g_z.mul_(coef)
            elif g_lp is not None:
                g_z.mul_(g_lp[sl, None])
            else:
                g_z.zero_()
            g_z.neg_()
            if g_lp is not None:
                g_z.scatter_add_(-1, tok[sl, None], g_lp[sl, None])
            if spec.temperature != 1.0:
                g_z = g_z / spec.temperature
            if spec.softcap:
                g_z = g_z * (1 - (y / spec.softcap) ** 2)
            g_z = g_z.to(h.dtype)
            if g_h is not None:
                g_h[sl] = g_z @ weight
            if g_w is not None:
                g_w += g_z.T.float() @ h[sl].float()
            if g_b is not None:
                g_b += g_z.float().sum(0)
        g_w = g_w.to(weight.dtype) if g_w is not None else None
        g_b = g_b.to(bias.dtype) if g_b is not None else None
        return g_h, g_w, g_b, None, None, None, None, None


def head_outputs(head: nn.Module, h: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                 tok: torch.Tensor, spec: HeadSpec) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logprob (P,) and entropy (P,) (None unless ``spec.entropy``) of the action tokens ``tok``
    (P,) from their predicting hidden states ``h`` (P, H), through the LM ``head``.

    The logits are formed ``spec.chunk`` vocabulary values at a time, so no (P, V) float32
    tensor exists at once: a plain linear head runs `_ChunkedHead` (the backward forms each
    chunk's logits again, one more head matmul, and applies the closed-form gradient); any
    other head, or top-k / top-p truncation, checkpoints each chunk of `_head_piece`. Rows of
    the softmax are independent, so the values equal the one-chunk ones up to float rounding
    (~1e-7)."""
    vocab = int(getattr(head, "out_features", 0) or head.weight.shape[0])
    per = max(1, spec.chunk // max(1, vocab)) if spec.chunk else len(tok)
    if per >= len(tok):
        lp, ent = _head_piece(head, h, rows, cols, tok, spec)
        return lp, (ent if spec.entropy else None)
    if type(head) is nn.Linear and not spec.top_k and spec.top_p >= 1.0:
        lp, ent = _ChunkedHead.apply(h, head.weight, head.bias, rows, cols, tok, spec, per)
        return lp, ((ent if spec.entropy_grad else ent.detach()) if spec.entropy else None)
    grad = torch.is_grad_enabled()
    pieces = []
    for s in range(0, len(tok), per):
        args = (head, h[s:s + per], rows[s:s + per], cols[s:s + per], tok[s:s + per], spec)
        pieces.append(checkpoint(_head_piece, *args, use_reentrant=False) if grad
                      else _head_piece(*args))
    lp = torch.cat([p[0] for p in pieces])
    return lp, (torch.cat([p[1] for p in pieces]) if spec.entropy else None)


def action_outputs(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   loss_mask: torch.Tensor, pack: bool, pack_capacity: int, spec: HeadSpec,
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                              torch.Tensor | None]:
    """The model's part of `token_outputs`: (rows (P,), cols (P,), hidden (P, H), logprob (P,),
    entropy (P,) or None) at the positions predicting the action tokens of ``input_ids``
    (n, L), through `head_outputs`. One call runs every parameter it uses, so a wrapper (DDP,
    FSDP) can run it as its forward."""
    rows, cols, h = _predicting_hidden(model, input_ids, attention_mask, loss_mask, pack,
                                       pack_capacity)
    tok = input_ids.to(h.device)[rows, cols]
    lp, ent = head_outputs(model.get_output_embeddings(), h, rows, cols, tok, spec)
    return rows, cols, h, lp, ent


#: ``action_outputs`` bound to a model (or a DDP / FSDP module running it as its forward).
Scorer = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, bool, int, HeadSpec],
                  tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                        torch.Tensor | None]]


def token_outputs(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  loss_mask: torch.Tensor, allowed: dict[int, dict[int, list[int]]],
                  temperature: float, need_entropy: bool = False, need_hidden: bool = False,
                  entropy_grad: bool = True, top_k: int = 0, top_p: float = 1.0,
                  pack: bool = False, pack_capacity: int = 0,
                  scorer: Scorer | None = None, logits_chunk: int = LOGITS_CHUNK,
                  ) -> ModelOutputs:
    """Forward ``input_ids`` (n, L) and return logprob/entropy of each action token.

    Position t's token is scored by the distribution the model produced at t-1. With
    ``entropy_grad=False`` the entropy is computed without a graph (for logging only). With
    ``top_k`` / ``top_p`` the distribution is truncated as the sampler truncated it
    (`truncate_logits`, after the constraint mask), so logprobs and entropy are those of the
    behaviour policy; the sampled token always stays in the kept set. With ``pack`` the rows
    (right-padded) run packed (`_packed_hidden`): all in one row with no filler and attention
    per sequence when the model runs varlen (`agentrl.learn.varlen`), else several to a row of
    ``max(L, pack_capacity)`` tokens; the same outputs (up to float rounding) for fewer tokens
    through the model; the model must mask packed sequences (`supports_packing`). ``scorer`` runs
    `action_outputs` in place of ``model`` (the distributed learner's DDP / FSDP module).
    ``logits_chunk``: vocabulary values of logits formed at once (`head_outputs`; 0: all).
    """
    n, L = input_ids.shape
    dev = next(model.parameters()).device
    input_ids = input_ids.to(dev)
    spec = HeadSpec(temperature, getattr(model.config, "final_logit_softcapping", None),
                    allowed or None, top_k, top_p, need_entropy, entropy_grad, logits_chunk)
    run = scorer or (lambda *a: action_outputs(model, *a))
    rows, cols, h, lp_p, ent_p = run(input_ids, attention_mask, loss_mask, pack, pack_capacity,
                                     spec)
    lp = torch.zeros((n, L), dtype=torch.float32, device=dev).index_put((rows, cols), lp_p)
    ent = None
    if ent_p is not None:
        ent = torch.zeros((n, L), dtype=torch.float32, device=dev).index_put((rows, cols), ent_p)
    hid = None
    if need_hidden:
        hid = torch.zeros((n, L, h.shape[-1]), dtype=h.dtype, device=dev).index_put((rows, cols), h)
    return ModelOutputs(logprobs=lp, entropy=ent, hidden=hid)


def _predicting_hidden(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       loss_mask: torch.Tensor, pack: bool = False, pack_capacity: int = 0,
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Last hidden state at the position that predicts each action token: token t is predicted
    at t-1. Returns (rows (P,), cols (P,), hidden (P, H)) on the model's device. With ``pack``
    the rows run packed (`_packed_hidden`)."""
    n, L = input_ids.shape
    dev = next(model.parameters()).device
    input_ids, attention_mask = input_ids.to(dev), attention_mask.to(dev)
    tgt = torch.zeros((n, L), dtype=torch.bool, device=dev)
    tgt[:, 1:] = loss_mask[:, 1:].to(dev) > 0
    rows, cols = tgt.nonzero(as_tuple=True)  # (P,), (P,)
    packed = _packed_hidden(_decoder(model), input_ids, attention_mask, pack_capacity) \
        if pack and n > 1 else None
    if packed is not None:
        hidden, row_of, offset = packed  # (R, capacity, H)
        return rows, cols, hidden[row_of[rows], offset[rows] + cols - 1]
    pos = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    # no KV cache: a training forward never decodes further
    hidden = _decoder(model)(input_ids=input_ids, attention_mask=attention_mask,
                             position_ids=pos, use_cache=False).last_hidden_state  # (n, L, H)
    return rows, cols, hidden[rows, cols - 1]


def critic_hidden(critic: nn.Module, mb: Batch) -> torch.Tensor:
    """(n, L, H) hidden states of a separate critic model at the predicting positions of the
    micro-batch's action tokens (0 elsewhere), aligned like `ModelOutputs.hidden`."""
    n, L = mb.input_ids.shape
    vocab = critic.get_input_embeddings().num_embeddings
    if int(mb.input_ids.max()) >= vocab:
        raise ValueError(f"the critic model embeds {vocab} token ids but the batch holds id "
                         f"{int(mb.input_ids.max())}: algorithm.critic_model must share the "
                         "policy's tokenizer")
    rows, cols, h = _predicting_hidden(critic, mb.input_ids, mb.attention_mask, mb.loss_mask)
    return torch.zeros((n, L, h.shape[-1]), dtype=h.dtype, device=h.device).index_put(
        (rows, cols), h)


def micro_batches(batch: Batch, rows: list[int], token_budget: int, packed: bool = False,
                  by_length: bool = False, varlen: bool = False) -> list[list[int]]:
    """Split ``rows`` into micro-batches of at most ``token_budget`` tokens through the model.

    Padded (default), a micro-batch costs rows x its longest row; ``by_length`` first orders
    the rows longest first, so each micro-batch holds similar lengths (little padding).
    ``packed``, the rows are planned into `pack_rows` bins as long as the batch's longest row
    (the capacity `token_outputs` packs to), and a micro-batch is whole bins, bins x capacity
    within the budget; ``packed`` and ``varlen`` (the model concatenates a micro-batch into
    one row, `agentrl.learn.varlen`), a micro-batch is a `pack_rows` bin of the budget itself: its
    real tokens are all it costs.
    """
    lengths = batch.attention_mask.sum(-1).tolist()
    if packed and varlen:
        return [[rows[i] for i in sorted(b)]
                for b in pack_rows([lengths[r] for r in rows], token_budget)]
    if packed:
        cap = int(batch.input_ids.shape[1])
        per = max(1, token_budget // max(1, cap))  # bins per micro-batch
        bins = [[rows[i] for i in b] for b in pack_rows([lengths[r] for r in rows], cap)]
        return [[r for b in bins[i:i + per] for r in b] for i in range(0, len(bins), per)]
    if by_length:
        rows = sorted(rows, key=lambda r: -lengths[r])
    out: list[list[int]] = []
    cur: list[int] = []
    longest = 0
    for r in rows:
        new_longest = max(longest, lengths[r])
        if cur and new_longest * (len(cur) + 1) > token_budget:
            out.append(cur)
            cur, new_longest = [], lengths[r]
        cur.append(r)
        longest = new_longest
    if cur:
        out.append(cur)
    return out
