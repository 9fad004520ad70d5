"""Multi-agent games: every registered one passes check_multiagent_env; the checker catches broken
games; text views map to the right PettingZoo actions; scripted players and hidden information
behave as their rules say."""

from __future__ import annotations

import random
import re
from collections import Counter
from typing import Any

import numpy as np
import pytest

import agentrl
from agentrl.envs.multiagent.base import outcomes_from_returns
from agentrl.envs.multiagent.classic import TTT_ACTION, TicTacToe, c4_best, c4_wins
from agentrl.registry import ENVS, load_builtin_envs, register_env
from agentrl.testing import NASTY_ACTIONS, EnvCheckError, check_multiagent_env

load_builtin_envs()
MULTIAGENT = sorted(k for k, e in ENVS.items() if e.multiagent and k.startswith("agentrl/"))


def test_the_games_are_registered() -> None:
    assert {"agentrl/TicTacToe-v0", "agentrl/ConnectFour-v0", "agentrl/RockPaperScissors-v0",
            "agentrl/KuhnPoker-v0", "agentrl/GuideWalker-v0",
            "agentrl/TextArena-TicTacToe-v0"} <= set(MULTIAGENT)


@pytest.mark.parametrize("env_id", MULTIAGENT)
def test_registered_multiagent_env_passes_the_checker(env_id: str) -> None:
    env = agentrl.make_env(env_id, **ENVS[env_id].test_kwargs)
    try:
        check_multiagent_env(env)
    finally:
        env.close()


@pytest.mark.parametrize("env_id", [e for e in MULTIAGENT if "TextArena" not in e])
def test_games_with_random_openings_pass_the_checker(env_id: str) -> None:
    env = agentrl.make_env(env_id, opening_moves=3, **ENVS[env_id].test_kwargs)
    try:
        check_multiagent_env(env)
    finally:
        env.close()


@pytest.mark.parametrize("env_id", MULTIAGENT)
@pytest.mark.parametrize("illegal", ["forfeit", "retry"])
def test_illegal_empty_and_garbage_replies_are_recorded_never_raised(env_id: str,
                                                                      illegal: str) -> None:
    """Each bad reply is an invalid move with a reason; forfeit costs the offender the game
    (a -1 reward in zero-sum games), retry gives the same seat another go."""
    env = agentrl.make_env(env_id, illegal=illegal)
    bad = ["", "   ", "garbage move", "<action></action>", *NASTY_ACTIONS]
    illegal_move = {"agentrl/TicTacToe-v0": "5", "agentrl/ConnectFour-v0": "9",
                    "agentrl/RockPaperScissors-v0": "lizard", "agentrl/KuhnPoker-v0": "call",
                    "agentrl/GuideWalker-v0": "north"}.get(env_id)
    for reply in bad + ([illegal_move] if illegal_move else []):
        _, info = env.reset(seed=3)
        if env_id == "agentrl/TicTacToe-v0":  # occupy cell 5, so "5" is illegal next
            _, _, _, _, info = env.step("5")
        if env_id == "agentrl/GuideWalker-v0":  # the walker's "north" is a guide's illegal move
            assert info["agent"] == "guide"
        mover = info["agent"]
        obs, r, term, trunc, info = env.step(reply)
        if info["action_valid"]:  # a reply that names a legal move as a whole word
            assert reply in NASTY_ACTIONS, reply
            continue
        assert info["invalid_reason"] in ("empty", "unparsable", "illegal")
        assert isinstance(obs, str)
        if illegal == "forfeit":
            assert term and info["forfeit"] == mover and info["outcome"][mover] == "loss"
            assert r == (0.0 if getattr(env.unwrapped, "cooperative", False) else -1.0)
        else:
            assert not term and info["agent"] == mover and r == 0.0
    env.close()


# ----------------------------------------------------------------------- the checker can fail

class _RaisesOnEmpty(TicTacToe):
    def parse_move(self, agent: str, text: str) -> tuple[int | None, str]:
        if not text:
            raise ValueError("empty reply")
        return super().parse_move(agent, text)


class _LeaksRewards(TicTacToe):
    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        obs, r, term, trunc, info = super().step(action)
        if term:
            info["returns"] = {a: v + 1.0 for a, v in info["returns"].items()}
        return obs, r, term, trunc, info


class _RetryForfeitsAtOnce(TicTacToe):
    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        if self.illegal == "retry":
            self.max_retries = 0  # claims retries but forfeits on the first invalid move
        return super().step(action)


