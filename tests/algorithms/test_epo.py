"""EPO: phase schedule, corridor hinge, per-turn entropy history (active turns only, aligned by
turn index, past iterations only), and that the smoothing term carries gradient. Arithmetic in
comments."""

from __future__ import annotations

import json
import math

import pytest
import torch
from trajs import traj, turn

from agentrl.algorithms.epo import (
    EPO,
    EPOConfig,
    phase_weight,
    smoothing_penalty,
    turn_entropy_means,
)
from agentrl.learn.batch import ModelOutputs, make_batch
from agentrl.types import Trajectory


def scored(b, per_turn: list[float]):  # noqa: ANN001, ANN201
    """Attach per-token entropy given per turn, as the learner's scoring pass would."""
    b.entropy = torch.tensor(per_turn, dtype=torch.float32)[b.turn_id.clamp(min=0)] \
        * (b.turn_id >= 0)
    return b


def epo(**kw) -> EPO:  # noqa: ANN003
    return EPO(EPOConfig(name="epo", **kw))


def test_phase_weight_two_phase_hand_computed() -> None:
    # K = 150, h = 75: k=0 -> 1; k=75 -> 1 − .2(1 − e^−2) = 1 − .2·.864665 = .827067
    # k=76 -> .8·e^(−3/75) = .8·.960789 = .768631; k=150 -> .8·e^−3 = .039830
    got = [phase_weight(k, "two_phase", 150) for k in (0, 75, 76, 150)]
    assert got == pytest.approx([1.0, .827067, .768631, .039830], abs=1e-6)
    assert phase_weight(120, "constant", 150) == 1.0


def test_phase_weight_integer_half_and_clamped_past_k() -> None:
    # K = 7: h = ⌊7/2⌋ = 3 (not 3.5), second phase over K − h = 4 iterations.
    # k=3 -> 1 − .2(1 − e^−2) = .827067; k=4 -> .8·e^(−3·1/4) = .8·.472367 = .377893
    # (h = 3.5 would give .8·e^(−3·.5/3.5) = .8·.651439 = .521151);
    # k=7 -> .8·e^−3 = .039830; k=10 and k=1000 are clamped to K -> .039830 (never below)
    got = [phase_weight(k, "two_phase", 7) for k in (3, 4, 7, 10, 1000)]
    assert got == pytest.approx([.827067, .377893, .039830, .039830, .039830], abs=1e-6)


def test_defaults_are_turn_granularity_and_entropy_scaled_weight() -> None:
    c = EPOConfig(name="epo")
    # λ_s = λ·c = .001·1 (official scaling by the entropy coefficient)
    assert (c.smooth_granularity, c.smooth_coef, c.entropy_coef) == ("turn", 0.001, 0.001)


def test_fields_of_the_other_base_are_a_config_error() -> None:
    from agentrl.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="gamma is a setting of base 'ppo'"):
        load_config(None, ["algorithm.name=epo", "algorithm.base=grpo", "algorithm.gamma=0.9"])
    with pytest.raises(ConfigError, match="use_std is a setting of base 'grpo'"):
        load_config(None, ["algorithm.name=epo", "algorithm.base=ppo", "algorithm.use_std=false"])
    # each base's own fields are fine, and a saved config (every field at its default) loads
    assert load_config(None, ["algorithm.name=epo", "algorithm.base=ppo",
                              "algorithm.gamma=0.9"]).algorithm.gamma == 0.9
    assert load_config(None, ["algorithm.name=epo", "algorithm.stats=turn"]).algorithm.base == "grpo"


def test_smoothing_penalty_hinge_hand_computed() -> None:
    # κ_l = .5, κ_r = 2, H̄ = 1: corridor (.5, 2). H = .2 -> .5 − .2 = .3; H = 1 -> 0;
    # H = 2.5 -> 2.5 − 2 = .5; no history (NaN) -> 0 whatever H
    ent = torch.tensor([[0.2, 1.0, 2.5, 9.0]])
    ref = torch.tensor([[1.0, 1.0, 1.0, math.nan]])
    assert smoothing_penalty(ent, ref, 0.5, 2.0)[0].tolist() == pytest.approx([.3, 0, .5, 0])


