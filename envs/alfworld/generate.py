"""Offline generator of ALFWorld games in the official ``json_2.1.1`` layout.

The official ALFWorld games (3,553 train, 140 valid_seen, 134 valid_unseen) are downloaded from
GitHub, which is not always reachable. This module writes games that the official text engine
(``alfworld`` = TextWorld's PDDL env + the fast-downward planner) plays exactly like the real
ones::

    <out>/json_2.1.1/<split>/<task_type>-<Object>-None-<Receptacle>-<scene>/trial_T<id>/
        traj_data.json       task_type, pddl_params, scene (what AlfredTWEnv reads)
        initial_state.pddl   a problem in the shipped ``alfred`` domain, ALFRED-style names
        game.tw-pddl         {"pddl_domain", "grammar" (goal filled in), "pddl_problem",
                              "solvable": true, "walkthrough": planner solution}

Rooms follow ALFRED's four scene types and their facts from the ``alfworld`` package itself
(``alfworld.gen.constants``: which receptacle can hold which object, which objects are
heatable/coolable/cleanable, which goal is valid in which room; ``alfworld.gen.goal_library``:
the goal PDDL and the goal sentences). Splits mirror ALFRED: ``train`` and ``valid_seen`` use
the training floor plans (scene numbers 7-30, 207-230, ...), with disjoint task seeds;
``valid_unseen`` uses the held-out floor plans (1-6, 201-206, ...), whose layouts never occur
in training. Every game is checked by solving it with fast-downward and replaying the plan.

CLI::

    python -m agentrl.envs.alfworld.generate --out DIR --n 60 [--split train] [--workers 2]
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import random
import re
import shutil
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

TASK_TYPES = (
    "pick_and_place_simple",
    "look_at_obj_in_light",
    "pick_clean_then_place_in_recep",
    "pick_heat_then_place_in_recep",
    "pick_cool_then_place_in_recep",
    "pick_two_obj_and_place",
)
SPLITS = ("train", "valid_seen", "valid_unseen")
#: Bump when the generated content changes, so stale caches are not reused.
GENERATOR_VERSION = 1

# Receptacle classes per room type: (class, min count, max count). Counts vary per floor plan.
_ROOM_RECEPTACLES: dict[str, tuple[tuple[str, int, int], ...]] = {
    "Kitchen": (("CounterTop", 1, 3), ("Cabinet", 3, 9), ("Drawer", 2, 6), ("Fridge", 1, 1),
                ("Microwave", 1, 1), ("SinkBasin", 1, 1), ("StoveBurner", 2, 4),
                ("CoffeeMachine", 1, 1), ("Toaster", 1, 1), ("GarbageCan", 1, 1),
                ("DiningTable", 0, 1), ("Shelf", 0, 3)),
    "LivingRoom": (("Sofa", 1, 1), ("ArmChair", 0, 2), ("CoffeeTable", 1, 2),
                   ("SideTable", 1, 3), ("Drawer", 0, 4), ("Cabinet", 0, 4), ("Shelf", 0, 4),
                   ("TVStand", 0, 1), ("GarbageCan", 1, 1), ("DiningTable", 0, 1),
                   ("Ottoman", 0, 1), ("Dresser", 0, 1)),
    "Bedroom": (("Bed", 1, 1), ("Desk", 0, 1), ("Dresser", 0, 1), ("SideTable", 1, 2),
                ("Drawer", 1, 6), ("Shelf", 0, 4), ("GarbageCan", 1, 1),
                ("LaundryHamper", 0, 1), ("ArmChair", 0, 1), ("Safe", 0, 1)),
    "Bathroom": (("Toilet", 1, 1), ("SinkBasin", 1, 2), ("BathtubBasin", 0, 1),
                 ("CounterTop", 1, 1), ("Cabinet", 1, 4), ("Drawer", 0, 4), ("Shelf", 0, 2),
                 ("TowelHolder", 0, 1), ("HandTowelHolder", 0, 2), ("ToiletPaperHanger", 1, 1),
                 ("GarbageCan", 1, 1), ("Dresser", 0, 1)),
}
# Portable objects found in each room type (ALFRED class names).
_ROOM_OBJECTS: dict[str, tuple[str, ...]] = {
    "Kitchen": ("Apple", "Bread", "Egg", "Lettuce", "Potato", "Tomato", "Mug", "Cup", "Bowl",
                "Plate", "Pan", "Pot", "Fork", "Knife", "ButterKnife", "Spoon", "Spatula",
                "Ladle", "DishSponge", "Kettle", "SaltShaker", "PepperShaker", "SoapBottle",
                "WineBottle", "Glassbottle", "PaperTowel"),
    "LivingRoom": ("RemoteControl", "KeyChain", "CreditCard", "Newspaper", "Box", "Laptop",
                   "Statue", "Vase", "Watch", "Pillow", "Book", "Pencil", "TissueBox",
                   "WateringCan", "Bowl", "Plate", "CellPhone"),
    "Bedroom": ("AlarmClock", "Book", "CD", "CellPhone", "CreditCard", "KeyChain", "Laptop",
                "Pen", "Pencil", "Pillow", "Mug", "Bowl", "BaseballBat", "TennisRacket",
                "BasketBall", "Cloth", "Vase", "Statue", "Watch"),
    "Bathroom": ("SoapBar", "SoapBottle", "Cloth", "Candle", "SprayBottle", "ToiletPaper",
                 "Towel", "HandTowel", "DishSponge", "Plunger", "TissueBox"),
}
_LAMPS = {"LivingRoom": ("FloorLamp", "DeskLamp"), "Bedroom": ("DeskLamp",)}
_LAMP_HOSTS = ("SideTable", "Desk", "Dresser")
# Receptacle types the domain's actions name as constants; every problem must declare them.
_DOMAIN_RTYPES = ("SinkBasin", "Microwave", "Fridge")
_DOMAIN_OTYPES = ("Knife", "ButterKnife")
# The appliance a task type needs, which is also never its target receptacle.
_APPLIANCE = {"pick_clean_then_place_in_recep": "SinkBasin",
              "pick_heat_then_place_in_recep": "Microwave",
              "pick_cool_then_place_in_recep": "Fridge"}
_ACTION_PROPERTY = {"pick_clean_then_place_in_recep": "Cleanable",
                    "pick_heat_then_place_in_recep": "Heatable",
                    "pick_cool_then_place_in_recep": "Coolable"}


def _constants() -> Any:
    import alfworld.gen.constants as constants

    return constants


def room_of(scene: int) -> str:
    """ALFRED room type of a floor-plan number (1-30 kitchens, 201-230 living rooms, ...)."""
    for room, numbers in _constants().SCENE_TYPE.items():
        if scene in numbers:
            return room
    raise ValueError(f"scene {scene} is not an ALFRED floor plan number")


def scenes_for(split: str) -> list[int]:
    """Floor plans of a split: training plans for train/valid_seen, held-out ones for unseen."""
    c = _constants()
    if split in ("train", "valid_seen"):
        return list(c.TRAIN_SCENE_NUMBERS)
    if split == "valid_unseen":
        return list(c.TEST_SCENE_NUMBERS)
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


# ----------------------------------------------------------------------------- naming


def _coord(v: float) -> str:
    sign = "_plus_" if v >= 0 else "_minus_"
    return sign + f"{abs(v):05.2f}".replace(".", "_dot_")


def _entity_id(cls: str, xyz: tuple[float, float, float]) -> str:
    """ALFRED object id, e.g. ``Apple_bar__plus_00_dot_10_bar__plus_00_dot_91_bar__minus_01_dot_20``.

    Basins carry their parent's name first (``Sink_bar_..._bar_SinkBasin``) as in ALFRED, which
    is what makes the Demangler print "sinkbasin 1".
    """
    body = "_bar_".join(_coord(v) for v in xyz)
    if cls.endswith("Basin"):
        return f"{cls[:-5]}_bar_{body}_bar_{cls}"
    return f"{cls}_bar_{body}"


def _loc_id(x: int, z: int, rot: int, hor: int) -> str:
    parts = [f"_minus_{-v}" if v < 0 else str(v) for v in (x, z, rot, hor)]
    return "loc_bar_" + "_bar_".join(parts)


class _Namer:
    """Unique random coordinates and locations, so ids never collide inside one game."""

    def __init__(self, rng: random.Random) -> None:
        self.rng, self.used = rng, set()

    def entity(self, cls: str) -> str:
        while True:
            xyz = (round(self.rng.uniform(-5, 5), 2), round(self.rng.uniform(0, 2), 2),
                   round(self.rng.uniform(-5, 5), 2))
            name = _entity_id(cls, xyz)
            if name not in self.used:
                self.used.add(name)
                return name

    def location(self) -> str:
        while True:
            name = _loc_id(self.rng.randint(-12, 12), self.rng.randint(-12, 12),
                           self.rng.choice((0, 90, 180, 270)), self.rng.choice((0, 30, 45, 60)))
            if name not in self.used:
                self.used.add(name)
                return name


# ----------------------------------------------------------------------------- scenes and tasks


@dataclass
class Layout:
    """A floor plan: the fixed receptacles of a scene and where they stand."""

    scene: int
    room: str
    receptacles: list[tuple[str, str, str]]  # (class, id, location)
    start: str  # the agent's start location (no receptacle there)
    lamp_host: str | None = None  # receptacle id holding the lamp (look tasks)
    lamp: tuple[str, str] | None = None  # (class, id)

    @property
    def classes(self) -> set[str]:
        return {c for c, _, _ in self.receptacles}


def scene_layout(scene: int) -> Layout:
    """The deterministic layout of floor plan ``scene`` (same in every game that uses it)."""
    rng = random.Random(f"agentrl-alfworld-scene-{scene}")
    room = room_of(scene)
    namer = _Namer(rng)
    receps = [(cls, namer.entity(cls), namer.location())
              for cls, lo, hi in _ROOM_RECEPTACLES[room] for _ in range(rng.randint(lo, hi))]
    layout = Layout(scene, room, receps, namer.location())
    if room in _LAMPS:
        hosts = [r for r in receps if r[0] in _LAMP_HOSTS]
        if hosts:
            cls = rng.choice(_LAMPS[room])
            layout.lamp_host = rng.choice(hosts)[1]
            layout.lamp = (cls, namer.entity(cls))
    return layout


@dataclass
class GameSpec:
    """One task instance: a layout, the portable objects placed in it and the goal."""

    split: str
    task_type: str
    index: int
    layout: Layout
    object_target: str
    parent_target: str  # "" for look_at_obj_in_light
    toggle_target: str  # "" unless look_at_obj_in_light
    goal_text: str
    objects: list[tuple[str, str, str]] = field(default_factory=list)  # (class, id, recep id)

    @property
    def task_dir(self) -> str:
        second = self.parent_target or self.toggle_target
        return f"{self.task_type}-{self.object_target}-None-{second}-{self.layout.scene}"

    @property
    def trial(self) -> str:
        # Stable per (split, task type, index): the cache finds a game without re-planning it.
        h = hashlib.sha1(f"{self.split}/{self.task_type}/{self.index}".encode()).hexdigest()
        return f"trial_T{GENERATOR_VERSION:02d}{TASK_TYPES.index(self.task_type)}{self.index:06d}_{h[:8]}"


def _holders(layout: Layout, obj: str, exclude: str = "") -> list[tuple[str, str, str]]:
    can = _constants().VAL_RECEPTACLE_OBJECTS
    return [r for r in layout.receptacles if r[0] != exclude and obj in can.get(r[0], ())]


def _task_candidates(task_type: str, layout: Layout) -> list[tuple[str, str]]:
    """(object class, target receptacle class) pairs this layout supports for ``task_type``."""
    c = _constants()
    if layout.room not in c.GOALS_VALID[task_type]:
        return []
    objs = _ROOM_OBJECTS[layout.room]
    if task_type == "look_at_obj_in_light":
        if layout.lamp is None:
            return []
        return [(o, "") for o in objs if _holders(layout, o)]
    appliance = _APPLIANCE.get(task_type, "")
    if appliance and appliance not in layout.classes:
        return []
    if task_type in _ACTION_PROPERTY:
        objs = tuple(o for o in objs if o in c.VAL_ACTION_OBJECTS[_ACTION_PROPERTY[task_type]])
    out = []
    for o in objs:
        for rcls in sorted(layout.classes - {appliance}):
            # The object must start somewhere other than a target-class receptacle, or the goal
            # would hold before the first step.
            if o in c.VAL_RECEPTACLE_OBJECTS.get(rcls, ()) and _holders(layout, o, exclude=rcls):
                out.append((o, rcls))
    return out


def _seed(split: str, task_type: str, index: int) -> int:
    return int(hashlib.sha1(f"agentrl-alfworld/{split}/{task_type}/{index}".encode())
               .hexdigest()[:12], 16)


def sample_spec(split: str, task_type: str, index: int, attempt: int = 0) -> GameSpec:
    """The task of game ``index`` of ``task_type`` in ``split`` (pure Python, no planner)."""
    if task_type not in TASK_TYPES:
        raise ValueError(f"unknown task type {task_type!r}; choose from {TASK_TYPES}")
    rng = random.Random(_seed(split, task_type, index) + 7919 * attempt)
    scenes = scenes_for(split)
    rng.shuffle(scenes)
    for scene in scenes:
        layout = scene_layout(scene)
        cands = _task_candidates(task_type, layout)
        if cands:
            break
    else:  # pragma: no cover - every split has rooms for every task type
        raise RuntimeError(f"no floor plan in {split} supports {task_type}")
    obj, parent = rng.choice(cands)
    toggle = layout.lamp[0] if task_type == "look_at_obj_in_light" and layout.lamp else ""
    import alfworld.gen.goal_library as glib

    template = rng.choice(glib.gdict[task_type]["templates"])
    goal = template.format(obj=obj.lower(), recep=parent.lower(), toggle=toggle.lower(),
                           mrecep="")
    spec = GameSpec(split, task_type, index, layout, obj, parent, toggle, goal)
    namer = _Namer(rng)
    namer.used.update(r[1] for r in layout.receptacles)
    if layout.lamp:
        namer.used.add(layout.lamp[1])
    # Target instances (two or more for pick_two), never inside a target-class receptacle.
    n_target = rng.randint(2, 3) if task_type == "pick_two_obj_and_place" else rng.randint(1, 3)
    for _ in range(n_target):
        spec.objects.append((obj, namer.entity(obj), rng.choice(_holders(layout, obj, parent))[1]))
    # Distractors of other classes.
    others = [o for o in _ROOM_OBJECTS[layout.room] if o != obj and _holders(layout, o)]
    for o in rng.sample(others, k=min(len(others), rng.randint(5, 10))):
        for _ in range(rng.choice((1, 1, 2))):
            spec.objects.append((o, namer.entity(o), rng.choice(_holders(layout, o))[1]))
    return spec


# ----------------------------------------------------------------------------- PDDL


def problem_pddl(spec: GameSpec) -> str:
    """The ``initial_state.pddl`` text of a game, in the shipped ``alfred`` domain."""
    import alfworld.gen.goal_library as glib

    c = _constants()
    lay = spec.layout
    loc_of = {rid: loc for _, rid, loc in lay.receptacles}
    objects = list(spec.objects)
    if lay.lamp and lay.lamp_host:
        objects.append((lay.lamp[0], lay.lamp[1], lay.lamp_host))
    rtypes = sorted(lay.classes | set(_DOMAIN_RTYPES))
    otypes = sorted({o for o, _, _ in objects} | set(_DOMAIN_OTYPES))
    locs = sorted(set(loc_of.values()) | {lay.start})

    decl = ["agent1 - agent"]
    decl += [f"{t}Type - rtype" for t in rtypes] + [f"{t}Type - otype" for t in otypes]
    decl += [f"{rid} - receptacle" for _, rid, _ in lay.receptacles]
    decl += [f"{oid} - object" for _, oid, _ in objects]
    decl += [f"{loc} - location" for loc in locs]

    init = [f"(atLocation agent1 {lay.start})"]
    for cls, rid, loc in lay.receptacles:
        init.append(f"(receptacleType {rid} {cls}Type)")
        init.append(f"(receptacleAtLocation {rid} {loc})")
        if cls in c.OPENABLE_CLASS_SET:
            init.append(f"(openable {rid})")
    actions = c.VAL_ACTION_OBJECTS
    for cls, oid, rid in objects:
        init.append(f"(objectType {oid} {cls}Type)")
        init.append(f"(inReceptacle {oid} {rid})")
        init.append(f"(objectAtLocation {oid} {loc_of[rid]})")
        if cls in actions["Toggleable"]:
            init.append(f"(toggleable {oid})")  # lamps stay put: not pickupable
            continue
        init.append(f"(pickupable {oid})")
        for prop, pred in (("Heatable", "heatable"), ("Coolable", "coolable"),
                           ("Cleanable", "cleanable"), ("Sliceable", "sliceable")):
            if cls in actions[prop]:
                init.append(f"({pred} {oid})")
        if cls in c.MOVABLE_RECEPTACLES_SET:
            init.append(f"(isReceptacleObject {oid})")
    for rt in sorted(lay.classes):
        for ot in otypes:
            if ot in c.VAL_RECEPTACLE_OBJECTS.get(rt, ()):
                init.append(f"(canContain {rt}Type {ot}Type)")

    # goal_library writes types as "# type" and closes the define block itself.
    goal = glib.gdict[spec.task_type]["pddl"].format(
        obj=spec.object_target, recep=spec.parent_target, toggle=spec.toggle_target, mrecep="")
    goal = goal.replace("#", "-")
    name = f"plan_{spec.trial}"
    return ("(define (problem {})\n(:domain alfred)\n(:objects\n        {}\n        )\n"
            "    (:init\n        {}\n        )\n{}").format(
        name, "\n        ".join(decl), "\n        ".join(init), goal.strip("\n") + "\n")


def traj_data(spec: GameSpec) -> dict[str, Any]:
    """The fields of ALFRED's ``traj_data.json`` that ALFWorld's text env reads."""
    return {
        "task_type": spec.task_type,
        "task_id": spec.trial,
        "split": spec.split,
        "scene": {"floor_plan": f"FloorPlan{spec.layout.scene}", "scene_num": spec.layout.scene},
        "pddl_params": {"object_target": spec.object_target, "parent_target": spec.parent_target,
                        "toggle_target": spec.toggle_target, "mrecep_target": "",
                        "object_sliced": False},
        # The goal sentence is templated (goal_library), not a human annotation.
        "turk_annotations": {"anns": [{"task_desc": spec.goal_text, "high_descs": [],
                                       "votes": []}]},
        "agentrl_generated": {"generator_version": GENERATOR_VERSION, "index": spec.index},
    }


def game_data(spec: GameSpec) -> dict[str, Any]:
    """``game.tw-pddl`` content before the solvability check."""
    from alfworld.info import ALFRED_PDDL_PATH, ALFRED_TWL2_PATH

    with open(ALFRED_PDDL_PATH) as f:
        domain = f.read()
    with open(ALFRED_TWL2_PATH) as f:
        grammar = f.read().replace("UNKNOWN GOAL", spec.goal_text)
    return {"pddl_domain": domain, "grammar": grammar, "pddl_problem": problem_pddl(spec)}


# ----------------------------------------------------------------------------- engine


def solve(engine: Any, data: dict[str, Any], translations: Any = None) -> list[str] | None:
    """Plan with fast-downward and replay the plan; the plan if it wins, else None."""
    from agentrl.envs.alfworld.engine import CachedTranslations

    translations = translations or CachedTranslations(max_games=1)
    with translations.active():
        engine.load(data)
        state = engine.reset()
        # The demangler forwards attribute access to TextWorld's PddlEnv.
        plan = list(engine._pddl_state.replan(engine._entity_infos))
        if not plan:
            return None
        for cmd in plan:
            if cmd not in state["admissible_commands"]:
                return None
            state, _, _ = engine.step(cmd)
        return plan if state["won"] else None


_ENGINE: Any = None  # one planner per generator process


def _trial_dir(out_root: str, spec: GameSpec, attempt: int) -> str:
    return os.path.join(out_root, "json_2.1.1", spec.split, spec.task_dir,
                        spec.trial + (f"_a{attempt}" if attempt else ""))


def _is_solvable(game_file: str) -> bool:
    with open(game_file) as f:
        return bool(json.load(f).get("solvable"))


def cached_game(out_root: str, split: str, task_type: str, index: int,
                max_attempts: int = 5) -> str | None:
    """The path of an already generated solvable game, or None (never runs the planner)."""
    for attempt in range(max_attempts):
        spec = sample_spec(split, task_type, index, attempt)
        game_file = os.path.join(_trial_dir(out_root, spec, attempt), "game.tw-pddl")
        if not os.path.exists(game_file):
            return None
        if _is_solvable(game_file):
            return game_file
    return None


def generate_game(out_root: str, split: str, task_type: str, index: int,
                  max_attempts: int = 5) -> str:
    """Write game ``index`` of ``task_type`` under ``out_root/json_2.1.1/split`` (if missing).

    Returns the ``game.tw-pddl`` path of a solvable game. An attempt the planner cannot solve is
    kept on disk with ``"solvable": false`` (the official loader skips it) and the next attempt
    samples a new task.
    """
    global _ENGINE
    for attempt in range(max_attempts):
        spec = sample_spec(split, task_type, index, attempt)
        trial = _trial_dir(out_root, spec, attempt)
        game_file = os.path.join(trial, "game.tw-pddl")
        if os.path.exists(game_file):
            if _is_solvable(game_file):
                return game_file
            continue
        if _ENGINE is None:
            from agentrl.envs.alfworld.engine import make_engine

            _ENGINE = make_engine()
        data = game_data(spec)
        plan = solve(_ENGINE, data)
        data["solvable"] = plan is not None
        data["walkthrough"] = plan or []
        # Write outside the split tree (a crash leaves nothing a loader would pick up), then
        # publish the whole trial directory at once: readers never see half a game.
        tmp = os.path.join(out_root, ".tmp", f"{spec.trial}.{os.getpid()}")
        os.makedirs(tmp, exist_ok=True)
        with open(os.path.join(tmp, "traj_data.json"), "w") as f:
            json.dump(traj_data(spec), f, indent=2)
        with open(os.path.join(tmp, "initial_state.pddl"), "w") as f:
            f.write(data["pddl_problem"])
        with open(os.path.join(tmp, "game.tw-pddl"), "w") as f:
            json.dump(data, f)
        os.makedirs(os.path.dirname(trial), exist_ok=True)
        if os.path.exists(trial):
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, trial)
        if plan is not None:
            return game_file
    raise RuntimeError(f"no solvable {task_type} game for index {index} after {max_attempts} "
                       "attempts; this is a generator bug, please report it")


def _generate_job(args: tuple[str, str, str, int]) -> str:
    return generate_game(*args)


def game_ids(num_games: int, task_types: Sequence[str] = TASK_TYPES) -> list[tuple[str, int]]:
    """Games of a split in play order: task types round-robin, ``(task_type, index)``.

    Game ``i`` is the ``i // len(task_types)``-th game of type ``task_types[i % len]``, so a
    filtered env shares games with an unfiltered one and any prefix covers the types evenly.
    """
    k = len(task_types)
    return [(task_types[i % k], i // k) for i in range(num_games)]


def default_root() -> str:
    """Where generated games are cached: ``<agentrl cache>/alfworld/gen-v<version>``."""
    from agentrl.cache import cache_dir

    return os.path.join(cache_dir(), "alfworld", f"gen-v{GENERATOR_VERSION}")


def ensure_games(split: str, num_games: int, task_types: Sequence[str] = TASK_TYPES,
                 root: str | None = None, workers: int | None = None,
                 progress: bool = True) -> list[str]:
    """Generate (once) and return the ``game.tw-pddl`` paths of the first games of a split.

    Runs under a file lock so concurrent envs wait for one generator instead of racing it.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    bad = [t for t in task_types if t not in TASK_TYPES]
    if bad or not task_types:
        raise ValueError(f"unknown task types {bad}; choose from {TASK_TYPES}")
    root = root or default_root()
    os.makedirs(root, exist_ok=True)
    jobs = [(root, split, t, i) for t, i in game_ids(num_games, task_types)]
    paths = [cached_game(*j) for j in jobs]
    if all(paths):
        return paths  # type: ignore[return-value]
    with open(os.path.join(root, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        # Another process may have generated them while this one waited for the lock.
        for k, j in enumerate(jobs):
            if paths[k] is None:
                paths[k] = cached_game(*j)
        missing = [k for k, p in enumerate(paths) if p is None]
        shutil.rmtree(os.path.join(root, ".tmp"), ignore_errors=True)  # a killed run's leftovers
        todo = [jobs[k] for k in missing]
        if (workers or 1) <= 1:
            done: Iterator[str] = map(_generate_job, todo)
            pool = None
        else:
            pool = ProcessPoolExecutor(workers)
            done = pool.map(_generate_job, todo, chunksize=2)
        from agentrl.progress import Progress

        n = len(missing)
        try:
            with Progress(n, f"generating {n} ALFWorld games ({split}), each checked by the "
                          f"planner, cached in {root}", "game",
                          SECONDS_PER_GAME / max(1, workers or 1),
                          kept=lambda: f"the finished games in {root}",
                          enabled=progress and n > 1) as bar:
                for k, path in zip(missing, done):
                    paths[k] = path
                    bar.update(1)
        finally:
            if pool:
                pool.shutdown()
    return paths  # type: ignore[return-value]


#: Wall seconds per generated game on one core of a 2-core machine (planner check), for the
#: up-front estimate of `ensure_games`.
SECONDS_PER_GAME = 1.0


def official_split_dir(data_path: str, split: str) -> str:
    """The folder of ``split`` in the ALFWorld dataset at ``data_path`` (``$VARS`` and ``~``
    expanded); FileNotFoundError, naming the fix, when there is none."""
    root = os.path.expanduser(os.path.expandvars(data_path))
    for cand in (os.path.join(root, "json_2.1.1", split), os.path.join(root, split), root):
        if os.path.isdir(cand):
            return cand
    unset = re.findall(r"\$\{?(\w+)", root)  # a variable expandvars left alone is not set
    why = f" (${unset[0]} is not set)" if unset else ""
    raise FileNotFoundError(
        f"no ALFWorld data at {data_path!r}{why}: expected <root>/json_2.1.1/{split}/. Download "
        "it with `alfworld-download`, or leave data_path unset to use generated games.")


def prepare(kwargs: dict[str, Any], seeds: Sequence[int] | None = None) -> None:
    """Generate, with progress and before a run builds its envs, the games `ALFWorldEnv`
    with these constructor ``kwargs`` loads (all of its split's ``num_games``; official data
    under ``data_path`` needs nothing but to be there)."""
    if kwargs.get("data_path"):
        official_split_dir(kwargs["data_path"], kwargs.get("split", "train"))
        return
    if kwargs.get("num_games") is None:
        return
    ensure_games(kwargs.get("split", "train"), int(kwargs["num_games"]),
                 tuple(kwargs.get("task_types") or TASK_TYPES), root=kwargs.get("cache_root"))


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: generate games in the official layout under ``--out``."""
    p = argparse.ArgumentParser(prog="python -m agentrl.envs.alfworld.generate",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="dataset root (json_2.1.1/<split>/... below it)")
    p.add_argument("--n", type=int, default=60, help="games per split")
    p.add_argument("--split", choices=SPLITS + ("all",), default="all")
    p.add_argument("--task-types", nargs="*", default=list(TASK_TYPES), choices=TASK_TYPES)
    p.add_argument("--workers", type=int, default=1, help="generator processes")
    args = p.parse_args(argv)
    splits = SPLITS if args.split == "all" else (args.split,)
    for split in splits:
        t0 = time.perf_counter()
        paths = ensure_games(split, args.n, args.task_types, root=args.out,
                             workers=args.workers)
        dt = time.perf_counter() - t0
        print(f"{split}: {len(paths)} games in {dt:.1f} s "
              f"({dt / max(len(paths), 1):.3f} s/game) -> "
              f"{os.path.join(args.out, 'json_2.1.1', split)}")


if __name__ == "__main__":
    main()
