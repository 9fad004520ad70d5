"""`agentrl eval`: a checkpoint, a run and an untrained config side by side on fixed seeds; the
JSON/Markdown it writes; determinism; and the summary arithmetic on hand-built episodes."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
import torch
from helpers import SMALL, train_tiny_run

from agentrl.cli import main
from agentrl.config import load_config
from agentrl.evaluate import (
    EvalError,
    EvalSettings,
    evaluate_target,
    parse_seeds,
    resolve_target,
    summarize,
    untrained_target,
)
from agentrl.run import checkpoint
from agentrl.trainer import Trainer
from agentrl.types import Trajectory, Turn


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return train_tiny_run(str(tmp_path_factory.mktemp("runs")))


def test_eval_cli_writes_table_json_and_markdown(run_dir: str, tmp_path, capsys) -> None:
    cp = checkpoint.latest(run_dir)
    out = tmp_path / "eval"
    rc = main(["eval", cp, run_dir, "--untrained", os.path.join(run_dir, "config.yaml"),
               "--seeds", "0-3", "--repeats", "2", "--sampled", "--out", str(out),
               "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    # Three columns: the checkpoint, the run (= its latest checkpoint) and the initial policy.
    header = printed.splitlines()[0].split()
    assert header == ["metric", "evalme@step_2", "evalme@step_2#2", "untrained:evalme"]
    for row in ("success rate (mean ± std, 2 repeats)", "95% CI (Wilson)", "pass@2",
                "task coin_collector", "score", "turns", "invalid-action rate", "ended: "):
        assert row in printed, row
    res = json.loads((out / "eval.json").read_text())["results"]
    assert [r["name"] for r in res] == ["evalme@step_2", "evalme@step_2#2", "untrained:evalme"]
    assert [r["kind"] for r in res] == ["checkpoint", "run", "untrained"]
    for r in res:
        assert r["seeds"] == [0, 1, 2, 3] and r["k"] == 2 and r["episodes"] == 8
        assert r["env_kwargs"] == {"level": 3, "split": "eval", "num_games": 2}  # held-out split
        assert r["greedy"] is False and isinstance(r["sampler_seed"], int)
        for key in ("success_rate", "std", "ci95", "pass_at_k", "repeat_success_rates",
                    "per_task_type", "score", "score_std", "return", "turns",
                    "invalid_action_rate", "response_length_hit_rate", "terminations"):
            assert key in r, key
        lo, hi = r["ci95"]
        assert 0 <= lo <= r["success_rate"] <= hi <= 1
        assert r["pass_at_k"] >= max(r["repeat_success_rates"])
        assert set(r["per_task_type"]) == {"coin_collector"}
        assert abs(sum(r["terminations"].values()) - 1) < 1e-9
    # A run directory means its latest checkpoint: same weights, same numbers.
    assert res[0]["success_rate"] == res[1]["success_rate"] and res[0]["turns"] == res[1]["turns"]
    md = (out / "eval.md").read_text()
    assert md.startswith("# agentrl eval") and "| metric | evalme@step_2 |" in md
    assert "| 95% CI (Wilson) |" in md and "## Settings" in md and "4 seeds 0..3" in md
    for name in ("evalme@step_2", "evalme@step_2_2", "untrained_evalme"):  # file-safe names
        lines = (out / f"{name}_trajectories.jsonl").read_text().splitlines()
        assert len(lines) == 8


def test_greedy_eval_is_deterministic(run_dir: str) -> None:
    target = resolve_target(checkpoint.latest(run_dir))
    s = EvalSettings(seeds=[0, 1, 2, 3], greedy=True)
    a, ta = evaluate_target(target, s)
    b, tb = evaluate_target(target, s)
    assert a == b
    assert [[u.action_ids for u in t.turns] for t in ta] == [[u.action_ids for u in t.turns]
                                                              for t in tb]


def test_eval_reproduces_the_trainers_own_evaluations(run_dir: str) -> None:
    # Defaults (config's eval split, seeds and sampler seed) = what the trainer ran: the final
    # checkpoint gives eval/final.json and the untrained config gives eval/before.json.
    keys = ("success_rate", "ci95", "return", "turns", "invalid_action_rate", "terminations",
            "per_task_type", "seeds")

    def saved(tag: str) -> dict[str, Any]:
        with open(os.path.join(run_dir, "eval", f"{tag}.json"), encoding="utf-8") as f:
            s = json.load(f)
        s["seeds"] = list(range(4))  # the trainer's files do not list them
        return s

    final, _ = evaluate_target(resolve_target(checkpoint.latest(run_dir)), EvalSettings())
    before, _ = evaluate_target(untrained_target(os.path.join(run_dir, "config.yaml")),
                                EvalSettings())
    final, before = json.loads(json.dumps(final)), json.loads(json.dumps(before))  # as on disk
    assert {k: final[k] for k in keys} == {k: saved("final")[k] for k in keys}
    assert {k: before[k] for k in keys} == {k: saved("before")[k] for k in keys}


def _traj(seed: int, repeat: int, success: bool, task_type: str, score: float | None = None,
          valid: tuple[bool, ...] = (True,), termination: str = "") -> Trajectory:
    turns = [Turn(observation="o", context_ids=[1], action_ids=[2], logprobs=[-0.1],
                  action_valid=v, reward=1.0 if success else 0.0) for v in valid]
    t = Trajectory(f"{seed}-{repeat}", f"g{seed}", "e", seed, "full", turns, task_type=task_type,
                   termination=termination or ("success" if success else "max_turns"),
                   success=success, score=score)
    t.extra["repeat"] = repeat
    return t


def test_summary_numbers_by_hand() -> None:
    # seeds 0..3, 2 repeats. Repeat 0: seeds 0,1 succeed (2/4); repeat 1: seed 0 only (1/4).
    wins = {(0, 0), (1, 0), (0, 1)}
    trajs = [_traj(s, r, (s, r) in wins, "a" if s < 2 else "b", score=0.5 * ((s, r) in wins),
                   valid=(True, s != 3))
             for r in range(2) for s in range(4)]
    m = summarize(trajs, repeats=2)
    assert m["episodes"] == 8 and m["success_rate"] == 3 / 8
    assert m["repeat_success_rates"] == [0.5, 0.25]
    assert m["std"] == pytest.approx(0.1767767, abs=1e-6)  # sample std of (0.5, 0.25): 0.25/√2
    assert m["pass_at_k"] == 0.5  # seeds 0 and 1 solved at least once out of 4
    a, b = m["per_task_type"]["a"], m["per_task_type"]["b"]
    assert a["success_rate"] == 3 / 4 and a["pass_at_k"] == 1.0 and a["n"] == 4
    assert b["success_rate"] == 0.0 and b["pass_at_k"] == 0.0 and b["ci95"][0] == 0.0
    # Wilson for 3/8 at z = 1.96: centre (0.375 + 1.9208/8) / 1.4802 = 0.4156, half 0.2889
    assert m["ci95"] == pytest.approx((0.1368, 0.6943), abs=1e-3)
    assert m["score"] == pytest.approx(1.5 / 8) and m["score_std"] == pytest.approx(0.0883883,
                                                                                     abs=1e-6)
    assert m["invalid_action_rate"] == 2 / 16  # seed 3's second turn, in both repeats
    assert m["turns"] == 2.0 and m["terminations"] == {"success": 3 / 8, "max_turns": 5 / 8}


def test_seed_parsing_and_bad_targets(tmp_path) -> None:
    assert parse_seeds("0-3") == [0, 1, 2, 3] and parse_seeds("1,5,9-11") == [1, 5, 9, 10, 11]
    for bad in ("", "3-1", "a"):
        with pytest.raises(EvalError):
            parse_seeds(bad)
    with pytest.raises(EvalError, match="not a checkpoint"):
        resolve_target(str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(EvalError, match="without a complete checkpoint"):
        resolve_target(str(tmp_path))
    assert main(["eval", "--seeds", "0-3"]) == 2  # nothing to evaluate: a message, exit 2


def test_eval_samples_at_eval_temperature_and_training_at_rollout_temperature(tmp_path) -> None:
    from agentrl.learn.batch import make_batch
    from agentrl.learn.forward import token_outputs
    from agentrl.types import read_jsonl

    cfg = load_config(None, SMALL + [f"output_dir={tmp_path}", "eval.temperature=0.4",
                                     "rollout.temperature=1.0", "eval.greedy=false"])
    tr = Trainer(cfg)
    try:
        assert tr.engine.sampling().temperature == 1.0
        assert tr.eval_engine.sampling().temperature == 0.4
        tr.run_eval("t")
        trajs = read_jsonl(os.path.join(tr.run_dir, "eval", "t_trajectories.jsonl"))
        b = make_batch(trajs, tr.tokenizer.pad_token_id)
        mask = b.loss_mask > 0

        def gap(t: float) -> float:
            with torch.no_grad():
                lp = token_outputs(tr.model, b.input_ids, b.attention_mask, b.loss_mask,
                                   b.allowed, t).logprobs
            return float((lp[mask] - b.old_logprobs[mask]).abs().max())

        assert gap(0.4) < 1e-5 < gap(1.0)  # the sampler's logprobs are those of T = 0.4
    finally:
        tr.close()


def test_eval_refuses_a_scripted_opponent_the_game_does_not_have(tmp_path, capsys) -> None:
    cfg = tmp_path / "ta.yaml"
    cfg.write_text("env: {id: agentrl/TextArena-TicTacToe-v0}\npolicy: {model: tiny}\n")
    rc = main(["eval", "--untrained", str(cfg), "--opponent", "random", "--seeds", "0-1",
               "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the tokenizer's progress
    assert rc == 2 and err.startswith("agentrl eval: ")
    assert "--opponent random: agentrl/TextArena-TicTacToe-v0 has no scripted opponents" in err


def test_an_evaluation_whose_episodes_all_failed_is_an_error(tmp_path, capsys) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("env: {id: test/Corridor-v0}\npolicy: {model: tiny, tiny_corpus_episodes: 2}\n")
    # an env kwarg the env does not take: every episode ends with env_error at its reset
    rc = main(["eval", "--untrained", str(cfg), "--env-kwargs", "no_such_kwarg=1",
               "--seeds", "0-2", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2 and err.startswith("agentrl eval: "), err
    assert "all 3 episodes failed in the env (env_error: " in err and "no_such_kwarg" in err


def test_the_trainers_eval_line_names_decoding_counts_and_self_play() -> None:
    from agentrl.evaluate import eval_line

    plain = {"episodes": 100, "k": 1, "success_rate": 0.85, "ci95": [0.77, 0.91], "turns": 4.0}
    assert eval_line("final", 40, plain, 100, greedy=False) == (
        "eval (final, iteration 40, sampled): success 0.850 (95% CI 0.77-0.91) over 100 "
        "held-out episodes, 4.0 turns")
    # a game against the env's scripted player: one seat per game is the policy's
    game = {**plain, "games": {"all": {"win": 0.5, "win_or_draw": 0.75}}}
    line = eval_line("final", 40, game, 100, greedy=True)
    assert "iteration 40, greedy)" in line and "over 100 held-out episodes" in line
    assert line.endswith("; win 0.500, win or draw 0.750")
    # self-play: both seats are the policy, 200 trajectories from 100 games
    selfplay = {**game, "episodes": 200}
    line = eval_line("final", 40, selfplay, 100, greedy=False)
    assert "over 100 held-out games (200 seats played by the policy)" in line
    assert "self-play: the policy holds every seat, so its success cannot show learning" in line
