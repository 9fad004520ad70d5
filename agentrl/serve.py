"""Serve any registered agentrl env as an OpenEnv environment server.

``agentrl serve ENV_ID [key=value ...] --port 8000`` puts one env id behind OpenEnv's wire
protocol, so any trainer that speaks OpenEnv (TRL, SkyRL, torchforge, ART, OpenEnv's own
``GenericEnvClient``) can drive agentrl's envs, multi-agent games included:

- ``/ws`` (WebSocket): one session per connection, each with its own env instance, built at
  the session's first reset. Messages are OpenEnv's: ``{"type": "reset", "data": {"seed": 7,
  "episode_id": "...", "options": {...}}}``, ``{"type": "step", "data": {"message": "go
  east"}}``, ``{"type": "state"}``, ``{"type": "close"}``; answers ``{"type": "observation",
  "data": {...}}``, ``{"type": "state", "data": {...}}`` or ``{"type": "error", "data":
  {"message": ..., "code": ...}}`` with OpenEnv's error codes.
- ``/reset``, ``/step``, ``/state`` (HTTP POST/POST/GET): stateless, as in OpenEnv: each
  request gets a fresh env that is closed afterwards (``/step`` acts on an env freshly reset
  with the request's ``seed``). Episodes go over ``/ws``.
- ``/health``, ``/schema``, ``/metadata``.

An observation payload is OpenEnv's ``{"observation": {...}, "reward": r, "done": d}``; the
observation carries ``text`` (the env's observation string), ``info`` (the env's info dict:
``admissible_actions``, ``success``, ``agent``... ; tuples are sent as ``{"__tuple__":
[...]}`` so ``state_key`` comes back hashable), ``terminated`` and ``truncated``. The reward
at reset is ``None``, as OpenEnv servers send it.

An env that raises ends its session's episode with an ``EXECUTION_ERROR`` answer and is
rebuilt at the next reset, as the env pool does with a failing env.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations
# (WebSocket, Body) at definition time, and they are imported inside `build_app`.
import asyncio
import concurrent.futures
import json
import socket
import sys
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

from agentrl.types import to_wire

#: Default cap on concurrent WebSocket sessions (each holds one env).
MAX_SESSIONS = 64


def observation_payload(obs: str, reward: float | None, terminated: bool, truncated: bool,
                        info: dict[str, Any]) -> dict[str, Any]:
    """One reset or step result in OpenEnv's wire format."""
    return {"observation": {"text": obs, "info": to_wire(info), "terminated": bool(terminated),
                            "truncated": bool(truncated), "metadata": {}},
            "reward": None if reward is None else float(reward),
            "done": bool(terminated or truncated)}


# ------------------------------------------------------------------------------ sessions

class RequestError(ValueError):
    """A message the server cannot act on; ``code`` is OpenEnv's `WSErrorCode` value."""

    def __init__(self, message: str, code: str = "VALIDATION_ERROR") -> None:
        super().__init__(message)
        self.code = code


def parse_action(data: Any) -> str:
    """The action string of a step's data: ``{"message": str, "metadata": {...}}`` (OpenEnv's
    text-action shape); anything else is a `RequestError`."""
    if not isinstance(data, dict):
        raise RequestError("step data must be an object like {\"message\": \"go east\"}")
    extra = sorted(set(data) - {"message", "metadata"})
    if extra:
        raise RequestError(f"unknown action field(s) {extra}: an action is "
                           "{\"message\": str, \"metadata\": {}}")
    if not isinstance(data.get("message"), str):
        raise RequestError("the action needs a str field 'message' (the action text)")
    return data["message"]


def _reset_args(data: Any) -> tuple[int | None, dict[str, Any] | None, str | None]:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RequestError("reset data must be an object like {\"seed\": 0}")
    seed = data.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise RequestError(f"seed must be a non-negative integer, got {seed!r}")
    options = data.get("options")
    if options is not None and not isinstance(options, dict):
        raise RequestError("options must be an object")
    episode_id = data.get("episode_id")
    return seed, options, None if episode_id is None else str(episode_id)


