"""agentrl/ALFWorld-v0: generated games in the official layout, the official loader, the planner
expert, determinism and invalid actions."""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
from pathlib import Path

import alfworld  # noqa: E402, F401  (a missing extra fails here: pip install -e '.[all]')
import pytest

from agentrl.envs.alfworld import generate as gen  # noqa: E402
from agentrl.envs.alfworld.env import ALFWorldEnv, find_official_games  # noqa: E402

SIX = 6  # one game of each task type (round-robin order)


@pytest.fixture(scope="session")
def train_games() -> list[str]:
    """The first six train games (one per task type), in the session's shared cache."""
    return gen.ensure_games("train", SIX, progress=False)


@pytest.fixture(scope="module")
def env(train_games: list[str]) -> ALFWorldEnv:
    e = ALFWorldEnv(split="train", num_games=SIX)
    yield e
    e.close()


def test_generated_games_use_the_official_layout(train_games: list[str]) -> None:
    types = []
    for path in train_games:
        trial = os.path.dirname(path)
        task_dir = os.path.basename(os.path.dirname(trial))
        assert os.path.basename(trial).startswith("trial_T")
        assert os.path.basename(os.path.dirname(os.path.dirname(trial))) == "train"
        assert "json_2.1.1" in path
        with open(os.path.join(trial, "traj_data.json")) as f:
            traj = json.load(f)
        with open(path) as f:
            game = json.load(f)
        with open(os.path.join(trial, "initial_state.pddl")) as f:
            problem = f.read()
        params = traj["pddl_params"]
        second = params["parent_target"] or params["toggle_target"]
        assert task_dir == (f"{traj['task_type']}-{params['object_target']}-None-{second}-"
                            f"{traj['scene']['scene_num']}")
        assert game["solvable"] is True and game["walkthrough"]
        assert game["pddl_problem"] == problem and "(:domain alfred)" in problem
        assert "_bar_" in problem  # ALFRED-style ids, demangled to "apple 1"
        assert "UNKNOWN GOAL" not in game["grammar"]
        assert traj["turk_annotations"]["anns"][0]["task_desc"] in game["grammar"]
        types.append(traj["task_type"])
    assert types == list(gen.TASK_TYPES)


def test_splits_keep_unseen_floor_plans_out_of_training() -> None:
    train = {gen.sample_spec("train", t, i).layout.scene for t in gen.TASK_TYPES for i in range(8)}
    unseen = {gen.sample_spec("valid_unseen", t, i).layout.scene
              for t in gen.TASK_TYPES for i in range(8)}
    assert unseen and not unseen & train
    assert unseen <= set(gen.scenes_for("valid_unseen"))
    # valid_seen shares floor plans with train but not the task instances.
    a, b = gen.sample_spec("train", gen.TASK_TYPES[0], 0), gen.sample_spec("valid_seen",
                                                                            gen.TASK_TYPES[0], 0)
    assert b.layout.scene in gen.scenes_for("train") and a.trial != b.trial
    # Every split has a room for every task type.
    for split in gen.SPLITS:
        for t in gen.TASK_TYPES:
            assert gen.sample_spec(split, t, 3).task_type == t


def test_official_loader_plays_generated_games(train_games: list[str]) -> None:
    from alfworld.agents.environment import get_environment
    from alfworld.info import ALFRED_PDDL_PATH, ALFRED_TWL2_PATH

    data = os.path.dirname(os.path.dirname(os.path.dirname(train_games[0])))
    config = {
        "env": {"type": "AlfredTWEnv", "goal_desc_human_anns_prob": 0,
                "task_types": [1, 2, 3, 4, 5, 6], "domain_randomization": False,
                "expert_type": "planner"},
        "dataset": {"data_path": data, "num_train_games": -1},
        "logic": {"domain": ALFRED_PDDL_PATH, "grammar": ALFRED_TWL2_PATH},
        "general": {"training_method": "dagger"},
        "dagger": {"training": {"max_nb_steps_per_episode": 50}},
    }
    alf = get_environment("AlfredTWEnv")(config, train_eval="train")
    assert set(train_games) <= set(alf.game_files)
    tw_env = alf.init_env(batch_size=1)
    try:
        obs, infos = tw_env.reset()
        assert obs[0].startswith("-= Welcome to TextWorld, ALFRED! =-")
        assert "Your task is to: " in obs[0]
        with open(infos["extra.gamefile"][0]) as f:
            walkthrough = json.load(f)["walkthrough"]
        for a in walkthrough:
            obs, _, dones, infos = tw_env.step([a])
        assert infos["won"][0] and dones[0]
    finally:
        tw_env.close()


