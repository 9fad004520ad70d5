"""Environment hub interop: agentrl envs served over OpenEnv's protocol and driven by OpenEnv's
own client, agentrl training on an OpenEnv server by URL, and server failures through the env
pool."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

import agentrl
from agentrl.envpool import InProcessPool
from agentrl.envs.hub.openenv import ServerProcess
from agentrl.registry import ENVS, load_builtin_envs
from agentrl.serve import build_app
from agentrl.types import from_wire, to_wire

load_builtin_envs()


def _pick(info: dict[str, Any], k: int) -> str:
    """A fixed action per turn: an admissible one where listed (every 4th turn an invalid
    one, so invalid steps are compared too), else a fixed string."""
    adm = info.get("admissible_actions") or []
    if not adm or k % 4 == 3:
        return f"no such action {k}"
    return adm[(k * 7 + 3) % len(adm)]


def _generic_client(url: str) -> Any:
    from openenv.core.generic_client import GenericEnvClient

    return GenericEnvClient(base_url=url).sync()


def _same_episodes(env_id: str, kwargs: dict[str, Any], seeds: list[int], turns: int) -> None:
    """The env in process, the same env served and driven by OpenEnv's GenericEnvClient, and
    agentrl's OpenEnv-v0 client env on a second session of the same server, step for step."""
    local = agentrl.make_env(env_id, **kwargs)
    with ServerProcess(env_id, kwargs) as server, _generic_client(server.url) as client:
        remote = agentrl.make_env("agentrl/OpenEnv-v0", url=server.url)
        try:
            for seed in seeds:
                obs, info = local.reset(seed=seed)
                r = client.reset(seed=seed)
                assert r.observation["text"] == obs
                assert from_wire(r.observation["info"]) == info
                assert r.reward is None and r.done is False
                assert remote.reset(seed=seed) == (obs, info)
                for k in range(turns):
                    action = _pick(info, k)
                    step = local.step(action)
                    obs, reward, terminated, truncated, info = step
                    r = client.step({"message": action})
                    assert r.observation["text"] == obs
                    assert r.reward == reward
                    assert r.done == (terminated or truncated)
                    assert (r.observation["terminated"], r.observation["truncated"]) == (
                        terminated, truncated)
                    assert from_wire(r.observation["info"]) == info
                    assert remote.step(action) == step
                    if terminated or truncated:
                        assert isinstance(info["success"], bool)
                        break
            state = client.state()
            assert state["env_id"] == env_id and state["seed"] == seeds[-1]
        finally:
            remote.close()
            local.close()


def test_served_tictactoe_both_seats_matches_in_process() -> None:
    # no opponent: the caller plays both seats (info["agent"] says whose move), a whole game
    _same_episodes("agentrl/TicTacToe-v0", {}, seeds=[0, 5], turns=12)


def test_served_webshop_matches_in_process() -> None:
    _same_episodes("agentrl/WebShop-v0", ENVS["agentrl/WebShop-v0"].test_kwargs,
                   seeds=[0, 3], turns=6)


def test_served_alfworld_matches_in_process() -> None:
    _same_episodes("agentrl/ALFWorld-v0", ENVS["agentrl/ALFWorld-v0"].test_kwargs,
                   seeds=[0, 1], turns=5)


@pytest.mark.java
def test_served_scienceworld_matches_in_process() -> None:
    _same_episodes("agentrl/ScienceWorld-v0", ENVS["agentrl/ScienceWorld-v0"].test_kwargs,
                   seeds=[0], turns=5)


def test_wire_format_round_trips_info_values() -> None:
    import numpy as np

    info = {"state_key": ("room", 3, ("a", None)), "rewards": {"p1": 1.0}, "n": np.int64(4),
            "x": np.float32(0.5), "mask": np.array([1, 0]), "tags": {"b", "a"}}
    back = from_wire(json.loads(json.dumps(to_wire(info))))
    assert back["state_key"] == ("room", 3, ("a", None)) and hash(back["state_key"])
    assert back["rewards"] == {"p1": 1.0} and back["n"] == 4 and back["x"] == 0.5
    assert back["mask"] == [1, 0] and back["tags"] == ["a", "b"]


