"""GRPO and PPO credit on hand-made trajectories (no model needed), arithmetic in comments."""

from __future__ import annotations

import pytest
import torch

from agentrl.algorithms.grpo import GRPO, GRPOConfig
from agentrl.algorithms.ppo import PPO, PPOConfig
from agentrl.learn.batch import make_batch
from agentrl.types import Trajectory, Turn


def turn(reward: float, n_tokens: int = 2, valid: bool = True, shaping: float = 0.0) -> Turn:
    return Turn(observation="o", context_ids=[5, 6], action_ids=[7] * n_tokens,
                logprobs=[-0.5] * n_tokens, reward=reward, action_valid=valid, shaping=shaping)


def traj(gid: str, turns: list[Turn], mode: str = "window") -> Trajectory:
    return Trajectory(trajectory_id=f"{gid}-{id(turns)}", group_id=gid, env_id="x", seed=0,
                      context_mode=mode, turns=turns)


def test_grpo_trajectory_stats_hand_computed() -> None:
    # group g: returns 1.0 (two turns 0 + 1) and 0.0 -> mean .5, std sqrt(.5)=.70711
    #   advantages +-0.70711 on every action token of each trajectory
    # group h: a single member -> 0
    b = make_batch([traj("g", [turn(0.0), turn(1.0)]), traj("g", [turn(0.0)]),
                    traj("h", [turn(1.0)])])
    GRPO(GRPOConfig(name="grpo")).advantages(b)
    per_traj = [b.advantages[b.row_traj == i][b.loss_mask[b.row_traj == i] > 0].unique().tolist()
                for i in range(3)]
    assert per_traj[0] == pytest.approx([0.70711], abs=1e-4)
    assert per_traj[1] == pytest.approx([-0.70711], abs=1e-4)
    assert per_traj[2] == [0.0]
    assert torch.all(b.advantages[b.loss_mask == 0] == 0)


def test_grpo_turn_stats_use_own_penalty_only() -> None:
    # traj A: env rewards 0, 1 ; turn 0 invalid (reward -0.1 = 0 - 0.1 penalty)
    #   scores: S_A0 = 1 - 0.1 = 0.9, S_A1 = 1.0 ; traj B: one turn, env 0 -> S_B0 = 0
    # group stats over the 3 turn-samples: mean 0.63333, std sqrt(((.26667)^2+(.36667)^2+(.63333)^2)/2)
    #   = sqrt((.071111+.134444+.401111)/2) = sqrt(.303333) = .55076
    # A0: .26667/.55076 = .48419 ; A1: .36667/.55076 = .66576 ; B0: -.63333/.55076 = -1.14993
    b = make_batch([traj("g", [turn(0.0, valid=False, shaping=-0.1), turn(1.0)]),
                    traj("g", [turn(0.0)])])
    GRPO(GRPOConfig(name="grpo", stats="turn")).advantages(b)
    got = [b.advantages[r][b.loss_mask[r] > 0][0].item() for r in range(b.num_rows)]
    assert got == pytest.approx([0.48419, 0.66576, -1.14993], abs=1e-4)


def test_grpo_all_equal_rewards_give_zero_advantage() -> None:
    b = make_batch([traj("g", [turn(1.0)]), traj("g", [turn(1.0)])])
    algo = GRPO(GRPOConfig(name="grpo"))
    m = algo.credit(algo.build_batch(b.trajectories, 0))
    assert m["zero_variance_groups"] == 1.0
    algo.advantages(b)
    assert torch.all(b.advantages == 0)


