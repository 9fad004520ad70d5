"""A run directory or checkpoint from elsewhere (downloaded, copied, damaged) is data, not code.

- Its saved ``config.yaml`` imports no ``"pkg.module:Class"`` plugin on ``agentrl train
  --resume`` or ``agentrl eval`` unless the user passes ``--trust-plugins``: the refusal is one
  line naming the flag, exit 2, and the plugin's module is never imported.
- A hostile or damaged file (for ``agentrl report``, ``--resume`` or ``eval``) ends in one line
  on stderr and exit 2, with no traceback and nothing in the run directory written or changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from collections.abc import Callable

import pytest
import torch
from helpers import train_tiny_run

from agentrl.cli import main
from agentrl.run import checkpoint


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> str:
    return train_tiny_run(str(tmp_path_factory.mktemp("runs")))


@pytest.fixture
def run(trained: str, tmp_path) -> str:
    """A copy of the tiny run (two iterations, checkpoints step_1 and step_2) to damage."""
    return shutil.copytree(trained, str(tmp_path / "run"))


def _snapshot(root: str) -> dict[str, str]:
    """Every file under ``root`` -> SHA-256 of its bytes."""
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            with open(os.path.join(d, n), "rb") as f:
                out[os.path.relpath(os.path.join(d, n), root)] = hashlib.sha256(
                    f.read()).hexdigest()
    return out


def _refused(argv: list[str], capsys, root: str) -> str:
    """Run ``agentrl argv``; assert exit 2, one line on stderr, no traceback and ``root``
    unchanged. Returns the line."""
    before = _snapshot(root)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert _snapshot(root) == before, "the command wrote or changed files"
    return err.strip()


# ------------------------------------------------------------------------ plugins from a run

def _plant_plugin(run: str, tmp_path, monkeypatch) -> tuple[str, str]:
    """A module in the current folder that creates a marker when imported, named as the
    algorithm of the run's saved configs. Returns (module name, marker path)."""
    name = f"planted_{abs(hash(str(tmp_path))) % 10**8}"
    marker = str(tmp_path / "IMPORTED")
    (tmp_path / f"{name}.py").write_text(
        f"import pathlib\npathlib.Path({marker!r}).write_text('ran')\n"
        "from agentrl.algorithms.gigpo import GiGPO\n\n\nclass Planted(GiGPO):\n    pass\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for cfg in [os.path.join(run, "config.yaml"),
                *(os.path.join(cp, "config.yaml") for cp in checkpoint.list_checkpoints(run))]:
        text = open(cfg, encoding="utf-8").read()
        assert "  name: gigpo\n" in text
        with open(cfg, "w", encoding="utf-8") as f:
            f.write(text.replace("  name: gigpo\n", f"  name: {name}:Planted\n"))
    return name, marker


def _remanifest(run: str) -> None:
    # Whoever hands over the run controls every file, manifests included.
    for cp in checkpoint.list_checkpoints(run):
        os.remove(os.path.join(cp, checkpoint.MANIFEST))
        checkpoint._write_manifest(cp, int(os.path.basename(cp).split("_")[1]))


def test_a_saved_config_imports_no_plugin_on_resume(run, tmp_path, monkeypatch, capsys) -> None:
    name, marker = _plant_plugin(run, tmp_path, monkeypatch)
    _remanifest(run)
    line = _refused(["train", "--resume", run], capsys, run)
    assert "--trust-plugins" in line and f"{name}:Planted" in line, line
    assert not os.path.exists(marker)
    assert main(["train", "--resume", run, "--trust-plugins"]) == 0
    assert os.path.exists(marker)


def test_a_saved_config_imports_no_plugin_on_eval(run, tmp_path, monkeypatch, capsys) -> None:
    name, marker = _plant_plugin(run, tmp_path, monkeypatch)
    _remanifest(run)
    for target in (checkpoint.latest(run), run):  # a checkpoint, and a run's latest one
        line = _refused(["eval", target, "--seeds", "0-0", "--no-progress"], capsys, run)
        assert "--trust-plugins" in line and f"{name}:Planted" in line, line
    assert not os.path.exists(marker)
    out = tmp_path / "eval-out"
    assert main(["eval", run, "--seeds", "0-0", "--no-progress", "--trust-plugins",
                 "--out", str(out)]) == 0
    assert os.path.exists(marker)
    assert json.loads((out / "eval.json").read_text())["results"][0]["episodes"] == 1


# ------------------------------------------------------------------------ hostile files

