"""Native tool calls: the env's actions as JSON-schema tools, the model's calls parsed back.

    parser = get_tool_parser("hermes")
    reply = parser.parse('<tool_call>\\n{"name": "calculate", "arguments": {"expression": "2+3"}}'
                         '\\n</tool_call>')
    action, error = call_to_action(reply, tools)       # "calculate[2+3]", None

An env that supports ``rollout.action_format=tool_call`` lists its actions in ``info["tools"]``
at reset: OpenAI-style function schemas (``{"type": "function", "function": {"name",
"description", "parameters"}}``), each with exactly one parameter. The call ``name(p=value)``
is the env action ``name[value]`` — the bracket syntax ToolUse and WebShop already accept — so
the env needs no second action parser. The schemas go to the chat template (``tools=``), the
template's own tool-call format is parsed back by the parser named in ``rollout.tool_parser``,
and each tool result returns as a ``tool`` message.

A reply that is not exactly one well-formed call of a known tool (no call, malformed JSON, a
call cut off by the token limit, several calls, an unknown tool, wrong arguments) is an invalid
action whose observation says what was wrong and how to call a tool; it never raises.

The way back, an env action written as a call (`action_to_call`, the parser's ``format``), is
how the env's expert plays in ``tool_call`` runs (`agentrl collect`): its replies are the calls
the model is to learn, in the parser's format, and parse back to the same actions.

Parsers are pluggable: `agentrl.register_tool_parser` adds one for another template's format.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Protocol

from agentrl.registry import tool_parser_factory


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any]


@dataclass
class ParsedReply:
    """What a parser found in one reply.

    Attributes:
        content: the reply's text outside the tool-call markup (thinking included).
        calls: the well-formed calls, in order.
        error: why the reply is not exactly one well-formed call (``None`` when it is).
        attempted: the reply contained tool-call markup (answered with a ``tool`` message).
        well_formed: every piece of markup parsed (errors, if any, are only about the number
            of calls); the calls then go to the template as structured ``tool_calls``.
    """

    content: str
    calls: list[ToolCall] = field(default_factory=list)
    error: str | None = None
    attempted: bool = False
    well_formed: bool = True


class ToolCallParser(Protocol):
    #: how a call looks, for error observations
    example: str

    def parse(self, text: str) -> ParsedReply:
        """Find the tool calls in a decoded reply; never raises."""
        ...

    # Optional: ``format(call) -> str``, the reply text of one call (what `parse` reads back).
    # The built-in parsers have it; an env's expert plays ``tool_call`` runs through it.


def _call_from_json(obj: Any, args_key: str) -> tuple[ToolCall | None, str | None]:
    """A `ToolCall` from a decoded JSON value, or why it is not one."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None, 'a tool call must be a JSON object with a "name" string'
    args = obj.get(args_key, obj.get("arguments", {}))
    if isinstance(args, str):  # OpenAI style: arguments as a JSON string
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as e:
            return None, f'the "{args_key}" string of {obj["name"]!r} is not valid JSON ({e.msg})'
    if not isinstance(args, dict):
        return None, f'"{args_key}" of {obj["name"]!r} must be a JSON object'
    return ToolCall(obj["name"], args), None


def _json_error(body: str, e: json.JSONDecodeError) -> str:
    return f"not valid JSON ({e.msg} at character {e.pos} of {body[:80]!r})"


class HermesParser:
    """Hermes / Qwen2.5 / Qwen3 format: ``<tool_call>{"name": .., "arguments": {..}}</tool_call>``,
    one block per call, anywhere in the reply (after a ``<think>`` block, say)."""

    open_tag, close_tag = "<tool_call>", "</tool_call>"
    example = '<tool_call>\n{"name": "<tool>", "arguments": {"<parameter>": "<value>"}}\n</tool_call>'
    _BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>", re.S)

    def parse(self, text: str) -> ParsedReply:
        calls: list[ToolCall] = []
        errors: list[str] = []
        last = 0
        for m in self._BLOCK.finditer(text):
            last = m.end()
            body = m.group(1).strip()
            try:
                obj = json.loads(body)
            except json.JSONDecodeError as e:
                errors.append(_json_error(body, e))
                continue
            call, err = _call_from_json(obj, "arguments")
            if err:
                errors.append(err)
            else:
                calls.append(call)  # type: ignore[arg-type]
        tail = text[last:]
        if self.open_tag in tail:
            errors.append(f"a {self.open_tag} block is not closed with {self.close_tag} "
                          "(the reply was cut off?)")
        content = self._BLOCK.sub("", text)
        cut = content.find(self.open_tag)
        content = (content[:cut] if cut >= 0 else content).strip()
        attempted = self.open_tag in text
        return ParsedReply(content, calls, _one_call_error(calls, errors, self.example),
                           attempted, not errors)

    def format(self, call: ToolCall) -> str:
        """One call as Qwen2.5's template writes it."""
        body = json.dumps({"name": call.name, "arguments": call.arguments}, ensure_ascii=False)
        return f"{self.open_tag}\n{body}\n{self.close_tag}"


class JSONParser:
    """Llama-3.1 style: the whole reply is one JSON object ``{"name": .., "parameters": {..}}``
    (``arguments`` accepted too)."""

    example = '{"name": "<tool>", "parameters": {"<parameter>": "<value>"}}'

    def parse(self, text: str) -> ParsedReply:
        body = text.strip()
        if not body.startswith("{"):
            return ParsedReply(body, [], _one_call_error([], [], self.example), False)
        try:
            obj = json.loads(body)
        except json.JSONDecodeError as e:
            return ParsedReply("", [], _json_error(body, e), True, False)
        call, err = _call_from_json(obj, "parameters")
        calls = [call] if call else []
        return ParsedReply("", calls, err, True, err is None)  # type: ignore[list-item]

    def format(self, call: ToolCall) -> str:
        return json.dumps({"name": call.name, "parameters": call.arguments}, ensure_ascii=False)


