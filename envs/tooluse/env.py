"""`agentrl/ToolUse-v0`: answer questions with real tools, one tool call per step.

Actions (one per step): ``search[query]`` (BM25 over the knowledge-base documents),
``calculate[expression]`` (safe arithmetic), ``python[code]`` (sandboxed interpreter, see
`sandbox`), ``answer[text]`` (ends the episode). Any other string is an invalid step
(``action_valid=False``, nothing happens). Tool results come back as the observation; the
trainer never trains on observation tokens.

With ``rollout.action_format=tool_call`` the same actions are native tool calls: the reset
info lists them as JSON-schema tools (``info["tools"]``), and ``instructions=False`` leaves the
bracket syntax out of the first observation.

Reward: ``correct_reward`` (1) for an answer that matches exactly after normalisation, else
``wrong_reward`` (0); ``info["tool_calls"]`` counts search/calculate/python calls (AEPO's call
limit, SPEAR's tool-call reward). ``max_tool_calls`` refuses calls beyond a budget.

``state_key`` is the question plus the latest observation. It is history-free, as turn-level
grouping (GiGPO's anchor states) needs: two trajectories that just received the same tool result
for the same question share a key, whatever they did before. Including everything seen so far
would make the key a function of the history and almost never shared; the price is that
trajectories that know different earlier facts can share a key.

Splits: ``train`` and ``test`` use different generated worlds (``kb_seed`` and ``kb_seed + 1``),
so test questions are about entities never seen in training.
"""

from __future__ import annotations

import functools
import random
import re
import time
from collections.abc import Sequence
from typing import Any

from agentrl.envs.base import TextEnv
from agentrl.envs.tooluse.kb import (
    KnowledgeBase,
    Task,
    answers_match,
    make_arithmetic,
    make_multihop,
)
from agentrl.envs.tooluse.sandbox import check_sandbox, run_python
from agentrl.envs.tooluse.tools import (
    BM25Search,
    CalculatorError,
    Document,
    calculate,
    format_number,
)

TASK_TYPES = ("multihop", "arithmetic")
TOOLS = ("search", "calculate", "python")
# Greedy body: python code may contain brackets, the call ends at the last "]".
_ACTION = re.compile(r"^\s*(search|calculate|python|answer)\s*\[(.*)\]\s*$", re.S | re.I)
HELP = ("Use exactly one of: search[query], calculate[expression], python[code], "
        "answer[text].")
# The same actions as function tools (``rollout.action_format=tool_call``): a call
# ``name(param=value)`` is the action ``name[value]``.
_PARAMS = {"search": ("query", "Search the knowledge base; returns the best-matching documents."),
           "calculate": ("expression", "Evaluate an arithmetic expression (+ - * / ** and "
                         "parentheses, sqrt, log, ...)."),
           "python": ("code", "Run Python code (standard library) in a sandbox; print the "
                      "result."),
           "answer": ("text", "Give your final answer; ends the episode.")}


def tool_schemas() -> list[dict[str, Any]]:
    """The env's actions as JSON-schema function tools (``info["tools"]`` at reset)."""
    return [{"type": "function", "function": {
        "name": name, "description": desc,
        "parameters": {"type": "object", "properties": {param: {"type": "string"}},
                       "required": [param]}}}
        for name, (param, desc) in _PARAMS.items()]


INSTRUCTIONS = ("Tools: search[query] searches a knowledge base; calculate[expression] "
                "evaluates arithmetic; python[code] runs Python (standard library, print the "
                "result); answer[text] gives your final answer and ends the episode.")


@functools.lru_cache(maxsize=8)
def _world(kb_seed: int, kb_size: int, top_k: int) -> tuple[KnowledgeBase, BM25Search]:
    # Immutable once built, so envs in one process share it.
    kb = KnowledgeBase(kb_seed, kb_size)
    return kb, BM25Search(kb.documents(), top_k=top_k)


