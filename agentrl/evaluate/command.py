"""`agentrl eval TARGET [TARGET ...]`: resolve targets (checkpoints, runs, model directories or
hub names, a config's untrained policy, a served endpoint), evaluate each on the same env split
and seeds (`evaluate_target`), and write the table, JSON and Markdown (`run_eval_command`)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from dataclasses import dataclass, replace
from typing import Any

from agentrl.config import (
    Config,
    ConfigError,
    apply_overrides,
    config_from_dict,
    eval_rollout_config,
    load_config,
)
from agentrl.evaluate.episodes import EVAL_SAMPLER_SEED, evaluate
from agentrl.evaluate.games import (
    OpponentError,
    elo_tournament,
    format_elo,
    game_rows,
    opponent_label,
    opponent_setup,
)
from agentrl.policies import OpenAIConfig, Policy, make_policy, served_section
from agentrl.rollout.multiagent import make_engine
from agentrl.types import Trajectory, write_jsonl


class EvalError(ValueError):
    """A bad eval target or option; the message says what to pass instead."""


# ------------------------------------------------------------------------------ the targets

@dataclass
class EvalTarget:
    """Something to evaluate: where its weights come from and which config sets the env.

    ``kind``: ``checkpoint`` | ``run`` | ``model`` | ``untrained`` | ``endpoint``.
    ``model_path``: weights directory or hub name (``None`` for ``untrained``: built from cfg).
    """

    name: str
    kind: str
    spec: str
    cfg: Config
    model_path: str | None = None


def parse_seeds(text: str) -> list[int]:
    """``"0-49"`` -> 0..49 inclusive; ``"1,5,9-11"`` -> [1, 5, 9, 10, 11]."""
    seeds: list[int] = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise EvalError(f"--seeds {text!r}: use a range like 0-49 or a list like 1,5,9-11")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise EvalError(f"--seeds {part!r}: the range end is below its start")
        seeds += range(lo, hi + 1)
    if not seeds:
        raise EvalError("--seeds is empty")
    return seeds


def _load_cfg(path: str | None, overrides: list[str], trust_plugins: bool = True) -> Config:
    """``path`` with overrides, or (no path) the dataclass defaults, not the quickstart."""
    if path is not None:
        return load_config(path, overrides, trust_plugins=trust_plugins)
    return config_from_dict(apply_overrides({}, overrides))


def _saved_cfg(config: str | None, saved: str, overrides: list[str], trust: bool) -> Config:
    """``config`` (the user's) if given, else a checkpoint's ``saved`` config, which imports
    no plugin unless ``trust``."""
    if config is not None:
        return _load_cfg(config, overrides)
    return _load_cfg(saved, overrides, trust_plugins=trust)


def _check_checkpoint(path: str, spec: str, verified: bool = False) -> None:
    """EvalError unless checkpoint ``path`` verifies against its manifest (skipped when
    ``verified``) and loads without running code, as ``agentrl train --resume`` checks."""
    from agentrl.run import checkpoint

    problem = None if verified else checkpoint.verify(path)
    if problem is not None:
        raise EvalError(f"{spec}: the checkpoint fails its manifest ({problem}): it is damaged "
                        "or was altered; restore it from a backup or evaluate another one")
    try:
        checkpoint.checkpoint_iteration(path)
        checkpoint.check_weights(path)
    except checkpoint.CheckpointError as e:
        raise EvalError(str(e)) from None


def _checkpoint_target(path: str, spec: str, config: str | None, overrides: list[str],
                       trust_plugins: bool) -> EvalTarget:
    cfg = _saved_cfg(config, os.path.join(path, "config.yaml"), overrides, trust_plugins)
    run = os.path.basename(os.path.dirname(os.path.dirname(os.path.abspath(path))))
    return EvalTarget(f"{run}@{os.path.basename(path)}", "checkpoint", spec, cfg,
                      os.path.join(path, "model"))


def resolve_target(spec: str, config: str | None = None, overrides: list[str] | None = None,
                   trust_plugins: bool = False) -> EvalTarget:
    """Classify ``spec`` as a checkpoint dir, run dir (latest checkpoint) or model path/name.

    A checkpoint must verify against its manifest. Checkpoints and runs bring their own
    ``config.yaml`` (``config`` replaces it), which may import ``"pkg.module:Class"`` plugins
    only with ``trust_plugins``; a bare model uses ``config`` or the config defaults.
    """
    from agentrl.run import checkpoint
    ov = list(overrides or [])
    spec_n = spec.rstrip("/")
    if os.path.isdir(spec_n) and os.path.exists(os.path.join(spec_n, "trainer_state.json")):
        _check_checkpoint(spec_n, spec)
        return _checkpoint_target(spec_n, spec, config, ov, trust_plugins)
    if os.path.isdir(os.path.join(spec_n, "checkpoints")) or (
            os.path.isdir(spec_n) and os.path.exists(os.path.join(spec_n, "metrics.jsonl"))):
        try:
            cp = checkpoint.latest(spec_n)  # the newest that verifies
        except checkpoint.CheckpointError as e:
            raise EvalError(str(e)) from None
        if cp is None:
            raise EvalError(f"{spec}: a run directory without a complete checkpoint; train "
                            "longer or pass a model path")
        _check_checkpoint(cp, spec, verified=True)
        t = _checkpoint_target(cp, spec, config, ov, trust_plugins)
        t.kind = "run"
        return t
    if os.path.isdir(spec_n) and not os.path.exists(os.path.join(spec_n, "config.json")):
        raise EvalError(f"{spec}: not a checkpoint (no trainer_state.json), run (no "
                        "checkpoints/) or model directory (no config.json)")
    parent = os.path.dirname(os.path.abspath(spec_n))
    if config is None and os.path.basename(spec_n) == "model" and os.path.exists(
            os.path.join(parent, "config.yaml")):  # step_N/model: step_N's own config
        if os.path.exists(os.path.join(parent, checkpoint.MANIFEST)):
            _check_checkpoint(parent, spec)
        cfg = _saved_cfg(None, os.path.join(parent, "config.yaml"), ov, trust_plugins)
    else:
        cfg = _load_cfg(config, ov)
    return EvalTarget(os.path.basename(spec_n) or spec, "model", spec, cfg, spec)


def untrained_target(config: str, overrides: list[str] | None = None) -> EvalTarget:
    """The initial policy of ``config`` (for ``policy.model=tiny``: the same random init)."""
    cfg = load_config(config, list(overrides or []))
    base = os.path.splitext(os.path.basename(config))[0]
    if base == "config":  # runs/x/config.yaml: name it after the run
        base = os.path.basename(os.path.dirname(os.path.abspath(config)))
    return EvalTarget(f"untrained:{base}", "untrained", config, cfg, None)


def _build_policy(target: EvalTarget, device: str | None, endpoint: str | None) -> Policy:
    """A generation backend holding ``target``'s weights (or talking to ``endpoint``)."""
    from agentrl.assemble import policy_model

    cfg = target.cfg
    if endpoint is not None:
        from transformers import AutoTokenizer

        # Token ids in, token ids out: the tokenizer must be the served model's.
        served = cfg.policy.served_model if isinstance(cfg.policy, OpenAIConfig) else ""
        name = target.model_path or served or cfg.policy.model
        if name == "tiny":
            raise EvalError("--endpoint: name the served model (TARGET or policy.model), so "
                            "its tokenizer can be loaded here")
        return make_policy(dataclasses.replace(cfg, policy=served_section(
                               cfg.policy, endpoint, name)), None,
                           AutoTokenizer.from_pretrained(name))
    model, tok = policy_model(cfg, target.model_path, device)
    return make_policy(cfg, model, tok)


def _role_policies(target: EvalTarget, device: str | None, env_id: str,
                   env_kwargs: dict[str, Any]) -> dict[str, Policy]:
    """For a checkpoint of a ``multiagent.policies=per_role`` run (`agentrl.learn.roles`): role ->
    a backend with that role's merged model (``roles/<role>/model``), so each role's seats
    play with their own policy. {} for any other target."""
    from agentrl.rollout.lineup import role_models

    if target.model_path is None:
        return {}
    try:
        dirs = role_models(target.model_path, env_id, env_kwargs)
    except ValueError as e:
        raise EvalError(f"{target.spec}: {e}") from None
    return {role: _build_policy(dataclasses.replace(target, model_path=d), device, None)
            for role, d in dirs.items()}


@dataclass
class EvalSettings:
    """What every target is evaluated on; ``None`` fields come from each target's config."""

    env_id: str | None = None
    env_kwargs: dict[str, Any] | None = None
    seeds: list[int] | None = None
    repeats: int = 1
    greedy: bool | None = None
    sampler_seed: int | None = None
    device: str | None = None
    endpoint: str | None = None
    opponent: str | None = None  # games: "random" / "heuristic" (the env's), or a model to face


def evaluate_target(target: EvalTarget, s: EvalSettings, progress: bool = False,
                    ) -> tuple[dict[str, Any], list[Trajectory]]:
    """Evaluate one target; the summary also records the env, seeds and decoding used."""
    from agentrl.envpool import make_pool
    from agentrl.rollout.prompts import PromptBuilder

    cfg = target.cfg
    env_id = s.env_id or cfg.env.id
    # Default split: the config's eval_kwargs over its kwargs, exactly as the trainer does.
    env_kwargs = dict(s.env_kwargs) if s.env_kwargs is not None else {
        **cfg.env.kwargs, **cfg.env.eval_kwargs}
    seeds = list(s.seeds) if s.seeds is not None else list(
        range(cfg.eval.seed_start, cfg.eval.seed_start + cfg.eval.episodes))
    greedy = cfg.eval.greedy if s.greedy is None else s.greedy
    sampler_seed = (EVAL_SAMPLER_SEED + cfg.eval.seed_start if s.sampler_seed is None
                    else s.sampler_seed)
    try:
        env_kwargs, lineup = opponent_setup(s.opponent, cfg, env_kwargs, env_id)
    except OpponentError as e:
        raise EvalError(str(e)) from None
    policy = _build_policy(target, s.device, s.endpoint)
    policy.seed(sampler_seed)
    roles = {} if s.endpoint is not None else _role_policies(target, s.device, env_id,
                                                             env_kwargs)
    for p in roles.values():
        p.seed(sampler_seed)
    pool = make_pool(dataclasses.replace(cfg.env, id=env_id), min(len(seeds), 64), env_kwargs,
                     cfg.ray)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(desc=f"eval {target.name}", unit="turn", leave=False, dynamic_ncols=True)
    try:
        engine = make_engine(policy, pool, PromptBuilder(policy.tokenizer, cfg.rollout),
                             eval_rollout_config(cfg), env_id, lineup, roles)
        summary, trajs = evaluate(engine, seeds, greedy=greedy, repeats=s.repeats, progress=bar)
    finally:
        pool.close()
        if lineup is not None:
            lineup.close()
        policy.close()  # e.g. vllm: the engine and its model directory, before the next target
        for p in roles.values():
            p.close()
        if bar is not None:
            bar.close()
    _refuse_all_failed(target, env_id, trajs)
    summary.update({"target": target.spec, "kind": target.kind, "env_id": env_id,
                    "env_kwargs": env_kwargs, "seeds": seeds, "greedy": greedy,
                    "temperature": None if greedy else eval_rollout_config(cfg).temperature,
                    "sampler_seed": None if greedy else sampler_seed})
    if s.opponent is not None:
        summary["opponent"] = s.opponent
    return summary, trajs


def _refuse_all_failed(target: EvalTarget, env_id: str, trajs: list[Trajectory]) -> None:
    """An evaluation whose every episode failed in the env measured nothing: an error."""
    failed = [t for t in trajs if t.termination in ("env_error", "env_timeout")]
    if not trajs or len(failed) < len(trajs):
        return
    why = str(failed[0].extra.get("error", "")).strip().splitlines()
    raise EvalError(f"{target.name}: all {len(trajs)} episodes failed in the env "
                    f"({failed[0].termination}" + (f": {why[0]}" if why else "") + "); "
                    f"nothing was evaluated. `agentrl play {env_id}` reproduces it by hand")


# ------------------------------------------------------------------------------ the tables

def _f(x: float | None, nd: int = 3) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def _rate(block: dict[str, Any], k: int) -> str:
    return _f(block["success_rate"]) + (f" ± {block['std']:.3f}" if k > 1 else "")


def _ci(block: dict[str, Any]) -> str:
    lo, hi = block["ci95"]
    return f"[{lo:.2f}, {hi:.2f}]"


def table_rows(results: list[tuple[str, dict[str, Any]]]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the comparison table: one column per target."""
    names = [n for n, _ in results]
    sums = [s for _, s in results]
    k = max(s["k"] for s in sums)
    rows: list[list[str]] = [
        ["episodes"] + [str(s["episodes"]) for s in sums],
        ["success rate" + (f" (mean ± std, {k} repeats)" if k > 1 else "")]
        + [_rate(s, s["k"]) for s in sums],
        ["  95% CI (Wilson)"] + [_ci(s) for s in sums],
        [f"pass@{k}"] + [_f(s["pass_at_k"]) for s in sums],
    ]
    types = sorted({t for s in sums for t in s["per_task_type"]})
    if types != ["all"]:
        for t in types:
            cells = []
            for s in sums:
                b = s["per_task_type"].get(t)
                cells.append("-" if b is None else
                             f"{_rate(b, s['k'])} {_ci(b)} n={b['n']}")
            rows.append([f"  task {t}"] + cells)
    if any("score" in s for s in sums):
        rows.append(["score"] + [_f(s.get("score")) + (f" ± {s['score_std']:.3f}"
                                                        if s["k"] > 1 and "score" in s else "")
                                 for s in sums])
    rows += game_rows(sums)
    rows += [["return"] + [_f(s["return"]) for s in sums],
             ["turns"] + [_f(s["turns"], 2) for s in sums],
             ["invalid-action rate"] + [_f(s["invalid_action_rate"]) for s in sums],
             ["replies cut at token limit"] + [_f(s["response_length_hit_rate"]) for s in sums]]
    reasons = sorted({r for s in sums for r in s["terminations"]})
    for r in reasons:
        rows.append([f"  ended: {r}"] + [_f(s["terminations"].get(r, 0.0)) for s in sums])
    return ["metric"] + names, rows


def format_table(results: list[tuple[str, dict[str, Any]]]) -> str:
    """Plain-text table for the terminal."""
    header, rows = table_rows(results)
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                               for i, (c, w) in enumerate(zip(r, widths)))
    out = [line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows]
    return "\n".join(out)


def format_markdown(results: list[tuple[str, dict[str, Any]]]) -> str:
    """The same table in Markdown, with the settings each target was evaluated under."""
    header, rows = table_rows(results)
    esc = lambda c: c.replace("|", "\\|")  # noqa: E731
    md = ["# agentrl eval", "",
          "| " + " | ".join(esc(h) for h in header) + " |",
          "|" + "---|" * len(header)]
    md += ["| " + " | ".join(esc(c.strip()) for c in r) + " |" for r in rows]
    md += ["", "## Settings", ""]
    for name, s in results:
        seeds = s["seeds"]
        md.append(f"- **{name}** ({s['kind']}: `{s['target']}`): env `{s['env_id']}` "
                  f"{json.dumps(s['env_kwargs'])}, {len(seeds)} seeds {seeds[0]}..{seeds[-1]}, "
                  f"{s['k']} repeat(s), " + ("greedy" if s["greedy"] else
                                             f"sampled (sampler seed {s['sampler_seed']})"))
    return "\n".join(md) + "\n"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.@-]+", "_", name).strip("_") or "target"


def write_outputs(out_dir: str, results: list[tuple[str, dict[str, Any]]],
                  trajs: dict[str, list[Trajectory]]) -> dict[str, str]:
    """``eval.json``, ``eval.md`` and ``<target>_trajectories.jsonl`` under ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, "eval.json"), "md": os.path.join(out_dir, "eval.md")}
    with open(paths["json"], "w", encoding="utf-8") as f:
        json.dump({"results": [{"name": n, **s} for n, s in results]}, f, indent=2)
    with open(paths["md"], "w", encoding="utf-8") as f:
        f.write(format_markdown(results))
    for name, tr in trajs.items():
        write_jsonl(os.path.join(out_dir, f"{_safe(name)}_trajectories.jsonl"), tr)
    return paths


