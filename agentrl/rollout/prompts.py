"""Prompt building and action parsing, shared by rollout and evaluation.

One builder serves both context modes (`agentrl.rollout.context` decides which prompt each turn gets),
so training sees exactly the tokens the policy saw:

- ``window``: every turn is a fresh chat prompt whose user message is the template filled with
  the task, the last K (observation, action) pairs and the current observation.
- ``full``: turn 0 is the chat prompt; each later turn appends only the tokens of the next
  message (user, or tool result) as the chat template renders it there, after the exact sampled
  reply tokens (`agentrl.rollout.chat.Conversation`, which also checks the template for drift).
"""

from __future__ import annotations

import dataclasses
import json
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agentrl.config import RolloutConfig
from agentrl.rollout.chat import ChatTemplate, Conversation
from agentrl.rollout.toolcalls import (
    ToolCallParser,
    assistant_message,
    call_text,
    get_tool_parser,
)

if TYPE_CHECKING:
    from agentrl.types import Trajectory, Turn

_ACTION_RE = re.compile(r"<action>(.*?)</action>", re.S | re.I)


def parse_action(text: str, fmt: str) -> tuple[str, bool]:
    """Extract the env action from a reply. Returns (action, parsed_ok).

    ``tags``: the first ``<action>...</action>``; without one the action is invalid and the last
    30 characters are passed on (verl-agent's convention). ``raw``: the whole reply.
    """
    if fmt == "raw":
        a = text.strip()
        return a, bool(a)
    m = _ACTION_RE.search(text)
    if m is None:
        return text.strip()[-30:], False
    return m.group(1).strip(), True


def format_action(action: str, fmt: str) -> str:
    """The reply text that encodes ``action`` (used to build constrained candidates)."""
    return action if fmt == "raw" else f"<action>{action}</action>"


@dataclass
class Step:
    """One past (observation, action) pair; a `Turn` serves as well."""

    observation: str
    action: str


