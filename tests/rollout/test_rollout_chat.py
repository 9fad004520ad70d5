"""Real chat templates through the rollout engine: token-exact full-mode conversations (drift
recorded or raised), sampler/trainer logprob agreement on them, native tool calls, context
budgets and history policies whose samples hold only what was in the context."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch
from chatml import QWEN3, QWEN25, SMOLLM2, chatml_tokenizer

from agentrl.config import RolloutConfig
from agentrl.envpool import InProcessPool
from agentrl.envs.tooluse.env import ToolUseEnv
from agentrl.learn.batch import make_batch, to_samples
from agentrl.learn.forward import token_outputs
from agentrl.models import build_tiny_model
from agentrl.policies.base import Generation, Policy, SamplingParams
from agentrl.policies.hf import HFPolicy
from agentrl.rollout.chat import TemplateDriftError
from agentrl.rollout.engine import RolloutEngine
from agentrl.rollout.prompts import PromptBuilder
from agentrl.types import Trajectory

TEMPLATES = {"smollm2": SMOLLM2, "qwen2.5": QWEN25, "qwen3": QWEN3}
_TOKS: dict[str, Any] = {}


def _tok(name: str) -> Any:
    if name not in _TOKS:
        _TOKS[name] = chatml_tokenizer(TEMPLATES[name])
    return _TOKS[name]


def _model(tok: Any) -> Any:
    return build_tiny_model(len(tok), hidden=32, layers=2, heads=4, seed=0,
                            pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)


def _engine(policy: Any, env: str = "test/Corridor-v0", kwargs: dict | None = None,
            n: int = 4, **cfg: Any) -> RolloutEngine:
    c = RolloutConfig(**{"context": "full", "max_turns": 4, "max_new_tokens": 8,
                         "template": "{observation} Actions: {actions}", **cfg})
    return RolloutEngine(policy, InProcessPool(env, kwargs or {}, n),
                         PromptBuilder(policy.tokenizer, c), c, env)


def _hf(tok: Any, model: Any) -> HFPolicy:
    pol = HFPolicy(model, tok, batch_size=8)
    pol.seed(0)
    return pol


def _gap(model: Any, trajs: list[Trajectory], tok: Any, temperature: float = 1.0) -> float:
    """Max |trainer - sampler| logprob over every sampled token."""
    b = make_batch(trajs, tok.pad_token_id)
    with torch.no_grad():
        lp = token_outputs(model, b.input_ids, b.attention_mask, b.loss_mask, b.allowed,
                           temperature).logprobs
    mask = b.loss_mask > 0
    assert mask.any()
    return float((lp[mask] - b.old_logprobs[mask]).abs().max())


def _context(traj: Trajectory) -> list[int]:
    """Stored ids up to the last turn's prompt (context + every reply before it)."""
    ids: list[int] = []
    for t in traj.turns:
        ids = (list(t.context_ids) if t.context_reset else ids + list(t.context_ids))
        last = list(ids)
        ids += t.action_ids
    return last


def _messages(builder: PromptBuilder, traj: Trajectory) -> list[dict[str, Any]]:
    """The chat messages of ``traj`` up to its last turn's prompt, built independently."""
    tok = builder.tok
    msgs = list(traj.extra["chat_head"])
    for k, t in enumerate(traj.turns[:-1]):
        ids = t.action_ids[:-1] if t.action_ids[-1:] == [tok.eos_token_id] else t.action_ids
        msgs.append({"role": "assistant", "content": tok.decode(
            ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)})
        nxt = traj.turns[k + 1]
        msgs.append({"role": "user", "content": builder.cfg.template.format(
            observation=nxt.observation, actions=", ".join(t.info["admissible_actions"]))})
    return msgs


# ---------------------------------------------------------------------- drift through the engine

@pytest.mark.parametrize("name", ["smollm2", "qwen2.5"])
@pytest.mark.parametrize("constrained", [True, False])
def test_full_mode_stores_the_template_rendering_and_logprobs_agree(name: str,
                                                                     constrained: bool) -> None:
    tok = _tok(name)
    model = _model(tok)
    eng = _engine(_hf(tok, model), constrained=constrained, action_format="tags",
                  template_drift="keep_prefix", n=6)
    trajs = eng.run([0, 0, 1, 1, 2, 2])
    assert all(t.num_turns >= 2 for t in trajs)
    for t in trajs:
        rendered = tok.apply_chat_template(_messages(eng.builder, t), tokenize=False,
                                           add_generation_prompt=True)
        stored = _context(t)
        assert tok.decode(stored, skip_special_tokens=False) == rendered  # same text, always
        if constrained:  # canonical replies: the very same tokens, and no drift anywhere
            assert stored == tok.encode(rendered, add_special_tokens=False)
            assert "template_drift" not in t.extra
    assert _gap(model, trajs, tok) < 1e-5


