"""Pure tensor math shared by every algorithm: estimators, returns, losses, aggregation.

Every function here is stateless and tested against hand-computed numbers in
``tests/algorithms/test_functional.py``. Shapes: B = sequences, T = tokens, G = groups.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Literal

import torch

AggMode = Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]


# --------------------------------------------------------------------------- group statistics

def group_indices(group_ids: Sequence[Hashable]) -> torch.Tensor:
    """Map arbitrary hashable group ids to dense ints 0..G-1 (first-seen order). Shape (N,)."""
    index: dict[Hashable, int] = {}
    return torch.tensor([index.setdefault(g, len(index)) for g in group_ids], dtype=torch.long)


def group_normalize(scores: torch.Tensor, group_ids: Sequence[Hashable], use_std: bool = True,
                    eps: float = 1e-6, singleton: Literal["zero", "raw"] = "zero") -> torch.Tensor:
    """GRPO advantage: (score - group mean) / (group std + eps), std with Bessel's correction.

    Args:
        scores: (N,) one score per member.
        group_ids: N hashable ids; members with equal ids form a group.
        use_std: divide by the group std (GRPO) or not (Dr.GRPO / "mean_norm").
        singleton: a one-member group gets 0 (``zero``) or its raw score (``raw``, verl's
            mean 0 / std 1 convention).
    Returns:
        (N,) advantages.
    """
    g = group_indices(group_ids)
    num_groups = int(g.max()) + 1 if len(g) else 0
    scores = scores.to(torch.float64)
    count = torch.zeros(num_groups, dtype=torch.float64).index_add_(0, g, torch.ones_like(scores))
    total = torch.zeros(num_groups, dtype=torch.float64).index_add_(0, g, scores)
    mean = total / count
    dev = scores - mean[g]
    sq = torch.zeros(num_groups, dtype=torch.float64).index_add_(0, g, dev * dev)
    std = torch.sqrt(sq / (count - 1).clamp(min=1))
    adv = dev / (std[g] + eps) if use_std else dev
    single = count[g] == 1
    if singleton == "raw":
        adv = torch.where(single, scores, adv)
    else:
        adv = torch.where(single, torch.zeros_like(adv), adv)
    return adv.to(torch.float32)


def rloo(scores: torch.Tensor, group_ids: Sequence[Hashable]) -> torch.Tensor:
    """Leave-one-out baseline: A_i = s_i - mean_{j != i} s_j = n/(n-1) (s_i - mean). Shape (N,).
    One-member groups get 0."""
    g = group_indices(group_ids)
    n_g = int(g.max()) + 1 if len(g) else 0
    s = scores.to(torch.float64)
    count = torch.zeros(n_g, dtype=torch.float64).index_add_(0, g, torch.ones_like(s))
    total = torch.zeros(n_g, dtype=torch.float64).index_add_(0, g, s)
    n = count[g]
    adv = torch.where(n > 1, (s - total[g] / n) * n / (n - 1).clamp(min=1), torch.zeros_like(s))
    return adv.to(torch.float32)


def role_baseline_advantages(scores: torch.Tensor, keys: Sequence[Hashable],
                             baselines: Mapping[Hashable, float], decay: float,
                             ) -> tuple[torch.Tensor, dict[Hashable, float]]:
    """Role-conditioned advantage estimation (RAE, SPIRAL: Liu et al. 2025, arXiv 2506.24119).

    One moving baseline per key (e.g. (game, role)), read before it moves:
        A_i = s_i - b_{k_i}
    then, per key k with n_k members in the batch (mean score m_k),
        b_k <- decay^{n_k} b_k + (1 - decay^{n_k}) m_k
    which weighs the batch as n_k one-at-a-time EMA updates with the mean would, without
    depending on the order of the batch. A key seen for the first time starts at 0.

    Args:
        scores: (N,) one score per member.
        keys: N hashable baseline keys.
        baselines: key -> baseline before this batch (not modified).
        decay: EMA decay in [0, 1).
    Returns:
        ((N,) advantages, the baselines after this batch).
    """
    s = scores.to(torch.float64)
    b = torch.tensor([float(baselines.get(k, 0.0)) for k in keys], dtype=torch.float64)
    adv = (s - b).to(torch.float32)
    new = dict(baselines)
    members: dict[Hashable, list[float]] = {}
    for k, v in zip(keys, s.tolist()):
        members.setdefault(k, []).append(v)
    for k, vals in members.items():
        w = decay ** len(vals)
        new[k] = w * float(baselines.get(k, 0.0)) + (1 - w) * sum(vals) / len(vals)
    return adv, new


# --------------------------------------------------------------------------- returns

def discounted_returns(rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """R_t = sum_{k>=t} gamma^(k-t) r_k for one episode. (T,) -> (T,)."""
    out = torch.zeros_like(rewards, dtype=torch.float32)
    running = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        running = float(rewards[t]) + gamma * running
        out[t] = running
    return out


def gae(rewards: torch.Tensor, values: torch.Tensor, gammas: torch.Tensor, lams: torch.Tensor,
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over one sequence of decision points.

    Step t links to step t+1 with its own discount ``gammas[t]`` and trace ``lams[t]``, so one
    call covers tokens inside a turn (token gamma/lambda) and turn boundaries (turn gamma/lambda).
    The step after the last is terminal (value 0).

        delta_t = r_t + gamma_t V_{t+1} - V_t
        A_t     = delta_t + gamma_t lam_t A_{t+1}

    Args:
        rewards, values, gammas, lams: (T,) each.
    Returns:
        (advantages, returns) with returns = advantages + values; both (T,).
    """
    T = rewards.shape[0]
    adv = torch.zeros(T, dtype=torch.float32)
    next_v, next_a = 0.0, 0.0
    for t in range(T - 1, -1, -1):
        delta = float(rewards[t]) + float(gammas[t]) * next_v - float(values[t])
        next_a = delta + float(gammas[t]) * float(lams[t]) * next_a
        adv[t] = next_a
        next_v = float(values[t])
    return adv, adv + values.to(torch.float32)