def test_grpo_zero_turn_trajectories_are_left_out_of_the_statistics() -> None:
    # Group g: τ1 return 1, τ2 return 0, τ3 hit the context limit before its first turn.
    # Members: τ1, τ2 only -> mean .5, std .70711 -> ±.70711 (with τ3 as a member scoring 0:
    # mean .33333, std .57735 -> [1.1547, −.57735]). Group h: only a zero-turn trajectory ->
    # no members, no signal: a zero-variance group (1 of 2).
    algo = GRPO(GRPOConfig(name="grpo"))
    b = algo.build_batch([traj("g", [turn(1.0)]), traj("g", [turn(0.0)]), traj("g", []),
                          traj("h", [])], 0)
    m = algo.credit(b)
    got = [b.advantages[r][b.loss_mask[r] > 0][0].item() for r in range(b.num_rows)]
    assert got == pytest.approx([0.70711, -0.70711], abs=1e-4)
    assert m["zero_turn_trajectories"] == 2.0 and m["zero_variance_groups"] == 0.5


@pytest.mark.parametrize("mode", ["window", "full"])
def test_ppo_gae_spans_turns(mode: str) -> None:
    # one trajectory, two turns of 2 tokens each: rewards r=(0 on turn 0, 1 on turn 1)
    # tokens in time order: a0 a1 | b0 b1 ; rewards on last token of each turn: [0, 0, 0, 1]
    # values V = [.1, .2, .3, .4]; token gamma/lam = 1 ; turn gamma = .9, lam = .5
    # gammas per step: [1, .9, 1, .9(terminal)] lams: [1, .5, 1, .5]
    # t3: delta = 1 - .4 = .6 ; A3 = .6
    # t2: delta = 0 + 1*.4 - .3 = .1 ; A2 = .1 + 1*1*.6 = .7
    # t1: delta = 0 + .9*.3 - .2 = .07 ; A1 = .07 + .9*.5*.7 = .385
    # t0: delta = 0 + 1*.2 - .1 = .1 ; A0 = .1 + 1*1*.385 = .485
    t = traj("g", [turn(0.0), turn(1.0)], mode=mode)
    b = make_batch([t])
    vals = torch.zeros_like(b.old_logprobs)
    order = [(r, c) for r in range(b.num_rows) for c in range(b.input_ids.shape[1])
             if b.loss_mask[r, c] > 0]
    for (r, c), v in zip(order, [0.1, 0.2, 0.3, 0.4]):
        vals[r, c] = v
    algo = PPO(PPOConfig(name="ppo", gamma=0.9, lam=0.5, whiten=False))
    b.values = vals  # what the learner's scoring pass would attach
    algo.advantages(b)
    got = [b.advantages[r, c].item() for r, c in order]
    assert got == pytest.approx([0.485, 0.385, 0.7, 0.6], abs=1e-6)
    assert [b.returns[r, c].item() for r, c in order] == pytest.approx([0.585, 0.585, 1.0, 1.0],
                                                                       abs=1e-6)


def _critic_setup(model, critic: str):  # noqa: ANN001, ANN202
    from agentrl.config import TrainConfig
    from agentrl.learn.learner import LocalLearner

    algo = PPO(PPOConfig(name="ppo", critic=critic, value_clip=0.0, vf_coef=0.5))
    algo.setup(model)
    learner = LocalLearner(model, TrainConfig(), 1.0, algo)
    b = make_batch([traj("g", [turn(0.0), turn(1.0)])])  # 2 turns x 2 action tokens
    mask = b.loss_mask > 0
    b.values = torch.zeros_like(b.old_logprobs)  # the zero-initialised head's old values
    b.returns = 2.0 * mask
    b.advantages = b.per_turn(torch.tensor([1.0, -1.0]))
    return algo, learner, b


def _grads(model, algo, learner, b, vf_coef: float):  # noqa: ANN001, ANN202
    algo.cfg.vf_coef = vf_coef
    model.zero_grad(set_to_none=True)
    for g in algo.param_groups():
        for p in g["params"]:
            p.grad = None
    terms = algo.loss(learner.forward(b, need_values=True), b)
    terms["loss"].backward()
    policy = [p.grad.clone() if p.grad is not None else torch.zeros_like(p)
              for p in model.parameters()]
    return terms, policy