def test_qwen3_thinking_drift_is_recorded_and_logprobs_still_agree() -> None:
    """``enable_thinking=false`` puts an empty think block in every generation prompt, which
    the template drops once the turn is history: drift at turn 0, kept prefix, exact logprobs."""
    tok = _tok("qwen3")
    model = _model(tok)
    eng = _engine(_hf(tok, model), constrained=True, action_format="tags",
                  chat_template_kwargs={"enable_thinking": False})
    trajs = eng.run([0, 1])
    for t in trajs:
        assert t.extra["template_drift"]["turn"] == 0
        assert t.extra["template_drift"]["kind"] == "thinking"
        assert t.termination in ("success", "failure", "max_turns")
        # every turn extends the stored prefix (no re-rendering): one sample per trajectory
        assert not any(turn.context_reset for turn in t.turns)
    assert len(to_samples(trajs)) == 2
    assert _gap(model, trajs, tok) < 1e-5


def test_qwen3_thinking_drift_fails_loudly_when_configured() -> None:
    tok = _tok("qwen3")
    eng = _engine(_hf(tok, _model(tok)), constrained=True, action_format="tags",
                  chat_template_kwargs={"enable_thinking": False}, template_drift="error")
    with pytest.raises(TemplateDriftError, match=r"turn 0 \(thinking"):
        eng.run([0])


def test_a_replayed_prefix_rebuilds_the_conversation() -> None:
    tok = _tok("qwen2.5")
    model = _model(tok)
    eng = _engine(_hf(tok, model), constrained=True, action_format="tags", max_turns=6)
    first = eng.run([5])[0]
    assert first.num_turns >= 3
    branch = eng.run([5], prefixes=[first.turns[:2]])[0]
    assert [t.action_ids for t in branch.turns[:2]] == [t.action_ids for t in first.turns[:2]]
    assert branch.num_turns > 2 and branch.extra["prefix_turns"] == 2
    rendered = tok.apply_chat_template(_messages(eng.builder, branch), tokenize=False,
                                       add_generation_prompt=True)
    assert _context(branch) == tok.encode(rendered, add_special_tokens=False)
    assert _gap(model, [branch], tok) < 1e-5


# --------------------------------------------------------------------------- native tool calls

class ScriptedToolPolicy(Policy):
    """Plays ToolUse arithmetic with Qwen-format calls: calculator, then the answer read from
    the tool result; optionally a malformed call first. Logprobs are placeholders (0)."""

    def __init__(self, tok: Any, env: ToolUseEnv, seeds: list[int], broken_first: bool) -> None:
        self.tokenizer, self.broken_first = tok, broken_first
        self.expr = {env.task_for_seed(s).question: env.task_for_seed(s).expression for s in seeds}
        self.calls: list[str] = []

    def _reply(self, prompt: str) -> str:
        results = re.findall(r"<tool_response>\n.* = (\S+)\n</tool_response>", prompt)
        if results:
            return f'<tool_call>\n{{"name": "answer", "arguments": {{"text": "{results[-1]}"}}}}' \
                   "\n</tool_call>"
        question = re.search(r"Question: (.*?)<\|im_end\|>", prompt, re.S).group(1).strip()
        call = ('<tool_call>\n{"name": "calculate", "arguments": {"expression": '
                f'"{self.expr[question]}"}}}}\n</tool_call>')
        if self.broken_first and "Invalid tool call" not in prompt:
            return call.replace("}}", "}")  # malformed JSON
        return call

    def generate(self, prompts: list[list[int]], sampling: SamplingParams,
                 candidates: Any = None) -> list[Generation]:
        out = []
        for p in prompts:
            text = self._reply(self.tokenizer.decode(p, skip_special_tokens=False))
            self.calls.append(text)
            ids = self.tokenizer.encode(text, add_special_tokens=False) + [self.eos_token_id]
            out.append(Generation(ids, [0.0] * len(ids), "stop"))
        return out


