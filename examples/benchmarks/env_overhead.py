"""Env overhead: steps per second of each env family through agentrl against its bare engine,
replaying the same recorded actions.

For each family a fixed action sequence is recorded first (episodes of the env's expert, and
episodes of random admissible actions from a fixed seed, on a few games or tasks), then
replayed, alternating (A B C, C B A, ...), by:

- ``bare``: the engine driven directly, with no agentrl code in the loop:
  TextWorld: ``textworld.start`` with the same requested infos, one engine per game;
  ALFWorld: the env's PDDL engine (`agentrl.envs.alfworld.engine.make_engine`, TextWorld's
  PddlEnv in ALFWorld's demangler) loaded per game, ``reset``/``step``;
  ScienceWorld: the ``scienceworld`` package's own ``ScienceWorldEnv`` (``load``, ``reset``,
  ``step``: its step also returns the look, inventory and valid actions); ``bare-min`` is the
  least a loop can ask of the simulator: ``step``, score, completion and the valid actions;
  WebShop: the store and page state machine (`WebShopEnv`'s transitions and page text), no
  info; ToolUse: the tools themselves (BM25 search, calculator, answer check) on pre-parsed
  calls.
- ``env``: the registered env from `agentrl.registry.make_env` (gymnasium's wrappers, the
  info every step carries: admissible actions, ``state_key``, ...);
- ``pool``: the same env in an `InProcessPool` slot, as the rollout engine steps it;
- ``proc``: a `ProcessPool` with one worker (``--process``): the same plus a pipe round trip
  per step.

A measurement replays the whole recorded sequence (resets included) as many times as fill
``--seconds`` of the bare loop and reports actions per second; ratios are per round
(env / bare), then the median. The env kwargs are the env's
recommended training settings (what ``agentrl train env.id=...`` runs); TextWorld also runs
without its transition memo (``cache_transitions=False``), since replaying identical episodes
would otherwise measure a dictionary lookup.

    OMP_NUM_THREADS=1 python -m examples.benchmarks.env_overhead [--families webshop,tooluse]
        [--pairs 3] [--seconds 0.5] [--process]

Figures move with the machine's load; the ratios from one run are what to compare.
"""

from __future__ import annotations

import importlib.util
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from examples.benchmarks import machine

Episode = tuple[int, list[str], dict[str, Any]]  # (seed, actions, reset info subset)
_META = ("game_file", "game_index", "task_type", "variation")


@dataclass
class Family:
    """One env family: its id and kwargs, the seeds to record on, episodes per seed, turns."""

    name: str
    env_id: str
    kwargs: dict[str, Any]
    seeds: list[int]
    episodes: int  # per seed: even ones follow the expert, odd ones random admissible actions
    max_turns: int
    bare: Callable[[Family, list[Episode]], Callable[[], int]]
    module: str  # importable module the family needs
    extra_bare: dict[str, Callable[[Family, list[Episode]], Callable[[], int]]] = field(
        default_factory=dict)


def record(fam: Family, seed: int = 0) -> list[Episode]:
    """Play ``fam``'s episodes once through agentrl and keep the actions taken."""
    from agentrl.registry import make_env

    rng = random.Random(seed)
    env = make_env(fam.env_id, expert_actions=True, **fam.kwargs)
    out: list[Episode] = []
    try:
        for s in fam.seeds:
            for k in range(fam.episodes):
                _, info = env.reset(seed=s)
                meta = {m: info[m] for m in _META if m in info}
                actions: list[str] = []
                while len(actions) < fam.max_turns:
                    adm = [a for a in info.get("admissible_actions") or [] if "<" not in a]
                    a = info.get("expert_action")
                    if adm and (a is None or k % 2 == 1):
                        a = rng.choice(adm)
                    if a is None:
                        break
                    actions.append(a)
                    _, _, term, trunc, info = env.step(a)
                    if term or trunc:
                        break
                out.append((s, actions, meta))
    finally:
        env.close()
    return out


# ------------------------------------------------------------------------- agentrl replays

def env_replay(fam: Family, eps: list[Episode]) -> tuple[Callable[[], int], Any]:
    from agentrl.registry import make_env

    env = make_env(fam.env_id, **fam.kwargs)

    def run() -> int:
        n = 0
        for seed, actions, _ in eps:
            env.reset(seed=seed)
            for a in actions:
                env.step(a)
            n += len(actions)
        return n

    return run, env


def pool_replay(fam: Family, eps: list[Episode], process: bool) -> tuple[Callable[[], int], Any]:
    from agentrl.envpool import InProcessPool, ProcessPool

    pool = (ProcessPool(fam.env_id, fam.kwargs, 1, step_timeout=600.0) if process
            else InProcessPool(fam.env_id, fam.kwargs, 1))

    def run() -> int:
        n = 0
        for seed, actions, _ in eps:
            r = pool.reset([0], [seed])[0]
            for a in actions:
                r = pool.step([0], [a])[0]
            if r.error:
                raise RuntimeError(f"{fam.name}: {r.error} {r.message}")
            n += len(actions)
        return n

    return run, pool