class _SameSeat(TicTacToe):
    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[str, dict]:
        if self.opponent is not None:  # ignores seat="random"
            self.seat = self.possible_agents[0]
        return super().reset(seed=seed, options=options)


@pytest.mark.parametrize("cls,match", [
    (_RaisesOnEmpty, "empty reply"),
    (_LeaksRewards, "add up to"),
    (_RetryForfeitsAtOnce, "before max_retries"),
    (_SameSeat, "same seat"),
])
def test_the_checker_catches_broken_games(cls: type, match: str) -> None:
    eid = f"test/Broken{cls.__name__}-v0"
    register_env(eid, entry_point=cls, description="broken", max_episode_steps=40,
                 multiagent=True)
    env = agentrl.make_env(eid)
    with pytest.raises(EnvCheckError, match=match):
        check_multiagent_env(env)


# ----------------------------------------------------------------------- the games themselves

def test_tictactoe_text_cells_map_to_pettingzoo_actions() -> None:
    env = agentrl.make_env("agentrl/TicTacToe-v0")
    env.reset(seed=0)
    env.step("2")  # X top-middle; PettingZoo numbers cells column by column: action 3
    assert env.unwrapped.history == [("player_1", 3)]
    obs, *_ = env.step("9")  # O bottom-right: action 8
    assert env.unwrapped.history[-1] == ("player_2", 8)
    assert obs == "You are X. Board: 1 X 3 / 4 5 6 / 7 8 O"
    assert TTT_ACTION == [0, 3, 6, 1, 4, 7, 2, 5, 8]


def test_random_openings_follow_the_seed_and_the_rules() -> None:
    """opening_moves=2: each game starts after 0, 1 or 2 random legal moves, the same for the
    same seed; the opening's mover alternates, so the seat to act follows from its length."""
    env = agentrl.make_env("agentrl/TicTacToe-v0", opening_moves=2)
    lengths = Counter()
    for s in range(60):
        obs, info = env.reset(seed=s)
        opening = list(env.unwrapped.history)
        lengths[len(opening)] += 1
        assert [a for a, _ in opening] == ["player_1", "player_2"][:len(opening)]
        assert len(set(m for _, m in opening)) == len(opening)  # no cell played twice
        assert info["agent"] == ("player_1", "player_2")[len(opening) % 2]
        assert len(info["admissible_actions"]) == 9 - len(opening)
        assert env.reset(seed=s)[0] == obs and env.unwrapped.history == opening
    assert set(lengths) == {0, 1, 2} and min(lengths.values()) >= 10
    plain = agentrl.make_env("agentrl/TicTacToe-v0")
    assert all(plain.reset(seed=s)[0].endswith("1 2 3 / 4 5 6 / 7 8 9") for s in range(20))
    with pytest.raises(ValueError, match="opening_moves"):
        agentrl.make_env("agentrl/TicTacToe-v0", opening_moves=-1)


def test_tictactoe_random_play_matches_the_known_rates() -> None:
    """Random vs random: the first player wins ~0.585 and draws ~0.127 (exact enumeration)."""
    env = agentrl.make_env("agentrl/TicTacToe-v0")
    rng = random.Random(0)
    n, res = 1000, Counter()
    for s in range(n):
        _, info = env.reset(seed=s)
        while True:
            _, _, term, _, info = env.step(rng.choice(info["admissible_actions"]))
            if term:
                break
        res[info["outcome"]["player_1"]] += 1
    # 1000 games: std 0.016 (win), 0.011 (draw); the bounds are ~3 std
    assert abs(res["win"] / n - 0.585) < 0.05 and abs(res["draw"] / n - 0.127) < 0.035


def test_scripted_tictactoe_beats_random_and_never_loses_to_it_often() -> None:
    env = agentrl.make_env("agentrl/TicTacToe-v0", opponent="heuristic")
    rng = random.Random(1)
    res = Counter()
    for s in range(300):
        _, info = env.reset(seed=s)
        me = info["agents"][0]
        while True:
            assert info["agent"] == me  # the scripted seat moves inside step()
            _, _, term, _, info = env.step(rng.choice(info["admissible_actions"]))
            if term:
                break
        res[info["outcome"][me]] += 1
    assert res["win"] / 300 < 0.05  # a random player rarely beats win/block/centre


