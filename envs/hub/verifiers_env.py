"""verifiers environments as agentrl envs, and agentrl envs as verifiers environments.

verifiers (``pip install 'agentrl[verifiers]'``, verifiers 0.3.x) describes an RL task as an
``Environment``: a dataset of prompts, a rollout loop (``vf.SingleTurnEnv``: one reply;
``vf.MultiTurnEnv``: ``env_response`` answers each reply until a stop condition fires) and a
``vf.Rubric`` whose reward functions score the finished rollout. Its rollouts are coroutines
that ask a model client for each reply. This module uses the classic API (``import verifiers
as vf``); verifiers 0.4 removed it, so the extra pins ``<0.4``.

``agentrl/Verifiers-v0`` (`VerifiersEnv`) plays one verifiers rollout per episode, turn by
turn, through verifiers' own ``Environment.rollout``: the env's client hands each prompt to
agentrl as the observation and waits for ``step(action)`` to bring the model's reply. When the
rollout ends, the env's rubric scores it (``Rubric.score_rollout``, as verifiers does) and that
score is the episode's reward::

    agentrl train env.id=agentrl/Verifiers-v0 \\
        'env.kwargs={environment: "my_pkg.tasks:load_environment"}'

- ``environment``: ``"pkg.module:function"`` (called with ``environment_kwargs``) returning a
  verifiers ``Environment``; a verifiers env id, loaded with ``vf.load_environment`` from an
  installed environment package (``vf-install``); or, from Python, the ``Environment`` itself.
- observation: at reset the prompt's messages (system and user) as text, one paragraph each;
  after each reply the messages ``env_response`` returned; at the end the final env response,
  if any. ``info["task"]`` is the prompt's text.
- reward: ``reward="final"`` (default): 0 on every turn and the rubric's score on the last;
  ``reward="turns"``: each turn pays the reward the verifiers env recorded for that turn
  (``trajectory[i]["reward"]``, e.g. ``state.add_step_reward``) and the last pays the rest of
  the score, so an episode's return is the score in both modes.
- ``info["success"]``: score >= ``pass_threshold`` (default: the env's own, verifiers' 0.5);
  ``info["score"]``, ``info["metrics"]`` (each reward function's value) and
  ``info["stop_condition"]`` at the end. A rollout error verifiers caught (``vf.Error``) ends
  the episode as verifiers scores it, with ``info["error"]`` and ``action_valid=False``;
  anything else the env raises propagates (the env pool records ``env_error``).
- ``choices``: a key under which the verifiers env lists candidate replies (in the rollout
  state, else the row's ``info``): they become ``info["admissible_actions"]``, which
  constrained decoding picks from (what a model trained from scratch needs).
- episodes: ``reset(seed=s)`` plays row ``s % len(dataset)`` of the env's dataset
  (``split="train"``) or eval dataset (``split="eval"``).

The reply is passed as plain text content (train with ``rollout.action_format=raw``: the env's
own parser reads it); tool calls are not parsed from it, so verifiers' tool envs get no tool
calls. Rubrics with group reward functions (scored over all rollouts of one example) are
refused: an agentrl episode is scored alone.

`AgentrlVerifiersEnv` is the other direction: a ``vf.MultiTurnEnv`` whose ``env_response``
steps a registered agentrl env, for verifiers' own evaluation and trainers. `ReplyClient` is
a verifiers model client whose replies come from a Python coroutine (agentrl's turns here,
scripted replies in tests).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import json
import os
import queue
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import verifiers as vf
from verifiers.legacy.envs import environment as _vf_environment_module

from agentrl.envs.base import TextEnv
from agentrl.envs.hub.trl import show_observation

#: stop conditions that cut a rollout short rather than finish it (gymnasium's truncation)
TRUNCATIONS = frozenset({"max_turns_reached", "timeout_reached", "prompt_too_long",
                         "max_total_completion_tokens_reached"})

_LOOP_LOCK, _LOAD_LOCK = threading.Lock(), threading.Lock()
_LOOP: tuple[int, asyncio.AbstractEventLoop] | None = None
_ENVS: dict[tuple[int, str, str], Any] = {}


def event_loop() -> asyncio.AbstractEventLoop:
    """The event loop verifiers' coroutines run on: one per process, on a daemon thread (a
    fresh one in a forked child), so `VerifiersEnv` works the same from the trainer's thread,
    a thread pool or inside a caller's own running loop."""
    global _LOOP
    with _LOOP_LOCK:
        if _LOOP is None or _LOOP[0] != os.getpid():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="agentrl-verifiers",
                             daemon=True).start()
            _LOOP = (os.getpid(), loop)
        return _LOOP[1]


