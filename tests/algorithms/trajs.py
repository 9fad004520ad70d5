"""Hand-made window-mode trajectories for algorithm tests: every turn has the same two context
tokens and ``n_tokens`` action tokens with logprob -0.5, so the arithmetic stays readable."""

from __future__ import annotations

from agentrl.types import Trajectory, Turn


def turn(reward: float = 0.0, n_tokens: int = 2) -> Turn:
    return Turn(observation="o", context_ids=[5, 6], action_ids=[7] * n_tokens,
                logprobs=[-0.5] * n_tokens, reward=reward)


def traj(gid: str, rewards: list[float], term: str = "success") -> Trajectory:
    return Trajectory(trajectory_id=f"{gid}-{id(rewards)}", group_id=gid, env_id="x", seed=0,
                      context_mode="window", turns=[turn(r) for r in rewards], termination=term)
