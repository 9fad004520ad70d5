"""Token-exact conversations under real chat-template formats: prefix-stable templates store
exactly the template's rendering; templates that rewrite history are caught at the right turn."""

from __future__ import annotations

import pytest
from chatml import QWEN3, QWEN25, SMOLLM2, chatml_tokenizer

from agentrl.rollout.chat import (
    ChatTemplate,
    Conversation,
    TemplateDriftError,
    TemplateError,
    truncate_to_tokens,
)

CALC = {"type": "function", "function": {
    "name": "calculate", "description": "Evaluate arithmetic.",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}},
                   "required": ["expression"]}}}


def _call(expr: str) -> dict:
    return {"type": "function", "function": {"name": "calculate", "arguments": {"expression": expr}}}


def _reply(conv: Conversation, text: str, ended: bool = True, **msg) -> list[int]:
    """Store ``text`` as if sampled (plus EOS when ``ended``) with its chat message."""
    ids = conv.template.encode(text) + ([conv.template.eos_id] if ended else [])
    conv.add_reply(ids, {"role": "assistant", "content": text, **msg})
    return ids


def _rendering(conv: Conversation) -> list[int]:
    return conv.template.encode(conv.template.render(conv.messages, True))


# Each script: (template, tools, turns of (reply text, reply ended, extra message fields,
# observation messages)). All are prefix-stable for their template.
STABLE = {
    "smollm2-user-turns": (SMOLLM2, None, [
        ("<action>go east</action>", True, {}, [{"role": "user", "content": "You are in room 1."}]),
        ("I will go east. <action>go", False, {}, [{"role": "user", "content": "Nothing happens."}]),
        ("<action>take coin</action>", True, {}, [{"role": "user", "content": "You win."}]),
    ]),
    "qwen2.5-tool-calls": (QWEN25, [CALC], [
        ('<tool_call>\n{"name": "calculate", "arguments": {"expression": "120 / 4"}}\n</tool_call>',
         True, {"content": "", "tool_calls": [_call("120 / 4")]},
         [{"role": "tool", "content": "120 / 4 = 30"}]),
        ('Let me check.\n<tool_call>\n{"name": "calculate", "arguments": {"expression": "30 * 4"}}'
         '\n</tool_call>', True, {"content": "Let me check.", "tool_calls": [_call("30 * 4")]},
         [{"role": "tool", "content": "30 * 4 = 120"}, {"role": "tool", "content": "(again)"}]),
        ("The answer is 30.", True, {}, [{"role": "user", "content": "Are you sure?"}]),
    ]),
    "qwen3-thinking-with-tool-results": (QWEN3, [CALC], [
        ('<think>\nI need the calculator.\n</think>\n\n<tool_call>\n{"name": "calculate", '
         '"arguments": {"expression": "120 / 4"}}\n</tool_call>', True,
         {"content": "<think>\nI need the calculator.\n</think>", "tool_calls": [_call("120 / 4")]},
         [{"role": "tool", "content": "120 / 4 = 30"}]),
        ("<think>\nSo 30.\n</think>\n\nThe answer is 30.", True, {},
         [{"role": "tool", "content": "noted"}]),
    ]),
}


@pytest.mark.parametrize("name", list(STABLE))
def test_prefix_stable_template_stores_exactly_its_rendering(name: str) -> None:
    template, tools, turns = STABLE[name]
    tok = chatml_tokenizer(template)
    conv = Conversation(ChatTemplate(tok, tools), [{"role": "user", "content": "Question: 120/4?"}],
                        "error")
    stored_before: list[int] = []
    for text, ended, extra, obs in turns:
        prefix = list(conv.ids)
        assert prefix[:len(stored_before)] == stored_before  # never rewritten
        _reply(conv, text, ended, **extra)
        delta = conv.add_observation(obs)
        assert conv.ids[-len(delta):] == delta
        # token-in/token-out == the template's own rendering of the whole conversation
        assert conv.ids == _rendering(conv), name
        stored_before = list(conv.ids)
    assert conv.drift is None


def test_cut_reply_is_closed_by_the_template_and_still_matches() -> None:
    tok = chatml_tokenizer(SMOLLM2)
    conv = Conversation(ChatTemplate(tok), [{"role": "user", "content": "hi"}])
    ids = tok.encode("I will go", add_special_tokens=False)  # cut by the token limit: no EOS
    conv.add_reply(ids, {"role": "assistant", "content": conv.reply_content(ids)})
    delta = conv.add_observation([{"role": "user", "content": "go on"}])
    assert delta[0] == tok.eos_token_id  # the template's closing, which the reply lacked
    assert conv.ids == _rendering(conv) and conv.drift is None


def _qwen3_user_turns(policy: str) -> Conversation:
    conv = Conversation(ChatTemplate(chatml_tokenizer(QWEN3)),
                        [{"role": "user", "content": "Question: 120/4?"}], policy)
    _reply(conv, "<think>\nDivide.\n</think>\n\n30")
    return conv


