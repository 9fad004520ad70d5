"""The training loop: rollout -> credit -> update -> sync -> record, one process, debuggable.

    from agentrl.config import load_config
    from agentrl.trainer import Trainer
    Trainer(load_config(None)).train()          # the embedded quickstart

Nothing here names an algorithm: the algorithm object supplies collection, advantages and loss.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import signal
import sys
import time
from typing import Any

import yaml

from agentrl import collectives as C
from agentrl.assemble import assemble, async_rollouts, rank_seed
from agentrl.config import Config, config_to_dict
from agentrl.evaluate import EVAL_SAMPLER_SEED, eval_line, evaluate, summarize
from agentrl.learn.batch import Batch
from agentrl.learn.distributed import (
    SHARDED,
    groups_per_rank,
    init_distributed,
    load_sharded,
    save_sharded,
)
from agentrl.learn.learner import LocalLearner, apply_tis
from agentrl.models.lora import MergedCheckpoint, lora_scale, merged_state_dict
from agentrl.models.memory import check as memory_check
from agentrl.models.memory import estimate as memory_estimate
from agentrl.progress import is_terminal, phase
from agentrl.run import checkpoint
from agentrl.run.alarms import alarm_metrics, logprob_mismatch, memory_metrics
from agentrl.run.checkpoint import seed_everything
from agentrl.run.faults import Interrupted, StopOnSignal, fault_point
from agentrl.run.metrics import console_line, rollout_metrics
from agentrl.run.preflight import preflight
from agentrl.run.report import write_curve
from agentrl.run.viewer import record_turn_advantages
from agentrl.types import Trajectory, write_jsonl


def _picklable(e: Exception | None) -> Exception | None:
    """``e``, or a RuntimeError with its text when it cannot be sent to the other ranks."""
    try:
        pickle.dumps(e)
        return e
    except Exception:
        return RuntimeError(f"{type(e).__name__}: {e}")


class Trainer:
    """Owns one run: its directory, model, policy backend, envs, algorithm and learner."""

    def __init__(self, cfg: Config, resume: bool = False, run_dir: str | None = None) -> None:
        self.cfg = cfg
        # Under torchrun (train.strategy ddp/fsdp) every rank runs this loop on its share of
        # the groups (`agentrl.learn.distributed`); rank 0 alone writes files.
        init_distributed(cfg.train.strategy, cfg.policy.device)
        self.rank, self.is_main = C.rank(), C.rank() == 0
        self.groups = groups_per_rank(cfg.rollout.groups)
        self.run_dir = C.broadcast(run_dir or self._pick_run_dir(resume))
        # What a resume loads is read and checked before the run directory changes at all: a
        # damaged or hostile checkpoint leaves it as it was.
        self.resume_from = checkpoint.latest(self.run_dir) if resume else None
        state = self._open_checkpoint(self.resume_from) if self.resume_from else None
        self._prepare_run_dir()
        start = checkpoint.checkpoint_iteration(self.resume_from) if self.resume_from else 0
        if resume and self.is_main:  # metrics rows, dumps and eval files past the
            checkpoint.discard_after(self.run_dir, start)  # checkpoint are redone (rank 0
        C.barrier()  # alone rewrites them: ranks racing on metrics.jsonl.tmp failed resumes)
        parts = assemble(cfg, self.run_dir, self.resume_from, self.groups,
                         purge_step=start + 1 if resume else None)
        self.model, self.tokenizer, self.full_model = parts.model, parts.tokenizer, parts.full_model
        self.algorithm, self.learner, self.policy = parts.algorithm, parts.learner, parts.policy
        self.pool, self.engine, self.lineup = parts.pool, parts.engine, parts.lineup
        self.eval_pool, self.eval_engine, self.logger = parts.eval_pool, parts.eval_engine, parts.logger
        self.tasks = parts.tasks  # which training tasks each iteration draws (a curriculum)
        self.rng = random.Random(rank_seed(cfg.seed))
        self.iteration = 0
        self.eval_history: list[dict[str, Any]] = []
        if self.resume_from:
            self._restore(self.resume_from, state)
        elif self.lineup is not None:
            self.lineup.after_update(0, self.model, self.tokenizer)  # a league's first snapshot
        self.policy.version = self.iteration
        # train.max_staleness >= 1: rollouts run ahead in a thread, on a copy of the weights.
        self.rollouts = async_rollouts(cfg, parts, self._tasks, self.iteration)

    @staticmethod
    def _open_checkpoint(path: str) -> dict[str, Any]:
        """The loaded state of checkpoint ``path``, once its iteration is a number and its
        weights are safetensors (`CheckpointError` otherwise, as for a refused pickle)."""
        checkpoint.checkpoint_iteration(path)
        checkpoint.check_weights(path)
        return checkpoint.load_state(path)

    def _prepare_run_dir(self) -> None:
        """Preflight (rank 0 first: env data is fetched once), the seeds, and the resolved
        config.yaml."""
        os.makedirs(self.run_dir, exist_ok=True)
        for r in range(C.world_size()):
            mine: Exception | None = None
            if r == self.rank:
                try:
                    preflight(self.cfg, self.run_dir)  # run dir, refusals with the fix, env data
                except Exception as e:  # every rank stops with it (none waits in a barrier)
                    mine = e
            refused = C.broadcast(_picklable(mine), src=r)
            if refused is not None:
                raise mine or refused
        seed_everything(self.cfg.seed)
        self.config_text = yaml.safe_dump(config_to_dict(self.cfg), sort_keys=False,
                                          allow_unicode=True)
        if self.is_main:
            with open(os.path.join(self.run_dir, "config.yaml"), "w", encoding="utf-8") as f:
                f.write(self.config_text)

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

    def _restore(self, path: str, st: dict[str, Any]) -> None:
        """Continue from checkpoint ``path`` whose loaded state is ``st``."""
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
        self.policy.seed(rank_seed(EVAL_SAMPLER_SEED + e.seed_start))
        bar = self._bar(f"eval ({tag})", None, "turn")
        try:
            with phase(f"evaluating ({tag}) on {len(seeds)} held-out episodes"):
                # Under torchrun each rank plays its share of the seeds; rank 0 summarizes.
                summary, trajs = evaluate(self.eval_engine, seeds[self.rank::C.world_size()],
                                          greedy=e.greedy, progress=bar)
        finally:
            if bar is not None:
                bar.close()
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
        print("[agentrl] " + eval_line(tag, self.iteration, summary, len(seeds), e.greedy))
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
        m.update(self._score_and_credit(batch))
        self.policy.sleep()  # e.g. vllm sleep mode: the engine's memory goes to the learner
        m.update(self._update(batch))
        t2 = time.perf_counter()
        weights = self.learner.export_weights()
        if self.cfg.policy.lora and not self.policy.shares_learner_module:  # its own copy
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

    def _score_and_credit(self, batch: Batch) -> dict[str, float]:
        """One no-grad scoring pass before the update (what the algorithm declared, recomputed
        old logprobs if asked, the sampler/trainer mismatch metric), then the algorithm's
        credit and, if on, truncated IS. Returns the metrics."""
        c = self.cfg
        recompute = c.policy.recompute_old_logprobs or c.train.tis_cap > 0
        wants = self.algorithm.requires | ({"old_logprobs"} if recompute else set())
        scores = self.learner.score(batch, wants)
        m = logprob_mismatch(scores, batch)
        batch.attach(scores, recompute_old_logprobs="old_logprobs" in wants)
        m.update({f"algo/{k}": v for k, v in self.algorithm.credit(batch).items()})
        if c.train.tis_cap > 0:
            m.update(apply_tis(batch, c.train.tis_cap))
        return m

    def _update(self, batch: Batch) -> dict[str, float]:
        steps = self.learner.update_steps(batch)
        self.learner.progress = self._bar("update", steps, "step")
        fault_point("update")
        try:
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
        """Train for ``train.iterations`` (from the checkpoint's iteration on resume), then
        evaluate, checkpoint and report. Returns the before/final evaluations, the run
        directory and the last checkpoint."""
        c = self.cfg
        self._announce()
        if self.iteration == 0 and c.eval.before_training:
            self.run_eval("before")
        bar = None
        if c.log.progress and is_terminal() and self.is_main:  # a pipe garbles a redrawn bar
            from tqdm import tqdm

            bar = tqdm(total=c.train.iterations, initial=self.iteration, desc="training",
                       unit="it", dynamic_ncols=True, leave=False)
        stop = StopOnSignal()  # SIGTERM/SIGINT: finish the iteration, checkpoint, exit 75
        try:
            while self.iteration < c.train.iterations:
                self._end_of_iteration(C.mean_metrics(self.train_iteration()), bar, stop)
        finally:
            stop.restore()
        if bar is not None:
            bar.close()
        return self._finish()

    def _announce(self) -> None:
        """What is about to train, and (before anything runs) the memory it will need: a stop
        if it cannot fit."""
        c = self.cfg
        print(f"[agentrl] env {c.env.id}, algorithm {c.algorithm.name}, model {c.policy.model} "
              f"({sum(p.numel() for p in self.model.parameters()):,} parameters), "
              f"{c.rollout.groups}x{c.rollout.group_size} episodes per iteration")
        line = memory_check(memory_estimate(self.model, c, self.algorithm, C.world_size()),
                            next(self.full_model.parameters()).device,
                            int(os.environ.get("LOCAL_WORLD_SIZE", "1")), c.train.memory_check)
        if self.is_main:
            print(f"[agentrl] {line}")

    def _end_of_iteration(self, m: dict[str, float], bar: Any, stop: StopOnSignal) -> None:
        """After an iteration (``m``: its metrics, averaged over ranks): the periodic
        evaluation, alarms, the metrics row and console line, the periodic checkpoint, and on
        SIGTERM/SIGINT a checkpoint and `Interrupted`."""
        c, total = self.cfg, self.cfg.train.iterations
        self.iteration += 1
        if c.eval.every and self.iteration % c.eval.every == 0 and self.iteration < total:
            m["eval/success_rate"] = self.run_eval(f"iter_{self.iteration}")["success_rate"]
        m.update(alarm_metrics(m, c.alarms, c.rollout))
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
            raise Interrupted(stop.signum or signal.SIGTERM, self.iteration, cp, self.run_dir)

    def _finish(self) -> dict[str, Any]:
        """The final evaluation and checkpoint, the curve and the closing summary."""
        final = self.run_eval("final")
        # The row goes after the checkpoint: killed in between, a resume redoes the evaluation
        # and logs it once (logged before, it would be there twice).
        cp = self.save_checkpoint()
        self.logger.log(self.iteration, {"eval/success_rate": final["success_rate"]})
        self.logger.close()
        before = next((e for e in self.eval_history if e["tag"] == "before"), None)
        out = {"before": before, "final": final, "run_dir": self.run_dir, "checkpoint": cp}
        if not self.is_main:
            self.close()
            return out
        curve = write_curve(self.run_dir, self.eval_history)  # None without matplotlib
        print("[agentrl] done. held-out success: "
              + (f"{before['success_rate']:.3f} before -> " if before else "")
              + f"{final['success_rate']:.3f} after training")
        print(f"[agentrl] run:        {os.path.abspath(self.run_dir)}")
        print(f"[agentrl] metrics:    {os.path.abspath(os.path.join(self.run_dir, 'metrics.jsonl'))}")
        if curve:
            print(f"[agentrl] curve:      {os.path.abspath(curve)}")
        print(f"[agentrl] checkpoint: {os.path.abspath(cp)}")
        self.close()
        return out

    def close(self) -> None:
        if self.rollouts is not None:
            self.rollouts.close()  # before the pool its thread steps
        self.pool.close()
        self.eval_pool.close()
        if self.lineup is not None:
            self.lineup.close()
        self.policy.close()  # e.g. vllm: the engine and its model directory
