"""GiGPO: step returns, anchor groups and the joint advantage on hand-made trajectories, with
the arithmetic in comments; and that a real TextWorld rollout yields non-singleton anchors."""

from __future__ import annotations

import pytest
import torch

from agentrl.algorithms.gigpo import GiGPO, GiGPOConfig, anchor_groups, step_returns
from agentrl.learn.batch import make_batch
from agentrl.types import Trajectory, Turn


def turn(state: str | None, env: float = 0.0, shaping: float = 0.0, n_tokens: int = 2) -> Turn:
    return Turn(observation="o", context_ids=[5, 6], action_ids=[7] * n_tokens,
                logprobs=[-0.5] * n_tokens, reward=env, shaping=shaping,
                action_valid=shaping == 0.0, state_key=state)


def traj(gid: str, turns: list[Turn], term: str = "success") -> Trajectory:
    return Trajectory(trajectory_id=f"{gid}-{id(turns)}", group_id=gid, env_id="x", seed=0,
                      context_mode="window", turns=turns, termination=term)


def per_turn_adv(b) -> list[float]:  # noqa: ANN001
    out = []
    for m in range(b.num_turns):
        out.append(b.advantages[b.turn_id == m][0].item())
    return out


def batch():  # noqa: ANN201
    # group g: τ1 A->B->C (success at C), τ2 A->B then cut by the turn limit with an invalid
    # action at B (penalty .1), τ3 A (success in one turn); group h: one member.
    return make_batch([
        traj("g", [turn("A"), turn("B"), turn("C", env=1.0)]),
        traj("g", [turn("A"), turn("B", shaping=-0.1)], term="max_turns"),
        traj("g", [turn("A", env=1.0)]),
        traj("h", [turn("A", env=1.0)]),
    ])


def test_step_returns_discount_env_reward_but_not_shaping() -> None:
    # γ = .5: τ1 R = [.25, .5, 1]; τ2 R = [0 + .5·0, 0 − .1] = [0, −.1] (penalty not discounted
    # back to A); τ3 R = [1]; τ4 R = [1]
    assert step_returns(batch(), 0.5).tolist() == pytest.approx([.25, .5, 1, 0, -.1, 1, 1])


def test_joint_advantage_mean_mode_hand_computed() -> None:
    b = batch()
    m = GiGPO(GiGPOConfig(name="gigpo", gamma=0.5)).advantages(b)
    # A^E (F_norm = 1) on env totals: group g [1, 0, 1] (τ2's −.1 is shaping, not an
    #   outcome), mean .66667 -> [.33333, −.66667, .33333]; group h has one member -> 0.
    # A^S: anchor (g, A): R [.25, 0, 1], mean .41667 -> [−.16667, −.41667, .58333];
    #      (g, B): R [.5, −.1], mean .2 -> [.3, −.3]; (g, C) singleton -> 0; (h, A) singleton -> 0
    # A = A^E + A^S:
    #   τ1: .33333 − .16667 = .16667 ; .33333 + .3 = .63333 ; .33333 + 0 = .33333
    #   τ2: −.66667 − .41667 = −1.08333 ; −.66667 − .3 = −.96667
    #   τ3: .33333 + .58333 = .91667 ; τ4: 0
    assert per_turn_adv(b) == pytest.approx(
        [.16667, .63333, .33333, -1.08333, -.96667, .91667, 0.0], abs=1e-4)
    assert torch.all(b.advantages[b.loss_mask == 0] == 0)
    # anchor groups: A(3), B(2), C(1), h-A(1) over 7 turns: sizes 3,2,1,3,2,3,1 -> mean 15/7
    assert m["step_group_size_mean"] == pytest.approx(15 / 7)
    assert m["step_singleton_frac"] == pytest.approx(2 / 7)


