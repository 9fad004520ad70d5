"""Hugging Face backend: batched sampling with a KV cache, exact ids and logprobs.

Our own decoding loop (rather than ``model.generate``) so that every returned logprob is the
raw-logit ``log_softmax(logits / T)`` of the token actually drawn, constrained decoding is a mask
on those same logits, and nothing is re-tokenized. With top-k/top-p the token is drawn from the
truncated, renormalised distribution (`truncate_logits`) and that distribution's logprob is what
is returned (the learner truncates the same way).

Speed (see ``examples/benchmarks``):

- The KV cache grows in place (`GrowingLayer`) instead of being concatenated every step.
- A prompt that extends a sequence of the previous call (``full`` context mode: the last turn's
  prompt and reply) reuses its keys/values (`PrefixStore`) and prefills only the new tokens.
- Identical prompts in a batch (the G samples of a group) are prefilled once.
- Sampling is one inverse-CDF draw per row from uniforms drawn up front (no per-step
  multinomial); tokens and logprobs stay on the device until the reply is finished, and
  unconstrained decoding without stop strings checks EOS on the device (one scalar per step
  reaches the host).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from agentrl.policies.base import (
    CandidateTrie,
    Generation,
    Policy,
    RunConfig,
    SamplingParams,
    behaviour_logprobs,
)
from agentrl.policies.kv_cache import Hit, PrefixStore, growing_cache

#: the attention implementation generation switches an sdpa model to (see `_gqa_attention`)
GQA_SDPA = "agentrl_sdpa_gqa"


def _gqa_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor,
                   value: torch.Tensor, attention_mask: torch.Tensor | None,
                   dropout: float = 0.0, scaling: float | None = None,
                   is_causal: bool | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Scaled dot-product attention that lets sdpa broadcast grouped KV heads
    (``enable_gqa``) even under a mask. transformers' sdpa path copies every cached key and value
    ``H / H_kv`` times per layer and step when a mask is given (always, with padded batches);
    the result is the same. query (B, H, q, D), key/value (B, H_kv, T, D) -> (B, q, H, D)."""
    if attention_mask is not None:
        attention_mask = attention_mask[:, :, :, :key.shape[-2]]
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    causal = query.shape[2] > 1 and attention_mask is None and causal
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                         dropout_p=dropout, scale=scaling, is_causal=causal,
                                         enable_gqa=key.shape[1] != query.shape[1])
    return out.transpose(1, 2).contiguous(), None


