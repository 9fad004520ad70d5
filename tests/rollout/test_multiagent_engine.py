"""Multi-agent episodes through the rollout engine: one trajectory per agent that line up move by
move with the game, per-role groups and statistics, bad replies recorded (never raised) in every
multi-agent env, fixed players on the other seats."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import agentrl
from agentrl.algorithms import functional as Fn
from agentrl.algorithms.gigpo import GiGPOConfig, anchor_groups, gigpo_turn_advantages
from agentrl.algorithms.grpo import GRPO, GRPOConfig, outcome_advantages
from agentrl.config import EnvConfig, RolloutConfig
from agentrl.envpool import EnvPool, make_pool
from agentrl.learn.batch import make_batch
from agentrl.models import build_tiny_model, build_tiny_tokenizer, env_corpus
from agentrl.policies.base import Generation, Policy, SamplingParams
from agentrl.policies.hf import HFPolicy
from agentrl.registry import ENVS, load_builtin_envs
from agentrl.rollout.engine import RolloutEngine
from agentrl.rollout.lineup import Player, SelfPlay, Versus
from agentrl.rollout.multiagent import MultiAgentRolloutEngine, make_engine
from agentrl.rollout.prompts import PromptBuilder
from agentrl.types import Trajectory

load_builtin_envs()
MULTIAGENT = sorted(k for k, e in ENVS.items() if e.multiagent and k.startswith("agentrl/"))
TTT = "agentrl/TicTacToe-v0"


def _rollout_cfg(**kw: Any) -> RolloutConfig:
    base = dict(context="window", history=0, template="{task} {observation}",
                action_format="raw", constrained=True, max_new_tokens=6, max_turns=12,
                invalid_penalty=0.25, batch_size=64)
    return RolloutConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def ttt_tok() -> Any:
    corpus = env_corpus(TTT, {}, 30, 9) + ["<action>", "</action>", "{task} {observation}"]
    return build_tiny_tokenizer(corpus, vocab_size=400)


def _policy(tok: Any, seed: int = 0) -> HFPolicy:
    model = build_tiny_model(len(tok), hidden=32, layers=1, heads=2, seed=seed,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    p = HFPolicy(model, tok)
    p.seed(seed)
    return p


def _engine(env_id: str, tok: Any, n: int, lineup: Any = None, env_kwargs: Any = None,
            policy: Any = None, **rollout: Any) -> tuple[RolloutEngine, EnvPool]:
    cfg = _rollout_cfg(**rollout)
    pool = make_pool(EnvConfig(id=env_id), n, env_kwargs or {})
    engine = make_engine(policy or _policy(tok), pool, PromptBuilder(tok, cfg), cfg, env_id,
                         lineup)
    return engine, pool


def _games(trajs: list[Trajectory]) -> dict[str, list[Trajectory]]:
    games: dict[str, list[Trajectory]] = {}
    for t in trajs:
        games.setdefault(t.episode_id, []).append(t)
    return games


def test_multiagent_envs_get_the_multiagent_engine(ttt_tok: Any) -> None:
    engine, pool = _engine(TTT, ttt_tok, 2)
    assert isinstance(engine, MultiAgentRolloutEngine) and isinstance(engine.lineup, SelfPlay)
    pool.close()


def test_both_players_line_up_move_by_move_with_the_game(ttt_tok: Any) -> None:
    """Replaying the moves of both trajectories in turn order in a fresh env reproduces every
    observation each agent saw, every reward it got, and the outcome."""
    engine, pool = _engine(TTT, ttt_tok, 8)
    seeds = [0, 0, 0, 0, 1, 1, 2, 3]
    gids = ["a"] * 4 + ["b", "b", "c", "d"]
    trajs = engine.run(seeds, gids)
    pool.close()
    games = _games(trajs)
    assert len(games) == 8 and len(trajs) == 16
    env = agentrl.make_env(TTT)
    for ts in games.values():
        by_role = {t.role: t for t in ts}
        assert set(by_role) == {"player_1", "player_2"}
        for t in ts:
            assert t.group_id.endswith("/" + t.role) and not t.player
            assert t.termination in ("success", "failure") and t.outcome
            assert t.success == (t.outcome == "win")
        moves = sorted(((u.episode_turn, t.role, u) for t in ts for u in t.turns),
                       key=lambda x: x[0])
        assert [k for k, _, _ in moves] == list(range(len(moves)))  # no gaps, no repeats
        assert [r for _, r, _ in moves] == [("player_1", "player_2")[k % 2]
                                            for k in range(len(moves))]
        obs, info = env.reset(seed=ts[0].seed)
        got = {"player_1": 0.0, "player_2": 0.0}
        for _, role, turn in moves:
            assert info["agent"] == role and turn.observation == obs
            obs, r, term, _, info = env.step(turn.action)
            for a, v in info["rewards"].items():
                got[a] += v
        assert term
        for role, t in by_role.items():
            assert t.outcome == info["outcome"][role]
            assert abs(t.env_return - got[role]) < 1e-9  # the loser's -1 reached its last turn


def test_group_statistics_are_per_role(ttt_tok: Any) -> None:
    """GRPO's baseline of a (seed, role) group uses only that role's trajectories: changing the
    other role's rewards leaves this role's advantages as they were."""
    engine, pool = _engine(TTT, ttt_tok, 8)
    trajs = engine.run([5] * 8, ["g"] * 8)
    pool.close()
    assert {t.group_id for t in trajs} == {"g/player_1", "g/player_2"}
    cfg = GRPOConfig()
    adv = outcome_advantages(make_batch(trajs), cfg)
    for t in trajs:  # scramble player_2's rewards
        if t.role == "player_2":
            t.turns[-1].reward += 7.0 * (hash(t.trajectory_id) % 3)
    adv2 = outcome_advantages(make_batch(trajs), cfg)
    batch = make_batch(trajs)
    roles = [trajs[i].role for i in batch.turn_traj.tolist()]
    mask = torch.tensor([r == "player_1" for r in roles])
    assert torch.allclose(adv[mask], adv2[mask])
    # and they equal a normalisation over player_1's trajectories alone
    p1 = [t for t in trajs if t.role == "player_1"]
    scores = torch.tensor([t.total_reward for t in p1])
    alone = Fn.group_normalize(scores, [t.group_id for t in p1])
    by_traj = {t.trajectory_id: float(a) for t, a in zip(p1, alone)}
    expect = torch.tensor([by_traj[trajs[i].trajectory_id]
                           for i, r in zip(batch.turn_traj.tolist(), roles) if r == "player_1"])
    assert torch.allclose(adv[mask], expect, atol=1e-6)


def test_gigpo_anchor_groups_and_advantages_are_per_role(ttt_tok: Any) -> None:
    """GiGPO (the algorithm of the game configs): no anchor group (episode group, state) mixes
    the roles, and changing player_2's rewards leaves player_1's turn advantages (episode and
    step level) exactly as they were."""
    engine, pool = _engine(TTT, ttt_tok, 8)
    trajs = engine.run([5] * 8, ["g"] * 8)
    pool.close()
    batch = make_batch(trajs)
    groups = batch.group_ids()
    turn_groups = [groups[i] for i in batch.turn_traj.tolist()]
    roles = [trajs[i].role for i in batch.turn_traj.tolist()]
    members: dict[Any, set[str]] = {}
    for anchor, role in zip(anchor_groups(turn_groups, batch.turn_state_keys()), roles):
        members.setdefault(anchor, set()).add(role)
    assert all(len(rs) == 1 for rs in members.values())
    # both roles' boards repeat across the 8 games, so step-level groups have members
    assert sum(len(rs) for rs in members.values()) < len(roles)
    cfg = GiGPOConfig()
    adv, _ = gigpo_turn_advantages(batch, cfg)
    for t in trajs:  # player_2 now wins every game it played to the end
        if t.role == "player_2":
            t.turns[-1].reward = 1.0
    adv2, _ = gigpo_turn_advantages(make_batch(trajs), cfg)
    mask = torch.tensor([r == "player_1" for r in roles])
    assert torch.allclose(adv[mask], adv2[mask], atol=1e-9)
    assert not torch.allclose(adv[~mask], adv2[~mask])  # the change did reach player_2


def test_rae_keeps_one_baseline_per_role(ttt_tok: Any) -> None:
    engine, pool = _engine(TTT, ttt_tok, 8)
    trajs = engine.run([5] * 8, ["g"] * 8)
    pool.close()
    algo = GRPO(GRPOConfig(baseline="rae", rae_decay=0.5))
    batch = make_batch(trajs)
    algo.advantages(batch)
    # self-play: 8 games give 8 trajectories per role
    mean = {r: sum(t.total_reward for t in trajs if t.role == r) / 8
            for r in ("player_1", "player_2")}
    # first batch: baselines start at 0, so A = score; then b = (1 - 0.5^8) * mean
    for r, m in mean.items():
        assert algo.role_baselines[f"{TTT}|{r}"] == pytest.approx((1 - 0.5 ** 8) * m)
    scores = {t.trajectory_id: t.total_reward for t in trajs}
    adv, _ = batch.turn_mean(batch.advantages)
    for m, ti in enumerate(batch.turn_traj.tolist()):
        assert float(adv[m]) == pytest.approx(scores[trajs[ti].trajectory_id], abs=1e-6)
    state = algo.state_dict()
    again = GRPO(GRPOConfig(baseline="rae", rae_decay=0.5))
    again.load_state_dict(state)
    b2 = make_batch(trajs)
    algo.advantages(batch)
    again.advantages(b2)
    assert torch.equal(batch.advantages, b2.advantages)


# ---------------------------------------------------------------- bad replies, every env

class _Scripted(Policy):
    """A stand-in backend that replies with fixed texts in turn (a test double: bad replies on
    purpose), tokenized with the real tiny tokenizer."""

    def __init__(self, tok: Any, replies: list[str]) -> None:
        self.tokenizer, self.replies, self.k = tok, replies, 0

    def generate(self, prompts: list[list[int]], sampling: SamplingParams,
                 candidates: Any = None) -> list[Generation]:
        out = []
        for _ in prompts:
            ids = self.tokenizer.encode(self.replies[self.k % len(self.replies)],
                                        add_special_tokens=False) + [self.eos_token_id]
            self.k += 1
            out.append(Generation(ids, [-1.0] * len(ids), "stop"))
        return out


BAD = ["", "   ", "garbage move 42", "<action></action>", "日本語 🙂 \u202e", "x" * 300]


@pytest.mark.parametrize("env_id", MULTIAGENT)
@pytest.mark.parametrize("illegal", ["forfeit", "retry"])
def test_bad_replies_are_recorded_and_penalised_in_every_multiagent_env(
        ttt_tok: Any, env_id: str, illegal: str) -> None:
    policy = _Scripted(ttt_tok, BAD)
    engine, pool = _engine(env_id, ttt_tok, 4, env_kwargs={"illegal": illegal},
                           policy=policy, constrained=False, max_new_tokens=400,
                           max_context_tokens=8192, max_turns=8)
    trajs = engine.run([0, 1, 2, 3], ["a", "b", "c", "d"])
    pool.close()
    assert trajs and all(t.termination for t in trajs)  # every game ended
    turns = [u for t in trajs for u in t.turns]
    assert turns and not any(u.action_valid for u in turns)
    assert all(u.shaping == -0.25 for u in turns)  # the rollout's invalid-action penalty
    for t in trajs:
        if illegal == "forfeit" and t.turns:  # the first bad move ends the game
            assert t.termination == "failure" and t.outcome == "loss"
            if not getattr(agentrl.make_env(env_id).unwrapped, "cooperative", False):
                assert t.env_return == -1.0  # the offender's forfeit
        if illegal == "retry":
            assert t.num_turns <= 3 or t.termination == "max_turns"


# ---------------------------------------------------------------- fixed players

def test_a_fixed_player_holds_the_other_seat_and_seats_rotate(ttt_tok: Any) -> None:
    frozen_policy = _policy(ttt_tok, seed=1)
    calls = {"n": 0}
    real = frozen_policy.generate

    def counted(prompts: Any, *a: Any, **k: Any) -> Any:
        calls["n"] += len(prompts)
        return real(prompts, *a, **k)

    frozen_policy.generate = counted  # type: ignore[method-assign]
    cfg = _rollout_cfg()
    frozen = Player("frozen", frozen_policy, PromptBuilder(ttt_tok, cfg))
    engine, pool = _engine(TTT, ttt_tok, 8, lineup=Versus([frozen]))
    trajs = engine.run([3] * 4 + [4] * 4, ["g1"] * 4 + ["g2"] * 4)
    pool.close()
    games = _games(trajs)
    mine = [t for t in trajs if not t.player]
    theirs = [t for t in trajs if t.player == "frozen"]
    assert all(len(ts) == 2 and {t.player for t in ts} == {"", "frozen"}
               for ts in games.values())
    assert calls["n"] == sum(t.num_turns for t in theirs) > 0
    for g in ("g1", "g2"):  # within a group the trained policy's seat alternates
        roles = [t.role for t in mine if t.group_id.startswith(g + "/")]
        assert sorted(roles) == ["player_1", "player_1", "player_2", "player_2"]


def test_env_side_opponents_leave_one_trajectory_per_game(ttt_tok: Any) -> None:
    engine, pool = _engine(TTT, ttt_tok, 6, env_kwargs={"opponent": "heuristic"})
    trajs = engine.run(list(range(6)), [str(s) for s in range(6)])
    pool.close()
    assert len(trajs) == 6 and len({t.episode_id for t in trajs}) == 6
    assert all(t.outcome in ("win", "draw", "loss") for t in trajs)
    assert {t.role for t in trajs} == {"player_1", "player_2"}  # seats drawn from the seed