def test_joint_advantage_mean_std_mode_and_weight() -> None:
    b = batch()
    GiGPO(GiGPOConfig(name="gigpo", gamma=0.5, mode="mean_std", step_weight=0.5)).advantages(b)
    # A^E on env totals [1, 0, 1]: devs [.33333, −.66667, .33333], var (.111111 + .444444 +
    #   .111111)/2 = .333333, std .57735 -> [.57735, −1.15470, .57735]
    # A^S (g, A): devs [−.16667, −.41667, .58333], var (.027778 + .173611 + .340278)/2 = .270833,
    #   std .520416 -> [−.32026, −.80064, 1.12090]; (g, B): devs ±.3, std .424264 -> ±.70711
    # A = A^E + .5·A^S:
    #   τ1: .57735 − .16013 = .41722 ; .57735 + .35355 = .93090 ; .57735
    #   τ2: −1.15470 − .40032 = −1.55502 ; −1.15470 − .35355 = −1.50825
    #   τ3: .57735 + .56045 = 1.13780 ; τ4: 0
    assert per_turn_adv(b) == pytest.approx(
        [.41722, .93090, .57735, -1.55502, -1.50825, 1.13780, 0.0], abs=1e-4)


def test_penalty_stays_out_of_the_episode_advantage() -> None:
    # Both episodes succeed (env totals [1, 1]); τ1 first makes an invalid move in A (penalty
    # −.1, state unchanged). A^E = 0 in both modes: the penalty is not an episode outcome.
    # (Scoring shaped totals [.9, 1] would give A^E = [−.05, .05] (mean) and, with std
    # .070711, [−.70711, .70711] (mean_std) on every turn of the two episodes.)
    # γ = .5: τ1 R = [.25 − .1, .5, 1] = [.15, .5, 1] (penalty on its own turn, undiscounted);
    # τ2 R = [.5, 1].
    # mean: anchor (g, A) R [.15, .5, .5], mean .383333 -> [−.233333, .116667, .116667];
    #   (g, B) [1, 1] -> 0.   A = [−.23333, .11667, 0 | .11667, 0]
    # mean_std: var (.054444 + .013611 + .013611)/2 = .040833, std .202073 ->
    #   [−1.154701, .577350, .577350].   A = [−1.15470, .57735, 0 | .57735, 0]
    def make():  # noqa: ANN202
        return make_batch([traj("g", [turn("A", shaping=-0.1), turn("A"), turn("B", env=1.0)]),
                           traj("g", [turn("A"), turn("B", env=1.0)])])

    b = make()
    m = GiGPO(GiGPOConfig(name="gigpo", gamma=0.5)).advantages(b)
    assert m["episode_advantage_abs_mean"] == 0.0
    assert per_turn_adv(b) == pytest.approx([-.23333, .11667, 0.0, .11667, 0.0], abs=1e-4)
    b = make()
    GiGPO(GiGPOConfig(name="gigpo", gamma=0.5, mode="mean_std")).advantages(b)
    assert per_turn_adv(b) == pytest.approx([-1.15470, .57735, 0.0, .57735, 0.0], abs=1e-4)
    # stats=turn (verl-agent's step-weighted statistics) keeps the penalty out of A^E as well
    b = make()
    m = GiGPO(GiGPOConfig(name="gigpo", gamma=0.5, stats="turn")).advantages(b)
    assert m["episode_advantage_abs_mean"] == 0.0


def test_zero_turn_trajectory_is_not_a_group_member() -> None:
    # τ3 hit the context limit before its first turn: no turns, not part of the statistics.
    # Group g over the played τ1 (env 1) and τ2 (env 0): A^E = ±.5 (mean mode); with τ3 as a
    # member scoring 0 the mean would be 1/3 and A^E [.66667, −.33333]. Anchors: (g, A) R
    # [1, 0] (γ irrelevant, one turn each) -> ±.5.  A = [1, −1]
    b = make_batch([traj("g", [turn("A", env=1.0)]), traj("g", [turn("A")]),
                    traj("g", [], term="context_limit")])
    GiGPO(GiGPOConfig(name="gigpo")).advantages(b)
    assert per_turn_adv(b) == pytest.approx([1.0, -1.0])


def test_all_equal_rewards_and_states_give_zero() -> None:
    b = make_batch([traj("g", [turn("A"), turn("B", env=1.0)]),
                    traj("g", [turn("A"), turn("B", env=1.0)])])
    GiGPO(GiGPOConfig(name="gigpo")).advantages(b)
    assert torch.all(b.advantages == 0)