# --------------------------------------------------------------------------- aggregation

def aggregate(values: torch.Tensor, mask: torch.Tensor, mode: AggMode = "token-mean",
              num_tokens: float | None = None, num_seqs: float | None = None,
              norm_len: float | None = None) -> torch.Tensor:
    """Reduce per-token values (B, T) to a scalar over ``mask`` (B, T).

    Modes:
        token-mean: sum over all tokens / number of tokens.
        seq-mean-token-sum: mean over sequences of each sequence's token sum.
        seq-mean-token-mean: mean over sequences of each sequence's token mean.
        seq-mean-token-sum-norm: sum over all tokens / (sequences * norm_len) (Dr.GRPO). The
            constant ``norm_len`` is the configured response budget (Dr.GRPO's MAX_TOKENS),
            never the batch's padded length, which would make the scale of a token's gradient
            depend on the longest sequence that happened to share its batch; it is required.

    ``num_tokens`` / ``num_seqs`` override the denominators so that a minibatch split into
    micro-batches sums to exactly the unsplit value (gradient accumulation).
    """
    mask = mask.to(values.dtype)
    masked = values * mask
    if mode == "token-mean":
        denom = num_tokens if num_tokens is not None else mask.sum().clamp(min=1)
        return masked.sum() / denom
    seq_has = (mask.sum(-1) > 0).to(values.dtype)
    n_seq = num_seqs if num_seqs is not None else seq_has.sum().clamp(min=1)
    if mode == "seq-mean-token-sum":
        return masked.sum(-1).sum() / n_seq
    if mode == "seq-mean-token-mean":
        per = masked.sum(-1) / mask.sum(-1).clamp(min=1)
        return (per * seq_has).sum() / n_seq
    if mode == "seq-mean-token-sum-norm":
        if norm_len is None:
            raise ValueError("seq-mean-token-sum-norm needs norm_len, the response token budget "
                             "(rollout.max_new_tokens per turn)")
        return masked.sum() / (n_seq * norm_len)
    raise ValueError(f"unknown aggregation mode {mode!r}")


