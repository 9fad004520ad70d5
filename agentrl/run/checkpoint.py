"""Checkpoints: model (safetensors), tokenizer, optimizer, algorithm state, RNG states, config.

``runs/<name>/checkpoints/step_N/`` is written to ``step_N.tmp`` first; every file is flushed
to disk, then ``manifest.json`` (size and SHA-256 of every file) is written last, and the
directory is renamed into place. So:

- a killed save leaves only a ``.tmp`` directory, which nothing reads (the next save removes it);
- a checkpoint damaged later (truncated copy, bad disk) fails its checksums on resume, and
  `latest` falls back to the newest checkpoint that verifies, with a warning;
- a save that fails (a full disk) raises `CheckpointError`, removes its partial files and keeps
  the previous checkpoints: pruning to ``keep`` happens only after a complete save.

Loading never executes code: the model is read from safetensors, ``state.pt`` with
``torch.load(weights_only=True)`` (tensors and plain containers only), the rest is JSON/YAML data.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import re
import shutil
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from agentrl.run.faults import fault_point

_STEP = re.compile(r"^step_(\d+)$")
MANIFEST = "manifest.json"


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message says what to do."""

    exit_code = 2  # `agentrl` prints the message as one line and exits with this status


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (model init, task draws)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch global RNG states as tensors and plain data (weights-only
    loadable: NumPy's key array becomes a list)."""
    np_state = np.random.get_state(legacy=False)
    np_state["state"] = {"key": np_state["state"]["key"].tolist(),
                         "pos": int(np_state["state"]["pos"])}
    return {"python": random.getstate(), "numpy": np_state, "torch": torch.get_rng_state()}


def set_rng_state(s: dict[str, Any]) -> None:
    random.setstate(s["python"])
    np_state = dict(s["numpy"])
    np_state["state"] = {"key": np.asarray(np_state["state"]["key"], dtype=np.uint32),
                         "pos": np_state["state"]["pos"]}
    np.random.set_state(np_state)
    torch.set_rng_state(s["torch"])


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_manifest(tmp: str, iteration: int) -> None:
    files = {}
    for d, _, names in os.walk(tmp):
        for n in sorted(names):
            p = os.path.join(d, n)
            with open(p, "rb+") as f:  # what the writers left in the page cache, on disk now
                os.fsync(f.fileno())
            files[os.path.relpath(p, tmp)] = {"bytes": os.path.getsize(p), "sha256": _digest(p)}
        _fsync_dir(d)
    part = os.path.join(tmp, MANIFEST + ".part")
    with open(part, "w", encoding="utf-8") as f:
        json.dump({"iteration": iteration, "files": files}, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(part, os.path.join(tmp, MANIFEST))
    _fsync_dir(tmp)


def save(run_dir: str, iteration: int, model: Any, tokenizer: Any, extra: dict[str, Any],
         config_text: str, keep: int = 2, write: Callable[[str], None] | None = None) -> str:
    """Write checkpoint ``step_<iteration>`` atomically (manifest last, then a rename); prune to
    the newest ``keep`` only once it is complete. ``write(tmp)`` adds files of its own (e.g.
    torch.distributed.checkpoint shards) before the manifest.

    Raises:
        CheckpointError: the write failed (e.g. a full disk); the previous checkpoints are kept.
    """
    root = os.path.join(run_dir, "checkpoints")
    os.makedirs(root, exist_ok=True)
    final = os.path.join(root, f"step_{iteration}")
    tmp = final + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        os.makedirs(tmp)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # one "Writing model shards" bar per checkpoint is noise
        model.save_pretrained(os.path.join(tmp, "model"), safe_serialization=True)
        tokenizer.save_pretrained(os.path.join(tmp, "model"))
        fault_point("checkpoint_write")
        torch.save(extra, os.path.join(tmp, "state.pt"))
        if write is not None:
            write(tmp)
        with open(os.path.join(tmp, "config.yaml"), "w", encoding="utf-8") as f:
            f.write(config_text)
        with open(os.path.join(tmp, "trainer_state.json"), "w", encoding="utf-8") as f:
            json.dump({"iteration": iteration}, f)
        _write_manifest(tmp, iteration)
    except Exception as e:  # OSError (ENOSPC, EDQUOT, EIO) or the writer's wrapper of one
        shutil.rmtree(tmp, ignore_errors=True)
        prev = latest_path_unverified(run_dir)
        raise CheckpointError(
            f"could not write checkpoint {final}: {e}. Free space in {root} (or lower "
            f"train.keep_checkpoints); " + (f"the previous checkpoint {prev} is kept"
                                           if prev else "no earlier checkpoint exists")) from e
    # Same iteration saved again (e.g. the final save): swap, so a good copy always exists.
    old = final + ".old"
    if os.path.exists(final):
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(root)
    shutil.rmtree(old, ignore_errors=True)
    for stale in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def list_checkpoints(run_dir: str) -> list[str]:
    """Checkpoints whose save completed (they have a manifest), oldest first; not verified."""
    root = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(root):
        return []
    steps = []
    for name in os.listdir(root):
        m = _STEP.match(name)
        if m and os.path.exists(os.path.join(root, name, MANIFEST)):
            steps.append((int(m.group(1)), os.path.join(root, name)))
    return [p for _, p in sorted(steps)]


def latest_path_unverified(run_dir: str) -> str | None:
    cps = list_checkpoints(run_dir)
    return cps[-1] if cps else None


def verify(path: str) -> str | None:
    """None when every file listed in the manifest has its size and SHA-256, else the problem."""
    try:
        with open(os.path.join(path, MANIFEST), encoding="utf-8") as f:
            files = json.load(f)["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"unreadable manifest ({e})"
    for rel, meta in files.items():
        p = os.path.join(path, rel)
        if not os.path.isfile(p):
            return f"{rel} is missing"
        if os.path.getsize(p) != meta["bytes"]:
            return f"{rel} has {os.path.getsize(p)} bytes, the manifest says {meta['bytes']}"
        if _digest(p) != meta["sha256"]:
            return f"{rel} fails its SHA-256 checksum"
    return None


def latest(run_dir: str) -> str | None:
    """The newest checkpoint that verifies (None when the run has none); a newer corrupt one is
    skipped with a warning.

    Raises:
        CheckpointError: the run has checkpoints and none of them verifies.
    """
    cps = list_checkpoints(run_dir)
    problems = []
    for path in reversed(cps):
        problem = verify(path)
        if problem is None:
            for bad, why in problems:
                print(f"[agentrl] warning: checkpoint {bad} is corrupt ({why}); falling back "
                      "to the previous one", file=sys.stderr)
            return path
        problems.append((path, problem))
    if cps:
        found = "; ".join(f"{os.path.basename(p)}: {why}" for p, why in problems)
        raise CheckpointError(
            f"no checkpoint of {run_dir} verifies against its manifest ({found}); restore one "
            f"from a backup, or delete {os.path.join(run_dir, 'checkpoints')} to start the run "
            "over")
    return None


def load_state(path: str) -> dict[str, Any]:
    """``state.pt`` of a checkpoint, loaded weights-only (no code runs while loading).

    Raises:
        CheckpointError: the file holds Python objects other than tensors and plain data.
    """
    f = os.path.join(path, "state.pt")
    try:
        return torch.load(f, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{f}: refused to load: it holds Python objects beyond tensors and plain data, and "
            f"loading them could run code (weights-only loading). Only load checkpoints written "
            f"by agentrl. ({str(e).splitlines()[0]})") from None


#: Files that hold pickles, which can run code when loaded: a checkpoint's model is safetensors.
PICKLE_WEIGHTS = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def check_weights(path: str) -> None:
    """Refuse a checkpoint whose model directories hold a pickled weights file, which only
    safetensors should be (agentrl writes no other format).

    Raises:
        CheckpointError: naming the file.
    """
    for d, _, names in os.walk(path):
        for n in sorted(names):
            if n.endswith(PICKLE_WEIGHTS) and os.path.join(d, n) != os.path.join(path, "state.pt"):
                raise CheckpointError(
                    f"{os.path.join(d, n)}: refused to load: model weights of a checkpoint are "
                    "safetensors, and a pickled weights file could run code when loaded. Only "
                    "load checkpoints written by agentrl")


def checkpoint_iteration(path: str) -> int:
    """The iteration ``trainer_state.json`` of checkpoint ``path`` records.

    Raises:
        CheckpointError: the file is missing, not JSON, or holds no whole-number iteration.
    """
    f = os.path.join(path, "trainer_state.json")
    try:
        with open(f, encoding="utf-8") as fh:
            it = json.load(fh)["iteration"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{f}: unreadable ({type(e).__name__}: {e}); not a checkpoint "
                              "of agentrl") from None
    if not isinstance(it, int) or isinstance(it, bool) or it < 0:
        raise CheckpointError(f"{f}: 'iteration' must be a whole number, not {it!r:.60}; not "
                              "a checkpoint of agentrl")
    return it


def discard_after(run_dir: str, iteration: int) -> list[str]:
    """Make a run's outputs agree with its checkpoint at ``iteration`` before it is resumed:
    metrics rows of later iterations, their trajectory dumps and evaluation files (and a
    final evaluation, which the resumed run redoes) are removed; a metrics line cut short by a
    kill is dropped. Returns what was removed (paths, and ``metrics.jsonl:N`` for rows)."""
    from agentrl.types import read_json_lines

    removed = []
    mpath = os.path.join(run_dir, "metrics.jsonl")
    if os.path.exists(mpath):
        rows = read_json_lines(mpath)
        keep = [r for r in rows if r.get("iteration", 0) <= iteration]
        tmp = mpath + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in keep)
        os.replace(tmp, mpath)
        removed += [f"metrics.jsonl:{r.get('iteration')}" for r in rows if r not in keep]
    dumps = os.path.join(run_dir, "trajectories")
    for name in sorted(os.listdir(dumps)) if os.path.isdir(dumps) else []:
        m = re.match(r"^iter_(\d+)\.jsonl$", name)
        if m and int(m.group(1)) > iteration:
            os.remove(os.path.join(dumps, name))
            removed.append(os.path.join(dumps, name))
    evals = os.path.join(run_dir, "eval")
    for name in sorted(os.listdir(evals)) if os.path.isdir(evals) else []:
        m = re.match(r"^(.+?)(_trajectories\.jsonl|\.json)$", name)
        if not m:
            continue
        tag = m.group(1)
        it = re.match(r"^iter_(\d+)$", tag)
        if tag == "final" or (it and int(it.group(1)) > iteration):
            os.remove(os.path.join(evals, name))
            removed.append(os.path.join(evals, name))
    return removed


def player_path(spec: str) -> str:
    """The model directory of a checkpoint (``.../step_N``), a run (its latest checkpoint) or a
    model directory / hub name, as `agentrl eval` resolves targets."""
    spec = spec.rstrip("/")
    if os.path.isdir(os.path.join(spec, "checkpoints")) or os.path.exists(
            os.path.join(spec, "metrics.jsonl")):
        newest = latest(spec)
        if newest is None:
            raise ValueError(f"{spec}: a run directory without a complete checkpoint")
        spec = newest
    if os.path.exists(os.path.join(spec, "trainer_state.json")):
        return os.path.join(spec, "model")
    if not os.path.isdir(spec):
        raise ValueError(f"{spec!r} is not a checkpoint, run or model directory (random and "
                         "scripted opponents are env settings: env.kwargs={opponent: random})")
    return spec
