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