def test_expert_solves_every_task_type(env: ALFWorldEnv) -> None:
    seen = set()
    for seed in range(SIX):
        obs, info = env.reset(seed=seed)
        seen.add(info["task_type"])
        assert info["task"] and info["task"] in obs
        assert env.expert_actions()  # the planner finds a plan from the start state too
        rewards = []
        for a in info["walkthrough"]:
            assert a in info["admissible_actions"]
            obs, r, term, trunc, info = env.step(a)
            rewards.append(r)
        assert info["success"] and term and not trunc
        assert rewards[-1] == 10.0 and sum(rewards) == 10.0
        assert env.expert_actions() == []
    assert seen == set(gen.TASK_TYPES)


def test_replanning_expert_recovers_after_random_actions(env: ALFWorldEnv) -> None:
    rng = random.Random(0)
    for seed in (0, 5):  # pick-and-place and pick-two
        _, info = env.reset(seed=seed)
        for _ in range(4):
            _, _, _, _, info = env.step(rng.choice(info["admissible_actions"]))
        for _ in range(40):
            plan = env.expert_actions()
            _, _, term, _, info = env.step(plan[0])
            if term:
                break
        assert info["success"]


def test_same_seed_same_game_and_transitions(env: ALFWorldEnv, train_games: list[str]) -> None:
    other = ALFWorldEnv(split="train", num_games=SIX)
    try:
        for seed in (2, 2 + SIX):  # seed % num_games picks the game
            o1, i1 = env.reset(seed=seed)
            o2, i2 = other.reset(seed=seed)
            assert (o1, i1["admissible_actions"], i1["game_file"]) == (
                o2, i2["admissible_actions"], i2["game_file"])
            assert i1["game_file"] == train_games[2]
            for k in range(6):
                a = i1["admissible_actions"][(3 * k + 1) % len(i1["admissible_actions"])]
                s1, s2 = env.step(a), other.step(a)
                assert s1[:4] == s2[:4]
                i1 = s1[4]
                assert i1["admissible_actions"] == s2[4]["admissible_actions"]
        assert env.reset(seed=0)[0] != env.reset(seed=1)[0]
    finally:
        other.close()


def test_any_action_string_is_a_no_op_step(env: ALFWorldEnv) -> None:
    obs, info = env.reset(seed=0)
    for a in ("", "x" * 100_000, "\x00\xff binary", "日本語", "go to the moon", "take"):
        o, r, term, trunc, inf = env.step(a)
        assert (o, r, term, trunc, inf["action_valid"]) == ("Nothing happens.", 0.0, False,
                                                            False, False)
        assert inf["admissible_actions"] == info["admissible_actions"]
        assert inf["state_key"] == info["state_key"]  # state unchanged
    # Case and spacing are normalised like verl-agent's lower-casing projection.
    target = info["walkthrough"][0]
    o, _, _, _, inf = env.step("  " + target.upper().replace(" ", "   ") + " ")
    assert inf["action_valid"] and o.startswith("You arrive at")
    # After the episode ends, steps are still answered.
    env.reset(seed=0)
    for a in info["walkthrough"]:
        env.step(a)
    o, r, term, _, inf = env.step("look")
    assert term and r == 0.0 and inf["action_valid"] is False


def test_state_key_is_history_free(env: ALFWorldEnv) -> None:
    _, info = env.reset(seed=1)
    receps = [a for a in info["admissible_actions"] if a.startswith("go to ")]
    env.step(receps[0])
    _, _, _, _, via_detour = env.step(receps[1])
    env.reset(seed=1)
    _, _, _, _, direct = env.step(receps[1])
    assert via_detour["state_key"] == direct["state_key"]
    assert direct["state_key"] != info["state_key"]