def test_qwen3_dropping_past_thinking_is_detected_and_the_stored_prefix_kept() -> None:
    conv = _qwen3_user_turns("keep_prefix")
    before = list(conv.ids)
    delta = conv.add_observation([{"role": "user", "content": "Are you sure?"}])
    assert conv.drift is not None
    assert (conv.drift.turn, conv.drift.kind, conv.drift.where) == (0, "thinking", "reply")
    assert conv.ids == before + delta  # the stored prefix, extended; not re-rendered
    # The template's rendering lost turn 0's thinking; the stored tokens still hold it.
    assert "Divide." in conv.text and "Divide." not in conv.template.render(conv.messages, True)
    # The appended tokens are the new message as the template renders it after a reply.
    assert conv.template.decode(delta) == ("\n<|im_start|>user\nAre you sure?<|im_end|>\n"
                                           "<|im_start|>assistant\n")
    _reply(conv, "<think>\nYes.\n</think>\n\nYes")
    conv.add_observation([{"role": "user", "content": "ok"}])
    assert conv.drift.turn == 0  # the first drift is what is recorded


def test_qwen3_drift_fails_loudly_naming_the_turn_when_configured() -> None:
    conv = _qwen3_user_turns("error")
    with pytest.raises(TemplateDriftError, match=r"turn 0 \(thinking, in the reply\)"):
        conv.add_observation([{"role": "user", "content": "Are you sure?"}])


def test_qwen3_without_thinking_flags_the_empty_think_block_of_the_prompt() -> None:
    tok = chatml_tokenizer(QWEN3)
    conv = Conversation(ChatTemplate(tok, template_kwargs={"enable_thinking": False}),
                        [{"role": "user", "content": "Q"}])
    assert conv.text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    _reply(conv, "30")
    conv.add_observation([{"role": "user", "content": "next"}])
    assert (conv.drift.turn, conv.drift.kind, conv.drift.where) == (0, "thinking", "context")


def test_tool_call_reserialisation_is_detected() -> None:
    tok = chatml_tokenizer(QWEN25)
    conv = Conversation(ChatTemplate(tok, [CALC]), [{"role": "user", "content": "Q"}], "keep_prefix")
    compact = '<tool_call>\n{"name":"calculate","arguments":{"expression":"120/4"}}\n</tool_call>'
    _reply(conv, compact, content="", tool_calls=[_call("120/4")])
    conv.add_observation([{"role": "tool", "content": "120/4 = 30"}])
    assert (conv.drift.turn, conv.drift.kind, conv.drift.where) == (0, "tool_call", "reply")


def test_whitespace_rewrite_is_detected() -> None:
    trimming = SMOLLM2.replace("message['content']", "message['content'] | trim")
    conv = Conversation(ChatTemplate(chatml_tokenizer(trimming)), [{"role": "user", "content": "Q"}])
    _reply(conv, "30  ")
    conv.add_observation([{"role": "user", "content": "next"}])
    assert (conv.drift.turn, conv.drift.kind) == (0, "whitespace")


def test_same_text_other_tokens_across_a_turn_boundary_is_detected() -> None:
    tok = chatml_tokenizer(SMOLLM2)
    assert len(tok.encode("\n\n", add_special_tokens=False)) == 1  # a merged token
    conv = Conversation(ChatTemplate(tok), [{"role": "user", "content": "Q"}])
    # The generation prompt ends in "\n"; a reply opening with "\n\n" tokenises differently
    # once the two are one text (the "\n\n\n" run splits as "\n\n" + "\n").
    _reply(conv, "\n\n30")
    conv.add_observation([{"role": "user", "content": "next"}])
    assert (conv.drift.turn, conv.drift.kind, conv.drift.where) == (0, "tokenization", "context")
    assert conv.template.render(conv.messages, True) == conv.text  # text is the same


def test_noncanonical_sampled_ids_are_counted_not_drift() -> None:
    tok = chatml_tokenizer(SMOLLM2)
    conv = Conversation(ChatTemplate(tok), [{"role": "user", "content": "Q"}], "error")
    word = tok.encode("calculate", add_special_tokens=False)
    assert len(word) == 1
    spelled = [i for ch in "calculate" for i in tok.encode(ch, add_special_tokens=False)]
    conv.add_reply(spelled + [tok.eos_token_id], {"role": "assistant", "content": "calculate"})
    conv.add_observation([{"role": "user", "content": "next"}])
    assert conv.drift is None and conv.noncanonical_replies == 1


@pytest.mark.parametrize("template", [SMOLLM2, QWEN25, QWEN3])
@pytest.mark.parametrize("ended", [True, False])
def test_suffix_after_reply_equals_the_in_context_rendering(template: str, ended: bool) -> None:
    """The drift fallback builds the same tokens as the real conversation where it is stable."""
    tok = chatml_tokenizer(template)
    tools = None if template is SMOLLM2 else [CALC]
    for obs in ([{"role": "user", "content": "next"}],
                [{"role": "tool", "content": "a"}, {"role": "tool", "content": "b"}]):
        if template is SMOLLM2 and obs[0]["role"] == "tool":
            continue
        conv = Conversation(ChatTemplate(tok, tools), [{"role": "user", "content": "Q"}])
        _reply(conv, "30", ended)
        delta = conv.add_observation(obs)
        assert conv.drift is None
        assert conv.template.encode(conv.template.suffix_after_reply(obs, ended)) == delta