def _one_call_error(calls: list[ToolCall], errors: list[str], example: str) -> str | None:
    if errors:
        return "; ".join(errors)
    if not calls:
        return f"no tool call found; call one tool as {example}"
    if len(calls) > 1:
        return (f"{len(calls)} tool calls in one reply ({', '.join(c.name for c in calls)}); "
                "make exactly one call per turn")
    return None


def get_tool_parser(name: str) -> ToolCallParser:
    """A new parser of the kind registered as ``name`` (`agentrl.registry.TOOL_PARSERS`)."""
    return tool_parser_factory(name)()


# ------------------------------------------------------------------------- tools <-> actions

def check_tools(tools: Any) -> None:
    """Raise ValueError unless ``tools`` is a list of function schemas with one parameter each
    (what `call_to_action` maps to ``name[value]``)."""
    if not isinstance(tools, list) or not tools:
        raise ValueError("info['tools'] must be a non-empty list of function schemas")
    for t in tools:
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(fn, dict) or t.get("type") != "function" or not fn.get("name"):
            raise ValueError(f"tool {t!r}: expected {{'type': 'function', 'function': "
                             "{'name': ..., 'description': ..., 'parameters': ...}}")
        props = (fn.get("parameters") or {}).get("properties")
        if not isinstance(props, dict) or len(props) != 1:
            raise ValueError(f"tool {fn['name']!r}: needs exactly one parameter (the text "
                             f"inside {fn['name']}[...])")
    json.dumps(tools)  # must reach the template (and worker pipes) as plain JSON


def tool_names(tools: list[dict[str, Any]]) -> list[str]:
    return [t["function"]["name"] for t in tools]


def call_to_action(reply: ParsedReply, tools: list[dict[str, Any]]) -> tuple[str, str | None]:
    """The env action (``name[value]``) for a reply's single call, or ``("", why not)``."""
    if reply.error:
        return "", reply.error
    call = reply.calls[0]
    spec = {t["function"]["name"]: t["function"] for t in tools}
    if call.name not in spec:
        return "", f"unknown tool {call.name!r}; the tools are {', '.join(spec)}"
    (param,) = spec[call.name]["parameters"]["properties"]
    extra = sorted(set(call.arguments) - {param})
    if param not in call.arguments or extra:
        got = ", ".join(sorted(call.arguments)) or "none"
        return "", f"{call.name} takes one argument {param!r} (got: {got})"
    value = call.arguments[param]
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return f"{call.name}[{text}]", None


_BRACKET = re.compile(r"^\s*([^\[\s]+)\s*\[(.*)\]\s*$", re.S)


def action_to_call(action: str, tools: list[dict[str, Any]]) -> ToolCall:
    """The call that `call_to_action` maps to ``action`` (``name[value]``, a tool of
    ``tools``): ``name(param=value)``, the value as a string.

    Raises:
        ValueError: ``action`` is not ``name[value]`` of one of ``tools``.
    """
    m = _BRACKET.match(action)
    spec = {t["function"]["name"]: t["function"] for t in tools}
    if m is None or m.group(1) not in spec:
        raise ValueError(f"action {action!r} is not a call of one of the tools "
                         f"({', '.join(spec)}) written as name[value]")
    (param,) = spec[m.group(1)]["parameters"]["properties"]
    return ToolCall(m.group(1), {param: m.group(2)})


def call_text(parser: ToolCallParser, action: str, tools: list[dict[str, Any]]) -> str:
    """The reply that writes env ``action`` as one call in ``parser``'s format; parsed back
    (`call_to_action`), it gives ``action`` again.

    Raises:
        ValueError: the parser cannot write calls (no ``format``), or ``action`` is no call of
            ``tools`` (`action_to_call`).
    """
    fmt = getattr(parser, "format", None)
    if fmt is None:
        raise ValueError(f"the tool parser {type(parser).__name__} cannot write calls (it has "
                         "no format(call) method), so the env's expert cannot play in "
                         "rollout.action_format=tool_call runs with it")
    return fmt(action_to_call(action, tools))


def assistant_message(reply_text: str, parsed: ParsedReply, call_id: str) -> dict[str, Any]:
    """The chat message for a reply: text content plus structured calls for the template."""
    if not (parsed.calls and parsed.well_formed):
        # No call, or broken markup: the template shows the reply verbatim, as it was sampled.
        return {"role": "assistant", "content": reply_text}
    return {"role": "assistant", "content": parsed.content,
            "tool_calls": [{"id": f"{call_id}_{i}", "type": "function",
                            "function": {"name": c.name, "arguments": c.arguments}}
                           for i, c in enumerate(parsed.calls)]}


def invalid_call_text(error: str, example: str) -> str:
    """The observation for a reply that was not one valid call."""
    return f"Invalid tool call: {error}. Call exactly one tool, as {example}"


def corpus_writer(tool_parser: str) -> Any:
    """The `agentrl.models.CallWriter` of ``rollout.tool_parser``: what a tiny model's
    tokenizer corpus holds of tool calls (`agentrl.models.env_corpus`)."""
    from agentrl.models import tiny_tools_text

    parser = get_tool_parser(tool_parser)

    def write(action: str | None, tools: list[dict[str, Any]]) -> str:
        if action is None:
            return f"{tiny_tools_text(tools)}{parser.example}"
        try:
            return call_text(parser, action, tools)
        except ValueError:
            return ""

    return write
