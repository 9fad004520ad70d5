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
