"""Native tool calls: parsing (valid, malformed, partial, multiple), tools -> env actions, and a
ToolUse episode played through Qwen-format tool calls."""

from __future__ import annotations

import re

import pytest
from chatml import QWEN25, chatml_tokenizer

from agentrl import register_tool_parser
from agentrl.envs.tooluse.env import ToolUseEnv, tool_schemas
from agentrl.rollout.chat import ChatTemplate, Conversation
from agentrl.rollout.toolcalls import (
    ParsedReply,
    ToolCall,
    action_to_call,
    assistant_message,
    call_text,
    call_to_action,
    check_tools,
    corpus_writer,
    get_tool_parser,
    invalid_call_text,
)
from agentrl.testing import EnvCheckError, check_env

TOOLS = tool_schemas()
CALC = '<tool_call>\n{"name": "calculate", "arguments": {"expression": "2 + 3"}}\n</tool_call>'

# (reply, action or None, a fragment of the error, well_formed)
HERMES_CASES = {
    "valid": (CALC, "calculate[2 + 3]", None, True),
    "valid, compact JSON": ('<tool_call>{"name":"answer","arguments":{"text":"5"}}</tool_call>',
                            "answer[5]", None, True),
    "valid after thinking and text": (
        "<think>\nadd them\n</think>\n\nLet me compute.\n" + CALC, "calculate[2 + 3]", None, True),
    "arguments as a JSON string": (
        '<tool_call>{"name": "search", "arguments": "{\\"query\\": \\"capital\\"}"}</tool_call>',
        "search[capital]", None, True),
    "brackets and braces inside strings": (
        '<tool_call>{"name": "python", "arguments": {"code": "print({1: [2]}[1])"}}</tool_call>',
        "python[print({1: [2]}[1])]", None, True),
    "a number argument": ('<tool_call>{"name": "answer", "arguments": {"text": 42}}</tool_call>',
                          "answer[42]", None, True),
    "malformed JSON": ('<tool_call>\n{"name": "calculate", "arguments": {"expression": 2 + 3}}\n'
                       '</tool_call>', None, "not valid JSON", False),
    "not an object": ("<tool_call>[1, 2]</tool_call>", None, '"name" string', False),
    "no name": ('<tool_call>{"arguments": {}}</tool_call>', None, '"name" string', False),
    "arguments not an object": ('<tool_call>{"name": "answer", "arguments": [5]}</tool_call>',
                                None, "must be a JSON object", False),
    "partial (cut off)": ('<tool_call>\n{"name": "calculate", "argum', None, "not closed", False),
    "valid then partial": (CALC + '\n<tool_call>{"name"', None, "not closed", False),
    "multiple calls": (CALC + "\n" + CALC.replace("2 + 3", "4"), None, "2 tool calls", True),
    "no call": ("The answer is 5.", None, "no tool call found", True),
    "empty reply": ("", None, "no tool call found", True),
    "unknown tool": ('<tool_call>{"name": "browse", "arguments": {"url": "x"}}</tool_call>',
                     None, "unknown tool 'browse'", True),
    "missing argument": ('<tool_call>{"name": "calculate", "arguments": {}}</tool_call>', None,
                         "takes one argument 'expression' (got: none)", True),
    "extra argument": ('<tool_call>{"name": "answer", "arguments": {"text": "5", "why": "x"}}'
                       "</tool_call>", None, "(got: text, why)", True),
}


@pytest.mark.parametrize("case", list(HERMES_CASES))
def test_hermes_parser_table(case: str) -> None:
    reply, action, error, well_formed = HERMES_CASES[case]
    parsed = get_tool_parser("hermes").parse(reply)
    got_action, got_error = call_to_action(parsed, TOOLS)
    if action is not None:
        assert (got_action, got_error) == (action, None)
    else:
        assert got_action == "" and error in got_error
    assert parsed.well_formed is well_formed
    assert parsed.attempted == ("<tool_call>" in reply)


JSON_CASES = {
    "llama style": ('{"name": "calculate", "parameters": {"expression": "1+1"}}', "calculate[1+1]"),
    "arguments key": ('{"name": "answer", "arguments": {"text": "2"}}', "answer[2]"),
    "malformed": ('{"name": "answer", "parameters": {"text": }', "not valid JSON"),
    "prose": ("I think it is 2.", "no tool call found"),
}


