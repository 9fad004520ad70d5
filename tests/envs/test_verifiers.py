"""verifiers interop (`agentrl.envs.hub.verifiers_env`): verifiers environments played as
``agentrl/Verifiers-v0`` score exactly as verifiers' own rollouts score them, and an agentrl env
wrapped as a verifiers environment runs through verifiers' own evaluation and OpenAI client.

verifiers comes with ``agentrl[all]`` (the ``verifiers`` extra); these tests import it and fail
where it is missing rather than skip.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import verifiers as vf
from datasets import Dataset

import agentrl
from agentrl.envs.hub.verifiers_env import AgentrlVerifiersEnv, ReplyClient, VerifiersEnv

ARITHMETIC = "agentrl.envs.hub.verifiers_tasks:arithmetic"
GUESS = "agentrl.envs.hub.verifiers_tasks:guess_number"


@pytest.fixture(autouse=True)
def _signal_handlers_restored() -> Iterator[None]:
    """A verifiers Environment built directly (not through agentrl/Verifiers-v0) installs its
    SIGINT/SIGTERM handlers in this process; the other tests get the handlers back."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


def scripted(replies: list[str]) -> ReplyClient:
    """A verifiers model client that answers with ``replies``, in order."""
    left = list(replies)

    async def reply(prompt: Any, state: Any) -> str:
        return left.pop(0)
    return ReplyClient(reply)


def verifiers_score(vf_env: Any, row: dict[str, Any], replies: list[str]) -> dict[str, Any]:
    """verifiers' own rollout and scoring (``Environment.run_rollout``) of ``row`` with the
    scripted ``replies``."""
    async def run() -> Any:
        return await vf_env.run_rollout(row, scripted(replies), "scripted", {})
    return asyncio.run(run())


def play(env: Any, seed: int, replies: list[str]
         ) -> tuple[str, list[tuple[str, float, bool, bool, dict[str, Any]]]]:
    obs, _ = env.reset(seed=seed)
    steps = []
    for reply in replies:
        steps.append(env.step(reply))
        if steps[-1][2] or steps[-1][3]:
            break
    return obs, steps


def _sum(question: str) -> int:
    a, b = re.findall(r"(\d+) \+ (\d+)", question)[0]
    return int(a) + int(b)


# ---------------------------------------------------------------------- verifiers -> agentrl

def test_single_turn_env_pays_its_rubrics_score() -> None:
    env = agentrl.make_env("agentrl/Verifiers-v0", environment=ARITHMETIC, choices="choices")
    vf_env = env.unwrapped.vf_env
    assert isinstance(vf_env, vf.SingleTurnEnv)
    rows = vf_env.get_dataset()
    for seed in range(6):
        obs, info = env.reset(seed=seed)
        row = dict(rows[seed])
        assert obs == info["task"] == f"Answer with the number only.\n\n{row['question']}"
        assert info["admissible_actions"] == row["info"]["choices"]
        right = str(_sum(obs))
        assert right in info["admissible_actions"]
        for reply in (right, f" {right} ", str(int(right) + 1), "seven", ""):
            _, steps = play(env, seed, [reply])
            ((last_obs, reward, terminated, truncated, end),) = steps
            expected = verifiers_score(vf_env, row, [reply])
            assert reward == end["score"] == expected["reward"], reply
            assert end["metrics"] == expected["metrics"]
            assert end["success"] is (reply.strip() == right) and reward == float(end["success"])
            assert terminated and not truncated and last_obs == ""
            assert end["stop_condition"] == "max_turns_reached" and end["action_valid"]
    env.close()


def test_multi_turn_env_plays_turn_by_turn_and_pays_its_rubrics_score() -> None:
    env = VerifiersEnv(GUESS, choices="choices", split="eval")
    rows = env.vf_env.get_eval_dataset()
    for seed in range(5):
        row = dict(rows[seed])
        target = int(row["answer"])
        wrong = [str(x) for x in range(1, 9) if x != target]
        for replies in ([str(target)], [wrong[0], str(target)], [wrong[0], "no idea", wrong[1],
                                                                 str(target)], wrong[:4]):
            obs, steps = play(env, seed, replies)
            assert obs == "I am thinking of a number from 1 to 8. Guess it."
            for reply, (o, r, term, trunc, info) in zip(replies, steps[:-1]):
                expected = ("Reply with a number from 1 to 8." if not reply[0].isdigit() else
                            "Higher." if int(reply) < target else "Lower.")
                assert (o, r, term, trunc) == (expected, 0.0, False, False)
                assert info["admissible_actions"] == [str(x) for x in range(1, 9)]
            last_obs, reward, terminated, truncated, end = steps[-1]
            expected = verifiers_score(env.vf_env, row, list(replies))
            assert reward == end["score"] == expected["reward"]
            assert end["metrics"] == expected["metrics"]
            # verifiers checks max_turns before env_response: a 4th guess is never answered
            solved = replies[-1] == str(target) and len(replies) < 4
            assert (terminated, truncated) == (solved, not solved)
            assert last_obs == ("Correct!" if solved else "")
            assert end["stop_condition"] == ("has_final_env_response" if solved else
                                             "max_turns_reached")
            assert reward == (max(0.25, 1.0 - 0.25 * (len(replies) - 1)) if solved else 0.0)
            assert end["success"] is (reward >= 0.5)
    env.close()


