"""Public test helpers for env authors: `check_env` runs gymnasium's checker plus text-env checks;
`check_multiagent_env` adds the multi-agent contract and PettingZoo's own API tests.

    from agentrl.testing import check_env
    check_env(agentrl.make_env("agentrl/MyEnv-v0"))
"""

from agentrl.testing.multiagent import check_multiagent_env
from agentrl.testing.textenv import NASTY_ACTIONS, EnvCheckError, check_env

__all__ = ["NASTY_ACTIONS", "EnvCheckError", "check_env", "check_multiagent_env"]