class _KeepSignals:
    """Stands in for the ``signal`` module inside verifiers' environment module while an
    environment is built: ``Environment.__post_init__`` installs SIGINT/SIGTERM handlers that
    tear the env down and exit (and raises outside the main thread); agentrl's trainer owns
    those signals (a checkpoint, then exit), so they are left as they are."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def signal(self, signum: int, handler: Any) -> Any:
        return self._real.getsignal(signum)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


@contextmanager
def _signals_kept() -> Iterator[None]:
    real = _vf_environment_module.signal
    _vf_environment_module.signal = _KeepSignals(real)
    try:
        yield
    finally:
        _vf_environment_module.signal = real


def load_verifiers_env(environment: Any, environment_kwargs: dict[str, Any] | None = None
                       ) -> Any:
    """The verifiers ``Environment`` that ``environment`` names: the object itself, the result
    of ``"pkg.module:function"(**environment_kwargs)``, or ``vf.load_environment(id,
    **environment_kwargs)``. Loaded once per process for the same name and kwargs (a verifiers
    env plays any number of rollouts at once); a clear error for anything else."""
    kwargs = dict(environment_kwargs or {})
    if isinstance(environment, vf.Environment):
        if kwargs:
            raise ValueError("environment_kwargs apply to an environment loaded by name; "
                             "this one is already built")
        return environment
    if not isinstance(environment, str) or not environment.strip():
        raise ValueError(f"environment={environment!r}: give 'pkg.module:function' returning a "
                         "verifiers Environment, or an installed verifiers env id")
    key = (os.getpid(), environment, json.dumps(kwargs, sort_keys=True, default=repr))
    with _LOAD_LOCK:
        if key in _ENVS:
            return _ENVS[key]
        with _signals_kept():
            env = _build(environment, kwargs)
        if not isinstance(env, vf.Environment):
            raise TypeError(f"environment={environment!r} returned {type(env).__name__}, not "
                            "a verifiers Environment")
        _ENVS[key] = env
        return env


def _build(name: str, kwargs: dict[str, Any]) -> Any:
    if ":" not in name:
        return vf.load_environment(name, **kwargs)
    mod, _, attr = name.partition(":")
    try:
        factory = getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(f"environment={name!r} cannot be loaded ({type(e).__name__}: {e}); "
                         "it must be 'pkg.module:function' importable from here") from None
    return factory(**kwargs)


def message_text(message: Any) -> str:
    """The text of one verifiers message (a pydantic message or a dict): its string content,
    or its text parts joined."""
    content = message.get("content") if isinstance(message, dict) else getattr(
        message, "content", None)
    if isinstance(content, str):
        return content
    parts = []
    for part in content or []:
        text = part.get("text") if isinstance(part, dict) else getattr(part, "text", None)
        if isinstance(text, str):
            parts.append(text)
    return "".join(parts)


def _role(message: Any) -> str:
    return str(message.get("role") if isinstance(message, dict) else
               getattr(message, "role", ""))


def render_messages(messages: list[Any]) -> str:
    """Messages as one observation: each message's text, a blank line between them."""
    return "\n\n".join(t for t in (message_text(m) for m in messages) if t)


def new_messages(messages: list[Any]) -> list[Any]:
    """The messages after the last assistant reply (all of them before the first reply)."""
    last = max((i for i, m in enumerate(messages) if _role(m) == "assistant"), default=-1)
    return list(messages[last + 1:])


class ReplyClient(vf.Client):
    """A verifiers model client whose replies come from Python: ``await reply(prompt, state)``
    (the prompt's messages and the rollout state) gives the text of each reply, returned as a
    plain assistant message, with no provider, usage or token ids behind it."""

    def __init__(self, reply: Callable[[Any, Any], Awaitable[str]]) -> None:
        super().__init__(reply)

    async def get_response(self, prompt: Any, model: str, sampling_args: Any,
                           tools: Any = None, **kwargs: Any) -> Any:
        """The reply to ``prompt`` as a ``vf.Response``."""
        text = await self.client(prompt, kwargs.get("state"))
        message = vf.types.ResponseMessage(content=text, finish_reason="stop",
                                           is_truncated=False)
        return vf.types.Response(id=uuid.uuid4().hex, created=int(time.time()), model=model,
                                 message=message)

    # what a provider client implements; this client never talks to a provider
    def setup_client(self, config: Any) -> Any:
        raise NotImplementedError

    async def to_native_tool(self, tool: Any) -> Any:
        raise NotImplementedError

    async def to_native_prompt(self, messages: Any) -> tuple[Any, dict]:
        raise NotImplementedError

    async def get_native_response(self, prompt: Any, model: str, sampling_args: Any,
                                  tools: Any = None, **kwargs: Any) -> Any:
        raise NotImplementedError

    async def raise_from_native_response(self, response: Any) -> None:
        raise NotImplementedError

    async def from_native_response(self, response: Any) -> Any:
        raise NotImplementedError

    async def close(self) -> None:
        return None


