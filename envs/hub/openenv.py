"""An OpenEnv environment server, reached by URL, as an ordinary agentrl text env.

``agentrl/OpenEnv-v0`` speaks OpenEnv's WebSocket session protocol (``/ws``: reset, step,
state, close) to any OpenEnv server: one served by ``agentrl serve ENV_ID`` (agentrl's own
envs, with their info keys carried exactly) or any other OpenEnv environment. It runs in the
env pool like every env, so a server that hangs, dies or refuses ends that episode as
``env_error`` and the run goes on; the pool rebuilds the env for the next episode, which
connects again (and a reset on a dropped connection reconnects too).

    agentrl train env.id=agentrl/OpenEnv-v0 'env.kwargs={url: "http://127.0.0.1:8000"}' ...
    agentrl train env.id=agentrl/OpenEnv-v0      # the quickstart, through a local server

What the env returns, from one observation payload (``{"observation": {...}, "reward",
"done"}``):

- the observation string: the observation's ``text_field`` (default ``text``, what
  ``agentrl serve`` sends); without one, the observation's fields as JSON;
- ``info``: an agentrl server's ``info`` field as the served env returned it (tuples
  included); for other servers, the observation's other fields and its ``metadata``, so
  ``admissible_actions``, ``success``, ``score``... come through where the server sends them;
- ``task_type`` (default: the ``task_type`` kwarg) and ``action_valid`` (default true) where
  the server has none, and at the episode's end ``success`` = a positive episode return where
  the server does not say;
- terminated/truncated from the observation's fields of those names, else ``done``.

``serve=ENV_ID`` (with ``serve_kwargs``) starts ``agentrl serve ENV_ID`` on a free loopback
port in a child process, shared by the envs of this process and stopped with the last one.
"""

from __future__ import annotations

import atexit
import json
import signal
import subprocess
import sys
import threading
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from agentrl.envs.base import TextEnv
from agentrl.types import from_wire


def ws_url(url: str) -> str:
    """``http(s)://host:port[/path]`` or ``ws(s)://...`` -> the server's ``ws(s)://.../ws``;
    a `ValueError` naming the expected form for anything else."""
    parts = urlsplit(str(url).strip())
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.hostname:
        raise ValueError(f"url={url!r} is not an OpenEnv server address: use "
                         "http://HOST:PORT (or ws://HOST:PORT), e.g. http://127.0.0.1:8000")
    try:
        parts.port  # noqa: B018  (raises on a malformed port)
    except ValueError:
        raise ValueError(f"url={url!r} has a malformed port") from None
    path = parts.path.rstrip("/")
    if not path.endswith("/ws"):
        path += "/ws"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


