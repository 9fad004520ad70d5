"""agentrl/WebShop-v0: WebShop's reward formula, pages and buttons, the data formats, the oracle."""

from __future__ import annotations

import json
from typing import Any

import pytest
import rank_bm25  # noqa: E402, F401  (a missing extra fails here: pip install -e '.[all]')

import agentrl  # noqa: E402
from agentrl.envs.webshop import catalog  # noqa: E402
from agentrl.envs.webshop.data import strip_price_clause  # noqa: E402
from agentrl.envs.webshop.env import parse_action  # noqa: E402
from agentrl.envs.webshop.oracle import (  # noqa: E402
    best_options,
    oracle_action,
    run_oracle_episode,
)
from agentrl.envs.webshop.reward import (  # noqa: E402
    get_reward,
    goal_option_values,
    normalize_color,
    option_matches,
    title_nouns,
    token_set_ratio,
    type_reward,
)

SMALL = {"num_products": 1000}


@pytest.fixture(scope="module")
def env() -> Any:
    e = agentrl.make_env("agentrl/WebShop-v0", **SMALL)
    yield e
    e.close()


# ----------------------------------------------------------------------------- reward


def _product(**kw: Any) -> dict[str, Any]:
    p = {"query": "deodorant", "product_category": "Beauty › Personal Care › Deodorants",
         "name": "Acme Deodorant Stick", "Title": "Acme Deodorant Stick",
         "Attributes": ["aluminum free", "long lasting"], "BulletPoints": ["gentle formula"],
         "Description": "smells nice"}
    p.update(kw)
    return p


GOAL = {"query": "deodorant", "product_category": "Beauty › Personal Care › Deodorants",
        "name": "Acme Deodorant Stick", "attributes": ["aluminum free", "sensitive skin"],
        "goal_options": ["lavender", "2.6 ounce"], "price_upper": 20.0}


def test_token_set_ratio_matches_thefuzz_by_hand() -> None:
    assert token_set_ratio("pack of 12", "12 pack of") == 100  # same word sets
    assert token_set_ratio("long lasting", "long lasting deodorant") == 100  # a subset
    # "black" vs "blue": LCS "bl" = 2 chars -> 100 * 2*2 / (5+4) = 44.4 -> 44
    assert token_set_ratio("black", "blue") == 44
    # "red shirt" vs "red dress": shared word "red". LCS("red shirt", "red dress") = 4 ("red ")
    # + 1 (one of "s"/"r") = 5 -> 100*2*5/(9+9) = 55.6; "red" vs "red shirt": 100*2*3/12 = 50.
    # The max, rounded: 56
    assert token_set_ratio("red shirt", "red dress") == 56
    assert token_set_ratio("", "anything") == 0


def test_normalize_color_takes_first_base_colour_in_list_order() -> None:
    assert normalize_color("black forest") == "black"
    assert normalize_color("violet lavender") == "lavender"  # "lavender" precedes "violet"
    assert normalize_color("navy blue") == "blue"  # "blue" precedes "navy"
    assert normalize_color("bright citrus") == "bright citrus"  # no base colour inside


def test_reward_hand_computed() -> None:
    # attributes: "aluminum free" matches; "sensitive skin" nowhere -> 1 of 2
    # options: scent lavender fuzzy-matches a goal option (1); size "3 ounce" is matched
    #   exactly and is not a goal option nor in the text (0) -> 1 of 2
    # price 15 <= 20 -> 1;  r_type = 1 (same query)
    # score = (1 + 1 + 1) / (2 + 2 + 1) = 0.6
    s, d = get_reward(_product(), GOAL, 15.0, {"scent": "lavender", "size": "3 ounce"})
    assert s == pytest.approx(0.6) and d["r_type"] == 1.0 and d["n_attr_matches"] == 1
    # the right size too: (1 + 2 + 1) / 5 = 0.8
    s, _ = get_reward(_product(), GOAL, 15.0, {"scent": "lavender", "size": "2.6 ounce"})
    assert s == pytest.approx(0.8)
    # over budget: (1 + 2 + 0) / 5 = 0.6
    s, d = get_reward(_product(), GOAL, 25.0, {"scent": "lavender", "size": "2.6 ounce"})
    assert s == pytest.approx(0.6) and d["r_price"] is False
    # no options chosen: (1 + 0 + 1) / 5 = 0.4
    assert get_reward(_product(), GOAL, 15.0, {})[0] == pytest.approx(0.4)
    # attribute found in the features text instead of the attribute list: (2 + 2 + 1) / 5 = 1
    p = _product(BulletPoints=["great for sensitive skin"])
    s, _ = get_reward(p, GOAL, 15.0, {"scent": "lavender", "size": "2.6 ounce"})
    assert s == 1.0