# ---------------------------------------------------------------------------- bare engines

def bare_textworld(fam: Family, eps: list[Episode]) -> Callable[[], int]:
    from agentrl.envs.textworld_env import _game_path, _start_engine

    n_games = fam.kwargs["num_games"]
    path = {s: _game_path(fam.kwargs["family"], fam.kwargs["level"], s % n_games)
            for s, _, _ in eps}
    # the env's own request_infos (admissible commands, walkthrough, ...): the same engine work
    engines = {p: _start_engine(p) for p in set(path.values())}

    def run() -> int:
        n = 0
        for seed, actions, _ in eps:
            eng = engines[path[seed]]
            eng.reset()
            for a in actions:
                eng.step(a)
            n += len(actions)
        return n

    return run


def bare_alfworld(fam: Family, eps: list[Episode]) -> Callable[[], int]:
    from agentrl.envs.alfworld.engine import CachedTranslations, make_engine

    eng, translations, loaded = make_engine(), CachedTranslations(), [""]

    def run() -> int:
        n = 0
        with translations.active():
            for _, actions, meta in eps:
                if loaded[0] != meta["game_file"]:
                    eng.load(meta["game_file"])
                    loaded[0] = meta["game_file"]
                eng.reset()
                for a in actions:
                    eng.step(a)
                n += len(actions)
        return n

    return run


def _official_sciworld(fam: Family) -> Any:
    from scienceworld import ScienceWorldEnv as Official

    return Official(envStepLimit=10_000)


def bare_sciworld(fam: Family, eps: list[Episode]) -> Callable[[], int]:
    sw, simpl, loaded = _official_sciworld(fam), fam.kwargs.get("simplification", "easy"), [None]

    def run() -> int:
        n = 0
        for _, actions, meta in eps:
            key = (meta["task_type"], meta["variation"])
            if loaded[0] != key:
                sw.load(key[0], key[1], simpl)
                loaded[0] = key
            sw.reset()
            for a in actions:
                sw.step(a)
            n += len(actions)
        return n

    return run


def bare_min_sciworld(fam: Family, eps: list[Episode]) -> Callable[[], int]:
    sw, simpl, loaded = _official_sciworld(fam), fam.kwargs.get("simplification", "easy"), [None]
    srv = sw.server

    def run() -> int:
        assert sw.server is srv  # the closure holds ``sw``: its JVM lives as long as this loop
        n = 0
        for _, actions, meta in eps:
            key = (meta["task_type"], meta["variation"])
            if loaded[0] != key:
                srv.load(key[0], key[1], simpl, False)
                loaded[0] = key
            srv.reset()
            srv.step("look around")
            for a in actions:
                srv.step(a)
                srv.getScore()
                srv.getCompleted()
                json.loads(srv.getValidActionObjectCombinationsJSON())
            n += len(actions)
        return n

    return run


def bare_webshop(fam: Family, eps: list[Episode]) -> Callable[[], int]:
    from agentrl.envs.webshop.env import WebShopEnv, parse_action

    shop = WebShopEnv(**fam.kwargs)
    parsed = [(s, [parse_action(a) for a in actions]) for s, actions, _ in eps]

    def run() -> int:
        n = 0
        for seed, calls in parsed:
            shop.goal = shop.goals[seed % len(shop.goals)]
            shop._go_search()
            shop.done = False
            shop._observation()
            for call in calls:
                shop._apply(*call)
                shop._observation()
            n += len(calls)
        return n

    return run


def bare_tooluse(fam: Family, eps: list[Episode]) -> Callable[[], int]:
    from agentrl.envs.tooluse.env import _ACTION, ToolUseEnv
    from agentrl.envs.tooluse.kb import answers_match
    from agentrl.envs.tooluse.tools import calculate, format_number

    env = ToolUseEnv(**fam.kwargs)
    search, top = env.search, env.max_output
    calls = [(s, [_ACTION.match(a).groups() for a in actions]) for s, actions, _ in eps]

    def run() -> int:
        n = 0
        for seed, steps in calls:
            task = env.task_for_seed(seed)
            for tool, arg in steps:
                if tool == "search":
                    search.render(arg)[:top]
                elif tool == "calculate":
                    format_number(calculate(arg))
                else:
                    answers_match(arg, task.answer)
            n += len(steps)
        return n

    return run


# ----------------------------------------------------------------------------- the runs