class CountdownEnv(vf.MultiTurnEnv):
    """Reply three times; each reply ``yes`` earns 0.5 on its turn (``add_step_reward``), and
    the rubric pays the sum plus 1 for ending on ``done``."""

    async def env_response(self, messages: Any, state: Any, **kwargs: Any) -> Any:
        reply = self.parser.parse_answer(messages) or ""
        state.add_step_reward(0.5 if reply == "yes" else 0.0)
        return [vf.UserMessage(content=f"{self.max_turns - len(state['trajectory'])} left")]


async def step_total(state: Any) -> float:
    return state.total_step_reward()


async def ends_done(completion: Any, parser: Any) -> float:
    return 1.0 if parser.parse_answer(completion) == "done" else 0.0


def countdown() -> CountdownEnv:
    return CountdownEnv(dataset=Dataset.from_list([{"question": "Count down.", "answer": ""}]),
                        rubric=vf.Rubric(funcs=[step_total, ends_done]), max_turns=3)


def test_per_turn_rewards_and_the_final_score_add_up_to_the_rubrics_score() -> None:
    vf_env = countdown()
    replies = ["yes", "no", "done"]
    score = verifiers_score(vf_env, dict(vf_env.get_dataset()[0]), replies)["reward"]
    assert score == 1.5  # 0.5 on turn 1 (the reply of turn 3 is never stepped) + 1
    turns = VerifiersEnv(vf_env, reward="turns")
    _, steps = play(turns, 0, replies)
    assert [s[1] for s in steps] == [0.5, 0.0, 1.0]
    assert [s[4].get("turn_reward") for s in steps[:2]] == [0.5, 0.0]
    final = VerifiersEnv(vf_env, reward="final")
    _, steps = play(final, 0, replies)
    assert [s[1] for s in steps] == [0.0, 0.0, 1.5]
    assert steps[-1][4]["score"] == 1.5 and steps[-1][3]  # cut by max_turns: truncated


def test_bad_input_is_refused_with_a_clear_error() -> None:
    with pytest.raises(ValueError, match="cannot be loaded"):
        VerifiersEnv("agentrl.envs.hub.verifiers_tasks:nope")
    with pytest.raises(ValueError, match="pkg.module:function"):
        VerifiersEnv("")
    with pytest.raises(TypeError, match="not a verifiers Environment"):
        VerifiersEnv("json:dumps", {"obj": 1})
    with pytest.raises(ValueError, match="split"):
        VerifiersEnv(ARITHMETIC, split="test")
    with pytest.raises(ValueError, match="reward"):
        VerifiersEnv(ARITHMETIC, reward="sum")
    with pytest.raises(ValueError, match="no eval_dataset"):
        VerifiersEnv(countdown(), split="eval")
    with pytest.raises(ValueError, match="already built"):
        VerifiersEnv(countdown(), {"x": 1})

    def relative(completions: list[Any]) -> list[float]:
        return [0.0] * len(completions)
    grouped = vf.SingleTurnEnv(dataset=Dataset.from_list([{"question": "q", "answer": "a"}]),
                               rubric=vf.Rubric(funcs=[relative]))
    with pytest.raises(ValueError, match=r"group reward functions \['relative'\]"):
        VerifiersEnv(grouped)
    env = VerifiersEnv(countdown(), choices="options")
    with pytest.raises(RuntimeError, match="before reset"):
        env.step("yes")
    with pytest.raises(ValueError, match="choices='options'"):
        env.reset(seed=0)


def test_building_keeps_the_trainers_signal_handlers_and_works_off_the_main_thread() -> None:
    """verifiers' Environment installs SIGINT/SIGTERM handlers when built (and cannot, off the
    main thread); agentrl's stay in force and thread-pool slots can build the env."""
    from agentrl.envpool import ThreadPool

    def mine(signum: int, frame: Any) -> None:
        pass
    old = signal.signal(signal.SIGTERM, mine)
    try:
        VerifiersEnv(GUESS, {"num_train": 7}, choices="choices")
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, old)
    pool = ThreadPool("agentrl/Verifiers-v0", {"environment": GUESS, "choices": "choices",
                                              "environment_kwargs": {"num_train": 9}}, 3)
    try:
        first = pool.reset([0, 1, 2], [0, 1, 2])
        assert all(r.error is None and "Guess it" in r.observation for r in first)
        out = pool.step([0, 1, 2], ["1", "8", "x"])
        assert all(r.error is None for r in out), [r.message for r in out]
        assert {r.observation for r in out} <= {"Higher.", "Lower.", "Correct!",
                                                "Reply with a number from 1 to 8."}
    finally:
        pool.close()