def test_type_reward_levels() -> None:
    other = _product(query="shampoo", product_category="Beauty › Hair Care › Shampoo",
                     name="Zed Shampoo Bottle")
    # no query match, breadcrumbs share only "Beauty" (< 2), no shared title noun -> 0
    assert type_reward(other, GOAL)["r_type"] == 0.0
    assert get_reward(other, GOAL, 1.0, {"scent": "lavender", "size": "2.6 ounce"})[0] == 0.0
    # goal title nouns {acme, deodorant, stick, travel, lavender}; bought shares "acme":
    # title_score = 1/5 = 0.2, not > 0.2 and no query/category match -> r_type 0.5
    goal = dict(GOAL, name="Acme Deodorant Stick Travel Lavender")
    assert title_nouns(goal["name"]) == {"acme", "deodorant", "stick", "travel", "lavender"}
    t = type_reward(_product(query="shampoo", product_category="Hair › Shampoo",
                             name="Acme Shampoo Bottle"), goal)
    assert t["title_score"] == pytest.approx(0.2) and t["r_type"] == 0.5
    # 11 goal nouns, 1 shared: title_score = 1/11 = 0.09 < 0.1 -> r_type 0.1, even with a
    # query match; the score is then (1 + 0 + 1) / (2 + 2 + 1) * 0.1 = 0.04
    goal = dict(GOAL, name="Acme Deodorant Stick Travel Lavender Citrus Rose Bottle Gift Box Spray")
    t = type_reward(_product(name="Acme Shampoo"), goal)
    assert t["title_score"] == pytest.approx(1 / 11) and t["r_type"] == 0.1
    assert get_reward(_product(name="Acme Shampoo"), goal, 1.0, {})[0] == pytest.approx(0.04)
    # breadcrumbs sharing two levels count as the same type
    t = type_reward(_product(query="antiperspirant", name="Zed Spray"), GOAL)
    assert t["category_match"] and t["r_type"] == 0.0  # ...but a title with no shared noun is 0


def test_score_is_capped_at_one() -> None:
    # Goal has 1 attribute and no options; choosing an option whose value is in the title adds
    # a match WebShop would count: (1 + 1 + 1) / (1 + 0 + 1) = 1.5 -> capped to 1.0
    goal = dict(GOAL, attributes=["aluminum free"], goal_options=[])
    assert get_reward(_product(), goal, 1.0, {"style": "stick"})[0] == 1.0


# ----------------------------------------------------------------------------- pages


def test_parse_action() -> None:
    assert parse_action("click[Buy Now]") == ("click", "buy now")
    assert parse_action(" Search[ red shoes ] ") == ("search", "red shoes")
    assert parse_action("click[a [b] c]") == ("click", "a [b] c")
    for bad in ("", "click[]", "buy now", "click[x] y", "jump[x]", "[x]"):
        assert parse_action(bad) is None


def test_search_page_and_state_key(env: Any) -> None:
    obs, info = env.reset(seed=7)
    goal = env.unwrapped.goal
    assert obs == f"WebShop [SEP] Instruction: [SEP] {goal['instruction_text']} [SEP] Search"
    assert info["admissible_actions"] == ["search[<query>]"]
    assert info["task"] == goal["instruction_text"] and info["task_type"] == goal["category"]
    assert info["state_key"] == "Search" and info["success"] is False
    assert "price lower than" in goal["instruction_text"]


def test_reset_seed_picks_goal_modulo(env: Any) -> None:
    n = len(env.unwrapped.goals)
    env.reset(seed=3)
    g = env.unwrapped.goal
    env.reset(seed=3 + n)
    assert env.unwrapped.goal is g


def test_pagination(env: Any) -> None:
    env.reset(seed=0)
    obs, _, _, _, info = env.step("search[black]")  # broad: the full 50 hits
    e = env.unwrapped
    assert len(e.results) == 50
    assert "Page 1 (Total results: 50)" in obs and "Next >" in obs and "< Prev" not in obs
    assert "click[next >]" in info["admissible_actions"]
    assert "click[< prev]" not in info["admissible_actions"]
    assert sum(f"click[{a.lower()}]" in info["admissible_actions"] for a in e.results[:10]) == 10
    assert f"click[{e.results[10].lower()}]" not in info["admissible_actions"]
    obs, _, _, _, info = env.step("click[Next >]")
    assert "Page 2 (Total results: 50)" in obs and "< Prev" in obs and e.results[10] in obs
    assert info["state_key"].startswith("Back to Search [SEP] Page 2")
    for _ in range(3):
        obs, *_ = env.step("click[next >]")
    assert "Page 5" in obs and "Next >" not in obs
    _, _, _, _, info = env.step("click[next >]")  # no next page: a no-op
    assert info["action_valid"] is False and e.page_num == 5
    obs, *_ = env.step("click[< prev]")
    assert "Page 4" in obs
    obs, _, _, _, info = env.step("click[back to search]")
    assert obs.endswith("[SEP] Search") and info["admissible_actions"] == ["search[<query>]"]


