"""An offline WebShop catalogue: products and instructions generated from a seed, written in the
real WebShop file formats so the loader cannot tell them apart from the released data.

Files (the names WebShop's ``setup.sh`` downloads):

- ``items_shuffle.json``: list of products ``{asin, category, query, name, product_category,
  full_description, small_description, pricing, images, customization_options}``;
- ``items_ins_v2.json``: ``{asin: {attributes, instruction, instruction_attributes}}``;
- ``items_human_ins.json``: ``{asin: [{instruction, instruction_attributes, instruction_options}]}``;
- ``reviews.json``: ``[{asin, reviews: [{title, stars, review}], average_rating}]``.

Five categories as in WebShop (beauty, food, fashion, furniture, electronics), ten product types
each, with per-type attributes, option groups (colour, size, scent, flavor, ...) and price ranges.
Several dozen products share each type, so an instruction usually fits a handful of products and
search has to rank near-duplicates, as in the real store.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
from typing import Any

#: Bump when the generator changes, so old caches are not reused.
GENERATOR_VERSION = 3

_COLORS = {
    "beauty": ["nude", "ruby red", "pink", "coral", "natural black", "dark brown", "plum",
               "berry", "light blonde", "honey brown"],
    "fashion": ["black", "white", "navy blue", "heather grey", "army green", "burgundy", "khaki",
                "light pink", "royal blue", "red", "olive", "beige"],
    "furniture": ["espresso", "white", "black", "walnut", "grey", "natural", "rustic brown",
                  "oak", "navy", "beige"],
    "electronics": ["black", "white", "silver", "blue", "rose gold", "space gray", "red",
                    "green", "purple"],
}

_POOLS: dict[str, list[str]] = {
    "scent": ["lavender", "bright citrus", "unscented", "coconut", "fresh mint", "rose",
              "vanilla", "eucalyptus", "sandalwood", "green tea"],
    "beauty_size": ["1 fl oz (pack of 1)", "2.6 ounce (pack of 1)", "3.4 fl oz (pack of 2)",
                    "8 fl oz (pack of 1)", "16 fl oz (pack of 3)", "0.5 ounce (pack of 4)"],
    "length": ["14 inch", "16 inch", "18 inch", "20 inch", "22 inch", "24 inch"],
    "flavor": ["dark roast", "original", "sea salt", "chocolate chip", "peanut butter",
               "strawberry", "honey", "spicy chipotle", "vanilla", "mixed berry", "caramel",
               "lemon ginger"],
    "food_size": ["pack of 1", "pack of 2", "pack of 6", "12 count (pack of 1)",
                  "24 count (pack of 2)", "16 ounce (pack of 2)", "2 pound (pack of 1)"],
    "letter_size": ["x-small", "small", "medium", "large", "x-large", "xx-large", "3x-large"],
    "shoe_size": ["6", "6.5", "7", "7.5", "8", "8.5", "9", "9.5", "10", "10.5", "11", "12"],
    "waist_size": ["28w x 30l", "30w x 30l", "32w x 32l", "34w x 32l", "36w x 34l",
                   "38w x 34l"],
    "furniture_size": ["small", "medium", "large", "24 inch", "30 inch", "47.2 inch",
                       "set of 2", "set of 4"],
    "capacity": ["5000mah", "10000mah", "20000mah", "26800mah"],
    "cable_length": ["3ft", "6ft", "10ft", "3ft + 6ft + 10ft", "6ft (2 pack)"],
    "band_size": ["38mm | 40mm | 41mm", "42mm | 44mm | 45mm", "49mm"],
    "style": ["standard", "pro", "with microphone", "2 pack", "wall mount", "with stand"],
}

# type: (query / product noun, breadcrumb below the category root, price range, options)
# options map the displayed option name to a pool ("color" uses the category's colours).
_TYPES: dict[str, tuple[str, list[tuple[str, str, tuple[float, float], dict[str, str]]]]] = {
    "beauty": ("Beauty & Personal Care", [
        ("deodorant", "Personal Care › Deodorants & Antiperspirants › Deodorants", (5, 25),
         {"scent": "scent", "size": "beauty_size"}),
        ("shampoo", "Hair Care › Shampoo & Conditioner › Shampoos", (6, 40),
         {"scent": "scent", "size": "beauty_size"}),
        ("face moisturizer", "Skin Care › Face › Creams & Moisturizers", (9, 60),
         {"size": "beauty_size"}),
        ("lipstick", "Makeup › Lips › Lipstick", (5, 30), {"color": "color"}),
        ("nail polish", "Foot, Hand & Nail Care › Nail Art & Polish › Nail Polish", (4, 20),
         {"color": "color", "size": "beauty_size"}),
        ("hair extensions", "Hair Care › Hair Extensions, Wigs & Accessories › Extensions",
         (15, 90), {"color": "color", "size": "length"}),
        ("eyeshadow palette", "Makeup › Eyes › Eyeshadow", (8, 45), {"color": "color"}),
        ("body wash", "Personal Care › Bath & Bathing Accessories › Body Washes", (5, 30),
         {"scent": "scent", "size": "beauty_size"}),
        ("toothpaste", "Oral Care › Toothpaste", (3, 18), {"flavor": "scent",
                                                           "size": "beauty_size"}),
        ("sunscreen", "Skin Care › Sunscreens & Tanning Products › Sunscreens", (7, 35),
         {"size": "beauty_size"}),
    ]),
    "food": ("Grocery & Gourmet Food", [
        ("coffee", "Beverages › Coffee, Tea & Cocoa › Coffee", (7, 45),
         {"flavor": "flavor", "size": "food_size"}),
        ("green tea", "Beverages › Coffee, Tea & Cocoa › Tea", (4, 30),
         {"flavor": "flavor", "size": "food_size"}),
        ("protein bars", "Snacks & Sweets › Bars › Protein Bars", (10, 45),
         {"flavor": "flavor", "size": "food_size"}),
        ("potato chips", "Snacks & Sweets › Chips & Crisps › Potato Chips", (3, 25),
         {"flavor": "flavor", "size": "food_size"}),
        ("dark chocolate", "Snacks & Sweets › Chocolate › Chocolate Bars", (4, 35),
         {"flavor": "flavor", "size": "food_size"}),
        ("beef jerky", "Meat & Seafood › Jerky & Dried Meats › Beef Jerky", (6, 40),
         {"flavor": "flavor", "size": "food_size"}),
        ("olive oil", "Pantry Staples › Cooking & Baking › Oils › Olive Oil", (8, 50),
         {"size": "food_size"}),
        ("hot sauce", "Pantry Staples › Condiments & Salad Dressings › Hot Sauce", (3, 20),
         {"flavor": "flavor", "size": "food_size"}),
        ("granola", "Breakfast Foods › Cereals › Granola", (4, 28),
         {"flavor": "flavor", "size": "food_size"}),
        ("gummy candy", "Snacks & Sweets › Candy › Gummy Candies", (3, 22),
         {"flavor": "flavor", "size": "food_size"}),
    ]),
    "fashion": ("Clothing, Shoes & Jewelry", [
        ("women's dress", "Women › Clothing › Dresses › Casual", (15, 70),
         {"color": "color", "size": "letter_size"}),
        ("men's t-shirt", "Men › Clothing › Shirts › T-Shirts", (8, 35),
         {"color": "color", "size": "letter_size"}),
        ("running shoes", "Men › Shoes › Athletic › Running", (25, 120),
         {"color": "color", "size": "shoe_size"}),
        ("men's jeans", "Men › Clothing › Jeans", (20, 80),
         {"color": "color", "size": "waist_size"}),
        ("hoodie", "Women › Clothing › Fashion Hoodies & Sweatshirts", (15, 60),
         {"color": "color", "size": "letter_size"}),
        ("women's sandals", "Women › Shoes › Sandals › Flat Sandals", (12, 60),
         {"color": "color", "size": "shoe_size"}),
        ("winter jacket", "Men › Clothing › Jackets & Coats › Down & Down Alternative", (35, 160),
         {"color": "color", "size": "letter_size"}),
        ("yoga leggings", "Women › Clothing › Active › Active Leggings", (10, 45),
         {"color": "color", "size": "letter_size"}),
        ("ankle socks", "Men › Clothing › Socks › Athletic Socks", (6, 25),
         {"color": "color", "size": "letter_size"}),
        ("baseball cap", "Men › Accessories › Hats & Caps › Baseball Caps", (8, 30),
         {"color": "color"}),
    ]),
    "furniture": ("Home & Kitchen › Furniture", [
        ("coffee table", "Living Room Furniture › Tables › Coffee Tables", (40, 260),
         {"color": "color", "size": "furniture_size"}),
        ("office chair", "Home Office Furniture › Home Office Chairs › Desk Chairs", (50, 300),
         {"color": "color"}),
        ("bookshelf", "Living Room Furniture › Bookcases", (30, 220),
         {"color": "color", "size": "furniture_size"}),
        ("bar stools", "Kitchen & Dining Room Furniture › Bar Stools", (40, 250),
         {"color": "color", "size": "furniture_size"}),
        ("tv stand", "Living Room Furniture › TV & Media Furniture › Television Stands",
         (45, 280), {"color": "color", "size": "furniture_size"}),
        ("nightstand", "Bedroom Furniture › Nightstands", (25, 150),
         {"color": "color", "size": "furniture_size"}),
        ("loveseat sofa", "Living Room Furniture › Sofas & Couches › Loveseats", (120, 600),
         {"color": "color"}),
        ("dining table set", "Kitchen & Dining Room Furniture › Table & Chair Sets", (90, 500),
         {"color": "color", "size": "furniture_size"}),
        ("storage ottoman", "Living Room Furniture › Ottomans", (25, 140),
         {"color": "color", "size": "furniture_size"}),
        ("shoe rack", "Entryway Furniture › Shoe Organizers", (15, 90),
         {"color": "color", "size": "furniture_size"}),
    ]),
    "electronics": ("Electronics", [
        ("wireless earbuds", "Headphones, Earbuds & Accessories › Earbud Headphones", (15, 150),
         {"color": "color", "style": "style"}),
        ("bluetooth speaker", "Portable Audio & Video › Portable Speakers & Docks", (18, 160),
         {"color": "color"}),
        ("usb c cable", "Computers & Accessories › Cables & Accessories › USB Cables", (5, 25),
         {"color": "color", "size": "cable_length"}),
        ("phone case", "Cell Phones & Accessories › Cases, Holsters & Sleeves › Basic Cases",
         (6, 35), {"color": "color"}),
        ("power bank", "Cell Phones & Accessories › Chargers & Power Adapters › Portable Power Banks",
         (12, 70), {"color": "color", "capacity": "capacity"}),
        ("hdmi cable", "Television & Video › Accessories › Cables › HDMI Cables", (6, 30),
         {"size": "cable_length"}),
        ("wireless mouse", "Computers & Accessories › Computer Accessories & Peripherals › Mice",
         (8, 60), {"color": "color"}),
        ("smart watch band", "Wearable Technology › Smartwatch Accessories › Bands", (6, 30),
         {"color": "color", "size": "band_size"}),
        ("laptop stand", "Computers & Accessories › Laptop Accessories › Stands", (15, 80),
         {"color": "color", "style": "style"}),
        ("security camera", "Camera & Photo › Video Surveillance › Surveillance Cameras",
         (25, 180), {"style": "style"}),
    ]),
}

_ATTRIBUTES = {
    "beauty": ["long lasting", "cruelty free", "paraben free", "sensitive skin",
               "natural ingredients", "alcohol free", "travel size", "easy apply", "dry skin",
               "fragrance free", "vegan", "hyaluronic acid", "tea tree", "sulfate free",
               "non toxic", "high quality", "dermatologist tested", "oil free"],
    "food": ["gluten free", "non gmo", "low sugar", "keto friendly", "sugar free",
             "high protein", "usda organic", "individually wrapped", "dairy free",
             "low calorie", "ready to eat", "plant based", "kosher certified", "caffeine free",
             "low carb", "natural flavors", "great gift", "resealable bag"],
    "fashion": ["machine wash", "slim fit", "long sleeve", "short sleeve", "polyester spandex",
                "relaxed fit", "non slip", "rubber sole", "quick drying", "button closure",
                "elastic waistband", "moisture wicking", "cotton blend", "lightweight fabric",
                "high waist", "daily wear", "arch support", "hand wash"],
    "furniture": ["easy assemble", "solid wood", "living room", "storage space", "metal frame",
                  "wood finish", "mid century", "space saving", "easy clean", "heavy duty",
                  "high density", "lumbar support", "pu leather", "engineered wood",
                  "steel frame", "tool free", "bedroom furniture", "anti tip"],
    "electronics": ["fast charging", "high speed", "noise cancelling", "long battery life",
                    "water resistant", "easy install", "plug play", "hands free",
                    "high definition", "aluminum alloy", "shock proof", "wireless charging",
                    "dual band", "usb port", "stereo sound", "night vision", "motion detection",
                    "touch control"],
}

_TITLE_WORDS = ["Premium", "Classic", "Essential", "Pro", "Everyday", "Signature", "Original",
                "Ultra", "Deluxe", "Select", "Advanced", "Pure"]
_SYLLABLES = ["ka", "lo", "mi", "ven", "tra", "zo", "ri", "qua", "bel", "dor", "na", "xi",
              "sol", "fen", "ma", "ru", "te", "vi", "cor", "lu", "pax", "ne", "sha", "gro"]
_FEATURE_LEADS = ["designed for everyday use,", "made to last,", "ideal for home or travel,",
                  "customers agree:", "tested by our team,"]
_FILLER = ["Loved by customers for its quality.", "A reliable everyday choice.",
           "Thoughtfully designed and carefully tested.", "Makes a thoughtful present.",
           "Satisfaction guaranteed or your money back.", "Ships in recyclable packaging.",
           "Compare with leading brands and save.", "Trusted by families since 2010."]
_REVIEW_TITLES = [("Love it", 5), ("Works as described", 4), ("Great value", 5),
                  ("Just okay", 3), ("Not what I expected", 2), ("Would buy again", 5),
                  ("Decent quality", 4), ("Disappointed", 1)]


def _brands(rng: random.Random, n: int) -> list[str]:
    names: set[str] = set()
    while len(names) < n:
        names.add("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize())
    return sorted(names)


def _asin(rng: random.Random, used: set[str]) -> str:
    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"
    while True:
        a = "B0" + "".join(rng.choice(alphabet) for _ in range(8))
        if a not in used:
            used.add(a)
            return a


def _title(rng: random.Random, brand: str, noun: str, attrs: list[str]) -> str:
    shown = attrs[: rng.randint(1, 2)]
    head = f"{brand} {rng.choice(_TITLE_WORDS)} {noun.title()}"
    extra = ", ".join(a.title() for a in shown)
    return f"{head} - {extra}" if rng.random() < 0.5 else f"{head} with {extra}"


def _option_phrase(name: str, value: str) -> str:
    if name == "color":
        return f"in {value} color"
    if name == "size":
        return f"in size {value}"
    if name in ("scent", "flavor"):
        return f"with {value} {name}"
    return f"with {name} {value}"


_INSTRUCTION_TEMPLATES = [
    "i need a {noun} that is {attrs}",
    "i am looking for a {noun} with {attrs}",
    "i want to buy a {noun} which is {attrs}",
    "find me a {noun} that is {attrs}",
    "i'm looking for {attrs} {noun}",
    "i would like a {noun} with {attrs}",
]


def _instruction(rng: random.Random, noun: str, attrs: list[str],
                 options: list[tuple[str, str]]) -> str:
    text = rng.choice(_INSTRUCTION_TEMPLATES).format(noun=noun, attrs=" and ".join(attrs))
    for name, value in options:
        text += ", and " + _option_phrase(name, value)
    return text


def generate(seed: int = 0, num_products: int = 3000) -> dict[str, Any]:
    """Generate a catalogue in memory: ``{"products", "ins_v2", "human_ins", "reviews"}``.

    Deterministic in ``(seed, num_products)``; about 0.1 s of CPU per thousand products.
    """
    rng = random.Random(seed)
    brands = _brands(rng, 240)
    types = [(cat, root, t) for cat, (root, ts) in _TYPES.items() for t in ts]
    used: set[str] = set()
    products: list[dict[str, Any]] = []
    ins_v2: dict[str, Any] = {}
    human: dict[str, Any] = {}
    reviews: list[dict[str, Any]] = []
    family: tuple[Any, ...] = ()
    for i in range(num_products):
        if family and rng.random() < 0.5:
            # A variant of the previous product (same title, one attribute swapped, other
            # options and price), like the near-duplicate listings of a real store.
            cat, root, noun, crumb, (lo, hi), opt_spec, brand, title, attrs = family
            attrs = list(attrs)
            attrs[rng.randrange(len(attrs))] = rng.choice(
                [a for a in _ATTRIBUTES[cat] if a not in attrs])
        else:
            cat, root, (noun, crumb, (lo, hi), opt_spec) = types[i % len(types)]
            attrs = rng.sample(_ATTRIBUTES[cat], rng.randint(3, 5))
            brand = rng.choice(brands)
            title = _title(rng, brand, noun, attrs)
        family = (cat, root, noun, crumb, (lo, hi), opt_spec, brand, title, attrs)
        asin = _asin(rng, used)
        options: dict[str, list[dict[str, Any]]] = {}
        if rng.random() < 0.9:  # some real products have no options at all
            for name, pool_key in opt_spec.items():
                pool = _COLORS[cat] if pool_key == "color" else _POOLS[pool_key]
                k = rng.randint(2, min(6, len(pool)))
                idx = sorted(rng.sample(range(len(pool)), k))  # keep the pool's natural order
                options[name.title()] = [{"value": pool[j], "image": None} for j in idx]
        price = round(rng.uniform(lo, hi), 2)
        if rng.random() < 0.2:
            pricing = f"${price:.2f} - ${price * rng.uniform(1.1, 1.6):.2f}"
        else:
            pricing = f"${price:.2f}"
        # Features list every attribute in random order, but WebShop indexes only the first
        # bullet and the description mentions a few: some attributes are found only by reading.
        feats = [f"{a.capitalize()}: {rng.choice(_FEATURE_LEADS)} this {noun} is {a}."
                 for a in rng.sample(attrs, len(attrs))]
        feats.append(f"What you get: {brand} {noun}, backed by our 30-day satisfaction promise.")
        said = rng.sample(attrs, rng.randint(1, 2))
        desc = (f"The {brand} {noun} is {' and '.join(said)}. {rng.choice(_FILLER)} "
                f"{rng.choice(_FILLER)}")
        products.append({
            "asin": asin, "category": cat, "query": noun, "name": title,
            "product_category": f"{root} › {crumb}",
            "full_description": desc, "small_description": feats, "pricing": pricing,
            "images": [f"https://example.invalid/images/{asin}.jpg"],
            "customization_options": options,
        })
        ins_v2[asin] = {"attributes": attrs,
                        "instruction": f"i need a {noun} that is {attrs[0]}",
                        "instruction_attributes": attrs[:1]}
        goal_attrs = rng.sample(attrs, rng.randint(1, min(3, len(attrs))))
        goal_opts = [(name.lower(), rng.choice(vals)["value"]) for name, vals in options.items()]
        human[asin] = [{"instruction": _instruction(rng, noun, goal_attrs, goal_opts),
                        "instruction_attributes": goal_attrs,
                        "instruction_options": [v for _, v in goal_opts]}]
        revs = [rng.choice(_REVIEW_TITLES) for _ in range(rng.randint(0, 3))]
        reviews.append({
            "asin": asin,
            "reviews": [{"title": t, "stars": s,
                         "review": f"{t}. The {noun} is {rng.choice(attrs)}."} for t, s in revs],
            "average_rating": round(sum(s for _, s in revs) / len(revs), 1) if revs else "N.A.",
        })
    return {"products": products, "ins_v2": ins_v2, "human_ins": human, "reviews": reviews}


FILE_NAMES = {"products": "items_shuffle.json", "ins_v2": "items_ins_v2.json",
              "human_ins": "items_human_ins.json", "reviews": "reviews.json"}


def generated_path(root: str, seed: int = 0, num_products: int = 3000) -> tuple[str, bool]:
    """(the directory of a generated catalogue, whether it is complete)."""
    path = os.path.join(root, f"gen-v{GENERATOR_VERSION}-seed{seed}-n{num_products}")
    return path, os.path.exists(os.path.join(path, FILE_NAMES["reviews"]))  # written last


def ensure_generated(root: str, seed: int = 0, num_products: int = 3000) -> str:
    """Write the generated catalogue under ``root`` once (atomically, under a file lock) and
    return its directory."""
    path, complete = generated_path(root, seed, num_products)
    done = os.path.join(path, FILE_NAMES["reviews"])
    if complete:
        return path
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(done):
            data = generate(seed, num_products)
            for key in ("products", "ins_v2", "human_ins", "reviews"):
                tmp = os.path.join(path, f".{FILE_NAMES[key]}.tmp{os.getpid()}")
                with open(tmp, "w") as f:
                    json.dump(data[key], f)
                os.replace(tmp, os.path.join(path, FILE_NAMES[key]))
    return path