def test_cached_engine_matches_stock_engine(train_games: list[str]) -> None:
    """The command-rendering and translation caches must not change what the engine says."""
    import textworld
    from alfworld.agents.environment.alfred_tw_env import AlfredDemangler
    from textworld.envs.pddl import PddlEnv

    from agentrl.envs.alfworld.engine import CachedTranslations, keep_argv, make_engine

    stock = AlfredDemangler()(PddlEnv(textworld.EnvInfos(admissible_commands=True, won=True)))
    fast, memo = make_engine(), CachedTranslations()
    rng = random.Random(1)
    for game in (train_games[5],):  # pick_two: the most objects moving between receptacles
        with keep_argv():
            stock.load(game)
            s1 = stock.reset()
        for _ in range(2):  # the second reset reuses the memoized translation
            with memo.active():
                fast.load(game)
                s2 = fast.reset()
        assert s1["feedback"] == s2["feedback"]
        for _ in range(10):
            assert s1["admissible_commands"] == s2["admissible_commands"]
            a = rng.choice(s1["admissible_commands"])
            s1, _, _ = stock.step(a)
            s2, _, _ = fast.step(a)
            assert (s1["feedback"], s1["won"]) == (s2["feedback"], s2["won"])


def test_official_data_path_filters_like_the_official_loader(train_games: list[str],
                                                               tmp_path: Path) -> None:
    split = tmp_path / "json_2.1.1" / "valid_seen"
    for i, game in enumerate(train_games[:3]):
        trial = os.path.dirname(game)
        name = os.path.basename(os.path.dirname(trial))
        if i == 1:
            name = name.replace("-None-", "-movable-")  # the official loader skips these
        shutil.copytree(trial, split / name / os.path.basename(trial))
    unsolvable = split / "x-unsolvable" / "trial_T0"
    shutil.copytree(os.path.dirname(train_games[4]), unsolvable)
    data = json.loads((unsolvable / "game.tw-pddl").read_text())
    data["solvable"] = False
    (unsolvable / "game.tw-pddl").write_text(json.dumps(data))

    games = find_official_games(str(tmp_path), "valid_seen")
    assert [os.path.basename(os.path.dirname(g)) for g in games] == sorted(
        os.path.basename(os.path.dirname(g)) for g in (train_games[0], train_games[2]))
    assert find_official_games(str(tmp_path), "valid_seen", ["look_at_obj_in_light"]) == [
        g for g in games if "look_at_obj_in_light" in g]
    e = ALFWorldEnv(split="valid_seen", data_path=str(tmp_path), num_games=None)
    try:
        assert e.num_games == 2
        _, info = e.reset(seed=0)
        for a in info["walkthrough"]:
            *_, info = e.step(a)
        assert info["success"]
    finally:
        e.close()
    with pytest.raises(FileNotFoundError, match="alfworld-download"):
        ALFWorldEnv(split="valid_unseen", data_path=str(tmp_path / "nothing"))


def test_arguments_are_validated_and_filters_apply(train_games: list[str]) -> None:
    with pytest.raises(ValueError, match="split"):
        ALFWorldEnv(split="test", num_games=1)
    with pytest.raises(ValueError, match="task types"):
        ALFWorldEnv(task_types=["pick_and_place"], num_games=1)
    e = ALFWorldEnv(task_types=["pick_heat_then_place_in_recep"], num_games=1)
    argv = list(sys.argv)
    try:
        _, info = e.reset(seed=0)
        assert info["task_type"] == "pick_heat_then_place_in_recep"
        assert info["game_file"] == train_games[3]  # filtered envs share the same games
        assert sys.argv == argv  # fast-downward's translator rewrites sys.argv; undone
    finally:
        e.close()


def test_cli_writes_a_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gen.main(["--out", str(tmp_path), "--n", "2", "--split", "valid_unseen"])
    assert "valid_unseen: 2 games" in capsys.readouterr().out
    games = find_official_games(str(tmp_path), "valid_unseen")
    assert len(games) == 2
    for g in games:
        scene = int(os.path.basename(os.path.dirname(os.path.dirname(g))).rsplit("-", 1)[1])
        assert scene in gen.scenes_for("valid_unseen")
