"""Soak test: the quickstart under random env faults, worker kills and trainer kills + resumes.

    python -m examples.soak                       # quickstart config, 300 iterations
    python -m examples.soak --quick --iterations 80 --out runs/soak-quick

Run from the repository root. The trainer runs in a child process (``agentrl train``, resumed
with ``--resume`` after every kill) on a wrapped env, `FaultyEnv`, whose steps randomly raise
(``env_error``), hang past the step timeout (``env_timeout``) or kill their worker process
(``os._exit``: ``env_error``, worker replaced). The parent kills the trainer at random moments:
SIGKILL from outside, SIGTERM (preemption: checkpoint at the next iteration end, exit code 75),
or SIGKILL from inside at a chosen point (``AGENTRL_FAULT``: during a checkpoint write, the
rollout, the update or the evaluation). At the end it checks and reports:

- iterations completed, faults injected, resumes;
- host RSS of the trainer over the run (from ``perf/host_rss_gb`` in metrics.jsonl: first vs
  last iteration, and the largest), so a leak shows as growth;
- episodes: every iteration's ``rollout/episodes`` is there exactly once (no iteration lost or
  counted twice after the resumes), and each episode has a termination reason (the env faults
  are the ``env_error`` / ``env_timeout`` ones);
- the held-out success rate of the final evaluation.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from typing import Any

from agentrl.envs.base import TextEnv

ENV_ID = "agentrl-soak/Faulty-v0"
EXIT_PREEMPTED = 75  # agentrl train's exit code after a SIGTERM/SIGINT checkpoint


class FaultyEnv(TextEnv):
    """Another env with random faults: per step, ``p_error`` raise, ``p_hang`` sleep past the
    pool's step timeout, ``p_exit`` kill the worker process (in env worker processes only). Rewards and text are the inner
    env's, so learning still works between faults."""

    def __init__(self, inner: str = "agentrl/TextWorld-CoinCollector-v0", p_error: float = 0.004,
                 p_hang: float = 0.001, p_exit: float = 0.002, hang_seconds: float = 30.0,
                 **kwargs: Any) -> None:
        import agentrl

        super().__init__()
        self.env = agentrl.make_env(inner, **kwargs)
        self.p_error, self.p_hang, self.p_exit = p_error, p_hang, p_exit
        self.hang_seconds = hang_seconds
        self.rng = random.Random(os.getpid() ^ time.time_ns())

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        return self.env.reset(seed=seed, options=options)

    def step(self, action: str):
        if multiprocessing.parent_process() is None:
            return self.env.step(action)  # in the trainer itself (tokenizer corpus): no faults
        r = self.rng.random()
        if r < self.p_exit:
            os._exit(3)  # the worker dies mid-step
        if r < self.p_exit + self.p_error:
            raise RuntimeError("injected env fault")
        if r < self.p_exit + self.p_error + self.p_hang:
            time.sleep(self.hang_seconds)
        return self.env.step(action)

    def close(self) -> None:
        self.env.close()


def _register() -> None:
    import gymnasium as gym

    if ENV_ID not in gym.registry:
        gym.register(ENV_ID, entry_point="examples.soak:FaultyEnv")


def _overrides(args: argparse.Namespace, run_name: str) -> list[str]:
    o = [f"env.id={ENV_ID}", "env.pool=process", "env.step_timeout=10",
         "env.kwargs={level: 3, split: train, num_games: 100}",
         "env.eval_kwargs={split: eval, num_games: 100, p_error: 0, p_hang: 0, p_exit: 0}",
         f"train.iterations={args.iterations}", f"train.checkpoint_every={args.checkpoint_every}",
         "train.lr_schedule=constant", "log.progress=false", "log.tensorboard=false",
         f"output_dir={args.out}", f"run_name={run_name}", f"eval.every={args.eval_every}"]
    if args.quick:  # a smaller iteration for a shared machine: 4x4 episodes, 40 held-out
        o += ["rollout.groups=4", "rollout.group_size=4", "eval.episodes=40",
              "eval.before_training=false"]
    return o


def _rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _latest_iteration(run_dir: str) -> int:
    from agentrl.run import checkpoint
    try:
        cp = checkpoint.latest(run_dir)
    except checkpoint.CheckpointError:
        return 0
    return checkpoint.checkpoint_iteration(cp) if cp else 0


