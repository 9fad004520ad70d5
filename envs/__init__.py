"""Built-in environments. Importing this package registers their ids with gymnasium.

Each family lives in its own module and is registered here by entry-point string, so optional
dependencies (TextWorld, ALFWorld, ScienceWorld, ...) are imported only when an env is made.

Each registration also carries the env's recommended run settings (``recommended``): how the
default tiny model can learn it on a CPU (constrained decoding where the env lists concrete
actions, the action format, turn limit, context mode and prompt, the env's own kwargs and the
held-out split). ``agentrl train env.id=X`` starts from them; a config file and ``key=value``
overrides win over them (`agentrl.config.layer_config`). `configs/<family>_tiny.yaml` spells
the same settings out with an algorithm and a training budget.
"""

from agentrl.registry import register_env

# Every env whose admissible actions the tiny model picks from: the reply is the action itself,
# decoded under the constraint; no penalty for invalid actions (there are none), a small cost
# per turn so shorter successes score higher.
# (Under constrained decoding a reply ends when it completes an action, and the token budget
# stretches to the longest admissible action, so max_new_tokens is a floor there.)
_CHOOSE = {"context": "window", "history": 2, "action_format": "raw", "constrained": True,
           "invalid_penalty": 0.0, "step_penalty": 0.01}
_WITH_TASK = "{task}\nPrevious actions: {last_actions}\n{observation}"

