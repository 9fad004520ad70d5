"""Prompt building and action parsing, shared by rollout and evaluation.

One builder serves both context modes (`agentrl.context` decides which prompt each turn gets),
so training sees exactly the tokens the policy saw:

- ``window``: every turn is a fresh chat prompt whose user message is the template filled with
  the task, the last K (observation, action) pairs and the current observation.
- ``full``: turn 0 is the chat prompt; each later turn appends only the tokens of the next user
  message (the chat template's separator + observation + generation prompt) after the exact
  sampled reply tokens.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agentrl.config import RolloutConfig

if TYPE_CHECKING:
    from agentrl.types import Turn

_ACTION_RE = re.compile(r"<action>(.*?)</action>", re.S | re.I)
_MARK = "\x00REPLY\x00"


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
    """Turns (task, history, observation, admissible actions) into token ids."""

    def __init__(self, tokenizer: Any, cfg: RolloutConfig) -> None:
        self.tok, self.cfg = tokenizer, cfg
        self._sep_cache: tuple[str, str] | None = None
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

    def _messages(self, user: str) -> list[dict[str, str]]:
        msgs = []
        if self.cfg.system_prompt:
            msgs.append({"role": "system", "content": self.cfg.system_prompt})
        msgs.append({"role": "user", "content": user})
        return msgs

    def encode_chat(self, user: str) -> list[int]:
        """Full prompt ids for one user message (+ system) with the generation prompt."""
        def render(u: str) -> list[int]:
            text = self.tok.apply_chat_template(self._messages(u), tokenize=False,
                                                add_generation_prompt=True)
            return self.tok.encode(text, add_special_tokens=False)

        return self._encode("chat", user, render)

    # -- window mode --------------------------------------------------------------------
    def window_prompt(self, task: str, history: Sequence[Step | Turn], observation: str,
                      actions: list[str] | None, step: int) -> list[int]:
        """Chat prompt of the task, the last ``rollout.history`` steps of ``history`` and the
        current observation."""
        k = self.cfg.history
        shown = history[-k:] if k > 0 else []
        return self.encode_chat(self.user_message(task, shown, observation, actions, step))

    # -- full mode ----------------------------------------------------------------------
    def _separators(self) -> tuple[str, str]:
        """(text between a reply's EOS and the next user content, text after that content)."""
        if self._sep_cache is None:
            msgs = self._messages("U") + [{"role": "assistant", "content": _MARK},
                                          {"role": "user", "content": "\x01"}]
            text = self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            after = text.split(_MARK, 1)[1]
            eos_text = self.tok.eos_token or ""
            if eos_text and after.startswith(eos_text):
                after = after[len(eos_text):]
            before_user, after_user = after.split("\x01", 1)
            self._sep_cache = (before_user, after_user)
        return self._sep_cache

    def continuation(self, observation: str, actions: list[str] | None, step: int,
                     last_reply_ended: bool) -> list[int]:
        """Tokens appended after a reply in full mode: [EOS if the reply was cut] + the next user
        message + the generation prompt."""
        pre, post = self._separators()
        user = self.cfg.template.format(task="", history="", observation=self._cut(observation),
                                        actions=", ".join(actions) if actions else "(any)",
                                        last_actions="", step=step + 1).strip()
        ids = [] if last_reply_ended else [self.tok.eos_token_id]
        return ids + self.tok.encode(pre + user + post, add_special_tokens=False)

    # -- constrained decoding -----------------------------------------------------------
    def candidates(self, actions: list[str]) -> list[list[int]]:
        """Token sequences of the admissible replies, each ending with EOS."""
        eos = self.tok.eos_token_id

        def enc(a: str) -> list[int]:
            return self.tok.encode(format_action(a, self.cfg.action_format),
                                   add_special_tokens=False) + [eos]

        return [self._encode("candidate", a, enc) for a in actions]
