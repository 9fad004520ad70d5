"""Checkpoint/resume through the trainer restores algorithm state exactly: EPO's per-turn
entropy history and SPEAR's replay buffer, baseline FIFO and schedules; a resumed run then ends
with the same state as an uninterrupted one."""

from __future__ import annotations

import json

import pytest

from agentrl.config import load_config
from agentrl.trainer import Trainer

SMALL = ["env.kwargs={level: 3, split: train, num_games: 2}", "train.lr_schedule=constant",
         "env.eval_kwargs={split: eval, num_games: 2}", "env.train_seeds=2",
         "rollout.groups=2", "rollout.group_size=3", "rollout.max_turns=6",
         "policy.tiny_corpus_episodes=4", "eval.episodes=2", "eval.every=0",
         "eval.before_training=false", "log.tensorboard=false", "log.progress=false",
         "train.checkpoint_every=1"]

ALGOS = {
    "epo": ["algorithm.name=epo", "algorithm.phase_total=4"],
    # a small replay so that the buffer fires (and its rng is used) within three iterations
    "spear": ["algorithm.name=spear", "algorithm.replay_size=2", "algorithm.replay_trigger=0.5",
              "algorithm.baseline_size=8"],
}


def _state(tr: Trainer) -> str:
    return json.dumps(tr.algorithm.state_dict(), sort_keys=True)


def _comparable(x):  # noqa: ANN001, ANN202
    """Trajectory ids are fresh random ids in every run, and wall-clock timings differ;
    everything else must match."""
    if isinstance(x, dict):
        return {k: _comparable(v) for k, v in x.items()
                if k not in ("trajectory_id", "episode_id", "seconds_generate", "seconds_env")}
    if isinstance(x, list):
        return [_comparable(v) for v in x]
    return x


@pytest.mark.parametrize("algo", sorted(ALGOS))
def test_resume_restores_algorithm_state_exactly(tmp_path, algo: str) -> None:
    def cfg(iters: int, name: str):  # noqa: ANN202
        return load_config(None, SMALL + ALGOS[algo] + [f"train.iterations={iters}",
                                                       f"output_dir={tmp_path}",
                                                       f"run_name={name}"])

    full = Trainer(cfg(3, "full"))
    full.train()
    part = Trainer(cfg(2, "part"))
    part.train()
    saved = _state(part)
    if algo == "epo":
        assert part.algorithm.hist_count and part.algorithm.iteration == 2
    else:
        # something to restore: stored samples and the P50 history
        assert part.algorithm.buffer and part.algorithm.baseline and part.algorithm.step == 2
    resumed = Trainer(cfg(3, "part"), resume=True, run_dir=part.run_dir)
    assert resumed.iteration == 2
    assert _state(resumed) == saved  # restored exactly from the checkpoint
    resumed.train()
    # and continues exactly as the uninterrupted run
    assert _comparable(json.loads(_state(resumed))) == _comparable(json.loads(_state(full)))