def _register_gqa_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    AttentionInterface.register(GQA_SDPA, _gqa_attention)
    # the masks it takes are sdpa's
    ALL_MASK_ATTENTION_FUNCTIONS.register(GQA_SDPA, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


def _plain_sdpa(cfg: Any) -> bool:
    """sdpa attention over full causal layers only (no sliding windows, logit soft-capping)."""
    if cfg is None or getattr(cfg, "_attn_implementation", None) != "sdpa":
        return False
    if getattr(cfg, "attn_logit_softcapping", None):
        return False
    layer_types = getattr(cfg, "layer_types", None)
    if layer_types and set(layer_types) != {"full_attention"}:
        return False
    return not (getattr(cfg, "use_sliding_window", False) and getattr(cfg, "sliding_window", None))


@contextlib.contextmanager
def gqa_attention(model: nn.Module) -> Iterator[None]:
    """While generating, run a plain sdpa model's attention with `_gqa_attention`; other
    models keep their own."""
    cfg = getattr(model, "config", None)
    if not _plain_sdpa(cfg):
        yield
        return
    _register_gqa_attention()
    cfg._attn_implementation = GQA_SDPA
    try:
        yield
    finally:
        cfg._attn_implementation = "sdpa"


def sample_inverse_cdf(logp: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Draw one token per row of ``softmax(logp)`` (B, V) with uniforms ``u`` (B,) in [0, 1).

    Token i is chosen when ``u * total`` falls in ``[cdf[i-1], cdf[i])``, so a token of
    probability 0 is never chosen. The cumulative sum is float64 so the boundaries carry the
    probabilities of a large vocabulary without visible rounding.
    """
    cdf = logp.exp().cumsum(-1, dtype=torch.float64)  # (B, V); logp is normalised
    total = cdf[:, -1:].contiguous()
    idx = torch.searchsorted(cdf, u.to(cdf.dtype)[:, None] * total, right=True)
    # u * total can round up to total: then take the last token of probability > 0, the
    # first whose cumulative sum reaches the total
    last = torch.searchsorted(cdf, total, right=False)
    return torch.minimum(idx, last).squeeze(-1)


class HFPolicy(Policy):
    """Generation with a transformers causal LM.

    Args:
        model: a causal LM (shared with the learner on the same device, or a copy).
        tokenizer: its tokenizer (needs ``eos_token_id``; ``pad_token_id`` defaults to EOS).
        batch_size: max sequences decoded together.
        reuse_kv: keep each row's keys/values after a call and reuse them for a later prompt
            that extends it (``full`` context mode). Dropped whenever the weights change.
        kv_cache_bytes: most bytes of keys/values kept between calls.
        share_prefill: run identical prompts of a batch once (off only to measure it).
    """

    shares_learner_module = True  # samples with the learner's own module
    switches_adapters = True

    def __init__(self, model: nn.Module, tokenizer: Any, batch_size: int = 64,
                 reuse_kv: bool = True, kv_cache_bytes: int = 2 << 30,
                 share_prefill: bool = True) -> None:
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self._generator = torch.Generator(device="cpu")
        self.reuse_kv, self.kv_cache_bytes = reuse_kv, kv_cache_bytes
        self.share_prefill = share_prefill
        self._store = PrefixStore(kv_cache_bytes)
        self._store_version: tuple[Any, ...] = ()
        self._logits_to_keep = "logits_to_keep" in inspect.signature(model.forward).parameters
        # counters for benchmarks: prompt tokens run through the model vs reused from the cache
        self.stats = {"prompt_tokens": 0, "prefill_tokens": 0, "reused_tokens": 0}

    @classmethod
    def from_config(cls, cfg: RunConfig, model: Any, tokenizer: Any) -> HFPolicy:
        """Samples with the learner's own module (no copy, nothing to sync). Keys/values are
        kept across turns in ``full`` context mode, where later prompts extend earlier ones."""
        return cls(model, tokenizer, batch_size=cfg.rollout.batch_size,
                   reuse_kv=cfg.rollout.context == "full")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def update_weights(self, source: Any) -> None:
        self.clear_cache()
        if source is self.model:
            return  # shares the learner's module: nothing to copy
        state = source.state_dict() if isinstance(source, nn.Module) else source
        self.model.load_state_dict(state)

    def clear_cache(self) -> None:
        """Drop the keys/values kept for prefix reuse."""
        self._store = PrefixStore(self.kv_cache_bytes)

    def _weights_version(self) -> tuple[Any, ...]:
        # Every in-place write to a parameter (optimizer step, load_state_dict) bumps its
        # version counter: a store built under other weights is never reused. Nor is one
        # built under another LoRA adapter of the same model (`agentrl.learn.roles`).
        wrapper = getattr(self.model, "peft_wrapper", None)
        active = (str(wrapper.active_adapter),) if wrapper is not None else ()
        return tuple(p._version for p in self.model.parameters()) + active

    def seed(self, seed: int) -> None:
        self._generator.manual_seed(seed)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self._generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._generator.set_state(state["generator"])

    @torch.inference_mode()  # lighter than no_grad: no view or version tracking per op
    def generate(self, prompts: list[list[int]], sampling: SamplingParams,
                 candidates: list[list[list[int]] | None] | None = None) -> list[Generation]:
        if sampling.seed is not None:
            self.seed(sampling.seed)
        old = self._store
        if not self.reuse_kv or self._store_version != self._weights_version():
            old = PrefixStore(self.kv_cache_bytes)
        self._store = PrefixStore(self.kv_cache_bytes)  # this call's rows replace the last's
        out: list[Generation] = []
        with gqa_attention(self.model):
            for i in range(0, len(prompts), self.batch_size):
                chunk_c = candidates[i:i + self.batch_size] if candidates else None
                out += self._generate_chunk(prompts[i:i + self.batch_size], sampling, chunk_c,
                                            old)
        self._store_version = self._weights_version()
        return out

    def _prefill(self, prompts: list[list[int]], old: PrefixStore, reserve: int,
                 ) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run the prompts' uncached tokens; returns (cache, last logits (B, V), attention
        mask (B, T) over the cache, position of each row's last token (B,)).

        Rows with the same cached prefix and the same remaining tokens (the G samples of a
        group) are run once and fanned out.
        """
        model, dev = self.model, self.device
        pad = self._pad_id()
        cache = growing_cache(model.config, max(len(p) for p in prompts) + reserve)
        reuse = cache is not None and self.reuse_kv and bool(old.chunks)
        hits: list[Hit | None] = [old.lookup(p) if reuse else None for p in prompts]
        keyed = {}
        first: list[int] = []
        inv: list[int] = []
        for b, (p, h) in enumerate(zip(prompts, hits)):
            c = h.length if h else 0
            key = ((h.chunk, h.row, c) if h else None, tuple(p[c:]) if self.share_prefill else b)
            if key not in keyed:
                keyed[key] = len(first)
                first.append(b)
            inv.append(keyed[key])
        u_hits = [hits[b] for b in first]
        u_prompts = [prompts[b] for b in first]
        cached = [h.length if h else 0 for h in u_hits]
        S = max(len(p) - c for p, c in zip(u_prompts, cached))
        C = max(cached)
        U = len(first)
        if cache is not None:
            for layer in cache.layers:
                layer.reserve = C + S + reserve
        if cache is not None and C:
            keys, values, C = old.gather(u_hits, C + S + reserve)
            for layer, k, v in zip(cache.layers, keys, values):
                layer.load(k, v, C)
        ids = torch.full((U, S), pad, dtype=torch.long)
        attn = torch.zeros((U, C + S), dtype=torch.long)
        pos = torch.zeros((U, S), dtype=torch.long)
        for i, (p, c) in enumerate(zip(u_prompts, cached)):
            s = len(p) - c
            ids[i, S - s:] = torch.tensor(p[c:], dtype=torch.long)
            attn[i, C - c:C] = 1
            attn[i, C + S - s:] = 1
            pos[i, S - s:] = torch.arange(c, c + s)
        ids, attn, pos = ids.to(dev), attn.to(dev), pos.to(dev)
        kw: dict[str, Any] = {"logits_to_keep": 1} if self._logits_to_keep else {}
        out = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True,
                    past_key_values=cache, **kw)
        cache = out.past_key_values
        logits = out.logits[:, -1, :]
        last_pos = pos[:, -1]
        total = sum(len(p) for p in prompts)
        reused = sum(h.length if h else 0 for h in hits)
        self.stats["prompt_tokens"] += total
        self.stats["reused_tokens"] += reused
        self.stats["prefill_tokens"] += sum(len(p) - c for p, c in zip(u_prompts, cached))
        if U < len(prompts):
            idx = torch.tensor(inv, device=dev)
            for layer in cache.layers:
                if hasattr(layer, "select_rows"):
                    layer.select_rows(idx)
                else:
                    layer.batch_select_indices(idx)
            logits, attn, last_pos = logits[idx], attn[idx], last_pos[idx]
        return cache, logits, attn, last_pos

    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad) if pad is not None else self.eos_token_id

    def _generate_chunk(self, prompts: list[list[int]], sp: SamplingParams,
                        candidates: list[list[list[int]] | None] | None,
                        old: PrefixStore) -> list[Generation]:
        model, dev = self.model, self.device
        was_training = model.training
        model.eval()
        B, steps = len(prompts), sp.max_new_tokens
        pad, eos = self._pad_id(), self.eos_token_id
        cache, logits, attn, cur_pos = self._prefill(prompts, old, steps)
        prefill_width = attn.shape[1]
        # The attention mask of every decode step, written in place: (B, prefill + steps) bool.
        # sdpa takes it as (B, 1, 1, T) directly, which skips transformers' per-step mask build.
        mask = torch.zeros((B, prefill_width + steps), dtype=torch.bool, device=dev)
        mask[:, :prefill_width] = attn > 0
        four_d = getattr(model.config, "_attn_implementation", None) in ("sdpa", GQA_SDPA)
        tries = [CandidateTrie(c) if c else None for c in (candidates or [None] * B)]
        constrained = any(t is not None for t in tries)
        on_host = constrained or bool(sp.stop)  # per-token decisions that need the ids
        gen: list[list[int]] = [[] for _ in range(B)]
        allowed_log: list[list[list[int]]] = [[] for _ in range(B)]
        done_host = [False] * B
        # Uniforms for every step, drawn up front: the stream does not depend on when rows stop.
        u = None if sp.greedy else torch.rand((steps, B), generator=self._generator,
                                              dtype=torch.float64).to(dev)
        tok_buf = torch.full((B, steps), pad, dtype=torch.long, device=dev)
        lp_buf = torch.zeros((B, steps), dtype=torch.float32, device=dev)
        done = torch.zeros(B, dtype=torch.bool, device=dev)
        length = torch.full((B,), steps, dtype=torch.long, device=dev)
        cap = getattr(model.config, "final_logit_softcapping", None)
        n_steps = 0
        for s in range(steps):
            allowed_now: list[list[int] | None] = [None] * B
            allow = self._allowed(tries, gen, done_host, allowed_now, logits) \
                if constrained else None
            # greedy decoding takes the argmax of the untruncated distribution
            logp = behaviour_logprobs(logits.float(), sp.temperature, cap, allow,
                                      0 if sp.greedy else sp.top_k,
                                      1.0 if sp.greedy else sp.top_p)  # (B, V)
            nxt = logp.argmax(-1) if u is None else sample_inverse_cdf(logp, u[s])  # (B,)
            tok_buf[:, s] = nxt
            lp_buf[:, s] = logp.gather(-1, nxt[:, None]).squeeze(-1)
            n_steps = s + 1
            if on_host:
                now = self._host_stops(nxt.tolist(), gen, done_host, allowed_now,
                                       allowed_log, tries, sp, eos)
                stop_now = torch.tensor(now, dtype=torch.bool, device=dev)
            else:
                stop_now = (nxt == eos) & ~done
            length.masked_fill_(stop_now, s + 1)
            done |= stop_now
            if s + 1 == steps or bool(done.all()):
                break
            feed = torch.where(done, pad, nxt)[:, None]
            width = prefill_width + s + 1
            mask[:, width - 1] = True
            cur_pos = cur_pos + 1
            out = model(input_ids=feed,
                        attention_mask=mask[:, None, None, :width] if four_d else mask[:, :width],
                        position_ids=cur_pos[:, None], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            logits = out.logits[:, -1, :]
        model.train(was_training)
        toks = tok_buf[:, :n_steps].tolist()
        lps = lp_buf[:, :n_steps].tolist()
        lens = length.clamp(max=n_steps).tolist()
        stop_list = done.tolist()  # only a stop (EOS, stop string, candidate) ends a row early
        gens = [Generation(token_ids=toks[b][:lens[b]], logprobs=lps[b][:lens[b]],
                           finish_reason="stop" if stop_list[b] else "length",
                           allowed_ids=allowed_log[b] if tries[b] is not None else None)
                for b in range(B)]
        if self.reuse_kv:
            self._keep(cache, mask[:, :prefill_width + n_steps - 1], prefill_width, prompts,
                       gens)
        return gens

    def _allowed(self, tries: list[CandidateTrie | None], gen: list[list[int]],
                 done: list[bool], allowed_now: list[list[int] | None],
                 logits: torch.Tensor) -> torch.Tensor:
        """(B, V) bool: the ids each constrained, unfinished row may take next (recorded in
        ``allowed_now``); free-text and finished rows allow every id."""
        dev = logits.device
        free: list[int] = []
        rows: list[int] = []
        cols: list[int] = []
        for b, t in enumerate(tries):
            if t is None or done[b]:
                free.append(b)
                continue
            a = allowed_now[b] = t.allowed(gen[b])
            rows += [b] * len(a)
            cols += a
        allow = torch.zeros(logits.shape, dtype=torch.bool, device=dev)
        allow[torch.tensor(free, dtype=torch.long, device=dev)] = True
        allow[torch.tensor(rows, dtype=torch.long, device=dev),
              torch.tensor(cols, dtype=torch.long, device=dev)] = True
        return allow

    def _host_stops(self, nxt: list[int], gen: list[list[int]], done: list[bool],
                    allowed_now: list[list[int] | None], allowed_log: list[list[list[int]]],
                    tries: list[CandidateTrie | None], sp: SamplingParams, eos: int,
                    ) -> list[bool]:
        """Per-row stop decisions that need the ids on the host (candidates, stop strings);
        updates ``gen``/``done``/``allowed_log`` and returns which rows stopped now."""
        now = [False] * len(nxt)
        for b, tok in enumerate(nxt):
            if done[b]:
                continue
            gen[b].append(tok)
            if allowed_now[b] is not None:
                allowed_log[b].append(allowed_now[b])  # type: ignore[arg-type]
            t = tries[b]
            if tok == eos or (t is not None and not t.allowed(gen[b])) or (
                    sp.stop and self._hit_stop(gen[b], sp.stop)):
                done[b] = now[b] = True
        return now

    def _keep(self, cache: Any, attn: torch.Tensor, prefill_width: int,
              prompts: list[list[int]], gens: list[Generation]) -> None:
        """Store this chunk's keys/values for prefix reuse: row b's valid columns hold its
        prompt and every reply token but the last (which was sampled, never fed)."""
        layers = cache.layers
        if not all(getattr(layer, "buf_k", None) is not None for layer in layers):
            return
        B, width = attn.shape
        fed = torch.tensor([max(0, len(g.token_ids) - 1) for g in gens], device=attn.device)
        decode_cols = torch.arange(width - prefill_width, device=attn.device)
        valid = torch.cat([attn[:, :prefill_width] > 0,
                           decode_cols[None, :] < fed[:, None]], dim=1)  # (B, width)
        tokens = [p + g.token_ids[:-1] for p, g in zip(prompts, gens)]
        self._store.add([layer.buf_k for layer in layers], [layer.buf_v for layer in layers],
                        valid, tokens)