def test_template_errors_name_the_messages() -> None:
    tok = chatml_tokenizer("{{ raise_exception('roles must alternate') }}")
    with pytest.raises(TemplateError, match=r"\[user\].*roles must alternate"):
        Conversation(ChatTemplate(tok), [{"role": "user", "content": "Q"}])
    tok.chat_template = None
    with pytest.raises(TemplateError, match="no chat_template"):
        ChatTemplate(tok)


# -------------------------------------------------------------------------------- budgets

def _long_conversation(turns: int) -> Conversation:
    tok = chatml_tokenizer(SMOLLM2)
    conv = Conversation(ChatTemplate(tok), [{"role": "system", "content": "Play."},
                                            {"role": "user", "content": "Task: reach room 9."}])
    for k in range(turns):
        _reply(conv, f"<action>go east {k}</action>")
        conv.add_observation([{"role": "user", "content": f"You are in room {k + 1}."}])
    return conv


def test_compact_keeps_the_task_and_the_last_k_turns() -> None:
    conv = _long_conversation(5)  # turns 0-4 done, turn 5 pending
    before = len(conv.ids)
    ids = conv.compact(keep_turns=2)
    assert ids == conv.ids == _rendering(conv)  # a fresh, template-exact prompt
    kept = conv.template.decode(ids)
    assert "Task: reach room 9." in kept and "go east 3" in kept and "go east 4" in kept
    assert "go east 2" not in kept and "room 5." in kept  # pending observation kept
    ev = conv.events[-1]
    assert (ev.turn, ev.kind, ev.dropped_turns, ev.tokens_before) == (5, "drop", [0, 1, 2], before)
    assert ev.tokens_after == len(ids) < before
    # The conversation goes on token-exact from the new prompt, and compacts again.
    _reply(conv, "<action>go east 5</action>")
    conv.add_observation([{"role": "user", "content": "You are in room 6."}])
    assert conv.ids == _rendering(conv) and conv.drift is None
    conv.compact(keep_turns=1)
    assert conv.events[-1].dropped_turns == [3, 4]
    assert "go east 5" in conv.text and "go east 4" not in conv.text


def test_compact_with_a_summary_and_no_kept_turns() -> None:
    conv = _long_conversation(3)
    pending = conv.segments[-1].ids  # the last observation's message + generation prompt
    base = conv.ids[:len(conv.ids) - len(pending)]
    req = conv.summary_request("Summarize your progress in one sentence.")
    assert req[:len(base)] == base
    assert conv.template.decode(req[len(base):]) == (
        "\n<|im_start|>user\nSummarize your progress in one sentence.<|im_end|>\n"
        "<|im_start|>assistant\n")
    assert req == conv.template.encode(conv.template.render(
        conv.messages[:-1] + [{"role": "user", "content": "Summarize your progress in one "
                                                          "sentence."}], True))
    ids = conv.compact(keep_turns=0, summary="I went east three times.")
    text = conv.template.decode(ids)
    assert "Summary of the earlier turns: I went east three times." in text
    assert "go east" not in text and "You are in room 3." in text
    assert conv.events[-1].kind == "summary" and conv.events[-1].dropped_turns == [0, 1, 2]


def test_truncate_to_tokens() -> None:
    tok = chatml_tokenizer(SMOLLM2)
    text = "You are in room 0. " * 20
    cut, dropped = truncate_to_tokens(tok, text, 10)
    assert cut.endswith(" ...[truncated]") and dropped == len(tok.encode(text)) - 10
    assert len(tok.encode(cut.removesuffix(" ...[truncated]"))) <= 10
    assert truncate_to_tokens(tok, "short", 10) == ("short", 0)
    assert truncate_to_tokens(tok, text, 0) == (text, 0)


def test_a_template_without_tool_support_gets_the_tools_in_its_system_message() -> None:
    conv = Conversation(ChatTemplate(chatml_tokenizer(SMOLLM2), [CALC], call_example="<call>"),
                        [{"role": "user", "content": "Q"}])
    assert conv.text.startswith("<|im_start|>system\nYou can call these tools (JSON schemas):\n"
                                '<tools>\n{"type": "function"')
    assert "</tools>\nCall one as:\n<call><|im_end|>\n<|im_start|>user\nQ" in conv.text
    # A template that renders tools itself is left alone.
    qwen = Conversation(ChatTemplate(chatml_tokenizer(QWEN25), [CALC], call_example="<call>"),
                        [{"role": "user", "content": "Q"}])
    assert qwen.template.tools_note == "" and "# Tools" in qwen.text