register_env(
    "agentrl/TextWorld-CoinCollector-v0",
    entry_point="agentrl.envs.textworld_env:TextWorldEnv",
    expert="agentrl.envs.textworld_env:TextWorldExpert",
    description="TextWorld coin collector: cross a chain of rooms and take the coin",
    max_episode_steps=50,
    requires=("textworld",),
    extra="textworld",
    test_kwargs={"num_games": 2},
    unrecorded_info=("walkthrough",),
    prepare="agentrl.envs.textworld_env:prepare",
    # The quickstart's settings (its games ship with the package).
    recommended={
        "env": {"kwargs": {"level": 3, "split": "train", "num_games": 100},
                "eval_kwargs": {"split": "eval", "num_games": 100}, "train_seeds": 100},
        "rollout": {**_CHOOSE, "max_turns": 8, "max_new_tokens": 8,
                    "template": "Previous actions: {last_actions}\n{observation}"},
    },
    family="coin_collector",
    level=5,
)
register_env(
    "agentrl/TextWorld-TreasureHunter-v0",
    entry_point="agentrl.envs.textworld_env:TextWorldEnv",
    expert="agentrl.envs.textworld_env:TextWorldExpert",
    description="TextWorld treasure hunter: find the named object among distractors",
    max_episode_steps=50,
    requires=("textworld",),
    extra="textworld",
    test_kwargs={"num_games": 2},
    unrecorded_info=("walkthrough",),
    prepare="agentrl.envs.textworld_env:prepare",
    # Level 5: random play finds the object in about 1 of 6 episodes within 10 turns.
    recommended={
        "env": {"kwargs": {"level": 5, "split": "train", "num_games": 100},
                "eval_kwargs": {"split": "eval", "num_games": 50}, "train_seeds": 100},
        "rollout": {**_CHOOSE, "max_turns": 10, "max_new_tokens": 16, "template": _WITH_TASK},
    },
    family="treasure_hunter",
    level=5,
)
register_env(
    "agentrl/TextWorld-Cooking-v0",
    entry_point="agentrl.envs.textworld_env:TextWorldEnv",
    expert="agentrl.envs.textworld_env:TextWorldExpert",
    description="TextWorld cooking: gather, process and cook a recipe's ingredients",
    max_episode_steps=80,
    requires=("textworld",),
    extra="textworld",
    test_kwargs={"num_games": 2},
    unrecorded_info=("walkthrough",),
    prepare="agentrl.envs.textworld_env:prepare",
    # Level 1: one ingredient; random play earns score points but rarely cooks the meal.
    recommended={
        "env": {"kwargs": {"level": 1, "split": "train", "num_games": 100},
                "eval_kwargs": {"split": "eval", "num_games": 50}, "train_seeds": 100},
        "rollout": {**_CHOOSE, "max_turns": 10, "max_new_tokens": 24, "template": _WITH_TASK},
    },
    family="cooking",
    level=3,
)
register_env(
    "agentrl/ALFWorld-v0",
    entry_point="agentrl.envs.alfworld.env:ALFWorldEnv",
    expert="agentrl.envs.alfworld.env:ALFWorldExpert",
    description="ALFWorld household tasks (6 types) on the official text engine; "
                "generated games offline, official data via data_path",
    max_episode_steps=50,
    requires=("alfworld",),
    extra="alfworld",
    test_kwargs={"num_games": 2},
    unrecorded_info=("walkthrough",),
    isolate=True,  # the PDDL planner (fast-downward) runs in the env's process
    prepare="agentrl.envs.alfworld.generate:prepare",
    # The simplest task type (go to the object, take it, put it on the target) over a small
    # game set, and a subgoal reward for picking up the task's object, which random play
    # reaches where it almost never wins; all six types: `task_types: null`.
    recommended={
        "env": {"kwargs": {"split": "train", "num_games": 24,
                           "task_types": ["pick_and_place_simple"], "subgoal_reward": 1.0},
                "eval_kwargs": {"split": "valid_seen", "num_games": 24}, "train_seeds": 24},
        "rollout": {**_CHOOSE, "max_turns": 20, "max_new_tokens": 32, "template": _WITH_TASK},
        "policy": {"tiny_corpus_episodes": 40},
    },
    split="train",
    num_games=120,
)
register_env(
    "agentrl/ScienceWorld-v0",
    entry_point="agentrl.envs.sciworld_env:ScienceWorldEnv",
    expert="agentrl.envs.sciworld_env:ScienceWorldExpert",
    description="ScienceWorld: the real simulator (Java), 30 science tasks, train/dev/test "
                "variations, score 0-100",
    max_episode_steps=100,
    requires=("scienceworld",),
    extra="sciworld",
    test_kwargs={"task": "find-living-thing", "step_limit": 8},
    unrecorded_info=("walkthrough",),
    isolate=True,  # a JVM per worker process, shared by that worker's envs
    # One task with the simulator's valid actions listed (about 10x the cost of a step, but
    # the only way a tiny model acts meaningfully); the score (0-100) pays partial progress.
    recommended={
        "env": {"kwargs": {"task": "find-living-thing", "split": "train", "valid_actions": True,
                           "step_limit": 12},
                "eval_kwargs": {"split": "dev"}},
        "rollout": {**_CHOOSE, "max_turns": 12, "max_new_tokens": 48, "template": _WITH_TASK},
        "policy": {"tiny_corpus_episodes": 12},
    },
    step_limit=100,
)
register_env(
    "agentrl/WebShop-v0",
    entry_point="agentrl.envs.webshop.env:WebShopEnv",
    expert="agentrl.envs.webshop.oracle:WebShopExpert",
    description="WebShop: search a store, pick the product and options an instruction asks for, buy",
    max_episode_steps=15,
    requires=("rank_bm25",),
    extra="webshop",
    test_kwargs={"num_products": 300},
    prepare="agentrl.envs.webshop.env:prepare",
    # The search page offers searching the instruction itself (WebShop's template
    # `search[<query>]` cannot be chosen); the raw score (0-1) pays partial matches.
    recommended={
        "env": {"kwargs": {"num_products": 1000, "split": "train", "concrete_search": True,
                           "reward_mode": "score"},
                "eval_kwargs": {"split": "test"}},
        "rollout": {**_CHOOSE, "max_turns": 15, "max_new_tokens": 96,
                    "template": "Previous actions: {last_actions}\n{observation}"},
        "policy": {"tiny_corpus_episodes": 100},
    },
)
register_env(
    "agentrl/ToolUse-v0",
    entry_point="agentrl.envs.tooluse:ToolUseEnv",
    expert="agentrl.envs.tooluse.env:ToolUseExpert",
    description="Tool use: BM25 search, calculator and sandboxed Python over multi-hop "
                "knowledge-base questions and arithmetic word problems",
    max_episode_steps=10,
    requires=("rank_bm25",),
    extra="tooluse",
    test_kwargs={"max_steps": 6},
    # Tool calls are free text; a tiny model cannot write them, so the env lists candidate
    # calls (`action_choices`) to choose from. Arithmetic problems only: the untrained tiny
    # model's picks solved 1 of 8 of them in a measured iteration, but only 1 of 24 multi-hop
    # questions, too rare to start learning from. Pretrained models: action_choices=false,
    # both task types, rollout.constrained=false, rollout.action_format=tags.
    recommended={
        "env": {"kwargs": {"split": "train", "action_choices": True, "top_k": 1,
                           "max_steps": 6, "task_types": ["arithmetic"]},
                "eval_kwargs": {"split": "test"}},
        "rollout": {**_CHOOSE, "max_turns": 6, "max_new_tokens": 48, "template": _WITH_TASK},
    },
    max_steps=10,
)

from agentrl.envs import hub, multiagent  # noqa: E402,F401  (register hub clients, games)
