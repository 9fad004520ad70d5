"""Token-exact conversations with real chat templates (``full`` context mode).

    conv = Conversation(ChatTemplate(tokenizer, tools), [{"role": "user", "content": task}])
    prompt = conv.ids                                  # turn 0's context
    conv.add_reply(sampled_ids, {"role": "assistant", "content": reply_text})
    delta = conv.add_observation([{"role": "tool", "content": result}])   # turn 1's context

The stored ids are the truth: the first prompt as the template renders it, every reply exactly
as sampled, and after each reply the tokens of the next observation's message(s) as the
template renders them there (closing the reply, the message, the generation prompt), appended
to the stored prefix. Nothing stored is re-tokenised, so the learner scores exactly the tokens
the sampler drew in exactly the context it drew them in.

Templates do not always render a conversation as the concatenation of its turns. Qwen3 drops
the ``<think>`` block of every assistant turn before the latest user message; templates trim
whitespace, or re-serialise tool calls in their own JSON style; and text that is the same can
tokenise differently across a turn boundary. So after each observation the template's
rendering of the whole conversation is compared with the stored text and tokens. The first
place they differ is a `Drift` (turn, kind, both texts). ``rollout.template_drift`` decides:

- ``keep_prefix``: keep the stored tokens and record the drift (``Conversation.drift``). The
  policy trains on what it actually saw; the price is that a deployed model, re-rendering with
  the template, would see that turn differently.
- ``error``: raise `TemplateDriftError` naming the turn.

A sampled reply whose ids are not the tokenizer's canonical encoding of its text is not drift
(the model chose those ids; they are what it is trained on): it is counted in
``Conversation.noncanonical_replies``.

Budgets: `truncate_to_tokens` cuts an observation to a token limit; `Conversation.compact`
restarts the context from the head messages (task), an optional summary and the last K turns
when the conversation outgrows its budget, and returns the new prompt: a context reset, which
training treats as the start of a new sample, so every token is trained in the context it was
sampled in.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

DriftPolicy = Literal["keep_prefix", "error"]
_THINK = re.compile(r"<think>.*?(</think>|$)", re.S)
_TOOL_CALL = re.compile(r"<tool_call>.*?(</tool_call>|$)", re.S)


class TemplateError(ValueError):
    """The chat template could not render the conversation; the message says which part."""


class TemplateDriftError(RuntimeError):
    """The template re-renders an earlier turn differently and ``template_drift=error``."""


@dataclass
class Drift:
    """Where the template's re-rendering first departs from the stored conversation.

    Attributes:
        turn: the turn whose tokens differ (its reply, or the context before it).
        kind: ``thinking`` (a ``<think>`` block dropped or changed), ``tool_call`` (a call
            re-serialised), ``whitespace``, ``tokenization`` (same text, other ids at a turn
            boundary) or ``other``.
        where: ``reply`` (sampled tokens) or ``context`` (template-rendered tokens).
        stored / rendered: the two texts from the first difference (excerpts).
    """

    turn: int
    kind: str
    where: str
    stored: str
    rendered: str

    def describe(self) -> str:
        return (f"chat template drift at turn {self.turn} ({self.kind}, in the {self.where}): "
                f"stored {self.stored!r} but the template renders {self.rendered!r}")


@dataclass
class Segment:
    """A run of stored ids: a ``sampled`` reply, or text rendered by the template."""

    ids: list[int]
    text: str
    turn: int
    sampled: bool
    canonical: list[int] | None = None  # a reply's text as the tokenizer encodes it


class ChatTemplate:
    """A tokenizer's chat template with fixed tools and template arguments.

    Args:
        tokenizer: a Hugging Face tokenizer with ``chat_template`` set.
        tools: function schemas passed to the template (``None``: no tools).
        template_kwargs: extra template variables (e.g. ``{"enable_thinking": False}``).
    """

    def __init__(self, tokenizer: Any, tools: list[dict[str, Any]] | None = None,
                 template_kwargs: dict[str, Any] | None = None, call_example: str = "") -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise TemplateError("the tokenizer has no chat_template; set tokenizer.chat_template "
                                "or use a chat (instruct) model")
        self.tok, self.tools, self.kwargs = tokenizer, tools or None, dict(template_kwargs or {})
        eos = tokenizer.eos_token_id
        self.eos_id: int | None = None if eos is None else int(eos)
        self.eos_text = self.decode([self.eos_id]) if self.eos_id is not None else ""
        # A template without tool support (SmolLM2's) would drop the tools silently: describe
        # them in the system message instead, with the call format the parser reads.
        self.tools_note = ""
        if self.tools:
            probe = [{"role": "user", "content": "x"}]
            if self._apply(probe, self.tools, False) == self._apply(probe, None, False):
                self.tools_note = describe_tools(self.tools, call_example)

    def _apply(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
               add_generation_prompt: bool) -> str:
        try:
            return self.tok.apply_chat_template(
                messages, tools=tools, tokenize=False,
                add_generation_prompt=add_generation_prompt, **self.kwargs)
        except Exception as e:  # jinja raises TemplateError/TypeError/... from inside
            roles = ", ".join(str(m.get("role")) for m in messages)
            raise TemplateError(f"the chat template failed on messages [{roles}]: "
                                f"{type(e).__name__}: {e}") from e

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        if self.tools_note:
            if messages and messages[0].get("role") == "system":
                first = {**messages[0], "content": f"{messages[0]['content']}\n\n{self.tools_note}"}
                messages = [first, *messages[1:]]
            else:
                messages = [{"role": "system", "content": self.tools_note}, *messages]
            return self._apply(messages, None, add_generation_prompt)
        return self._apply(messages, self.tools, add_generation_prompt)

    def encode(self, text: str) -> list[int]:
        # The template writes any BOS itself; the tokenizer must not add another.
        return list(self.tok.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def suffix_after_reply(self, messages: list[dict[str, Any]], reply_ended: bool) -> str:
        """Text the template puts after an assistant reply when ``messages`` follow it: the
        rest of the reply's closing, the messages, the generation prompt.

        Used where the real conversation's rendering is no prefix extension (after drift).
        Found as the common suffix of two conversations whose last reply differs only in its
        final character, so it holds whatever the template does to earlier turns.
        """
        texts = [self.render([{"role": "user", "content": "u"},
                              {"role": "assistant", "content": f"reply {c}"}] + messages, True)
                 for c in "AB"]
        a, b = texts
        n = 0
        while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
            n += 1
        tail = a[len(a) - n:]
        if reply_ended and self.eos_text and tail.startswith(self.eos_text):
            tail = tail[len(self.eos_text):]  # the sampled EOS already closed the reply
        return tail


def describe_tools(tools: list[dict[str, Any]], call_example: str) -> str:
    """System-message text listing ``tools`` for templates that do not render them."""
    listed = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    text = f"You can call these tools (JSON schemas):\n<tools>\n{listed}\n</tools>"
    return text + (f"\nCall one as:\n{call_example}" if call_example else "")


def truncate_to_tokens(tokenizer: Any, text: str, max_tokens: int,
                       marker: str = " ...[truncated]") -> tuple[str, int]:
    """``text`` cut to its first ``max_tokens`` tokens (+ ``marker``); returns (text, tokens
    dropped). ``max_tokens <= 0`` keeps everything."""
    if max_tokens <= 0:
        return text, 0
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) <= max_tokens:
        return text, 0
    kept = tokenizer.decode(ids[:max_tokens], skip_special_tokens=False,
                            clean_up_tokenization_spaces=False)
    return kept + marker, len(ids) - max_tokens


@dataclass
class ContextEvent:
    """A restart of the context (history policy): what was dropped, what replaced it."""

    turn: int
    kind: str  # "drop" | "summary"
    dropped_turns: list[int]
    tokens_before: int
    tokens_after: int
    summary: str = ""


@dataclass
class Conversation:
    """One episode's conversation in ``full`` mode: stored ids plus the messages they stand for.

    Args:
        template: the chat template (with the env's tools).
        head: the opening messages (system, task and first observation); kept by `compact`.
        drift_policy: ``keep_prefix`` or ``error`` (see the module doc).
    """

    template: ChatTemplate
    head: list[dict[str, Any]]
    drift_policy: DriftPolicy = "keep_prefix"
    messages: list[dict[str, Any]] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    turn: int = 0
    reply_ended: bool = True
    #: the first drift found (kept after a context restart)
    drift: Drift | None = None
    noncanonical_replies: int = 0
    events: list[ContextEvent] = field(default_factory=list)
    #: turn -> index in ``messages`` of its reply (turns still in the context)
    _reply_at: dict[int, int] = field(default_factory=dict)
    #: the stored text is still what the template renders (prefix checks apply)
    _stable: bool = True
    _ids: list[int] = field(default_factory=list)
    _text: str = ""

    def __post_init__(self) -> None:
        if self.drift_policy not in ("keep_prefix", "error"):
            raise ValueError(f"template_drift must be 'keep_prefix' or 'error', got "
                             f"{self.drift_policy!r}")
        self._restart(list(self.head))

    # -- state ----------------------------------------------------------------------------
    @property
    def ids(self) -> list[int]:
        """Every stored id of the current context, in order."""
        return self._ids

    @property
    def text(self) -> str:
        return self._text

    def _append(self, seg: Segment) -> None:
        self.segments.append(seg)
        self._ids = self._ids + seg.ids
        self._text += seg.text

    def _restart(self, messages: list[dict[str, Any]]) -> list[int]:
        self.messages, self.segments, self._ids, self._text = messages, [], [], ""
        text = self.template.render(messages, True)
        self._append(Segment(self.template.encode(text), text, self.turn, False))
        self._stable, self.reply_ended = True, True
        return list(self._ids)

    # -- turns ----------------------------------------------------------------------------
    def add_reply(self, ids: list[int], message: dict[str, Any]) -> None:
        """Store the sampled ``ids`` of the current turn and the message they stand for (its
        content without the closing EOS; the template adds that)."""
        ids = list(ids)
        text = self.template.decode(ids)
        canonical = self.template.encode(text)
        if canonical != ids:
            self.noncanonical_replies += 1
        self._append(Segment(ids, text, self.turn, True, canonical))
        self._reply_at[self.turn] = len(self.messages)
        self.messages = self.messages + [message]
        self.reply_ended = bool(ids) and ids[-1] == self.template.eos_id

    def reply_content(self, ids: list[int]) -> str:
        """The text of sampled ``ids`` as message content: decoded, closing EOS removed."""
        if ids and ids[-1] == self.template.eos_id:
            ids = ids[:-1]
        return self.template.decode(list(ids))

    def add_observation(self, messages: list[dict[str, Any]]) -> list[int]:
        """Append the next observation's message(s) (``user`` or ``tool``) and the generation
        prompt; returns the appended ids (the next turn's ``context_ids``).

        Raises:
            TemplateDriftError: the template re-renders an earlier turn differently and the
                drift policy is ``error``.
        """
        stored = self._text
        self.messages = self.messages + list(messages)
        self.turn += 1
        rendered = self.template.render(self.messages, True)
        if self._stable and rendered.startswith(stored):
            delta = rendered[len(stored):]
        else:
            if self._stable:
                self._record(self._text_drift(stored, rendered))
            delta = self.template.suffix_after_reply(list(messages), self.reply_ended)
        ids = self.template.encode(delta)
        self._append(Segment(ids, delta, self.turn, False))
        if self._stable:
            self._record(self._token_drift(rendered))
        return ids

    # -- rebuilding from stored turns --------------------------------------------------------
    def restore(self, prompt_ids: list[int]) -> None:
        """Use the stored ``prompt_ids`` as the opening context (rebuilding a conversation)."""
        ids = list(prompt_ids)
        self.segments, self._ids, self._text = [], [], ""
        self._append(Segment(ids, self.template.decode(ids), self.turn, False))

    def add_stored_observation(self, messages: list[dict[str, Any]], ids: list[int]) -> None:
        """`add_observation` with the appended ids already known (no render, no checks)."""
        self.messages = self.messages + list(messages)
        self.turn += 1
        self._append(Segment(list(ids), self.template.decode(list(ids)), self.turn, False))

    def mark_drifted(self) -> None:
        """The stored tokens are known to differ from the template's rendering already."""
        self._stable = False

    # -- drift --------------------------------------------------------------------------------
    def _record(self, drift: Drift | None) -> None:
        if drift is None:
            return
        self._stable = False
        self.drift = self.drift or drift
        if self.drift_policy == "error":
            raise TemplateDriftError(drift.describe() + "; set rollout.template_drift="
                                     "keep_prefix to train on the stored tokens, or use a "
                                     "template that renders earlier turns unchanged")

    def _segment_at_char(self, pos: int) -> tuple[Segment, int]:
        """The segment holding stored character ``pos`` and the offset inside it."""
        at = 0
        for seg in self.segments:
            if at + len(seg.text) > pos:
                return seg, pos - at
            at += len(seg.text)
        return self.segments[-1], len(self.segments[-1].text)

    def _text_drift(self, stored: str, rendered: str) -> Drift:
        p = 0
        n = min(len(stored), len(rendered))
        while p < n and stored[p] == rendered[p]:
            p += 1
        seg, at = self._segment_at_char(p)
        s_rest, r_rest = stored[p:], rendered[p:]
        if any(m.start() <= at <= m.end() for m in _THINK.finditer(seg.text)):
            kind = "thinking"
        elif any(m.start() <= at <= m.end() for m in _TOOL_CALL.finditer(seg.text)):
            kind = "tool_call"
        else:
            ns, nr = re.sub(r"\s+", "", s_rest), re.sub(r"\s+", "", r_rest)
            m = min(40, len(ns), len(nr))
            kind = "whitespace" if ns[:m] == nr[:m] else "other"
        return Drift(seg.turn, kind, "reply" if seg.sampled else "context",
                     s_rest[:60], r_rest[:60])

    def _token_drift(self, rendered: str) -> Drift | None:
        """Same text: do the ids match the template's tokenisation? Replies are compared by
        their canonical encoding (a reply's own ids are the model's choice, not drift)."""
        canonical: list[int] = []
        owner: list[Segment] = []
        for seg in self.segments:
            ids = seg.canonical if seg.canonical is not None else seg.ids
            canonical += ids
            owner += [seg] * len(ids)
        full = self.template.encode(rendered)
        if full == canonical:
            return None
        j = next((i for i, (a, b) in enumerate(zip(full, canonical)) if a != b),
                 min(len(full), len(canonical)))
        seg = owner[min(j, len(owner) - 1)]
        dec = self.template.decode
        return Drift(seg.turn, "tokenization", "reply" if seg.sampled else "context",
                     f"{canonical[j:j + 4]} = {dec(canonical[j:j + 4])!r}",
                     f"{full[j:j + 4]} = {dec(full[j:j + 4])!r}")

    def drift_record(self) -> dict[str, Any] | None:
        """JSON-safe summary for ``Trajectory.extra``."""
        return None if self.drift is None else asdict(self.drift)

    # -- budgets --------------------------------------------------------------------------
    def summary_request(self, instruction: str) -> list[int]:
        """Ids of the context up to the last reply, a user message asking for a summary and the
        generation prompt (the conversation itself is not changed). The pending observation is
        left out: it stays in the restarted context word for word."""
        last = self.segments[-1]
        if last.sampled or len(self.segments) < 2 or not self._reply_at:
            raise ValueError("summary_request() needs a completed turn and a pending observation")
        base_ids = self._ids[:len(self._ids) - len(last.ids)]
        base_text = self._text[:len(self._text) - len(last.text)]
        ask = [{"role": "user", "content": instruction}]
        rendered = self.template.render(
            self.messages[:self._reply_at[max(self._reply_at)] + 1] + ask, True)
        if self._stable and rendered.startswith(base_text):
            delta = rendered[len(base_text):]
        else:
            delta = self.template.suffix_after_reply(ask, self.reply_ended)
        return base_ids + self.template.encode(delta)

    def compact(self, keep_turns: int, summary: str | None = None,
                summary_prefix: str = "Summary of the earlier turns: ") -> list[int]:
        """Restart the context as: head messages, [a user message with ``summary``], the last
        ``keep_turns`` completed turns (reply + observation) and the pending observation.

        Call between `add_observation` and the next reply. Returns the new context's ids,
        which replace (not extend) the current turn's context; the kept turns become prompt
        text there (their sampled ids were trained where they were sampled). The event is
        recorded in ``events``.
        """
        t = self.turn
        done = sorted(self._reply_at)  # completed turns still in the context
        if not done:
            raise ValueError("compact() needs a completed turn in the context")
        keep = done[len(done) - keep_turns:] if keep_turns > 0 else []
        start = self._reply_at[keep[0]] if keep else self._reply_at[done[-1]] + 1
        kept = self.messages[start:]
        msgs = list(self.head)
        if summary is not None:
            msgs.append({"role": "user", "content": summary_prefix + summary})
        shift = len(msgs) - start
        before = len(self._ids)
        dropped = [k for k in done if k not in keep]
        self._reply_at = {k: self._reply_at[k] + shift for k in keep}
        ids = self._restart(msgs + kept)
        self.events.append(ContextEvent(t, "summary" if summary is not None else "drop",
                                        dropped, before, len(ids), summary or ""))
        return ids
