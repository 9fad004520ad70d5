"""WebShop's purchase score, re-implemented from its published definition (Yao et al., 2022).

    score = r_type * (n_attr_matched + n_option_matched + [price <= price_upper])
                   / (n_goal_attrs + n_goal_options + 1)

- ``r_type`` (product type match): 1.0 when the purchased product shares the goal's search query,
  or two breadcrumb levels of its product category, or more than 20% of the title's nouns;
  otherwise 0.5; then 0.1 when under 10% of the goal title's nouns appear in the purchased title,
  and 0.0 when none do.
- an attribute matches when one of the product's attributes is a fuzzy match (token-set ratio
  > 85) or the attribute text appears in the product's title, features or description;
- each chosen option counts when it equals a goal option (``size``: exact; others: fuzzy > 85,
  colours normalised to a base colour first) or appears in the product's text.

Two deliberate differences from the original code, both documented in the env docstring:
WebShop picks title nouns with spaCy's part-of-speech tagger, here they are the title's content
words (stop words and common adjectives removed), which needs no model download; and the score is
capped at 1.0 (the original can exceed 1 when extra chosen options happen to appear in the title).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

#: Option names WebShop matches exactly rather than fuzzily.
EXACT_MATCH_OPTIONS = ("size",)

#: Base colours; an option value is reduced to the first of these it contains (in this order),
#: so "bright red" and "red" compare equal, as in WebShop.
COLOR_SET = (
    "alabaster apricot aqua ash asphalt azure banana beige black blue blush bordeaux bronze "
    "brown burgundy camel camo caramel champagne charcoal cheetah chestnut chocolate christmas "
    "coffee cognac copper coral cranberry cream crystal dark denim eggplant elephant espresso "
    "fuchsia gold granite grape graphite grass gray green grey heather indigo ivory ivy khaki "
    "lavender lemon leopard light lilac lime magenta maroon mauve merlot midnight mint mocha "
    "multicolor mushroom mustard natural navy nude olive orange peach pewter pink plum purple "
    "rainbow red rose royal rust sand sapphire seashell silver skull slate steel stone stonewash "
    "sunflower tan taupe teal tiger turquoise violet walnut wheat white wine yellow"
).split()

_STOPWORDS = frozenset(
    "a an and are as at be by for from in into is it of on or the to with without this that "
    "these those your you our we i me my pack set count piece pcs pc x oz ounce ounces fl inch "
    "inches ft mm cm lb lbs g ml".split()
)
# Words spaCy tags as adjectives/adverbs in typical product titles; dropping them makes the
# content-word set closer to WebShop's noun set.
_ADJECTIVES = frozenset(
    "new best premium natural organic small large medium big mini extra super ultra high low "
    "long short soft hard light heavy easy quick fast slow fresh free compatible portable "
    "durable comfortable adjustable waterproof wireless classic modern vintage cute casual "
    "professional original pure deluxe perfect great good unique multi non anti".split()
)


def normalize_color(value: str) -> str:
    """Reduce an option value to the first base colour it contains, else return it unchanged."""
    for color in COLOR_SET:
        if color in value:
            return color
    return value


def _process(s: str) -> str:
    # thefuzz's default pre-processing: non-alphanumerics to spaces, lower case, trimmed.
    return re.sub(r"[^0-9a-zA-Z]+", " ", s).lower().strip()


def _lcs_length(a: str, b: str) -> int:
    """Length of the longest common subsequence, bit-parallel (Hyyrö 2004): O(len(b)) big-int ops."""
    if not a or not b:
        return 0
    masks: dict[str, int] = {}
    for i, ch in enumerate(a):
        masks[ch] = masks.get(ch, 0) | (1 << i)
    v = (1 << len(a)) - 1
    for ch in b:
        u = v & masks.get(ch, 0)
        v = (v + u) | (v - u)
    return len(a) - bin(v & ((1 << len(a)) - 1)).count("1")


def _ratio(a: str, b: str) -> float:
    """Indel similarity in [0, 100], as `thefuzz.fuzz.ratio` before rounding."""
    total = len(a) + len(b)
    if total == 0:
        return 100.0
    return 100.0 * 2 * _lcs_length(a, b) / total


@lru_cache(maxsize=200_000)
def token_set_ratio(s1: str, s2: str) -> int:
    """`thefuzz.fuzz.token_set_ratio`: compare the shared words plus each side's remainder.

    Returns an int in [0, 100]; 100 when one side's words are a subset of the other's.
    """
    t1, t2 = set(_process(s1).split()), set(_process(s2).split())
    if not t1 or not t2:
        return 0
    sect, d12, d21 = sorted(t1 & t2), sorted(t1 - t2), sorted(t2 - t1)
    if sect and (not d12 or not d21):
        return 100
    base = " ".join(sect)
    c1 = (base + " " + " ".join(d12)).strip()
    c2 = (base + " " + " ".join(d21)).strip()
    best = _ratio(c1, c2)
    if base:
        best = max(best, _ratio(base, c1), _ratio(base, c2))
    return int(round(best))


@lru_cache(maxsize=50_000)
def title_nouns(title: str) -> frozenset[str]:
    """Approximate WebShop's spaCy noun set of a product title: its lower-cased content words."""
    words = re.findall(r"[a-z]+", title.lower())
    return frozenset(w for w in words if len(w) > 1 and w not in _STOPWORDS
                     and w not in _ADJECTIVES)


