"""Model loading: a model read from disk computes exactly like the one that was saved."""

from __future__ import annotations

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