def test_item_options_subpages_and_prev(env: Any) -> None:
    env.reset(seed=1)
    e = env.unwrapped
    env.step("search[" + strip_price_clause(e.goal["instruction_text"]) + "]")
    asin = next(a for a in e.results[:10] if e.store.by_asin[a]["options"])
    obs, _, _, _, info = env.step(f"click[{asin}]")
    p = e.store.by_asin[asin]
    assert p["Title"] in obs and f"Price: {p['Price']}" in obs and obs.endswith("Buy Now")
    group, values = next(iter(p["options"].items()))
    assert f"[SEP] {group} [SEP] {values[0]}" in obs
    assert {"click[description]", "click[features]", "click[reviews]", "click[buy now]",
            "click[< prev]", "click[back to search]", f"click[{values[0]}]"} <= set(
        info["admissible_actions"])
    _, _, _, _, info = env.step(f"click[{values[-1].upper()}]")  # case-insensitive
    assert info["action_valid"] and e.options == {group: values[-1]}
    obs, *_ = env.step("click[Features]")
    assert p["BulletPoints"][0] in obs and "Buy Now" not in obs
    obs, *_ = env.step("click[< Prev]")  # back to the item, options kept
    assert obs.endswith("Buy Now") and e.options == {group: values[-1]}
    obs, *_ = env.step("click[Description]")
    assert p["Description"] in obs
    env.step("click[< Prev]")
    obs, *_ = env.step("click[< Prev]")  # item -> its results page
    assert "Page 1 (Total results:" in obs and e.options == {}


def test_bad_actions_are_invalid_noops(env: Any) -> None:
    obs0, _ = env.reset(seed=2)
    for a in ("", "buy now", "click[buy now]", "click[search]", "search[]", "click[]",
              "search black shoes", "x" * 10_000, "\x00\ufffd"):
        obs, r, term, trunc, info = env.step(a)
        assert (obs, r, term, info["action_valid"]) == (obs0, 0.0, False, False), a
    obs1, *_ = env.step("search[shoes]")
    obs, r, term, _, info = env.step("search[socks]")  # no search bar on the results page
    assert obs == obs1 and info["action_valid"] is False and not term
    obs, r, term, _, info = env.step("click[b0nonexist]")
    assert obs == obs1 and info["action_valid"] is False


def test_episode_ends_at_buy_now_with_reward_and_success(env: Any) -> None:
    env.reset(seed=4)
    total, info, term = 0.0, {}, False
    while not term:
        _, r, term, trunc, info = env.step(oracle_action(env))
        total += r
        assert not trunc
    assert info["score"] == 1.0 and info["success"] is True and total == 10.0
    assert info["admissible_actions"] == [] and info["score_details"]["r_type"] == 1.0
    obs, r, term, _, info = env.step("click[buy now]")  # after the end: an invalid no-op
    assert term and r == 0.0 and info["action_valid"] is False


def test_reward_mode_score_and_time_limit() -> None:
    env = agentrl.make_env("agentrl/WebShop-v0", reward_mode="score", success_reward=5.0,
                           **SMALL)
    env.reset(seed=5)
    e = env.unwrapped
    env.step("search[" + strip_price_clause(e.goal["instruction_text"]) + "]")
    env.step(f"click[{e.goal['asin']}]" if e.goal["asin"] in e.results[:10]
             else f"click[{e.results[0]}]")
    _, r, term, _, info = env.step("click[buy now]")  # no options chosen
    assert term and r == pytest.approx(info["score"]) and 0.0 <= r <= 1.0
    env.reset(seed=5)
    trunc = False
    for _ in range(15):
        _, _, term, trunc, info = env.step("click[nothing]")
    assert trunc and not term and info["success"] is False  # verl-agent's 15-step limit


# ----------------------------------------------------------------------------- oracle


def test_oracle_solves_at_least_95_percent(env: Any) -> None:
    results = [run_oracle_episode(env, seed) for seed in range(100)]
    rate = sum(ok for _, ok, _ in results) / len(results)
    assert rate >= 0.95, rate
    assert max(steps for *_, steps in results) <= 15


