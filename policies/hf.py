"""Hugging Face backend: batched sampling with a KV cache, exact ids and logprobs.

Our own decoding loop (rather than ``model.generate``) so that every returned logprob is the
raw-logit ``log_softmax(logits / T)`` of the token actually drawn, constrained decoding is a mask
on those same logits, and nothing is re-tokenized. With top-k/top-p the token is drawn from the
truncated, renormalised distribution (`truncate_logits`) and that distribution's logprob is what
is returned (the learner truncates the same way).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from agentrl.policies.base import (
    CandidateTrie,
    Generation,
    Policy,
    SamplingParams,
    truncate_logits,
)

if TYPE_CHECKING:
    from agentrl.config import Config


class HFPolicy(Policy):
    """Generation with a transformers causal LM.

    Args:
        model: a causal LM (shared with the learner on the same device, or a copy).
        tokenizer: its tokenizer (needs ``eos_token_id``; ``pad_token_id`` defaults to EOS).
        batch_size: max sequences decoded together.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, batch_size: int = 64) -> None:
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self._generator = torch.Generator(device="cpu")

    @classmethod
    def from_config(cls, cfg: Config, model: Any, tokenizer: Any) -> HFPolicy:
        """Samples with the learner's own module (no copy, nothing to sync)."""
        return cls(model, tokenizer, batch_size=cfg.rollout.batch_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def update_weights(self, source: Any) -> None:
        if source is self.model:
            return  # shares the learner's module: nothing to copy
        state = source.state_dict() if isinstance(source, nn.Module) else source
        self.model.load_state_dict(state)

    def seed(self, seed: int) -> None:
        self._generator.manual_seed(seed)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self._generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._generator.set_state(state["generator"])

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], sampling: SamplingParams,
                 candidates: list[list[list[int]] | None] | None = None) -> list[Generation]:
        if sampling.seed is not None:
            self.seed(sampling.seed)
        out: list[Generation] = []
        for i in range(0, len(prompts), self.batch_size):
            chunk_c = candidates[i:i + self.batch_size] if candidates else None
            out += self._generate_chunk(prompts[i:i + self.batch_size], sampling, chunk_c)
        return out

    def _generate_chunk(self, prompts: list[list[int]], sp: SamplingParams,
                        candidates: list[list[list[int]] | None] | None) -> list[Generation]:
        model, dev = self.model, self.device
        was_training = model.training
        model.eval()
        B = len(prompts)
        P = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_token_id
        ids = torch.full((B, P), pad, dtype=torch.long)
        attn = torch.zeros((B, P), dtype=torch.long)
        for b, p in enumerate(prompts):  # left padding
            ids[b, P - len(p):] = torch.tensor(p, dtype=torch.long)
            attn[b, P - len(p):] = 1
        ids, attn = ids.to(dev), attn.to(dev)
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        tries = [CandidateTrie(c) if c else None for c in (candidates or [None] * B)]
        eos = self.eos_token_id
        stop_ids = {eos}
        gen: list[list[int]] = [[] for _ in range(B)]
        lps: list[list[float]] = [[] for _ in range(B)]
        allowed_log: list[list[list[int]]] = [[] for _ in range(B)]
        done = [False] * B
        finish = ["length"] * B
        out = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True)
        past = out.past_key_values
        logits = out.logits[:, -1, :]
        cur_pos = pos[:, -1]
        for _step in range(sp.max_new_tokens):
            z = logits.float() / sp.temperature  # (B, V)
            cap = getattr(model.config, "final_logit_softcapping", None)
            if cap:
                z = torch.tanh(logits.float() / cap) * cap / sp.temperature
            allowed_now: list[list[int] | None] = [None] * B
            if any(t is not None for t in tries):
                mask = torch.zeros_like(z, dtype=torch.bool)
                for b, t in enumerate(tries):
                    if t is None or done[b]:
                        mask[b] = True
                        continue
                    a = t.allowed(gen[b])
                    allowed_now[b] = a
                    mask[b, a] = True
                z = torch.where(mask, z, torch.finfo(z.dtype).min)
            logp = torch.log_softmax(z, dim=-1)  # (B, V)
            if not sp.greedy and (sp.top_k > 0 or sp.top_p < 1.0):
                # the distribution the token is drawn from, so its logprob is the behaviour's
                logp = torch.log_softmax(truncate_logits(logp, sp.top_k, sp.top_p), dim=-1)
            nxt = self._choose(logp, sp)
            chosen_lp = logp.gather(-1, nxt[:, None]).squeeze(-1).cpu().tolist()
            nxt_list = nxt.cpu().tolist()
            for b in range(B):
                if done[b]:
                    continue
                tok = nxt_list[b]
                gen[b].append(tok)
                lps[b].append(chosen_lp[b])
                if allowed_now[b] is not None:
                    allowed_log[b].append(allowed_now[b])
                if tok in stop_ids or (tries[b] is not None and not tries[b].allowed(gen[b])):
                    done[b], finish[b] = True, "stop"
                elif sp.stop and self._hit_stop(gen[b], sp.stop):
                    done[b], finish[b] = True, "stop"
            if all(done):
                break
            feed = torch.tensor([pad if done[b] else nxt_list[b] for b in range(B)],
                                dtype=torch.long, device=dev)[:, None]
            attn = torch.cat([attn, torch.ones((B, 1), dtype=torch.long, device=dev)], dim=1)
            cur_pos = cur_pos + 1
            out = model(input_ids=feed, attention_mask=attn, position_ids=cur_pos[:, None],
                        past_key_values=past, use_cache=True)
            past = out.past_key_values
            logits = out.logits[:, -1, :]
        model.train(was_training)
        return [Generation(token_ids=gen[b], logprobs=lps[b], finish_reason=finish[b],
                           allowed_ids=allowed_log[b] if tries[b] is not None else None)
                for b in range(B)]

    def _choose(self, logp: torch.Tensor, sp: SamplingParams) -> torch.Tensor:
        """Greedy argmax, or a draw from ``softmax(logp)`` (B, V), already truncated."""
        if sp.greedy:
            return logp.argmax(-1)
        probs = torch.softmax(logp, dim=-1).cpu()
        return torch.multinomial(probs, 1, generator=self._generator).squeeze(-1).to(logp.device)

    def _hit_stop(self, ids: list[int], stops: list[str]) -> bool:
        tail = self.tokenizer.decode(ids[-16:], skip_special_tokens=False)
        return any(s in tail for s in stops)