@pytest.mark.parametrize("case", list(JSON_CASES))
def test_json_parser_table(case: str) -> None:
    reply, want = JSON_CASES[case]
    action, error = call_to_action(get_tool_parser("json").parse(reply), TOOLS)
    assert (action == want) if error is None else (want in error)


def test_parser_registry_is_pluggable_and_names_the_choices() -> None:
    class Bracket:
        example = "CALL name(value)"

        def parse(self, text: str) -> ParsedReply:
            m = re.fullmatch(r"CALL (\w+)\((.*)\)", text.strip())
            if not m:
                return ParsedReply(text, [], "no call", False)
            return ParsedReply("", [ToolCall(m.group(1), {"text": m.group(2)})], None, True)

    register_tool_parser("bracket-test", Bracket)
    assert call_to_action(get_tool_parser("bracket-test").parse("CALL answer(7)"), TOOLS) == \
        ("answer[7]", None)
    with pytest.raises(ValueError, match="unknown rollout.tool_parser 'nope'.*hermes"):
        get_tool_parser("nope")


@pytest.mark.parametrize("name", ["hermes", "json"])
def test_env_actions_written_as_calls_parse_back_to_the_same_actions(name: str) -> None:
    parser = get_tool_parser(name)
    for action in ("calculate[2 + 3]", 'python[print({"a": [1]}["a"])]', "answer[São Paulo]",
                   "search[x [y] z]", 'answer["quoted" \\ back]'):
        assert call_to_action(parser.parse(call_text(parser, action, TOOLS)), TOOLS) == \
            (action, None)
    assert call_text(get_tool_parser("hermes"), "answer[5]", TOOLS) == \
        '<tool_call>\n{"name": "answer", "arguments": {"text": "5"}}\n</tool_call>'
    assert call_text(get_tool_parser("json"), "answer[5]", TOOLS) == \
        '{"name": "answer", "parameters": {"text": "5"}}'
    assert action_to_call("search[capital]", TOOLS) == ToolCall("search", {"query": "capital"})
    for bad in ("browse[x]", "just text", "answer 5"):
        with pytest.raises(ValueError, match="not a call of one of the tools"):
            action_to_call(bad, TOOLS)

    class ReadOnly:  # a registered parser that reads calls but cannot write them
        example = "CALL name(value)"

        def parse(self, text: str) -> ParsedReply:
            return ParsedReply(text, [], "no call", False)

    with pytest.raises(ValueError, match="cannot write calls"):
        call_text(ReadOnly(), "answer[5]", TOOLS)


def test_assistant_messages_keep_broken_replies_verbatim() -> None:
    p = get_tool_parser("hermes")
    ok = assistant_message(CALC, p.parse(CALC), "t0")
    assert ok["content"] == "" and ok["tool_calls"][0]["function"] == {
        "name": "calculate", "arguments": {"expression": "2 + 3"}}
    bad = '<tool_call>{"name": oops}</tool_call>'
    assert assistant_message(bad, p.parse(bad), "t1") == {"role": "assistant", "content": bad}
    assert "Invalid tool call: x. Call exactly one tool, as <tool_call>" in invalid_call_text(
        "x", p.example)


def test_tool_schemas_are_checked() -> None:
    check_tools(TOOLS)
    with pytest.raises(ValueError, match="exactly one parameter"):
        check_tools([{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"a": {}, "b": {}}}}}])
    with pytest.raises(ValueError, match="non-empty list"):
        check_tools([])


def test_envs_expose_their_actions_as_tools() -> None:
    from agentrl.envs.webshop.env import WebShopEnv

    _, info = ToolUseEnv().reset(seed=0)
    assert [t["function"]["name"] for t in info["tools"]] == ["search", "calculate", "python",
                                                            "answer"]
    shop = WebShopEnv(num_products=200)
    _, info = shop.reset(seed=0)
    check_tools(info["tools"])
    assert [t["function"]["name"] for t in info["tools"]] == ["search", "click"]

    class BadTools(ToolUseEnv):
        def reset(self, **kw):
            obs, info = super().reset(**kw)
            return obs, {**info, "tools": [{"name": "search"}]}

    with pytest.raises(EnvCheckError, match="info 'tools'"):
        check_env(BadTools(), skip_gym=True)


