"""Checkpoint mechanics: manifest written last, corrupt checkpoints skipped on resume, a full
disk (a real size-limited tmpfs) fails the save cleanly and keeps the previous checkpoint, and
loading never runs code (pickle payloads planted in every file agentrl loads are refused)."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml

from agentrl.models import build_tiny_model, build_tiny_tokenizer, load_pretrained
from agentrl.run import checkpoint
from agentrl.run.checkpoint import CheckpointError


@pytest.fixture(scope="module")
def tiny():
    tok = build_tiny_tokenizer(["go north", "take key", "open door"] * 5, vocab_size=80)
    return build_tiny_model(len(tok), hidden=16, layers=1, heads=2), tok


def _extra(i: int) -> dict:
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.ones(3))])
    return {"optimizer": opt.state_dict(), "rng": checkpoint.rng_state(), "i": i,
            "history": [{"tag": "x", "success_rate": 0.5, "ci95": [0.1, 0.9]}]}


def _save(run_dir, tiny, i: int, keep: int = 3) -> str:
    model, tok = tiny
    return checkpoint.save(str(run_dir), i, model, tok, _extra(i), "seed: 1\n", keep=keep)


def test_manifest_lists_every_file_and_state_roundtrips(tiny, tmp_path) -> None:
    cp = _save(tmp_path, tiny, 1)
    manifest = json.load(open(os.path.join(cp, checkpoint.MANIFEST)))
    on_disk = {os.path.relpath(os.path.join(d, f), cp) for d, _, fs in os.walk(cp) for f in fs}
    assert set(manifest["files"]) == on_disk - {checkpoint.MANIFEST}
    assert "model/model.safetensors" in manifest["files"] and manifest["iteration"] == 1
    assert checkpoint.verify(cp) is None
    st = checkpoint.load_state(cp)  # weights-only: the whole state is tensors and plain data
    assert st["i"] == 1 and st["history"][0]["ci95"] == [0.1, 0.9]
    import random

    import numpy as np

    checkpoint.set_rng_state(st["rng"])
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    checkpoint.set_rng_state(st["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "manifest"])
def test_corrupt_latest_falls_back_to_previous_with_warning(tiny, tmp_path, capsys,
                                                             damage: str) -> None:
    good, bad = _save(tmp_path, tiny, 1), _save(tmp_path, tiny, 2)
    target = os.path.join(bad, "model", "model.safetensors")
    if damage == "truncate":
        with open(target, "r+b") as f:
            f.truncate(os.path.getsize(target) // 2)
    elif damage == "flip":
        with open(target, "r+b") as f:
            f.seek(os.path.getsize(target) - 10)
            byte = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([byte[0] ^ 0xFF]))
    elif damage == "delete":
        os.remove(os.path.join(bad, "state.pt"))
    else:
        with open(os.path.join(bad, checkpoint.MANIFEST), "w") as f:
            f.write('{"files": ')
    assert checkpoint.latest(str(tmp_path)) == good
    err = capsys.readouterr().err
    assert "step_2 is corrupt" in err and "falling back" in err


def test_all_checkpoints_corrupt_is_an_error_not_a_fresh_start(tiny, tmp_path) -> None:
    cp = _save(tmp_path, tiny, 1)
    os.remove(os.path.join(cp, "state.pt"))
    with pytest.raises(CheckpointError, match="no checkpoint .* verifies"):
        checkpoint.latest(str(tmp_path))


def test_an_interrupted_save_is_invisible(tiny, tmp_path) -> None:
    good = _save(tmp_path, tiny, 1)
    os.makedirs(os.path.join(tmp_path, "checkpoints", "step_2.tmp", "model"))  # killed mid-save
    os.makedirs(os.path.join(tmp_path, "checkpoints", "step_3"))  # no manifest: never completed
    assert checkpoint.list_checkpoints(str(tmp_path)) == [good]
    assert checkpoint.latest(str(tmp_path)) == good
    _save(tmp_path, tiny, 2)  # the next save of that step clears the leftovers
    assert not os.path.exists(os.path.join(tmp_path, "checkpoints", "step_2.tmp"))


def test_resaving_an_iteration_and_pruning(tiny, tmp_path) -> None:
    for i in (1, 2, 3, 3):
        _save(tmp_path, tiny, i, keep=2)
    names = sorted(os.listdir(os.path.join(tmp_path, "checkpoints")))
    assert names == ["step_2", "step_3"]
    assert all(checkpoint.verify(p) is None for p in checkpoint.list_checkpoints(str(tmp_path)))


_FULL_DISK = textwrap.dedent("""
    import os, sys
    from agentrl.run import checkpoint
    from agentrl.models import build_tiny_model, build_tiny_tokenizer
    run = sys.argv[1]
    tok = build_tiny_tokenizer(["go north", "take key"] * 5, vocab_size=80)
    model = build_tiny_model(len(tok), hidden=16, layers=1, heads=2)
    first = checkpoint.save(run, 1, model, tok, {"i": 1}, "seed: 1\\n")
    # Fill the file system to within a few KiB of full.
    fd = os.open(os.path.join(run, "filler"), os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"x" * 4096)
    except OSError:
        os.close(fd)
    os.truncate(os.path.join(run, "filler"), os.path.getsize(os.path.join(run, "filler")) - 8192)
    try:
        checkpoint.save(run, 2, model, tok, {"i": 2}, "seed: 1\\n")
        print("SAVED")
    except checkpoint.CheckpointError as e:
        print("ERROR", e)
    print("LEFT", sorted(os.listdir(os.path.join(run, "checkpoints"))))
    print("LATEST", checkpoint.latest(run), checkpoint.load_state(checkpoint.latest(run))["i"])
    """)


def test_full_disk_fails_the_save_and_keeps_the_previous_checkpoint(tmp_path) -> None:
    """A real tmpfs of 4 MiB, mounted in a private mount namespace (``unshare``), filled up."""
    run = tmp_path / "run"
    run.mkdir()
    script = tmp_path / "fill.py"
    script.write_text(_FULL_DISK)
    r = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
         'mount -t tmpfs -o size=4m tmpfs "$1" && exec "$2" "$3" "$1"', "sh", str(run),
         sys.executable, str(script)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": os.getcwd()})
    out = r.stdout
    assert r.returncode == 0, (out, r.stderr[-3000:])
    assert "SAVED" not in out and "ERROR could not write checkpoint" in out, out
    assert "No space left on device" in out and "step_1 is kept" in out, out
    assert "LEFT ['step_1']" in out, out  # no step_2.tmp left behind
    assert out.rstrip().endswith(" 1") and "step_1" in out.split("LATEST")[1], out


# ----------------------------------------------------------------------------- no code on load


class _Payload:
    """Unpickling this creates ``marker`` (a directory): proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _rewrite_manifest(cp: str) -> None:
    # The attacker controls the whole directory, so the checksums match their files.
    os.remove(os.path.join(cp, checkpoint.MANIFEST))
    checkpoint._write_manifest(cp, checkpoint.checkpoint_iteration(cp))