def test_same_outcome_different_path_gets_step_credit_only() -> None:
    # Both succeed (A^E = 0), but τ2 wastes a turn in A: R at A (γ = .5) is .5 for τ1 (A->B win)
    # and .25, .5 for τ2 (A->A->B win). Anchor A: [.5, .25, .5], mean .41667 ->
    # [.08333, −.16667, .08333]; B: [1, 1] -> 0.
    b = make_batch([traj("g", [turn("A"), turn("B", env=1.0)]),
                    traj("g", [turn("A"), turn("A"), turn("B", env=1.0)])])
    GiGPO(GiGPOConfig(name="gigpo", gamma=0.5)).advantages(b)
    assert per_turn_adv(b) == pytest.approx([.08333, 0.0, -.16667, .08333, 0.0], abs=1e-4)


def test_missing_state_keys_are_singletons_and_warn() -> None:
    b = make_batch([traj("g", [turn(None, env=1.0)]), traj("g", [turn(None)])])
    with pytest.warns(UserWarning, match="state_key"):
        GiGPO(GiGPOConfig(name="gigpo")).advantages(b)
    # GRPO (mean mode) only: totals [1, 0] -> ±.5
    assert per_turn_adv(b) == pytest.approx([0.5, -0.5])


def test_anchor_groups_never_cross_episode_groups_and_similarity_clusters() -> None:
    a = anchor_groups(["g", "g", "h", "g"], ["room|coin", "room|coin", "room|coin", None])
    assert a[0] == a[1] and a[0] != a[2] and a[3] not in a[:3]
    keys = ["kitchen|a red apple|", "kitchen|a red apple.|", "garden|a shovel|"]
    plain = anchor_groups(["g"] * 3, keys)
    assert len(set(plain)) == 3
    sim = anchor_groups(["g"] * 3, keys, similarity=True, threshold=0.95)
    # ratio("kitchen|a red apple|", "kitchen|a red apple.|") = 2·20/41 = .9756 >= .95
    assert sim[0] == sim[1] and sim[2] != sim[0]


def test_turn_mode_episode_statistics() -> None:
    # stats=turn: scores per turn-sample = episode env total + own shaping:
    # τ1 turns [1, 1], τ2 turn [0]: mean 2/3 -> A^E [1/3, 1/3, −2/3]; anchors: A {τ1 t0 (R .5),
    # τ2 t0 (R 0)} mean .25 -> [.25, −.25]; (g, B) singleton 0.
    # A: τ1 [1/3 + .25, 1/3 + 0] = [.58333, .33333]; τ2 [−2/3 − .25] = −.91667
    b = make_batch([traj("g", [turn("A"), turn("B", env=1.0)]), traj("g", [turn("A")])])
    GiGPO(GiGPOConfig(name="gigpo", gamma=0.5, stats="turn")).advantages(b)
    assert per_turn_adv(b) == pytest.approx([.58333, .33333, -.91667], abs=1e-4)


def test_textworld_rollout_gives_repeated_anchor_states(tiny_tok, tiny_model) -> None:  # noqa: ANN001
    from agentrl.config import RolloutConfig
    from agentrl.envpool import InProcessPool
    from agentrl.policies.hf import HFPolicy
    from agentrl.rollout.engine import RolloutEngine
    from agentrl.rollout.prompts import PromptBuilder

    rc = RolloutConfig(group_size=4, max_turns=4, context="window", history=2,
                       template="{observation}", action_format="raw", constrained=True,
                       max_new_tokens=8)
    pool = InProcessPool("agentrl/TextWorld-CoinCollector-v0",
                         {"level": 3, "split": "train", "num_games": 2}, 4)
    try:
        pol = HFPolicy(tiny_model, tiny_tok, batch_size=8)
        pol.seed(0)
        eng = RolloutEngine(pol, pool,
                            PromptBuilder(tiny_tok, rc), rc, "tw")
        trajs = eng.run([0] * 4, ["g"] * 4)
    finally:
        pool.close()
    b = make_batch(trajs)
    keys = b.turn_state_keys()
    assert all(isinstance(k, str) and "|" in k for k in keys)  # location|description|inventory
    m = GiGPO(GiGPOConfig(name="gigpo")).advantages(b)
    # all 4 episodes start in the same room: the first turns share one anchor group at least
    assert m["step_singleton_frac"] < 1.0 and m["step_group_size_mean"] >= 2.0
