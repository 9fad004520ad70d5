"""Multi-agent training end to end on tic-tac-toe with a tiny model: self-play runs and dumps
both players' trajectories; a league snapshots the policy, plays its snapshots and keeps its
pool across a resume; `agentrl eval` plays opponents and fits Elo; the viewer shows a game's
players side by side."""

from __future__ import annotations

import json
import os
import re
import warnings
from typing import Any

import pytest
from helpers import browse

from agentrl.config import load_config
from agentrl.evaluate import EvalSettings, run_eval_command
from agentrl.evaluate.games import elo_ratings, rate_block
from agentrl.rollout.lineup import League
from agentrl.run import checkpoint
from agentrl.run.viewer import write_viewer
from agentrl.trainer import Trainer
from agentrl.types import read_jsonl

TINY = ["policy.tiny_hidden=32", "policy.tiny_layers=1", "policy.tiny_heads=2",
        "policy.tiny_corpus_episodes=30", "policy.tiny_vocab=400", "rollout.groups=3",
        "rollout.group_size=2", "train.iterations=2", "train.checkpoint_every=1",
        "train.keep_checkpoints=3", "eval.episodes=8", "eval.every=0", "log.progress=false",
        "log.trajectories_every=1", "log.tensorboard=false", "log.trajectories_per_dump=64"]
CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                      "tictactoe_selfplay.yaml")


def _train(root: str, name: str, *extra: str, resume: str | None = None) -> dict[str, Any]:
    cfg = load_config(CONFIG, TINY + [f"output_dir={root}", f"run_name={name}", *extra])
    return Trainer(cfg, resume=resume is not None, run_dir=resume).train()


