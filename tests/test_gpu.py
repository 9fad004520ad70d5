"""The GPU path: the hf backend and the learner on CUDA, and the CUDA vLLM engine.

Skipped with a reason where CUDA is absent. On a GPU machine, with ``pip install
'agentrl[vllm]'`` in a venv of its own::

    pytest -m gpu tests/test_gpu.py

The vLLM tests fail (not skip) when vllm is missing: on a GPU machine it is the point of them.
"""

from __future__ import annotations

import copy

import pytest
import torch

from agentrl.models import build_tiny_model, build_tiny_tokenizer
from agentrl.policies.base import SamplingParams
from agentrl.policies.hf import HFPolicy

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason="no CUDA device: the GPU path needs one")]

CORPUS = ["go north", "go south", "go east", "go west", "take coin", "You are in a room.",
          "There is an exit to the north.", "Nothing happens."]
# fp32 on GPU: TF32 matmuls are off below; kernels still differ from the CPU ones.
TOL = 1e-3


@pytest.fixture(scope="module", autouse=True)
def _no_tf32():
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = prev


def _tiny() -> tuple[torch.nn.Module, object, list[list[int]]]:
    tok = build_tiny_tokenizer(CORPUS * 5, 300)
    model = build_tiny_model(len(tok), hidden=64, layers=2, heads=2, seed=0,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # sharper logits: no near-ties for kernel noise to flip
        for p in model.parameters():
            if p.dim() == 2:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    prompts = [tok.encode(t, add_special_tokens=False) for t in
               ["<|user|>\nYou are in a room.\n<|assistant|>\n",
                "<|user|>\nYou are in a room.\n<|assistant|>\ngo north<|endoftext|>\n"
                "<|user|>\nThere is an exit to the north.\n<|assistant|>\n",
                "<|user|>\nNothing happens.\n<|assistant|>\n"]]
    return model.eval(), tok, prompts


def _gap(a, b) -> float:
    return max(abs(x - y) for ga, gb in zip(a, b) for x, y in zip(ga.logprobs, gb.logprobs))


def test_hf_on_cuda_matches_cpu() -> None:
    model, tok, prompts = _tiny()
    sp = SamplingParams(max_new_tokens=16, greedy=True)
    cpu = HFPolicy(copy.deepcopy(model), tok).generate(prompts, sp)
    gpu = HFPolicy(model.cuda(), tok).generate(prompts, sp)
    assert [g.token_ids for g in gpu] == [g.token_ids for g in cpu]
    assert _gap(gpu, cpu) < TOL


def test_vllm_on_cuda_matches_hf_and_syncs_with_sleep_mode() -> None:
    from agentrl.policies.vllm import VLLMPolicy

    model, tok, prompts = _tiny()
    model.cuda()
    pol = VLLMPolicy.from_module(model, tok, device="cuda", max_model_len=512,
                                 gpu_memory_utilization=0.2, sleep_level=1)
    try:
        sp = SamplingParams(max_new_tokens=16, greedy=True)
        hf = HFPolicy(model, tok)
        before, ref = pol.generate(prompts, sp), hf.generate(prompts, sp)
        assert [g.token_ids for g in before] == [g.token_ids for g in ref]
        assert _gap(before, ref) < TOL
        free0 = torch.cuda.mem_get_info()[0]
        pol.sleep()  # the learner's update runs while the engine sleeps
        assert torch.cuda.mem_get_info()[0] > free0
        with pytest.raises(RuntimeError, match="asleep"):
            pol.generate(prompts, sp)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        target = tok.encode("take coin", add_special_tokens=False)
        model.train()
        for _ in range(5):
            loss = 0.0
            for p in prompts:
                ids = torch.tensor([p + target], device="cuda")
                logits = model(input_ids=ids).logits[0, len(p) - 1:-1]
                loss = loss - torch.log_softmax(logits, -1).gather(
                    -1, torch.tensor(target, device="cuda")[:, None]).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        seconds = pol.update_weights(model)
        print(f"vllm cuda weight sync (sleep_level=1): {seconds:.3f}s")
        after = pol.generate(prompts, sp)
        ref = hf.generate(prompts, sp)
        assert [g.token_ids for g in after] != [g.token_ids for g in before]
        assert [g.token_ids for g in after] == [g.token_ids for g in ref]
        assert _gap(after, ref) < TOL
    finally:
        pol.close()
