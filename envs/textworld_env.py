"""TextWorld games as agentrl envs: coin collector, treasure hunter and cooking families.

Games are generated offline with TextWorld's own generator and Inform7 compiler (shipped in the
``textworld`` wheel), cached on disk, and played with TextWorld's Z-machine engine. A split is a
fixed list of generator seeds: ``train`` uses seeds ``0..num_games-1`` and ``eval`` uses
``100000..`` so held-out games never overlap the training games.

``reset(seed)`` plays game ``seed % num_games`` of the split, generating it first if it is not
cached yet; `prepare` generates a run's games up front, with progress. Actions outside the
admissible commands are not sent to the engine: they are steps with ``action_valid=False`` and
no effect, which keeps any string (100 KB, binary) away from the interpreter.

The quickstart's games (coin collector level 3: 100 train and 100 eval games) ship inside the
package as ``agentrl/data/games/textworld-<family>-<level>-<tag>.tar.xz`` (0.3 MB: the
story files share most of their bytes), so a first run unpacks them in a second instead of
compiling them for minutes. The archive is this module's own output, rebuilt with::

    python -m agentrl.envs.textworld_env pack --family coin_collector --level 3 --train 100 --eval 100
"""

from __future__ import annotations

import atexit
import fcntl
import hashlib
import json
import os
import re
import warnings
from collections import OrderedDict
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from agentrl.cache import cache_dir
from agentrl.envs.base import TextEnv

FAMILIES = ("coin_collector", "treasure_hunter", "cooking")
EVAL_SEED_OFFSET = 100_000
_BANNER_END = re.compile(r"\$\$\$\$\$\$\$ \n\n", re.S)
_STATUS = re.compile(r"\s+-= [^=\n]* =-[-\d/]*\s*$")  # the Z-machine status line