class _Payload:
    """Unpickling this creates ``marker``: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _append(path: str, text: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)


def _edit_json(path: str, edit: Callable[[dict], None]) -> None:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    edit(data)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)


def _newest(run: str) -> str:
    return checkpoint.list_checkpoints(run)[-1]


def _bad_record(run: str, marker: str) -> list[str]:
    _append(os.path.join(run, "trajectories", "iter_0.jsonl"), json.dumps({"turns": 3}) + "\n")
    return ["report", run]


def _not_an_object(run: str, marker: str) -> list[str]:
    _append(os.path.join(run, "metrics.jsonl"), "[1, 2]\n" + json.dumps({"iteration": 9}) + "\n")
    return ["report", run]


def _eval_iteration_text(run: str, marker: str) -> list[str]:
    _edit_json(os.path.join(run, "eval", "final.json"),
               lambda s: s.update(iteration="<b>two</b>"))
    return ["report", run]


def _eval_without_interval(run: str, marker: str) -> list[str]:
    _edit_json(os.path.join(run, "eval", "final.json"), lambda s: s.pop("ci95"))
    return ["report", run]


def _metrics_row_without_iteration(run: str, marker: str) -> list[str]:
    _append(os.path.join(run, "metrics.jsonl"), json.dumps({"rollout/success_rate": 1}) + "\n")
    return ["report", run]


def _config_python_tag(run: str, marker: str) -> list[str]:
    _append(os.path.join(run, "config.yaml"),
            f"extra: !!python/object/apply:os.mkdir [{marker!r}]\n")
    return ["report", run]


def _state_pickle(run: str, marker: str) -> list[str]:
    cp = _newest(run)
    state = torch.load(os.path.join(cp, "state.pt"), weights_only=True)
    state["rng"] = _Payload(marker)
    torch.save(state, os.path.join(cp, "state.pt"))
    _remanifest(run)  # checksums match: only the loading can refuse
    return ["train", "--resume", run]


def _failed_manifest(run: str, marker: str) -> list[str]:
    for cp in checkpoint.list_checkpoints(run):  # every checkpoint: nothing to fall back to
        _append(os.path.join(cp, "trainer_state.json"), " ")
    return ["train", "--resume", run]


def _state_iteration_text(run: str, marker: str) -> list[str]:
    _edit_json(os.path.join(_newest(run), "trainer_state.json"),
               lambda s: s.update(iteration="two"))
    _remanifest(run)
    return ["train", "--resume", run]


def _weights_pickle(run: str, marker: str) -> list[str]:
    model = os.path.join(_newest(run), "model")
    os.remove(os.path.join(model, "model.safetensors"))
    with open(os.path.join(model, "pytorch_model.bin"), "wb") as f:
        pickle.dump({"model.embed_tokens.weight": _Payload(marker)}, f)
    _remanifest(run)
    return ["train", "--resume", run]


def _unknown_algorithm(run: str, marker: str) -> list[str]:
    return ["train", "algorithm.name=no_such_module_zz:Algo", f"output_dir={run}"]


def _eval_failed_manifest(run: str, marker: str) -> list[str]:
    _append(os.path.join(_newest(run), "state.pt"), "x")
    return ["eval", _newest(run), "--seeds", "0-0", "--no-progress"]


HOSTILE = {f.__name__[1:]: f for f in [
    _bad_record, _not_an_object, _eval_iteration_text, _eval_without_interval,
    _metrics_row_without_iteration, _config_python_tag, _state_pickle, _failed_manifest,
    _state_iteration_text, _weights_pickle, _unknown_algorithm, _eval_failed_manifest]}

#: what the one line must name, per case
NAMES = {"bad_record": "iter_0.jsonl: record", "not_an_object": "metrics.jsonl line",
         "eval_iteration_text": "final.json: 'iteration'", "eval_without_interval": "ci95",
         "metrics_row_without_iteration": "row", "config_python_tag": "config.yaml",
         "state_pickle": "refused", "failed_manifest": "manifest",
         "state_iteration_text": "trainer_state.json", "weights_pickle": "pytorch_model.bin",
         "unknown_algorithm": "no_such_module_zz", "eval_failed_manifest": "manifest"}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_file_ends_in_one_line_and_exit_2(case: str, run, tmp_path, capsys) -> None:
    marker = str(tmp_path / "PWNED")
    argv = HOSTILE[case](run, marker)
    line = _refused(argv, capsys, run)
    assert NAMES[case] in line, line
    assert not os.path.exists(marker)
