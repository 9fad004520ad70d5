"""A generated knowledge base and the tasks asked about it.

The knowledge base is a small fictional world (people, cities, countries, companies) generated
deterministically from a seed; invented names keep a pretrained model from answering from
memory, so it has to search. Every fact is written as a sentence of its entity's document, and
those documents are the search corpus. Each fact sentence follows one template per attribute
(`FACT_TEMPLATES`), which is what lets a scripted oracle read the answers back out of search
results.

Tasks: multi-hop questions (follow 2-3 relations, some ending in a subtraction) and arithmetic
word problems. Both have one exact answer, compared after `normalize_answer`.
"""

from __future__ import annotations

import random
import re
import string
from dataclasses import dataclass, field
from typing import Any

from agentrl.envs.tooluse.tools import Document, calculate, format_number

_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr",
           "gr", "kr", "tr", "th", "sh", "st", "qu", "j"]
_VOWELS = ["a", "e", "i", "o", "u", "ae", "ei", "ou", "ia"]
_CODAS = ["", "", "n", "r", "l", "s", "th", "m", "x", "nd"]
OCCUPATIONS = ["chemist", "architect", "botanist", "engineer", "painter", "surgeon", "geologist",
               "composer", "astronomer", "economist", "sculptor", "linguist"]
INDUSTRIES = ["shipbuilding", "textiles", "software", "mining", "pharmaceuticals", "aviation",
              "publishing", "agriculture", "robotics", "glassmaking"]
_COMPANY_SUFFIX = ["Industries", "Labs", "Systems", "Works", "Holdings", "Foundry", "Group"]
_CURRENCY_UNITS = ["crown", "mark", "dinar", "florin", "peso", "ducat"]

#: attribute -> sentence stating it in the subject's document ({s}: subject, {v}: value).
FACT_TEMPLATES: dict[str, str] = {
    "occupation": "{s} is a {v}.",
    "birth_year": "{s} was born in the year {v}.",
    "birthplace": "{s} was born in the city of {v}.",
    "employer": "{s} works for {v}.",
    "country": "{s} is a city in the country of {v}.",
    "population": "{s} has a population of {v}.",
    "city_founded": "{s} was founded as a city in the year {v}.",
    "capital": "The capital of {s} is {v}.",
    "currency": "The currency of {s} is the {v}.",
    "language": "The official language of {s} is {v}.",
    "founded": "{s} was founded in the year {v}.",
    "headquarters": "{s} is headquartered in {v}.",
    "founder": "{s} was founded by {v}.",
    "industry": "{s} is a company in the {v} industry.",
}


@dataclass
class Entity:
    """One knowledge-base entity: a kind, a unique name and attribute -> value (names of other
    entities for relations)."""

    kind: str
    name: str
    attrs: dict[str, Any] = field(default_factory=dict)

    def document(self) -> Document:
        """The entity's facts as a search document."""
        return Document(self.name, " ".join(FACT_TEMPLATES[a].format(s=self.name, v=v)
                                            for a, v in self.attrs.items()))