def segment_mean(values: torch.Tensor, segment_ids: torch.Tensor, mask: torch.Tensor,
                 ) -> torch.Tensor:
    """Mean of ``values`` over each segment, broadcast back to the segment's positions.

    A segment is the set of positions where ``mask`` > 0 sharing one ``segment_ids`` value
    (e.g. the action tokens of one turn). Differentiable: each position receives 1/n of the
    gradient of its segment's mean. All (B, T) -> (B, T); 0 where ``mask`` is 0.
    """
    sel = (mask > 0) & (segment_ids >= 0)
    ids = segment_ids[sel]
    if ids.numel() == 0:
        return values * 0.0
    n_seg = int(ids.max()) + 1
    total = values.new_zeros(n_seg).index_add(0, ids, values[sel])
    count = values.new_zeros(n_seg).index_add(0, ids, torch.ones_like(values[sel]))
    mean = total / count.clamp(min=1)
    return torch.zeros_like(values).index_put(sel.nonzero(as_tuple=True), mean[ids])


# --------------------------------------------------------------------------- policy losses

def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                clip_low: float = 0.2, clip_high: float = 0.2, dual_clip: float | None = 3.0,
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate per token, with clip-higher and dual clip.

        ratio = exp(logp - old_logp)
        l = max(-A ratio, -A clip(ratio, 1 - clip_low, 1 + clip_high))
        if A < 0 and dual_clip: l = min(l, -A dual_clip)

    Args: all (B, T). Returns (per-token loss (B, T), stats of the same shape: ``clipped``
    (1 where the clip was active), ``ratio``).
    """
    ratio = torch.exp((logprobs - old_logprobs).clamp(-20.0, 20.0))
    return _surrogate(ratio, torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high), advantages,
                      dual_clip)


def _surrogate(ratio: torch.Tensor, clipped_ratio: torch.Tensor, advantages: torch.Tensor,
               dual_clip: float | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """max(-A ratio, -A clipped_ratio), then the dual clip for A < 0; shared by the PPO and
    the stop-gradient surrogates. All (B, T)."""
    l1 = -advantages * ratio
    l2 = -advantages * clipped_ratio
    loss = torch.maximum(l1, l2)
    clipped = (l2 > l1).float()
    if dual_clip is not None:
        l3 = -advantages * dual_clip
        dual = (advantages < 0) & (loss > l3)
        loss = torch.where(advantages < 0, torch.minimum(loss, l3), loss)
        clipped = torch.maximum(clipped, dual.float())
    return loss, {"clipped": clipped, "ratio": ratio.detach()}


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k3 estimator of KL(pi || ref) per token: exp(ref - logp) - (ref - logp) - 1, clamped to
    [-10, 10]. (B, T) -> (B, T). Non-negative, unbiased for KL(pi||ref) under pi samples."""
    d = (ref_logprobs - logprobs).clamp(-20.0, 20.0)
    return (torch.exp(d) - d - 1.0).clamp(-10.0, 10.0)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy of softmax(logits) over the last dim. (..., V) -> (...). -inf logits
    (masked tokens) contribute 0."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    p = logp.exp()
    return -(p * torch.where(torch.isfinite(logp), logp, torch.zeros_like(logp))).sum(-1)


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               clip: float | None = 0.2) -> torch.Tensor:
    """Clipped value loss per token: 0.5 max((V - R)^2, (clip(V, V_old +- c) - R)^2). (B, T)."""
    l1 = (values - returns) ** 2
    if clip is None:
        return 0.5 * l1
    v_clip = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * torch.maximum(l1, (v_clip - returns) ** 2)


# --------------------------------------------------------------------------- entropy-aware losses

