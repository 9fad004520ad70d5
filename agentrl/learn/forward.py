"""The learner's forward pass: per-token logprobs, entropy and hidden states of the action
tokens of a batch, exactly as the sampler's behaviour distribution gives them
(`agentrl.policies.base.behaviour_logprobs`), and the micro-batch plans that keep it within a
token budget: rows packed without filler (`pack_rows`, padding-free attention through
`agentrl.learn.varlen`) or padded.

Logits are formed only at action positions (hidden states of those positions through the LM
head), which keeps memory at O(action tokens x vocab) instead of O(all tokens x vocab).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

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


def action_logits(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  loss_mask: torch.Tensor, pack: bool = False, pack_capacity: int = 0,
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The model's part of `token_outputs`: (rows (P,), cols (P,), hidden (P, H), logits (P, V)
    float32) at the positions predicting the action tokens of ``input_ids`` (n, L). One call
    runs every parameter it uses, so a wrapper (DDP, FSDP) can run it as its forward."""
    rows, cols, h = _predicting_hidden(model, input_ids, attention_mask, loss_mask, pack,
                                       pack_capacity)
    return rows, cols, h, model.get_output_embeddings()(h).float()


#: ``action_logits`` bound to a model (or a DDP / FSDP module running it as its forward).
Scorer = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, bool, int],
                  tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]


def token_outputs(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  loss_mask: torch.Tensor, allowed: dict[int, dict[int, list[int]]],
                  temperature: float, need_entropy: bool = False, need_hidden: bool = False,
                  entropy_grad: bool = True, top_k: int = 0, top_p: float = 1.0,
                  pack: bool = False, pack_capacity: int = 0,
                  scorer: Scorer | None = None) -> ModelOutputs:
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
    `action_logits` in place of ``model`` (the distributed learner's DDP / FSDP module).
    """
    n, L = input_ids.shape
    dev = next(model.parameters()).device
    input_ids = input_ids.to(dev)
    if scorer is None:
        rows, cols, h, logits = action_logits(model, input_ids, attention_mask, loss_mask, pack,
                                              pack_capacity)  # logits (P, V)
    else:
        rows, cols, h, logits = scorer(input_ids, attention_mask, loss_mask, pack, pack_capacity)
    allow = None
    if allowed:
        mask = torch.zeros_like(logits, dtype=torch.bool)
        constrained = torch.zeros(len(rows), dtype=torch.bool, device=dev)
        for p, (r, c) in enumerate(zip(rows.tolist(), cols.tolist())):
            ids = allowed.get(r, {}).get(c)
            if ids is not None:
                mask[p, ids] = True
                constrained[p] = True
        allow = mask | ~constrained[:, None]
    tok = input_ids[rows, cols]
    logp_all = behaviour_logprobs(logits, temperature,
                                  getattr(model.config, "final_logit_softcapping", None), allow,
                                  top_k, top_p, keep=tok)
    lp = torch.zeros((n, L), dtype=torch.float32, device=dev)
    lp = lp.index_put((rows, cols), logp_all.gather(-1, tok[:, None]).squeeze(-1))
    ent = None
    if need_entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            p = logp_all.exp()
            e = -(p * logp_all).sum(-1)
            ent = torch.zeros((n, L), dtype=torch.float32, device=dev).index_put((rows, cols), e)
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
