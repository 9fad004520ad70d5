"""Run a benchmark worker on this checkout or on an earlier commit, in a fresh process.

`base_tree(commit)` checks the commit out (``git worktree add --detach``, once, under the
system temp dir) and lays its packages out as the installed ``agentrl`` package is laid out
(``agentrl.policies`` = ``policies/`` and so on) in a directory of symlinks, so that a process
started there imports the old code while ``examples`` still comes from this checkout.
`run_worker` starts ``python -m <module> --worker ...`` there (or here) and returns the JSON
the worker printed on its ``RESULT`` line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: installed sub-package -> its folder in the source tree (pyproject's package-dir)
MOUNTS = {"policies": "policies", "algorithms": "algorithms", "envs": "envs"}


def _git(*args: str, cwd: str = REPO) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout.strip()


def base_tree(commit: str) -> str:
    """A directory whose ``agentrl`` package is ``commit``'s code (created once)."""
    sha = _git("rev-parse", "--verify", f"{commit}^{{commit}}")
    root = os.path.join(tempfile.gettempdir(), f"agentrl-base-{sha[:12]}")
    src, farm = os.path.join(root, "src"), os.path.join(root, "farm")
    if not os.path.exists(os.path.join(src, "agentrl")):
        os.makedirs(root, exist_ok=True)
        _git("worktree", "add", "--detach", "--force", src, sha)
    pkg = os.path.join(farm, "agentrl")
    if not os.path.isdir(pkg):
        os.makedirs(pkg)
        for name in os.listdir(os.path.join(src, "agentrl")):
            os.symlink(os.path.join(src, "agentrl", name), os.path.join(pkg, name))
        for name, folder in MOUNTS.items():
            if os.path.isdir(os.path.join(src, folder)):
                os.symlink(os.path.join(src, folder), os.path.join(pkg, name))
    return farm


def run_worker(module: str, args: list[str], base: str | None = None, threads: int = 1,
               timeout: float | None = None) -> dict[str, Any]:
    """Run ``python -m module --worker <args>`` on this checkout (``base=None``) or in a
    `base_tree`; returns the worker's ``RESULT`` JSON."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": REPO if base else os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", module, "--worker", *args]
    # A process started in the base tree finds its old ``agentrl`` first (the current
    # directory leads sys.path), and ``examples`` through PYTHONPATH.
    p = subprocess.run(cmd, cwd=base or REPO, env=env, capture_output=True, text=True,
                       timeout=timeout)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        where = f"base {base}" if base else "this checkout"
        raise RuntimeError(f"{module} worker on {where} failed (exit {p.returncode}):\n"
                           f"{p.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def result(obj: Any) -> None:
    """What a worker prints last: one ``RESULT`` line of JSON."""
    print("RESULT " + json.dumps(obj), flush=True)
