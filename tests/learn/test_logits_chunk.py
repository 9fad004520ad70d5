"""Chunked logits: the learner forms at most ``train.logits_chunk`` vocabulary values of logits
at once, and its logprobs, entropy, loss and gradients equal the one-chunk computation's."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from agentrl.config import load_config
from agentrl.learn import forward as F
from agentrl.learn.forward import HeadSpec, head_outputs, token_outputs
from agentrl.models import build_tiny_model
from agentrl.models.memory import estimate

VOCAB, HIDDEN, P = 3000, 16, 40


class CountingHead(nn.Linear):
    """An LM head of another type than a plain linear layer (the checkpointed path), which
    records the rows of every logits tensor it forms."""

    def __init__(self, bias: bool = False) -> None:
        super().__init__(HIDDEN, VOCAB, bias=bias)
        self.rows: list[int] = []

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        self.rows.append(h.shape[0])
        return super().forward(h)


@pytest.fixture
def formed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Rows of every logits chunk the plain-linear path forms."""
    rows: list[int] = []
    inner = F._chunk_logits

    def counted(h: torch.Tensor, *a: object) -> tuple[torch.Tensor, torch.Tensor]:
        rows.append(h.shape[0])
        return inner(h, *a)

    monkeypatch.setattr(F, "_chunk_logits", counted)
    return rows


def _case(seed: int = 0, plain: bool = False, bias: bool = False,
          ) -> tuple[nn.Linear, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                     dict[int, dict[int, list[int]]]]:
    g = torch.Generator().manual_seed(seed)
    head = nn.Linear(HIDDEN, VOCAB, bias=bias) if plain else CountingHead(bias)
    with torch.no_grad():
        head.weight.copy_(0.3 * torch.randn(VOCAB, HIDDEN, generator=g))  # logits' std ~1
        if bias:
            head.bias.copy_(torch.randn(VOCAB, generator=g))
    h = torch.randn(P, HIDDEN, generator=g, requires_grad=True)
    rows = torch.arange(P) // 8
    cols = torch.arange(P) % 8 + 1
    tok = torch.randint(0, VOCAB, (P,), generator=g)
    # every third position constrained to a few ids, the sampled token among them
    allowed: dict[int, dict[int, list[int]]] = {}
    for p in range(0, P, 3):
        allowed.setdefault(int(rows[p]), {})[int(cols[p])] = sorted({int(tok[p]), 5, 17, 99})
    return head, h, rows, cols, tok, allowed


def _run(spec: HeadSpec, plain: bool = False, bias: bool = False) -> list:
    head, h, rows, cols, tok, allowed = _case(0, plain, bias)
    spec = HeadSpec(**{**spec.__dict__, "allowed": allowed})
    lp, ent = head_outputs(head, h, rows, cols, tok, spec)
    assert ent is not None
    loss = (lp * torch.linspace(-1, 1, P)).sum() - 0.3 * ent.sum()
    loss.backward()
    assert h.grad is not None and head.weight.grad is not None
    return [lp.detach(), ent.detach(), h.grad, head.weight.grad,
            head.bias.grad if bias else torch.zeros(()), getattr(head, "rows", [])]


@pytest.mark.parametrize("shape", [
    {"temperature": 1.0},
    {"temperature": 0.7, "softcap": 30.0},
    {"temperature": 1.3, "top_k": 50, "top_p": 0.9},
])
def test_checkpointed_chunks_equal_the_one_chunk_logprobs_entropy_and_gradients(
        shape: dict) -> None:
    whole = _run(HeadSpec(entropy=True, chunk=0, **shape))
    chunked = _run(HeadSpec(entropy=True, chunk=7 * VOCAB, **shape))
    for a, b in zip(whole[:5], chunked[:5]):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-6), (a - b).abs().max()
    assert whole[5] == [P]
    # 6 forward chunks of at most 7 positions, each formed again once in the backward
    assert max(chunked[5]) == 7 and sum(chunked[5]) == 2 * P


@pytest.mark.parametrize("shape", [
    {"temperature": 1.0},
    {"temperature": 0.7, "softcap": 30.0},
    {"temperature": 1.3, "entropy_grad": False},
])
@pytest.mark.parametrize("bias", [False, True])
def test_a_linear_head_in_closed_form_equals_the_one_chunk_logprobs_entropy_and_gradients(
        shape: dict, bias: bool, formed: list[int]) -> None:
    whole = _run(HeadSpec(entropy=True, chunk=0, **shape), plain=True, bias=bias)
    assert formed == []  # one chunk: the plain autograd path
    chunked = _run(HeadSpec(entropy=True, chunk=7 * VOCAB, **shape), plain=True, bias=bias)
    # the same sums in another order (logsumexp, closed-form gradient): float32 rounding
    for a, b in zip(whole[:5], chunked[:5]):
        assert torch.allclose(a, b, atol=2e-6, rtol=1e-5), (a - b).abs().max()
    assert max(formed) == 7 and sum(formed) == 2 * P


def test_a_chunk_below_one_position_still_forms_one_position_at_a_time() -> None:
    rows = _run(HeadSpec(entropy=True, chunk=VOCAB // 2))[5]
    assert max(rows) == 1


def test_the_scoring_pass_without_gradients_forms_each_chunk_once() -> None:
    head, h, r, c, tok, allowed = _case()
    with torch.no_grad():
        lp, ent = head_outputs(head, h, r, c, tok, HeadSpec(chunk=10 * VOCAB, allowed=allowed))
    assert ent is None and lp.shape == (P,) and head.rows == [10] * 4


def test_a_model_update_is_the_same_chunked_and_whole() -> None:
    """Through the model (`token_outputs`): loss and every parameter's gradient agree."""
    grads = []
    for chunk in (0, 5 * 512):
        torch.manual_seed(0)
        model = build_tiny_model(512, hidden=32, layers=2, heads=4)
        ids = torch.randint(3, 512, (3, 24))
        mask = torch.ones_like(ids)
        loss_mask = torch.zeros_like(ids)
        loss_mask[:, 12:] = 1
        out = token_outputs(model, ids, mask, loss_mask, {}, 1.0, need_entropy=True,
                            logits_chunk=chunk)
        assert out.entropy is not None
        loss = -(out.logprobs * loss_mask).sum() + 0.1 * (out.entropy * loss_mask).sum()
        loss.backward()
        grads.append([loss.detach()] + [p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5), (a - b).abs().max()


def test_the_memory_estimate_counts_one_chunk_of_logits() -> None:
    model = build_tiny_model(49152, hidden=32, layers=1, heads=4)
    whole = estimate(model, load_config(None, ["train.logits_chunk=0"])).activations
    chunked = estimate(model, load_config(None, [])).activations
    # 16384 tokens x 0.25 action share x 49152 x 4 B x 3 copies = 2.4 GB at once, vs 341
    # positions (0.2 GB)
    assert whole > 2.4e9 and chunked < 0.25e9