class PromptBuilder:
    """Turns (task, history, observation, admissible actions) into token ids.

    Full mode keeps one `agentrl.rollout.chat.Conversation` per live episode (by trajectory id): the
    stored ids plus the messages they stand for. `release` drops them when episodes end; a
    missing one (a replayed prefix) is rebuilt from the trajectory's turns.
    """

    def __init__(self, tokenizer: Any, cfg: RolloutConfig) -> None:
        self.tok, self.cfg = tokenizer, cfg
        self.parser: ToolCallParser | None = (get_tool_parser(cfg.tool_parser)
                                              if cfg.action_format == "tool_call" else None)
        self._templates: dict[str, ChatTemplate] = {}
        self._chats: dict[str, Conversation] = {}
        self._warned_drift = False
        # Encodings are pure functions of the text: the G rollouts of a group ask for the same
        # prompts and candidate actions, and rendering a chat template costs ~1 ms.
        self._memo: dict[tuple[str, str], list[int]] = {}

    def _encode(self, kind: str, text: str, fn: Any) -> list[int]:
        ids = self._memo.get((kind, text))
        if ids is None:
            if len(self._memo) >= 8192:
                self._memo.clear()
            ids = self._memo[(kind, text)] = fn(text)
        return list(ids)

    # -- text ---------------------------------------------------------------------------
    def _cut(self, text: str) -> str:
        n = self.cfg.max_observation_chars
        return text if len(text) <= n else text[:n] + " ...[truncated]"

    def user_message(self, task: str, history: Sequence[Step | Turn], observation: str,
                     actions: list[str] | None, step: int) -> str:
        """Fill the template. ``history`` (items with ``observation`` and ``action``) is already
        limited to what the prompt should show."""
        hist = "".join(
            f"[Observation {step - len(history) + i + 1}: '{self._cut(h.observation)}', "
            f"Action {step - len(history) + i + 1}: '{h.action}']\n"
            for i, h in enumerate(history))
        return self.cfg.template.format(
            task=task, history=hist, observation=self._cut(observation),
            actions=", ".join(actions) if actions else "(any)",
            last_actions=", ".join(h.action for h in history) or "none", step=step + 1)

    def _messages(self, user: str) -> list[dict[str, Any]]:
        msgs: list[dict[str, Any]] = []
        if self.cfg.system_prompt:
            msgs.append({"role": "system", "content": self.cfg.system_prompt})
        msgs.append({"role": "user", "content": user})
        return msgs

    def chat_template(self, tools: list[dict[str, Any]] | None = None) -> ChatTemplate:
        """The tokenizer's chat template with ``tools`` and ``rollout.chat_template_kwargs``."""
        key = json.dumps(tools, sort_keys=True) if tools else ""
        if key not in self._templates:
            self._templates[key] = ChatTemplate(
                self.tok, tools, self.cfg.chat_template_kwargs,
                self.parser.example if self.parser else "")
        return self._templates[key]

    def encode_chat(self, user: str, tools: list[dict[str, Any]] | None = None) -> list[int]:
        """Full prompt ids for one user message (+ system) with the generation prompt."""
        t = self.chat_template(tools)
        key = json.dumps(tools, sort_keys=True) if tools else ""
        return self._encode("chat" + key, user,
                            lambda u: t.encode(t.render(self._messages(u), True)))

    # -- window mode --------------------------------------------------------------------
    def window_prompt(self, task: str, history: Sequence[Step | Turn], observation: str,
                      actions: list[str] | None, step: int,
                      tools: list[dict[str, Any]] | None = None) -> list[int]:
        """Chat prompt of the task, the last ``rollout.history`` steps of ``history`` and the
        current observation (and the env's tools, for ``action_format=tool_call``)."""
        k = self.cfg.history
        shown = history[-k:] if k > 0 else []
        return self.encode_chat(self.user_message(task, shown, observation, actions, step), tools)

    # -- full mode ----------------------------------------------------------------------
    def full_prompt(self, traj: Trajectory, observation: str, actions: list[str] | None,
                    ) -> tuple[list[int], list[int]]:
        """(the whole context, what this turn appends) for the next turn of ``traj``.

        Turn 0: the chat prompt. Later turns: the stored ids (each reply exactly as sampled)
        extended by the template's rendering of the previous reply's closing, the new
        observation's message and the generation prompt. Template drift is recorded in
        ``traj.extra["template_drift"]`` (or raised, with ``rollout.template_drift=error``).
        """
        step = len(traj.turns)
        conv = self._chats.get(traj.trajectory_id)
        if step == 0:
            head = self.head_messages(traj, observation, actions)
            conv = Conversation(self.chat_template(traj.extra.get("tools")), head,
                                self.cfg.template_drift)
            self._chats[traj.trajectory_id] = conv
            return list(conv.ids), list(conv.ids)
        if conv is not None and conv.turn == step:  # asked twice for the same turn
            return list(conv.ids), list(conv.segments[-1].ids)
        if conv is None or conv.turn != step - 1:
            conv = self._rebuild(traj)
        prev = traj.turns[-1]
        conv.add_reply(prev.action_ids, self.reply_message(conv, prev))
        try:
            new = conv.add_observation(self.observation_messages(prev, observation, actions,
                                                                 step))
        finally:
            if conv.drift is not None and "template_drift" not in traj.extra:
                traj.extra["template_drift"] = conv.drift_record()
                if not self._warned_drift:  # once per builder; the metric counts the rest
                    self._warned_drift = True
                    warnings.warn(conv.drift.describe() + "; training on the stored tokens "
                                  "(rollout.template_drift=keep_prefix)", stacklevel=2)
        return list(conv.ids), new

    def head_messages(self, traj: Trajectory, observation: str, actions: list[str] | None,
                      ) -> list[dict[str, Any]]:
        """The opening messages (system, task + first observation), kept in
        ``traj.extra["chat_head"]`` (history restarts and prefix rebuilds start from them)."""
        head = self._messages(self.user_message(traj.task, [], observation, actions, 0))
        traj.extra["chat_head"] = head
        return head

    def reply_message(self, conv: Conversation, turn: Turn) -> dict[str, Any]:
        """The assistant message a sampled reply stands for (tool calls structured)."""
        text = conv.reply_content(turn.action_ids)
        if self.parser is None:
            return {"role": "assistant", "content": text}
        return assistant_message(text, self.parser.parse(text), f"call_{len(conv.messages)}")

    def observation_messages(self, prev: Turn, observation: str, actions: list[str] | None,
                             step: int) -> list[dict[str, Any]]:
        """The message(s) for the observation after reply ``prev``: a ``tool`` message when it
        answers a tool call, else a ``user`` message (the template, or the bare text in
        ``tool_call`` mode)."""
        obs = self._cut(observation)
        if self.parser is None:
            user = self.cfg.template.format(task="", history="", observation=obs,
                                            actions=", ".join(actions) if actions else "(any)",
                                            last_actions="", step=step + 1).strip()
            return [{"role": "user", "content": user}]
        attempted = self.parser.parse(self.tok.decode(prev.action_ids,
                                                      skip_special_tokens=True)).attempted
        return [{"role": "tool" if attempted else "user", "content": obs}]

    def _rebuild(self, traj: Trajectory) -> Conversation:
        """The conversation of ``traj``'s turns so far (its prefix was copied in, e.g. for
        branching), with their stored ids."""
        if any(t.context_reset for t in traj.turns):
            raise ValueError("cannot continue a prefix across a context restart; use "
                             "rollout.history_policy=all with branching algorithms")
        if "chat_head" not in traj.extra:
            raise ValueError("the trajectory lacks extra['chat_head'] (made by an older "
                             "agentrl?); cannot continue its conversation")
        conv = Conversation(self.chat_template(traj.extra.get("tools")),
                            traj.extra["chat_head"], "keep_prefix")
        conv.restore(traj.turns[0].context_ids)
        for k, turn in enumerate(traj.turns[:-1]):
            conv.add_reply(turn.action_ids, self.reply_message(conv, turn))
            nxt = traj.turns[k + 1]
            msgs = self.observation_messages(turn, nxt.observation,
                                             turn.info.get("admissible_actions"), k + 1)
            conv.add_stored_observation(msgs, nxt.context_ids)
        conv.drift_policy = self.cfg.template_drift
        if traj.extra.get("template_drift"):
            conv.mark_drifted()
        self._chats[traj.trajectory_id] = conv
        return conv

    def compact(self, traj: Trajectory, keep_turns: int, summary: str | None) -> list[int]:
        """Restart ``traj``'s context (history policy); returns the new whole prompt."""
        conv = self._chats[traj.trajectory_id]
        ids = conv.compact(keep_turns, summary)
        traj.extra.setdefault("context_events", []).append(
            dataclasses.asdict(conv.events[-1]))
        return ids

    def summary_request(self, traj: Trajectory) -> list[int]:
        """The context plus a request for a summary (``rollout.summary_prompt``)."""
        return self._chats[traj.trajectory_id].summary_request(self.cfg.summary_prompt)

    def release(self, trajectories: Sequence[Trajectory]) -> None:
        """Forget the conversations of finished episodes."""
        for t in trajectories:
            self._chats.pop(t.trajectory_id, None)

    # -- constrained decoding, the expert's replies ----------------------------------------
    def reply_text(self, action: str, tools: list[dict[str, Any]] | None = None) -> str:
        """The reply that writes ``action`` in the run's action format: the action itself,
        in ``<action>`` tags, or (``tool_call``, given the env's ``tools``) one call in the
        tool parser's format (`agentrl.rollout.toolcalls.call_text`)."""
        if self.parser is None:
            return format_action(action, self.cfg.action_format)
        if not tools:
            raise ValueError("rollout.action_format=tool_call writes actions as calls of the "
                             "env's tools (info['tools']); none were given")
        return call_text(self.parser, action, tools)

    def candidates(self, actions: list[str], tools: list[dict[str, Any]] | None = None
                   ) -> list[list[int]]:
        """Token sequences of the replies that write ``actions`` (`reply_text`), each ending
        with EOS: the admissible replies of constrained decoding, or the expert's reply."""
        eos = self.tok.eos_token_id

        def enc(a: str) -> list[int]:
            return self.tok.encode(self.reply_text(a, tools), add_special_tokens=False) + [eos]

        kind = "candidate" + (json.dumps(tools, sort_keys=True) if self.parser else "")
        return [self._encode(kind, a, enc) for a in actions]