def test_oracle_on_the_test_split() -> None:
    env = agentrl.make_env("agentrl/WebShop-v0", split="test", **SMALL)
    train = agentrl.make_env("agentrl/WebShop-v0", **SMALL)
    test_goals, train_goals = env.unwrapped.goals, train.unwrapped.goals
    assert len(test_goals) == 200  # min(500, 1000 goals // 5)
    # one instruction per generated product, so held-out goals are held-out products
    assert not {g["asin"] for g in test_goals} & {g["asin"] for g in train_goals}
    rate = sum(run_oracle_episode(env, s)[1] for s in range(40)) / 40
    assert rate >= 0.95, rate


def test_wrong_product_or_options_score_less(env: Any) -> None:
    checked = 0
    for seed in range(40):
        env.reset(seed=seed)
        e = env.unwrapped
        target = e.store.by_asin[e.goal["asin"]]
        opts = best_options(target, e.goal)
        price = e.store.prices[target["asin"]]
        right = get_reward(target, e.goal, price, opts)[0]
        assert right == 1.0
        other = next(p for p in e.store.products if p["category"] != e.goal["category"])
        assert get_reward(other, e.goal, e.store.prices[other["asin"]],
                          best_options(other, e.goal))[0] < right
        if opts:  # the target without its options, or with a wrong value
            assert get_reward(target, e.goal, price, {})[0] < right
            group, value = next(iter(opts.items()))
            goal_opts = goal_option_values(e.goal)
            wrong = [v for v in target["options"][group]
                     if option_matches(target, goal_opts, {group: v}) == 0]
            if wrong:
                assert get_reward(target, e.goal, price, dict(opts, **{group: wrong[0]}))[0] < right
                checked += 1
    assert checked >= 10


# ----------------------------------------------------------------------------- data


def test_search_scores_equal_rank_bm25(env: Any) -> None:
    import numpy as np

    from agentrl.envs.webshop.data import tokenize

    store = env.unwrapped.store
    for g in store.goals[:20]:
        tokens = tokenize(g["instruction_text"])
        assert np.allclose(store.scores(tokens), store._bm25.get_scores(tokens))
    hits = store.search(strip_price_clause(store.goals[0]["instruction_text"]))
    assert 0 < len(hits) <= 50 and store.goals[0]["asin"] in hits


def test_generation_is_deterministic_and_in_webshop_format() -> None:
    a, b = catalog.generate(3, 60), catalog.generate(3, 60)
    assert a == b and catalog.generate(4, 60) != a
    p = a["products"][0]
    assert {"asin", "category", "query", "name", "product_category", "full_description",
            "small_description", "pricing", "images", "customization_options"} <= set(p)
    assert p["pricing"].startswith("$") and len(p["asin"]) == 10
    assert set(a["ins_v2"][p["asin"]]) == {"attributes", "instruction", "instruction_attributes"}
    (ins,) = a["human_ins"][p["asin"]]
    assert set(ins) == {"instruction", "instruction_attributes", "instruction_options"}
    assert {p["category"] for p in a["products"]} == {
        "beauty", "food", "fashion", "furniture", "electronics"}