# ------------------------------------------------------------------------------ the command

def run_eval_command(targets: list[str], *, untrained: list[str] | None = None,
                     config: str | None = None, overrides: list[str] | None = None,
                     settings: EvalSettings | None = None, out: str | None = None,
                     progress: bool = True, opponents: list[str] | None = None,
                     elo: bool = False, trust_plugins: bool = False,
                     ) -> list[tuple[str, dict[str, Any]]]:
    """Resolve, evaluate and tabulate every target (against each of ``opponents`` in a game);
    print the table (and with ``elo``, the Elo table of a round robin); write ``out`` files.
    ``trust_plugins``: a checkpoint's own config may import the plugins it names."""
    s = settings or EvalSettings()
    if s.repeats < 1:
        raise EvalError("--repeats must be at least 1")
    if s.endpoint is not None:
        if len(targets) > 1 or untrained:
            raise EvalError("--endpoint evaluates one served model: pass at most its name")
        model = targets[0] if targets else None
        cfg = _load_cfg(config, list(overrides or []))
        resolved = [EvalTarget(f"endpoint:{model or cfg.policy.model}", "endpoint",
                               s.endpoint, cfg, model)]
    else:
        resolved = [resolve_target(t, config, overrides, trust_plugins) for t in targets]
        resolved += [untrained_target(c, overrides) for c in (untrained or [])]
    if not resolved:
        raise EvalError("nothing to evaluate: pass a checkpoint, run directory or model, "
                        "--untrained CONFIG, or --endpoint URL")
    seen: dict[str, int] = {}
    for t in resolved:  # two targets with one name would share a column header and a file
        seen[t.name] = seen.get(t.name, 0) + 1
        if seen[t.name] > 1:
            t.name = f"{t.name}#{seen[t.name]}"
    if s.greedy and s.repeats > 1:
        print("[agentrl] note: greedy decoding repeats the same episodes; std over repeats "
              "will be 0 and pass@k equals the success rate", file=sys.stderr)
    results: list[tuple[str, dict[str, Any]]] = []
    trajs: dict[str, list[Trajectory]] = {}
    for t in resolved:
        for opp in opponents or [None]:
            name = t.name if opp is None else f"{t.name} vs {opponent_label(opp)}"
            summary, tr = evaluate_target(t, replace(s, opponent=opp), progress=progress)
            results.append((name, summary))
            trajs[name] = tr
    envs = {(r["env_id"], json.dumps({k: v for k, v in r["env_kwargs"].items()
                                      if k != "opponent" or not opponents}, sort_keys=True),
             tuple(r["seeds"])) for _, r in results}  # --opponent varies the env on purpose
    if len(envs) > 1:
        print("[agentrl] note: the targets were evaluated on different envs, splits or seeds "
              "(their configs differ); pass --env/--env-kwargs/--seeds to compare like for like",
              file=sys.stderr)
    print(format_table(results))
    table = elo_tournament(resolved, s, results, evaluate_target, progress) if elo else None
    if table is not None:
        print("\n" + format_elo(table))
    if out:
        paths = write_outputs(out, results, trajs)
        if table is not None:
            with open(os.path.join(out, "elo.json"), "w", encoding="utf-8") as f:
                json.dump(table, f, indent=2)
        print(f"[agentrl] wrote {paths['json']}, {paths['md']} and trajectories to {out}")
    return results


