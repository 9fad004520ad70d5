"""agentrl: reinforcement learning for LLM agents on long-horizon, multi-turn text environments."""

from agentrl.registry import make_env, register_algorithm, register_env
from agentrl.types import Trajectory, Turn

__version__ = "0.1.0"
__all__ = ["make_env", "register_env", "register_algorithm", "Trajectory", "Turn", "__version__"]
