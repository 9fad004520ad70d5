"""agentrl: reinforcement learning for LLM agents on long-horizon, multi-turn text environments.

User code imports from here, never from the layout underneath::

    import agentrl
    cfg = agentrl.load_config("configs/quickstart.yaml", ["trainer.iterations=5"])
    agentrl.Trainer(cfg).train()

The names are loaded on first use (``import agentrl`` stays light: no torch, no transformers),
so ``from agentrl import Trainer`` costs what the trainer costs and nothing else does.
Documented subpackages: `agentrl.algorithms.functional` (the pure math algorithms compose),
`agentrl.testing` (the env checkers), `agentrl.envs`, `agentrl.policies`, `agentrl.algorithms`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from agentrl.registry import (
    is_multiagent,
    make_env,
    register_algorithm,
    register_env,
    register_tool_parser,
)
from agentrl.types import Trajectory, Turn

__version__ = "0.1.0"

#: public name -> the module that defines it (imported when the name is first read)
_LAZY: dict[str, str] = {
    # configuration
    "load_config": "agentrl.config",
    "Config": "agentrl.config",
    "ConfigError": "agentrl.fields",
    "F": "agentrl.fields",
    # the recipe and evaluation
    "Trainer": "agentrl.trainer",
    "EvalSettings": "agentrl.evaluate",
    "run_eval_command": "agentrl.evaluate",
    # plugin bases: envs, games, algorithms, policy backends, env pools
    "TextEnv": "agentrl.envs.base",
    "MultiAgentTextEnv": "agentrl.envs.multiagent.base",
    "start_aec": "agentrl.envs.multiagent.base",
    "begin_aec_step": "agentrl.envs.multiagent.base",
    "Algorithm": "agentrl.algorithms.base",
    "AlgorithmConfig": "agentrl.algorithms.base",
    "Policy": "agentrl.policies.base",
    "PolicyConfig": "agentrl.policies.base",
    "SamplingParams": "agentrl.policies.base",
    "Generation": "agentrl.policies.base",
    "CandidateTrie": "agentrl.policies.base",
    "SeededRNG": "agentrl.policies.base",
    "EnvPool": "agentrl.envpool",
    "EnvResult": "agentrl.envpool",
    # conformance checks
    "check_env": "agentrl.testing",
    "check_multiagent_env": "agentrl.testing",
}

__all__ = [
    "make_env", "register_env", "register_algorithm", "register_tool_parser", "is_multiagent", "Trajectory", "Turn",
    "__version__", "load_config", "Config", "ConfigError", "F", "Trainer", "EvalSettings",
    "run_eval_command", "TextEnv", "MultiAgentTextEnv", "start_aec", "begin_aec_step",
    "Algorithm", "AlgorithmConfig", "Policy", "PolicyConfig", "SamplingParams", "Generation",
    "CandidateTrie", "SeededRNG", "EnvPool", "EnvResult", "check_env", "check_multiagent_env",
]

if TYPE_CHECKING:  # what the lazy names are, for type checkers and editors
    from agentrl.algorithms.base import Algorithm, AlgorithmConfig
    from agentrl.config import Config, load_config
    from agentrl.envpool import EnvPool, EnvResult
    from agentrl.envs.base import TextEnv
    from agentrl.envs.multiagent.base import MultiAgentTextEnv, begin_aec_step, start_aec
    from agentrl.evaluate import EvalSettings, run_eval_command
    from agentrl.fields import ConfigError, F
    from agentrl.policies.base import (
        CandidateTrie,
        Generation,
        Policy,
        PolicyConfig,
        SamplingParams,
        SeededRNG,
    )
    from agentrl.testing import check_env, check_multiagent_env
    from agentrl.trainer import Trainer


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'agentrl' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next read is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