def add_eval_arguments(p: Any) -> None:
    """The ``agentrl eval`` options (kept next to the code that reads them)."""
    p.add_argument("targets", nargs="*", metavar="TARGET",
                   help="checkpoint dir (runs/x/checkpoints/step_N), run dir (its latest "
                        "checkpoint), or model path / hub name; several = side-by-side columns")
    p.add_argument("--untrained", action="append", metavar="CONFIG", default=[],
                   help="also evaluate this config's initial policy (repeatable)")
    p.add_argument("--config", help="config for bare models/endpoints, or to replace a "
                                    "checkpoint's own config.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override applied to every target, e.g. rollout.max_turns=20")
    p.add_argument("--env", help="env id (default: each target's config env.id)")
    p.add_argument("--env-kwargs", nargs="+", metavar="KEY=VALUE",
                   help="env kwargs, e.g. split=eval num_games=50 (default: the config's "
                        "env.kwargs updated with env.eval_kwargs)")
    p.add_argument("--seeds", help="e.g. 0-49 or 1,5,9-11 (default: eval.seed_start .. "
                                   "+eval.episodes of the config)")
    p.add_argument("--repeats", type=int, default=1, help="passes over the seeds (k of pass@k)")
    dec = p.add_mutually_exclusive_group()
    dec.add_argument("--greedy", dest="greedy", action="store_true", default=None,
                     help="greedy decoding")
    dec.add_argument("--sampled", dest="greedy", action="store_false",
                     help="sample at eval.temperature (default: the config's eval.greedy)")
    p.add_argument("--sampler-seed", type=int,
                   help=f"sampling seed (default: {EVAL_SAMPLER_SEED} + eval.seed_start, as "
                        "the trainer's own evaluation)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: the config's policy.device)")
    p.add_argument("--endpoint", metavar="URL",
                   help="evaluate a served OpenAI-compatible endpoint; TARGET names the served "
                        "model (its tokenizer is loaded locally)")
    p.add_argument("--opponent", action="append", metavar="SPEC", default=[],
                   help="games: play against 'random' or 'heuristic' (the env's own players) or "
                        "a checkpoint / run / model (frozen, on the other seats); repeatable: "
                        "one column per target and opponent")
    p.add_argument("--elo", action="store_true",
                   help="games: also play every pair of targets and print an Elo table fitted "
                        "to all games (targets and --opponent players)")
    p.add_argument("--out", metavar="DIR", help="write eval.json, eval.md and trajectories here")
    p.add_argument("--trust-plugins", action="store_true",
                   help="let a checkpoint's or run's saved config import the 'pkg.module:Class' "
                        "plugins it names (only for checkpoints whose code you trust)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def eval_main(args: Any) -> int:
    """``agentrl eval`` from parsed arguments; returns the exit status."""
    from agentrl.config import parse_overrides
    from agentrl.progress import one_line

    try:
        env_kwargs = dict(parse_overrides(args.env_kwargs)) if args.env_kwargs else None
        settings = EvalSettings(
            env_id=args.env, env_kwargs=env_kwargs,
            seeds=parse_seeds(args.seeds) if args.seeds else None, repeats=args.repeats,
            greedy=args.greedy, sampler_seed=args.sampler_seed, device=args.device,
            endpoint=args.endpoint)
        run_eval_command(args.targets, untrained=args.untrained, config=args.config,
                         overrides=args.overrides, settings=settings, out=args.out,
                         progress=not args.no_progress and sys.stderr.isatty(),
                         opponents=args.opponent, elo=args.elo,
                         trust_plugins=args.trust_plugins)
    except (EvalError, ConfigError) as e:
        print(f"agentrl eval: {one_line(e)}", file=sys.stderr)
        return 2
    return 0
