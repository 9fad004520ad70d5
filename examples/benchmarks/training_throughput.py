"""Training throughput on mixed-length multi-turn batches: padded vs length-sorted vs packed.

The batch: ``full`` context episodes of TextWorld coin collector with turn limits 4..12 (free
decoding, so each episode runs to its limit): one row per episode, lengths varying ~3x. The
same batch goes through `LocalLearner.update` (one epoch, one minibatch, learning rate 0 so
every run sees the same weights) in three ways:

- ``padded``: micro-batches in batch order, every row padded to the micro-batch's longest;
- ``sorted``: the same, rows ordered by length first (``train.sort_by_length``);
- ``bins``: several sequences per row (first-fit-decreasing bins as long as the longest
  sequence), position ids restarting per sequence, sdpa's block-diagonal mask: each row pays
  attention over its whole length and its unfilled room;
- ``packed``: the default (``train.pack``): a micro-batch's sequences end to end in one row
  with no filler, attention run sequence by sequence (`agentrl.learn.varlen`).

Tokens/s counts real tokens only (prompt + replies, no padding). Runs alternate; ratios come
from the same round. Also printed: packed vs padded loss and gradient differences on one
micro-batch, and the roofline bound (forward + backward FLOPs of the real tokens over the
machine's measured matmul FLOP/s).

    python -m examples.benchmarks.training_throughput --pairs 3
"""

from __future__ import annotations

import copy
import random
import time
from typing import Any

import torch

from examples.benchmarks import machine
from examples.benchmarks.multiturn_generation import FULL

# name: (train.pack, train.sort_by_length, varlen attention)
MODES = {"padded": (False, False, False), "sorted": (False, True, False),
         "bins": (True, False, False), "packed": (True, False, True)}


def mixed_batch(model_name: str, per_limit: int, sizes: dict[str, int]) -> tuple[Any, Any, Any]:
    """(trajectories, tokenizer, {name: model}) for episodes of 4..12 turns."""
    from agentrl.config import load_config
    from agentrl.envpool import InProcessPool
    from agentrl.models import build_policy_model, build_tiny_model
    from agentrl.policies.hf import HFPolicy
    from agentrl.rollout.engine import RolloutEngine
    from agentrl.rollout.prompts import PromptBuilder
    from agentrl.run.checkpoint import seed_everything

    cfg = load_config(None, FULL + [f"policy.model={model_name}"])
    seed_everything(0)
    net, tok = build_policy_model(cfg)
    trajs = []
    pool = InProcessPool(cfg.env.id, cfg.env.kwargs, per_limit)
    try:
        for turns in range(4, 13):
            cfg.rollout.max_turns = turns
            pol = HFPolicy(net, tok, batch_size=per_limit)
            pol.seed(turns)
            eng = RolloutEngine(pol, pool, PromptBuilder(tok, cfg.rollout), cfg.rollout, cfg.env.id)
            trajs += eng.run([turns * 100 + i for i in range(per_limit)])
    finally:
        pool.close()
    models = {"rollout model": net}
    for name, hidden in sizes.items():
        models[name] = build_tiny_model(len(tok), hidden=hidden, layers=4, heads=8, seed=0,
                                        pad_token_id=tok.pad_token_id,
                                        eos_token_id=tok.eos_token_id)
    return trajs, tok, models


def learner_for(model: Any, pack: bool, by_length: bool, budget: int,
                varlen: bool = True) -> Any:
    """A learner on ``model``; without ``varlen`` on a copy that keeps sdpa attention, so
    packed rows are bins with a block-diagonal mask."""
    from agentrl.config import TrainConfig, load_config
    from agentrl.learn.learner import LocalLearner
    from agentrl.registry import get_algorithm

    if pack and not varlen:
        model = copy.deepcopy(model)
    acfg = load_config(None, ["algorithm.name=grpo"]).algorithm
    algo = get_algorithm("grpo")(acfg)
    algo.setup(model)
    learner = LocalLearner(model, TrainConfig(lr=1e-30, micro_batch_tokens=budget, pack=pack,
                                              sort_by_length=by_length, weight_decay=0.0),
                           1.0, algo)
    if pack and not varlen:
        model.config._attn_implementation = "sdpa"
        learner.varlen = False
    assert learner.varlen == (pack and varlen)
    return learner


def make(trajs: list[Any], tok: Any, learner: Any) -> Any:
    from agentrl.learn.batch import make_batch

    batch = make_batch(trajs, tok.pad_token_id)
    learner.algorithm.credit(batch)
    g = torch.Generator().manual_seed(0)  # no reward yet: arbitrary advantages, same each run
    batch.advantages = torch.randn(batch.loss_mask.shape, generator=g) * batch.loss_mask
    return batch


