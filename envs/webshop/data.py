"""Load WebShop data files (the released ones or the generated ones) into a searchable store.

The loader follows the released WebShop files' conventions: products come from
``items_shuffle*.json``; their hidden attributes from ``items_ins_v2*.json``; human instructions
from ``items_human_ins.json``; reviews (optional) from ``reviews.json``. Option names and values
are lower-cased and ``/`` becomes `` | `` as in WebShop; a price range is shown as
``$lo to $hi`` and charged at a deterministic point inside it.

Goals: each human instruction becomes a goal; its budget (``price lower than N dollars``) is a
random multiple of ten among the four just above the product's price, as in WebShop. Goals are
shuffled with a fixed seed; the first ``num_test_goals`` are the held-out ``test`` split and the
rest are ``train`` (WebShop and verl-agent hold out the first 500 goals the same way).
"""

from __future__ import annotations

import glob
import json
import os
import random
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import numpy as np

#: WebShop returns at most 50 search hits, shown 10 per page.
SEARCH_RETURN_N = 50
PRODUCTS_PER_PAGE = 10
GOAL_SHUFFLE_SEED = 233
_PRICE_STEPS = [10.0 * i for i in range(1, 100)]
_PRICE_CLAUSE = re.compile(r", and price lower than [\d.]+ dollars$")

_STOP = frozenset(
    "a an and are as at be by for from i i'm in is it its me my need of on or that the this to "
    "want was which with would like looking find buy am".split()
)


def tokenize(text: str) -> list[str]:
    """Search tokens: lower-case alphanumerics, stop words dropped, a plural ``s`` stripped
    (a poor man's version of the Lucene English analyzer WebShop's pyserini index uses)."""
    out = []
    for w in re.findall(r"[a-z0-9]+(?:\.[0-9]+)?", text.lower()):
        if w in _STOP or (len(w) == 1 and w.isalpha()):
            continue
        if len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
            w = w[:-1]
        out.append(w)
    return out


def strip_price_clause(instruction: str) -> str:
    """The instruction without WebShop's trailing budget clause."""
    return _PRICE_CLAUSE.sub("", instruction)


@dataclass
class Store:
    """Products, goals and a BM25 index over one catalogue (shared by all envs of a process)."""

    products: list[dict[str, Any]]
    by_asin: dict[str, dict[str, Any]]
    prices: dict[str, float]
    goals: list[dict[str, Any]]
    num_test_goals: int
    _bm25: Any = None
    _postings: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    _cache: OrderedDict[str, list[str]] = field(default_factory=OrderedDict)

    def split(self, name: str) -> list[dict[str, Any]]:
        """Goals of ``train`` or ``test`` (a fixed held-out slice)."""
        if name == "test":
            return self.goals[: self.num_test_goals]
        if name == "train":
            return self.goals[self.num_test_goals:]
        if name == "all":
            return self.goals
        raise ValueError(f"unknown WebShop split {name!r}; use 'train', 'test' or 'all'")

    def search(self, query: str) -> list[str]:
        """The ASINs of the top `SEARCH_RETURN_N` products for ``query`` (BM25, score > 0)."""
        key = " ".join(tokenize(query))
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        scores = self.scores(key.split())
        order = np.argsort(-scores, kind="stable")[:SEARCH_RETURN_N]  # ties: catalogue order
        asins = [self.products[i]["asin"] for i in order if scores[i] > 0]
        self._cache[key] = asins
        if len(self._cache) > 20_000:  # many envs and groups repeat the same queries
            self._cache.popitem(last=False)
        return asins

    def scores(self, tokens: list[str]) -> np.ndarray:
        """BM25 scores of every product, equal to ``rank_bm25.BM25Okapi.get_scores(tokens)``.

        rank_bm25 loops over all documents in Python for each query word (about 9 ms a query
        on 3000 products); adding up the words' postings does the same sum in about 0.3 ms.
        """
        if self._bm25 is None:
            self._bm25, self._postings = _build_index(self.products)
        bm = self._bm25
        out = np.zeros(len(self.products))
        for t in tokens:
            if t not in self._postings:
                continue
            ids, tf = self._postings[t]
            out[ids] += (bm.idf.get(t) or 0) * (
                tf * (bm.k1 + 1) / (tf + bm.k1 * (1 - bm.b + bm.b * bm.doc_len[ids] / bm.avgdl)))
        return out


