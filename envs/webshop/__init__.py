"""WebShop as an agentrl text env: a from-scratch re-implementation of WebShop's text mode and
reward, on WebShop's released data files or a generated catalogue in the same format.

    import agentrl
    env = agentrl.make_env("agentrl/WebShop-v0")                      # generated catalogue
    env = agentrl.make_env("agentrl/WebShop-v0", data_path="~/webshop/data")  # released data
"""

from agentrl.envs.webshop.env import WebShopEnv, get_store, parse_action

__all__ = ["WebShopEnv", "get_store", "parse_action"]