class KnowledgeBase:
    """A fictional world generated from ``seed``; ``size`` scales the number of entities."""

    def __init__(self, seed: int = 0, size: int = 1) -> None:
        rng = random.Random(f"kb-{seed}")
        self._used: set[str] = set()
        n_countries, n_cities, n_people, n_companies = 6 * size, 18 * size, 40 * size, 14 * size
        countries = [Entity("country", self._name(rng, 2, "ia" if i % 2 else "land"))
                     for i in range(n_countries)]
        cities = [Entity("city", self._name(rng, rng.choice([2, 3]))) for _ in range(n_cities)]
        for i, city in enumerate(cities):
            country = countries[i % n_countries]  # every country has cities
            city.attrs = {"country": country.name,
                          "population": rng.randrange(8_000, 4_000_000, 7),
                          "city_founded": rng.randint(700, 1899)}
        for country in countries:
            own = [c for c in cities if c.attrs["country"] == country.name]
            country.attrs = {"capital": rng.choice(own).name,
                             "currency": f"{self._name(rng, 2).lower()} {rng.choice(_CURRENCY_UNITS)}",
                             "language": self._name(rng, 2) + "ese"}
        people = [Entity("person", f"{self._name(rng, 2)} {self._name(rng, rng.choice([2, 3]))}")
                  for _ in range(n_people)]
        companies = [Entity("company", f"{self._name(rng, 2)} {rng.choice(_COMPANY_SUFFIX)}")
                     for _ in range(n_companies)]
        for p in people:
            p.attrs = {"occupation": rng.choice(OCCUPATIONS),
                       "birth_year": rng.randint(1900, 1985),
                       "birthplace": rng.choice(cities).name}
        for i, c in enumerate(companies):
            founder = people[i]  # distinct founders; founded 20-60 years after their birth
            c.attrs = {"founded": founder.attrs["birth_year"] + rng.randint(20, 60),
                       "headquarters": rng.choice(cities).name, "founder": founder.name,
                       "industry": rng.choice(INDUSTRIES)}
        for p in people:
            p.attrs["employer"] = rng.choice(companies).name
        self.entities: list[Entity] = countries + cities + people + companies
        self.by_name = {e.name: e for e in self.entities}
        self.by_kind: dict[str, list[Entity]] = {}
        for e in self.entities:
            self.by_kind.setdefault(e.kind, []).append(e)

    def _name(self, rng: random.Random, syllables: int, suffix: str = "") -> str:
        # Invented words, unique across the whole KB, so a name is a precise search key.
        while True:
            word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
                           for _ in range(syllables)) + suffix
            if 4 <= len(word) <= 14 and word not in self._used:
                self._used.add(word)
                return word.capitalize()

    def documents(self) -> list[Document]:
        """The search corpus: one document per entity."""
        return [e.document() for e in self.entities]


@dataclass
class Task:
    """One question with its exact answer.

    ``hops`` (multihop) is the chain an oracle follows: (start entity, [attribute, ...]);
    ``expression`` (arithmetic, and multihop questions ending in a subtraction) is the
    calculation that gives the answer.
    """

    task_type: str  # "multihop" | "arithmetic"
    template: str
    question: str
    answer: str
    hops: list[tuple[str, list[str]]] = field(default_factory=list)
    expression: str = ""


# name, question, start kind, relation chain. The chain's values are entity names except the
# last, which is the answer.
_MULTIHOP: list[tuple[str, str, str, list[str]]] = [
    ("birth_country", "In which country was {x} born?", "person", ["birthplace", "country"]),
    ("founder_birth_year", "In what year was the founder of {x} born?", "company",
     ["founder", "birth_year"]),
    ("employer_city", "In which city is the company that {x} works for headquartered?",
     "person", ["employer", "headquarters"]),
    ("employer_founder", "Who founded the company that {x} works for?", "person",
     ["employer", "founder"]),
    ("hq_currency", "What is the currency of the country in which {x} is headquartered?",
     "company", ["headquarters", "country", "currency"]),
    ("birthplace_population", "What is the population of the city where {x} was born?",
     "person", ["birthplace", "population"]),
    ("capital_founded", "In what year was the capital of {x} founded as a city?", "country",
     ["capital", "city_founded"]),
    ("birth_country_capital", "What is the capital of the country where {x} was born?",
     "person", ["birthplace", "country", "capital"]),
    ("employer_language", "What is the official language of the country where the employer "
     "of {x} is headquartered?", "person", ["employer", "headquarters", "country", "language"]),
]


def _follow(kb: KnowledgeBase, start: str, chain: list[str]) -> Any:
    value: Any = start
    for attr in chain:
        value = kb.by_name[value].attrs[attr]
    return value