def test_history_uses_active_turns_aligned_by_index_and_past_iterations_only() -> None:
    algo = epo()
    # iteration 0: τ1 has 3 turns, τ2 one (single-turn episode), τ3 two (truncated).
    # Per-turn entropies (2 tokens each): τ1 [1, 2, 3], τ2 [3], τ3 [1, 4]
    b0 = make_batch([traj("g", [0, 0, 1]), traj("g", [1]), traj("g", [0, 0], "max_turns")])
    m0 = algo.advantages(scored(b0, [1, 2, 3, 3, 1, 4]))
    # turn 0 mean over τ1, τ2, τ3 = (1 + 3 + 1)/3 = 1.66667; turn 1 (τ1, τ3) = 3; turn 2 = 3
    assert [m0[f"entropy_turn_{t}"] for t in range(3)] == pytest.approx([5 / 3, 3.0, 3.0])
    # no history yet: no reference anywhere
    assert torch.isnan(b0.row["epo_reference"]).all()
    algo.on_iteration_end(0, m0)
    # iteration 1: only one-turn episodes with entropy 2; the reference is the past (it. 0)
    b1 = make_batch([traj("g", [1]), traj("g", [0])])
    m1 = algo.advantages(scored(b1, [2, 2]))
    ref1 = b1.row["epo_reference"][b1.loss_mask > 0]
    assert ref1.tolist() == pytest.approx([5 / 3] * 4)
    algo.on_iteration_end(1, m1)
    # H̄_0 = (1.66667 + 2)/2 = 1.83333; H̄_1, H̄_2 keep 3 (turn 1 was absent in it. 1: no zero
    # enters, unlike the official left-padding)
    assert algo.reference() == pytest.approx({0: 11 / 6, 1: 3.0, 2: 3.0})
    assert algo.iteration == 2


def test_turn_entropy_means_are_token_weighted() -> None:
    # turn 0: τ1 2 tokens of 1, τ2 4 tokens of 4 -> (2·1 + 4·4)/6 = 3
    b = make_batch([Trajectory("a", "g", "x", 0, "window", [turn(n_tokens=2)]),
                    Trajectory("b", "g", "x", 0, "window", [turn(n_tokens=4)])])
    assert turn_entropy_means(scored(b, [1.0, 4.0]).entropy, b) == {0: (pytest.approx(3.0), 6)}


def _loss_grad(algo: EPO, b, ent_vals: torch.Tensor):  # noqa: ANN001, ANN202
    ent = torch.zeros_like(b.old_logprobs)
    ent[b.loss_mask > 0] = ent_vals
    ent.requires_grad_(True)
    lp = b.old_logprobs.clone().requires_grad_(True)
    terms = algo.loss(ModelOutputs(logprobs=lp, entropy=ent), b)
    terms["loss"].backward()
    return terms, ent.grad[b.loss_mask > 0]


def test_token_granularity_smoothing_gradient_hand_computed() -> None:
    # One group of two 2-turn episodes (returns 1 and 0). History: H̄_0 = 1 (turn 1 unseen).
    # Token entropies: τ1 turn 0 [2.5, .2], turn 1 [3, 3]; τ2 turn 0 [1, 1], turn 1 [3, 3].
    # κ_l = .5, κ_r = 2, λ = .001, λ_s = .1, β = 1; token-mean over 8 tokens.
    # dL/dH per token = −λ/8 + λ_s·β·h'/8, h' = +1 above 2, −1 below .5, 0 inside or no history:
    #   2.5: −.000125 + .0125 = .012375 ; .2: −.000125 − .0125 = −.012625 ; others −.000125
    # smoothing term value: (.5 + .3)/8 = .1
    def make() -> EPO:
        a = epo(entropy_coef=0.001, smooth_coef=0.1, kappa_low=0.5, kappa_high=2.0,
                phase_schedule="constant", smooth_granularity="token")
        a.hist_sum, a.hist_count = {0: 1.0}, {0: 1}
        return a

    b = make_batch([traj("g", [0, 1]), traj("g", [0, 0])])
    algo = make()
    algo.advantages(scored(b, [0, 0, 0, 0]))
    ent = torch.tensor([2.5, .2, 3, 3, 1, 1, 3, 3])
    terms, g = _loss_grad(algo, b, ent)
    assert float(terms["entropy_smooth"]) == pytest.approx(0.1)
    assert g.tolist() == pytest.approx([.012375, -.012625] + [-.000125] * 6, abs=1e-7)
    # the official form (indicator × constant, no gradient) leaves only the bonus: −λ/8 everywhere
    off = make()
    off.cfg.smooth_coef = 0.0
    off.advantages(scored(b, [0, 0, 0, 0]))
    _, g0 = _loss_grad(off, b, ent)
    assert g0.tolist() == pytest.approx([-.000125] * 8, abs=1e-9)
    assert not torch.allclose(g, g0)