@pytest.fixture(scope="module")
def selfplay(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _train(str(tmp_path_factory.mktemp("runs")), "sp")


def test_self_play_dumps_both_players_and_game_metrics(selfplay: dict[str, Any]) -> None:
    run = selfplay["run_dir"]
    trajs = read_jsonl(os.path.join(run, "trajectories", "iter_00001.jsonl"))
    games: dict[str, list[str]] = {}
    for t in trajs:
        games.setdefault(t.episode_id, []).append(t.role)
        assert not t.player and t.outcome in ("win", "draw", "loss")
    assert len(games) == 6 and all(sorted(r) == ["player_1", "player_2"]
                                   for r in games.values())
    rows = [r for x in open(os.path.join(run, "metrics.jsonl"))
            if "rollout/episodes" in (r := json.loads(x))]
    assert len(rows) == 2  # self-play: every win is the other seat's loss
    assert all(abs(r["rollout/win_rate"] - r["rollout/loss_rate"]) < 1e-9 for r in rows)
    assert all(r["rollout/episodes"] == 12 for r in rows)  # 6 games, both seats trained
    final = json.load(open(os.path.join(run, "eval", "final.json")))
    g = final["games"]["all"]  # against the env's random player (eval_kwargs)
    assert g["n"] == 8 and g["wins"] + g["draws"] + g["losses"] == 8
    assert final["success_rate"] == g["win"]


def test_league_snapshots_play_and_survive_resume(tmp_path) -> None:
    out = _train(str(tmp_path), "lg", "multiagent.opponent=league", "multiagent.league_every=1",
                 "multiagent.league_size=2", "multiagent.league_self_play=0")
    run = out["run_dir"]
    assert sorted(os.listdir(os.path.join(run, "league"))) == ["iter_0", "iter_1", "iter_2"]
    trajs = read_jsonl(os.path.join(run, "trajectories", "iter_00002.jsonl"))
    mine = [t for t in trajs if not t.player]
    theirs = [t for t in trajs if t.player]
    assert len(mine) == len(theirs) == 6  # each game: the trained seat and a snapshot's
    assert {t.player for t in theirs} <= {"league:iter_0", "league:iter_1"}
    rows = [r for x in open(os.path.join(run, "metrics.jsonl"))
            if "rollout/episodes" in (r := json.loads(x))]
    assert len(rows) == 2 and all(r["rollout/episodes"] == 6 for r in rows)  # snapshots' trajectories not trained
    # resume: the pool (newest 2) comes back from the checkpoint
    cfg = load_config(os.path.join(run, "config.yaml"), ["train.iterations=3"])
    tr = Trainer(cfg, resume=True, run_dir=run)
    assert isinstance(tr.lineup, League)
    assert [os.path.basename(p) for p in tr.lineup.paths] == ["iter_1", "iter_2"]
    assert [p.name for p in tr.lineup.players] == ["league:iter_1", "league:iter_2"]
    tr.close()


def test_eval_plays_opponents_and_fits_elo(selfplay: dict[str, Any], tmp_path, capsys) -> None:
    cps = checkpoint.list_checkpoints(selfplay["run_dir"])
    assert len(cps) >= 2
    results = run_eval_command(cps[-2:], settings=EvalSettings(seeds=list(range(6))),
                               opponents=["random", "heuristic"], elo=True,
                               out=str(tmp_path), progress=False)
    assert [n for n, _ in results] == ["sp@step_1 vs random", "sp@step_1 vs heuristic",
                                       "sp@step_2 vs random", "sp@step_2 vs heuristic"]
    for _, s in results:
        assert s["games"]["all"]["n"] == 6 and s["opponent"] in ("random", "heuristic")
    printed = capsys.readouterr().out
    assert "win or draw (95% CI)" in printed and "Elo" in printed
    elo = json.load(open(tmp_path / "elo.json"))
    assert set(elo["ratings"]) == {"sp@step_1", "sp@step_2", "random", "heuristic"}
    assert "sp@step_1 vs sp@step_2" in elo["pairs"] and sum(elo["pairs"]["sp@step_1 vs sp@step_2"]) == 6
    assert abs(sum(elo["ratings"].values()) / 4 - 1000) < 0.5
    md = (tmp_path / "eval.md").read_text()
    assert "win or draw" in md


def test_elo_and_rates_by_hand() -> None:
    # a beats b 3 games to 1 (no prior): gamma_a / gamma_b = 3, so 400 log10(3) = 190.8 apart
    r = elo_ratings({("a", "b"): (3, 0, 1)}, prior_draws=0.0)
    assert r["a"] - r["b"] == pytest.approx(190.8, abs=0.1) and r["a"] + r["b"] == 2000
    # even results rate equally; a chain a > b > c orders them
    assert elo_ratings({("a", "b"): (2, 2, 2)}) == {"a": 1000.0, "b": 1000.0}
    chain = elo_ratings({("a", "b"): (6, 0, 2), ("b", "c"): (6, 0, 2)})
    assert chain["a"] > chain["b"] > chain["c"]
    b = rate_block(["win", "draw", "loss", "win"])
    assert (b["win"], b["draw"], b["loss"], b["win_or_draw"], b["score"]) == (0.5, 0.25, 0.25,
                                                                               0.75, 0.625)


def test_viewer_shows_a_game_side_by_side(selfplay: dict[str, Any]) -> None:
    path = write_viewer(selfplay["run_dir"])
    dom = browse("file://" + os.path.abspath(path), "--dump-dom").stdout
    assert 'class="episode game"' in dom
    card = dom[dom.index('class="episode game"'):]
    card = card[:card.index("</details>")]
    assert re.search(r"<th>player_1</th><th>player_2</th>", card)
    # rows in game order: move 0 in player_1's column, move 1 in player_2's
    assert re.search(r'<td class="num">0</td><td class="reply">', card)
    assert re.search(r'<td class="num">1</td><td></td><td class="reply">', card)


def test_opponent_mistakes_say_what_to_do(selfplay: dict[str, Any]) -> None:
    from agentrl.config import ConfigError
    from agentrl.evaluate import EvalError

    with pytest.raises(ConfigError, match=r"set env.kwargs=\{opponent: random\}"):
        load_config(CONFIG, ["multiagent.opponent=random"])
    with pytest.raises(EvalError, match="not a checkpoint, run or model directory"):
        run_eval_command([selfplay["run_dir"]], opponents=["no/such/run"],
                         settings=EvalSettings(seeds=[0]), progress=False)


def test_a_greedy_elo_tournament_warns_that_its_games_repeat() -> None:
    """Greedy frozen players replay the same game for each seat assignment: --elo says so."""
    from types import SimpleNamespace

    from agentrl.evaluate.games import elo_tournament

    cfg = SimpleNamespace(eval=SimpleNamespace(greedy=False))
    targets = [SimpleNamespace(name=n, model_path=f"/m/{n}", cfg=cfg) for n in ("a", "b")]
    played: list[Any] = []

    def play(target: Any, settings: Any, progress: bool) -> tuple[dict[str, Any], list]:
        played.append((target.name, settings.opponent))
        return {"games": {"all": {"wins": 3, "draws": 0, "losses": 1}}}, []

    with pytest.warns(UserWarning, match="--sampled"):
        table = elo_tournament(targets, EvalSettings(greedy=True), [], play)
    assert played == [("a", "/m/b")] and table["pairs"] == {"a vs b": [3, 0, 1]}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        elo_tournament(targets, EvalSettings(greedy=False), [], play)
        elo_tournament(targets, EvalSettings(), [], play)  # the configs sample