def type_reward(product: dict[str, Any], goal: dict[str, Any]) -> dict[str, Any]:
    """``r_type`` and its parts: query match, category match (>= 2 shared breadcrumb levels),
    and the fraction of the goal title's nouns found in the purchased title."""
    query_match = product["query"] == goal["query"]
    p_cat = {x.strip() for x in product["product_category"].split("›")}
    g_cat = {x.strip() for x in goal["product_category"].split("›")}
    category_match = len(p_cat & g_cat) >= 2
    desired = title_nouns(goal["name"])
    bought = title_nouns(product["name"])
    title_score = len(bought & desired) / len(desired) if desired else 0.2
    r_type = 1.0
    if not (query_match or category_match or title_score > 0.2):
        r_type = 0.5
    if title_score < 0.1:
        r_type = 0.1
    if title_score == 0.0:
        r_type = 0.0
    return {"r_type": r_type, "query_match": query_match, "category_match": category_match,
            "title_score": title_score}


def _in_text(value: str, product: dict[str, Any]) -> bool:
    return (value in product["Title"].lower()
            or value in " ".join(product["BulletPoints"]).lower()
            or value in product["Description"].lower())


def attribute_matches(product: dict[str, Any], goal_attrs: list[str]) -> int:
    """How many goal attributes the product has (fuzzy attribute match, else found in its text)."""
    n = 0
    for g in goal_attrs:
        if any(token_set_ratio(p, g) > 85 for p in product["Attributes"]) or _in_text(g, product):
            n += 1
    return n


def option_matches(product: dict[str, Any], goal_options: list[str],
                   chosen: dict[str, str]) -> int:
    """How many chosen options match a goal option (WebShop counts per chosen option)."""
    goals = [normalize_color(o) for o in goal_options]
    n = 0
    for name, value in chosen.items():
        value = normalize_color(value)
        if name.lower() in EXACT_MATCH_OPTIONS:
            matched = value in goals
        else:
            matched = any(token_set_ratio(g, value) > 85 for g in goals)
        if matched or _in_text(value, product):
            n += 1
    return n


def goal_option_values(goal: dict[str, Any]) -> list[str]:
    """Goal options as a list of values (human goals store a list, synthetic goals a dict)."""
    opts = goal["goal_options"]
    return list(opts.values()) if isinstance(opts, dict) else list(opts)


def get_reward(product: dict[str, Any], goal: dict[str, Any], price: float,
               options: dict[str, str]) -> tuple[float, dict[str, Any]]:
    """WebShop's score in [0, 1] for buying ``product`` at ``price`` with ``options`` chosen.

    Returns:
        (score, details) where details has ``r_type``, ``r_att``, ``r_option``, ``r_price`` and
        the match counts.
    """
    goal_opts = goal_option_values(goal)
    t = type_reward(product, goal)
    n_att = attribute_matches(product, goal["attributes"])
    n_opt = option_matches(product, goal_opts, options)
    r_price = price <= goal["price_upper"]
    denom = len(goal["attributes"]) + len(goal_opts) + 1
    score = min(1.0, (n_att + n_opt + int(r_price)) / denom * t["r_type"])
    details = dict(t, r_att=n_att / max(1, len(goal["attributes"])), n_attr_matches=n_att,
                   r_option=(n_opt / len(goal_opts)) if goal_opts else None,
                   n_option_matches=n_opt, r_price=bool(r_price))
    return score, details
