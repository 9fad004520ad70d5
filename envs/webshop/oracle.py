"""A privileged oracle for WebShop: it reads the goal and the catalogue, then acts only through
ordinary actions (search, page through results, open a product, pick options, buy).

It searches with the instruction's words, opens the first listed product that would score 1.0
with the goal's options (paging on when none is listed), selects those options and buys. When no
listed product can reach 1.0 it buys the best one on the last page. Used by tests and the
benchmark as an upper bound of what the env lets an agent achieve.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from agentrl.envs.webshop.data import PRODUCTS_PER_PAGE, strip_price_clause
from agentrl.envs.webshop.reward import (
    EXACT_MATCH_OPTIONS,
    get_reward,
    goal_option_values,
    normalize_color,
    token_set_ratio,
)


def best_options(product: dict[str, Any], goal: dict[str, Any]) -> dict[str, str]:
    """For each of the product's option groups, the value matching a goal option, if any."""
    goals = [normalize_color(o) for o in goal_option_values(goal)]
    chosen: dict[str, str] = {}
    for group, values in product["options"].items():
        for v in values:
            nv = normalize_color(v)
            if group in EXACT_MATCH_OPTIONS:
                ok = nv in goals
            else:
                ok = any(token_set_ratio(g, nv) > 85 for g in goals)
            if ok:
                chosen[group] = v
                break
    return chosen


def purchase_score(env: gym.Env, asin: str) -> float:
    """The score buying ``asin`` with `best_options` would get in ``env``'s current goal."""
    e = env.unwrapped
    p = e.store.by_asin[asin]
    return get_reward(p, e.goal, e.store.prices[asin], best_options(p, e.goal))[0]


def oracle_action(env: gym.Env) -> str:
    """The oracle's next action for the env's current page (stateless: reads the env)."""
    e = env.unwrapped
    if e.page == "search":
        return f"search[{strip_price_clause(e.goal['instruction_text'])}]"
    if e.page == "sub":
        return "click[< Prev]"
    if e.page == "results":
        listed = e._page_products()
        scores = [purchase_score(env, a) for a in listed]
        for asin, s in zip(listed, scores):
            if s >= 1.0:
                return f"click[{asin}]"
        if e.page_num * PRODUCTS_PER_PAGE < len(e.results):
            return "click[Next >]"
        if listed:
            return f"click[{listed[max(range(len(listed)), key=scores.__getitem__)]}]"
        return "click[Back to Search]"  # nothing found: the episode will time out
    if e.page == "item":
        product = e.store.by_asin[e.asin]
        for group, value in best_options(product, e.goal).items():
            if e.options.get(group) != value:
                return f"click[{value}]"
        return "click[Buy Now]"
    return "click[Buy Now]"  # done page: any action is a no-op


class WebShopExpert:
    """`oracle_action` as the env's registered expert (stateless: it reads the env's page)."""

    reset_options: dict[str, Any] = {}

    def __init__(self, env: gym.Env, info: dict[str, Any]) -> None:
        self.env = env

    def act(self, info: dict[str, Any]) -> str | None:
        return oracle_action(self.env)


def run_oracle_episode(env: gym.Env, seed: int, max_steps: int = 15) -> tuple[float, bool, int]:
    """Play one episode with the oracle; returns (score, success, steps)."""
    env.reset(seed=seed)
    info: dict[str, Any] = {}
    for t in range(1, max_steps + 1):
        _, _, term, trunc, info = env.step(oracle_action(env))
        if term or trunc:
            return float(info["score"]), bool(info["success"]), t
    return float(info.get("score", 0.0)), bool(info.get("success", False)), max_steps
