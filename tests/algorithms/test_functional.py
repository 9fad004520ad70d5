"""Estimators and losses against numbers computed by hand (arithmetic in the comments)."""

import math

import pytest
import torch

from agentrl.algorithms import functional as Fn


def test_group_normalize_hand_computed() -> None:
    # group a: [1, 3] mean 2, std (Bessel) sqrt(((1-2)^2+(3-2)^2)/1) = sqrt(2) = 1.41421
    #   -> (1-2)/1.41421 = -0.70711, (3-2)/1.41421 = 0.70711
    # group b: [0, 0, 6] mean 2, std sqrt((4+4+16)/2) = sqrt(12) = 3.46410
    #   -> -2/3.4641 = -0.57735, -0.57735, 4/3.4641 = 1.15470
    # group c: [5] singleton -> 0
    s = torch.tensor([1.0, 0.0, 3.0, 0.0, 6.0, 5.0])
    g = ["a", "b", "a", "b", "b", "c"]
    adv = Fn.group_normalize(s, g, use_std=True, eps=0.0)
    exp = torch.tensor([-0.70711, -0.57735, 0.70711, -0.57735, 1.15470, 0.0])
    assert torch.allclose(adv, exp, atol=1e-5)
    # without std: deviations from the mean; singleton still 0
    adv = Fn.group_normalize(s, g, use_std=False)
    assert torch.allclose(adv, torch.tensor([-1.0, -2.0, 1.0, -2.0, 4.0, 0.0]))
    # verl convention for singletons: mean 0, std 1 -> the raw score
    adv = Fn.group_normalize(s, g, singleton="raw")
    assert adv[5] == pytest.approx(5.0)


def test_group_normalize_all_equal_gives_zero_and_eps_guards() -> None:
    adv = Fn.group_normalize(torch.tensor([2.0, 2.0, 2.0]), [0, 0, 0])
    assert torch.all(adv == 0)


def test_group_normalize_order_invariant() -> None:
    s = torch.tensor([1.0, 4.0, 2.0, 8.0, 3.0, 3.5])
    g = [0, 1, 0, 1, 0, 1]
    perm = torch.tensor([5, 2, 0, 4, 1, 3])
    a = Fn.group_normalize(s, g)
    b = Fn.group_normalize(s[perm], [g[i] for i in perm.tolist()])
    assert torch.allclose(a[perm], b)


def test_rloo_hand_computed() -> None:
    # [1, 2, 6]: leave-one-out means 4, 3.5, 1.5 -> 1-4=-3, 2-3.5=-1.5, 6-1.5=4.5
    adv = Fn.rloo(torch.tensor([1.0, 2.0, 6.0, 9.0]), [0, 0, 0, 1])
    assert torch.allclose(adv, torch.tensor([-3.0, -1.5, 4.5, 0.0]))


def test_discounted_returns() -> None:
    # r = [0, 0, 1], gamma 0.5: R2 = 1, R1 = 0 + .5*1 = .5, R0 = .25
    r = Fn.discounted_returns(torch.tensor([0.0, 0.0, 1.0]), 0.5)
    assert torch.allclose(r, torch.tensor([0.25, 0.5, 1.0]))
    # single-step episode
    assert Fn.discounted_returns(torch.tensor([3.0]), 0.9).tolist() == [3.0]


def test_gae_hand_computed() -> None:
    # rewards [0, 1], values [0.5, 0.2], gamma=0.9, lam=0.8
    # t=1: delta = 1 + 0.9*0 - 0.2 = 0.8 ; A1 = 0.8
    # t=0: delta = 0 + 0.9*0.2 - 0.5 = -0.32 ; A0 = -0.32 + 0.9*0.8*0.8 = 0.256
    adv, ret = Fn.gae(torch.tensor([0.0, 1.0]), torch.tensor([0.5, 0.2]),
                      torch.tensor([0.9, 0.9]), torch.tensor([0.8, 0.8]))
    assert torch.allclose(adv, torch.tensor([0.256, 0.8]), atol=1e-6)
    assert torch.allclose(ret, torch.tensor([0.756, 1.0]), atol=1e-6)