def _settings(family: str, level: int) -> dict[str, Any]:
    if family == "cooking":
        # A recipe's difficulty grows with the level: ingredients, rooms to explore, processing.
        recipe = min(1 + level // 3, 3)
        go = 1 if level <= 1 else 6 if level <= 4 else 9 if level <= 7 else 12  # allowed sizes
        return {"recipe": recipe, "take": recipe, "go": go, "open": level >= 2,
                "cook": level >= 3, "cut": level >= 4, "drop": False, "recipe_seed": 0,
                "split": "train"}
    return {"level": level}


def _game_path(family: str, level: int, gen_seed: int) -> str:
    return os.path.join(cache_dir(), "textworld", games_dirname(family, level), f"game_{gen_seed}.z8")


def games_dirname(family: str, level: int) -> str:
    """The cache folder (and packaged archive) name of a family and level's games."""
    tag = hashlib.sha1(json.dumps(_settings(family, level), sort_keys=True).encode()).hexdigest()[:8]
    return f"{family}-{level}-{tag}"


def _generate_one(args: tuple[str, int, int]) -> str:
    family, level, gen_seed = args
    import textworld
    from textworld import GameOptions

    path = _game_path(family, level, gen_seed)
    if os.path.exists(path) and os.path.exists(path[:-3] + ".json"):
        return path
    opts = GameOptions()
    opts.seeds = gen_seed
    opts.path = path
    opts.force_recompile = True
    game = _MAKERS[family]()(_settings(family, level), opts)
    tmp = path[:-3] + f".tmp{os.getpid()}.z8"
    opts.path = tmp
    try:
        textworld.generator.compile_game(game, opts)
        # Publish atomically so a concurrent reader never sees a half-written game; the .json
        # goes first because a game counts as present once its .z8 exists.
        os.replace(tmp[:-3] + ".json", path[:-3] + ".json")
        os.replace(tmp, path)
    finally:  # also on Ctrl-C: an interrupted compile leaves nothing behind
        for ext in (".z8", ".json", ".ni"):
            if os.path.exists(tmp[:-3] + ext):
                os.remove(tmp[:-3] + ext)
    return path


def _maker_coin() -> Any:
    from textworld.challenges.tw_coin_collector import coin_collector

    return coin_collector.make


def _maker_treasure() -> Any:
    from textworld.challenges.tw_treasure_hunter import treasure_hunter

    return treasure_hunter.make


def _maker_cooking() -> Any:
    from textworld.challenges.tw_cooking import cooking

    return cooking.make


_MAKERS = {"coin_collector": _maker_coin, "treasure_hunter": _maker_treasure,
           "cooking": _maker_cooking}
#: Wall seconds to generate one game on one core of a 2-core machine (Inform7 compile),
#: for the up-front estimate; the progress line switches to the measured rate at once.
SECONDS_PER_GAME = 4.5


def packaged_archive(family: str, level: int) -> str | None:
    """The games archive shipped inside the package for this family and level, if any."""
    from importlib.resources import files

    p = files("agentrl").joinpath("data", "games", f"textworld-{games_dirname(family, level)}.tar.xz")
    return str(p) if p.is_file() else None


def _unpack(archive: str, root: str, gen_seeds: list[int]) -> int:
    """Copy the games of ``gen_seeds`` that ``archive`` holds into ``root``; returns how many."""
    import tarfile

    want = {f"game_{s}{ext}" for s in gen_seeds for ext in (".z8", ".json")}
    n = 0
    with tarfile.open(archive, "r:xz") as tar:
        for m in tar:
            if m.name not in want or not m.isfile():
                continue
            src = tar.extractfile(m)
            assert src is not None
            final = os.path.join(root, m.name)
            tmp = f"{final}.tmp{os.getpid()}"
            try:
                with open(tmp, "wb") as f:
                    f.write(src.read())
                os.replace(tmp, final)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
            n += m.name.endswith(".z8")
    return n


def _sweep_partial(root: str) -> None:
    """Remove what a generation killed without cleanup (SIGKILL, power loss) left behind.
    Called with the folder's lock held, so no live generator is writing these."""
    for name in os.listdir(root):
        if ".tmp" in name:
            try:
                os.remove(os.path.join(root, name))
            except OSError:
                pass


def ensure_games(family: str, level: int, gen_seeds: list[int], workers: int | None = None,
                 progress: bool = True) -> list[str]:
    """Generate (once) and return the paths of the games with these generator seeds.

    Games shipped in the package (`packaged_archive`) are unpacked instead of generated.
    Generation runs in a process pool (a few seconds per game per core) under a file lock, so
    concurrent envs wait for one generator instead of racing it; progress and a time estimate
    go to stderr (`agentrl.progress`).
    """
    from agentrl.progress import Progress, say

    if family not in FAMILIES:
        raise ValueError(f"unknown TextWorld family {family!r}; choose one of {FAMILIES}")
    paths = [_game_path(family, level, s) for s in gen_seeds]
    if all(os.path.exists(p) for p in paths):
        return paths
    root = os.path.dirname(paths[0])
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, ".lock"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if progress:
                say(f"waiting for another process that is generating TextWorld games in {root}")
            fcntl.flock(lock, fcntl.LOCK_EX)
        _sweep_partial(root)
        missing = [s for s, p in zip(gen_seeds, paths) if not os.path.exists(p)]
        archive = packaged_archive(family, level) if missing else None
        if archive:
            _unpack(archive, root, missing)
            missing = [s for s, p in zip(gen_seeds, paths) if not os.path.exists(p)]
        if missing:
            workers = workers or max(1, min(os.cpu_count() or 1, len(missing)))
            jobs = [(family, level, s) for s in missing]
            desc = (f"generating {len(jobs)} TextWorld {family} games (level {level}) with "
                    f"{workers} process{'es' if workers > 1 else ''}, cached in {root}")
            with Progress(len(jobs), desc, "game", SECONDS_PER_GAME / workers,
                          kept=lambda: f"the finished games in {root} (the next run "
                                       "generates only the rest)",
                          enabled=progress) as bar:
                if workers == 1:
                    for j in jobs:
                        _generate_one(j)
                        bar.update(1)
                else:
                    with ProcessPoolExecutor(workers) as ex:
                        for _ in ex.map(_generate_one, jobs):
                            bar.update(1)
    return paths


def prepare(kwargs: dict[str, Any], seeds: list[int] | None = None) -> None:
    """Generate, before a run builds its envs, the games that ``reset(seed)`` will play for
    ``seeds`` (``None``: every game of the split), with progress. ``kwargs`` are the env's
    full constructor arguments (registered defaults included)."""
    family, level = kwargs.get("family", "coin_collector"), int(kwargs.get("level", 5))
    split, num_games = kwargs.get("split", "train"), int(kwargs.get("num_games", 100))
    indices = range(num_games) if seeds is None else sorted({s % num_games for s in seeds})
    offset = 0 if split == "train" else EVAL_SEED_OFFSET
    ensure_games(family, level, [offset + i for i in indices])


_TRANSITIONS: OrderedDict[tuple[str, tuple[str, ...]], tuple[str, float, bool, dict[str, Any]]] = (
    OrderedDict())
_MAX_TRANSITIONS = 200_000


def _remember(key: tuple[str, tuple[str, ...]], rec: tuple[str, float, bool, dict[str, Any]],
              enabled: bool) -> None:
    if not enabled:
        return
    _TRANSITIONS[key] = rec
    if len(_TRANSITIONS) > _MAX_TRANSITIONS:
        _TRANSITIONS.popitem(last=False)


# Idle engines of this process, shared by its envs: id -> (game file, engine, commands applied
# since its last reset or None), least recently used first. Starting an engine (~0.1 s) and
# resetting it cost more than a step; a group's rollouts play the same game, so an engine one
# episode left behind is often a few commands short of where another needs one.
_IDLE: OrderedDict[int, tuple[str, Any, tuple[str, ...] | None]] = OrderedDict()
_MAX_IDLE = 32  # each holds a Z-machine (~0.5 MB)


def _start_engine(path: str) -> Any:
    import textworld
    from textworld import EnvInfos

    infos = EnvInfos(admissible_commands=True, won=True, lost=True, score=True,
                     max_score=True, objective=True, description=True, inventory=True,
                     location=True, policy_commands=True)
    with warnings.catch_warnings():
        # jericho warns that generated games lack its per-game tables; TextWorld tracks
        # score and state itself, so nothing is lost.
        warnings.simplefilter("ignore")
        return textworld.start(path, request_infos=infos)


def _take_engine(path: str, history: tuple[str, ...]) -> tuple[Any, tuple[str, ...] | None]:
    """An idle engine of game ``path`` (the one whose applied commands are the longest prefix
    of ``history``, else any) or a new one; returns it with its applied commands."""
    best, best_len = None, -2
    for key, (p, _, applied) in _IDLE.items():
        if p != path:
            continue
        n = len(applied) if applied is not None and history[:len(applied)] == applied else -1
        if n > best_len:
            best, best_len = key, n
    if best is None:
        return _start_engine(path), None
    _, eng, applied = _IDLE.pop(best)
    return eng, applied


def _give_engine(path: str, eng: Any, applied: tuple[str, ...] | None) -> None:
    _IDLE[id(eng)] = (path, eng, applied)
    while len(_IDLE) > _MAX_IDLE:
        _, (_, old, _) = _IDLE.popitem(last=False)
        old.close()


@atexit.register
def _close_idle() -> None:
    while _IDLE:
        _, (_, eng, _) = _IDLE.popitem()
        eng.close()


def _clean(text: str) -> str:
    """Strip TextWorld's ASCII banner, the prompt marker and surplus blank lines."""
    m = _BANNER_END.search(text)
    if m:
        text = text[m.end():]
    text = _STATUS.sub("", text)
    text = text.split("Would you like to RESTART", 1)[0]
    text = text.replace("\n>", "\n").strip()
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip(" >\n")


class TextWorldEnv(TextEnv):
    """A family of generated TextWorld games.

    Args:
        family: ``coin_collector`` | ``treasure_hunter`` | ``cooking``.
        level: difficulty (coin collector: rooms to cross; see TextWorld's challenges).
        split: ``train`` or ``eval`` (disjoint generator seeds).
        num_games: games in the split; ``reset(seed)`` plays game ``seed % num_games``.
        invalid_feedback: observation text for an action that is not admissible.
        cache_transitions: memoise (game, history) -> transition in this process; exact,
            since generated games are deterministic (a test checks cached == uncached).
    """

    def __init__(self, family: str = "coin_collector", level: int = 5, split: str = "train",
                 num_games: int = 100, invalid_feedback: str = "Nothing happens.",
                 cache_transitions: bool = True, render_mode: str | None = None) -> None:
        super().__init__(render_mode)
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        if num_games < 1:
            raise ValueError("num_games must be >= 1")
        self.family, self.level, self.split, self.num_games = family, level, split, num_games
        self.invalid_feedback = invalid_feedback
        self._gen_offset = 0 if split == "train" else EVAL_SEED_OFFSET
        # Games are generated when first played (`prepare` makes a run's games up front).
        self.game_paths = [_game_path(family, level, self._gen_offset + i)
                           for i in range(num_games)]
        self.cache_transitions = cache_transitions
        self._path = ""
        self._history: tuple[str, ...] = ()
        # The engine this env holds, its game, and the commands it has applied since its last
        # reset (None: unknown, reset before use).
        self._eng: Any = None
        self._eng_path = ""
        self._applied: tuple[str, ...] | None = None
        self._cur: tuple[str, float, bool, dict[str, Any]] | None = None
        self._done = True

    # -- engine management ------------------------------------------------------------
    def _engine_at(self, history: tuple[str, ...]) -> Any:
        """An engine of the current game that has applied exactly ``history`` since its reset:
        the held one if it is on the way there, else the furthest-along idle engine of this
        process (`_take_engine`), else a new one; only the missing commands are applied."""
        held = self._applied is not None and history[:len(self._applied)] == self._applied
        if self._eng is None or self._eng_path != self._path or not held:
            self._release_engine()
            self._eng, self._applied = _take_engine(self._path, history)
            self._eng_path = self._path
        if self._applied is None or history[:len(self._applied)] != self._applied:
            self._eng.reset()
            self._applied = ()
        for cmd in history[len(self._applied):]:
            self._eng.step(cmd)
        self._applied = history
        return self._eng

    def _engine_reset(self) -> Any:
        """Reset an engine of the current game (the held one, else `_take_engine`'s) and return
        its first game state: one engine reset, where `_engine_at` would reset it and the
        caller then reset it again."""
        if self._eng is None or self._eng_path != self._path:
            self._release_engine()
            self._eng, _ = _take_engine(self._path, ())
            self._eng_path = self._path
        gs = self._eng.reset()
        self._applied = ()
        return gs

    def _release_engine(self) -> None:
        if self._eng is not None:
            _give_engine(self._eng_path, self._eng, self._applied)
        self._eng, self._applied = None, None

    def _info(self, gs: Any, action_valid: bool = True) -> dict[str, Any]:
        adm = sorted(gs.admissible_commands)
        return {
            "task_type": self.family,
            "task": gs.objective or "",
            "admissible_actions": adm,
            "state_key": f"{gs.location}|{_clean(gs.description or '')}|{gs.inventory}",
            "score": float(gs.score),
            "max_score": float(gs.max_score),
            "action_valid": action_valid,
            "success": bool(gs.won),
            "walkthrough": list(gs.policy_commands or []),
        }

    # -- gymnasium API --------------------------------------------------------------------
    # Games are deterministic, so a transition is a pure function of (game, command history).
    # Transitions are memoised per process; an engine is only touched on a cache miss, after
    # applying the commands it lacks (`_engine_at`). Results are identical either way.
    def _record(self, gs: Any, feedback: str, done: bool) -> tuple[str, float, bool, dict[str, Any]]:
        return feedback, float(gs.score), bool(done), self._info(gs)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        idx = (seed if seed is not None else int(self.np_random.integers(0, 2**31))) % self.num_games
        self._path, self._history = self.game_paths[idx], ()
        if not os.path.exists(self._path):
            ensure_games(self.family, self.level, [self._gen_offset + idx], workers=1)
        key = (self._path, ())
        rec = _TRANSITIONS.get(key) if self.cache_transitions else None
        if rec is None:
            gs = self._engine_reset()
            obs = _clean(gs.feedback)
            # The banner's tail repeats the objective before the first room; keep the room text.
            if gs.objective and gs.objective in obs:
                obs = obs.split(gs.objective, 1)[1].strip()
            rec = self._record(gs, obs, False)
            _remember(key, rec, self.cache_transitions)
        self._cur, self._done = rec, False
        obs, _, _, info = rec
        self._last_obs = obs
        return obs, {**info, "game_index": idx}

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self._cur is None or self._done:
            return "The episode is over; call reset().", 0.0, True, False, {
                "action_valid": False, "success": bool(self._cur and self._cur[3]["success"]),
                "task_type": self.family}
        cmd = " ".join(str(action).strip().lower().split())
        _, score, _, info = self._cur
        if cmd not in info["admissible_actions"]:
            return self.invalid_feedback, 0.0, False, False, {**info, "action_valid": False}
        history = self._history + (cmd,)
        key = (self._path, history)
        rec = _TRANSITIONS.get(key) if self.cache_transitions else None
        if rec is None:
            eng = self._engine_at(self._history)
            gs, _, done = eng.step(cmd)
            self._applied = history
            rec = self._record(gs, _clean(gs.feedback), done)
            _remember(key, rec, self.cache_transitions)
        self._history, self._cur = history, rec
        obs, new_score, done, new_info = rec
        self._done = done
        self._last_obs = obs
        return obs, new_score - score, done, False, dict(new_info)

    def close(self) -> None:
        if self._eng is not None:
            self._eng.close()
        self._eng, self._applied = None, None


class TextWorldExpert:
    """TextWorld's own plan from the current state (``policy_commands``, which the engine
    recomputes after every step): its first command."""

    reset_options: dict[str, Any] = {}

    def __init__(self, env: Any, info: dict[str, Any]) -> None:
        pass

    def act(self, info: dict[str, Any]) -> str | None:
        plan = info.get("walkthrough") or []
        return str(plan[0]) if plan else None


def pack_games(family: str, level: int, gen_seeds: list[int], out_dir: str) -> str:
    """Generate (if needed) the games of ``gen_seeds`` and write them to the package archive
    ``<out_dir>/textworld-<family>-<level>-<tag>.tar.xz``, byte-reproducibly (sorted names,
    zeroed times and owners)."""
    import lzma
    import tarfile

    paths = ensure_games(family, level, gen_seeds)
    out = os.path.join(out_dir, f"textworld-{games_dirname(family, level)}.tar.xz")
    os.makedirs(out_dir, exist_ok=True)
    tmp = f"{out}.tmp{os.getpid()}"
    try:
        with tarfile.open(tmp, "w:xz", preset=9 | lzma.PRESET_EXTREME) as tar:
            for p in sorted(paths, key=lambda p: int(os.path.basename(p)[5:-3])):
                for f in (p, p[:-3] + ".json"):
                    info = tar.gettarinfo(f, arcname=os.path.basename(f))
                    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                    info.mode = 0o644
                    with open(f, "rb") as fh:
                        tar.addfile(info, fh)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return out


def main(argv: list[str] | None = None) -> None:
    """CLI: ``pack`` writes a family's games into the package's data folder."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m agentrl.envs.textworld_env")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="generate games and write them as a package archive")
    p.add_argument("--family", choices=FAMILIES, default="coin_collector")
    p.add_argument("--level", type=int, default=3)
    p.add_argument("--train", type=int, default=100, help="train games (seeds 0..N-1)")
    p.add_argument("--eval", type=int, default=100, help="eval games (seeds 100000..)")
    p.add_argument("--out", help="folder of the archive (default: the package's data/games)")
    args = ap.parse_args(argv)
    if args.out is None:
        from importlib.resources import files

        args.out = str(files("agentrl").joinpath("data", "games"))
    seeds = list(range(args.train)) + [EVAL_SEED_OFFSET + i for i in range(args.eval)]
    out = pack_games(args.family, args.level, seeds, args.out)
    print(f"{out}: {len(seeds)} games, {os.path.getsize(out) / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