def _native_openenv_app() -> Any:
    """A guessing game written against OpenEnv's own server classes (not agentrl's): guess a
    number 0-3 drawn from the reset seed; legal guesses in the observation, success in its
    metadata."""
    import random

    from openenv.core.env_server import create_app
    from openenv.core.env_server.interfaces import Environment
    from openenv.core.env_server.types import Action, Observation, State

    class GuessAction(Action):
        guess: str

    class GuessObservation(Observation):
        prompt: str = ""
        legal_actions: list[str] = []

    class GuessEnv(Environment):
        SUPPORTS_CONCURRENT_SESSIONS = True

        def __init__(self) -> None:
            super().__init__()
            self._state, self.secret = State(), 0

        def reset(self, seed: int | None = None, episode_id: str | None = None,
                  **kwargs: Any) -> GuessObservation:
            self.secret = random.Random(seed).randrange(4)
            self._state = State(episode_id=episode_id, step_count=0)
            return GuessObservation(prompt="Guess 0-3.", legal_actions=list("0123"))

        def step(self, action: GuessAction, timeout_s: float | None = None,
                 **kwargs: Any) -> GuessObservation:
            self._state.step_count += 1
            won = action.guess == str(self.secret)
            done = won or self._state.step_count >= 2
            return GuessObservation(prompt="right" if won else "wrong", done=done,
                                    reward=1.0 if won else 0.0, legal_actions=list("0123"),
                                    metadata={"success": won} if done else {})

        @property
        def state(self) -> State:
            return self._state

    return create_app(GuessEnv, GuessAction, GuessObservation, env_name="guess",
                      max_concurrent_envs=4)


def test_openenv_client_env_drives_a_native_openenv_server() -> None:
    """agentrl/OpenEnv-v0 on a server built with OpenEnv's create_app: its text field, action
    field and the info keys it sends (legal actions, success) come through."""
    import random

    with _thread_server(_native_openenv_app()) as url:
        env = agentrl.make_env("agentrl/OpenEnv-v0", url=url, action_field="guess",
                               text_field="prompt", task_type="guess")
        try:
            for seed in (1, 2):
                secret = str(random.Random(seed).randrange(4))
                obs, info = env.reset(seed=seed)
                assert obs == "Guess 0-3." and info["legal_actions"] == list("0123")
                assert info["task_type"] == "guess"
                obs, r, term, trunc, info = env.step(secret)
                assert (obs, r, term, trunc, info["success"]) == ("right", 1.0, True, False, True)
                env.reset(seed=seed)
                wrong = next(g for g in "0123" if g != secret)
                assert env.step(wrong)[1:3] == (0.0, False)
                obs, r, term, _, info = env.step(wrong)
                assert (obs, r, term, info["success"], info["action_valid"]) == (
                    "wrong", 0.0, True, False, True)
            assert env.unwrapped.state()["step_count"] == 2
        finally:
            env.close()


# ------------------------------------------------------------------------ protocol details