class _Episode:
    """One verifiers rollout running on `event_loop`, scored by its rubric at the end. It
    reports ``("turn", (prompt, state))`` whenever it wants a reply, then ``("done", state)``
    or ``("error", exception)``, on a queue the env's thread reads."""

    def __init__(self, vf_env: Any, row: dict[str, Any]) -> None:
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.loop = event_loop()
        self._reply: asyncio.Future | None = None
        self.future: concurrent.futures.Future = asyncio.run_coroutine_threadsafe(
            self._run(vf_env, row), self.loop)

    async def _run(self, vf_env: Any, row: dict[str, Any]) -> None:
        try:
            state = await vf_env.rollout(row, ReplyClient(self.ask), "agentrl", None)
            if vf_env.score_rollouts:
                await vf_env.rubric.score_rollout(state)
            else:
                await vf_env.rubric.dummy_score_rollout(state)
            await vf_env.rubric.cleanup(state)
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            self.events.put(("error", e))
            return
        self.events.put(("done", state))

    async def ask(self, prompt: Any, state: Any) -> str:
        self._reply = asyncio.get_running_loop().create_future()
        self.events.put(("turn", (prompt, state)))
        return await self._reply

    def reply(self, text: str) -> None:
        """Bring the model's reply to the waiting rollout."""
        fut = self._reply
        if fut is None:
            raise RuntimeError("the verifiers rollout is not waiting for a reply")
        self._reply = None
        self.loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(text))

    def next(self, timeout: float) -> tuple[str, Any]:
        """The rollout's next event; `TimeoutError` after ``timeout`` seconds."""
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"the verifiers env did not answer within {timeout} s") from None

    def cancel(self) -> None:
        """Stop the rollout where it waits (its cleanup handlers run)."""
        self.future.cancel()


