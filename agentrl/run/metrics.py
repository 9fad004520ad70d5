"""Run metrics: rollout statistics, console lines, JSONL and TensorBoard."""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from typing import Any

from agentrl.types import Trajectory, read_json_lines


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a success rate (well-behaved at 0 and 1)."""
    if n == 0:
        return 0.0, 0.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def rollout_metrics(trajs: list[Trajectory], prefix: str = "rollout") -> dict[str, float]:
    """Success rate, return, turns, invalid-action rate, truncation and termination shares;
    in full mode the share of episodes with chat-template drift, and per episode the context
    restarts (history policy) and observation tokens cut, when there are any."""
    n = max(1, len(trajs))
    turns = [t for tr in trajs for t in tr.turns]
    m: dict[str, float] = {
        f"{prefix}/success_rate": sum(t.success for t in trajs) / n,
        f"{prefix}/return": sum(t.total_reward for t in trajs) / n,
        f"{prefix}/turns": sum(t.num_turns for t in trajs) / n,
        f"{prefix}/invalid_action_rate": sum(not t.action_valid for t in turns) / max(1, len(turns)),
        f"{prefix}/response_length_hit_rate": sum(t.finish_reason == "length" for t in turns)
        / max(1, len(turns)),
        f"{prefix}/response_tokens": sum(len(t.action_ids) for t in turns) / max(1, len(turns)),
        f"{prefix}/episodes": float(len(trajs)),
    }
    if any(t.context_mode == "full" for t in trajs):  # real-model context bookkeeping
        m[f"{prefix}/template_drift"] = sum("template_drift" in t.extra for t in trajs) / n
    resets = sum(len(t.extra.get("context_events", ())) for t in trajs)
    if resets:
        m[f"{prefix}/context_restarts"] = resets / n
    cut = sum(d for t in trajs for _, d in t.extra.get("observation_tokens_dropped", ()))
    if cut:
        m[f"{prefix}/observation_tokens_dropped"] = cut / n
    scores = [t.score for t in trajs if t.score is not None]
    if scores:
        m[f"{prefix}/score"] = sum(scores) / len(scores)
    for reason, c in Counter(t.termination for t in trajs).items():
        m[f"{prefix}/termination/{reason}"] = c / n
    outcomes = [t.outcome for t in trajs if t.outcome]  # multi-agent games
    for k in ("win", "draw", "loss") if outcomes else ():
        m[f"{prefix}/{k}_rate"] = sum(o == k for o in outcomes) / len(outcomes)
    by_type: dict[str, list[bool]] = {}
    for t in trajs:
        by_type.setdefault(t.task_type or "all", []).append(t.success)
    if len(by_type) > 1:
        for k, v in by_type.items():
            m[f"{prefix}/success_rate/{k}"] = sum(v) / len(v)
    return m


class MetricsLogger:
    """Appends metrics to ``metrics.jsonl`` and TensorBoard; prints a one-line summary."""

    def __init__(self, run_dir: str, tensorboard: bool = True,
                 wandb_config: dict[str, Any] | None = None,
                 purge_step: int | None = None) -> None:
        """``purge_step``: a resumed run's first iteration; TensorBoard hides the events at or
        after it that the killed run had written (they are redone)."""
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self.tb: Any = None
        self.wandb: Any = None
        if wandb_config is not None:  # log.wandb=true: the resolved config goes with the run
            try:
                import wandb
            except ImportError:
                raise ImportError("log.wandb=true needs the wandb package: pip install wandb "
                                  "(WANDB_MODE=offline logs without network), or set "
                                  "log.wandb=false") from None
            self.wandb = wandb.init(project="agentrl", name=os.path.basename(run_dir.rstrip("/")),
                                    dir=run_dir, config=wandb_config)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(os.path.join(run_dir, "tensorboard"),
                                        purge_step=purge_step)
            except Exception as e:  # tensorboard missing or broken: keep the JSONL
                print(f"[agentrl] TensorBoard disabled: {e}")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"iteration": step, **metrics}) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(k, v, step)
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))},
                           step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def read_metrics(run_dir: str) -> list[dict[str, Any]]:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    return read_json_lines(path)


def console_line(it: int, total: int, m: dict[str, float]) -> str:
    def g(k: str, fmt: str = "{:.3f}") -> str:
        return fmt.format(m[k]) if k in m else "-"

    return (f"[it {it:>4}/{total}] success {g('rollout/success_rate', '{:.2f}')} "
            f"return {g('rollout/return', '{:.2f}')} turns {g('rollout/turns', '{:.1f}')} "
            f"invalid {g('rollout/invalid_action_rate', '{:.2f}')} "
            f"entropy {g('train/entropy')} kl {g('train/kl')} clip {g('train/clip_frac')} "
            f"gnorm {g('train/grad_norm', '{:.2f}')} | s gen {g('perf/seconds_generate', '{:.1f}')} "
            f"env {g('perf/seconds_env', '{:.1f}')} train {g('perf/seconds_train', '{:.1f}')}"
            + (f" | eval {m['eval/success_rate']:.2f}" if "eval/success_rate" in m else ""))


class NullLogger:
    """The metrics logger of ranks other than 0 (only rank 0 writes files)."""

    def log(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def close(self) -> None:
        pass