class ToolUseEnv(TextEnv):
    """Multi-hop questions over a generated knowledge base and arithmetic word problems.

    Args:
        task_types: which of ``multihop``/``arithmetic`` to draw (uniformly) per episode.
        split: ``train`` or ``test`` (a different generated world).
        kb_seed: seed of the training world; ``kb_size`` scales its entity count (~80 each).
        top_k: search results returned per query.
        max_steps: steps before truncation (invalid steps count).
        max_tool_calls: tool-call budget per episode (None: unlimited).
        correct_reward, wrong_reward: reward for a right / wrong answer.
        python_timeout, python_cpu_seconds, python_memory_mb: sandbox limits.

    Raises:
        SandboxUnavailable: this machine's kernel cannot build the python tool's sandbox.
        max_output: characters of tool output shown.
        max_action_chars: longer actions are invalid steps (the tools never see them).
        instructions: prepend the tool list to the first observation.
        action_choices: list candidate actions in ``info["admissible_actions"]``, for agents
            that choose rather than write tool calls (constrained decoding, small models):
            a search for each entity the question or the last search result names, an answer
            for each value the last tool call returned, and calculations (the question's
            expression and its variants with the last operator changed, or differences of the
            years found so far).
            Every other well-formed call stays valid.
        tool_latency: seconds each tool call waits before it answers, as a remote search API
            or code runner would (``time.sleep``: the process waits, no CPU). For envs that
            wait, ``env.pool=thread`` steps many episodes at once.
    """

    def __init__(self, task_types: Sequence[str] = TASK_TYPES, split: str = "train",
                 kb_seed: int = 0, kb_size: int = 1, top_k: int = 3, max_steps: int = 10,
                 max_tool_calls: int | None = None, correct_reward: float = 1.0,
                 wrong_reward: float = 0.0, python_timeout: float = 5.0,
                 python_cpu_seconds: int = 3, python_memory_mb: int = 256,
                 max_output: int = 1500, max_action_chars: int = 8000, instructions: bool = True,
                 action_choices: bool = False, tool_latency: float = 0.0,
                 render_mode: str | None = None) -> None:
        super().__init__(render_mode)
        if tool_latency < 0:
            raise ValueError(f"tool_latency must be >= 0 seconds, got {tool_latency!r}")
        self.tool_latency = float(tool_latency)
        bad = [t for t in task_types if t not in TASK_TYPES]
        if bad or not task_types:
            raise ValueError(f"task_types must be a non-empty subset of {TASK_TYPES}, got "
                             f"{list(task_types)!r}")
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        # Fail closed at construction: python[...] never runs outside the kernel boundary.
        check_sandbox()
        self.task_types, self.split = tuple(task_types), split
        self.kb, self.search = _world(kb_seed + (split == "test"), kb_size, top_k)
        self.max_steps, self.max_tool_calls = max_steps, max_tool_calls
        self.correct_reward, self.wrong_reward = float(correct_reward), float(wrong_reward)
        self.python_limits = {"timeout": python_timeout, "cpu_seconds": python_cpu_seconds,
                              "memory_mb": python_memory_mb, "max_output": max_output}
        self.max_output, self.max_action_chars = max_output, max_action_chars
        self.instructions = instructions
        self.action_choices = action_choices
        self._returned: list[str] = []  # values the last tool call returned (action_choices)
        self._years: list[str] = []  # years found so far in this episode (action_choices)
        self._hits: list[Document] = []  # the last search's documents
        self._question_choices: frozenset[str] | None = None  # `_choices` of the question
        self.task: Task | None = None
        self._steps = self._tool_calls = 0
        self._last = ""
        self._done, self._success = True, False

    # -- tasks ----------------------------------------------------------------------------
    def task_for_seed(self, seed: int, task_type: str | None = None) -> Task:
        """The task ``reset(seed)`` poses (a pure function of split, seed and world)."""
        rng = random.Random(f"tooluse-{self.split}-{seed}")
        kind = task_type or self.task_types[rng.randrange(len(self.task_types))]
        return make_multihop(self.kb, rng) if kind == "multihop" else make_arithmetic(rng)

    def _info(self, action_valid: bool) -> dict[str, Any]:
        assert self.task is not None
        info: dict[str, Any] = {
            "task_type": self.task.task_type, "task": self.task.question,
            "template": self.task.template, "tool_calls": self._tool_calls,
            "action_valid": action_valid, "success": self._success,
            "state_key": f"{self.task.question}\n{self._last}",
        }
        if self._done:
            info["answer"] = self.task.answer  # revealed only once the episode is over
        elif self.action_choices:
            info["admissible_actions"] = self._choices()
        return info

    def _choices(self) -> list[str]:
        """Candidate calls (``action_choices``): they name what the agent has seen, never
        which one is right."""
        assert self.task is not None
        if self._question_choices is None:  # what the question offers: the same all episode
            q = self.task.question
            fixed = {f"search[{name}]" for name in self.kb.by_name if name in q}
            if self.task.expression and self.task.task_type == "arithmetic":
                fixed |= {f"calculate[{e}]" for e in _operator_variants(self.task.expression)}
            self._question_choices = frozenset(fixed)
        # A name is one line, so it is in "question\nlast" iff it is in one of the two.
        out = self._question_choices | {f"search[{name}]" for name in self.kb.by_name
                                        if name in self._last}
        out |= {f"answer[{v}]" for v in self._returned}
        if self.task.expression:
            out |= {f"calculate[{a} - {b}]" for a in self._years for b in self._years if a != b}
        return sorted(out)

    def _note_returned(self, tool: str, arg: str, obs: str) -> None:
        """Remember what a tool call returned, as ``action_choices`` offers it."""
        if tool == "calculate":
            self._returned = [obs.rsplit(" = ", 1)[1]] if " = " in obs else []
            return
        if tool != "search":
            self._returned = []
            return
        # the documents this search returned (`_run_tool`), not a second BM25 query
        facts = [(a, v) for d in self._hits for a, v in self.kb.by_name[d.title].attrs.items()]
        self._returned = sorted({format_number(v) for _, v in facts})
        years = [str(v) for a, v in facts if a in ("founded", "birth_year")]
        self._years = list(dict.fromkeys(self._years + years))[-3:]

    # -- tools ----------------------------------------------------------------------------
    def _run_tool(self, tool: str, arg: str) -> str:
        if tool == "search":
            self._hits = self.search.search(arg)  # kept for `_note_returned`
            return self.search.format(arg, self._hits)[: self.max_output]
        if tool == "calculate":
            try:
                return f"{arg.strip()} = {format_number(calculate(arg))}"
            except CalculatorError as e:
                return f"Calculator error: {e}"
        return run_python(arg, **self.python_limits).observation()

    # -- gymnasium API --------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        if seed is None:
            seed = int(self.np_random.integers(0, 2**31))
        task_type = (options or {}).get("task_type")
        if task_type is not None and task_type not in TASK_TYPES:
            raise ValueError(f"task_type must be one of {TASK_TYPES}, got {task_type!r}")
        self.task = self.task_for_seed(seed, task_type)
        self._steps = self._tool_calls = 0
        self._last, self._done, self._success = "", False, False
        self._returned, self._years, self._question_choices = [], [], None
        obs = f"Question: {self.task.question}"
        if self.instructions:
            obs = f"{obs}\n{INSTRUCTIONS}"
        self._last_obs = obs
        return obs, {**self._info(True), "tools": tool_schemas()}

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self.task is None or self._done:
            return ("The episode is over; call reset().", 0.0, True, False,
                    {"action_valid": False, "success": self._success,
                     "task_type": self.task.task_type if self.task else "",
                     "tool_calls": self._tool_calls})
        self._steps += 1
        text = str(action)
        m = _ACTION.match(text) if len(text) <= self.max_action_chars else None
        reward, terminated, valid = 0.0, False, m is not None
        if m is None:
            obs = (f"Invalid action (longer than {self.max_action_chars} characters). {HELP}"
                   if len(text) > self.max_action_chars else f"Invalid action. {HELP}")
        else:
            tool, arg = m.group(1).lower(), m.group(2)
            if not arg.strip():
                obs, valid = f"{tool}[...] needs an argument. {HELP}", False
            elif tool == "answer":
                self._success = answers_match(arg, self.task.answer)
                reward = self.correct_reward if self._success else self.wrong_reward
                terminated = True
                obs = "Your answer is correct." if self._success else "Your answer is incorrect."
            elif self.max_tool_calls is not None and self._tool_calls >= self.max_tool_calls:
                obs, valid = (f"Tool call limit ({self.max_tool_calls}) reached; give your "
                              f"answer with answer[text]."), False
            else:
                self._tool_calls += 1
                if self.tool_latency:  # a remote API's round trip: waiting, no CPU
                    time.sleep(self.tool_latency)
                obs = self._run_tool(tool, arg)
                if self.action_choices:
                    self._note_returned(tool, arg, obs)
        truncated = not terminated and self._steps >= self.max_steps
        self._done = terminated or truncated
        self._last = obs
        self._last_obs = obs
        return obs, reward, terminated, truncated, self._info(valid)