def test_connect_four_lines_and_the_scripted_player() -> None:
    b = np.zeros((6, 7), dtype=int)
    for k in range(4):
        b[5 - k, k] = 1  # rising diagonal from bottom-left
    assert c4_wins(b, 1) and not c4_wins(b, 2)
    b = np.zeros((6, 7), dtype=int)
    for k in range(4):
        b[2 + k, 6 - k] = 2  # the other diagonal
    assert c4_wins(b, 2)
    b = np.zeros((6, 7), dtype=int)
    b[5, 0:3] = 2  # the opponent threatens column 4 (index 3)
    assert c4_best(b, list(range(7)), random.Random(0)) == 3
    b[4, 0:3] = 1
    b[5, 3] = 2  # ...now blocked; we can win on row 4, column 4
    assert c4_best(b, list(range(7)), random.Random(0)) == 3


def test_outcomes_follow_returns() -> None:
    assert outcomes_from_returns({"a": 1, "b": -1}) == {"a": "win", "b": "loss"}
    assert outcomes_from_returns({"a": 0, "b": 0}) == {"a": "draw", "b": "draw"}
    assert outcomes_from_returns({"a": 2, "b": 2, "c": -4}) == {"a": "win", "b": "win",
                                                                 "c": "loss"}


def test_kuhn_views_hide_the_other_card_and_pay_the_pot() -> None:
    env = agentrl.make_env("agentrl/KuhnPoker-v0")
    views: dict[str, set[str]] = {}
    for s in range(40):
        obs, info = env.reset(seed=s)
        cards = env.unwrapped.aec.unwrapped.cards
        views.setdefault("J Q K"[2 * cards[0]], set()).add(obs)
        _, _, _, _, info = env.step("bet")
        obs, r, term, _, info = env.step("call")
        assert term and abs(sum(info["returns"].values())) < 1e-9
        win = 0 if cards[0] > cards[1] else 1
        assert info["returns"][f"player_{win}"] == 2.0
    # player_0's first view depends on its own card only, never on player_1's
    assert all(len(v) == 1 for v in views.values()) and len(views) == 3


def test_rock_paper_scissors_hides_a_throw_until_the_round_ends() -> None:
    env = agentrl.make_env("agentrl/RockPaperScissors-v0", rounds=3)
    seen = []
    for first in ("rock", "paper", "scissors"):
        env.reset(seed=0)
        obs, _, _, _, info = env.step(first)
        assert info["agent"] == "player_1"
        seen.append(obs)
    assert len(set(seen)) == 1  # the second mover's view is the same whatever was thrown
    obs, r, *_ , info = env.step("rock")  # scissors vs rock: player_1 wins the round
    assert info["rewards"] == {"player_0": -1.0, "player_1": 1.0}
    assert "opponent rock" in obs and "Score -1" in obs  # player_0's view of round 1


def test_guide_walker_needs_talk_and_the_scripted_team_always_succeeds() -> None:
    env = agentrl.make_env("agentrl/GuideWalker-v0")
    for s in range(50):
        obs, info = env.reset(seed=s)
        assert info["agent"] == "guide" and "W" in obs and "G" in obs
        while True:
            g = env.unwrapped
            move = g.move_names(info["agent"], g.observe(info["agent"]))[
                g.heuristic(info["agent"], g.observe(info["agent"]),
                            g.legal_moves(info["agent"]))]
            obs, r, term, _, info = env.step(move)
            if info["agent"] == "walker":
                assert "G" not in obs and "W" not in obs  # the walker never sees the map
            if term:
                break
        assert info["success"] and set(info["outcome"].values()) == {"win"}


def test_guide_walker_offset_view_names_the_way_and_passes_the_checker() -> None:
    env = agentrl.make_env("agentrl/GuideWalker-v0", view="offset")
    for s in range(30):
        obs, _ = env.reset(seed=s)
        g = env.unwrapped.game
        dr, dc = g.goal[0] - g.pos[0], g.goal[1] - g.pos[1]
        said = {d: int(n) for n, d in re.findall(r"(\d) (north|south|east|west)", obs)}
        assert said.get("south", 0) - said.get("north", 0) == dr
        assert said.get("east", 0) - said.get("west", 0) == dc
        assert "W" not in obs and "(moves left: 4)" in obs
    check_multiagent_env(env)
    with pytest.raises(ValueError, match="view"):
        agentrl.make_env("agentrl/GuideWalker-v0", view="picture")


def test_textarena_keeps_the_process_random_stream_and_replays_a_seed() -> None:
    env = agentrl.make_env("agentrl/TextArena-KuhnPoker-v0")
    random.seed(123)
    expected = random.Random(123).random()
    a = env.reset(seed=5)
    assert random.random() == expected  # TextArena reseeds `random`; the adapter isolates it
    b = env.reset(seed=5)
    assert a == b
