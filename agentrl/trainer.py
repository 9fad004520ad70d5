"""The training loop: rollout -> credit -> update -> sync -> record, one process, debuggable.

    from agentrl.config import load_config
    from agentrl.trainer import Trainer
    Trainer(load_config(None)).train()          # the embedded quickstart

Nothing here names an algorithm: the algorithm object supplies collection, advantages and loss.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from typing import Any

import yaml

from agentrl import checkpoint
from agentrl import collectives as C
from agentrl.alarms import alarm_metrics, logprob_mismatch, memory_metrics
from agentrl.async_loop import AsyncRollouts
from agentrl.batch import Batch
from agentrl.checkpoint import seed_everything
from agentrl.config import Config, config_to_dict
from agentrl.curriculum import TaskSampler
from agentrl.distributed import (
    SHARDED,
    NullLogger,
    generation_model,
    groups_per_rank,
    init_distributed,
    load_sharded,
    make_learner,
    save_sharded,
)
from agentrl.envpool import make_pool
from agentrl.evaluate import EVAL_SAMPLER_SEED, eval_rollout_config, evaluate, summarize
from agentrl.faults import Interrupted, StopOnSignal, fault_point
from agentrl.learner import LocalLearner, apply_tis
from agentrl.lora import MergedCheckpoint, build_lora_model, lora_scale, merged_state_dict
from agentrl.memory import check as memory_check
from agentrl.memory import estimate as memory_estimate
from agentrl.metrics import MetricsLogger, console_line, rollout_metrics
from agentrl.models import build_policy_model, load_pretrained, resolve_device
from agentrl.multiagent import make_engine, make_lineup
from agentrl.policies import make_policy
from agentrl.preflight import preflight
from agentrl.progress import is_terminal, phase
from agentrl.prompts import PromptBuilder
from agentrl.registry import get_algorithm
from agentrl.roles import RoleAdapters, adapter_name, env_roles
from agentrl.types import Trajectory, write_jsonl
from agentrl.viewer import record_turn_advantages


class Trainer:
    """Owns one run: its directory, model, policy backend, envs, algorithm and learner."""

    def __init__(self, cfg: Config, resume: bool = False, run_dir: str | None = None) -> None:
        self.cfg = cfg
        # Under torchrun (train.strategy ddp/fsdp) every rank runs this loop on its share of
        # the groups (`agentrl.distributed`); rank 0 alone writes files.
        init_distributed(cfg.train.strategy, cfg.policy.device)
        self.rank, self.is_main = C.rank(), C.rank() == 0
        self.groups = groups_per_rank(cfg.rollout.groups)
        self.run_dir = C.broadcast(run_dir or self._pick_run_dir(resume))
        os.makedirs(self.run_dir, exist_ok=True)
        for r in range(C.world_size()):  # rank 0 first: env data is fetched once
            if r == self.rank:
                preflight(cfg, self.run_dir)  # run dir, refusals with the fix, env data
            C.barrier()
        self.resume_from = checkpoint.latest(self.run_dir) if resume else None
        seed_everything(cfg.seed)
        # multiagent.policies=per_role: one adapter per role of the game (`agentrl.roles`)
        roles = env_roles(cfg.env.id, cfg.env.kwargs) \
            if cfg.multiagent.policies == "per_role" else None
        if cfg.policy.lora is not None:  # frozen base + adapters (new, or the checkpoint's)
            model, tok = build_lora_model(cfg, self.run_dir, self.resume_from,
                                          [adapter_name(r) for r in roles] if roles else None)
        elif self.resume_from:
            # The tokenizer (and tiny model) must be the checkpoint's, not rebuilt.
            model, tok = load_pretrained(os.path.join(self.resume_from, "model"), cfg.policy.dtype)
            model.to(resolve_device(cfg.policy.device))
        else:
            model, tok = build_policy_model(cfg)
        self.model, self.tokenizer = model, tok
        if self.rank:  # same initial weights, rank-specific rollouts
            seed_everything(cfg.seed + 7919 * self.rank)
        self.config_text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True)
        if self.is_main:
            with open(os.path.join(self.run_dir, "config.yaml"), "w", encoding="utf-8") as f:
                f.write(self.config_text)
        self.algorithm = get_algorithm(cfg.algorithm.name)(cfg.algorithm)
        self.algorithm.setup(model)
        r = cfg.rollout
        self.estimate_model = model  # its config and parameter counts, before any sharding
        # What the engine samples with and checkpoints save: the model, or (FSDP) a full copy.
        self.full_model = generation_model(model, cfg.train.strategy)
        self.learner = make_learner(
            model, cfg.train, r.temperature, self.algorithm, r.top_k, r.top_p,
            response_budget=r.max_new_tokens * (1 if r.context == "window" else r.max_turns))
        self.policy = make_policy(cfg, self.full_model, tok)
        # The training sampler's stream follows the run's seed (each rank its own).
        self.policy.seed(cfg.seed + 7919 * self.rank)
        self.roles = RoleAdapters(model, roles) if roles else None
        role_policies = self.roles.policies(self.policy) if self.roles else None
        self.builder = PromptBuilder(tok, cfg.rollout)
        self.pool = make_pool(cfg.env, self.groups * cfg.rollout.group_size, ray_cfg=cfg.ray)
        # Multi-agent envs: who holds the other seats (self-play, a frozen player, a league).
        self.lineup = make_lineup(cfg, self.run_dir)
        self.engine = make_engine(self.policy, self.pool, self.builder, cfg.rollout, cfg.env.id,
                                  self.lineup, role_policies)
        self.eval_pool = make_pool(cfg.env, min(cfg.eval.episodes, 64),
                                   {**cfg.env.kwargs, **cfg.env.eval_kwargs}, cfg.ray)
        self.eval_engine = make_engine(self.policy, self.eval_pool, self.builder,
                                       eval_rollout_config(cfg), cfg.env.id,
                                       role_policies=role_policies)
        start = checkpoint.checkpoint_iteration(self.resume_from) if self.resume_from else 0
        if resume:  # metrics rows, dumps and eval files past the checkpoint are redone
            checkpoint.discard_after(self.run_dir, start)
        self.logger = MetricsLogger(self.run_dir, cfg.log.tensorboard,
                                    config_to_dict(cfg) if cfg.log.wandb else None,
                                    purge_step=start + 1 if resume else None) \
            if self.is_main else NullLogger()
        self.rng = random.Random(cfg.seed + 7919 * self.rank)
        self.tasks = TaskSampler(cfg.env.curriculum, cfg.env.train_seeds)
        self.iteration = 0
        self.eval_history: list[dict[str, Any]] = []
        if self.resume_from:
            self._restore(self.resume_from)
        elif self.lineup is not None:
            self.lineup.after_update(0, self.model, self.tokenizer)  # a league's first snapshot
        self.policy.version = self.iteration
        # train.max_staleness >= 1: rollouts run ahead in a thread, on a copy of the weights.
        self.rollouts = AsyncRollouts(cfg, self.full_model, tok, self.pool, self.algorithm, self._tasks,
                                      self.iteration) if cfg.train.max_staleness else None

    def _pick_run_dir(self, resume: bool) -> str:
        base = os.path.join(self.cfg.output_dir, self.cfg.run_name)
        if resume or not checkpoint.list_checkpoints(base) and not os.path.exists(
                os.path.join(base, "metrics.jsonl")):
            return base
        k = 2
        while os.path.exists(f"{base}-{k}"):
            k += 1
        return f"{base}-{k}"

    # -- checkpoints --------------------------------------------------------------------
    def save_checkpoint(self) -> str:
        """Rank 0 writes the checkpoint (full weights and optimizer state, in the one-process
        format: it resumes on any number of ranks); every rank's RNG states go in it."""
        rngs = {"rng": checkpoint.rng_state(), "trainer_rng": self.rng.getstate(),
                "policy": self.policy.state_dict()}
        sharded = self.cfg.train.checkpoint_format == "sharded"
        # sharded: the optimizer state goes to CHECKPOINT/sharded, each rank its own shards
        learner = {k: v for k, v in LocalLearner.state_dict(self.learner).items()
                   if k != "optimizer"} if sharded else self.learner.state_dict()

        def write(tmp: str | None) -> None:
            save_sharded(self.learner, os.path.join(C.broadcast(tmp), SHARDED))

        extra = {**learner,  # optimizer, scheduler, reference (collective)
                 "algorithm": self.algorithm.state_dict(), **rngs,
                 "eval_history": self.eval_history, "curriculum": self.tasks.state_dict(),
                 "lineup": self.lineup.state_dict() if self.lineup is not None else None}
        if C.is_distributed():
            extra["rank_rng"] = C.gather_lists([rngs])
        model = MergedCheckpoint(self.full_model, self.tokenizer) if self.cfg.policy.lora \
            else self.full_model
        path = checkpoint.save(self.run_dir, self.iteration, model, self.tokenizer,
                               extra, self.config_text, self.cfg.train.keep_checkpoints,
                               write if sharded else None) if self.is_main else ""
        if sharded and not self.is_main:
            write(None)
        return C.broadcast(path)

    def _restore(self, path: str) -> None:
        st = checkpoint.load_state(path)
        self.learner.load_state_dict(st)
        if os.path.isdir(os.path.join(path, SHARDED)):  # on any number of ranks
            load_sharded(self.learner, os.path.join(path, SHARDED))
        self.algorithm.load_state_dict(st["algorithm"])
        ranks = st.get("rank_rng") or []
        if C.world_size() == len(ranks) or self.rank == 0:  # rank 0 of any run continues
            mine = ranks[self.rank] if C.world_size() == len(ranks) else st
            checkpoint.set_rng_state(mine["rng"])
            self.rng.setstate(mine["trainer_rng"])
            self.policy.load_state_dict(mine["policy"])
        self.eval_history = st.get("eval_history", [])
        self.tasks.load_state_dict(st.get("curriculum") or {})
        if self.lineup is not None and st.get("lineup") is not None:
            self.lineup.load_state_dict(st["lineup"])
        self.iteration = checkpoint.checkpoint_iteration(path)
        print(f"[agentrl] resumed from {path} at iteration {self.iteration}")

    # -- evaluation ---------------------------------------------------------------------
    def run_eval(self, tag: str) -> dict[str, Any]:
        e = self.cfg.eval
        seeds = list(range(e.seed_start, e.seed_start + e.episodes))
        # Evaluation samples from its own seed; training sampling resumes where it left off.
        state = self.policy.state_dict()
        self.policy.seed(EVAL_SAMPLER_SEED + e.seed_start + 7919 * self.rank)
        with phase(f"evaluating ({tag}) on {len(seeds)} held-out episodes"):
            # Under torchrun each rank plays its share of the seeds; rank 0 summarizes them all.
            summary, trajs = evaluate(self.eval_engine, seeds[self.rank::C.world_size()],
                                      greedy=e.greedy)
        self.policy.load_state_dict(state)
        if C.is_distributed():
            trajs = C.gather_lists(trajs)
            summary = C.broadcast(summarize([t for t in trajs if not t.player])
                                  if self.is_main else None)
        summary["iteration"], summary["tag"] = self.iteration, tag
        # A resumed run redoes an evaluation that the checkpoint may already hold (the final).
        self.eval_history = [h for h in self.eval_history if h["tag"] != tag] + [summary]
        if not self.is_main:
            return summary
        os.makedirs(os.path.join(self.run_dir, "eval"), exist_ok=True)
        with open(os.path.join(self.run_dir, "eval", f"{tag}.json"), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
        fault_point("eval")
        write_jsonl(os.path.join(self.run_dir, "eval", f"{tag}_trajectories.jsonl"), trajs)
        lo, hi = summary["ci95"]
        print(f"[agentrl] eval ({tag}, iteration {self.iteration}): success "
              f"{summary['success_rate']:.3f} (95% CI {lo:.2f}-{hi:.2f}) over {summary['episodes']} "
              f"held-out episodes, {summary['turns']:.1f} turns")
        return summary

    # -- the loop -----------------------------------------------------------------------
    def train_iteration(self) -> dict[str, float]:
        """One iteration: collect -> batch -> score + credit -> update -> sync -> record."""
        t0 = time.perf_counter()
        asyn = self.rollouts
        trajs = self._collect() if asyn is None else asyn.next_batch(self.iteration)
        t_roll = time.perf_counter() - t0
        # An episode cut short by a crashed or hung env says nothing about the policy: it is
        # counted in the metrics (rollout/termination/*, env/*) but left out of the loss. So
        # are the trajectories of a fixed player (a frozen opponent in a multi-agent game).
        mine = [t for t in trajs if not t.player]
        learn = [t for t in mine if t.termination not in ("env_error", "env_timeout")]
        m = rollout_metrics(mine)
        self.tasks.update((t.seed, t.success) for t in learn)
        m.update(self.tasks.metrics())
        m.update({f"env/{k}": float(v) for k, v in self.pool.stats.items()})
        if asyn is not None:
            m.update(asyn.metrics(mine, self.iteration))
            m["perf/seconds_wait_rollout"] = t_roll
        if C.any_rank(not learn):  # ranks update together or not at all
            print("[agentrl] every episode of this iteration lost its env; no update",
                  file=sys.stderr)
            m["train/skipped"] = 1.0
            self._publish()
            return m
        batch = self.algorithm.build_batch(learn, self.tokenizer.pad_token_id or 0)
        if C.is_distributed() and C.any_rank(batch.num_rows == 0):
            # e.g. filter_groups dropped every group of one rank: the ranks skip together
            m["train/skipped"] = 1.0
            self._publish()
            return m
        t1 = time.perf_counter()
        m.update(self._credit(batch))
        self.policy.sleep()  # e.g. vllm sleep mode: the engine's memory goes to the learner
        m.update(self._update(batch))
        t2 = time.perf_counter()
        weights = self.learner.export_weights()
        if self.cfg.policy.lora and self.cfg.policy.backend != "hf":  # engine's own weights
            weights = merged_state_dict(weights if isinstance(weights, dict)
                                        else weights.state_dict(), lora_scale(self.full_model))
        self.policy.update_weights(weights)
        self._publish()
        self.policy.wake()
        if self.lineup is not None:
            self.lineup.after_update(self.iteration + 1, self.full_model, self.tokenizer)
        t3 = time.perf_counter()
        turns = [t for tr in trajs for t in tr.turns]
        gen = sum(t.seconds_generate for t in turns)
        env = sum(t.seconds_env for t in turns)
        m.update({"perf/seconds_rollout": t_roll, "perf/seconds_generate": gen,
                  "perf/seconds_env": env, "perf/seconds_train": t2 - t1,
                  "perf/seconds_sync": t3 - t2, "perf/seconds_iteration": t3 - t0,
                  "perf/action_tokens": float(sum(len(t.action_ids) for t in turns)),
                  "perf/tokens_per_second_generate": sum(len(t.action_ids) for t in turns)
                  / max(gen, 1e-9)})
        m.update(memory_metrics())
        record_turn_advantages(batch)  # per-turn credit into the dumps, for the viewer
        self._dump(trajs)
        self.algorithm.on_iteration_end(self.iteration, m)
        return m

    def _publish(self) -> None:
        """The weights after this iteration are version ``iteration + 1``: tag the policy's
        next turns with it, and hand a snapshot to asynchronous rollouts."""
        self.policy.version = self.iteration + 1
        if self.rollouts is not None:
            self.rollouts.publish(self.iteration + 1, self.learner.export_weights())

    def _tasks(self, iteration: int, rng: random.Random) -> tuple[list[int], list[str]]:
        """Seeds and group ids of an iteration: ``groups`` train seeds drawn from ``rng`` by
        the task sampler (uniform, or by recent success), ``group_size`` episodes each."""
        c = self.cfg
        seeds, gids = [], []
        tag = f"r{self.rank}-" if C.is_distributed() else ""
        for g, s in enumerate(self.tasks.draw(self.groups, rng)):
            seeds += [s] * c.rollout.group_size
            gids += [f"it{iteration}-{tag}g{g}"] * c.rollout.group_size
        return seeds, gids

    def _collect(self) -> list[Trajectory]:
        """This iteration's rollouts: ``groups`` random train seeds, ``group_size`` each."""
        seeds, gids = self._tasks(self.iteration, self.rng)
        fault_point("rollout")
        bar = self._bar("rollout", None, "turn")
        self.engine.progress = bar
        try:
            return self.algorithm.collect(self.engine, seeds, gids)
        finally:
            self.engine.progress = None
            if bar is not None:
                bar.close()

    def _credit(self, batch: Batch) -> dict[str, float]:
        """One no-grad scoring pass before the update (what the algorithm declared, recomputed
        old logprobs if asked, the sampler/trainer mismatch metric), then the algorithm's
        credit and, if on, truncated IS. Returns the metrics."""
        c = self.cfg
        recompute = c.policy.recompute_old_logprobs or c.train.tis_cap > 0
        wants = self.algorithm.requires | ({"old_logprobs"} if recompute else set())
        scores = self.roles.score(self.learner, batch, wants) if self.roles \
            else self.learner.score(batch, wants)
        m = logprob_mismatch(scores, batch)
        batch.attach(scores, recompute_old_logprobs="old_logprobs" in wants)
        m.update({f"algo/{k}": v for k, v in self.algorithm.credit(batch).items()})
        if c.train.tis_cap > 0:
            m.update(apply_tis(batch, c.train.tis_cap))
        return m

    def _update(self, batch: Batch) -> dict[str, float]:
        c = self.cfg
        steps = c.train.epochs * c.train.minibatches * (len(self.roles.rows(batch))
                                                        if self.roles else 1)
        self.learner.progress = self._bar("update", steps, "step")
        fault_point("update")
        try:
            if self.roles:  # each role's rows with its own adapter, one LR schedule step
                return self.roles.update(self.learner, batch, self.rng)
            return self.learner.update(batch, self.rng)
        finally:
            if self.learner.progress is not None:
                self.learner.progress.close()
            self.learner.progress = None

    def _bar(self, desc: str, total: int | None, unit: str) -> Any:
        """A transient progress bar under the training bar (None with log.progress=false or
        when stderr is not a terminal)."""
        if not self.cfg.log.progress or not sys.stderr.isatty() or not self.is_main:
            return None
        from tqdm import tqdm

        return tqdm(total=total, desc=f"  {desc}", unit=unit, leave=False, position=1,
                    dynamic_ncols=True)

    def _dump(self, trajs: list[Any]) -> None:
        lg = self.cfg.log
        it = self.iteration + 1  # the number this iteration gets in metrics.jsonl
        if lg.trajectories_every and it % lg.trajectories_every == 0 and self.is_main:
            d = os.path.join(self.run_dir, "trajectories")
            os.makedirs(d, exist_ok=True)
            write_jsonl(os.path.join(d, f"iter_{it:05d}.jsonl"),
                        trajs[:lg.trajectories_per_dump])

    def train(self) -> dict[str, Any]:
        c = self.cfg
        total = c.train.iterations
        print(f"[agentrl] env {c.env.id}, algorithm {c.algorithm.name}, model {c.policy.model} "
              f"({sum(p.numel() for p in self.model.parameters()):,} parameters), "
              f"{c.rollout.groups}x{c.rollout.group_size} episodes per iteration")
        # Before anything runs: what the run will need, and a stop if it cannot fit.
        line = memory_check(memory_estimate(self.estimate_model, c, self.algorithm,
                                            C.world_size()),
                            next(self.full_model.parameters()).device,
                            int(os.environ.get("LOCAL_WORLD_SIZE", "1")), c.train.memory_check)
        if self.is_main:
            print(f"[agentrl] {line}")
        if self.iteration == 0 and c.eval.before_training:
            self.run_eval("before")
        bar = None
        if c.log.progress and is_terminal() and self.is_main:  # a pipe garbles a redrawn bar
            from tqdm import tqdm

            bar = tqdm(total=total, initial=self.iteration, desc="training", unit="it",
                       dynamic_ncols=True, leave=False)
        stop = StopOnSignal()  # SIGTERM/SIGINT: finish the iteration, checkpoint, exit 75
        try:
            while self.iteration < total:
                m = C.mean_metrics(self.train_iteration())  # over ranks: one decision
                self.iteration += 1
                if c.eval.every and self.iteration % c.eval.every == 0 and self.iteration < total:
                    s = self.run_eval(f"iter_{self.iteration}")
                    m["eval/success_rate"] = s["success_rate"]
                m.update(alarm_metrics(m, c.alarms))
                self.logger.log(self.iteration, m)
                line = console_line(self.iteration, total, m)
                if bar is not None:
                    bar.update(1)
                    bar.write(line)
                elif self.is_main:
                    print(line, flush=True)
                due = c.train.checkpoint_every and self.iteration % c.train.checkpoint_every == 0
                cp = self.save_checkpoint() if due else None
                fault_point("iteration_end")
                if C.any_rank(stop.signum is not None):
                    cp = cp or self.save_checkpoint()
                    self.logger.close()
                    self.close()
                    raise Interrupted(stop.signum or signal.SIGTERM, self.iteration, cp,
                                      self.run_dir)
        finally:
            stop.restore()
        if bar is not None:
            bar.close()
        final = self.run_eval("final")
        # The row goes after the checkpoint: killed in between, a resume redoes the evaluation
        # and logs it once (logged before, it would be there twice).
        cp = self.save_checkpoint()
        self.logger.log(self.iteration, {"eval/success_rate": final["success_rate"]})
        self.logger.close()
        before = next((e for e in self.eval_history if e["tag"] == "before"), None)
        if not self.is_main:
            self.close()
            return {"before": before, "final": final, "run_dir": self.run_dir, "checkpoint": cp}
        curve = write_curve(self.run_dir, self.eval_history)
        print("[agentrl] done. held-out success: "
              + (f"{before['success_rate']:.3f} before -> " if before else "")
              + f"{final['success_rate']:.3f} after training")
        print(f"[agentrl] run:        {os.path.abspath(self.run_dir)}")
        print(f"[agentrl] metrics:    {os.path.abspath(os.path.join(self.run_dir, 'metrics.jsonl'))}")
        if curve:
            print(f"[agentrl] curve:      {os.path.abspath(curve)}")
        print(f"[agentrl] checkpoint: {os.path.abspath(cp)}")
        self.close()
        return {"before": before, "final": final, "run_dir": self.run_dir, "checkpoint": cp}

    def close(self) -> None:
        if self.rollouts is not None:
            self.rollouts.close()  # before the pool its thread steps
        self.pool.close()
        self.eval_pool.close()
        if self.lineup is not None:
            self.lineup.close()
        self.policy.close()  # e.g. vllm: the engine and its model directory


def write_curve(run_dir: str, evals: list[dict[str, Any]]) -> str | None:
    """Plot training and held-out success rate against iteration (``curve.png``)."""
    from agentrl.metrics import read_metrics

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [r for r in read_metrics(run_dir) if "rollout/success_rate" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if rows:
        ax.plot([r["iteration"] for r in rows], [r["rollout/success_rate"] for r in rows],
                label="training episodes", alpha=0.6)
    if evals:
        ax.plot([e["iteration"] for e in evals], [e["success_rate"] for e in evals], "o-",
                label="held-out evaluation")
        ax.fill_between([e["iteration"] for e in evals], [e["ci95"][0] for e in evals],
                        [e["ci95"][1] for e in evals], alpha=0.2)
    ax.set_xlabel("iteration")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("success rate")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    path = os.path.join(run_dir, "curve.png")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