def test_gae_gamma_lambda_one_is_return_minus_value() -> None:
    r = torch.tensor([0.0, 0.0, 2.0])
    v = torch.tensor([0.3, -0.1, 0.7])
    adv, _ = Fn.gae(r, v, torch.ones(3), torch.ones(3))
    assert torch.allclose(adv, torch.tensor([2.0, 2.0, 2.0]) - v)


def test_aggregate_modes_hand_computed() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    m = torch.tensor([[1, 1, 1], [1, 0, 0]])
    # token-mean: (1+2+3+4)/4 = 2.5
    assert Fn.aggregate(x, m, "token-mean").item() == pytest.approx(2.5)
    # seq-mean-token-sum: (6 + 4)/2 = 5
    assert Fn.aggregate(x, m, "seq-mean-token-sum").item() == pytest.approx(5.0)
    # seq-mean-token-mean: (6/3 + 4/1)/2 = 3
    assert Fn.aggregate(x, m, "seq-mean-token-mean").item() == pytest.approx(3.0)
    # seq-mean-token-sum-norm divides by a constant budget, not the padded length 3:
    # budget 8: 10 / (2 * 8) = .625; padding the batch to 5 columns changes nothing
    assert Fn.aggregate(x, m, "seq-mean-token-sum-norm", norm_len=8).item() == pytest.approx(.625)
    xp, mp = torch.nn.functional.pad(x, (0, 2)), torch.nn.functional.pad(m, (0, 2))
    assert Fn.aggregate(xp, mp, "seq-mean-token-sum-norm", norm_len=8).item() == pytest.approx(.625)
    with pytest.raises(ValueError, match="norm_len"):
        Fn.aggregate(x, m, "seq-mean-token-sum-norm")


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean",
                                  "seq-mean-token-sum-norm"])
def test_aggregate_micro_batch_split_sums_to_whole(mode: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(6, 5)
    m = (torch.rand(6, 5) > 0.3).int()
    m[:, 0] = 1
    whole = Fn.aggregate(x, m, mode, norm_len=5.0)
    kw = {"num_tokens": float(m.sum()), "num_seqs": 6.0, "norm_len": 5.0}
    parts = sum(Fn.aggregate(x[i:i + 2], m[i:i + 2], mode, **kw) for i in range(0, 6, 2))
    assert parts.item() == pytest.approx(whole.item(), abs=1e-6)


def test_segment_mean_broadcasts_and_splits_the_gradient() -> None:
    # segments: row 0 = turn 0 [1, 3] and turn 1 [5]; row 1 = turn 2 [2, 4, 6 (masked out)]
    # means: turn 0 = 2, turn 1 = 5, turn 2 = 3; masked and non-action positions get 0
    x = torch.tensor([[1.0, 3.0, 5.0], [2.0, 4.0, 6.0]], requires_grad=True)
    seg = torch.tensor([[0, 0, 1], [2, 2, 2]])
    m = torch.tensor([[1, 1, 1], [1, 1, 0]])
    out = Fn.segment_mean(x, seg, m)
    assert out.tolist() == [[2.0, 2.0, 5.0], [3.0, 3.0, 0.0]]
    # d(sum of the three segment means)/dx: 1/2 per token of turn 0, 1 for turn 1, 1/2 turn 2
    means = out[0, 0] + out[0, 2] + out[1, 0]
    means.backward()
    assert x.grad.tolist() == [[0.5, 0.5, 1.0], [0.5, 0.5, 0.0]]


def test_policy_loss_clip_and_dual_clip() -> None:
    lp = torch.log(torch.tensor([[1.5, 0.5, 1.1, 5.0]]))  # ratios vs old logprob 0
    old = torch.zeros(1, 4)
    A = torch.tensor([[1.0, -1.0, 2.0, -1.0]])
    loss, st = Fn.policy_loss(lp, old, A, clip_low=0.2, clip_high=0.28, dual_clip=3.0)
    # tok0: A=1, r=1.5 -> max(-1.5, -1.28) = -1.28 (clipped at 1+0.28)
    # tok1: A=-1, r=0.5 -> max(0.5, 0.8) = 0.8 (clipped at 1-0.2)
    # tok2: A=2, r=1.1 -> max(-2.2, -2.2) = -2.2 (inside the range)
    # tok3: A=-1, r=5 -> max(5, 1.28) = 5 -> dual clip min(5, 3) = 3
    assert torch.allclose(loss, torch.tensor([[-1.28, 0.8, -2.2, 3.0]]), atol=1e-6)
    assert st["clipped"].tolist() == [[1.0, 1.0, 0.0, 1.0]]


def test_policy_loss_ratio_one_gradient_is_minus_advantage() -> None:
    lp = torch.zeros(1, 2, requires_grad=True)
    A = torch.tensor([[0.5, -2.0]])
    loss, _ = Fn.policy_loss(lp, torch.zeros(1, 2), A)
    loss.sum().backward()
    assert torch.allclose(lp.grad, -A)


def test_kl_k3_hand_computed() -> None:
    # logp = log 0.5, ref = log 0.25: d = ref - logp = log 0.5 = -0.693147
    # k3 = e^d - d - 1 = 0.5 + 0.693147 - 1 = 0.193147
    k = Fn.kl_k3(torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)]))
    assert k.item() == pytest.approx(0.193147, abs=1e-6)
    assert Fn.kl_k3(torch.tensor([0.3]), torch.tensor([0.3])).item() == 0.0