def test_turn_granularity_hinges_the_turn_mean_entropy_hand_computed() -> None:
    # Same setting (H̄_0 = 1, turn 1 unseen, κ_l = .5, κ_r = 2, λ = .001, λ_s = .1, β = 1,
    # token-mean over 8 tokens). Token entropies: τ1 turn 0 [3, 1.4] (mean 2.2), turn 1 [3, 3];
    # τ2 turn 0 [0, .6] (mean .3), turn 1 [3, 3].
    # Turn hinge: τ1 turn 0: 2.2 − 2 = .2 ; τ2 turn 0: .5 − .3 = .2 ; turns 1: no history -> 0.
    #   value: each penalty sits on its turn's 2 tokens: (2·.2 + 2·.2)/8 = .1
    #   dL/dH_j = −λ/8 + λ_s·h'(mean)·(1/2)·2/8 = −.000125 ± .0125 for both tokens of the turn:
    #   τ1 turn 0: .012375, .012375 (even the 1.4 token, inside the corridor on its own);
    #   τ2 turn 0: −.012625, −.012625 ; turns 1: −.000125
    # Token hinge on the same entropies: 3 -> 1, 1.4 -> 0, 0 -> .5, .6 -> 0: (1 + .5)/8 = .1875
    def make(granularity: str) -> EPO:
        a = epo(entropy_coef=0.001, smooth_coef=0.1, kappa_low=0.5, kappa_high=2.0,
                phase_schedule="constant", smooth_granularity=granularity)
        a.hist_sum, a.hist_count = {0: 1.0}, {0: 1}
        return a

    b = make_batch([traj("g", [0, 1]), traj("g", [0, 0])])
    ent = torch.tensor([3.0, 1.4, 3, 3, 0.0, 0.6, 3, 3])
    algo = make("turn")
    algo.advantages(scored(b, [0, 0, 0, 0]))
    terms, g = _loss_grad(algo, b, ent)
    assert float(terms["entropy_smooth"]) == pytest.approx(0.1)
    assert g.tolist() == pytest.approx([.012375, .012375, -.000125, -.000125,
                                        -.012625, -.012625, -.000125, -.000125], abs=1e-7)
    tok = make("token")
    tok.advantages(scored(b, [0, 0, 0, 0]))
    terms_tok, g_tok = _loss_grad(tok, b, ent)
    assert float(terms_tok["entropy_smooth"]) == pytest.approx(0.1875)
    assert g_tok.tolist() == pytest.approx([.012375, -.000125, -.000125, -.000125,
                                            -.012625, -.000125, -.000125, -.000125], abs=1e-7)


def test_smooth_min_turn_gates_early_turns() -> None:
    algo = epo(smooth_min_turn=1)
    algo.hist_sum, algo.hist_count = {0: 1.0, 1: 2.0}, {0: 1, 1: 1}
    b = make_batch([traj("g", [0, 1])])
    algo.advantages(scored(b, [0, 0]))
    ref = b.row["epo_reference"][b.loss_mask > 0]
    assert torch.isnan(ref[:2]).all() and ref[2:].tolist() == [2.0, 2.0]


def test_ppo_base_adds_value_loss_and_smoothing() -> None:
    from agentrl.models import build_tiny_model

    model = build_tiny_model(50, hidden=16, layers=1, heads=2, seed=0)
    algo = epo(base="ppo")
    algo.setup(model)
    assert algo.param_groups()
    b = make_batch([traj("g", [0, 1]), traj("g", [0])])

    assert algo.requires == {"entropy", "values"} and algo.loss_requires == {"entropy", "values"}
    b.values = torch.zeros_like(b.old_logprobs)
    algo.advantages(scored(b, [1, 1, 1]))
    hidden = torch.zeros(*b.input_ids.shape, 16)
    terms = algo.loss(ModelOutputs(logprobs=b.old_logprobs.clone(),
                                   entropy=torch.ones_like(b.old_logprobs), hidden=hidden,
                                   values=algo.value(hidden)), b)
    assert {"value_loss", "entropy_smooth", "pg_loss"} <= set(terms)


def test_state_round_trips_through_json() -> None:
    algo = epo()
    b = make_batch([traj("g", [0, 1]), traj("g", [1])])
    algo.on_iteration_end(0, algo.advantages(scored(b, [1.0, 2.0, 0.5])))
    state = json.loads(json.dumps(algo.state_dict()))
    again = epo()
    again.load_state_dict(state)
    assert again.reference() == algo.reference() and again.iteration == 1


def test_one_member_group_with_equal_rewards_keeps_only_entropy_terms() -> None:
    # group h has one member -> advantage 0 -> no policy-gradient term; the smoothing still acts:
    # H̄_0 = 1, κ_r = 2, token entropies [3, 2] (one turn of 2 tokens, token-mean): turn mean
    # 2.5 > 2, so dL/dH_j = −λ/2 + λ_s·(1/2) = −.0005 + .05 = .0495 for both tokens
    algo = epo(entropy_coef=0.001, smooth_coef=0.1, phase_schedule="constant")
    algo.hist_sum, algo.hist_count = {0: 1.0}, {0: 1}
    b = make_batch([traj("h", [1.0])])
    algo.advantages(scored(b, [0.0]))
    assert torch.all(b.advantages == 0)
    ent = torch.zeros_like(b.old_logprobs)
    ent[b.loss_mask > 0] = torch.tensor([3.0, 2.0])
    ent.requires_grad_(True)
    lp = b.old_logprobs.clone().requires_grad_(True)
    algo.loss(ModelOutputs(logprobs=lp, entropy=ent), b)["loss"].backward()
    assert torch.all(lp.grad == 0)
    assert ent.grad[b.loss_mask > 0].tolist() == pytest.approx([.0495, .0495])
