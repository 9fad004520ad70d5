"""Games in evaluation: win / draw / loss rates with confidence intervals, opponents, Elo.

    from agentrl.evaluate.games import game_rates, elo_ratings
    game_rates(trajectories)        # {"all": {...}, "player_1": {...}, ...}
    elo_ratings({("a", "b"): (7, 2, 1)})   # wins, draws, losses of a against b

A trajectory of a multi-agent game carries its ``role`` and ``outcome`` ("win", "draw", "loss").
``agentrl eval TARGET --opponent random --opponent runs/x/checkpoints/step_20`` plays each
target against each opponent (the env's random or scripted player, or a frozen model on the
other seats, seats alternating by seed) and reports win / draw / loss with Wilson intervals;
``--elo`` also plays every pair of targets and fits Elo ratings to all the games.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from agentrl.run.metrics import wilson_interval
from agentrl.types import OUTCOMES, Trajectory

if TYPE_CHECKING:
    from agentrl.config import Config
    from agentrl.rollout.lineup import Lineup

_COUNT = {"win": "wins", "draw": "draws", "loss": "losses"}


def rate_block(outcomes: Iterable[str]) -> dict[str, Any]:
    """Shares of win, draw, loss and win + draw, each with a 95% Wilson interval; counts
    (``wins``, ``draws``, ``losses``) and n."""
    outs = list(outcomes)
    n = len(outs)
    block: dict[str, Any] = {"n": n}
    for k in OUTCOMES:
        c = sum(o == k for o in outs)
        block[k] = c / max(1, n)
        block[f"{k}_ci95"] = wilson_interval(c, n)
        block[_COUNT[k]] = c
    c = sum(o in ("win", "draw") for o in outs)
    block["win_or_draw"] = c / max(1, n)
    block["win_or_draw_ci95"] = wilson_interval(c, n)
    block["score"] = (block["win"] + 0.5 * block["draw"])  # Elo's expected-score scale
    return block


def game_rates(trajectories: Iterable[Trajectory]) -> dict[str, dict[str, Any]]:
    """`rate_block` over every trajectory with an outcome (``"all"``) and per role."""
    by: dict[str, list[str]] = {}
    for t in trajectories:
        if t.outcome in OUTCOMES:
            by.setdefault("all", []).append(t.outcome)
            by.setdefault(t.role or "-", []).append(t.outcome)
    return {k: rate_block(v) for k, v in sorted(by.items(), key=lambda kv: kv[0] != "all")}


def elo_ratings(results: Mapping[tuple[str, str], tuple[int, int, int]],
                anchor: str | None = None, prior_draws: float = 1.0, iterations: int = 2000,
                ) -> dict[str, float]:
    """Elo ratings that best explain pairwise results (Bradley-Terry maximum likelihood).

    Args:
        results: (a, b) -> (wins, draws, losses) of ``a`` against ``b``; a draw counts half.
        anchor: this player is rated 1000 (default: the mean rating is 1000).
        prior_draws: virtual draws added to every pair that met, so a player that won every
            game gets a finite rating.
        iterations: MM-algorithm updates (Hunter 2004), each monotone in the likelihood.
    Returns:
        player -> rating, on the Elo scale (400 points = 10:1 odds).
    """
    players = sorted({p for pair in results for p in pair})
    if not players:
        return {}
    wins: dict[tuple[str, str], float] = {}  # score of a against b (draws as halves)
    for (a, b), (w, d, loss) in results.items():
        if a == b:
            continue
        wins[(a, b)] = wins.get((a, b), 0.0) + w + 0.5 * (d + prior_draws)
        wins[(b, a)] = wins.get((b, a), 0.0) + loss + 0.5 * (d + prior_draws)
    gamma = dict.fromkeys(players, 1.0)
    for _ in range(iterations):
        new = {}
        for i in players:
            won = sum(v for (a, _), v in wins.items() if a == i)
            denom = sum((wins.get((i, j), 0.0) + wins.get((j, i), 0.0)) / (gamma[i] + gamma[j])
                        for j in players if j != i)
            new[i] = won / denom if denom > 0 else gamma[i]
        norm = math.exp(sum(math.log(max(g, 1e-300)) for g in new.values()) / len(new))
        gamma = {k: v / norm for k, v in new.items()}
    elo = {p: 400.0 * math.log10(gamma[p]) for p in players}
    shift = 1000.0 - (elo[anchor] if anchor is not None else sum(elo.values()) / len(elo))
    return {p: round(v + shift, 1) for p, v in elo.items()}


def expected_score(elo_a: float, elo_b: float) -> float:
    """Elo's expected score of a against b."""
    return 1.0 / (1.0 + 10 ** ((elo_b - elo_a) / 400.0))


# ------------------------------------------------------------------------------ opponents

SCRIPTED = ("random", "heuristic")  # opponents the PettingZoo games play themselves


def opponent_label(spec: str) -> str:
    """A short name for an opponent: ``random``, ``heuristic`` or the checkpoint's run@step."""
    if spec in SCRIPTED:
        return spec
    from agentrl.run.checkpoint import player_path

    try:
        path = os.path.normpath(player_path(spec))
    except ValueError:  # not a directory: `opponent_setup` says so
        return os.path.basename(os.path.normpath(spec))
    parts = path.split(os.sep)
    if len(parts) >= 4 and parts[-1] == "model" and parts[-3] == "checkpoints":
        return f"{parts[-4]}@{parts[-2]}"  # runs/<run>/checkpoints/step_N/model
    return os.path.basename(path)


class OpponentError(ValueError):
    """An ``--opponent`` that names no player; the message says what to pass instead."""


