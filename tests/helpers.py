"""Helpers that tests in several folders share: a small TextWorld config, one tiny trained run
per session, and headless Chromium for the viewer pages."""

from __future__ import annotations

import shutil
import subprocess
import tempfile

import pytest

from agentrl.config import load_config
from agentrl.trainer import Trainer

#: a few seconds per iteration on TextWorld, checkpointing every iteration
SMALL = ["env.kwargs={level: 3, split: train, num_games: 2}", "train.lr_schedule=constant",
         "env.eval_kwargs={split: eval, num_games: 2}", "env.train_seeds=2",
         "rollout.groups=2", "rollout.group_size=3", "rollout.max_turns=6",
         "policy.tiny_corpus_episodes=4", "eval.episodes=4", "eval.every=0",
         "log.tensorboard=false", "log.progress=false", "train.checkpoint_every=1"]

# Two iterations on TextWorld with a held-out eval after each one and every batch dumped, so
# the run has everything eval, the viewer and the report read.
RUN = SMALL + ["train.iterations=2", "eval.every=1", "log.trajectories_every=1",
               "log.trajectories_per_dump=6", "algorithm.kl_coef=0.01", "run_name=evalme"]

_RUNS: dict[str, str] = {}


def train_tiny_run(root: str) -> str:
    """Train the tiny run once per test session (shared by test_eval and test_report)."""
    if "dir" not in _RUNS:
        _RUNS["dir"] = Trainer(load_config(None, RUN + [f"output_dir={root}"])).train()["run_dir"]
    return _RUNS["dir"]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("the viewer tests need Chromium: apt-get install -y chromium (Debian/Ubuntu); "
                "CI installs it in .ci/run")


def browse(url: str, *args: str) -> subprocess.CompletedProcess:
    """Headless Chromium, isolated and offline, on ``url``."""
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={profile}", *args, url],
            capture_output=True, text=True, timeout=120)
