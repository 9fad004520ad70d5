"""The learner under ``torchrun``: DDP or FSDP2 (``train.strategy``), one process per device.

    agentrl launch --standalone --nproc_per_node=2 train configs/quickstart.yaml train.strategy=fsdp

SPMD, as TRL and verl run colocated training: every rank rolls out its own share of the
iteration's groups with its own generation engine (group statistics stay local), then all ranks
update one model together. Everything that must be global is reduced across ranks, so the
update does not depend on the number of ranks:

- loss-aggregation denominators (tokens, sequences) of each minibatch, and the loss terms;
- the gradient: each rank back-propagates its rows' share of the global loss, and DDP's
  all-reduce / FSDP2's reduce-scatter (which average) see it scaled by the world size, so the
  result is the sum of the shares: the one-process gradient of the whole minibatch;
- the algorithm's batch statistics (`agentrl.collectives`: EMPG's min/max/means, PPO's
  whitening, EPO's per-turn entropy history, SPEAR's P50 baseline);
- gradients of the algorithm's own parameters (a critic, a value head), all-reduced.

Ranks hold different numbers of micro-batches; each rank runs as many forward passes as the
busiest rank, the extra ones on a row whose loss mask is zero (the collectives inside DDP and
FSDP2 need every rank in every pass).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import replace
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from agentrl import collectives as C
from agentrl.learn.batch import Batch
from agentrl.learn.forward import HeadSpec, Scorer, action_outputs
from agentrl.learn.learner import LocalLearner
from agentrl.learn.varlen import decoder as _decoder


def launched_by_torchrun() -> bool:
    """Whether this process is one rank of a ``torchrun`` launch (it sets WORLD_SIZE)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


class LaunchError(ValueError):
    """``train.strategy`` does not match how the process was launched (a start-up error:
    exit status 2, one line)."""

    exit_code = 2


def init_distributed(strategy: str, device: str = "auto") -> torch.device:
    """Join the process group torchrun set up (``nccl`` on CUDA, ``gloo`` on CPU) and return
    this rank's device. ``strategy=single`` under torchrun, or ddp/fsdp without it, is an
    error that names the fix.

    Raises:
        LaunchError: strategy and launch do not match.
    """
    if strategy == "single":
        if launched_by_torchrun() and int(os.environ["WORLD_SIZE"]) > 1:
            raise LaunchError("launched by torchrun with several ranks but train.strategy=single:"
                             " set train.strategy=ddp or train.strategy=fsdp")
        return torch.device("cuda" if device == "auto" and torch.cuda.is_available()
                            else ("cpu" if device == "auto" else device))
    if not launched_by_torchrun():
        raise LaunchError(f"train.strategy={strategy} runs under torchrun: launch the same "
                          "command as agentrl launch --standalone --nproc_per_node=N train ... "
                          "(or torchrun --nproc_per_node=N -m agentrl train ...; or add "
                          "train.strategy=single to run in one process; a distributed run's "
                          "checkpoint resumes that way too)")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo",
                                timeout=datetime.timedelta(minutes=30))
    return torch.device("cuda", local) if cuda else torch.device("cpu")


def leave_process_group() -> None:
    """Destroy this rank's process group, if it joined one, before the process exits: a rank
    that exits with its gloo threads still up can abort ("terminate called without an active
    exception") and show up as killed by SIGABRT instead of its exit code."""
    if dist.is_available() and dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


class ActionScorer(nn.Module):
    """`action_outputs` as a module's forward, so DDP and FSDP2 see every parameter it uses
    (decoder, final norm, tied LM head) go through their forward hooks."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                loss_mask: torch.Tensor, pack: bool, pack_capacity: int, spec: HeadSpec,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                           torch.Tensor | None]:
        """(rows (P,), cols (P,), hidden (P, H), logprob (P,), entropy (P,) or None) for
        ``input_ids`` (n, L)."""
        return action_outputs(self.lm, input_ids, attention_mask, loss_mask, pack,
                              pack_capacity, spec)


def _broadcast_module(module: nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (identical starting weights)."""
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=0)