def soak(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    run_name = "soak"
    run_dir = os.path.join(args.out, run_name)
    faults = {"sigkill": 0, "sigterm": 0, "kill_in_checkpoint_write": 0, "kill_in_rollout": 0,
              "kill_in_update": 0, "kill_in_eval": 0}
    segments, t0 = [], time.time()
    while True:
        # Once the run has its config, always --resume (with no checkpoint yet it starts at 0).
        resume = os.path.exists(os.path.join(run_dir, "config.yaml"))
        cmd = [sys.executable, "-m", "examples.soak", "--child", "--", "train",
               *(["--resume", run_dir] if resume else []), *_overrides(args, run_name)]
        env = dict(os.environ)
        env.pop("AGENTRL_FAULT", None)
        kill_after = None
        plan = rng.choice(["none", "sigkill", "sigterm", "point"]) if len(segments) < args.kills \
            else "none"
        if len(segments) == args.kills - 1:
            plan = "point"  # the last planned kill: during the final evaluation
        if plan == "point":
            point = ("eval" if len(segments) == args.kills - 1
                     else rng.choice(["checkpoint_write", "rollout", "update"]))
            nth = {"eval": 1, "checkpoint_write": rng.randint(1, 2)}.get(point, rng.randint(2, 12))
            env["AGENTRL_FAULT"] = f"{point}@{nth}:kill"
            faults[f"kill_in_{point}"] += 1
        elif plan in ("sigkill", "sigterm"):
            kill_after = rng.uniform(args.min_kill_seconds, args.max_kill_seconds)
            faults[plan] += 1
        start_it = _latest_iteration(run_dir)
        log_path = os.path.join(args.out, f"segment_{len(segments)}.log")
        os.makedirs(args.out, exist_ok=True)
        rss, started = [], time.time()
        with open(log_path, "w") as log:
            proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            while proc.poll() is None:
                rss.append(_rss_mb(proc.pid))
                if kill_after is not None and time.time() - started > kill_after:
                    proc.send_signal(signal.SIGKILL if plan == "sigkill" else signal.SIGTERM)
                    kill_after = None
                time.sleep(1.0)
        rc = proc.returncode
        if plan in ("sigkill", "sigterm") and kill_after is not None:
            faults[plan] -= 1  # the run ended before the kill was due
            plan = "none"
        rss = [r for r in rss if r]
        seg = {"plan": plan, "fault": env.get("AGENTRL_FAULT", ""), "exit_code": rc,
               "from_iteration": start_it, "to_iteration": _latest_iteration(run_dir),
               "seconds": round(time.time() - started), "rss_mb_first": rss[0] if rss else None,
               "rss_mb_last": rss[-1] if rss else None}
        segments.append(seg)
        print(f"[soak] segment {len(segments)}: {plan} {seg['fault']} exit {rc}, checkpoint "
              f"iteration {seg['from_iteration']} -> {seg['to_iteration']}", flush=True)
        if rc == 0:
            break
        if len(segments) > args.kills + 5 and seg["to_iteration"] == seg["from_iteration"]:
            raise SystemExit(f"[soak] no progress; see {log_path}")
    return _report(args, run_dir, faults, segments, time.time() - t0)


def _report(args, run_dir, faults, segments, seconds) -> dict[str, Any]:
    from agentrl.run.metrics import read_metrics

    rows = [r for r in read_metrics(run_dir) if "rollout/episodes" in r]
    its = [r["iteration"] for r in rows]
    episodes = sum(r["rollout/episodes"] for r in rows)
    reasons: dict[str, float] = {}
    for r in rows:
        for k, v in r.items():
            if k.startswith("rollout/termination/"):
                key = k.split("/", 2)[2]
                reasons[key] = reasons.get(key, 0) + v * r["rollout/episodes"]
    rss = [r["perf/host_rss_gb"] * 1024 for r in rows if "perf/host_rss_gb" in r]
    with open(os.path.join(run_dir, "eval", "final.json")) as f:
        final = json.load(f)
    per_iter = rows[0]["rollout/episodes"] if rows else 0
    report = {
        "iterations_completed": max(its) if its else 0,
        "iterations_logged_once_each": its == list(range(1, args.iterations + 1)),
        "segments": len(segments), "resumes": len(segments) - 1, "trainer_faults": faults,
        "env_faults": {k: round(v) for k, v in reasons.items() if k.startswith("env_")},
        "episodes_expected": per_iter * args.iterations, "episodes_logged": round(episodes),
        "episodes_by_termination": {k: round(v) for k, v in sorted(reasons.items())},
        "rss_mb_first_iteration": round(rss[0]) if rss else None,
        "rss_mb_last_iteration": round(rss[-1]) if rss else None,
        "rss_mb_max": round(max(rss)) if rss else None,
        "final_heldout_success": final["success_rate"], "final_heldout_episodes": final["episodes"],
        "wall_seconds": round(seconds),
    }
    report["episodes_accounted"] = sum(report["episodes_by_termination"].values())
    return report


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        # The trainer process: the wrapped env must be registered here (workers get the spec).
        import examples.soak as me  # registered under its importable name, not __main__

        me._register()
        from agentrl.cli import main as cli_main

        sys.exit(cli_main(sys.argv[3:]))
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--quick", action="store_true", help="4x4 episodes per iteration")
    p.add_argument("--kills", type=int, default=12, help="trainer kills to attempt")
    p.add_argument("--checkpoint-every", type=int, default=5)
    p.add_argument("--eval-every", type=int, default=0)
    p.add_argument("--min-kill-seconds", type=float, default=20)
    p.add_argument("--max-kill-seconds", type=float, default=120)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/soak")
    args = p.parse_args()
    report = soak(args)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