def test_the_tiny_template_lists_tools_in_one_line_and_its_tokenizer_learns_the_calls(
        tiny_tok) -> None:
    from agentrl.models import env_corpus, tiny_tools_text

    head = "<|system|>\nTools: search(query), calculate(expression), python(code), answer(text)\n"
    assert tiny_tools_text(TOOLS) == head
    template = ChatTemplate(tiny_tok, TOOLS)
    assert template.tools_note == ""  # the template shows the tools itself, no JSON schemas
    assert template.render([{"role": "user", "content": "q"}], True) == \
        head + "<|user|>\nq<|assistant|>\n"
    assert ChatTemplate(tiny_tok).render([{"role": "user", "content": "q"}], True) == \
        "<|user|>\nq<|assistant|>\n"  # without tools: unchanged

    kwargs = {"action_choices": True, "task_types": ["arithmetic"], "max_steps": 4}
    plain = env_corpus("agentrl/ToolUse-v0", kwargs, 3, 4)
    calls = env_corpus("agentrl/ToolUse-v0", kwargs, 3, 4, write_call=corpus_writer("hermes"))
    hermes = get_tool_parser("hermes")
    note = head + hermes.example
    # per episode: the tools as the prompt lists them, and every listed action as a call
    assert note not in plain and calls.count(note) == 3
    actions = [t for t in plain if re.fullmatch(r"(calculate|answer|search)\[.*\]", t)]
    assert actions and all(call_text(hermes, a, TOOLS) in calls for a in actions)
    assert [t for t in calls if t != note and not t.startswith("<tool_call>")] == plain


def test_tooluse_episode_through_native_tool_calls_succeeds() -> None:
    """A scripted policy plays ToolUse arithmetic through Qwen-format calls: the calculator,
    then the answer read from the tool message. The stored tokens stay the template's own
    rendering (no drift) and a malformed call in between is an invalid, harmless turn."""
    tok = chatml_tokenizer(QWEN25)
    env = ToolUseEnv(task_types=["arithmetic"], instructions=False)
    parser = get_tool_parser("hermes")
    obs, info = env.reset(seed=3)
    conv = Conversation(ChatTemplate(tok, info["tools"]), [{"role": "user", "content": obs}],
                        "error")
    expr = env.task_for_seed(3).expression
    replies = [
        '<tool_call>\n{"name": "calculate", "arguments": {"expression": ' + f'"{expr}"' + "}",
        f'<tool_call>\n{{"name": "calculate", "arguments": {{"expression": "{expr}"}}}}\n</tool_call>',
        None,  # the answer, read from the calculator's tool message
    ]
    rewards, valid = [], []
    for k, text in enumerate(replies):
        if text is None:
            result = re.search(r"<tool_response>\n.* = (\S+)\n</tool_response>", conv.text).group(1)
            text = f'<tool_call>\n{{"name": "answer", "arguments": {{"text": "{result}"}}}}\n</tool_call>'
        ids = tok.encode(text, add_special_tokens=False) + [tok.eos_token_id]
        parsed = parser.parse(conv.reply_content(ids))
        conv.add_reply(ids, assistant_message(conv.reply_content(ids), parsed, f"t{k}"))
        action, error = call_to_action(parsed, info["tools"])
        obs, r, term, trunc, info2 = env.step(action)  # "" when the call was invalid
        rewards.append(r)
        valid.append(error is None and info2["action_valid"])
        if term:
            break
        content = obs if error is None else invalid_call_text(error, parser.example)
        conv.add_observation([{"role": "tool", "content": content}])
        assert conv.ids == tok.encode(conv.template.render(conv.messages, True),
                                      add_special_tokens=False)
    assert valid == [False, True, True] and rewards == [0.0, 0.0, 1.0]
    assert info2["success"] and info2["tool_calls"] == 1
    assert "Invalid tool call: a <tool_call> block is not closed" in conv.text
    assert conv.drift is None