def make_multihop(kb: KnowledgeBase, rng: random.Random) -> Task:
    """A question that follows a chain of relations from a random entity (or, one in five, the
    age of a company's founder when it was founded: two lookups and a subtraction)."""
    if rng.random() < 0.2:
        company = rng.choice(kb.by_kind["company"])
        founded = company.attrs["founded"]
        founder = company.attrs["founder"]
        born = kb.by_name[founder].attrs["birth_year"]
        return Task("multihop", "founder_age_at_founding",
                    f"How many years after the birth of its founder was {company.name} founded?",
                    str(founded - born), hops=[(company.name, ["founded"]),
                                               (company.name, ["founder", "birth_year"])],
                    expression=f"{founded} - {born}")
    name, question, kind, chain = rng.choice(_MULTIHOP)
    start = rng.choice(kb.by_kind[kind])
    return Task("multihop", name, question.format(x=start.name),
                str(_follow(kb, start.name, chain)), hops=[(start.name, chain)])


def make_arithmetic(rng: random.Random) -> Task:
    """A word problem with an integer answer and the expression that computes it."""
    r = rng.randint
    kind = rng.randrange(7)
    if kind == 0:
        a, b, d, c = r(400, 2000), r(12, 60), r(2, 6), r(50, 400)
        q = (f"A warehouse holds {a} crates. It ships {b} crates a day for {d} days and then "
             f"receives {c} crates. How many crates does it hold now?")
        expr, name = f"{a} - {b} * {d} + {c}", "warehouse"
    elif kind == 1:
        v, t, w, u = r(40, 120), r(2, 9), r(30, 110), r(2, 9)
        q = (f"A train travels at {v} km/h for {t} hours, then at {w} km/h for {u} hours. "
             f"How many kilometres does it travel in total?")
        expr, name = f"{v} * {t} + {w} * {u}", "train"
    elif kind == 2:
        n, share = r(3, 12), r(15, 400)
        q = (f"A bill of {n * share} dollars is split equally among {n} people. "
             f"How many dollars does each person pay?")
        expr, name = f"{n * share} / {n}", "split_bill"
    elif kind == 3:
        price, pct = 20 * r(2, 60), 5 * r(1, 15)
        q = (f"A jacket costs {price} dollars and is discounted by {pct}%. "
             f"What is the sale price in dollars?")
        expr, name = f"{price} * (100 - {pct}) / 100", "discount"
    elif kind == 4:
        w, h, s = r(20, 90), r(20, 90), r(3, 15)
        q = (f"A field is {w} m wide and {h} m long. A square pond with sides of {s} m is dug "
             f"in it. How many square metres of the field are left?")
        expr, name = f"{w} * {h} - {s} * {s}", "field_area"
    elif kind == 5:
        cap, pct, add = 20 * r(10, 100), 5 * r(2, 18), r(10, 150)
        q = (f"A tank holds {cap} litres when full and is {pct}% full. {add} litres are added. "
             f"How many litres are in the tank now?")
        expr, name = f"{cap} * {pct} / 100 + {add}", "tank"
    else:
        a, wk, b = r(15, 90), r(4, 30), r(10, 200)
        b = min(b, a * wk - 1)
        q = (f"Sam saves {a} dollars a week for {wk} weeks, spends {b} dollars, and then "
             f"doubles what is left. How many dollars does Sam have?")
        expr, name = f"2 * ({a} * {wk} - {b})", "savings"
    return Task("arithmetic", name, q, format_number(calculate(expr)), expression=expr)


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation.replace(".", "").replace("-", ""))
_NUMBER = re.compile(r"^[-+]?\$?\d[\d,]*(\.\d+)?%?$")


def normalize_answer(text: str) -> str:
    """SQuAD-style normalisation: lower-case, no articles or punctuation, single spaces; a
    number loses thousands separators, ``$``/``%`` and a trailing ``.0``."""
    t = " ".join(str(text).strip().lower().split())
    t = t.rstrip(".")
    if _NUMBER.match(t.replace(" ", "")):
        t = t.replace(" ", "").replace(",", "").replace("$", "").replace("%", "")
        try:
            v = float(t)
        except ValueError:
            return t
        return str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)
    t = t.translate(_PUNCT).replace("-", " ").replace(".", " ")
    t = _ARTICLES.sub(" ", t)
    return " ".join(t.split())


def answers_match(prediction: str, gold: str) -> bool:
    """Exact match after `normalize_answer`."""
    return normalize_answer(prediction) == normalize_answer(gold)