@dataclass
class Session:
    """One client's env: built at its first reset, stepped in the session's own thread (so
    an env never sees two threads), dropped when it raises."""

    env_id: str
    env_kwargs: dict[str, Any]
    env: Any = None
    episode_id: str | None = None
    seed: int | None = None
    step_count: int = 0
    started: bool = False
    executor: concurrent.futures.ThreadPoolExecutor = field(
        default_factory=lambda: concurrent.futures.ThreadPoolExecutor(1, "agentrl-serve"))

    def reset(self, data: Any) -> dict[str, Any]:
        seed, options, episode_id = _reset_args(data)
        from agentrl.registry import make_env

        try:
            if self.env is None:
                self.env = make_env(self.env_id, **self.env_kwargs)
            obs, info = self.env.reset(seed=seed, options=options)
        except Exception:
            self.drop()
            raise
        self.seed, self.step_count, self.started = seed, 0, True
        self.episode_id = episode_id or uuid.uuid4().hex
        return observation_payload(obs, None, False, False, info)

    def step(self, data: Any) -> dict[str, Any]:
        action = parse_action(data)
        if not self.started or self.env is None:
            raise RequestError("step before reset: send {\"type\": \"reset\"} first",
                               "EXECUTION_ERROR")
        try:
            obs, reward, terminated, truncated, info = self.env.step(action)
        except Exception:
            self.drop()
            raise
        self.step_count += 1
        return observation_payload(obs, reward, terminated, truncated, info)

    def state(self) -> dict[str, Any]:
        return {"episode_id": self.episode_id, "step_count": self.step_count,
                "env_id": self.env_id, "seed": self.seed}

    def drop(self) -> None:
        env, self.env, self.started = self.env, None, False
        if env is not None:
            try:
                env.close()
            except Exception:
                pass  # a failing env's close() must not take the server down with it

    async def call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def close(self) -> None:
        self.executor.submit(self.drop)
        self.executor.shutdown(wait=False)


# ------------------------------------------------------------------------------ the app

def _error(message: str, code: str) -> dict[str, Any]:
    return {"type": "error", "data": {"message": message, "code": code}}


def _why(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"[:500]


def build_app(env_id: str, env_kwargs: dict[str, Any] | None = None,
              max_sessions: int = MAX_SESSIONS) -> Any:
    """The FastAPI app serving ``env_id`` (made with ``env_kwargs``) over OpenEnv's routes.

    Raises:
        ImportError: the ``hub`` extra (fastapi, uvicorn) is not installed.
    """
    try:
        from fastapi import FastAPI, WebSocket, WebSocketDisconnect
    except ImportError as e:
        raise ImportError("agentrl serve needs fastapi and uvicorn: "
                          "pip install 'agentrl[hub]'") from e
    from agentrl.registry import ENVS

    kwargs = dict(env_kwargs or {})
    entry = ENVS.get(env_id)
    description = entry.description if entry else env_id
    app = FastAPI(title=f"agentrl: {env_id}", description=description)
    sessions: set[int] = set()
    lock = threading.Lock()

    _add_http_routes(app, env_id, kwargs, description)

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        with lock:
            full = len(sessions) >= max_sessions
            if not full:
                sessions.add(id(websocket))
        if full:
            await websocket.send_text(json.dumps(
                _error(f"server at capacity ({max_sessions} sessions; agentrl serve "
                       "--max-sessions raises it)", "CAPACITY_REACHED")))
            await websocket.close()
            return
        session = Session(env_id, kwargs)
        try:
            while True:
                reply = await _answer(session, await websocket.receive_text())
                if reply is None:  # the client closed the session
                    break
                await websocket.send_text(json.dumps(reply))
        except WebSocketDisconnect:
            pass
        finally:
            session.close()
            with lock:
                sessions.discard(id(websocket))
            try:
                await websocket.close()
            except RuntimeError:
                pass  # already closed by the client

    return app


def _add_http_routes(app: Any, env_id: str, kwargs: dict[str, Any], description: str) -> None:
    """OpenEnv's stateless HTTP routes (each request its own fresh env) and the info routes."""
    from fastapi import HTTPException, Request

    def http_session(fn: Any, data: Any) -> Any:
        s = Session(env_id, kwargs)
        try:
            return fn(s, data)
        except RequestError as e:
            raise HTTPException(status_code=422, detail=str(e)) from None
        except Exception as e:
            raise HTTPException(status_code=500, detail=_why(e)) from None
        finally:
            s.drop()
            s.executor.shutdown(wait=False)

    def reset_then_step(s: Session, body: dict[str, Any]) -> dict[str, Any]:
        s.reset({"seed": body.get("seed")})
        return s.step(body.get("action"))

    async def body_of(request: Request) -> dict[str, Any]:
        raw = await request.body()
        try:
            body = json.loads(raw) if raw.strip() else {}
        except json.JSONDecodeError as e:
            raise HTTPException(status_code=422, detail=f"Invalid JSON: {e}") from None
        if not isinstance(body, dict):
            raise HTTPException(status_code=422, detail="the body must be a JSON object")
        return body

    @app.post("/reset")
    async def http_reset(request: Request) -> dict[str, Any]:
        return await asyncio.to_thread(http_session, Session.reset, await body_of(request))

    @app.post("/step")
    async def http_step(request: Request) -> dict[str, Any]:
        return await asyncio.to_thread(http_session, reset_then_step, await body_of(request))

    @app.get("/state")
    async def http_state() -> dict[str, Any]:
        return Session(env_id, kwargs).state() | {"step_count": 0}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "healthy"}

    @app.get("/metadata")
    async def metadata() -> dict[str, Any]:
        from agentrl import __version__

        return {"name": env_id, "description": description, "version": __version__,
                "author": "agentrl", "documentation_url": None, "readme_content": None}

    @app.get("/schema")
    async def schema() -> dict[str, Any]:
        return SCHEMA


