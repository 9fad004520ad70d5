"""Model loading: a model read from disk computes exactly like the one that was saved."""

from __future__ import annotations

import pytest
import torch

from agentrl.models import build_tiny_model, load_pretrained
from agentrl.testing.distributed import VOCAB


def test_loaded_weights_own_aligned_memory(tmp_path) -> None:
    # transformers maps safetensors files into memory and hands out views at each tensor's
    # byte offset in the file; CPU kernels vectorise unaligned data differently, so a resumed
    # run drifted from an uninterrupted one (~1e-8 per update). Every loaded tensor must sit
    # in memory of its own, 64-byte aligned like a model built in memory.
    model = build_tiny_model(VOCAB, hidden=32, layers=2, heads=4, seed=3)
    model.save_pretrained(tmp_path / "m")
    from agentrl.models import build_tiny_tokenizer

    build_tiny_tokenizer(["a b c"], 300).save_pretrained(tmp_path / "m")
    loaded, _ = load_pretrained(str(tmp_path / "m"))
    tensors = list(loaded.parameters()) + list(loaded.buffers())
    assert all(t.data_ptr() % 64 == 0 for t in tensors)
    assert loaded.model.embed_tokens.weight is loaded.lm_head.weight  # still tied
    ids = torch.randint(2, VOCAB, (3, 11))
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, loaded(input_ids=ids).logits)


def test_a_tiny_tokenizer_can_give_every_digit_its_own_token(tmp_path) -> None:
    from transformers import PreTrainedTokenizerFast

    from agentrl.models import build_tiny_tokenizer

    corpus = ["A warehouse holds 1476 crates and ships 16 a day.", "1476 - 16 * 6 = 1380"] * 50
    merged = build_tiny_tokenizer(corpus, 320)
    split = build_tiny_tokenizer(corpus, 320, split_digits=True)
    split.save_pretrained(tmp_path / "tok")
    loaded = PreTrainedTokenizerFast.from_pretrained(tmp_path / "tok")

    def pieces(tok, text: str) -> list[str]:
        return [tok.decode([i]) for i in tok.encode(text)]

    assert " 1476" in pieces(merged, "holds 1476")  # a frequent number merges by default
    for tok in (split, loaded):
        # the same digit tokens after a space, a quote or a bracket
        assert pieces(tok, " 1476")[-4:] == pieces(tok, '"1476')[-4:] == ["1", "4", "7", "6"]
        text = 'answer[1380] {"text": "16.5"} x2y 007'
        assert tok.decode(tok.encode(text)) == text
    # as a run asks for it
    from agentrl.config import load_config
    from agentrl.models import build_policy_model

    cfg = load_config(None, ["env.id=agentrl/ToolUse-v0", "policy.tiny_corpus_episodes=3",
                             "policy.tiny_split_digits=true", "policy.tiny_hidden=16"])
    tok = build_policy_model(cfg)[1]
    digits = [p for p in pieces(tok, "calculate[103 * 7]") if any(c.isdigit() for c in p)]
    assert digits == ["1", "0", "3", "7"]


def test_a_tiny_tool_call_tokenizer_needs_the_call_writer() -> None:
    """models/ sits below rollout/, so the tool parser's corpus writer comes from the
    composition root; without it the tokenizer would never see a call: refused."""
    from agentrl.assemble import run_tokenizer
    from agentrl.config import load_config
    from agentrl.models import build_policy_model

    cfg = load_config(None, ["env.id=agentrl/ToolUse-v0", "policy.tiny_corpus_episodes=2",
                             "rollout.action_format=tool_call", "rollout.constrained=false",
                             "policy.tiny_hidden=16"])
    with pytest.raises(ValueError, match="write_call"):
        build_policy_model(cfg)
    tok = run_tokenizer(cfg)  # the composition root passes it
    assert tok.encode("<tool_call>") == tok.encode("<tool_call>")
    assert len(tok.tokenize("<tool_call>")) < len("<tool_call>")  # learned from the calls
