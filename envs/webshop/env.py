"""`WebShopEnv`: WebShop (Yao et al., NeurIPS 2022) as a text env, written from scratch.

Pages and buttons follow WebShop's text mode with the ``simple`` observation format (visible
texts joined by `` [SEP] ``):

- search page: ``WebShop [SEP] Instruction: [SEP] <goal> [SEP] Search``; act with
  ``search[<query>]``;
- results: ``Back to Search``, ``Page p (Total results: n)``, ``< Prev`` / ``Next >``, then per
  product ``ASIN [SEP] title [SEP] price`` (10 per page, at most 50 BM25 hits);
- item: ``Back to Search``, ``< Prev`` (to the results), each option group's name and values,
  title, ``Price:``, ``Rating:``, ``Description``, ``Features``, ``Reviews``, ``Buy Now``;
- sub-pages (description, features, reviews): ``Back to Search``, ``< Prev`` (to the item).

``click[<button text>]`` is case-insensitive; clicking an option value selects it (the page does
not change, as in WebShop's simple text). ``Buy Now`` ends the episode with WebShop's score
(see `reward.get_reward`). Reward is ``success_reward * (score == 1)`` (verl-agent's 10 x
success) or, with ``reward_mode="score"``, the raw score; ``info["score"]`` always holds it.

Differences from the original, on purpose: ``search[...]`` is accepted only on the search page
(where ``admissible_actions`` offers it; WebShop's server also took it elsewhere); the type
match uses content words instead of spaCy nouns; the score is capped at 1.0.

Data: ``data_path`` points at WebShop's released files; without it a catalogue is generated
(`catalog.generate`) and cached under ``cache_dir()/webshop``.
"""

from __future__ import annotations

import json
import os
from typing import Any

from agentrl.cache import cache_dir
from agentrl.envs.base import TextEnv
from agentrl.envs.webshop.catalog import ensure_generated
from agentrl.envs.webshop.data import PRODUCTS_PER_PAGE, Store, load_store, strip_price_clause
from agentrl.envs.webshop.reward import get_reward

SEP = " [SEP] "
BACK_TO_SEARCH, PREV_PAGE, NEXT_PAGE, BUY_NOW = "Back to Search", "< Prev", "Next >", "Buy Now"
SUB_PAGES = ("Description", "Features", "Reviews")
DEFAULT_NUM_PRODUCTS = 3000

_STORES: dict[tuple[Any, ...], Store] = {}

def tool_schemas() -> list[dict[str, Any]]:
    """The actions as JSON-schema function tools (``info["tools"]`` at reset, for
    ``rollout.action_format=tool_call``): a call ``name(param=value)`` is ``name[value]``. A
    new list each call, so a caller may change its copy."""
    return [
        {"type": "function", "function": {
            "name": "search", "description": "Search the store (only on the search page).",
            "parameters": {"type": "object", "properties": {"query": {
                "type": "string", "description": "search keywords"}}, "required": ["query"]}}},
        {"type": "function", "function": {
            "name": "click", "description": "Click a button, product or option on the page.",
            "parameters": {"type": "object", "properties": {"button": {
                "type": "string", "description": "the clickable text, e.g. 'Buy Now' or a "
                "product id"}}, "required": ["button"]}}},
    ]


def get_store(data_path: str | None = None, num_products: int | None = None,
              catalog_seed: int = 0, human_goals: bool = True,
              num_test_goals: int = 500) -> Store:
    """The catalogue store for these settings, loaded (and for the generated catalogue,
    generated) once per process."""
    if data_path is None:
        n = num_products or DEFAULT_NUM_PRODUCTS
        data_path = ensure_generated(os.path.join(cache_dir(), "webshop"), catalog_seed, n)
        num_products = None
    key = (os.path.realpath(data_path), num_products, human_goals, num_test_goals)
    if key not in _STORES:
        _STORES[key] = load_store(data_path, num_products, human_goals, num_test_goals)
    return _STORES[key]


def prepare(kwargs: dict[str, Any], seeds: list[int] | None = None) -> None:
    """Generate the catalogue a run's envs will load (once, cached), announcing it; real
    WebShop data (``data_path``) needs nothing. ``seeds`` is unused: all goals share it."""
    from agentrl.envs.webshop.catalog import generated_path
    from agentrl.progress import phase

    if kwargs.get("data_path") is not None:
        return
    root = os.path.join(cache_dir(), "webshop")
    n = kwargs.get("num_products") or DEFAULT_NUM_PRODUCTS
    seed = kwargs.get("catalog_seed", 0)
    if generated_path(root, seed, n)[1]:
        return
    with phase(f"generating the WebShop catalogue ({n} products, seed {seed}) in {root}",
               kept="nothing (the catalogue is written whole or not at all)"):
        ensure_generated(root, seed, n)


