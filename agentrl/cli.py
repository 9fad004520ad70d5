"""The ``agentrl`` command line: train, launch, eval, report, envs, algorithms, check-env, serve,
play.

Every user mistake ends in one line naming the fix and exit status 2 (config errors, start-up
refusals, missing runs); Ctrl-C says what was interrupted and what was kept (status 130).
``agentrl launch`` runs ``agentrl train`` on several processes (torchrun) and exits with the
status the ranks agree on (`agentrl.run.launch`).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable
from typing import Any


def main(argv: list[str] | None = None) -> int:
    """Run the command ``argv`` (default: the process's arguments); its exit status."""
    from agentrl.run.launch import launch_main, note_exit

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["launch"]:  # torchrun's options, then an agentrl command: not argparse's
        return launch_main(argv[1:])
    code = _main(argv)
    note_exit(code)  # a rank of agentrl launch: for the launcher
    return code


def _main(argv: list[str]) -> int:
    from agentrl.config import ConfigError

    ap = argparse.ArgumentParser(prog="agentrl", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    _add_train_parser(sub)
    sub.add_parser("launch", help="agentrl launch [TORCHRUN OPTIONS] train ...: train on several "
                   "processes with torchrun, exiting with the ranks' own status (75: preempted)")
    from agentrl.evaluate import add_eval_arguments

    add_eval_arguments(sub.add_parser(
        "eval", help="evaluate checkpoints, runs or models on fixed seeds (side by side)"))
    k = sub.add_parser("collect", help="play the env's expert through the rollout engine "
                       "and write its episodes as trajectory JSONL (for algorithm.name=sft)")
    k.add_argument("config", nargs="?", help="YAML config of the run the demos are for")
    k.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    k.add_argument("--episodes", type=int, default=100, help="episodes (seeds) to play")
    k.add_argument("--out", required=True, help="output JSONL file")
    k.add_argument("--split", choices=["train", "eval"], default="train",
                   help="train: env.kwargs; eval: env.kwargs with env.eval_kwargs over them")
    k.add_argument("--seed-start", type=int, default=0, help="first seed")
    r = sub.add_parser("report", help="plots, trajectory viewer and an HTML summary of a run")
    r.add_argument("run_dir", help="a run directory (runs/<name>)")
    sub.add_parser("envs", help="list registered environments")
    sub.add_parser("algorithms", help="list registered algorithms")
    c = sub.add_parser("check-env", help="run the conformance check on an env id")
    c.add_argument("env_id")
    c.add_argument("kwargs", nargs="*", help="constructor key=value arguments")
    _add_serve_parser(sub)
    p = sub.add_parser("play", help="play an env yourself in the terminal")
    p.add_argument("env_id")
    p.add_argument("kwargs", nargs="*", help="constructor key=value arguments")
    p.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from agentrl.progress import interrupted, one_line, reset_phases
    from agentrl.run.preflight import PreflightError

    try:
        return _dispatch(args)
    except PreflightError as e:
        print(f"agentrl: cannot start: {one_line(e)}", file=sys.stderr)
        return 2
    except ConfigError as e:
        print(f"agentrl: config error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        what = interrupted()
        reset_phases()
        print("agentrl: interrupted" + (f" while {what}" if what else ""), file=sys.stderr)
        return 130
    except Exception as e:
        # Errors that end a run on purpose carry their exit code (documented in the README:
        # 3 non-finite updates, 75 stopped by SIGTERM/SIGINT with a checkpoint).
        code = getattr(e, "exit_code", None)
        if code is None:
            raise
        print(f"agentrl: {one_line(e)}", file=sys.stderr)
        return code


def _add_train_parser(sub: Any) -> None:
    t = sub.add_parser("train", help="train (no CONFIG = the embedded quickstart)")
    t.add_argument("config", nargs="?", help="YAML config file")
    t.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.lr=1e-3")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its latest checkpoint")
    t.add_argument("--trust-plugins", action="store_true",
                   help="let the resumed run's saved config import the 'pkg.module:Class' "
                        "plugins it names (only for runs whose code you trust)")


def _kwargs(pairs: list[str]) -> dict:
    from agentrl.config import parse_overrides

    return dict(parse_overrides(pairs))


def _cmd_train(args: argparse.Namespace) -> int:
    from agentrl.config import load_config
    from agentrl.trainer import Trainer

    config, overrides = _config_args(args)
    if args.resume:
        _check_resumable(args.resume)
        # The run's own config.yaml may have come from anywhere: it names no plugin unless
        # the user says so; a CONFIG given here is the user's own.
        cfg = load_config(config or os.path.join(args.resume, "config.yaml"), overrides,
                          trust_plugins=bool(config) or args.trust_plugins)
        return _train(lambda: Trainer(cfg, resume=True, run_dir=args.resume))
    cfg = load_config(config, overrides)
    return _train(lambda: Trainer(cfg))


def _cmd_eval(args: argparse.Namespace) -> int:
    from agentrl.evaluate import eval_main

    bad = _missing_eval_target(args.targets)
    if bad:
        print(f"agentrl eval: {bad}", file=sys.stderr)
        return 2
    try:
        return eval_main(args)
    except OSError as e:  # a TARGET that is neither on disk nor on a reachable hub
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"agentrl eval: could not load a model: {first} (a TARGET is a checkpoint, "
              "a run directory, a model directory or a hub model name)", file=sys.stderr)
        return 2


def _config_args(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """(config file or None, overrides): a first argument that is an override, not a file,
    joins the overrides."""
    config, overrides = args.config, list(args.overrides)
    if config and "=" in config and not config.endswith((".yaml", ".yml")):
        config, overrides = None, [config] + overrides
    return config, overrides


def _cmd_collect(args: argparse.Namespace) -> int:
    """``agentrl collect``: play the env's expert, write its episodes (JSONL), print its
    success rate (95% interval, per task type) and where the file is."""
    from agentrl.assemble import run_tokenizer
    from agentrl.config import load_config
    from agentrl.evaluate import summarize
    from agentrl.rollout.collect import collect_expert
    from agentrl.types import write_jsonl

    if args.episodes < 1:
        print("agentrl collect: --episodes must be at least 1", file=sys.stderr)
        return 2
    try:
        cfg = load_config(*_config_args(args))
        trajs = collect_expert(cfg, args.episodes, run_tokenizer(cfg), args.split,
                               args.seed_start)
    except ValueError as e:  # an env without an expert, a format the expert cannot write
        print(f"agentrl collect: {e}", file=sys.stderr)
        return 2
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_jsonl(args.out, trajs)
    s = summarize(trajs)
    lo, hi = s["ci95"]
    last = args.seed_start + args.episodes - 1
    print(f"[agentrl] expert on {cfg.env.id} ({args.split}, seeds {args.seed_start}-{last}): "
          f"success {s['success_rate']:.3f} (95% CI {lo:.2f}-{hi:.2f}), {s['turns']:.1f} "
          f"turns, terminations {s['terminations']}")
    for k, v in s["per_task_type"].items():
        print(f"[agentrl]   {k}: {v['success_rate']:.3f} over {v['n']}")
    print(f"[agentrl] trajectories: {os.path.abspath(args.out)}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from agentrl.run.report import report_main

    return report_main(args.run_dir)


def _cmd_envs(args: argparse.Namespace) -> int:
    from agentrl.registry import ENVS, load_builtin_envs, missing_requirement

    load_builtin_envs()
    w = max(len(k) for k in ENVS)
    for k in sorted(ENVS):
        tag = ("[multi-agent] " if ENVS[k].multiagent else "") + \
            ("[expert] " if ENVS[k].expert else "")
        missing = missing_requirement(k)
        print(f"{k:<{w}}  {tag}{ENVS[k].description}"
              + (f" [not installed: pip install 'agentrl[{ENVS[k].extra}]']" if missing else ""))
    return 0


def _cmd_algorithms(args: argparse.Namespace) -> int:
    import agentrl.algorithms  # noqa: F401
    from agentrl.registry import ALGORITHMS

    w = max(len(k) for k in ALGORITHMS)
    for k in sorted(ALGORITHMS):
        print(f"{k:<{w}}  {ALGORITHMS[k].description}")
    return 0


def _cmd_check_env(args: argparse.Namespace) -> int:
    from agentrl import is_multiagent, make_env
    from agentrl.testing import check_env, check_multiagent_env

    env = make_env(args.env_id, **_kwargs(args.kwargs))
    try:
        if is_multiagent(args.env_id):
            check_multiagent_env(env)
            print(f"{args.env_id}: passes check_multiagent_env")
        else:
            check_env(env)  # prints its own line when the env passes
    finally:
        env.close()
    return 0


def _add_serve_parser(sub: Any) -> None:
    s = sub.add_parser("serve", help="serve an env as an OpenEnv environment server")
    s.add_argument("env_id")
    s.add_argument("kwargs", nargs="*", help="constructor key=value arguments")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on")
    s.add_argument("--port", type=int, default=8000, help="port (0: a free one)")
    s.add_argument("--max-sessions", type=int, default=64,
                   help="concurrent WebSocket sessions (each holds one env)")


def _cmd_serve(args: argparse.Namespace) -> int:
    from agentrl.serve import serve_main

    return serve_main(args.env_id, _kwargs(args.kwargs), args.host, args.port, args.max_sessions)


def _dispatch(args: argparse.Namespace) -> int:
    """Run subcommand ``args.cmd`` (one ``_cmd_*`` function each); its exit code."""
    commands = {"train": _cmd_train, "eval": _cmd_eval, "collect": _cmd_collect,
                "report": _cmd_report, "envs": _cmd_envs, "algorithms": _cmd_algorithms,
                "check-env": _cmd_check_env, "serve": _cmd_serve, "play": _play}
    command = commands.get(args.cmd)
    return command(args) if command is not None else 1


def _train(build: Callable[[], Any]) -> int:
    """Build a trainer and train; on Ctrl-C say where the run stopped and what it kept."""
    from agentrl.progress import interrupted, reset_phases
    from agentrl.run import checkpoint

    trainer = None
    try:
        trainer = build()
        trainer.train()
        return 0
    except Exception as e:  # a refusal or a stop (exit 2, 3, 75): under torchrun, leave cleanly
        from agentrl.learn.distributed import launched_by_torchrun, leave_process_group

        if getattr(e, "exit_code", None) is not None and launched_by_torchrun():
            # torchrun SIGTERMs the ranks still running once one has exited: this one has its
            # status (and its part of the checkpoint) already, and says so before it exits
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        leave_process_group()
        raise
    except KeyboardInterrupt:
        what = interrupted()
        reset_phases()
        if trainer is None:  # still setting up: generating games, collecting text, ...
            print("agentrl: interrupted" + (f" while {what}" if what else " during set-up"),
                  file=sys.stderr)
            return 130
        try:
            trainer.close()  # env workers, engines
        except Exception:
            pass  # best effort after an interrupt; the message below matters more
        run = trainer.run_dir
        cp = checkpoint.latest(run)
        kept = (f"checkpoint {os.path.basename(cp)} (continue with: agentrl train --resume "
                f"{run})" if cp else "no checkpoint yet (train.checkpoint_every="
                f"{trainer.cfg.train.checkpoint_every}); metrics so far in "
                f"{os.path.join(run, 'metrics.jsonl')}")
        print(f"agentrl: interrupted at iteration {trainer.iteration} of "
              f"{trainer.cfg.train.iterations} in {run}" + (f" while {what}" if what else "")
              + f"; kept: {kept}", file=sys.stderr)
        return 130


def _check_resumable(run_dir: str) -> None:
    """``--resume`` needs an existing run directory of ``agentrl train``; one without a complete
    checkpoint yet (killed or preempted early) starts again from iteration 0, which is what a
    restart script that always passes ``--resume`` needs."""
    from agentrl.config import ConfigError
    from agentrl.run import checkpoint

    if not os.path.isdir(run_dir):
        parent = os.path.dirname(os.path.normpath(run_dir)) or "."
        runs = sorted(d for d in os.listdir(parent) if os.path.isdir(os.path.join(parent, d))
                      ) if os.path.isdir(parent) else []
        raise ConfigError(f"--resume {run_dir}: no such run directory"
                          + (f" (in {parent}: {', '.join(runs[:8])})" if runs else "")
                          + "; drop --resume to start a new run")
    if not os.path.exists(os.path.join(run_dir, "config.yaml")):
        raise ConfigError(f"--resume {run_dir}: not a run directory of agentrl train (it has no "
                          "config.yaml); drop --resume to start a new run")
    if checkpoint.latest(run_dir) is None:  # stopped before its first checkpoint (preempted)
        print(f"agentrl: {run_dir} has no complete checkpoint yet (one is written every "
              "train.checkpoint_every iterations); starting it again from iteration 0 with its "
              "saved config", file=sys.stderr)


def _missing_eval_target(targets: list[str]) -> str | None:
    """A one-line error for a target that names a local path that does not exist.

    A target that is not on disk is otherwise taken as a hub model name; that is right for
    ``Qwen/Qwen2.5-1.5B-Instruct`` but not for ``runs/typo``: a target whose first path
    component is a local folder or the default run folder ``runs``, that has more than two
    components, or that starts with ``.``, ``/`` or ``~``, must exist.
    """
    from agentrl.config import Config

    for t in targets:
        if os.path.exists(t):
            continue
        first = t.split("/", 1)[0]
        local = first and "/" in t and (os.path.isdir(first) or first == Config().output_dir)
        if t.startswith((".", "/", "~")) or t.count("/") > 1 or local:
            parent = os.path.dirname(os.path.normpath(t)) or "."
            near = sorted(os.listdir(parent))[:8] if os.path.isdir(parent) else []
            return (f"{t}: no such checkpoint, run directory or model directory"
                    + (f" ({parent} holds: {', '.join(near)})" if near else ""))
    return None


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
            score = f" score={info['score']:g}" if isinstance(info.get("score"), (int, float)) else ""
            print(f"episode over: success={info.get('success')} return={total:.2f}{score}")
            break
    env.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