class ToolUseExpert:
    """The reference solution of the episode's task, through the tools: a search for each
    entity on the question's chain of relations (multihop), the task's calculation when it
    has one, then the answer. It reads the task (privileged), never the tool outputs."""

    reset_options: dict[str, Any] = {}

    def __init__(self, env: ToolUseEnv, info: dict[str, Any]) -> None:
        task = env.task
        assert task is not None
        plan: list[str] = []
        for start, chain in task.hops:
            entity: Any = start
            plan.append(f"search[{entity}]")
            for attr in chain[:-1]:  # every value but the last is another entity
                entity = env.kb.by_name[entity].attrs[attr]
                plan.append(f"search[{entity}]")
        if task.expression:
            plan.append(f"calculate[{task.expression}]")
        self.plan = list(dict.fromkeys(plan)) + [f"answer[{task.answer}]"]
        self.turn = 0

    def act(self, info: dict[str, Any]) -> str | None:
        action = self.plan[self.turn] if self.turn < len(self.plan) else None
        self.turn += 1
        return action


def _operator_variants(expression: str) -> list[str]:
    """``expression`` and the versions of it with its last operator replaced by each other
    one (``"3 * 4 + 1"`` -> ``3 * 4 + 1``, ``3 * 4 - 1``, ``3 * 4 * 1``, ``3 * 4 / 1``)."""
    parts = expression.split(" ")
    ops = [i for i, p in enumerate(parts) if p in ("+", "-", "*", "/")]
    if not ops:
        return [expression]
    i = ops[-1]
    return [expression] + [" ".join(parts[:i] + [op] + parts[i + 1:])
                           for op in ("+", "-", "*", "/") if op != parts[i]]
