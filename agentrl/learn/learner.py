"""The learner: scoring passes and optimizer updates on the trainer's own model.

`Learner` is the protocol the trainer talks to; `LocalLearner` is the one-process
implementation (a distributed one, DDP / FSDP under torchrun, implements the same methods and
reduces everything global across ranks). Per iteration the trainer calls

    scores  = learner.score(batch, wants)   # one no-grad pass (+ one reference pass for KL)
    metrics = learner.update(batch, rng)    # epochs x minibatches of optimizer steps
    policy.update_weights(learner.export_weights())

``wants`` names what the algorithm declared in ``Algorithm.requires`` (`SCORE_NAMES`), plus
``old_logprobs`` when the config asks for recomputed old logprobs or truncated IS. The scoring
pass also yields the sampler/trainer mismatch metric: before any update both sides hold the
same weights, so a gap is numerics.

Logprobs are computed exactly as the sampler computes them: ``log_softmax(logits / T)`` at the
position that produced each token, restricted to the allowed ids on constrained turns. So on
CPU in fp32 the first PPO ratio is 1 (up to ~1e-6).

Logits are formed only at action positions (hidden states of those positions through the LM
head), which keeps memory at O(action tokens x vocab) instead of O(all tokens x vocab).
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import warnings
from collections.abc import Callable, Set
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from agentrl.config import TrainConfig
from agentrl.learn.batch import Batch, Scores
from agentrl.learn.varlen import boundaries, enable_varlen, packs_exactly, runs_varlen, varlen_call
from agentrl.learn.varlen import decoder as _decoder
from agentrl.models.lora import adapters_disabled, has_adapters
from agentrl.policies.base import behaviour_logprobs

#: What the scoring pass can compute, for ``Algorithm.requires``: the learner's own logprobs
#: as ``old_logprobs``, the frozen reference's logprobs, per-token entropy and value-head
#: outputs of the pre-update policy.
SCORE_NAMES = frozenset({"old_logprobs", "ref_logprobs", "entropy", "values"})
#: What the update's forward can return besides logprobs, for ``Algorithm.loss_requires``:
#: entropy with gradient, value-head outputs, last hidden states.
LOSS_NAMES = frozenset({"entropy", "values", "hidden"})
#: Rows scored for the mismatch metric alone (when nothing else needs a full pass).
MISMATCH_ROWS = 16


@dataclass
class ModelOutputs:
    """Per-token outputs aligned with ``Batch.input_ids`` (n, L); 0 off action tokens."""

    logprobs: torch.Tensor
    entropy: torch.Tensor | None = None
    hidden: torch.Tensor | None = None  # (n, L, H) last hidden state at the *predicting* position
    values: torch.Tensor | None = None  # (n, L) value head on ``hidden``


@dataclass
class _Step:
    """What one minibatch's optimizer step left: its loss terms (summed over micro-batches
    and ranks) and gradient norms; ``skipped``: not taken (non-finite)."""

    sums: dict[str, float]
    grad_norm: float
    algo_norm: float | None
    skipped: bool = False


class Objective(Protocol):
    """What the learner asks of an algorithm (`agentrl.algorithms.base.Algorithm` is one):
    what to score and return, extra parameters, the critic, and the loss. Algorithms build on
    `Batch` and `ModelOutputs` from this package, so the learner names them only through this
    protocol."""

    @property
    def requires(self) -> Set[str]: ...

    @property
    def loss_requires(self) -> Set[str]: ...

    @property
    def critic_model(self) -> nn.Module | None: ...

    def value(self, hidden: torch.Tensor) -> torch.Tensor: ...

    def param_groups(self) -> list[dict[str, Any]]: ...

    def loss(self, out: ModelOutputs, mb: Batch) -> dict[str, torch.Tensor]: ...


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


def spread_rows(n: int, k: int = MISMATCH_ROWS) -> list[int]:
    """At most ``k`` evenly spaced row indices out of ``n``."""
    return list(range(0, n, max(1, n // k)))[:k]


def _local_norm(norm: torch.Tensor) -> torch.Tensor:
    """A gradient norm as a plain tensor (FSDP2's is a replicated DTensor)."""
    full = getattr(norm, "full_tensor", None)  # a DTensor's, without importing DTensor here
    return full() if full is not None else norm


class NonFiniteUpdates(RuntimeError):
    """Too many optimizer steps in a row had a non-finite loss or gradient."""

    exit_code = 3  # of `agentrl train`

    def __init__(self, streak: int) -> None:
        super().__init__(
            f"{streak} optimizer steps in a row had a non-finite loss or gradient (each was "
            "skipped; weights and optimizer state are as before them). Try a lower train.lr, "
            "train.grad_clip > 0, policy.dtype=float32 instead of bf16/fp16, smaller rewards "
            "or advantages (check the env's reward scale), then continue with "
            "`agentrl train --resume RUN_DIR` (or raise train.max_nonfinite_updates)")


class Learner(Protocol):
    """What the trainer needs from a learner. `LocalLearner` is the one-process implementation;
    a distributed learner implements the same methods (global statistics reduced across
    ranks), and so do per-role adapters (`agentrl.learn.roles.RoleLearner`): the trainer does
    not change."""

    progress: Any  # anything with .update(n), advanced once per optimizer step (or None)

    def score(self, batch: Batch, wants: Set[str]) -> Scores:
        """One no-grad pass of the current weights over ``batch`` computing ``wants``
        (`SCORE_NAMES`), plus one pass of the reference model for ``ref_logprobs``."""
        ...

    def update(self, batch: Batch, rng: random.Random, step_schedule: bool = True
               ) -> dict[str, float]:
        """Optimizer steps on ``batch`` (advantages filled), then one LR schedule step unless
        ``step_schedule`` is false; returns ``train/*`` metrics."""
        ...

    def update_steps(self, batch: Batch) -> int:
        """How many optimizer steps `update` takes on ``batch`` at most (a progress bar's)."""
        ...

    def export_weights(self) -> nn.Module:
        """The updated weights, in the form ``Policy.update_weights`` takes."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Optimizer, schedule and reference state (the model itself is saved separately)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ...


class LocalLearner:
    """Owns the trainable model, its optimizer and LR schedule, and the frozen reference."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, temperature: float,
                 algorithm: Objective, top_k: int = 0, top_p: float = 1.0,
                 response_budget: float | None = None) -> None:
        """``temperature`` / ``top_k`` / ``top_p``: the sampler's, so the learner scores the
        distribution the tokens were drawn from. ``response_budget``: action tokens a training
        row may hold (the constant of ``seq-mean-token-sum-norm``)."""
        self.model, self.cfg, self.temperature, self.algorithm = model, cfg, temperature, algorithm
        self.top_k, self.top_p, self.response_budget = top_k, top_p, response_budget
        for what, names, known in (("requires", algorithm.requires, SCORE_NAMES),
                                   ("loss_requires", algorithm.loss_requires, LOSS_NAMES)):
            if set(names) - known:
                raise ValueError(f"{type(algorithm).__name__}.{what}: unknown "
                                 f"{sorted(set(names) - known)}; choose from {sorted(known)}")
        if cfg.activation_checkpointing:  # recompute each layer in the backward
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})
        self.reference: nn.Module | None = None
        self.progress: Any = None  # progress bar advanced once per optimizer step
        self.nonfinite_streak = 0  # optimizer steps skipped in a row (non-finite loss/grad)
        if "ref_logprobs" in algorithm.requires:
            self.reference = self._make_reference(model)
        self.pack = cfg.pack and supports_packing(model)
        # packed rows attend per sequence with no filler where the attention allows it
        self.varlen = self.pack and enable_varlen(model)
        if self.varlen and self.reference is not None:
            enable_varlen(self.reference)
        if cfg.pack and not self.pack:
            warnings.warn(f"train.pack: {type(model).__name__} does not mask sequences packed "
                          "in one row by position ids; training on padded rows instead",
                          stacklevel=2)
        # A distributed learner wraps the model here (DDP / FSDP), before the optimizer sees
        # its parameters; the one-process learner runs the model itself.
        self.scorer: Scorer | None = self._wrap(model)
        groups: list[dict[str, Any]] = [{"params": [p for p in model.parameters() if p.requires_grad]}]
        groups += algorithm.param_groups()
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                           betas=tuple(cfg.betas))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)

    def _make_reference(self, model: nn.Module) -> nn.Module:
        """The frozen reference policy for KL: a copy of the initial weights, or with LoRA the
        model itself, run with its adapters off (`agentrl.models.lora.adapters_disabled`)."""
        if has_adapters(model):
            return model
        ref = copy.deepcopy(model).eval()
        for p in ref.parameters():
            p.requires_grad_(False)
        return ref

    def _wrap(self, model: nn.Module) -> Scorer | None:
        """Hook for a distributed learner: shard or replicate ``model`` and return what runs
        `action_logits` on it. None: the model runs itself."""
        return None

    def _select(self, batch: Batch, rows: list[int]) -> Batch:
        """The micro-batch of ``rows`` (a distributed learner pads ranks with empty ones)."""
        return batch.select(rows)

    def _accumulating(self, last: bool) -> contextlib.AbstractContextManager[None]:
        """Around one micro-batch's forward and backward: a distributed learner reduces
        gradients across ranks only in the minibatch's ``last`` micro-batch."""
        return contextlib.nullcontext()

    def _backward(self, loss: torch.Tensor) -> None:
        """Back-propagate one micro-batch's loss."""
        loss.backward()

    def _reduce_sums(self, values: list[float]) -> list[float]:
        """Sums over ranks of per-rank sums (loss denominators, loss terms); one process: as is."""
        return values

    def _lr_factor(self, it: int) -> float:
        c = self.cfg
        if c.warmup_iterations and it < c.warmup_iterations:
            return (it + 1) / c.warmup_iterations
        if c.lr_schedule == "constant" or c.iterations <= c.warmup_iterations:
            return 1.0
        frac = min(1.0, (it - c.warmup_iterations) / max(1, c.iterations - c.warmup_iterations))
        if c.lr_schedule == "cosine":
            return c.min_lr_ratio + (1 - c.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac))
        return 1.0 - (1.0 - c.min_lr_ratio) * frac

    # -- forward passes ------------------------------------------------------------------
    def forward(self, mb: Batch, model: nn.Module | None = None, need_entropy: bool = False,
                need_hidden: bool = False, need_values: bool = False,
                entropy_grad: bool = True, pack_capacity: int = 0) -> ModelOutputs:
        """Outputs of ``model`` (default: the policy) on a micro-batch; ``need_values`` runs
        the algorithm's value head on the hidden states; with ``train.pack`` its rows are
        packed to rows of ``pack_capacity`` tokens (default: its longest)."""
        m = model or self.model
        critic = self.algorithm.critic_model if need_values else None
        out = token_outputs(m, mb.input_ids, mb.attention_mask, mb.loss_mask, mb.allowed,
                            self.temperature, need_entropy,
                            need_hidden or (need_values and critic is None), entropy_grad,
                            self.top_k, self.top_p, pack=self.pack, pack_capacity=pack_capacity,
                            scorer=self.scorer if m is self.model else None)
        if need_values:
            if critic is not None:
                critic.train(m.training)  # the critic follows the policy's mode
            out.values = self.algorithm.value(out.hidden if critic is None
                                              else critic_hidden(critic, mb))
        return out

    def _micro_batches(self, batch: Batch, rows: list[int]) -> list[list[int]]:
        return micro_batches(batch, rows, self.cfg.micro_batch_tokens, self.pack,
                             self.cfg.sort_by_length, self.varlen)

    @torch.no_grad()
    def _pass(self, batch: Batch, rows: list[int], model: nn.Module, entropy: bool = False,
              values: bool = False) -> dict[str, torch.Tensor]:
        """No-grad outputs of ``model`` on ``rows`` in micro-batches: (N, L) tensors
        ``logprobs`` (and ``entropy`` / ``values``), 0 off action tokens and unscored rows."""
        was_training = model.training
        model.eval()
        N, L = batch.input_ids.shape
        names = ["logprobs"] + ["entropy"] * entropy + ["values"] * values
        out = {k: torch.zeros(N, L) for k in names}
        for mrows in self._micro_batches(batch, rows):
            mb = self._select(batch, mrows)
            o = self.forward(mb, model, need_entropy=entropy, need_values=values, pack_capacity=L)
            if not mrows:  # a distributed learner's filler: the ranks run equal passes
                continue
            idx, ell = torch.tensor(mrows), mb.input_ids.shape[1]
            for k in names:
                out[k][idx, :ell] = getattr(o, k).float().cpu()
        model.train(was_training)
        if values:
            out["values"] = out["values"] * (batch.loss_mask > 0)
        return out

    def score(self, batch: Batch, wants: Set[str]) -> Scores:
        """One no-grad pass of the current weights computing ``wants`` (`SCORE_NAMES`), and one
        pass of the reference model when ``ref_logprobs`` is wanted.

        The policy pass covers every row when anything but ``ref_logprobs`` is wanted, and
        otherwise `spread_rows` only: its logprobs then serve the mismatch metric alone.
        """
        if set(wants) - SCORE_NAMES:
            raise ValueError(f"Learner.score: unknown {sorted(set(wants) - SCORE_NAMES)}; "
                             f"choose from {sorted(SCORE_NAMES)}")
        N = batch.num_rows
        full = bool(set(wants) & {"old_logprobs", "entropy", "values"})
        rows = list(range(N)) if full else spread_rows(N)
        out = self._pass(batch, rows, self.model, "entropy" in wants, "values" in wants)
        scored = torch.zeros(N, dtype=torch.bool)
        scored[rows] = True
        ref = None
        if "ref_logprobs" in wants:
            if self.reference is None:
                raise ValueError("Learner.score: ref_logprobs wanted but the learner holds no "
                                 "reference model (the algorithm did not require one)")
            with adapters_disabled(self.model) if self.reference is self.model \
                    else contextlib.nullcontext():
                ref = self._pass(batch, list(range(N)), self.reference)["logprobs"]
        return Scores(logprobs=out["logprobs"], rows=scored, entropy=out.get("entropy"),
                      values=out.get("values"), ref_logprobs=ref)

    # -- update --------------------------------------------------------------------------
    def update_steps(self, batch: Batch) -> int:
        """How many optimizer steps `update` takes on ``batch`` at most (for a progress bar)."""
        return self.cfg.epochs * self.cfg.minibatches

    def update(self, batch: Batch, rng: random.Random, step_schedule: bool = True
               ) -> dict[str, float]:
        """Epochs x minibatches of optimizer steps on ``batch`` with gradient accumulation,
        then one step of the LR schedule (``step_schedule=False``: none, for a caller that
        splits one iteration's update into several calls, `agentrl.learn.roles`).

        Entropy is always computed, so ``train/entropy`` is logged for every algorithm; it
        carries gradient only when the loss needs it (``"entropy" in algorithm.loss_requires``),
        otherwise it costs no graph memory.
        """
        c = self.cfg
        self.model.train()
        N = batch.num_rows
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        grad_norms: list[float] = []
        algo_norms: list[float] = []
        skipped = 0
        for _ in range(c.epochs):
            order = list(range(N))
            rng.shuffle(order)
            k = min(c.minibatches, N)
            for m in range(k):
                step = self._minibatch_step(batch, order[m * N // k:(m + 1) * N // k])
                if step is None:
                    continue
                if step.skipped:
                    skipped += 1
                    continue
                for name, v in step.sums.items():  # each minibatch counts once
                    sums[name] = sums.get(name, 0.0) + v
                    counts[name] = counts.get(name, 0) + 1
                grad_norms.append(step.grad_norm)
                if step.algo_norm is not None:
                    algo_norms.append(step.algo_norm)
                if self.progress is not None:
                    self.progress.update(1)
        if step_schedule:
            self.scheduler.step()
        metrics = {f"train/{k}": sums[k] / max(1, counts[k]) for k in sums}
        metrics["train/grad_norm"] = sum(grad_norms) / max(1, len(grad_norms))
        if algo_norms:
            metrics["train/grad_norm_algorithm"] = sum(algo_norms) / len(algo_norms)
        metrics["train/lr"] = self.optimizer.param_groups[0]["lr"]
        metrics["train/nonfinite_skipped"] = float(skipped)
        return metrics

    def _minibatch_step(self, batch: Batch, rows: list[int]) -> _Step | None:
        """One optimizer step on ``rows`` of ``batch``, accumulated over its micro-batches;
        None when the rows hold nothing to train. A step whose loss or gradient is not finite
        is skipped (``_Step.skipped``)."""
        c, algo = self.cfg, self.algorithm
        needs = algo.loss_requires
        plan = self._micro_batches(batch, rows)
        if not plan:
            return None
        lm = batch.loss_mask[rows]
        # Denominators of the whole minibatch, over every rank's rows: the update is the same
        # however the minibatch is split into micro-batches and ranks.
        agg_tokens, agg_seqs = (max(1.0, x) for x in self._reduce_sums(
            [float(lm.sum()), float((lm.sum(-1) > 0).sum())]))
        agg_len = self.response_budget  # a constant, never the padded length
        self.optimizer.zero_grad(set_to_none=True)
        step_sums: dict[str, float] = {}  # this minibatch's terms (micro-batch sums)
        for i, mrows in enumerate(plan):
            with self._accumulating(last=i == len(plan) - 1):
                mb = self._select(batch, mrows)
                mb.agg_tokens, mb.agg_seqs, mb.agg_len = agg_tokens, agg_seqs, agg_len
                out = self.forward(mb, need_entropy=True, need_hidden="hidden" in needs,
                                   need_values="values" in needs,
                                   entropy_grad="entropy" in needs,
                                   pack_capacity=batch.input_ids.shape[1])
                terms = algo.loss(out, mb)
                self._backward(terms["loss"])
            for name, v in terms.items():
                step_sums[name] = step_sums.get(name, 0.0) + float(v.detach())
        names = sorted(step_sums)
        step_sums = dict(zip(names, self._reduce_sums([step_sums[n] for n in names])))
        # The policy and the algorithm's own parameters (a critic) are clipped apart, as
        # separate actor/critic optimizers are: a large value-loss gradient must not shrink
        # the policy's step.
        groups = self.optimizer.param_groups
        clip = c.grad_clip if c.grad_clip > 0 else float("inf")
        gn = _local_norm(torch.nn.utils.clip_grad_norm_(groups[0]["params"], clip))
        own = [p for g in groups[1:] for p in g["params"]]
        an = torch.nn.utils.clip_grad_norm_(own, clip) if own else None
        if not all(math.isfinite(float(x)) for x in (step_sums["loss"], gn, an or 0.0)):
            # Skip the step: no weight moves and AdamW's moments and step count stay as they
            # were, so one bad batch cannot poison the run.
            self.optimizer.zero_grad(set_to_none=True)
            self.nonfinite_streak += 1
            if self.nonfinite_streak >= c.max_nonfinite_updates:
                raise NonFiniteUpdates(self.nonfinite_streak)
            return _Step(step_sums, float(gn), None, skipped=True)
        self.nonfinite_streak = 0
        self.optimizer.step()
        return _Step(step_sums, float(gn), None if an is None else float(an))

    # -- weights and state ---------------------------------------------------------------
    def export_weights(self) -> nn.Module:
        return self.model

    def state_dict(self) -> dict[str, Any]:
        own_ref = self.reference is not None and self.reference is not self.model
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "reference": self.reference.state_dict() if own_ref else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "optimizer" in state:  # absent from a sharded checkpoint: agentrl.learn.distributed
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("reference") is not None and self.reference not in (None, self.model):
            self.reference.load_state_dict(state["reference"])


# -- sampler/trainer mismatch correction ---------------------------------------------------

def truncated_is_weights(old_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor,
                         loss_mask: torch.Tensor, cap: float) -> torch.Tensor:
    """Per-token ``min(pi_learner / pi_sampler, cap)`` on action tokens, 0 elsewhere (N, L).

    Truncated importance sampling (Yao et al. 2025, "Your efficient RL framework secretly brings
    you off-policy RL training"): the sampler (vLLM, bf16 kernels) drew the tokens, the learner
    scores them slightly differently; weighting the policy-gradient term by the capped ratio
    makes the update unbiased up to the cap.
    """
    w = torch.exp((old_logprobs - sampler_logprobs).clamp(max=math.log(cap)))
    return w * (loss_mask > 0)


def apply_tis(batch: Batch, cap: float) -> dict[str, float]:
    """Scale ``batch.advantages`` by `truncated_is_weights` (old logprobs recomputed by the
    scoring pass, `Batch.attach`)."""
    mask = batch.loss_mask > 0
    w = truncated_is_weights(batch.old_logprobs, batch.sampler_logprobs, batch.loss_mask, cap)
    batch.advantages = batch.advantages * w
    if not mask.any():
        return {}
    return {"train/tis_weight_mean": float(w[mask].mean()),
            "train/tis_capped_fraction": float((w[mask] >= cap).float().mean())}