def _write_real_fixture(path: Any) -> None:
    """Three products in the released files' raw format (upper-case options, '/' in values,
    a price range, a product without attributes or reviews, a duplicate and a bad ASIN)."""
    raw = [
        {"asin": "B000000001", "category": "beauty", "query": "Deodorant ",
         "name": "Earthy Bright Citrus Deodorant for Sensitive Skin",
         "product_category": "Beauty & Personal Care › Personal Care › Deodorants",
         "full_description": "An aluminum free deodorant.", "small_description": [
             "Aluminum free", "Gentle on sensitive skin"], "pricing": "$10.99",
         "images": ["x.jpg"], "customization_options": {
             "Scent": [{"value": "Bright Citrus", "image": None},
                       {"value": "Lavender/Rose", "image": None}],
             "Size": [{"value": "3 Ounce (Pack of 1)", "image": None}]}},
        {"asin": "B000000002", "category": "fashion", "query": "running shoes",
         "name": "Zoom Running Shoes", "product_category": "Clothing › Men › Shoes",
         "full_description": "", "small_description": "Rubber sole",
         "pricing": "$40.00 - $55.50", "images": [], "customization_options": None},
        {"asin": "B000000002", "category": "dup", "query": "dup", "name": "dup",
         "product_category": "", "full_description": "", "small_description": [],
         "pricing": "", "images": [], "customization_options": None},
        {"asin": "nan", "category": "x", "query": "x", "name": "x", "product_category": "",
         "full_description": "", "small_description": [], "pricing": "", "images": [],
         "customization_options": None},
        {"asin": "B000000003", "category": "food", "query": "green tea",
         "name": "Leafy Green Tea Bags", "product_category": "Grocery › Beverages › Tea",
         "full_description": "Organic green tea.", "small_description": ["Caffeine free"],
         "pricing": "$5.00", "images": [], "customization_options": {}},
    ]
    ins_v2 = {"B000000001": {"attributes": ["aluminum free", "sensitive skin"],
                             "instruction": "i need an aluminum free deodorant",
                             "instruction_attributes": ["aluminum free"]},
              "B000000003": {"attributes": ["caffeine free"], "instruction": "green tea",
                             "instruction_attributes": ["caffeine free"]}}
    human = {"B000000001": [
        {"instruction": "i need a bright citrus deodorant for sensitive skin in 3 ounce.",
         "instruction_attributes": ["sensitive skin"],
         "instruction_options": ["bright citrus", "3 ounce (pack of 1)"]},
        {"instruction": "no attributes: skipped", "instruction_attributes": [],
         "instruction_options": []}],
        "B000000002": [{"instruction": "i want running shoes with a rubber sole",
                        "instruction_attributes": ["rubber sole"], "instruction_options": []}],
        "B000000003": [{"instruction": "caffeine free green tea",
                        "instruction_attributes": ["caffeine free"],
                        "instruction_options": []}] * 3}
    reviews = [{"asin": "B000000001", "average_rating": 4.5,
                "reviews": [{"title": "Nice", "stars": 5, "review": "Works well"}]}]
    for name, obj in (("items_shuffle_1000.json", raw), ("items_ins_v2_1000.json", ins_v2),
                      ("items_human_ins.json", human), ("reviews.json", reviews)):
        (path / name).write_text(json.dumps(obj))


def test_loads_real_webshop_files(tmp_path: Any) -> None:
    _write_real_fixture(tmp_path)
    env = agentrl.make_env("agentrl/WebShop-v0", data_path=str(tmp_path), split="all")
    e = env.unwrapped
    assert [p["asin"] for p in e.store.products] == ["B000000001", "B000000002", "B000000003"]
    assert len(e.goals) == 5  # 1 + 1 + 3 instructions; the attribute-less one is skipped
    p1, p2 = e.store.by_asin["B000000001"], e.store.by_asin["B000000002"]
    assert p1["options"] == {"scent": ["bright citrus", "lavender | rose"],
                             "size": ["3 ounce (pack of 1)"]}
    assert p1["query"] == "deodorant" and p1["Rating"] == 4.5
    assert p2["Price"] == "$40.0 to $55.5" and 40.0 <= e.store.prices["B000000002"] <= 55.5
    assert p2["Attributes"] == ["DUMMY_ATTR"] and p2["BulletPoints"] == ["Rubber sole"]
    idx = next(i for i, g in enumerate(e.goals) if g["asin"] == "B000000001")
    obs, _ = env.reset(seed=idx)
    assert "3 ounce, and price lower than" in obs  # trailing '.' stripped, budget appended
    env.step("search[bright citrus deodorant]")
    obs, *_ = env.step("click[b000000001]")
    assert "[SEP] scent [SEP] bright citrus [SEP] lavender | rose [SEP] size" in obs
    assert "Rating: 4.5" in obs
    obs, *_ = env.step("click[reviews]")
    assert obs.endswith('"Nice" [SEP] 5 [SEP] Works well')
    env.step("click[< prev]")
    env.step("click[bright citrus]")
    env.step("click[3 ounce (pack of 1)]")
    _, r, term, _, info = env.step("click[buy now]")
    assert term and info["score"] == 1.0 and r == 10.0


def test_real_files_synthetic_goals_and_missing_files(tmp_path: Any) -> None:
    _write_real_fixture(tmp_path)
    env = agentrl.make_env("agentrl/WebShop-v0", data_path=str(tmp_path), human_goals=False,
                           split="all")
    texts = sorted(g["instruction_text"] for g in env.unwrapped.goals)
    # one goal per option combination of B000000001 (2 scents x 1 size) + one for B000000003
    assert len(texts) == 3
    assert any(t.startswith("i need an aluminum free deodorant with scent: lavender | rose, "
                            "and size: 3 ounce (pack of 1)") for t in texts)
    with pytest.raises(FileNotFoundError, match="data_path"):
        agentrl.make_env("agentrl/WebShop-v0", data_path=str(tmp_path / "nowhere"))