@pytest.mark.parametrize("critic", ["detached", "separate", "shared"])
def test_value_loss_reaches_the_policy_only_with_a_shared_critic(tiny_model, critic: str) -> None:
    # Value head zero-initialised: V = 0 on the 4 action tokens, returns R = 2, value_clip off:
    # value_loss = token-mean 0.5·(0 − 2)^2 = 2; d(vf·value_loss)/d(head bias) =
    # .5·mean(V − R) = .5·(−2) = −1.
    algo, learner, b = _critic_setup(tiny_model, critic)
    terms, _ = _grads(tiny_model, algo, learner, b, 0.5)
    assert float(terms["value_loss"]) == pytest.approx(2.0)
    assert algo.value_head.bias.grad.item() == pytest.approx(-1.0, abs=1e-6)
    # A zero head passes no gradient back to any hidden state; give it weights, then compare
    # the policy's gradient with and without the value loss.
    with torch.no_grad():
        algo.value_head.weight.fill_(0.05)
    _, with_vl = _grads(tiny_model, algo, learner, b, 0.5)
    _, without = _grads(tiny_model, algo, learner, b, 0.0)
    same = all(torch.equal(a, c) for a, c in zip(with_vl, without))
    # detached / separate: the policy's gradient is exactly the policy-gradient term's
    assert same == (critic != "shared")
    if critic == "separate":  # its own backbone learns instead
        assert algo.critic_model is not None and algo.critic_model is not tiny_model
        _grads(tiny_model, algo, learner, b, 0.5)
        assert any(p.grad is not None and p.grad.abs().sum() > 0
                   for p in algo.critic_model.parameters())


def test_separate_critic_scores_values_and_round_trips(tiny_model) -> None:
    algo, learner, b = _critic_setup(tiny_model, "separate")
    with torch.no_grad():
        algo.value_head.bias.fill_(0.25)  # V = .25 wherever the critic looks
    s = learner.score(b, {"values"})
    mask = b.loss_mask > 0
    assert torch.allclose(s.values[mask], torch.full_like(s.values[mask], 0.25))
    assert torch.all(s.values[~mask] == 0)
    state = algo.state_dict()
    again, _, _ = _critic_setup(tiny_model, "separate")
    with torch.no_grad():  # the fresh copy drifts from the saved critic
        next(again.critic_model.parameters()).add_(1.0)
    again.load_state_dict(state)
    assert all(torch.equal(p, q) for p, q in zip(again.critic_model.parameters(),
                                                 algo.critic_model.parameters()))
    assert again.value_head.bias.item() == pytest.approx(0.25)


def test_separate_critic_can_be_a_smaller_model(tiny_model, tiny_tok, tmp_path) -> None:
    from agentrl.models import build_tiny_model

    small = build_tiny_model(len(tiny_tok), hidden=16, layers=1, heads=2, seed=1,
                             pad_token_id=tiny_tok.pad_token_id, eos_token_id=tiny_tok.eos_token_id)
    small.save_pretrained(tmp_path / "critic")
    tiny_tok.save_pretrained(tmp_path / "critic")
    from agentrl.config import TrainConfig
    from agentrl.learn.learner import LocalLearner

    algo = PPO(PPOConfig(name="ppo", critic_model=str(tmp_path / "critic")))
    algo.setup(tiny_model)
    assert algo.value_head.in_features == 16  # the critic's width, not the policy's (32)
    learner = LocalLearner(tiny_model, TrainConfig(), 1.0, algo)
    b = make_batch([traj("g", [turn(0.0), turn(1.0)])])
    assert learner.score(b, {"values"}).values.shape == b.loss_mask.shape
    # a critic whose vocabulary misses the batch's ids (7 here) is refused with the fix
    build_tiny_model(7, hidden=16, layers=1, heads=2, seed=1, pad_token_id=0,
                     eos_token_id=1).save_pretrained(tmp_path / "narrow")
    tiny_tok.save_pretrained(tmp_path / "narrow")
    algo = PPO(PPOConfig(name="ppo", critic_model=str(tmp_path / "narrow")))
    algo.setup(tiny_model)
    with pytest.raises(ValueError, match="share the policy's tokenizer"):
        LocalLearner(tiny_model, TrainConfig(), 1.0, algo).score(b, {"values"})
