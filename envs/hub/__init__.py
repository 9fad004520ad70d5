"""Environments from hubs: OpenEnv servers by URL (`agentrl.envs.hub.openenv`), and agentrl
envs for TRL's ``GRPOTrainer(environment_factory=...)`` (`trl_environment`, and
`with_tool_calling` for a ChatML tokenizer without tool support), and an agentrl env as a
verifiers environment (`AgentrlVerifiersEnv`, imported on first use: it imports verifiers)."""

from typing import Any

from agentrl.envs.hub.trl import trl_environment, with_tool_calling
from agentrl.registry import register_env

__all__ = ["AgentrlVerifiersEnv", "trl_environment", "with_tool_calling"]


def __getattr__(name: str) -> Any:
    """``AgentrlVerifiersEnv`` on first use, so importing the hub does not import verifiers."""
    if name == "AgentrlVerifiersEnv":
        from agentrl.envs.hub.verifiers_env import AgentrlVerifiersEnv
        return AgentrlVerifiersEnv
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

register_env(
    "agentrl/OpenEnv-v0",
    entry_point="agentrl.envs.hub.openenv:OpenEnvClient",
    description="any OpenEnv environment server, by URL (env.kwargs.url), or an agentrl env "
                "served locally over OpenEnv (env.kwargs.serve)",
    requires=("websockets",),
    extra="hub",
    test_kwargs={"serve": "agentrl/TicTacToe-v0", "serve_kwargs": {"opponent": "random"}},
    # The quickstart's task and settings, through a local OpenEnv server.
    recommended={
        "env": {"kwargs": {"serve": "agentrl/TextWorld-CoinCollector-v0",
                           "serve_kwargs": {"level": 3, "split": "train", "num_games": 100}},
                "eval_kwargs": {"serve_kwargs": {"level": 3, "split": "eval",
                                                 "num_games": 100}},
                "train_seeds": 100},
        "rollout": {"context": "window", "history": 2, "action_format": "raw",
                    "constrained": True, "invalid_penalty": 0.0, "step_penalty": 0.01,
                    "max_turns": 8, "max_new_tokens": 8,
                    "template": "Previous actions: {last_actions}\n{observation}"},
    },
)
register_env(
    "agentrl/Verifiers-v0",
    entry_point="agentrl.envs.hub.verifiers_env:VerifiersEnv",
    description="any verifiers environment (classic vf.SingleTurnEnv / vf.MultiTurnEnv and its "
                "vf.Rubric as the reward), by 'pkg.module:function' or installed env id "
                "(env.kwargs.environment)",
    requires=("verifiers",),
    extra="verifiers",
    test_kwargs={"environment": "agentrl.envs.hub.verifiers_tasks:guess_number",
                 "choices": "choices"},
    # The arithmetic example env with its candidate replies (configs/verifiers_tiny.yaml).
    recommended={
        "env": {"kwargs": {"environment": "agentrl.envs.hub.verifiers_tasks:arithmetic",
                           "choices": "choices"},
                "eval_kwargs": {"split": "eval"}, "train_seeds": 200},
        "rollout": {"context": "window", "history": 0, "template": "{observation}",
                    "action_format": "raw", "constrained": True, "invalid_penalty": 0.0,
                    "max_turns": 1, "max_new_tokens": 4},
    },
)
