"""The examples run end to end with tiny budgets."""

from __future__ import annotations

import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def test_custom_env_example_trains(tmp_path) -> None:
    from examples import custom_env

    out = custom_env.main([f"output_dir={tmp_path}", "train.iterations=2", "eval.episodes=10",
                           "log.tensorboard=false"])
    assert 0.0 <= out["final"]["success_rate"] <= 1.0


def test_custom_algorithm_loads_by_module_path(tmp_path) -> None:
    from agentrl.config import load_config
    from examples import custom_algorithm

    cfg = load_config(None, ["algorithm.name=examples.custom_algorithm:REINFORCE",
                             "algorithm.normalize=true"])
    assert cfg.algorithm.normalize is True
    out = custom_algorithm.main([
        f"output_dir={tmp_path}", "train.iterations=1", "log.tensorboard=false",
        "env.kwargs={level: 3, split: train, num_games: 2}",
        "env.eval_kwargs={split: eval, num_games: 2}", "env.train_seeds=2",
        "rollout.groups=2", "rollout.group_size=2", "rollout.max_turns=4", "eval.episodes=2",
        "eval.every=0", "policy.tiny_corpus_episodes=2"])
    assert "final" in out


def test_rank_algorithms_statistics_hand_computed() -> None:
    from examples.benchmarks import rank_algorithms as rank

    def run(name: str, seed: int, curve: list[float]) -> dict:
        return {"algorithm": name, "seed": seed, "seconds": 1.0, "train_success": [],
                "evals": [(10 * i, s, 200) for i, s in enumerate(curve)]}

    # GRPO finals [.2, .4], GiGPO [.5, .5]; paired differences [.3, .1]: mean .2, sd .141421,
    # 95% t (1 df, 12.706) half-width 12.706·.141421/√2 = 1.2706. Curve areas (evaluations
    # after iteration 0): GRPO [.15, .3], GiGPO [.4, .5] -> differences [.25, .2], mean .225,
    # sd .035355 -> half-width 12.706·.035355/√2 = .31765
    res = [run("grpo", 0, [0, .1, .2]), run("grpo", 1, [0, .2, .4]),
           run("gigpo", 0, [0, .3, .5]), run("gigpo", 1, [.1, .5, .5])]
    rows = {r["algorithm"]: r for r in rank.summarize(res, ["grpo", "gigpo"])}
    assert rows["gigpo"]["final_vs_grpo"][0] == pytest.approx(0.2)
    assert rows["gigpo"]["final_vs_grpo"][1] == pytest.approx(1.2706, abs=1e-4)
    assert rows["gigpo"]["area_vs_grpo"][0] == pytest.approx(0.225)
    assert rows["gigpo"]["area_vs_grpo"][1] == pytest.approx(0.31765, abs=1e-4)
    assert rows["grpo"]["final"][0] == pytest.approx(0.3) and "final_vs_grpo" not in rows["grpo"]
    assert "PARTIAL" not in rank.table(rank.summarize(res, ["grpo"]), "header")


def test_rank_algorithms_runs_and_resumes(tmp_path) -> None:
    from examples.benchmarks import rank_algorithms as rank

    args = ["--algorithms", "grpo", "gigpo", "--seeds", "0", "--level", "3", "--iterations", "1",
            "--groups", "1", "--group-size", "2", "--max-turns", "3", "--eval-every", "0",
            "--eval-episodes", "2", "--train-games", "2", "--out", str(tmp_path)]
    text = rank.main(args)
    assert "| gigpo | 1 |" in text and "PARTIAL" not in text
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert len(lines) == 2
    # a rerun skips finished runs; asking for a seed more reports PARTIAL without running it
    assert "PARTIAL" in rank.main(args[:4] + ["0", "1", "--report-only"] + args[5:])
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 2


def test_custom_game_example_checks_and_trains(tmp_path) -> None:
    from examples import custom_game

    out = custom_game.main([f"output_dir={tmp_path}", "train.iterations=2", "eval.episodes=10",
                            "log.tensorboard=false", "rollout.groups=2", "policy.tiny_hidden=32",
                            "policy.tiny_layers=1", "policy.tiny_vocab=300"])
    games = out["final"]["games"]["all"]
    assert games["n"] == 10 and games["wins"] + games["draws"] + games["losses"] == 10
