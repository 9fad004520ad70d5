"""agentrl envs for TRL's ``GRPOTrainer(environment_factory=...)`` (TRL >= 1.16).

TRL's multi-turn environment interface is a class whose instances TRL builds once and reuses:
``reset(**example)`` starts an episode and returns text appended to the prompt, every public
method other than ``reset`` and ``get_reward`` is a tool the model calls (its schema comes
from the type hints and the Google-style docstring), and ``get_reward()`` scores the finished
rollout. `trl_environment` makes such a class for any registered agentrl env:

    from trl import GRPOConfig, GRPOTrainer
    from agentrl.envs.hub.trl import trl_environment

    factory = trl_environment("agentrl/TextWorld-CoinCollector-v0", level=3, num_games=100)
    trainer = GRPOTrainer(model="Qwen/Qwen3-0.6B", environment_factory=factory,
                          args=GRPOConfig(max_steps=100, ...))

The one tool is ``act(action)``: one env step, returning the next observation (with the
admissible actions, where the env lists them). The reward is the episode's return. Episodes
are seeded from the dataset row's ``seed`` column when there is one, else from a counter per
instance. TRL needs a model whose chat template renders tool calls (it checks).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class AgentrlTRLEnv:
    """One agentrl env behind TRL's environment interface (see the module docstring)."""

    env_id: str = ""
    env_kwargs: dict[str, Any] = {}

    def __init__(self) -> None:
        from agentrl.registry import make_env

        self._env = make_env(self.env_id, **self.env_kwargs)
        self._episodes, self._return, self._done = 0, 0.0, True
        self.info: dict[str, Any] = {}

    def reset(self, **example: Any) -> str:
        seed = example.get("seed")
        seed = self._episodes if seed is None else int(seed)
        self._episodes += 1
        obs, self.info = self._env.reset(seed=seed)
        self._return, self._done = 0.0, False
        task = self.info.get("task")
        return (f"{task}\n" if task and task not in obs else "") + self._show(obs)

    def act(self, action: str) -> str:
        """Take one action in the environment.

        Args:
            action: The action to take, e.g. one of the admissible actions listed.

        Returns:
            What the environment shows after the action.
        """
        if self._done:
            return "The episode is over."
        obs, reward, terminated, truncated, self.info = self._env.step(str(action))
        self._return += float(reward)
        self._done = bool(terminated or truncated)
        if self._done:
            result = "succeeded" if self.info.get("success") else "ended"
            return f"{obs}\nThe episode {result}."
        return self._show(obs)

    def get_reward(self) -> float:
        """The return of the episode since the last reset."""
        return self._return

    def _show(self, obs: str) -> str:
        actions = self.info.get("admissible_actions")
        return f"{obs}\nAdmissible actions: {', '.join(actions)}" if actions else obs


def trl_environment(env_id: str, **env_kwargs: Any) -> Callable[[], AgentrlTRLEnv]:
    """A class for ``GRPOTrainer(environment_factory=...)`` whose instances play ``env_id``
    made with ``env_kwargs``; an unknown id or a missing package fails here, in one line."""
    from agentrl.registry import check_env_id, missing_requirement

    check_env_id(env_id)
    missing = missing_requirement(env_id)
    if missing:
        raise ImportError(missing)
    name = "".join(c for c in env_id.split("/")[-1].split("-v")[0] if c.isalnum()) or "Env"
    # A class of its own per env: TRL names the reward column after the class.
    return type(f"{name}TRLEnv", (AgentrlTRLEnv,),
                {"env_id": env_id, "env_kwargs": dict(env_kwargs),
                 "__module__": __name__, "__doc__": f"{env_id} for TRL's GRPOTrainer."})
