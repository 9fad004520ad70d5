"""`agentrl report` and the trajectory viewer on a real (tiny) run: every plot is written, the
HTML summary links them, and the viewer renders in headless Chromium with its filters working.

Chromium is a test dependency (CI installs it with ``apt-get install -y chromium``). Without it
the browser tests fail with that instruction instead of skipping, so a green run always means
the page was really rendered.
"""

from __future__ import annotations

import html
import json
import os
import re
from typing import Any

import pytest
from helpers import browse, train_tiny_run

from agentrl.cli import main
from agentrl.run.report import write_report
from agentrl.run.viewer import trajectory_sources, write_viewer
from agentrl.types import read_jsonl

PLOTS = ("success_rate", "return", "episode_length", "entropy", "kl", "clip_fraction",
         "grad_norm", "logprob_mismatch", "memory", "rates", "time_split", "entropy_heatmap")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return train_tiny_run(str(tmp_path_factory.mktemp("runs")))


def _png_ok(path: str, min_bytes: int = 10_000) -> None:
    """A real PNG with something drawn on it (not one flat colour)."""
    import matplotlib.image as mpimg

    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n", path
    assert os.path.getsize(path) > min_bytes, path
    img = mpimg.imread(path)  # (H, W, C) floats in [0, 1]
    assert img.shape[0] > 200 and img.shape[1] > 300 and float(img[..., :3].std()) > 0.05, path


def test_report_writes_every_plot_and_the_summary(run_dir: str, capsys) -> None:
    assert main(["report", run_dir]) == 0
    printed = capsys.readouterr().out
    assert "not plotted" not in printed  # this run logged everything the report draws
    for name in PLOTS:
        _png_ok(os.path.join(run_dir, "plots", f"{name}.png"))
    page = open(os.path.join(run_dir, "report.html"), encoding="utf-8").read()
    assert "href='viewer.html'" in page and os.path.exists(os.path.join(run_dir, "viewer.html"))
    for name in PLOTS:
        assert f"src='plots/{name}.png'" in page, name
    # The held-out table lists before, iter_1 and final with their CIs.
    for tag in ("before", "iter_1", "final"):
        assert f"<td>{tag}</td>" in page
    assert "None fired." in page  # the alarms were checked and logged, and none fired


def test_report_says_what_is_missing(tmp_path, capsys) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"iteration": 1,
                                                        "rollout/success_rate": 0.5}) + "\n")
    out = write_report(str(tmp_path))
    assert set(out["plots"]) == {"success_rate"}
    assert "kl" in out["skipped"] and "train/kl" in out["skipped"]["kl"]


def test_viewer_renders_in_headless_chromium(run_dir: str, tmp_path) -> None:
    path = write_viewer(run_dir)
    url = "file://" + os.path.abspath(path)
    shot = tmp_path / "viewer.png"
    r = browse(url, "--window-size=1280,900", f"--screenshot={shot}")
    assert shot.exists(), r.stderr[-2000:]
    _png_ok(str(shot))

    # The DOM after the page's script ran: every dumped episode is a card, and a trajectory's
    # action, reward and advantage are in its turn table.
    dom = browse(url, "--dump-dom").stdout
    sources = trajectory_sources(run_dir)
    trajs = [t for _, p in sources for t in read_jsonl(p)]
    assert int(re.search(r'id="episodes" data-count="(\d+)"', dom).group(1)) == len(trajs)
    first = read_jsonl(sources[0][1])[0]  # the first card: training dump of iteration 0
    act = next(u.action for u in first.turns if u.action)
    assert f'<span class="act">→ {html.escape(act, quote=False)}</span>' in dom
    advs = first.extra["advantages"]  # written by the trainer for each dumped trajectory
    assert len(advs) == first.num_turns and all(isinstance(a, float) for a in advs)
    assert f'<td class="num">{advs[0]:.3f}</td>' in dom

    # Filters from the URL hash: task type + outcome select exactly the matching episodes.
    wins = sum(t.success for t in trajs)
    assert 0 < wins < len(trajs)  # both outcomes occur in this run, so the filter is tested
    dom = browse(url + "#type=coin_collector&outcome=success", "--dump-dom").stdout
    assert int(re.search(r'id="episodes" data-count="(\d+)"', dom).group(1)) == wins
    assert 'class="badge max_turns"' not in dom and 'class="badge success"' in dom


def test_wandb_gets_the_config_and_numeric_metrics(tmp_path, monkeypatch) -> None:
    # A stand-in for the wandb module (not a dependency): records what the logger sends.
    import sys
    import types

    from agentrl.run.metrics import MetricsLogger

    calls: list[tuple[str, Any]] = []
    run = types.SimpleNamespace(log=lambda m, step: calls.append(("log", (m, step))),
                                finish=lambda: calls.append(("finish", None)))
    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: calls.append(("init", kw)) or run
    monkeypatch.setitem(sys.modules, "wandb", fake)
    lg = MetricsLogger(str(tmp_path), tensorboard=False, wandb_config={"seed": 3})
    lg.log(4, {"rollout/success_rate": 0.5, "note": "text"})
    lg.close()
    assert calls[0] == ("init", {"project": "agentrl", "name": tmp_path.name,
                                 "dir": str(tmp_path), "config": {"seed": 3}})
    assert calls[1:] == [("log", ({"rollout/success_rate": 0.5}, 4)), ("finish", None)]
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["note"] == "text"

    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
    with pytest.raises(ImportError, match="pip install wandb"):
        MetricsLogger(str(tmp_path), tensorboard=False, wandb_config={})


@pytest.mark.parametrize("mode", ["full", "window"])
def test_per_turn_advantages_recorded_for_the_viewer(mode: str) -> None:
    import torch

    from agentrl.learn.batch import make_batch
    from agentrl.run.viewer import record_turn_advantages
    from agentrl.types import Trajectory, Turn

    def turn(n: int) -> Turn:
        return Turn(observation="o", context_ids=[7, 7], action_ids=[5] * n, logprobs=[-1.0] * n)

    trajs = [Trajectory("a", "g", "e", 0, mode, [turn(2), turn(1)]),
             Trajectory("b", "g", "e", 0, mode, [turn(3), turn(0)])]
    batch = make_batch(trajs)
    # Token advantage = 10 * (turn table index) + position in the row, so each turn's mean is
    # checkable by hand: turn-table rows are a0, a1, b0, b1.
    pos = torch.arange(batch.input_ids.shape[1]).float().expand_as(batch.loss_mask)
    batch.advantages = (10 * batch.turn_id.clamp(min=0) + pos) * batch.loss_mask
    record_turn_advantages(batch)
    if mode == "full":
        # a: [7 7 5 5 | 7 7 5]: turn 0 at positions 2,3 -> 2.5; turn 1 at 6 -> 10 + 6 = 16
        # b: [7 7 5 5 5 | 7 7]: turn 0 at 2,3,4 -> 20 + 3 = 23; turn 1 has no tokens
        assert trajs[0].extra["advantages"] == [2.5, 16.0]
        assert trajs[1].extra["advantages"] == [23.0, None]
    else:
        # one row per turn, [7 7 5 ...]: a0 -> (2+3)/2, a1 -> 10+2, b0 -> 20+3, b1 -> none
        assert trajs[0].extra["advantages"] == [2.5, 12.0]
        assert trajs[1].extra["advantages"] == [23.0, None]
