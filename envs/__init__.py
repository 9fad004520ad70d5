"""Built-in environments. Importing this package registers their ids with gymnasium.

Each family lives in its own module and is registered here by entry-point string, so optional
dependencies (TextWorld, ALFWorld, ScienceWorld, ...) are imported only when an env is made.
"""

from agentrl.registry import register_env

register_env(
    "agentrl/TextWorld-CoinCollector-v0",
    entry_point="agentrl.envs.textworld_env:TextWorldEnv",
    description="TextWorld coin collector: cross a chain of rooms and take the coin",
    max_episode_steps=50,
    requires=("textworld",),
    test_kwargs={"num_games": 2},
    unrecorded_info=("walkthrough",),
    family="coin_collector",
    level=5,
)
register_env(
    "agentrl/TextWorld-TreasureHunter-v0",
    entry_point="agentrl.envs.textworld_env:TextWorldEnv",
    description="TextWorld treasure hunter: find the named object among distractors",
    max_episode_steps=50,
    requires=("textworld",),
    test_kwargs={"num_games": 2},
    unrecorded_info=("walkthrough",),
    family="treasure_hunter",
    level=5,
)
register_env(
    "agentrl/TextWorld-Cooking-v0",
    entry_point="agentrl.envs.textworld_env:TextWorldEnv",
    description="TextWorld cooking: gather, process and cook a recipe's ingredients",
    max_episode_steps=80,
    requires=("textworld",),
    test_kwargs={"num_games": 2},
    unrecorded_info=("walkthrough",),
    family="cooking",
    level=3,
)
register_env(
    "agentrl/ALFWorld-v0",
    entry_point="agentrl.envs.alfworld.env:ALFWorldEnv",
    description="ALFWorld household tasks (6 types) on the official text engine; "
                "generated games offline, official data via data_path",
    max_episode_steps=50,
    requires=("alfworld",),
    test_kwargs={"num_games": 2},
    unrecorded_info=("walkthrough",),
    isolate=True,  # the PDDL planner (fast-downward) runs in the env's process
    split="train",
    num_games=120,
)
register_env(
    "agentrl/ScienceWorld-v0",
    entry_point="agentrl.envs.sciworld_env:ScienceWorldEnv",
    description="ScienceWorld: the real simulator (Java), 30 science tasks, train/dev/test "
                "variations, score 0-100",
    max_episode_steps=100,
    requires=("scienceworld",),
    test_kwargs={"task": "find-living-thing", "step_limit": 8},
    unrecorded_info=("walkthrough",),
    isolate=True,  # a JVM per worker process, shared by that worker's envs
    step_limit=100,
)
register_env(
    "agentrl/WebShop-v0",
    entry_point="agentrl.envs.webshop.env:WebShopEnv",
    description="WebShop: search a store, pick the product and options an instruction asks for, buy",
    max_episode_steps=15,
    requires=("rank_bm25",),
    test_kwargs={"num_products": 300},
)
register_env(
    "agentrl/ToolUse-v0",
    entry_point="agentrl.envs.tooluse:ToolUseEnv",
    description="Tool use: BM25 search, calculator and sandboxed Python over multi-hop "
                "knowledge-base questions and arithmetic word problems",
    max_episode_steps=10,
    requires=("rank_bm25",),
    test_kwargs={"max_steps": 6},
    max_steps=10,
)

from agentrl.envs import multiagent  # noqa: E402,F401  (registers the games)
