"""The task sampler (``env.curriculum``): tasks near the middle are drawn most, solved tasks
retire, failures come back, and the state survives a checkpoint."""

from __future__ import annotations

import random
from collections import Counter

from agentrl.config import CurriculumConfig
from agentrl.rollout.curriculum import TaskSampler


def _trained(sampler: TaskSampler) -> TaskSampler:
    # task 0 always fails, 1 succeeds half the time, 2 always succeeds; 3.. never tried
    for _ in range(6):
        sampler.update([(0, False), (1, True), (1, False), (2, True)])
    return sampler


def test_uniform_draws_exactly_as_randrange() -> None:
    s = TaskSampler(CurriculumConfig(), 50)
    a, b = random.Random(3), random.Random(3)
    assert s.draw(8, a) == [b.randrange(50) for _ in range(8)]


def test_middle_tasks_are_drawn_most_and_solved_ones_retire() -> None:
    s = _trained(TaskSampler(CurriculumConfig(kind="success", revisit=0.0), 3))
    assert s.retired(2) and not s.retired(1) and not s.retired(0)
    # weights: p(1-p) + floor; task 1 sits near 0.5, task 0 near 0
    assert s.weight(1) > 5 * s.weight(0)
    rng = random.Random(0)
    counts = Counter(x for _ in range(2000) for x in s.draw(1, rng))
    assert counts[2] == 0  # retired, and revisit=0
    assert counts[1] > 4 * counts[0] > 0  # failures still come back, less often


def test_retired_tasks_get_the_revisit_share_and_unretire_on_failure() -> None:
    s = _trained(TaskSampler(CurriculumConfig(kind="success", revisit=0.25), 3))
    rng = random.Random(1)
    draws = [x for _ in range(4000) for x in s.draw(1, rng)]
    assert abs(draws.count(2) / len(draws) - 0.25) < 0.03
    s.update([(2, False)] * 3)
    assert not s.retired(2)


def test_untried_tasks_start_at_the_prior_and_one_draw_has_distinct_seeds() -> None:
    s = _trained(TaskSampler(CurriculumConfig(kind="success"), 100))
    draw = s.draw(10, random.Random(2))
    assert len(set(draw)) == 10
    assert sum(x >= 3 for x in draw) >= 7  # 97 untried tasks at p=0.5 outweigh the tried ones


def test_state_round_trips_and_draws_continue_identically() -> None:
    cfg = CurriculumConfig(kind="success")
    a = _trained(TaskSampler(cfg, 20))
    b = TaskSampler(cfg, 20)
    b.load_state_dict(a.state_dict())
    assert a.draw(6, random.Random(5)) == b.draw(6, random.Random(5))
    assert a.metrics() == b.metrics() and a.metrics()["curriculum/tasks_retired"] == 1.0


def test_a_run_checkpoints_its_sampler_and_resumes_it(tmp_path) -> None:
    from agentrl.config import load_config
    from agentrl.run import checkpoint
    from agentrl.trainer import Trainer

    over = ["env.kwargs={level: 3, split: train, num_games: 4}", "env.train_seeds=4",
            "env.eval_kwargs={split: eval, num_games: 2}", "policy.tiny_corpus_episodes=4",
            "eval.episodes=2", "eval.before_training=false", "log.tensorboard=false",
            "log.progress=false", "rollout.groups=2", "rollout.group_size=2",
            "env.curriculum={kind: success}", f"output_dir={tmp_path}", "run_name=c",
            "train.checkpoint_every=1"]
    run = Trainer(load_config(None, over + ["train.iterations=2"])).train()
    state = checkpoint.load_state(checkpoint.latest(run["run_dir"]))
    assert sum(state["curriculum"]["attempts"].values()) == 2 * 2 * 2  # 2 its x 2 groups x 2
    resumed = Trainer(load_config(None, over + ["train.iterations=3"]), resume=True,
                      run_dir=run["run_dir"])
    assert resumed.tasks.state_dict() == state["curriculum"]
    resumed.close()
