"""The learner: token logprobs/entropies from the trainer's own model, and optimizer updates.

Logprobs are computed exactly as the sampler computes them: ``log_softmax(logits / T)`` at the
position that produced each token, restricted to the allowed ids on constrained turns. So on
CPU in fp32 the first PPO ratio is 1 (up to ~1e-6).

Logits are formed only at action positions (hidden states of those positions through the LM
head), which keeps memory at O(action tokens x vocab) instead of O(all tokens x vocab).
"""

from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from agentrl.batch import Batch
from agentrl.config import TrainConfig

if TYPE_CHECKING:
    from agentrl.algorithms.base import Algorithm


@dataclass
class ModelOutputs:
    """Per-token outputs aligned with ``Batch.input_ids`` (n, L); 0 off action tokens."""

    logprobs: torch.Tensor
    entropy: torch.Tensor | None = None
    hidden: torch.Tensor | None = None  # (n, L, H) last hidden state at the *predicting* position


def _decoder(model: nn.Module) -> nn.Module:
    base = getattr(model, "model", None) or getattr(model, "base_model", None)
    if base is None:
        raise TypeError(f"{type(model).__name__}: cannot find the decoder (model.model)")
    return base


def token_outputs(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  loss_mask: torch.Tensor, allowed: dict[int, dict[int, list[int]]],
                  temperature: float, need_entropy: bool = False, need_hidden: bool = False,
                  ) -> ModelOutputs:
    """Forward ``input_ids`` (n, L) and return logprob/entropy of each action token.

    Position t's token is scored by the distribution the model produced at t-1.
    """
    n, L = input_ids.shape
    dev = next(model.parameters()).device
    input_ids, attention_mask = input_ids.to(dev), attention_mask.to(dev)
    pos = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    hidden = _decoder(model)(input_ids=input_ids, attention_mask=attention_mask,
                             position_ids=pos).last_hidden_state  # (n, L, H)
    # predicting positions: token t is predicted at t-1
    tgt = torch.zeros((n, L), dtype=torch.bool, device=dev)
    tgt[:, 1:] = loss_mask[:, 1:].to(dev) > 0
    rows, cols = tgt.nonzero(as_tuple=True)  # (P,), (P,)
    h = hidden[rows, cols - 1]  # (P, H)
    logits = model.get_output_embeddings()(h).float()  # (P, V)
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    logits = logits / temperature
    if allowed:
        mask = torch.zeros_like(logits, dtype=torch.bool)
        constrained = torch.zeros(len(rows), dtype=torch.bool, device=dev)
        for p, (r, c) in enumerate(zip(rows.tolist(), cols.tolist())):
            ids = allowed.get(r, {}).get(c)
            if ids is not None:
                mask[p, ids] = True
                constrained[p] = True
        logits = torch.where(mask | ~constrained[:, None], logits, torch.finfo(logits.dtype).min)
    logp_all = torch.log_softmax(logits, dim=-1)
    tok = input_ids[rows, cols]
    lp = torch.zeros((n, L), dtype=torch.float32, device=dev)
    lp = lp.index_put((rows, cols), logp_all.gather(-1, tok[:, None]).squeeze(-1))
    ent = None
    if need_entropy:
        p = logp_all.exp()
        e = -(p * logp_all).sum(-1)
        ent = torch.zeros((n, L), dtype=torch.float32, device=dev).index_put((rows, cols), e)
    hid = None
    if need_hidden:
        hid = torch.zeros((n, L, hidden.shape[-1]), dtype=hidden.dtype, device=dev)
        hid = hid.index_put((rows, cols), h)
    return ModelOutputs(logprobs=lp, entropy=ent, hidden=hid)


def micro_batches(batch: Batch, rows: list[int], token_budget: int) -> list[list[int]]:
    """Split ``rows`` into groups whose padded size (rows x longest) stays within the budget."""
    lengths = batch.attention_mask.sum(-1).tolist()
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