def test_pickle_payload_in_state_is_refused(tiny, tmp_path) -> None:
    marker = str(tmp_path / "PWNED")
    cp = _save(tmp_path, tiny, 1)
    for where in ("optimizer", "rng", "history"):
        st = _extra(1)
        st[where] = _Payload(marker)
        torch.save(st, os.path.join(cp, "state.pt"))
        _rewrite_manifest(cp)
        assert checkpoint.latest(str(tmp_path)) == cp  # checksums match: only loading can refuse
        with pytest.raises(CheckpointError, match="refused to load"):
            checkpoint.load_state(cp)
        assert not os.path.exists(marker), where
    # A raw pickle file (not a torch zip) under the state's name is refused too.
    with open(os.path.join(cp, "state.pt"), "wb") as f:
        pickle.dump({"optimizer": _Payload(marker)}, f)
    with pytest.raises((CheckpointError, RuntimeError)):
        checkpoint.load_state(cp)
    assert not os.path.exists(marker)


def test_pickle_payload_as_model_weights_is_refused(tiny, tmp_path) -> None:
    marker = str(tmp_path / "PWNED")
    cp = _save(tmp_path, tiny, 1)
    model_dir = os.path.join(cp, "model")
    os.remove(os.path.join(model_dir, "model.safetensors"))
    torch.save({"model.embed_tokens.weight": _Payload(marker)},
               os.path.join(model_dir, "pytorch_model.bin"))
    with pytest.raises(Exception) as e:
        load_pretrained(model_dir)
    assert not os.path.exists(marker)
    assert "weights_only" in str(e.value) or "Unpickl" in type(e.value).__name__ + str(e.value)


def test_python_tags_in_yaml_configs_are_refused(tmp_path) -> None:
    from agentrl.config import ConfigError, load_config

    marker = str(tmp_path / "PWNED")
    bad = tmp_path / "evil.yaml"
    bad.write_text(f"seed: !!python/object/apply:os.mkdir [{marker!r}]\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(bad))
    with pytest.raises(ConfigError):
        load_config(None, [f"seed=!!python/object/apply:os.mkdir [{marker!r}]"])
    assert not os.path.exists(marker)
    # The same document through PyYAML's unsafe loader would have run it: the test is real.
    yaml.unsafe_load(bad.read_text())
    assert os.path.exists(marker)


def test_pickle_bytes_in_trajectory_and_metrics_files_are_refused(tmp_path) -> None:
    from agentrl.run.metrics import read_metrics
    from agentrl.types import read_jsonl

    marker = str(tmp_path / "PWNED")
    blob = pickle.dumps(_Payload(marker))
    traj = tmp_path / "t.jsonl"
    traj.write_bytes(blob + b"\n")
    with pytest.raises(ValueError, match="line 1"):
        read_jsonl(str(traj))
    (tmp_path / "metrics.jsonl").write_bytes(b'{"iteration": 1}\n' + blob + b"\n")
    with pytest.raises(ValueError, match="line 2"):
        read_metrics(str(tmp_path))
    assert not os.path.exists(marker)


def test_a_reloaded_tiny_checkpoint_tokenizes_as_in_training(tmp_path) -> None:
    """The ids a reloaded checkpoint sees are the ids it was trained on: a tiny tokenizer's
    pre-tokenizer (byte-level, spaces merged into the next word) survives save and load, where
    the model type's own tokenizer class would split " 1" into " " and "1"."""
    text = "You are X. Board: 1 2 3 / 4 X 6 / 7 8 O"
    tok = build_tiny_tokenizer([text, "Board: 9 8 7 / 6 5 4"] * 20, vocab_size=300)
    model = build_tiny_model(len(tok), hidden=16, layers=1, heads=2)
    cp = checkpoint.save(str(tmp_path), 1, model, tok, _extra(1), "seed: 1\n")
    _, loaded = load_pretrained(os.path.join(cp, "model"))
    for s in (text, "Board: 5", " 12 garbage ü"):
        assert loaded.encode(s, add_special_tokens=False) == tok.encode(s, add_special_tokens=False)
    assert (loaded.eos_token_id, loaded.pad_token_id) == (tok.eos_token_id, tok.pad_token_id)
    msgs = [{"role": "user", "content": text}]
    assert loaded.apply_chat_template(msgs, add_generation_prompt=True) == \
        tok.apply_chat_template(msgs, add_generation_prompt=True)