def parse_action(action: str) -> tuple[str, str] | None:
    """``"click[Buy Now]"`` -> ``("click", "buy now")``; None if it is not ``name[arg]``."""
    a = action.strip()
    i, j = a.find("["), a.rfind("]")
    if i <= 0 or j != len(a) - 1 or j <= i + 1:
        return None
    name, arg = a[:i].strip().lower(), a[i + 1: j].strip().lower()
    if name not in ("search", "click") or not arg:
        return None
    return name, arg


class WebShopEnv(TextEnv):
    """WebShop shopping tasks: find the product the instruction describes and buy it.

    Args:
        data_path: folder with WebShop's data files; None = the generated catalogue.
        split: ``train`` or ``test`` (the first ``num_test_goals`` shuffled goals).
        num_products: catalogue size (generated: default 3000; real data: the first N).
        catalog_seed: seed of the generated catalogue.
        human_goals: human-style instructions (WebShop default) or synthetic ones.
        num_test_goals: held-out goals (capped at a fifth of all goals).
        success_reward: reward for a perfect purchase in ``success`` mode (verl-agent: 10).
        reward_mode: ``success`` (success_reward x [score == 1]) or ``score`` (raw score).
        concrete_search: the search page lists ``search[<the instruction>]`` as its admissible
            action (its price clause cut off) instead of the template ``search[<query>]``,
            for agents that choose among
            admissible actions (constrained decoding) rather than write a query; other
            queries stay valid.
    """

    def __init__(self, data_path: str | None = None, split: str = "train",
                 num_products: int | None = None, catalog_seed: int = 0,
                 human_goals: bool = True, num_test_goals: int = 500,
                 success_reward: float = 10.0, reward_mode: str = "success",
                 concrete_search: bool = False, render_mode: str | None = None) -> None:
        super().__init__(render_mode=render_mode)
        if reward_mode not in ("success", "score"):
            raise ValueError(f"reward_mode must be 'success' or 'score', not {reward_mode!r}")
        self.store = get_store(data_path, num_products, catalog_seed, human_goals,
                               num_test_goals)
        self.goals = self.store.split(split)
        if not self.goals:
            raise ValueError(f"the {split!r} split has no goals; use a larger catalogue")
        self.split, self.success_reward, self.reward_mode = split, success_reward, reward_mode
        self.concrete_search = concrete_search
        self.goal: dict[str, Any] = self.goals[0]
        self._go_search()
        self.done, self.score, self.score_details = False, 0.0, {}

    # ------------------------------------------------------------------ state transitions

    def _go_search(self) -> None:
        self.page, self.keywords, self.results, self.page_num = "search", "", [], 1
        self.asin: str | None = None
        self.options: dict[str, str] = {}
        self.sub_page = ""

    def _go_results(self, page_num: int) -> None:
        self.page, self.page_num, self.asin, self.options = "results", page_num, None, {}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[str, dict[str, Any]]:
        """Start goal ``seed % len(goals)`` (``options={"goal_index": i}`` picks one directly)."""
        super().reset(seed=seed)
        if options and "goal_index" in options:
            idx = int(options["goal_index"]) % len(self.goals)
        elif seed is not None:
            idx = seed % len(self.goals)
        else:
            idx = int(self.np_random.integers(len(self.goals)))
        self.goal = self.goals[idx]
        self._go_search()
        self.done, self.score, self.score_details = False, 0.0, {}
        body = self._body()
        obs = self._observation(body)
        self._last_obs = obs
        return obs, {**self._info(True, body), "tools": tool_schemas()}

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        """Apply ``search[...]`` or ``click[...]``; anything else is a no-op invalid step."""
        parsed = parse_action(action) if isinstance(action, str) else None
        valid = False
        if parsed is not None and not self.done:
            valid = self._apply(*parsed)
        reward = 0.0
        if valid and self.done:
            success = self.score >= 1.0
            reward = (self.success_reward * float(success) if self.reward_mode == "success"
                      else self.score)
        body = self._body()  # the page's texts: the observation and the state key
        obs = self._observation(body)
        self._last_obs = obs
        return obs, reward, self.done, False, self._info(valid, body)

    def _apply(self, name: str, arg: str) -> bool:
        if name == "search":
            if self.page != "search":
                return False
            self.keywords = arg
            self.results = self.store.search(arg)
            self._go_results(1)
            return True
        buttons = self._clickables()
        if arg not in buttons:
            return False
        kind, value = buttons[arg]
        if kind == "back":
            self._go_search()
        elif kind == "next":
            self._go_results(self.page_num + 1)
        elif kind == "prev":
            if self.page == "results":
                self._go_results(self.page_num - 1)
            elif self.page == "item":  # back to the results page it came from
                self._go_results(self.page_num)
            else:  # sub-page -> item page, options kept
                self.page = "item"
        elif kind == "product":
            self.page, self.asin, self.options = "item", value, {}
        elif kind == "option":
            group, val = value.split("\x00", 1)
            self.options[group] = val
        elif kind == "sub":
            self.page, self.sub_page = "sub", value
        elif kind == "buy":
            self._buy()
        return True

    def _buy(self) -> None:
        assert self.asin is not None
        product = self.store.by_asin[self.asin]
        self.score, self.score_details = get_reward(
            product, self.goal, self.store.prices[self.asin], dict(self.options))
        self.page, self.done = "done", True

    # ------------------------------------------------------------------ rendering

    def _page_products(self) -> list[str]:
        start = (self.page_num - 1) * PRODUCTS_PER_PAGE
        return self.results[start: start + PRODUCTS_PER_PAGE]

    def _clickables(self) -> dict[str, tuple[str, str]]:
        """Lower-cased button text -> (kind, payload), for the buttons on the current page."""
        out: dict[str, tuple[str, str]] = {}
        if self.page in ("results", "item", "sub"):
            out[BACK_TO_SEARCH.lower()] = ("back", "")
        if self.page == "results":
            if self.page_num > 1:
                out[PREV_PAGE.lower()] = ("prev", "")
            if self.page_num * PRODUCTS_PER_PAGE < len(self.results):
                out[NEXT_PAGE.lower()] = ("next", "")
            for asin in self._page_products():
                out[asin.lower()] = ("product", asin)
        elif self.page == "item":
            out[PREV_PAGE.lower()] = ("prev", "")
            product = self.store.by_asin[self.asin or ""]
            # Later groups win a shared value, as WebShop's clickable map does.
            for group, values in product["options"].items():
                for v in values:
                    out[v] = ("option", f"{group}\x00{v}")
            for s in SUB_PAGES:
                out[s.lower()] = ("sub", s)
            out[BUY_NOW.lower()] = ("buy", "")
        elif self.page == "sub":
            out[PREV_PAGE.lower()] = ("prev", "")
        return out

    def _body(self) -> list[str]:
        """The page's visible texts, without the instruction."""
        if self.page == "search":
            return ["Search"]
        if self.page == "done":
            return ["Thank you for shopping with us!", "Your code:",
                    "(Paste it in your MTurk interface.)", "Purchased", "asin", self.asin or "",
                    "options", json.dumps(self.options), "Your score (min 0.0, max 1.0)",
                    f"{self.score}"]
        texts = [BACK_TO_SEARCH]
        if self.page == "results":
            texts.append(f"Page {self.page_num} (Total results: {len(self.results)})")
            if self.page_num > 1:
                texts.append(PREV_PAGE)
            if self.page_num * PRODUCTS_PER_PAGE < len(self.results):
                texts.append(NEXT_PAGE)
            for asin in self._page_products():
                p = self.store.by_asin[asin]
                texts += [asin, p["Title"], p["Price"]]
            return texts
        p = self.store.by_asin[self.asin or ""]
        texts.append(PREV_PAGE)
        if self.page == "item":
            for group, values in p["options"].items():
                texts += [group, *values]
            texts += [p["Title"], f"Price: {p['Price']}", f"Rating: {p['Rating']}",
                      *SUB_PAGES, BUY_NOW]
        elif self.sub_page == "Description":
            texts.append(p["Description"])
        elif self.sub_page == "Features":
            texts += p["BulletPoints"]
        elif p["Reviews"]:
            for r in p["Reviews"]:
                texts += [f'"{r["title"]}"', str(r["score"]), r["body"]]
        else:
            texts.append("No reviews found")
        return texts

    def _observation(self, body: list[str] | None = None) -> str:
        """The page as text; ``body``: `_body`'s texts when the caller has them already."""
        instr = self.goal["instruction_text"]
        body = self._body() if body is None else body
        if self.page == "search":
            return SEP.join(["WebShop", "Instruction:", instr, *body])
        if self.page == "done":
            return SEP.join(body)
        return SEP.join(["Instruction:", instr, *body])

    def admissible_actions(self) -> list[str]:
        """``search[<query>]`` on the search page (``search[<instruction>]`` with
        ``concrete_search``), else ``click[...]`` for every button."""
        if self.page == "search":
            if self.concrete_search:
                # What a person would type: the instruction without its price clause.
                return [f"search[{strip_price_clause(self.goal['instruction_text'])}]"]
            return ["search[<query>]"]
        return [f"click[{b}]" for b in self._clickables()]

    def _info(self, valid: bool, body: list[str]) -> dict[str, Any]:
        """The step's info; ``body``: `_body`'s texts (the state key)."""
        info: dict[str, Any] = {
            "task_type": self.goal["category"],
            "task": self.goal["instruction_text"],
            "admissible_actions": [] if self.done else self.admissible_actions(),
            "state_key": SEP.join(body),
            "action_valid": valid,
            "success": bool(self.done and self.score >= 1.0),
            "score": float(self.score),
            "page": self.page,
        }
        if self.done:
            info["score_details"] = dict(self.score_details)
        return info
