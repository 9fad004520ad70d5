"""One scoring pass per iteration: count the model's forward calls in a real training iteration
of every algorithm.

Outside rollout collection, the policy model may run: at most one no-grad pass over the
batch's rows (the learner's scoring pass, which also gives the mismatch metric), plus the
update's passes with gradient (epochs x rows); the frozen reference runs one no-grad pass over
the rows when the KL term is on, and never otherwise.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from agentrl.config import load_config
from agentrl.learn.learner import MISMATCH_ROWS
from agentrl.trainer import Trainer

BASE = ["env.id=test/Corridor-v0", "env.kwargs={length: 3}", "env.eval_kwargs={}",
        "env.train_seeds=4", "rollout.groups=2", "rollout.group_size=3", "rollout.max_turns=4",
        "policy.tiny_corpus_episodes=2", "policy.tiny_hidden=32", "policy.tiny_layers=1",
        "train.iterations=1", "train.minibatches=2", "train.epochs=2",
        "train.micro_batch_tokens=200", "eval.episodes=1", "eval.every=0",
        "eval.before_training=false", "log.tensorboard=false", "log.progress=false",
        "log.trajectories_every=0", "train.checkpoint_every=0"]

CASES = {
    "ppo": ["algorithm.name=ppo"],
    "epo_ppo": ["algorithm.name=epo", "algorithm.base=ppo"],
    "epo_grpo": ["algorithm.name=epo", "algorithm.base=grpo"],
    "empg": ["algorithm.name=empg"],
    "aepo": ["algorithm.name=aepo"],
    "spear": ["algorithm.name=spear"],
    "gigpo": ["algorithm.name=gigpo"],
    "grpo": ["algorithm.name=grpo"],
    "grpo_kl": ["algorithm.name=grpo", "algorithm.kl_coef=0.05"],
    "ppo_kl_tis": ["algorithm.name=ppo", "algorithm.kl_coef=0.05", "train.tis_cap=2.0"],
}


def _decoder(model: torch.nn.Module) -> torch.nn.Module:
    return model.model


@pytest.mark.parametrize("case", sorted(CASES))
def test_one_scoring_pass_per_iteration(tmp_path, case: str) -> None:
    cfg = load_config(None, BASE + CASES[case] + [f"output_dir={tmp_path}", f"run_name={case}"])
    tr = Trainer(cfg)
    calls: list[tuple[str, bool, int]] = []  # (model, grad enabled, rows)
    state: dict[str, Any] = {"collecting": False, "rows": None}

    def hook(name: str):  # noqa: ANN202
        def record(_mod, args, kwargs, _out):  # noqa: ANN001, ANN202
            if not state["collecting"]:  # generation during rollout is not the learner's
                ids = kwargs.get("input_ids", args[0] if args else None)
                cu = kwargs.get("cu_seq_lens_q")  # a varlen row holds several sequences
                seqs = int(ids.shape[0]) if cu is None else cu.numel() - 1
                calls.append((name, torch.is_grad_enabled(), seqs))
        return record

    handles = [_decoder(tr.model).register_forward_hook(hook("policy"), with_kwargs=True)]
    if tr.learner.reference is not None:
        handles.append(_decoder(tr.learner.reference).register_forward_hook(
            hook("reference"), with_kwargs=True))
    collect, update = tr.algorithm.collect, tr.learner.update

    def counting_collect(*a, **k):  # noqa: ANN002, ANN003, ANN202
        state["collecting"] = True
        try:
            return collect(*a, **k)
        finally:
            state["collecting"] = False

    def counting_update(batch, rng):  # noqa: ANN001, ANN202
        state["rows"] = batch.num_rows
        return update(batch, rng)

    tr.algorithm.collect, tr.learner.update = counting_collect, counting_update
    try:
        m = tr.train_iteration()
    finally:
        for h in handles:
            h.remove()
        tr.close()
    n = state["rows"]
    assert n, f"{case}: the iteration trained on nothing"

    def rows(model: str, grad: bool) -> int:
        return sum(r for name, g, r in calls if name == model and g == grad)

    scoring = rows("policy", False)
    kl = "algorithm.kl_coef=0.05" in CASES[case]
    assert 0 < scoring <= n, f"{case}: {scoring} rows scored without grad for {n} rows"
    assert rows("policy", True) == cfg.train.epochs * n
    assert rows("reference", False) == (n if kl else 0)
    assert rows("reference", True) == 0
    # every forward is one micro-batch: the scoring pass never re-scores a row
    assert all(r <= n for _, _, r in calls)
    assert "train/logprob_mismatch" in m  # the scoring pass gave the mismatch metric
    # a full pass only when something needs every row; else a sample for the mismatch metric
    needs_full = bool(tr.algorithm.requires - {"ref_logprobs"}) or cfg.train.tis_cap > 0
    assert scoring == (n if needs_full else min(n, MISMATCH_ROWS)), (case, scoring, n)
