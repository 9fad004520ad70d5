"""Checkpoints: model (safetensors), tokenizer, optimizer, algorithm state, RNG states, config.

``runs/<name>/checkpoints/step_N/`` is written to a temporary directory first and renamed into
place, so a killed run never leaves a half-written checkpoint that `latest` would pick up.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from typing import Any

import numpy as np
import torch

_STEP = re.compile(r"^step_(\d+)$")


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (model init, task draws)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state()}


def set_rng_state(s: dict[str, Any]) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])


def save(run_dir: str, iteration: int, model: Any, tokenizer: Any, extra: dict[str, Any],
         config_text: str, keep: int = 2) -> str:
    """Write checkpoint ``step_<iteration>`` atomically; prune to the newest ``keep``."""
    root = os.path.join(run_dir, "checkpoints")
    os.makedirs(root, exist_ok=True)
    final = os.path.join(root, f"step_{iteration}")
    tmp = final + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one "Writing model shards" bar per checkpoint is noise
    model.save_pretrained(os.path.join(tmp, "model"), safe_serialization=True)
    tokenizer.save_pretrained(os.path.join(tmp, "model"))
    torch.save(extra, os.path.join(tmp, "state.pt"))
    with open(os.path.join(tmp, "config.yaml"), "w", encoding="utf-8") as f:
        f.write(config_text)
    with open(os.path.join(tmp, "trainer_state.json"), "w", encoding="utf-8") as f:
        json.dump({"iteration": iteration}, f)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: str) -> list[str]:
    """Complete checkpoints, oldest first."""
    root = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(root):
        return []
    steps = []
    for name in os.listdir(root):
        m = _STEP.match(name)
        if m and os.path.exists(os.path.join(root, name, "trainer_state.json")):
            steps.append((int(m.group(1)), os.path.join(root, name)))
    return [p for _, p in sorted(steps)]


def latest(run_dir: str) -> str | None:
    cps = list_checkpoints(run_dir)
    return cps[-1] if cps else None


def load_state(path: str) -> dict[str, Any]:
    return torch.load(os.path.join(path, "state.pt"), weights_only=False)


def checkpoint_iteration(path: str) -> int:
    with open(os.path.join(path, "trainer_state.json"), encoding="utf-8") as f:
        return int(json.load(f)["iteration"])