def test_tiny_model_trains_two_iterations_on_a_multi_turn_verifiers_env(tmp_path: Any) -> None:
    """`agentrl train env.id=agentrl/Verifiers-v0` on the guessing game (its recommended
    settings with the multi-turn env swapped in)."""
    from agentrl.config import load_config
    from agentrl.trainer import Trainer

    cfg = load_config(None, [
        "env.id=agentrl/Verifiers-v0", f"output_dir={tmp_path}", "train.iterations=2",
        "env.kwargs.environment=" + GUESS, "rollout.max_turns=4", "rollout.history=2",
        "rollout.template={history}{observation}", "algorithm.name=grpo",
        "rollout.groups=3", "rollout.group_size=4",
        "policy.tiny_corpus_episodes=20", "policy.tiny_hidden=32", "log.tensorboard=false",
        "log.progress=false", "log.trajectories_every=0", "eval.before_training=false",
        "eval.every=0", "eval.episodes=4", "train.checkpoint_every=0"])
    assert cfg.env.kwargs["choices"] == "choices" and cfg.rollout.constrained
    out = Trainer(cfg).train()
    rows = [json.loads(r) for r in open(os.path.join(out["run_dir"], "metrics.jsonl"))]
    train_rows = [r for r in rows if "train/grad_norm" in r]
    assert len(train_rows) == 2
    for r in train_rows:
        assert not any(k.startswith("rollout/termination/env_") for k in r), r
        assert r["rollout/episodes"] == 12, r
        assert r["rollout/turns"] > 1, r  # episodes went on past the first guess
    assert any(r["train/grad_norm"] > 0 for r in train_rows)


# ---------------------------------------------------------------------- agentrl -> verifiers

@contextmanager
def first_action_server() -> Iterator[str]:
    """An OpenAI-compatible chat completions server on loopback whose model replies with the
    first admissible action listed in the last message."""
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            listed = re.search(r"Admissible actions: (.*)", body["messages"][-1]["content"])
            reply = listed.group(1).split(", ")[0] if listed else "?"
            data = json.dumps({
                "id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": reply}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def test_agentrl_env_runs_as_a_verifiers_environment_through_verifiers_evaluation() -> None:
    """verifiers' own ``evaluate_sync`` with its OpenAI chat client (over HTTP, to a scripted
    server) plays the agentrl env: each episode's reward is the return of the same actions
    played on the agentrl env directly."""
    from openai import AsyncOpenAI

    kwargs = {"opponent": "random"}
    vf_env = AgentrlVerifiersEnv("agentrl/TicTacToe-v0", env_kwargs=kwargs,
                                 eval_env_kwargs={}, num_examples=2, num_eval_examples=4,
                                 max_turns=9)
    with first_action_server() as url:
        client = vf.OpenAIChatCompletionsClient(AsyncOpenAI(base_url=url, api_key="none"))
        outputs = vf_env.evaluate_sync(client=client, model="scripted", num_examples=4)["outputs"]
    assert len(outputs) == 4
    direct = agentrl.make_env("agentrl/TicTacToe-v0", **kwargs)
    for out in outputs:
        assert out["error"] is None and out["stop_condition"] == "has_final_env_response"
        obs, info = direct.reset(seed=out["info"]["seed"])
        ret, done, replies = 0.0, False, 0
        while not done:
            obs, r, term, trunc, info = direct.step(info["admissible_actions"][0])
            ret, done, replies = ret + r, term or trunc, replies + 1
        assert out["reward"] == ret and out["metrics"]["episode_return"] == ret
        assert out["metrics"]["episode_success"] == float(bool(info.get("success")))
        assert out["metrics"]["num_turns"] == replies
    assert len({o["reward"] for o in outputs}) > 1 or outputs[0]["reward"] != 0
    with pytest.raises(KeyError, match="did you mean"):
        AgentrlVerifiersEnv("agentrl/TicTacTo-v0")


def test_an_installed_environment_loads_by_its_verifiers_id(tmp_path: Any,
                                                             monkeypatch: Any) -> None:
    """``environment="my-env"``: ``vf.load_environment`` imports module ``my_env`` (what
    ``vf-install`` puts on the path) and calls its ``load_environment(**kwargs)``."""
    (tmp_path / "agentrl_vf_demo.py").write_text(
        "from agentrl.envs.hub.verifiers_tasks import arithmetic\n"
        "def load_environment(max_operand=4):\n"
        "    return arithmetic(num_train=5, num_eval=5, max_operand=max_operand)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    env = VerifiersEnv("agentrl-vf-demo", {"max_operand": 0}, choices="choices")
    obs, info = env.reset(seed=2)
    assert obs.endswith("What is 0 + 0?") and env.vf_env.env_id == "agentrl-arithmetic"
    assert env.step("0")[1] == 1.0
    with pytest.raises(ValueError, match="Could not import 'agentrl-vf-missing'"):
        VerifiersEnv("agentrl-vf-missing")
