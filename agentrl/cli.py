"""The ``agentrl`` command line: train, eval, envs, algorithms, check-env, play."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from agentrl.config import ConfigError

    ap = argparse.ArgumentParser(prog="agentrl", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train (no CONFIG = the embedded quickstart)")
    t.add_argument("config", nargs="?", help="YAML config file")
    t.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.lr=1e-3")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its latest checkpoint")
    from agentrl.evaluate import add_eval_arguments

    add_eval_arguments(sub.add_parser(
        "eval", help="evaluate checkpoints, runs or models on fixed seeds (side by side)"))
    r = sub.add_parser("report", help="plots, trajectory viewer and an HTML summary of a run")
    r.add_argument("run_dir", help="a run directory (runs/<name>)")
    sub.add_parser("envs", help="list registered environments")
    sub.add_parser("algorithms", help="list registered algorithms")
    c = sub.add_parser("check-env", help="run the conformance check on an env id")
    c.add_argument("env_id")
    c.add_argument("kwargs", nargs="*", help="constructor key=value arguments")
    p = sub.add_parser("play", help="play an env yourself in the terminal")
    p.add_argument("env_id")
    p.add_argument("kwargs", nargs="*", help="constructor key=value arguments")
    p.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as e:
        print(f"agentrl: config error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("agentrl: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        # Errors that end a run on purpose carry their exit code (documented in the README:
        # 3 non-finite updates, 75 stopped by SIGTERM/SIGINT with a checkpoint).
        code = getattr(e, "exit_code", None)
        if code is None:
            raise
        print(f"agentrl: {e}", file=sys.stderr)
        return code


def _kwargs(pairs: list[str]) -> dict:
    from agentrl.config import parse_overrides

    return dict(parse_overrides(pairs))


def _dispatch(args: argparse.Namespace) -> int:
    if args.cmd == "train":
        from agentrl.config import load_config
        from agentrl.trainer import Trainer

        config, overrides = args.config, list(args.overrides)
        if config and "=" in config and not config.endswith((".yaml", ".yml")):
            config, overrides = None, [config] + overrides
        if args.resume:
            import os

            cfg_path = os.path.join(args.resume, "config.yaml")
            cfg = load_config(config or cfg_path, overrides)
            Trainer(cfg, resume=True, run_dir=args.resume).train()
        else:
            Trainer(load_config(config, overrides)).train()
        return 0
    if args.cmd == "eval":
        from agentrl.evaluate import eval_main

        return eval_main(args)
    if args.cmd == "report":
        from agentrl.report import report_main

        return report_main(args.run_dir)
    if args.cmd == "envs":
        from agentrl.registry import ENVS, load_builtin_envs

        load_builtin_envs()
        w = max(len(k) for k in ENVS)
        for k in sorted(ENVS):
            tag = "[multi-agent] " if ENVS[k].multiagent else ""
            print(f"{k:<{w}}  {tag}{ENVS[k].description}")
        return 0
    if args.cmd == "algorithms":
        import agentrl.algorithms  # noqa: F401
        from agentrl.registry import ALGORITHMS

        w = max(len(k) for k in ALGORITHMS)
        for k in sorted(ALGORITHMS):
            print(f"{k:<{w}}  {ALGORITHMS[k].description}")
        return 0
    if args.cmd == "check-env":
        from agentrl import make_env
        from agentrl.registry import ENVS
        from agentrl.testing import check_env, check_multiagent_env

        env = make_env(args.env_id, **_kwargs(args.kwargs))
        entry = ENVS.get(args.env_id)
        if entry is not None and entry.multiagent:
            check_multiagent_env(env)
            print(f"{args.env_id}: passes check_multiagent_env")
        else:
            check_env(env)
            print(f"{args.env_id}: passes check_env")
        return 0
    if args.cmd == "play":
        return _play(args)
    return 1


def _play(args: argparse.Namespace) -> int:
    from agentrl import make_env

    env = make_env(args.env_id, **_kwargs(args.kwargs))
    obs, info = env.reset(seed=args.seed)
    total = 0.0
    if info.get("task"):
        print(f"TASK: {info['task']}")
    while True:
        print("\n" + obs)
        if info.get("admissible_actions"):
            print("actions: " + " | ".join(info["admissible_actions"]))
        try:
            action = input("> ")
        except EOFError:
            break
        if action.strip() in ("quit", "exit"):
            break
        obs, r, term, trunc, info = env.step(action)
        total += r
        if not info.get("action_valid", True):
            print("(invalid action)")
        if term or trunc:
            print("\n" + obs)
            print(f"episode over: success={info.get('success')} return={total:.2f}")
            break
    env.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