def sg_clip_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor,
                        advantages: torch.Tensor, clip_low: float = 0.2, clip_high: float = 0.2,
                        dual_clip: float | None = 3.0,
                        ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """AEPO's entropy clipping-balanced surrogate (arXiv 2510.14545): PPO with a stop-gradient
    upper bound.

        ratio = exp(logp - old_logp)
        upper = (1 + clip_high) * ratio / sg(ratio)         # value 1 + clip_high, grad of ratio
        l = max(-A ratio, -A clip(ratio, 1 - clip_low, upper))   (+ dual clip for A < 0)

    The forward value equals `policy_loss`. The gradient w.r.t. logp is -A * F with
    F = 1 + clip_high where ratio > 1 + clip_high and A > 0 (PPO: 0), F = 0 where
    ratio < 1 - clip_low and A < 0, F = ratio otherwise; so high-entropy tokens that already
    moved up keep a bounded learning signal instead of being dropped.

    Args: all (B, T). Returns (per-token loss (B, T), stats ``clipped`` and ``ratio`` (B, T)).
    """
    log_ratio = (logprobs - old_logprobs).clamp(-20.0, 20.0)
    ratio = torch.exp(log_ratio)
    hi = 1.0 + clip_high
    bounded = torch.where(ratio > hi, hi * ratio / ratio.detach(), ratio)
    bounded = torch.where(ratio < 1.0 - clip_low, (1.0 - clip_low) * torch.ones_like(ratio), bounded)
    return _surrogate(ratio, bounded, advantages, dual_clip)


def zscore(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(x - mean) / (std + eps) over the positions where ``mask`` (B, T) > 0; 0 elsewhere.
    Std with Bessel's correction; fewer than two positions give 0. (B, T) -> (B, T)."""
    m = mask > 0
    n = int(m.sum())
    if n < 2:
        return torch.zeros_like(values)
    x = values[m].double()
    z = (values.double() - x.mean()) / (x.std() + eps)
    return torch.where(m, z, torch.zeros_like(z)).to(values.dtype)


# --------------------------------------------------------------------------- covariance losses

def token_covariance(logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                     ) -> torch.Tensor:
    """Centred token covariance (Cui et al. 2025, arXiv 2505.22617), detached:

        Cov_i = (A_i - mean(A)) * (logp_i - mean(logp))

    with masked means over the tokens where ``mask`` > 0. (B, T) -> (B, T); 0 off the mask."""
    m = (mask > 0).to(advantages.dtype)
    n = m.sum().clamp(min=1)
    a, lp = advantages.detach(), logprobs.detach()
    cov = (a - (a * m).sum() / n) * (lp - (lp * m).sum() / n)
    return cov * m


def clip_cov_select(cov: torch.Tensor, mask: torch.Tensor, eligible: torch.Tensor, ratio: float,
                    lb: float, ub: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Clip-Cov token choice: among eligible masked tokens with lb < Cov < ub pick
    max(1, floor(ratio * N_valid)) at random (N_valid = masked tokens). Returns bool (B, T)."""
    cand = ((mask > 0) & eligible & (cov > lb) & (cov < ub)).flatten().nonzero(as_tuple=True)[0]
    out = torch.zeros(cov.numel(), dtype=torch.bool, device=cov.device)
    if len(cand):
        k = max(1, int(ratio * float((mask > 0).sum())))
        perm = torch.randperm(len(cand), generator=generator, device="cpu")[:k].to(cand.device)
        out[cand[perm]] = True
    return out.view_as(cov)


def kl_cov_select(cov: torch.Tensor, mask: torch.Tensor, ratio: float) -> torch.Tensor:
    """KL-Cov token choice: the max(1, floor(ratio * N_valid)) masked tokens of largest Cov
    (``ratio`` is a fraction: the official ``k_percent`` 0.2 is ratio 0.002). Bool (B, T)."""
    valid = (mask > 0).flatten().nonzero(as_tuple=True)[0]
    out = torch.zeros(cov.numel(), dtype=torch.bool, device=cov.device)
    if len(valid):
        k = max(1, int(ratio * len(valid)))
        top = torch.topk(cov.flatten()[valid], min(k, len(valid))).indices
        out[valid[top]] = True
    return out.view_as(cov)


def kl_cov_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, ratio: float = 0.002, coef: float = 1.0,
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """KL-Cov surrogate per token: unclipped -A rho everywhere, plus coef * |logp - old_logp|
    on the `kl_cov_select` tokens. All (B, T). Returns (loss, stats ``clipped`` = selected,
    ``ratio``)."""
    log_ratio = (logprobs - old_logprobs).clamp(-20.0, 20.0)
    rho = torch.exp(log_ratio)
    sel = kl_cov_select(token_covariance(logprobs, advantages, mask), mask, ratio)
    loss = -advantages * rho + coef * log_ratio.abs() * sel
    return loss, {"clipped": sel.float(), "ratio": rho.detach()}