def test_server_routes_and_protocol_errors() -> None:
    from fastapi.testclient import TestClient

    app = build_app("agentrl/TicTacToe-v0", {"opponent": "random"}, max_sessions=1)
    with TestClient(app) as http:
        assert http.get("/health").json() == {"status": "healthy"}
        schema = http.get("/schema").json()
        assert schema["action"]["required"] == ["message"]
        assert set(schema) == {"action", "observation", "state"}
        assert http.get("/metadata").json()["name"] == "agentrl/TicTacToe-v0"
        # HTTP is stateless, as in OpenEnv: each request gets a fresh env
        a = http.post("/reset", json={"seed": 4}).json()
        assert a == http.post("/reset", json={"seed": 4}).json()
        assert a["reward"] is None and a["done"] is False
        s = http.post("/step", json={"seed": 4, "action": {"message": "5"}}).json()
        assert s["observation"]["info"]["action_valid"] is True
        assert http.post("/step", json={"action": {"move": "5"}}).status_code == 422
        assert http.post("/reset", json={"seed": -1}).status_code == 422
        assert http.get("/state").json()["step_count"] == 0
        with http.websocket_connect("/ws") as ws:
            ws.send_text(json.dumps({"type": "step", "data": {"message": "5"}}))
            assert ws.receive_json()["data"]["code"] == "EXECUTION_ERROR"  # step before reset
            ws.send_text("{not json")
            assert ws.receive_json()["data"]["code"] == "INVALID_JSON"
            ws.send_text(json.dumps({"type": "jump"}))
            assert ws.receive_json()["data"]["code"] == "UNKNOWN_TYPE"
            ws.send_text(json.dumps({"type": "reset", "data": {"seed": 4}}))
            assert ws.receive_json()["data"] == a
            ws.send_text(json.dumps({"type": "step", "data": {"message": 5}}))
            assert ws.receive_json()["data"]["code"] == "VALIDATION_ERROR"
            # a second session while the only one is taken: refused
            with http.websocket_connect("/ws") as other:
                err = other.receive_json()
                assert err["type"] == "error" and err["data"]["code"] == "CAPACITY_REACHED"
            ws.send_text(json.dumps({"type": "step", "data": {"message": "totally invalid"}}))
            out = ws.receive_json()["data"]
            assert out["observation"]["info"]["action_valid"] is False  # an ordinary step
            ws.send_text(json.dumps({"type": "state"}))
            assert ws.receive_json()["data"]["step_count"] == 1
            ws.send_text(json.dumps({"type": "close"}))


def test_bad_input_gives_one_line() -> None:
    from agentrl.cli import main

    with pytest.raises(ValueError, match="http://HOST:PORT"):
        agentrl.make_env("agentrl/OpenEnv-v0", url="localhost")
    with pytest.raises(ValueError, match="exactly one of url"):
        agentrl.make_env("agentrl/OpenEnv-v0", url="http://127.0.0.1:1", serve="x")
    env = agentrl.make_env("agentrl/OpenEnv-v0", url=f"http://127.0.0.1:{_free_port()}",
                           connect_timeout=2)
    with pytest.raises(ConnectionError, match="cannot reach the OpenEnv server") as e:
        env.reset(seed=0)
    assert "\n" not in str(e.value)
    assert main(["serve", "agentrl/TicTacToe-v0", "colour=red"]) == 2
    with pytest.raises(RuntimeError, match="did not start"):
        ServerProcess("agentrl/NoSuchEnv-v0")