class VerifiersEnv(TextEnv):
    """A verifiers environment as an agentrl text env (see the module docstring).

    Args:
        environment: ``"pkg.module:function"``, a verifiers env id, or an ``Environment``.
        environment_kwargs: keyword arguments for the function or ``vf.load_environment``.
        split: ``"train"`` (the env's dataset) or ``"eval"`` (its eval dataset).
        reward: ``"final"`` (the score on the last turn) or ``"turns"`` (the env's per-turn
            rewards, the rest of the score on the last turn).
        pass_threshold: success is score >= this (default: the env's ``pass_threshold``).
        choices: key of the candidate replies (rollout state, else the row's ``info``), given
            as ``info["admissible_actions"]``; None: free text.
        task_type: ``info["task_type"]`` (default: the env's id, else its class name).
        timeout: seconds to wait for the env after each reply (its ``env_response``, stop
            checks and, at the end, the rubric); past it the step raises `TimeoutError`.
    """

    def __init__(self, environment: Any, environment_kwargs: dict[str, Any] | None = None,
                 split: str = "train", reward: str = "final",
                 pass_threshold: float | None = None, choices: str | None = None,
                 task_type: str | None = None, timeout: float = 300.0,
                 render_mode: str | None = None) -> None:
        super().__init__(render_mode=render_mode)
        if split not in ("train", "eval"):
            raise ValueError(f"split={split!r}: 'train' (the dataset) or 'eval' (eval_dataset)")
        if reward not in ("final", "turns"):
            raise ValueError(f"reward={reward!r}: 'final' or 'turns'")
        if not timeout or float(timeout) <= 0:
            raise ValueError(f"timeout={timeout!r}: seconds, > 0")
        self.vf_env = load_verifiers_env(environment, environment_kwargs)
        rubric = self.vf_env.rubric
        if rubric.has_group_rewards:
            names = [getattr(f, "__name__", repr(f)) for f in rubric._get_reward_funcs()
                     if rubric._is_group_func(f)]
            raise ValueError(f"the verifiers env's rubric has group reward functions {names}: "
                             "they score all rollouts of an example together, and an agentrl "
                             "episode is scored alone")
        self.rows = self._dataset(split)
        if len(self.rows) == 0:
            raise ValueError(f"the verifiers env's {split} dataset is empty")
        self.split, self.reward_mode, self.choices = split, reward, choices
        self.timeout = float(timeout)
        self.pass_threshold = float(self.vf_env.pass_threshold if pass_threshold is None
                                    else pass_threshold)
        self.task_type = task_type or self.vf_env.env_id or type(self.vf_env).__name__
        self._episode: _Episode | None = None
        self._task, self._given = "", 0.0

    def _dataset(self, split: str) -> Any:
        try:
            if split == "train":
                return self.vf_env.get_dataset()
            if self.vf_env.build_eval_dataset() is None:
                raise ValueError("eval_dataset is not set")
            return self.vf_env.get_eval_dataset()
        except ValueError as e:
            raise ValueError(f"split={split!r}: the verifiers env has no "
                             f"{'dataset' if split == 'train' else 'eval_dataset'} ({e})"
                             ) from None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        self._end()
        index = (int(seed) if seed is not None else
                 int(self.np_random.integers(len(self.rows)))) % len(self.rows)
        row = dict(self.rows[index])
        self._episode = _Episode(self.vf_env, row)
        kind, payload = self._episode.next(self.timeout)
        if kind != "turn":
            self._episode = None
            why = (f"{type(payload).__name__}: {payload}" if kind == "error" else
                   f"stop condition {payload.get('stop_condition')!r}, "
                   f"error {payload.get('error')!r}")
            raise RuntimeError(f"the verifiers env ended example {index} before the first "
                               f"reply ({why})")
        prompt, state = payload
        self._task, self._given = render_messages(prompt), 0.0
        self._last_obs = self._task
        info = {"task": self._task, "task_type": self.task_type, "action_valid": True,
                "example_id": row.get("example_id", index)}
        return self._task, self._with_choices(info, state)

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self._episode is None:
            raise RuntimeError("step() before reset(), or after the episode ended")
        self._episode.reply(str(action))
        kind, payload = self._episode.next(self.timeout)
        if kind == "error":
            self._episode = None
            raise payload
        info: dict[str, Any] = {"task": self._task, "task_type": self.task_type,
                                "action_valid": True}
        if kind == "turn":
            prompt, state = payload
            turn_reward = state["trajectory"][-1].get("reward")
            reward = 0.0
            if turn_reward is not None:
                info["turn_reward"] = float(turn_reward)
                if self.reward_mode == "turns":
                    reward = float(turn_reward)
            self._given += reward
            self._last_obs = render_messages(new_messages(prompt))
            return self._last_obs, reward, False, False, self._with_choices(info, state)
        self._episode = None
        return self._finish(payload, info)

    def _finish(self, state: Any, info: dict[str, Any]
                ) -> tuple[str, float, bool, bool, dict[str, Any]]:
        score = float(state.get("reward") or 0.0)
        stop = state.get("stop_condition")
        info.update(success=score >= self.pass_threshold, score=score, stop_condition=stop,
                    metrics={k: float(v) for k, v in (state.get("metrics") or {}).items()})
        if state.get("error") is not None:
            info.update(error=repr(state["error"]), action_valid=False)
        final = state.get("final_env_response")
        self._last_obs = render_messages(final) if final else ""
        reward = score - self._given if self.reward_mode == "turns" else score
        # a single-turn env ends on its turn limit (one reply): that is its end, not a cut
        truncated = stop in TRUNCATIONS and not isinstance(self.vf_env, vf.SingleTurnEnv)
        return self._last_obs, reward, not truncated, truncated, info

    def _with_choices(self, info: dict[str, Any], state: Any) -> dict[str, Any]:
        if self.choices is None:
            return info
        found = state.get(self.choices)
        if found is None:
            row_info = state.get("info")
            found = row_info.get(self.choices) if isinstance(row_info, dict) else None
        if not isinstance(found, (list, tuple)) or not found:
            raise ValueError(f"choices={self.choices!r}: the verifiers env lists no candidate "
                             "replies under that key (in the rollout state or the row's info)")
        info["admissible_actions"] = [str(c) for c in found]
        return info

    def _end(self) -> None:
        if self._episode is not None:
            self._episode.cancel()
            self._episode = None

    def close(self) -> None:
        self._end()
        super().close()


# ------------------------------------------------------- agentrl envs as verifiers environments

async def episode_return(state: Any) -> float:
    """The agentrl episode's return: the sum of its step rewards."""
    return float(state.total_step_reward())


