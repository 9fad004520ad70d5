"""Alarms for silent failure, and the memory/consistency metrics they read.

A run that "trains" without learning usually says so in its metrics long before anyone looks at
a curve: every GRPO group has the same reward (zero advantage), replies are cut at the token
limit, most actions are invalid, the trainer scores the sampled tokens differently from the
sampler, or the host runs out of RAM. `check_alarms` turns those into messages that say what to
do next; the trainer prints them once per iteration (``[agentrl] ALARM: ...``) and logs
``alarm/<name>`` = 1.0 (fired) or 0.0 so the report can show when they fired.

Thresholds live in `agentrl.config.AlarmConfig` (``alarms.*`` in the YAML); 0 disables one.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from agentrl.config import AlarmConfig, RolloutConfig
from agentrl.envpool import rss_bytes

if TYPE_CHECKING:
    from agentrl.learn.batch import Batch, Scores

#: Every alarm `check_alarms` knows, in the order they are reported.
ALARM_NAMES = ("zero_variance_groups", "zero_grad_norm", "lost_episodes",
               "response_length_hit_rate", "invalid_action_rate", "logprob_mismatch",
               "host_memory_fraction", "nonfinite_loss")
#: Episode endings that say nothing about the policy (the env crashed or hung); such episodes
#: are left out of the loss.
LOST = ("env_error", "env_timeout")

_GB = 1024**3


def _over(metrics: dict[str, Any], key: str, threshold: float) -> float | None:
    """``metrics[key]`` when it is a finite number at or above ``threshold`` (> 0), else None."""
    v = metrics.get(key)
    if threshold <= 0 or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v) if v >= threshold else None


def _zero_variance(m: dict[str, Any], cfg: AlarmConfig, _r: RolloutConfig) -> str | None:
    v = _over(m, "algo/zero_variance_groups", cfg.zero_variance_groups)
    return None if v is None else (
        f"{v:.0%} of groups have zero reward variance, so their advantages are all 0 and "
        "there is no learning signal; raise rollout.group_size or rollout.temperature, or "
        "train on tasks the policy sometimes solves")


def _zero_grad(m: dict[str, Any], cfg: AlarmConfig, _r: RolloutConfig) -> str | None:
    gn = m.get("train/grad_norm")
    if not (isinstance(gn, (int, float)) and math.isfinite(gn) and gn < cfg.min_grad_norm):
        return None
    return (f"the gradient norm is {gn:.3g}: this update changed nothing. Usually every "
            "advantage is 0 (identical returns in every group); see the zero_variance_groups "
            "and lost_episodes alarms, and check that the env pays rewards the policy can reach")


def _lost_episodes(m: dict[str, Any], cfg: AlarmConfig, _r: RolloutConfig) -> str | None:
    lost = sum(float(m.get(f"rollout/termination/{r}", 0.0)) for r in LOST)
    if m.get("train/skipped"):
        lost = 1.0
    if cfg.lost_episodes <= 0 or lost < cfg.lost_episodes:
        return None
    return (f"{lost:.0%} of episodes ended because the env failed (env_error/env_timeout) and "
            "were left out of the loss; the run's trajectories/ and the env/* metrics say why "
            "(`agentrl play ENV` reproduces an env by hand; raise env.step_timeout for slow envs)")


def _length_hits(m: dict[str, Any], cfg: AlarmConfig, _r: RolloutConfig) -> str | None:
    v = _over(m, "rollout/response_length_hit_rate", cfg.response_length_hit_rate)
    return None if v is None else (
        f"{v:.0%} of replies hit the token limit and were cut off; raise "
        "rollout.max_new_tokens or ask for shorter replies in rollout.template")


def _invalid_actions(m: dict[str, Any], cfg: AlarmConfig, r: RolloutConfig) -> str | None:
    v = _over(m, "rollout/invalid_action_rate", cfg.invalid_action_rate)
    if v is None:
        return None
    if r.action_format == "tool_call":  # constrained decoding needs admissible strings
        return (f"{v:.0%} of actions were invalid tool calls; check rollout.tool_parser against "
                "the model's chat template and the tools in the prompt (`agentrl play ENV` "
                "shows valid calls), or warm-start on expert trajectories (`agentrl collect`, "
                "then algorithm.name=sft)")
    return (f"{v:.0%} of actions were invalid; check rollout.action_format and the prompt "
            "(`agentrl play ENV` shows valid actions)"
            + ("" if r.constrained else ", or set rollout.constrained=true"))


def _mismatch(m: dict[str, Any], cfg: AlarmConfig, _r: RolloutConfig) -> str | None:
    v = _over(m, "train/logprob_mismatch", cfg.logprob_mismatch)
    if v is None:
        return None
    mx = m.get("train/logprob_mismatch_max", float("nan"))
    return (f"sampler and trainer log-probs of the sampled tokens differ by {v:.3g} nats on "
            f"average (max {mx:.3g}), so the first PPO ratio is not 1; check that the sampler "
            "has the latest weights, policy.dtype, and that both use rollout.temperature")


def _host_memory(m: dict[str, Any], cfg: AlarmConfig, _r: RolloutConfig) -> str | None:
    v = _over(m, "perf/host_memory_fraction", cfg.host_memory_fraction)
    if v is None:
        return None
    used = m.get("perf/host_rss_gb", 0.0) + m.get("perf/workers_rss_gb", 0.0)
    return (f"the learner and its workers use {used:.1f} GB, {v:.0%} of host RAM; look for "
            "growth in perf/host_rss_gb and perf/workers_rss_gb (a leak), or lower "
            "rollout.batch_size and the number of env workers")


def _nonfinite_loss(m: dict[str, Any], cfg: AlarmConfig, _r: RolloutConfig) -> str | None:
    loss = m.get("train/loss")
    if not isinstance(loss, (int, float)) or math.isfinite(loss):
        return None
    return (f"train/loss is {loss}; lower train.lr, keep train.grad_clip > 0, or use "
            "policy.dtype=float32")


#: alarm name -> (metrics, thresholds) -> its message when it fires, else None
RULES: dict[str, Callable[[dict[str, Any], AlarmConfig, RolloutConfig], str | None]] = {
    "zero_variance_groups": _zero_variance, "zero_grad_norm": _zero_grad,
    "lost_episodes": _lost_episodes, "response_length_hit_rate": _length_hits,
    "invalid_action_rate": _invalid_actions, "logprob_mismatch": _mismatch,
    "host_memory_fraction": _host_memory, "nonfinite_loss": _nonfinite_loss,
}


def firing_alarms(metrics: dict[str, Any], cfg: AlarmConfig,
                  rollout: RolloutConfig | None = None) -> dict[str, str]:
    """``{name: message}`` for each alarm (`RULES`) whose metric crosses its threshold; the
    fixes suggested fit ``rollout`` (the run's rollout settings; None = the defaults).

    A metric the run does not log (e.g. ``algo/zero_variance_groups`` for PPO) cannot fire.
    """
    if not cfg.enabled:
        return {}
    r = rollout or RolloutConfig()
    fired = {name: rule(metrics, cfg, r) for name, rule in RULES.items()}
    return {name: msg for name, msg in fired.items() if msg is not None}


def check_alarms(metrics: dict[str, Any], cfg: AlarmConfig,
                 rollout: RolloutConfig | None = None) -> list[str]:
    """Messages (``"<name>: <what is wrong and what to do>"``) for every alarm that fires."""
    return [f"{k}: {msg}" for k, msg in firing_alarms(metrics, cfg, rollout).items()]


def alarm_metrics(metrics: dict[str, Any], cfg: AlarmConfig,
                  rollout: RolloutConfig | None = None) -> dict[str, float]:
    """Check, print each firing alarm once (``[agentrl] ALARM: ...``), return ``alarm/*``."""
    if not cfg.enabled:
        return {}
    from tqdm import tqdm

    fired = firing_alarms(metrics, cfg, rollout)
    for name, msg in fired.items():
        # tqdm.write keeps a live progress bar intact
        tqdm.write(f"[agentrl] ALARM: {name}: {msg}")
    return {f"alarm/{n}": float(n in fired) for n in ALARM_NAMES}


# ------------------------------------------------------------------ metrics the alarms read

def logprob_mismatch(scores: Scores, batch: Batch) -> dict[str, float]:
    """Mean and max |sampler logprob - trainer logprob| over the sampled tokens of the rows the
    scoring pass covered (replayed rows excepted: an older policy sampled them).

    The scores come from before the update, so both sides hold the same weights: any
    difference is the sampler/trainer inconsistency that silently biases the PPO ratio (dtype,
    stale weights, temperature, masking).
    """
    rows = scores.rows if batch.replayed is None else scores.rows & ~batch.replayed
    mask = (batch.loss_mask > 0) & rows[:, None]  # replayed rows come from an older policy
    if not mask.any():
        return {}
    diff = (scores.logprobs - batch.sampler_logprobs.float())[mask].abs()
    return {"train/logprob_mismatch": float(diff.mean()),
            "train/logprob_mismatch_max": float(diff.max())}


def _descendants(root: int) -> list[int]:
    """Pids of all live descendants of ``root`` (env workers, engine processes)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="utf-8", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue
        # Field 4 is the parent pid; the command name (field 2) may contain spaces, so split
        # after its closing parenthesis.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(name))
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def memory_metrics() -> dict[str, float]:
    """Host RSS of this process and its child processes, and CUDA memory if in use (GB).

    ``perf/host_rss_gb``: the learner; ``perf/host_peak_rss_gb``: its high-water mark;
    ``perf/workers_rss_gb`` / ``perf/workers``: all descendant processes (env workers, engine
    processes); ``perf/host_memory_fraction``: both over MemTotal; ``perf/gpu_*``: this
    process's CUDA allocator. Empty on systems without /proc.
    """
    if not os.path.isdir("/proc/self"):
        return {}
    m: dict[str, float] = {"perf/host_rss_gb": rss_bytes("self") / _GB}
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    m["perf/host_peak_rss_gb"] = int(line.split()[1]) * 1024 / _GB
    except OSError:
        pass
    kids = _descendants(os.getpid())
    m["perf/workers_rss_gb"] = sum(rss_bytes(p) for p in kids) / _GB
    m["perf/workers"] = float(len(kids))
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            total_kb = next(int(ln.split()[1]) for ln in f if ln.startswith("MemTotal:"))
        m["perf/host_memory_fraction"] = (m["perf/host_rss_gb"] + m["perf/workers_rss_gb"]) \
            * _GB / (total_kb * 1024)
    except (OSError, StopIteration, ValueError):
        pass
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        m["perf/gpu_memory_allocated_gb"] = torch.cuda.memory_allocated() / _GB
        m["perf/gpu_memory_reserved_gb"] = torch.cuda.memory_reserved() / _GB
        m["perf/gpu_max_memory_allocated_gb"] = torch.cuda.max_memory_allocated() / _GB
    return m
