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


EVAL_SMALL = ["policy.tiny_corpus_episodes=4", "eval.episodes=12",
              "env.eval_kwargs={split: eval, num_games: 4}"]


def test_custom_policy_is_an_eval_baseline(tmp_path) -> None:
    """A random-admissible backend from outside agentrl, as an `agentrl eval` baseline: every
    action admissible, logprobs that are its own (log 1/#actions per reply), reproducible per
    sampler seed."""
    import math

    from agentrl.types import read_jsonl
    from examples import custom_policy

    (name, s), = custom_policy.main(EVAL_SMALL, out=str(tmp_path / "a"))
    assert name == "untrained:quickstart" and s["episodes"] == 12
    assert s["invalid_action_rate"] == 0.0 and 0.0 <= s["success_rate"] <= 1.0
    trajs = read_jsonl(str(tmp_path / "a" / "untrained_quickstart_trajectories.jsonl"))
    checked = 0
    for t in trajs:
        for prev, turn in zip(t.turns, t.turns[1:]):  # a turn's actions: the previous info's
            n = len(set(prev.info["admissible_actions"]))
            assert math.isclose(sum(turn.logprobs), -math.log(n), abs_tol=1e-9)
            checked += 1
    assert checked > 10
    (_, again), = custom_policy.main(EVAL_SMALL, out=str(tmp_path / "b"))
    assert again == s
    other = read_jsonl(str(tmp_path / "b" / "untrained_quickstart_trajectories.jsonl"))
    assert [[u.action for u in t.turns] for t in other] == [[u.action for u in t.turns]
                                                            for t in trajs]


def test_custom_pool_trains_like_the_inprocess_pool(tmp_path) -> None:
    """A thread-pool EnvPool from outside agentrl plays exactly the episodes the built-in
    in-process pool plays (same seeds, same policy), and a whole training run uses it."""
    from agentrl.config import load_config
    from agentrl.trainer import Trainer
    from examples import custom_pool

    small = ["env.kwargs={level: 3, split: train, num_games: 2}", "env.train_seeds=2",
             "env.eval_kwargs={split: eval, num_games: 2}", "rollout.groups=2",
             "rollout.group_size=2", "rollout.max_turns=4", "eval.episodes=2", "eval.every=0",
             "policy.tiny_corpus_episodes=2", "log.tensorboard=false", f"output_dir={tmp_path}"]
    runs = []
    for pool in ("examples.custom_pool:ThreadPool", "inprocess"):
        tr = Trainer(load_config(None, small + [f"env.pool={pool}", f"run_name={pool[:8]}",
                                                "eval.before_training=false"]))
        assert type(tr.pool).__name__ == ("ThreadPool" if ":" in pool else "InProcessPool")
        tr.engine.policy.seed(0)
        trajs = tr.engine.run([0, 1, 0, 1])
        runs.append([(t.seed, [u.observation for u in t.turns], [u.action for u in t.turns])
                     for t in trajs])
        tr.close()
    assert runs[0] == runs[1]
    out = custom_pool.main(small + ["train.iterations=1", "run_name=tp"])
    assert 0.0 <= out["final"]["success_rate"] <= 1.0


def test_real_model_example_runs_its_config_end_to_end(tmp_path) -> None:
    """The SmolLM2 example's own config (full chat context, constrained tags, eval at its own
    temperature) with the tiny model in place of SmolLM2 and a tiny budget."""
    import json

    from examples import real_model

    out = real_model.main([
        f"output_dir={tmp_path}", "policy.model=tiny", "policy.tiny_corpus_episodes=2",
        "train.iterations=1", "env.kwargs={level: 3, split: train, num_games: 2}",
        "env.eval_kwargs={split: eval, num_games: 2}", "env.train_seeds=2", "rollout.groups=1",
        "rollout.group_size=2", "eval.episodes=2", "eval.every=0", "log.tensorboard=false"])
    assert 0.0 <= out["after"]["success_rate"] <= 1.0 and out["peak_rss_gib"] > 0
    saved = json.load(open(os.path.join(out["run_dir"], "result.json")))
    assert saved["after"]["episodes"] == 2


def test_custom_game_example_checks_and_trains(tmp_path) -> None:
    from examples import custom_game

    out = custom_game.main([f"output_dir={tmp_path}", "train.iterations=2", "eval.episodes=10",
                            "log.tensorboard=false", "rollout.groups=2", "policy.tiny_hidden=32",
                            "policy.tiny_layers=1", "policy.tiny_vocab=300"])
    games = out["final"]["games"]["all"]
    assert games["n"] == 10 and games["wins"] + games["draws"] + games["losses"] == 10