async def episode_success(state: Any) -> float:
    """1.0 when the agentrl env reported ``info["success"]`` at the episode's end."""
    return 1.0 if state.get("agentrl_success") else 0.0


class AgentrlVerifiersEnv(vf.MultiTurnEnv):
    """A registered agentrl env as a verifiers environment (classic ``vf.MultiTurnEnv``).

    Each dataset row is one episode seed: the prompt is the env's reset observation (with its
    admissible actions, where it lists them), each reply is one ``env.step(reply)``, and
    ``env_response`` returns the next observation until the episode ends (that last one is the
    final env response). Every step's reward is recorded on its turn (``add_step_reward``);
    the rubric's reward is the episode's return, and ``episode_success`` (weight 0) is
    ``info["success"]``. The agentrl env is built per rollout and closed by a cleanup handler.

    Args:
        env_id: a registered agentrl env id.
        env_kwargs: its constructor kwargs for the dataset's episodes.
        eval_env_kwargs: kwargs laid over ``env_kwargs`` for the eval dataset (a held-out
            split, as ``env.eval_kwargs`` in agentrl's configs); None: no eval dataset.
        num_examples: train episodes, seeds ``0..num_examples-1``.
        num_eval_examples: eval episodes, seeds ``0..num_eval_examples-1``.
        kwargs: passed to ``vf.MultiTurnEnv`` (``max_turns``, ``system_prompt``, ...).
    """

    def __init__(self, env_id: str, env_kwargs: dict[str, Any] | None = None,
                 eval_env_kwargs: dict[str, Any] | None = None, num_examples: int = 100,
                 num_eval_examples: int = 50, **kwargs: Any) -> None:
        from agentrl.registry import check_env_id, missing_requirement

        check_env_id(env_id)
        missing = missing_requirement(env_id)
        if missing:
            raise ImportError(missing)
        if num_examples < 1:
            raise ValueError(f"num_examples={num_examples}: at least 1 episode")
        self.agentrl_env_id = env_id
        self.agentrl_kwargs = {"train": dict(env_kwargs or {})}
        if eval_env_kwargs is not None:
            self.agentrl_kwargs["eval"] = {**self.agentrl_kwargs["train"], **eval_env_kwargs}
        evals = (lambda: self._episodes("eval", num_eval_examples)) if (
            eval_env_kwargs is not None and num_eval_examples > 0) else None
        rubric = vf.Rubric(funcs=[episode_return, episode_success], weights=[1.0, 0.0])
        super().__init__(dataset=lambda: self._episodes("train", num_examples),
                         eval_dataset=evals, rubric=rubric,
                         env_id=kwargs.pop("env_id", env_id), **kwargs)

    def _make(self, split: str) -> Any:
        from agentrl.registry import make_env

        return make_env(self.agentrl_env_id, **self.agentrl_kwargs[split])

    def _episodes(self, split: str, n: int) -> Any:
        """The dataset: one row per seed, its prompt the reset observation."""
        from datasets import Dataset

        env, rows = self._make(split), []
        try:
            for seed in range(n):
                obs, info = env.reset(seed=seed)
                rows.append({"question": show_observation(obs, info), "answer": "",
                             "info": {"seed": seed, "split": split}})
        finally:
            env.close()
        return Dataset.from_list(rows)

    async def setup_state(self, state: vf.State) -> vf.State:
        """Build this rollout's agentrl env and reset it to the row's seed."""
        row = state["info"]
        env = await asyncio.to_thread(self._make, row["split"])
        state["agentrl_env"] = env
        obs, info = await asyncio.to_thread(env.reset, seed=int(row["seed"]))
        state["agentrl_info"], state["agentrl_success"] = info, False
        return state

    async def env_response(self, messages: vf.Messages, state: vf.State, **kwargs: Any
                           ) -> vf.Messages:
        """One agentrl step with the last reply; the episode's end is the final response."""
        action = self.parser.parse_answer(messages) or ""
        env = state["agentrl_env"]
        obs, reward, terminated, truncated, info = await asyncio.to_thread(env.step, action)
        state.add_step_reward(float(reward))
        state["agentrl_info"] = info
        if terminated or truncated:
            state["agentrl_success"] = bool(info.get("success"))
            done = [vf.UserMessage(content=obs or "The episode is over.")]
            state["final_env_response"] = done
            return done
        return [vf.UserMessage(content=show_observation(obs, info))]

    @vf.cleanup
    async def close_agentrl_env(self, state: vf.State) -> None:
        """Close the rollout's agentrl env."""
        env = state.pop("agentrl_env", None)
        if env is not None:
            await asyncio.to_thread(env.close)