class DistributedLearner(LocalLearner):
    """`LocalLearner` with its model under DDP or FSDP2 and every global quantity reduced across
    ranks. Same methods; the trainer does not change."""

    def __init__(self, model: nn.Module, cfg: Any, temperature: float, algorithm: Any,
                 top_k: int = 0, top_p: float = 1.0, response_budget: float | None = None,
                 ) -> None:
        if cfg.strategy not in ("ddp", "fsdp"):
            raise ValueError(f"DistributedLearner: train.strategy={cfg.strategy}; use ddp or fsdp")
        if not C.is_distributed() and not (dist.is_available() and dist.is_initialized()):
            raise ValueError("DistributedLearner needs a process group: launch with torchrun")
        self.strategy = cfg.strategy
        self.ddp: Any = None
        super().__init__(model, cfg, temperature, algorithm, top_k, top_p, response_budget)

    # -- wrapping --------------------------------------------------------------------------
    def _wrap(self, model: nn.Module) -> Scorer:
        c = self.cfg
        _broadcast_module(model)
        for p in self.algorithm.param_groups():  # a critic or value head starts equal too
            for q in p["params"]:
                dist.broadcast(q.data, src=0)
        scorer = ActionScorer(model)
        if self.strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel as DDP

            dev = next(model.parameters()).device
            self.ddp = DDP(scorer, device_ids=[dev.index] if dev.type == "cuda" else None,
                           forward_sync_buffers=False)  # rotary tables: equal by construction
            return self.ddp
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

        kw: dict[str, Any] = {}
        if c.mixed_precision == "bf16":
            kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16,
                                                   reduce_dtype=torch.float32)
        if c.cpu_offload:
            kw["offload_policy"] = CPUOffloadPolicy()
        for layer in _decoder(model).layers:  # one all-gather per layer, freed after use
            fully_shard(layer, **kw)
        self.ddp = fully_shard(scorer, **kw)  # the root: embeddings, final norm, LM head
        return self.ddp

    # -- equal passes on every rank ----------------------------------------------------------
    def _micro_batches(self, batch: Batch, rows: list[int]) -> list[list[int]]:
        plan = super()._micro_batches(batch, rows)
        most = int(C.max_floats([float(len(plan))])[0])
        return plan + [[] for _ in range(most - len(plan))]

    def _select(self, batch: Batch, rows: list[int]) -> Batch:
        if rows:
            return batch.select(rows)
        if batch.num_rows == 0:
            raise RuntimeError("a rank has no training rows this iteration; the trainer "
                               "skips such iterations on every rank")
        one = batch.select([0])  # a filler pass: no action token, so no loss and no gradient
        return replace(one, loss_mask=torch.zeros_like(one.loss_mask))

    # -- gradients -------------------------------------------------------------------------
    @contextlib.contextmanager
    def _accumulating(self, last: bool) -> Any:
        if self.strategy == "ddp":
            ctx = contextlib.nullcontext() if last else self.ddp.no_sync()
        else:
            self.ddp.set_requires_gradient_sync(last)
            ctx = contextlib.nullcontext()
        amp = (torch.autocast(next(self.model.parameters()).device.type, dtype=torch.bfloat16)
               if self.strategy == "ddp" and self.cfg.mixed_precision == "bf16"
               else contextlib.nullcontext())
        with ctx, amp:
            yield
        if last:
            self._reduce_algorithm_grads()

    def _backward(self, loss: torch.Tensor) -> None:
        # DDP and FSDP2 average gradients over ranks; each rank's loss is its share of the
        # global one, so scaling by the world size turns the average into the sum.
        (loss * C.world_size()).backward()

    def _reduce_algorithm_grads(self) -> None:
        """The algorithm's own parameters (critic, value head) sit outside DDP/FSDP: average
        their (world-size-scaled) gradients with an all-reduce."""
        w = C.world_size()
        for g in self.optimizer.param_groups[1:]:
            for p in g["params"]:
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad.div_(w)

    def _reduce_sums(self, values: list[float]) -> list[float]:
        return C.sum_floats(values)

    # -- weights and state -----------------------------------------------------------------
    def export_weights(self) -> Any:
        """DDP: the module itself (every rank holds the full weights). FSDP: the full state
        dict, gathered on every rank (a collective), for this rank's generation engine."""
        if self.strategy == "ddp":
            return self.model
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True))

    def full_model_state(self) -> dict[str, torch.Tensor]:
        """The full (unsharded) model state dict on every rank, on the CPU (for a checkpoint
        in the one-process format)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        if self.strategy == "ddp":
            return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        return get_model_state_dict(self.model, options=StateDictOptions(
            full_state_dict=True, cpu_offload=False))

    # -- optimizer state in the one-process format -------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """As `LocalLearner.state_dict`, with FSDP's sharded optimizer moments gathered into
        full tensors (a collective: every rank calls it), so a checkpoint written by rank 0
        resumes on any number of ranks, or in one process."""
        state = super().state_dict()
        if self.strategy == "fsdp":
            state["optimizer"] = _map_tensors(state["optimizer"], _full)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.strategy == "fsdp" and "optimizer" in state:
            # Full moments (from any number of ranks) are cut to this rank's shard of each
            # parameter, as FSDP2 laid the parameter out.
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            opt = dict(state["optimizer"])
            opt["state"] = {k: {n: _like(v, params[int(k)]) for n, v in s.items()}
                            for k, s in opt["state"].items()}
            state = {**state, "optimizer": opt}
        super().load_state_dict(state)


def _full(x: Any) -> Any:
    full = getattr(x, "full_tensor", None)
    return full().cpu() if full is not None else x


def _map_tensors(obj: Any, fn: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_map_tensors(v, fn) for v in obj]
    return fn(obj) if isinstance(obj, torch.Tensor) else obj


def _like(value: Any, param: torch.Tensor) -> Any:
    """``value`` laid out like ``param``: a full moment tensor becomes a DTensor sharded as
    ``param`` is (`distribute_tensor`); scalars (AdamW's step) and plain params stay."""
    mesh = getattr(param, "device_mesh", None)
    if mesh is None or not isinstance(value, torch.Tensor) or value.shape != param.shape:
        return value
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(value.to(param.dtype), mesh, param.placements)


def make_learner(model: nn.Module, cfg: Any, temperature: float, algorithm: Any,
                 top_k: int = 0, top_p: float = 1.0, response_budget: float | None = None,
                 ) -> LocalLearner:
    """The learner ``cfg.strategy`` (a `TrainConfig`) names."""
    cls = LocalLearner if cfg.strategy == "single" else DistributedLearner
    return cls(model, cfg, temperature, algorithm, top_k, top_p, response_budget)


def generation_model(model: nn.Module, strategy: str) -> nn.Module:
    """The module this rank's generation engine samples with: the learner's own (one process,
    DDP: every rank holds the full weights), or for FSDP a full copy that each weight sync
    refreshes (a sharded module cannot generate on one rank alone)."""
    if strategy != "fsdp":
        return model
    import copy

    return copy.deepcopy(model)


def groups_per_rank(groups: int) -> int:
    """This rank's share of ``rollout.groups`` (whole groups: group statistics stay local).

    Raises:
        LaunchError: ``groups`` does not divide by the number of ranks.
    """
    w = C.world_size()
    if groups % w:
        raise LaunchError(f"rollout.groups={groups} does not split into {w} ranks: set it to a "
                          f"multiple of {w} (each rank rolls out whole groups)")
    return groups // w


# -- torch.distributed.checkpoint: sharded model and optimizer state ---------------------------

SHARDED = "sharded"  # the directory of a checkpoint that holds them

def _dcp_state(learner: LocalLearner) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    if len(learner.optimizer.param_groups) > 1:
        raise ValueError("train.checkpoint_format=sharded: the algorithm trains parameters of its "
                         "own (a PPO critic or value head), which the sharded format does not "
                         "hold; use train.checkpoint_format=full")
    return {"model": get_model_state_dict(learner.model),
            "optim": get_optimizer_state_dict(learner.model, learner.optimizer)}


def save_sharded(learner: LocalLearner, path: str) -> None:
    """Every rank writes its shards of the model and optimizer state to ``path``
    (`torch.distributed.checkpoint.save`; one process: the whole state)."""
    import torch.distributed.checkpoint as dcp

    dcp.save(_dcp_state(learner), checkpoint_id=path)


def load_sharded(learner: LocalLearner, path: str) -> None:
    """Load ``path`` (written by any number of ranks) into this learner, each rank reading
    the pieces of its own shards (`torch.distributed.checkpoint.load` reshards)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    state = _dcp_state(learner)
    dcp.load(state, checkpoint_id=path)
    set_model_state_dict(learner.model, state["model"])
    set_optimizer_state_dict(learner.model, learner.optimizer, state["optim"])
