"""EMPG: entropy-modulated advantages on hand-made trajectories (arithmetic in comments), edge
cases, and that the entropy weights carry no gradient."""

from __future__ import annotations

import pytest
import torch
from trajs import traj

from agentrl.algorithms.empg import (
    EMPG,
    EMPGConfig,
    empg_modulate,
    next_turn_index,
    turn_mean_entropy,
)
from agentrl.learn.batch import ModelOutputs, make_batch


def scored(b, per_turn: list[float]):  # noqa: ANN001, ANN201
    """Attach per-token entropy given per turn, as the learner's scoring pass would. The source
    *requires grad*, so that a missing detach would show; returns it."""
    src = torch.tensor(per_turn, dtype=torch.float32, requires_grad=True)
    b.entropy = src[b.turn_id.clamp(min=0)] * (b.turn_id >= 0)
    return src


def adv_per_turn(b) -> list[float]:  # noqa: ANN001
    return [b.advantages[b.turn_id == m][0].item() for m in range(b.num_turns)]


def test_modulated_advantage_hand_computed() -> None:
    # group g: τ1 two turns (return 1), τ2 one turn (return 0, a single-turn episode);
    # Dr.GRPO base (no std): A = ±.5. Turn entropies τ1 [1, 3], τ2 [2].
    # H̃ = (H − 1)/(3 − 1) = [0, 1, .5]; k = 1: w = e^−H̃ = [1, .367879, .606531], mean .658137
    # g = w/mean = [1.519441, .558971, .921588]
    # f (k' = 1) of the next turn: τ1 t0 -> e^−1 = .367879; τ1 t1 and τ2 t0 are last -> 0
    # A_mod = g·A + .05·f: [.759721 + .018394, .279486, −.460794] = [.778115, .279486, −.460794]
    # mean .198935 -> A = [.579179, .080550, −.659729]
    b = make_batch([traj("g", [0, 1]), traj("g", [0])])
    scored(b, [1, 3, 2])
    m = EMPG(EMPGConfig(name="empg", use_std=False)).advantages(b)
    assert adv_per_turn(b) == pytest.approx([.579179, .080550, -.659729], abs=1e-5)
    assert m["g_min"] == pytest.approx(.558971, abs=1e-5)
    assert m["g_max"] == pytest.approx(1.519441, abs=1e-5)
    assert torch.all(b.advantages[b.loss_mask == 0] == 0)


def test_g_has_batch_mean_one_and_recentred_mean_zero() -> None:
    h = torch.tensor([0.3, 1.2, 0.7, 2.0, 0.1])
    a = torch.tensor([1.0, 1.0, -1.0, -1.0, 0.5])
    nxt = torch.tensor([1, -1, 3, -1, -1])
    out, parts = empg_modulate(a, h, nxt, k=2.0)
    assert float(parts["g"].mean()) == pytest.approx(1.0)
    assert float(out.mean()) == pytest.approx(0.0, abs=1e-7)
    raw, _ = empg_modulate(a, h, nxt, k=2.0, recenter=False)
    assert torch.allclose(out, raw - raw.mean())


def test_all_equal_entropies_give_unit_scale_and_full_bonus() -> None:
    # H̃ = 0 everywhere (0/(0 + ε)): g = 1, f = 1 where a next turn exists.
    # A = [1, 1, −1]; A_mod = [1 + .05, 1, −1] ; mean .35 -> [.7, .65, −1.35]
    out, parts = empg_modulate(torch.tensor([1.0, 1.0, -1.0]), torch.full((3,), 0.8),
                               torch.tensor([1, -1, -1]))
    assert parts["g"].tolist() == [1.0, 1.0, 1.0]
    assert out.tolist() == pytest.approx([.7, .65, -1.35])


def test_all_equal_rewards_leave_only_the_recentred_future_bonus() -> None:
    # A(τ) = 0 for both; entropies τ1 [1, 1], τ2 [1] -> f = 1 for τ1 t0 only.
    # A_mod = [.05, 0, 0], mean .016667 -> [.033333, −.016667, −.016667]
    b = make_batch([traj("g", [0, 1]), traj("g", [1])])
    scored(b, [1, 1, 1])
    EMPG(EMPGConfig(name="empg")).advantages(b)
    assert adv_per_turn(b) == pytest.approx([.033333, -.016667, -.016667], abs=1e-5)


def test_one_member_group_and_truncated_episode() -> None:
    # group h has one member -> A(τ) = 0; τ (group g) was cut by the turn limit: its last observed
    # turn gets no bonus, like a terminated one. Entropies all 2 -> g = 1, f = 1 (non-last).
    # g: totals [1, 0] -> ±.70711 (std). turns: g-τ1 [t0, t1 (last, truncated)], g-τ2 [t0],
    # h [t0, t1].
    # A_mod = [.70711 + .05, .70711, −.70711, 0 + .05, 0]: sum .807107, mean .161421
    # A = [.595685, .545685, −.868527, −.111421, −.161421]
    b = make_batch([traj("g", [0, 1], term="max_turns"), traj("g", [0]), traj("h", [0, 1])])
    scored(b, [2] * 5)
    EMPG(EMPGConfig(name="empg")).advantages(b)
    assert adv_per_turn(b) == pytest.approx([.595685, .545685, -.868527, -.111421, -.161421],
                                            abs=1e-5)


def test_next_turn_index_and_turn_mean_entropy() -> None:
    b = make_batch([traj("g", [0, 0, 1]), traj("g", [0]), traj("h", [0, 1])])
    assert next_turn_index(b.turn_traj).tolist() == [1, 2, -1, -1, 5, -1]
    ent = torch.zeros_like(b.old_logprobs)
    ent[b.loss_mask > 0] = torch.arange(12, dtype=torch.float32)  # 2 tokens per turn
    # turn means: (0+1)/2, (2+3)/2, ... = .5, 2.5, 4.5, 6.5, 8.5, 10.5
    assert turn_mean_entropy(ent, b).tolist() == [.5, 2.5, 4.5, 6.5, 8.5, 10.5]


def test_weights_are_detached() -> None:
    h = torch.tensor([0.5, 1.5, 1.0], requires_grad=True)
    out, parts = empg_modulate(torch.tensor([1.0, -1.0, 0.5]), h, torch.tensor([1, -1, -1]))
    assert not out.requires_grad and not parts["g"].requires_grad
    # through the algorithm: the entropy the scoring pass attached requires grad, the advantages
    # do not, and the loss gradient w.r.t. logprobs at ratio 1 is exactly −A/num_tokens
    b = make_batch([traj("g", [0, 1]), traj("g", [0])])
    src = scored(b, [1, 3, 2])
    algo = EMPG(EMPGConfig(name="empg", use_std=False))
    algo.advantages(b)
    assert not b.advantages.requires_grad
    lp = b.old_logprobs.clone().requires_grad_(True)
    terms = algo.loss(ModelOutputs(logprobs=lp, entropy=b.entropy), b)
    terms["loss"].backward()
    mask = b.loss_mask > 0
    assert lp.grad[mask].tolist() == pytest.approx((-b.advantages[mask] / 6).tolist())
    assert src.grad is None  # nothing flowed back into the entropy