def _doc_text(p: dict[str, Any]) -> str:
    # What WebShop's index holds: title, description, the first bullet point and the options.
    opts = ", and ".join(f"{k}: {', '.join(v)}" for k, v in p["options"].items())
    first = p["BulletPoints"][0] if p["BulletPoints"] else ""
    return " ".join([p["Title"], p["Description"], first, opts])


def _build_index(products: list[dict[str, Any]]
                 ) -> tuple[Any, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """rank_bm25's index (idf, lengths) plus per-word postings ``(doc ids, term counts)``."""
    try:
        from rank_bm25 import BM25Okapi
    except ImportError as e:  # pragma: no cover - the registry names the extra first
        raise ImportError("WebShop search needs rank-bm25: pip install 'agentrl[webshop]'") from e
    # pyserini's (Lucene's) BM25 defaults, which WebShop's index used.
    bm = BM25Okapi([tokenize(_doc_text(p)) for p in products], k1=0.9, b=0.4)
    bm.doc_len = np.asarray(bm.doc_len, dtype=float)
    lists: dict[str, tuple[list[int], list[int]]] = {}
    for i, freqs in enumerate(bm.doc_freqs):
        for word, n in freqs.items():
            ids, tfs = lists.setdefault(word, ([], []))
            ids.append(i)
            tfs.append(n)
    postings = {w: (np.asarray(ids), np.asarray(tfs, dtype=float))
                for w, (ids, tfs) in lists.items()}
    return bm, postings


def _find(data_path: str, names: list[str], pattern: str, required: bool) -> str | None:
    for n in names:
        if os.path.exists(os.path.join(data_path, n)):
            return os.path.join(data_path, n)
    found = sorted(glob.glob(os.path.join(data_path, pattern)))
    if found:
        return found[0]
    if required:
        raise FileNotFoundError(
            f"no {pattern} in {data_path!r}: point data_path at the folder holding WebShop's "
            f"data files (items_shuffle_1000.json, items_ins_v2_1000.json, items_human_ins.json), "
            f"or leave it unset to use the generated catalogue")
    return None


def _read(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def _parse_pricing(pricing: Any) -> tuple[list[float], str]:
    if not pricing:
        return [100.0], "$100.0"
    values = []
    for part in str(pricing).split("$")[1:]:
        digits = re.sub(r"[^\d.]", "", part)
        try:
            values.append(float(Decimal(digits)))
        except Exception:  # a malformed price field: skip that part, as a shop would
            continue
    if not values:
        return [100.0], "$100.0"
    if len(values) == 1:
        return values, f"${values[0]}"
    return values[:2], f"${values[0]} to ${values[1]}"


def _product(raw: dict[str, Any], attrs: dict[str, Any], reviews: dict[str, Any]
             ) -> dict[str, Any]:
    asin = raw["asin"]
    pricing, price_tag = _parse_pricing(raw.get("pricing"))
    options: dict[str, list[str]] = {}
    for name, contents in (raw.get("customization_options") or {}).items():
        if contents:
            options[name.lower()] = [str(c["value"]).strip().replace("/", " | ").lower()
                                     for c in contents]
    small = raw.get("small_description") or []
    rev = reviews.get(asin, {})
    revs = [{"title": r.get("title", ""), "score": r.get("score", r.get("stars", 0)),
             "body": r.get("body", r.get("review", ""))} for r in rev.get("reviews", [])]
    return {
        "asin": asin,
        "category": raw.get("category", ""),
        "query": str(raw.get("query", "")).lower().strip(),
        "name": raw.get("name", ""),
        "product_category": raw.get("product_category", ""),
        "Title": raw.get("name", ""),
        "Description": raw.get("full_description") or "",
        "BulletPoints": small if isinstance(small, list) else [small],
        "Reviews": revs,
        "Rating": rev.get("average_rating", "N.A."),
        "pricing": pricing,
        "Price": price_tag,
        "options": options,
        "Attributes": (attrs.get(asin) or {}).get("attributes") or ["DUMMY_ATTR"],
    }


def _price_of(p: dict[str, Any]) -> float:
    lo = p["pricing"][0]
    if len(p["pricing"]) == 1:
        return lo
    # WebShop draws a price in the range at start-up; seed by ASIN so it is the same everywhere.
    return random.Random(p["asin"]).uniform(lo, p["pricing"][1])


def _budget(rng: random.Random, price: float) -> tuple[float, str]:
    steps = [s for s in _PRICE_STEPS if s > price][:4]
    if len(steps) < 2:
        return 1_000_000.0, ""
    upper = max(rng.sample(steps, 2))
    return upper, f", and price lower than {upper:.2f} dollars"


def _goals(products: list[dict[str, Any]], prices: dict[str, float], attrs: dict[str, Any],
           human: dict[str, Any] | None) -> list[dict[str, Any]]:
    rng = random.Random(0)
    goals = []
    for p in products:
        asin = p["asin"]
        if human is not None:  # human instructions: attributes and option values given
            entries = [(e["instruction"], e.get("instruction_attributes") or [],
                        e.get("instruction_options") or []) for e in human.get(asin, [])]
        else:  # synthetic: one goal per combination of the product's options, as WebShop
            a = attrs.get(asin) or {}
            if not a.get("instruction") or not a.get("instruction_attributes"):
                continue
            entries = []
            combos: list[list[tuple[str, str]]] = [[]]
            for name in sorted(p["options"]):
                combos = [c + [(name, v)] for c in combos for v in p["options"][name]]
            for c in combos:
                text = a["instruction"] + (
                    " with " + ", and ".join(f"{k}: {v}" for k, v in c) if c else "")
                entries.append((text, a["instruction_attributes"], dict(c)))
        for text, g_attrs, g_opts in entries:
            if not g_attrs:
                continue  # WebShop skips instructions without attributes
            upper, clause = _budget(rng, prices[asin])
            goals.append({
                "asin": asin, "category": p["category"], "query": p["query"],
                "name": p["name"], "product_category": p["product_category"],
                "instruction_text": text.strip(".") + clause, "attributes": list(g_attrs),
                "price_upper": upper, "goal_options": g_opts,
            })
    random.Random(GOAL_SHUFFLE_SEED).shuffle(goals)
    return goals


def load_store(data_path: str, num_products: int | None = None, human_goals: bool = True,
               num_test_goals: int = 500) -> Store:
    """Read WebShop-format files from ``data_path`` into a `Store`.

    Args:
        data_path: folder with ``items_shuffle*.json``, ``items_ins_v2*.json``,
            ``items_human_ins.json`` (for human goals) and optionally ``reviews.json``.
        num_products: keep the first N products (the file is pre-shuffled), as WebShop does.
        human_goals: human instructions (WebShop's default) or synthetic ones from ins_v2.
        num_test_goals: size of the held-out test slice, at most a fifth of all goals.
    """
    raw = _read(_find(data_path, ["items_shuffle.json", "items_shuffle_1000.json"],
                      "items_shuffle*.json", True))
    attrs = _read(_find(data_path, ["items_ins_v2.json", "items_ins_v2_1000.json"],
                        "items_ins_v2*.json", True))
    human = (_read(_find(data_path, ["items_human_ins.json"], "items_human_ins*.json", True))
             if human_goals else None)
    rpath = _find(data_path, ["reviews.json"], "reviews*.json", False)
    reviews = {r["asin"]: r for r in _read(rpath)} if rpath else {}
    if num_products is not None:
        raw = raw[:num_products]
    products, seen = [], set()
    for r in raw:
        asin = r.get("asin")
        if not isinstance(asin, str) or asin == "nan" or len(asin) > 10 or asin in seen:
            continue
        seen.add(asin)
        products.append(_product(r, attrs, reviews))
    prices = {p["asin"]: _price_of(p) for p in products}
    goals = _goals(products, prices, attrs, human)
    if not goals:
        raise ValueError(f"no usable goals in {data_path!r} (no instructions with attributes)")
    n_test = min(num_test_goals, len(goals) // 5)
    return Store(products=products, by_asin={p["asin"]: p for p in products}, prices=prices,
                 goals=goals, num_test_goals=n_test)