class OpenEnvClient(TextEnv):
    """The env of one OpenEnv server session (see the module docstring).

    Args:
        url: the server, ``http://HOST:PORT``; or None with ``serve``.
        serve: an agentrl env id to serve locally instead of ``url``.
        serve_kwargs: that env's constructor kwargs.
        action_field: the field of the server's action that carries the action text
            (``message`` for agentrl's servers and OpenEnv's text envs).
        text_field: the observation field that is the observation text (default ``text``,
            else the whole observation as JSON).
        task_type: ``info["task_type"]`` where the server sends none.
        connect_timeout: seconds to open the connection.
        timeout: seconds to wait for each answer; past it the episode ends as ``env_error``.
        build_timeout: seconds to wait for the first reset of a connection, which builds the
            server's env for the session (loading games, starting a JVM), so a slow start
            under many concurrent sessions is not taken for a hung server.
    """

    def __init__(self, url: str | None = None, serve: str | None = None,
                 serve_kwargs: dict[str, Any] | None = None, action_field: str = "message",
                 text_field: str = "text", task_type: str = "openenv",
                 connect_timeout: float = 30.0, timeout: float = 60.0,
                 build_timeout: float = 600.0, render_mode: str | None = None) -> None:
        super().__init__(render_mode=render_mode)
        if (url is None) == (serve is None):
            raise ValueError("OpenEnv-v0 needs exactly one of url (a running server, "
                             "http://HOST:PORT) and serve (an agentrl env id to serve "
                             f"locally); got url={url!r}, serve={serve!r} (with env.kwargs "
                             "from the recommended settings, replace them whole: "
                             "env.kwargs='{url: \"http://HOST:PORT\"}')")
        self._server: _LocalServer | None = None
        if serve is not None:
            self._server = _LocalServer.acquire(str(serve), dict(serve_kwargs or {}))
            url = self._server.url
        self.url = ws_url(str(url))
        self.action_field, self.text_field, self.task_type = action_field, text_field, task_type
        self.connect_timeout, self.timeout = float(connect_timeout), float(timeout)
        self.build_timeout = float(build_timeout)
        self._ws: Any = None
        self._built = False  # this connection's session has built its env (a reset answered)
        self._in_episode = False
        self._return = 0.0

    # -- the env API ----------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        data: dict[str, Any] = {} if seed is None else {"seed": int(seed)}
        if options:
            data["options"] = options
        if self._ws is None:
            self._connect()
        self._in_episode = False
        payload = self._request({"type": "reset", "data": data},
                                self.timeout if self._built else self.build_timeout)
        self._built = True
        obs, _, _, _, info = self._parse(payload, reset=True)
        self._in_episode, self._return = True, 0.0
        return obs, info

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if not self._in_episode or self._ws is None:
            raise ConnectionError(f"no episode in progress on {self.url} (the connection "
                                  "was lost or reset() was not called); reset() starts one")
        payload = self._request({"type": "step", "data": {self.action_field: str(action)}})
        obs, reward, terminated, truncated, info = self._parse(payload, reset=False)
        self._return += reward
        if terminated or truncated:
            self._in_episode = False
            info.setdefault("success", self._return > 0)
        return obs, reward, terminated, truncated, info

    def state(self) -> dict[str, Any]:
        """The server's state of this session (OpenEnv's ``state``)."""
        if self._ws is None:
            self._connect()
        return self._request({"type": "state"})

    def close(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            try:
                ws.send(json.dumps({"type": "close"}))
            except Exception:
                pass  # the server is gone already
            try:
                ws.close()
            except Exception:
                pass
        server, self._server = self._server, None
        if server is not None:
            server.release()

    # -- the wire -------------------------------------------------------------------
    def _connect(self) -> None:
        from websockets.sync.client import connect

        try:
            # entered as a context manager (websockets deprecates bare connections); the
            # connection is closed by `_drop` / `close`
            self._ws = connect(self.url, open_timeout=self.connect_timeout, max_size=2**26,
                               proxy=None).__enter__()
            self._built = False
        except Exception as e:
            self._ws = None
            raise ConnectionError(f"cannot reach the OpenEnv server at {self.url}: {_why(e)} "
                                  "(start one with `agentrl serve ENV_ID --port PORT`, or fix "
                                  "env.kwargs.url)") from None

    def _request(self, message: dict[str, Any], timeout: float | None = None) -> Any:
        ws, timeout = self._ws, self.timeout if timeout is None else timeout
        try:
            ws.send(json.dumps(message))
            raw = ws.recv(timeout=timeout)
        except TimeoutError:
            self._drop()
            raise TimeoutError(f"the OpenEnv server at {self.url} did not answer a "
                               f"{message['type']} within {timeout:g}s") from None
        except Exception as e:
            self._drop()
            raise ConnectionError(f"lost the OpenEnv server at {self.url} during a "
                                  f"{message['type']}: {_why(e)}") from None
        reply = json.loads(raw)
        if reply.get("type") == "error":
            err = reply.get("data") or {}
            raise RuntimeError(f"OpenEnv server error ({err.get('code', 'UNKNOWN')}): "
                               f"{err.get('message', 'no message')}")
        return reply.get("data") or {}

    def _drop(self) -> None:
        ws, self._ws, self._in_episode = self._ws, None, False
        try:
            ws.close()
        except Exception:
            pass

    def _parse(self, payload: dict[str, Any], reset: bool
               ) -> tuple[str, float, bool, bool, dict[str, Any]]:

        fields = dict(payload.get("observation") or {})
        metadata = {**(fields.pop("metadata", None) or {}), **(payload.get("metadata") or {})}
        done = bool(payload.get("done", False))
        terminated = bool(fields.pop("terminated", done))
        truncated = bool(fields.pop("truncated", False))
        if self.text_field in fields:
            obs = str(fields.pop(self.text_field))
        else:
            obs = json.dumps(fields, sort_keys=True, default=str)
        if isinstance(fields.get("info"), dict):  # an agentrl server: the env's own info
            info = from_wire(fields["info"])
        else:
            info = {**fields, **metadata}
        info.setdefault("task_type", self.task_type)
        if not reset:
            info.setdefault("action_valid", True)
        reward = payload.get("reward")
        return obs, 0.0 if reward is None else float(reward), terminated, truncated, info


def _why(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


# ------------------------------------------------------------------------------ serve=

#: Sessions a ``serve=`` server takes: more than any pool of one process holds.
LOCAL_MAX_SESSIONS = 100_000


class _LocalServer:
    """One `ServerProcess` shared by this process's envs that serve the same env and kwargs,
    stopped when the last of them closes (or this process exits)."""

    _live: dict[str, _LocalServer] = {}
    _lock = threading.Lock()

    def __init__(self, key: str, env_id: str, kwargs: dict[str, Any]) -> None:
        self.key, self.users = key, 0
        # every env of this process (a pool's slots, train and eval) holds a session at once
        self.process = ServerProcess(env_id, kwargs, max_sessions=LOCAL_MAX_SESSIONS)
        self.url = self.process.url

    @classmethod
    def acquire(cls, env_id: str, kwargs: dict[str, Any]) -> _LocalServer:
        key = json.dumps([env_id, kwargs], sort_keys=True, default=str)
        with cls._lock:
            server = cls._live.get(key)
            if server is None or not server.process.alive():
                server = cls._live[key] = _LocalServer(key, env_id, kwargs)
            server.users += 1
            return server

    def release(self) -> None:
        with self._lock:
            self.users -= 1
            if self.users > 0:
                return
            if self._live.get(self.key) is self:
                del self._live[self.key]
        self.process.stop()


@atexit.register
def _stop_local_servers() -> None:
    for server in list(_LocalServer._live.values()):
        server.process.stop()


#: Seconds `ServerProcess` waits for the server to print its URL (its env's data is created
#: first: games may be generated).
START_TIMEOUT = 600.0


class ServerProcess:
    """``agentrl serve ENV_ID`` in a child process (killed if this process dies): ``url`` once
    it listens. ``port=0`` takes a free port; a given port can be reused at once after a
    stop (a restarted server at the same address).

        with ServerProcess("agentrl/TicTacToe-v0", {"opponent": "random"}) as server:
            env = make_env("agentrl/OpenEnv-v0", url=server.url)
    """

    def __init__(self, env_id: str, env_kwargs: dict[str, Any] | None = None,
                 host: str = "127.0.0.1", port: int = 0, max_sessions: int | None = None,
                 start_timeout: float = START_TIMEOUT) -> None:
        self.env_id = env_id
        cmd = [sys.executable, "-m", "agentrl", "serve", env_id,
               *(f"{k}={json.dumps(v)}" for k, v in (env_kwargs or {}).items()),
               "--host", host, "--port", str(port),
               *(["--max-sessions", str(max_sessions)] if max_sessions else [])]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, preexec_fn=_die_with_parent)
        self.url = self._wait_for_url(start_timeout)

    def _wait_for_url(self, timeout: float) -> str:
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.append(self.proc.stdout.readline()),
                                  daemon=True)
        reader.start()
        reader.join(timeout)
        line = lines[0] if lines else ""
        if " at http" not in line:
            self.kill()
            err = (self.proc.stderr.read() or "").strip().splitlines()
            raise RuntimeError(f"`agentrl serve {self.env_id}` did not start: "
                               + (err[-1] if err else f"no URL within {timeout:g}s"))
        return line.split(" at ", 1)[1].split()[0]

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would."""
        if self.alive():
            self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s."""
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _die_with_parent() -> None:
    """In the child: be killed when the parent dies, so no server outlives its trainer."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except Exception:
            pass