def families() -> dict[str, Family]:
    from agentrl.registry import load_builtin_envs, recommended_settings

    load_builtin_envs()

    def kw(env_id: str, **extra: Any) -> dict[str, Any]:
        return {**recommended_settings(env_id).get("env", {}).get("kwargs", {}), **extra}

    tw = "agentrl/TextWorld-CoinCollector-v0"
    return {f.name: f for f in [
        Family("textworld", tw, kw(tw, family="coin_collector", cache_transitions=False),
               [0, 1, 2, 3], 4, 20, bare_textworld, "textworld"),
        Family("alfworld", "agentrl/ALFWorld-v0", kw("agentrl/ALFWorld-v0"), [0, 1], 2, 20,
               bare_alfworld, "alfworld"),
        Family("sciworld", "agentrl/ScienceWorld-v0", kw("agentrl/ScienceWorld-v0"), [0, 1], 2,
               12, bare_sciworld, "scienceworld", {"bare-min": bare_min_sciworld}),
        Family("webshop", "agentrl/WebShop-v0", kw("agentrl/WebShop-v0"), list(range(8)), 4,
               15, bare_webshop, "rank_bm25"),
        Family("tooluse", "agentrl/ToolUse-v0", kw("agentrl/ToolUse-v0"), list(range(16)), 4,
               6, bare_tooluse, "rank_bm25"),
    ]}


def measure(fam: Family, pairs: int, seconds: float, process: bool) -> dict[str, list[float]]:
    """Steps/s of every replay of ``fam``, ``pairs`` alternating rounds."""
    eps = record(fam)
    runs: dict[str, Callable[[], int]] = {"bare": fam.bare(fam, eps)}
    runs.update({k: b(fam, eps) for k, b in fam.extra_bare.items()})
    made = [("env", env_replay(fam, eps)), ("pool", pool_replay(fam, eps, False))]
    if process:
        made.append(("proc", pool_replay(fam, eps, True)))
    closers = []
    for name, (run, obj) in made:
        runs[name] = run
        closers.append(obj)
    try:
        for run in runs.values():  # warm-up: engines started, games loaded, caches filled
            run()
        t0 = time.perf_counter()
        runs["bare"]()
        # as many replays of the sequence per measurement as fill ``seconds`` of the bare loop
        repeat = max(1, math.ceil(seconds / max(time.perf_counter() - t0, 1e-6)))
        timed = {k: _timed(run, repeat) for k, run in runs.items()}
        out = machine.alternate(timed, pairs)
    finally:
        for c in closers:
            c.close()
    steps = sum(len(a) for _, a, _ in eps)
    print(f"{fam.name}: {len(eps)} episodes, {steps} actions per replay, {repeat} replays per "
          "measurement", flush=True)
    return out


def _timed(run: Callable[[], int], repeat: int) -> Callable[[], float]:
    def once() -> float:
        t0 = time.perf_counter()
        n = sum(run() for _ in range(repeat))
        return n / (time.perf_counter() - t0)

    return once


def report(name: str, rates: dict[str, list[float]]) -> list[str]:
    """One table row: median steps/s per replay, then median per-round ratios to ``bare``."""
    cells = [name] + [f"{machine.median(v):.1f}" for v in rates.values()]
    cells += [f"{k}/bare {machine.median(machine.paired_ratios(v, rates['bare'])):.2f}"
              for k, v in rates.items() if k not in ("bare", "bare-min")]
    if "bare-min" in rates:
        cells.append("env/bare-min "
                     f"{machine.median(machine.paired_ratios(rates['env'], rates['bare-min'])):.2f}")
    return cells


def main(argv: list[str] | None = None) -> None:
    ap = machine.parser(__doc__)
    ap.add_argument("--families", default="", help="comma-separated subset of "
                    "textworld,alfworld,sciworld,webshop,tooluse (default: all installed)")
    ap.add_argument("--seconds", type=float, default=0.5,
                    help="bare replay length: the recorded sequence is repeated to fill it")
    ap.add_argument("--process", action="store_true", help="also a one-worker ProcessPool")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    machine.header("env overhead: agentrl vs the bare engine, same actions (steps/s)")
    fams = families()
    wanted = [f for f in a.families.split(",") if f] or list(fams)
    unknown = set(wanted) - set(fams)
    if unknown:
        raise SystemExit(f"unknown families {sorted(unknown)}; choose from {list(fams)}")
    rows = []
    for name in wanted:
        fam = fams[name]
        if importlib.util.find_spec(fam.module) is None:
            print(f"skip {name}: {fam.module} is not installed (pip install 'agentrl[{name}]')")
            continue
        rates = measure(fam, a.pairs, a.seconds, a.process)
        rows.append(report(name, rates))
        print("  " + " | ".join(f"{k} {machine.median(v):.1f}" for k, v in rates.items())
              + " steps/s;  " + " ".join(rows[-1][1 + len(rates):]), flush=True)
    print("\nfamily | " + " | ".join(["steps/s: bare [bare-min] env pool [proc]", "ratios"]))
    for r in rows:
        print(" | ".join(r))
    print(machine.load_average())


if __name__ == "__main__":
    main()
