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


def _play(max_turns: int, opponent: str | None = "random") -> dict:
    """Recommended settings: pick a legal move (constrained decoding over the admissible
    moves) with a turn limit that lets a whole game finish, no step penalty, and one seat
    played against a scripted random opponent, so every trajectory is one player's game."""
    rec: dict = {"rollout": {"context": "window", "history": 2, "action_format": "raw",
                             "constrained": True, "invalid_penalty": 0.0, "step_penalty": 0.0,
                             "max_new_tokens": 16, "max_turns": max_turns,
                             "template": "Previous actions: {last_actions}\n{observation}"}}
    if opponent:
        rec["env"] = {"kwargs": {"opponent": opponent}}
    return rec


register_env(
    "agentrl/TicTacToe-v0",
    entry_point="agentrl.envs.multiagent.classic:TicTacToe",
    description="tic-tac-toe (PettingZoo classic, AEC), two seats",
    max_episode_steps=40, requires=_PZ, multiagent=True,
    extra="multiagent", recommended=_play(9),
)
register_env(
    "agentrl/ConnectFour-v0",
    entry_point="agentrl.envs.multiagent.classic:ConnectFour",
    description="connect four (PettingZoo classic, AEC), two seats",
    max_episode_steps=120, requires=_PZ, multiagent=True,
    extra="multiagent", recommended=_play(21),
)
register_env(
    "agentrl/RockPaperScissors-v0",
    entry_point="agentrl.envs.multiagent.classic:RockPaperScissors",
    description="repeated rock-paper-scissors (PettingZoo classic, Parallel API): "
                "simultaneous throws, hidden until both have thrown",
    max_episode_steps=60, requires=_PZ, multiagent=True,
    extra="multiagent", recommended=_play(5), rounds=5,
)
register_env(
    "agentrl/KuhnPoker-v0",
    entry_point="agentrl.envs.multiagent.kuhn:KuhnPoker",
    description="Kuhn poker (hidden cards; PettingZoo AEC env), two seats",
    max_episode_steps=15, requires=("pettingzoo",), multiagent=True,
    extra="multiagent", recommended=_play(3),
)
register_env(
    "agentrl/GuideWalker-v0",
    entry_point="agentrl.envs.multiagent.guide:GuideWalker",
    description="cooperative: a guide who sees the map talks a blind walker to the goal "
                "(PettingZoo AEC env)",
    max_episode_steps=40, requires=("pettingzoo",), multiagent=True,
    extra="multiagent", recommended=_play(8), size=3, rounds=4,
)
register_env(
    "agentrl/TextArena-TicTacToe-v0",
    entry_point="agentrl.envs.multiagent.textarena_env:TextArenaEnv",
    description="TextArena tic-tac-toe (its own text and rules), two seats",
    max_episode_steps=40, requires=("textarena",), multiagent=True,
    extra="multiagent", recommended=_play(9, opponent=None), game="TicTacToe-v0-train",
)
register_env(
    "agentrl/TextArena-KuhnPoker-v0",
    entry_point="agentrl.envs.multiagent.textarena_env:TextArenaEnv",
    description="TextArena Kuhn poker, 3 hands (hidden cards), two seats",
    max_episode_steps=40, requires=("textarena",), multiagent=True,
    extra="multiagent", recommended=_play(8, opponent=None), game="KuhnPoker-v0-train",
)