def scripted_opponents(env_id: str) -> tuple[str, ...] | None:
    """The scripted opponents the game ``env_id`` plays itself (its class's ``opponents``);
    None when its entry point is not a class that says."""
    import importlib

    import gymnasium as gym

    from agentrl.registry import load_builtin_envs

    load_builtin_envs()
    spec = gym.registry.get(env_id)
    ep = spec.entry_point if spec is not None else None
    if isinstance(ep, str) and ":" in ep:
        mod, _, attr = ep.partition(":")
        ep = getattr(importlib.import_module(mod), attr, None)
    offered = getattr(ep, "opponents", None)
    return tuple(offered) if isinstance(offered, (tuple, list)) else None


def opponent_setup(spec: str | None, cfg: Config, env_kwargs: dict[str, Any],
                   env_id: str | None = None) -> tuple[dict[str, Any], Lineup | None]:
    """(env kwargs, lineup) to play against ``spec``: the env's own ``random`` or ``heuristic``
    player (an env setting; refused for a game that has none), or a frozen model on every other
    seat. ``env_id``: the game played (default ``cfg.env.id``)."""
    if spec is None:
        return env_kwargs, None
    if spec in SCRIPTED:
        env_id = env_id or cfg.env.id
        offered = scripted_opponents(env_id)
        if offered is not None and spec not in offered:
            raise OpponentError(
                f"--opponent {spec}: {env_id} has no scripted opponents"
                + (f" (it offers {', '.join(offered)})" if offered else "")
                + "; play it against a checkpoint (--opponent runs/NAME/checkpoints/step_N) or "
                "against itself (no --opponent)")
        return {**env_kwargs, "opponent": spec}, None
    from agentrl.assemble import load_player
    from agentrl.rollout.lineup import Versus
    from agentrl.run.checkpoint import player_path

    if "opponent" in env_kwargs:  # the env would play the seats the frozen model should
        env_kwargs = {k: v for k, v in env_kwargs.items() if k != "opponent"}
    try:
        path = player_path(spec)
    except ValueError as e:
        raise OpponentError(f"--opponent {e}") from None
    return env_kwargs, Versus([load_player(path, cfg, opponent_label(spec))])


def game_rows(sums: list[dict[str, Any]]) -> list[list[str]]:
    """Rows of the eval table for games: win / draw / loss and win + draw with intervals."""
    if not any("games" in s for s in sums):
        return []

    def cell(s: dict[str, Any], key: str, k: str) -> str:
        b = s.get("games", {}).get(key)
        if b is None:
            return "-"
        lo, hi = b[f"{k}_ci95"]
        return f"{b[k]:.3f} [{lo:.2f}, {hi:.2f}]"

    rows = [["opponent"] + [opponent_label(s["opponent"]) if s.get("opponent") else "-"
                            for s in sums]]
    roles = sorted({r for s in sums for r in s.get("games", {}) if r != "all"})
    for k in ("win", "draw", "loss", "win_or_draw"):
        rows.append([f"{k.replace('_or_', ' or ')} (95% CI)"] + [cell(s, "all", k)
                                                                 for s in sums])
    for r in roles:
        rows.append([f"  as {r}: win or draw"] + [cell(s, r, "win_or_draw") for s in sums])
    return rows


def elo_tournament(targets: list[Any], settings: Any,
                   results: list[tuple[str, dict[str, Any]]], play: Any,
                   progress: bool = False) -> dict[str, Any]:
    """Play every pair of ``targets`` (each against the other's frozen weights, seats
    alternating), add the games already played against ``--opponent`` players in ``results``,
    and fit Elo ratings. ``play(target, settings, progress)`` evaluates one target and returns
    (summary, trajectories) (`agentrl.evaluate.evaluate_target`). Returns
    {"ratings": {player: elo}, "pairs": {"a vs b": [w, d, l]}}."""
    from dataclasses import replace

    pairs: dict[tuple[str, str], tuple[int, int, int]] = {}
    for name, summary in results:
        g = summary.get("games", {}).get("all")
        opp = summary.get("opponent")
        if g is not None and opp:
            me = name.split(" vs ")[0]
            pairs[(me, opponent_label(opp))] = (g["wins"], g["draws"], g["losses"])
    playable = [t for t in targets if t.model_path is not None]
    greedy = settings.greedy if settings.greedy is not None else any(
        t.cfg.eval.greedy for t in playable)
    if greedy and len(playable) > 1:
        warnings.warn("--elo with greedy decoding: two frozen models replay one game per seat "
                      "assignment, so every game of a pair is one of two; rate them with "
                      "--sampled", stacklevel=2)
    for i, a in enumerate(playable):
        for b in playable[i + 1:]:
            summary, _ = play(a, replace(settings, opponent=b.model_path), progress)
            g = summary.get("games", {}).get("all")
            if g is not None:
                pairs[(a.name, b.name)] = (g["wins"], g["draws"], g["losses"])
    return {"ratings": elo_ratings(pairs),
            "pairs": {f"{a} vs {b}": list(v) for (a, b), v in pairs.items()}}


def format_elo(table: dict[str, Any]) -> str:
    """The Elo table (best first) and the pairwise results it was fitted to."""
    ratings = table["ratings"]
    w = max([len(p) for p in ratings] + [6])
    lines = [f"{'player':<{w}}  Elo", f"{'-' * w}  ------"]
    lines += [f"{p:<{w}}  {r:6.1f}" for p, r in sorted(ratings.items(), key=lambda kv: -kv[1])]
    lines += ["", "games (wins-draws-losses of the first against the second):"]
    lines += [f"  {k}: {w_}-{d}-{lo}" for k, (w_, d, lo) in table["pairs"].items()]
    return "\n".join(lines)