def test_entropy_from_logits() -> None:
    # uniform over 4 -> log 4 = 1.386294 ; masked (-inf) entries contribute nothing
    assert Fn.entropy_from_logits(torch.zeros(4)).item() == pytest.approx(math.log(4))
    z = torch.tensor([0.0, 0.0, float("-inf")])
    assert Fn.entropy_from_logits(z).item() == pytest.approx(math.log(2))


def test_value_loss_clipped() -> None:
    # V=1.0, old=0.5, R=2.0, clip 0.2: unclipped (1-2)^2=1 ; clipped V=0.7 -> (0.7-2)^2=1.69
    # 0.5*max(1, 1.69) = 0.845
    v = Fn.value_loss(torch.tensor([1.0]), torch.tensor([0.5]), torch.tensor([2.0]), 0.2)
    assert v.item() == pytest.approx(0.845)


def test_learner_normalises_seq_mean_token_sum_norm_by_the_response_budget(tiny_model) -> None:
    # Two window rows: 2 context tokens + 2 and 3 action tokens (padded length 5); advantages
    # +1 on row 0's tokens, −1 on row 1's, ratio 1 (old logprobs recomputed by the learner).
    # pg_loss = −(2·1 − 3·1)/(2 rows · budget 8) = 1/16 = .0625, whatever the padding
    # (dividing by the padded length 5 would give 1/10).
    import random

    from trajs import turn

    from agentrl.algorithms.grpo import GRPO, GRPOConfig
    from agentrl.config import TrainConfig
    from agentrl.learn.batch import make_batch
    from agentrl.learn.learner import LocalLearner
    from agentrl.types import Trajectory

    b = make_batch([Trajectory("a", "g", "x", 0, "window", [turn(n_tokens=2)]),
                    Trajectory("b", "g", "x", 0, "window", [turn(n_tokens=3)])])
    algo = GRPO(GRPOConfig(name="grpo", loss_agg="seq-mean-token-sum-norm"))
    learner = LocalLearner(tiny_model, TrainConfig(lr=1e-9, grad_clip=0.0), 1.0, algo,
                           response_budget=8)
    b.attach(learner.score(b, {"old_logprobs"}), recompute_old_logprobs=True)
    b.advantages = b.per_trajectory(torch.tensor([1.0, -1.0]))
    m = learner.update(b, random.Random(0))
    assert m["train/pg_loss"] == pytest.approx(0.0625, abs=1e-6)