def exactness(model: Any, trajs: list[Any], tok: Any) -> tuple[float, float, float]:
    """Max |difference| packed vs padded: logprobs, loss, gradient (one micro-batch)."""
    out = []
    for pack in (False, True):
        m = type(model)(model.config)
        m.load_state_dict(model.state_dict())
        lrn = learner_for(m, pack, False, 10 ** 9)
        batch = make(trajs, tok, lrn)
        mb = batch.select(range(batch.num_rows))
        mb.agg_tokens = float(batch.loss_mask.sum())
        mb.agg_seqs, mb.agg_len = float(batch.num_rows), float(batch.input_ids.shape[1])
        o = lrn.forward(mb, need_entropy=True, pack_capacity=batch.input_ids.shape[1])
        loss = lrn.algorithm.loss(o, mb)["loss"]
        loss.backward()
        out.append((o.logprobs.detach(), loss.item(),
                    torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None])))
    (a, la, ga), (b, lb, gb) = out
    return float((a - b).abs().max()), abs(la - lb), float((ga - gb).abs().max())


def executed_tokens(learner: Any, batch: Any) -> int:
    """Tokens the model actually runs (padding and packing filler included)."""
    from agentrl.learn.forward import pack_rows

    lengths = batch.attention_mask.sum(-1).tolist()
    total = 0
    cap = batch.input_ids.shape[1]
    order = list(range(batch.num_rows))
    random.Random(0).shuffle(order)  # as `update` orders the rows with the same rng
    for mb in learner._micro_batches(batch, order):
        ls = [lengths[r] for r in mb]
        if learner.varlen:
            total += sum(ls)
        elif learner.pack:
            total += len(pack_rows(ls, cap)) * cap
        else:
            total += max(ls) * len(ls)
    return total


def bench_model(name: str, model: Any, trajs: list[Any], tok: Any, pairs: int, budget: int,
                flops_ceiling: float) -> dict[str, Any]:
    learners = {k: learner_for(model, p, s, budget, v) for k, (p, s, v) in MODES.items()}
    batches = {k: make(trajs, tok, lrn) for k, lrn in learners.items()}
    real = int(batches["padded"].attention_mask.sum())
    rows = batches["padded"].num_rows
    lengths = batches["padded"].attention_mask.sum(-1).float()

    def run(k: str) -> float:
        t0 = time.perf_counter()
        learners[k].update(batches[k], random.Random(0))
        return time.perf_counter() - t0

    for k in MODES:
        run(k)  # warm up
    secs = machine.alternate({k: (lambda k=k: run(k)) for k in MODES}, pairs)
    tps = {k: [real / s for s in v] for k, v in secs.items()}
    params = sum(p.numel() for p in model.parameters())
    print(f"[{name}] {params / 1e6:.2f}M parameters; batch: {rows} episodes of 4-12 turns, "
          f"{real} real tokens, lengths {int(lengths.min())}-{int(lengths.max())} "
          f"(mean {lengths.mean():.0f}); micro-batch budget {budget} tokens")
    for k in MODES:
        ex = executed_tokens(learners[k], batches[k])
        print(f"  {k:7s} {machine.median(tps[k]):8.0f} real tokens/s (runs: "
              + ", ".join(f"{x:.0f}" for x in tps[k])
              + f"); model runs {ex} tokens ({ex / real:.2f}x the real ones)")
    out = {}
    for k in ("sorted", "bins", "packed"):
        r = machine.paired_ratios(tps[k], tps["padded"])
        out[k] = r
        print(f"  {k} / padded tokens/s per round: {', '.join(f'{x:.2f}' for x in r)} -> "
              f"median {machine.median(r):.2f}x")
    flops = machine.train_flops(model, real, float(lengths.mean()))
    best = min(min(v) for v in secs.values())
    print(f"  roofline: {flops / 1e9:.1f} GFLOP (forward + backward of the real tokens) at "
          f"{flops_ceiling / 1e9:.0f} GFLOP/s -> {flops / flops_ceiling:.3f}s; fastest run "
          f"{best:.3f}s ({best / (flops / flops_ceiling):.1f}x the bound)")
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = machine.parser(__doc__)
    ap.add_argument("--per-limit", type=int, default=4, help="episodes per turn limit 4..12")
    ap.add_argument("--budget", type=int, default=16384, help="train.micro_batch_tokens")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    machine.header("training throughput: padded vs length-sorted vs binned vs packed micro-batches")
    lim = machine.limits()
    print(f"measured now: {lim['flops'] / 1e9:.1f} GFLOP/s fp32 matmul")
    trajs, tok, models = mixed_batch("tiny", a.per_limit, {"hidden 256 x 4 layers": 256})
    lp, loss, grad = exactness(models["rollout model"], trajs, tok)
    print(f"packed vs padded, one micro-batch: max |d logprob| {lp:.1e}, |d loss| {loss:.1e}, "
          f"max |d grad| {grad:.1e}")
    res = {name: bench_model(name, m, trajs, tok, a.pairs, a.budget, lim["flops"])
           for name, m in models.items()}
    print(machine.load_average())
    return res


if __name__ == "__main__":
    main()