@pytest.mark.parametrize("broken_first", [False, True])
def test_tooluse_played_through_native_tool_calls(broken_first: bool) -> None:
    tok = _tok("qwen2.5")
    kwargs = {"task_types": ["arithmetic"], "instructions": False}
    seeds = [3, 4, 5]
    pol = ScriptedToolPolicy(tok, ToolUseEnv(**kwargs), seeds, broken_first)
    eng = _engine(pol, "agentrl/ToolUse-v0", kwargs, n=3, action_format="tool_call",
                  template="{observation}", template_drift="error", max_new_tokens=64)
    trajs = eng.run(seeds)
    for t in trajs:
        assert t.success and t.termination == "success", t.extra
        valid = [turn.action_valid for turn in t.turns]
        assert valid == ([False, True, True] if broken_first else [True, True])
        assert t.turns[-2].action.startswith("calculate[") and t.turns[-1].action.startswith(
            "answer[")
        assert [x["function"]["name"] for x in t.extra["tools"]] == ["search", "calculate",
                                                                     "python", "answer"]
        text = tok.decode(_context(t), skip_special_tokens=False)
        assert "# Tools" in text and '"name": "calculate"' in text  # schemas in the prompt
        assert "<|im_start|>user\n<tool_response>\n" in text  # results as tool messages
        if broken_first:
            assert "Invalid tool call: not valid JSON" in t.turns[1].observation
            assert t.turns[0].action == "" and t.turns[0].reward + t.turns[0].shaping < 0
        assert "template_drift" not in t.extra  # Qwen's format renders its own calls back


def test_tool_call_needs_an_env_with_tools() -> None:
    tok = _tok("qwen2.5")
    eng = _engine(_hf(tok, _model(tok)), action_format="tool_call")
    (t,) = eng.run([0])
    assert t.termination == "env_error" and "info['tools']" in t.extra["error"]


def test_window_mode_gives_the_tools_to_the_template() -> None:
    tok = _tok("qwen2.5")
    env = ToolUseEnv(task_types=["arithmetic"], instructions=False)
    pol = ScriptedToolPolicy(tok, env, [3], False)
    eng = _engine(pol, "agentrl/ToolUse-v0", {"task_types": ["arithmetic"], "instructions": False},
                  n=1, context="window", action_format="tool_call", template="{observation}",
                  max_new_tokens=64, max_turns=1)
    (t,) = eng.run([3])
    assert "# Tools" in tok.decode(t.turns[0].context_ids)
    assert t.turns[0].action_valid and t.turns[0].action.startswith("calculate[")


# ------------------------------------------------------------------------------ context budgets

@pytest.mark.parametrize("policy", ["last_k", "summary"])
def test_history_policy_trains_only_on_what_was_in_the_context(policy: str) -> None:
    """A long corridor in a small context: the context restarts (task + last turn [+ a summary
    the model wrote]); what was dropped is recorded; each training sample is exactly a context
    the sampler saw, so trainer logprobs equal sampler logprobs and every sampled token is
    trained once, in its own context."""
    tok = _tok("smollm2")
    model = _model(tok)
    eng = _engine(_hf(tok, model), "test/Corridor-v0", {"length": 30}, n=2, constrained=True,
                  action_format="tags", max_turns=10, max_context_tokens=320,
                  history_policy=policy, keep_turns=1, max_summary_tokens=6)
    trajs = eng.run([0, 1])
    for t in trajs:
        assert t.num_turns == 10 and t.termination == "max_turns"
        resets = [k for k, turn in enumerate(t.turns) if turn.context_reset]
        assert resets, "the context never overflowed"
        events = t.extra["context_events"]
        assert [e["turn"] for e in events] == resets
        for e in events:
            assert e["kind"] == ("summary" if policy == "summary" else "drop")
            assert e["dropped_turns"] and e["tokens_after"] < e["tokens_before"]
            restart = tok.decode(t.turns[e["turn"]].context_ids)
            assert restart.startswith("<|im_start|>system\nYou are a helpful AI assistant")
            assert "You are in room 0." in restart  # the task / first observation stays
            if policy == "summary":
                assert "Summary of the earlier turns: " + e["summary"] in restart
        samples = [s for s in to_samples([t])]
        assert len(samples) == len(resets) + 1
        bounds = [0, *resets, t.num_turns]
        for s, (a, b) in zip(samples, zip(bounds, bounds[1:])):
            # loss only on this sample's own sampled tokens
            trained = [i for i, m in zip(s.input_ids, s.loss_mask) if m]
            assert trained == [i for turn in t.turns[a:b] for i in turn.action_ids]
            assert set(s.turn_index) - {-1} == set(range(a, b))
            assert len(s.input_ids) <= 320  # never longer than the context the sampler had
    assert _gap(model, trajs, tok) < 1e-5


def test_observation_token_cut_and_episode_token_budget() -> None:
    tok = _tok("smollm2")
    eng = _engine(_hf(tok, _model(tok)), constrained=True, action_format="tags",
                  max_observation_tokens=3, max_episode_tokens=12, max_turns=10)
    (t,) = eng.run([0])
    assert t.turns[0].observation.endswith(" ...[truncated]")
    assert len(tok.encode(t.turns[0].observation.removesuffix(" ...[truncated]"))) <= 3
    assert t.extra["observation_tokens_dropped"][0][0] == 0
    assert t.termination == "token_budget" and t.num_action_tokens >= 12
    assert sum(len(turn.action_ids) for turn in t.turns[:-1]) < 12