class Learner:
    """Owns the trainable model, its optimizer and LR schedule, and the frozen reference."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, temperature: float,
                 algorithm: Algorithm) -> None:
        self.model, self.cfg, self.temperature, self.algorithm = model, cfg, temperature, algorithm
        groups: list[dict[str, Any]] = [{"params": [p for p in model.parameters() if p.requires_grad]}]
        groups += algorithm.param_groups()
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                           betas=tuple(cfg.betas))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.reference: nn.Module | None = None
        self.progress: Any = None  # progress bar advanced once per optimizer step
        if algorithm.needs_reference:
            self.reference = copy.deepcopy(model).eval()
            for p in self.reference.parameters():
                p.requires_grad_(False)

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
                need_hidden: bool = False) -> ModelOutputs:
        return token_outputs(model or self.model, mb.input_ids, mb.attention_mask, mb.loss_mask,
                             mb.allowed, self.temperature, need_entropy, need_hidden)

    @torch.no_grad()
    def evaluate(self, batch: Batch, entropy: bool = False, hidden_fn: Any = None,
                 model: nn.Module | None = None) -> dict[str, torch.Tensor]:
        """No-grad pass over the whole batch in micro-batches.

        Returns (N, L) tensors: ``logprobs``, ``entropy`` if asked, and ``hidden_fn(hidden)``
        (e.g. a value head, mapping (n, L, H) -> (n, L)) as ``hidden_fn`` if given.
        """
        m = model or self.model
        was_training = m.training
        m.eval()
        N, L = batch.input_ids.shape
        out = {"logprobs": torch.zeros(N, L)}
        if entropy:
            out["entropy"] = torch.zeros(N, L)
        if hidden_fn is not None:
            out["hidden_fn"] = torch.zeros(N, L)
        for rows in micro_batches(batch, list(range(N)), self.cfg.micro_batch_tokens):
            mb = batch.select(rows)
            o = self.forward(mb, m, need_entropy=entropy, need_hidden=hidden_fn is not None)
            n, ell = mb.input_ids.shape
            idx = torch.tensor(rows)
            out["logprobs"][idx, :ell] = o.logprobs.float().cpu()
            if entropy:
                out["entropy"][idx, :ell] = o.entropy.float().cpu()
            if hidden_fn is not None:
                out["hidden_fn"][idx, :ell] = hidden_fn(o.hidden).float().cpu()
        m.train(was_training)
        return out

    def reference_logprobs(self, batch: Batch) -> torch.Tensor:
        """(N, L) logprobs of the frozen initial policy."""
        assert self.reference is not None
        return self.evaluate(batch, model=self.reference)["logprobs"]

    # -- update --------------------------------------------------------------------------
    def update(self, batch: Batch, rng: random.Random) -> dict[str, float]:
        """Epochs x minibatches of optimizer steps on ``batch`` with gradient accumulation."""
        c, algo = self.cfg, self.algorithm
        self.model.train()
        N = batch.num_rows
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        grad_norms: list[float] = []
        for _ in range(c.epochs):
            order = list(range(N))
            rng.shuffle(order)
            k = min(c.minibatches, N)
            for m in range(k):
                rows = order[m * N // k:(m + 1) * N // k]
                if not rows:
                    continue
                lm = batch.loss_mask[rows]
                agg_tokens = float(lm.sum().clamp(min=1))
                agg_seqs = float((lm.sum(-1) > 0).sum().clamp(min=1))
                agg_len = float(batch.input_ids.shape[1])
                self.optimizer.zero_grad(set_to_none=True)
                for mrows in micro_batches(batch, rows, c.micro_batch_tokens):
                    mb = batch.select(mrows)
                    mb.agg_tokens, mb.agg_seqs, mb.agg_len = agg_tokens, agg_seqs, agg_len
                    # Entropy is always computed (cheap at action positions) for logging.
                    out = self.forward(mb, need_entropy=True, need_hidden=algo.needs_hidden)
                    terms = algo.loss(out, mb)
                    terms["loss"].backward()
                    for name, v in terms.items():
                        sums[name] = sums.get(name, 0.0) + float(v.detach())
                        counts[name] = counts.get(name, 0) + 0
                    # Terms are partial sums over micro-batches; count minibatches once below.
                for name in terms:
                    counts[name] = counts.get(name, 0) + 1
                params = [p for g in self.optimizer.param_groups for p in g["params"]]
                gn = torch.nn.utils.clip_grad_norm_(params, c.grad_clip if c.grad_clip > 0
                                                    else float("inf"))
                grad_norms.append(float(gn))
                self.optimizer.step()
                if self.progress is not None:
                    self.progress.update(1)
        self.scheduler.step()
        metrics = {f"train/{k}": sums[k] / max(1, counts[k]) for k in sums}
        metrics["train/grad_norm"] = sum(grad_norms) / max(1, len(grad_norms))
        metrics["train/lr"] = self.optimizer.param_groups[0]["lr"]
        return metrics


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


@torch.no_grad()
def recompute_old_logprobs(learner: Learner, batch: Batch) -> None:
    """Use the learner's logprobs (current weights) as ``batch.old_logprobs``.

    The sampler's logprobs move to ``batch.extra["sampler_logprobs"]`` for `apply_tis`. Call
    before the update: the first PPO ratio is then exactly 1 whatever the backend's numerics.
    """
    lp = learner.evaluate(batch)["logprobs"]  # (N, L), 0 off action tokens
    batch.extra["sampler_logprobs"] = batch.old_logprobs
    batch.old_logprobs = lp * (batch.loss_mask > 0)


def apply_tis(batch: Batch, cap: float) -> dict[str, float]:
    """Scale ``batch.advantages`` by `truncated_is_weights` (after `recompute_old_logprobs`)."""
    mask = batch.loss_mask > 0
    w = truncated_is_weights(batch.old_logprobs, batch.extra["sampler_logprobs"],
                             batch.loss_mask, cap)
    batch.advantages = batch.advantages * w
    if not mask.any():
        return {}
    return {"train/tis_weight_mean": float(w[mask].mean()),
            "train/tis_capped_fraction": float((w[mask] >= cap).float().mean())}