def test_serve_prints_a_clear_error(capsys: Any) -> None:
    from agentrl.cli import main

    assert main(["serve", "agentrl/TicTacToe-v9"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "did you mean 'agentrl/TicTacToe-v0'" in err


# ------------------------------------------------------------------------ failures

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_killed_server_ends_episodes_as_env_error_and_the_next_episode_reconnects() -> None:
    kwargs = {"opponent": "random"}
    server = ServerProcess("agentrl/TicTacToe-v0", kwargs)
    pool = InProcessPool("agentrl/OpenEnv-v0", {"url": server.url}, 2)
    try:
        first = pool.reset([0, 1], [0, 1])
        assert all(r.error is None for r in first)
        moves = [r.info["admissible_actions"][0] for r in first]
        assert all(r.error is None for r in pool.step([0, 1], moves))
        server.kill()  # mid-episode
        lost = pool.step([0, 1], ["5", "5"])
        assert [r.error for r in lost] == ["env_error", "env_error"]
        assert all(r.terminated and "lost the OpenEnv server" in r.message for r in lost)
        down = pool.reset([0], [0])[0]
        assert down.error == "env_error" and "cannot reach" in down.message
        server = ServerProcess("agentrl/TicTacToe-v0", kwargs, port=server.port)  # back
        again = pool.reset([0, 1], [0, 1])
        assert [r.error for r in again] == [None, None]
        assert [r.observation for r in again] == [r.observation for r in first]
        assert all(r.error is None for r in pool.step([0, 1], moves))
        assert pool.stats["env_error"] == 3
    finally:
        pool.close()
        server.stop()


def test_a_local_server_takes_every_slot_of_a_big_pool() -> None:
    """serve= starts one server for all the envs of this process: more sessions than
    `agentrl serve`'s default --max-sessions (64) at once."""
    from agentrl.serve import MAX_SESSIONS

    n = MAX_SESSIONS + 6
    pool = InProcessPool("agentrl/OpenEnv-v0", {"serve": "agentrl/TicTacToe-v0",
                                                "serve_kwargs": {"opponent": "random"}}, n)
    try:
        out = pool.reset(list(range(n)), list(range(n)))
        assert [r.error for r in out] == [None] * n
    finally:
        pool.close()


@contextmanager
def _thread_server(app: Any) -> Iterator[str]:
    """A FastAPI app served from a thread of this process (envs registered by the tests,
    OpenEnv's own servers)."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    server = uvicorn.Server(uvicorn.Config(app, log_level="error"))
    t = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        t.join(10)
        sock.close()


def test_a_hung_server_step_times_out_as_env_error() -> None:
    kwargs = {"hang_on": "go west", "hang_seconds": 3.0}
    with _thread_server(build_app("test/Corridor-v0", kwargs)) as url:
        pool = InProcessPool("agentrl/OpenEnv-v0", {"url": url, "timeout": 0.5}, 1)
        try:
            pool.reset([0], [0])
            t0 = time.perf_counter()
            hung = pool.step([0], ["go west"])[0]
            assert time.perf_counter() - t0 < 2.5
            assert hung.error == "env_error" and "did not answer a step within 0.5s" in hung.message
            time.sleep(3.0)  # the server finishes the hung step; a new episode goes through
            r = pool.reset([0], [0])[0]
            assert r.error is None and r.observation == "You are in room 0."
            ok = pool.step([0], ["go east"])[0]
            assert ok.error is None and ok.info["state_key"] == "room1"
        finally:
            pool.close()


# ------------------------------------------------------------------------ training

def test_tiny_model_trains_two_iterations_on_a_served_env(tmp_path: Any) -> None:
    """`agentrl train env.id=agentrl/OpenEnv-v0`: the quickstart's task (TextWorld coin
    collector) through a local OpenEnv server, with its recommended settings."""
    import os

    from agentrl.config import load_config
    from agentrl.trainer import Trainer

    cfg = load_config(None, [
        "env.id=agentrl/OpenEnv-v0", f"output_dir={tmp_path}", "train.iterations=2",
        "rollout.groups=4", "rollout.group_size=4", "policy.tiny_corpus_episodes=40",
        "log.tensorboard=false",
        "log.progress=false", "log.trajectories_every=0", "eval.before_training=false",
        "eval.every=0", "eval.episodes=2", "train.checkpoint_every=0", "policy.tiny_hidden=32",
        "env.kwargs.serve_kwargs={level: 3, split: train, num_games: 4}", "env.train_seeds=4"])
    assert cfg.env.kwargs["serve"] == "agentrl/TextWorld-CoinCollector-v0"
    out = Trainer(cfg).train()
    rows = [json.loads(r) for r in open(os.path.join(out["run_dir"], "metrics.jsonl"))]
    train_rows = [r for r in rows if "train/grad_norm" in r]
    assert len(train_rows) == 2
    for r in train_rows:  # every episode went through the server, none lost to it
        assert not any(k.startswith("rollout/termination/env_") for k in r), r
        assert r["rollout/episodes"] == 16, r
    assert any(r["train/grad_norm"] > 0 for r in train_rows)


# ------------------------------------------------------------------------ TRL

def test_trl_environment_plays_an_agentrl_env_through_trls_interface() -> None:
    """What GRPOTrainer(environment_factory=...) does with the class (TRL 1.16): build
    instances, take every public method but reset/get_reward as a tool (its JSON schema from
    transformers' get_json_schema), reset with the dataset row, call tools, get_reward."""
    import inspect

    from transformers.utils import get_json_schema

    from agentrl.envs.hub.trl import trl_environment

    factory = trl_environment("agentrl/TicTacToe-v0", opponent="random")
    env = factory()
    tools = [n for n, _ in inspect.getmembers(type(env), predicate=inspect.isfunction)
             if n not in ("reset", "get_reward") and not n.startswith("_")]
    assert tools == ["act"]
    schema = get_json_schema(env.act)["function"]
    assert schema["name"] == "act" and schema["parameters"]["required"] == ["action"]
    assert type(env).__name__ == "TicTacToeTRLEnv"

    local = agentrl.make_env("agentrl/TicTacToe-v0", opponent="random")
    for seed in (3, 4):
        prompt = env.reset(prompt=[{"role": "user", "content": "play"}], seed=seed)
        obs, info = local.reset(seed=seed)
        assert obs in prompt and "Admissible actions: " + ", ".join(info["admissible_actions"]) \
            in prompt
        total, done = 0.0, False
        while not done:
            move = info["admissible_actions"][0]
            obs, r, term, trunc, info = local.step(move)
            total, done = total + r, term or trunc
            out = env.act(move)
            assert out.startswith(obs)
        assert out.endswith("succeeded." if info["success"] else "ended.")
        assert env.act("1") == "The episode is over."
        assert env.get_reward() == total
    with pytest.raises(KeyError, match="did you mean"):
        trl_environment("agentrl/TicTacToe-v9")


def test_trl_grpo_trainer_trains_on_an_agentrl_env_through_environment_factory(tmp_path) -> None:
    """GRPOTrainer(environment_factory=trl_environment(...)) end to end on CPU: a tiny model,
    first taught the one reply that calls ``act("take coin")`` in `with_tool_calling`'s format,
    rolls out coin collector (level 1) through TRL's tool loop and takes an optimizer step;
    the act calls reach the env and the rewards TRL logs are the env's returns."""
    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from agentrl.envs.hub.trl import TOOL_CHAT_TEMPLATE, trl_environment, with_tool_calling
    from agentrl.models import build_tiny_model, build_tiny_tokenizer

    base = trl_environment("agentrl/TextWorld-CoinCollector-v0", level=1)
    calls: list[tuple[str, str]] = []
    rewards: list[float] = []

    class CoinEnv(base):  # type: ignore[misc, valid-type]
        def act(self, action: str) -> str:
            out = super().act(action)
            calls.append((action, out))
            return out

        def get_reward(self) -> float:
            rewards.append(super().get_reward())
            return rewards[-1]

    CoinEnv.act.__doc__ = base.act.__doc__
    env = CoinEnv()
    user = [{"role": "user", "content": "Take the coin.\n"}]
    first = user[0]["content"] + env.reset(seed=0)
    reply = '<tool_call>\n{"name": "act", "arguments": {"action": "take coin"}}\n</tool_call>'
    tok = build_tiny_tokenizer([first, reply, TOOL_CHAT_TEMPLATE], vocab_size=400,
                               specials=["<|pad|>", "<|im_start|>", "<|im_end|>"],
                               eos="<|im_end|>", chat_template=TOOL_CHAT_TEMPLATE)
    tok = with_tool_calling(tok)
    prompt = tok.apply_chat_template([{"role": "user", "content": first}], tools=[env.act],
                                     add_generation_prompt=True, return_dict=False)
    target = tok.encode(reply + "<|im_end|>", add_special_tokens=False)
    model = build_tiny_model(len(tok), seed=0, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id)
    ids = torch.tensor([prompt + target])
    labels = ids.clone()
    labels[0, :len(prompt)] = -100
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):  # the reply, memorised
        opt.zero_grad()
        model(input_ids=ids, labels=labels).loss.backward()
        opt.step()

    data = Dataset.from_dict({"prompt": [user, user], "seed": [0, 1]})
    config = GRPOConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2,
                        num_generations=2, max_completion_length=128,
                        max_tool_calling_iterations=1, use_cpu=True, bf16=False,
                        report_to="none", logging_steps=1, save_strategy="no",
                        disable_tqdm=True)
    trainer = GRPOTrainer(model=model, processing_class=tok, args=config, train_dataset=data,
                          environment_factory=CoinEnv)
    trainer.train()
    assert trainer.state.global_step == 1
    assert calls and all(action == "take coin" for action, _ in calls), calls
    assert all(out.endswith("The episode succeeded.") for _, out in calls), calls
    logged = next(r for r in trainer.state.log_history if "rewards/CoinEnv/mean" in r)
    assert rewards and logged["rewards/CoinEnv/mean"] == pytest.approx(sum(rewards) / len(rewards))
    assert logged["tools/call_frequency"] > 0 and sum(rewards) == len(calls)
