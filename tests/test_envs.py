"""Every registered agentrl env passes the public conformance check."""

import pytest

import agentrl
from agentrl.registry import ENVS, load_builtin_envs
from agentrl.testing import check_env

load_builtin_envs()


@pytest.mark.parametrize("env_id", sorted(ENVS))
def test_registered_env_passes_check_env(env_id: str) -> None:
    env = agentrl.make_env(env_id, **ENVS[env_id].test_kwargs)
    try:
        check_env(env)
    finally:
        env.close()


def test_unknown_env_suggests_a_name() -> None:
    with pytest.raises(KeyError, match="did you mean"):
        agentrl.make_env("agentrl/TextWorld-CoinColector-v0")


def test_textworld_cached_transitions_equal_the_engine() -> None:
    import random

    from agentrl.envs import textworld_env

    cached = agentrl.make_env("agentrl/TextWorld-CoinCollector-v0", num_games=2, level=3)
    raw = agentrl.make_env("agentrl/TextWorld-CoinCollector-v0", num_games=2, level=3,
                           cache_transitions=False)
    rng = random.Random(0)
    for ep in range(12):  # repeated episodes: later ones are served from the cache
        a = cached.reset(seed=ep % 2)
        b = raw.reset(seed=ep % 2)
        assert a == b
        for _ in range(8):
            act = rng.choice(a[1]["admissible_actions"] + ["dance"])
            a, b = cached.step(act), raw.step(act)
            assert a == b
            a = (a[0], a[4])
            if b[2] or b[3]:
                break
    assert len(textworld_env._TRANSITIONS) > 0


def test_text_env_seeds_its_generator_as_gymnasium_does() -> None:
    import gymnasium as gym
    from gymnasium.utils import seeding

    from agentrl.envs.base import TextEnv

    class Draws(TextEnv):
        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            return "", {}

    class Eager(gym.Env):  # gymnasium's own seeding, built at reset
        pass

    lazy, eager = Draws(), Eager()
    for seed in (7, None, 3, None, None):
        lazy.reset(seed=seed)
        gym.Env.reset(eager, seed=seed)
        assert lazy.np_random.integers(0, 2**31, 4).tolist() == \
            eager.np_random.integers(0, 2**31, 4).tolist()
        assert lazy.np_random_seed == eager.np_random_seed
    fresh = Draws()
    fresh.reset(seed=11)  # never drawn from, then a seedless reset: still seed 11's stream
    fresh.reset()
    assert fresh.np_random.integers(0, 99, 3).tolist() == \
        seeding.np_random(11)[0].integers(0, 99, 3).tolist()
    with pytest.raises(gym.error.Error):
        fresh.reset(seed=-1)
