"""Algorithms: one file each, registered by name (`agentrl algorithms` lists them)."""

from agentrl.algorithms import aepo, empg, epo, gigpo, grpo, ppo, sft, spear  # noqa: F401  (registration)
from agentrl.algorithms.base import Algorithm, AlgorithmConfig

__all__ = ["Algorithm", "AlgorithmConfig"]
