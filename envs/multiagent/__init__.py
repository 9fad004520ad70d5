"""Multi-agent text games: PettingZoo (AEC and Parallel) and TextArena, one turn-based text API.

Every game here is an ordinary agentrl text env whose ``info["agent"]`` says whose move it is
(see `agentrl.envs.multiagent.base`). With ``opponent="random"`` or ``"heuristic"`` the env plays
every seat but one itself, so any single-agent run or ``agentrl eval`` can use it; without an
opponent the rollout engine plays every seat and keeps one trajectory per agent.

Registered with `agentrl.register_env(..., multiagent=True)`, like any env; modules are imported
only when a game is made, so PettingZoo and TextArena load on first use.
"""

from agentrl.registry import register_env

_PZ = ("pettingzoo", "pygame")

register_env(
    "agentrl/TicTacToe-v0",
    entry_point="agentrl.envs.multiagent.classic:TicTacToe",
    description="tic-tac-toe (PettingZoo classic, AEC), two seats",
    max_episode_steps=40, requires=_PZ, multiagent=True,
)
register_env(
    "agentrl/ConnectFour-v0",
    entry_point="agentrl.envs.multiagent.classic:ConnectFour",
    description="connect four (PettingZoo classic, AEC), two seats",
    max_episode_steps=120, requires=_PZ, multiagent=True,
)
register_env(
    "agentrl/RockPaperScissors-v0",
    entry_point="agentrl.envs.multiagent.classic:RockPaperScissors",
    description="repeated rock-paper-scissors (PettingZoo classic, Parallel API): "
                "simultaneous throws, hidden until both have thrown",
    max_episode_steps=60, requires=_PZ, multiagent=True, rounds=5,
)
register_env(
    "agentrl/KuhnPoker-v0",
    entry_point="agentrl.envs.multiagent.kuhn:KuhnPoker",
    description="Kuhn poker (hidden cards; PettingZoo AEC env), two seats",
    max_episode_steps=15, requires=("pettingzoo",), multiagent=True,
)
register_env(
    "agentrl/GuideWalker-v0",
    entry_point="agentrl.envs.multiagent.guide:GuideWalker",
    description="cooperative: a guide who sees the map talks a blind walker to the goal "
                "(PettingZoo AEC env)",
    max_episode_steps=40, requires=("pettingzoo",), multiagent=True, size=3, rounds=4,
)
register_env(
    "agentrl/TextArena-TicTacToe-v0",
    entry_point="agentrl.envs.multiagent.textarena_env:TextArenaEnv",
    description="TextArena tic-tac-toe (its own text and rules), two seats",
    max_episode_steps=40, requires=("textarena",), multiagent=True, game="TicTacToe-v0-train",
)
register_env(
    "agentrl/TextArena-KuhnPoker-v0",
    entry_point="agentrl.envs.multiagent.textarena_env:TextArenaEnv",
    description="TextArena Kuhn poker, 3 hands (hidden cards), two seats",
    max_episode_steps=40, requires=("textarena",), multiagent=True, game="KuhnPoker-v0-train",
)