async def _answer(session: Session, raw: str) -> dict[str, Any] | None:
    """The reply to one WebSocket message (None: the client closed the session)."""
    try:
        msg = json.loads(raw)
    except json.JSONDecodeError as e:
        return _error(f"Invalid JSON: {e}", "INVALID_JSON")
    kind = msg.get("type") if isinstance(msg, dict) else None
    if kind == "close":
        return None
    try:
        if kind == "reset":
            return {"type": "observation",
                    "data": await session.call(session.reset, msg.get("data"))}
        if kind == "step":
            return {"type": "observation",
                    "data": await session.call(session.step, msg.get("data"))}
        if kind == "state":
            return {"type": "state", "data": session.state()}
        return _error(f"Unknown message type: {kind}", "UNKNOWN_TYPE")
    except RequestError as e:
        return _error(str(e), e.code)
    except Exception as e:
        return _error(_why(e), "EXECUTION_ERROR")


#: JSON schemas of the action, observation and state (``/schema``), OpenEnv's layout.
SCHEMA: dict[str, Any] = {
    "action": {"title": "TextAction", "type": "object", "additionalProperties": False,
               "properties": {"message": {"type": "string", "description": "the action text"},
                              "metadata": {"type": "object"}},
               "required": ["message"]},
    "observation": {"title": "TextObservation", "type": "object",
                    "properties": {"text": {"type": "string"},
                                   "info": {"type": "object"},
                                   "terminated": {"type": "boolean"},
                                   "truncated": {"type": "boolean"},
                                   "done": {"type": "boolean"},
                                   "reward": {"type": ["number", "null"]},
                                   "metadata": {"type": "object"}}},
    "state": {"title": "TextState", "type": "object",
              "properties": {"episode_id": {"type": ["string", "null"]},
                             "step_count": {"type": "integer"},
                             "env_id": {"type": "string"},
                             "seed": {"type": ["integer", "null"]}}},
}


# ------------------------------------------------------------------------------ entry points

def check_servable(env_id: str, env_kwargs: dict[str, Any]) -> None:
    """Fail fast, with one line, on an unknown id, a missing package or kwargs the env's
    constructor does not take; then create the env's data (its ``prepare`` hook), so
    concurrent sessions find it ready, and build the env once to see that it builds."""
    import importlib

    from agentrl.registry import ENVS, check_env_id, make_env, missing_requirement
    from agentrl.run.preflight import env_constructor, signature_problem

    check_env_id(env_id)
    missing = missing_requirement(env_id)
    if missing:
        raise ImportError(missing)
    ctor, defaults = env_constructor(env_id)
    problem = signature_problem(ctor, {**defaults, **env_kwargs})
    if problem:
        raise ValueError(f"{env_id}: {problem}")
    entry = ENVS.get(env_id)
    if entry is not None and entry.prepare:
        mod, _, attr = entry.prepare.partition(":")
        getattr(importlib.import_module(mod), attr)({**defaults, **env_kwargs}, None)
    try:
        make_env(env_id, **env_kwargs).close()
    except Exception as e:
        raise ValueError(f"{env_id} with {env_kwargs} does not build: {_why(e)}") from None


def serve(env_id: str, env_kwargs: dict[str, Any] | None = None, host: str = "127.0.0.1",
          port: int = 8000, max_sessions: int = MAX_SESSIONS, log_level: str = "warning") -> None:
    """Serve ``env_id`` until interrupted. ``port=0`` picks a free port; the first line
    printed names the URL (``agentrl serve: ENV_ID at http://HOST:PORT``)."""
    import uvicorn

    kwargs = dict(env_kwargs or {})
    check_servable(env_id, kwargs)
    app = build_app(env_id, kwargs, max_sessions=max_sessions)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {e.strerror or e} "
                      "(another server on that port? pick another with --port)") from None
    sock.listen(128)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    print(f"agentrl serve: {env_id} at http://{shown}:{bound} (OpenEnv: /ws sessions, "
          f"/reset /step /state /health /schema)", flush=True)
    config = uvicorn.Config(app, log_level=log_level, ws_max_size=64 * 2**20)
    uvicorn.Server(config).run(sockets=[sock])


def serve_main(env_id: str, env_kwargs: dict[str, Any], host: str, port: int,
               max_sessions: int) -> int:
    """``agentrl serve``: one line and exit status 2 on bad input."""
    from agentrl.registry import UnknownEnvError

    if max_sessions < 1:
        print("agentrl serve: --max-sessions must be at least 1", file=sys.stderr)
        return 2
    try:
        serve(env_id, env_kwargs, host=host, port=port, max_sessions=max_sessions)
    except (UnknownEnvError, ImportError, ValueError, OSError) as e:
        print(f"agentrl serve: {e}", file=sys.stderr)
        return 2
    return 0
