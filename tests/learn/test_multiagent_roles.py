"""One trained policy per role (``multiagent.policies=per_role``): one LoRA adapter per role on
one frozen base. An update on a role's rows moves that role's adapter alone; each role generates
with its own adapter; a per-role run on tic-tac-toe trains both adapters, checkpoints every one
and resumes exactly; `agentrl eval` plays each role with its own model; the config refuses
what cannot work."""

from __future__ import annotations

import os
import random
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from agentrl.config import ConfigError, TrainConfig, load_config
from agentrl.learn.learner import LocalLearner
from agentrl.learn.roles import RoleAdapters, RoleLearner
from agentrl.models import build_tiny_model
from agentrl.models.lora import LoraSettings, adapter_names, apply_lora, use_adapter
from agentrl.policies.base import SamplingParams
from agentrl.policies.hf import HFPolicy
from agentrl.registry import get_algorithm
from agentrl.rollout.lineup import env_roles
from agentrl.run import checkpoint
from agentrl.testing.distributed import VOCAB, make_trajectories
from agentrl.trainer import Trainer

ROLES = ["player_1", "player_2"]
CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs",
                      "tictactoe_per_role.yaml")


def _role_model(seed: int = 0) -> torch.nn.Module:
    """A tiny model with one adapter per role, each with its own nonzero B (so the roles'
    policies differ from the start)."""
    base = build_tiny_model(VOCAB, hidden=32, layers=2, heads=4, seed=seed)
    torch.manual_seed(seed)  # the adapters' A init: two calls build the same model
    model = apply_lora(base, LoraSettings(r=4, alpha=8, target_modules=["q_proj", "v_proj",
                                                                         "down_proj"]), ROLES)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def _learner(model: torch.nn.Module, kl: float = 0.1) -> tuple[LocalLearner, Any]:
    cls = get_algorithm("grpo")
    algo = cls(cls.Config(name="grpo", kl_coef=kl))
    algo.setup(model)
    return LocalLearner(model, TrainConfig(lr=1e-2, minibatches=2), 1.0, algo,
                        response_budget=10.0), algo


def _trajectories(roles: list[str]) -> list[Any]:
    """The synthetic trajectories, the k-th given role ``roles[k % len(roles)]`` and a group
    per (group, role), as the multi-agent engine records them."""
    trajs = make_trajectories()
    for k, t in enumerate(trajs):
        t.role = roles[k % len(roles)]
        t.group_id = f"{t.group_id}/{t.role}"
    return trajs


def _adapter_params(model: torch.nn.Module, role: str) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()
            if ".lora_" in n and f".{role}." in n}


def test_every_adapter_is_in_the_optimizer() -> None:
    model = _role_model()
    assert adapter_names(model) == ROLES
    learner, _ = _learner(model)
    in_opt = {id(p) for g in learner.optimizer.param_groups for p in g["params"]}
    for role in ROLES:
        params = [p for n, p in model.named_parameters() if f".lora_A.{role}." in n]
        assert params and all(id(p) in in_opt for p in params), role
    assert not any(id(p) in in_opt for n, p in model.named_parameters() if ".lora_" not in n)


def test_an_update_on_one_roles_rows_moves_only_its_adapter() -> None:
    model = _role_model()
    learner, algo = _learner(model)
    roles = RoleAdapters(model, ROLES)
    batch = algo.build_batch(_trajectories(["player_2"]), 0)
    batch.attach(roles.score(learner, batch, algo.requires))
    algo.credit(batch)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    m = roles.update(learner, batch, random.Random(0))
    for n, p in model.named_parameters():
        changed = not torch.equal(before[n], p.detach())
        assert changed == (".lora_" in n and ".player_2." in n), n
    assert "train/player_2/loss" in m and "train/player_1/loss" not in m
    assert learner.scheduler.last_epoch == 1


def test_a_mixed_batch_trains_each_adapter_on_its_own_rows_alone() -> None:
    """Both roles in one batch: adapter r ends exactly where an update on role r's
    trajectories alone takes it; the LR schedule steps once."""
    model, twin = _role_model(), _role_model()
    learner, algo = _learner(model)
    roles = RoleAdapters(model, ROLES)
    trajs = _trajectories(ROLES)
    batch = algo.build_batch(trajs, 0)
    batch.attach(roles.score(learner, batch, algo.requires))
    algo.credit(batch)
    m = roles.update(learner, batch, random.Random(0))
    assert learner.scheduler.last_epoch == 1  # one schedule step for the iteration
    assert {"train/player_1/loss", "train/player_2/loss", "train/loss", "train/lr"} <= set(m)
    # player_1 goes first in the update, so it sees the same rng as an update on its rows alone
    alone_learner, alone_algo = _learner(twin)
    alone_roles = RoleAdapters(twin, ROLES)
    alone = alone_algo.build_batch([t for t in trajs if t.role == "player_1"], 0)
    alone.attach(alone_roles.score(alone_learner, alone, alone_algo.requires))
    alone_algo.credit(alone)
    alone_roles.update(alone_learner, alone, random.Random(0))
    mixed, solo = _adapter_params(model, "player_1"), _adapter_params(twin, "player_1")
    assert mixed.keys() == solo.keys()
    for n in mixed:
        assert torch.allclose(mixed[n], solo[n], atol=1e-6), n
    # and player_2's adapter moved in the mixed update but not in the solo one
    assert any(not torch.equal(a, b) for a, b in zip(
        _adapter_params(model, "player_2").values(), _adapter_params(twin, "player_2").values()))


def test_scoring_uses_each_rows_role_adapter() -> None:
    model = _role_model()
    learner, algo = _learner(model)
    batch = algo.build_batch(_trajectories(ROLES), 0)
    scores = RoleAdapters(model, ROLES).score(learner, batch, {"old_logprobs", "ref_logprobs"})
    assert bool(scores.rows.all())
    mask = batch.loss_mask > 0
    by_role = {}
    for role in ROLES:
        with use_adapter(model, role):
            by_role[role] = learner.score(batch, {"old_logprobs"}).logprobs
    row_role = [batch.trajectories[t].role for t in batch.row_traj.tolist()]
    for i, role in enumerate(row_role):
        other = ROLES[1 - ROLES.index(role)]
        m = mask[i]
        assert torch.allclose(scores.logprobs[i][m], by_role[role][i][m], atol=1e-6)
        assert float((scores.logprobs[i][m] - by_role[other][i][m]).abs().max()) > 1e-3
    # the KL reference is the base: no adapter
    assert scores.ref_logprobs is not None
    assert float((scores.ref_logprobs - scores.logprobs)[mask].abs().max()) > 1e-3


def test_each_role_generates_with_its_own_adapter() -> None:
    model = _role_model().eval()
    tok = SimpleNamespace(eos_token_id=1, pad_token_id=0)
    policy = HFPolicy(model, tok, reuse_kv=True)
    views = RoleAdapters(model, ROLES).policies(policy)
    prompt = [5, 9, 17, 3, 22, 8]
    sp = SamplingParams(max_new_tokens=4, greedy=True)

    def own_forward(role: str, ids: list[int], reply: list[int]) -> torch.Tensor:
        with torch.no_grad(), use_adapter(model, role):
            logits = model(input_ids=torch.tensor([ids + reply[:-1]])).logits[0]
        lp = torch.log_softmax(logits[len(ids) - 1:].float(), -1)
        return lp.gather(-1, torch.tensor(reply)[:, None]).squeeze(-1)

    gens = {}
    for role in ROLES:
        g = views[role].generate([prompt], sp)[0]
        assert torch.allclose(torch.tensor(g.logprobs), own_forward(role, prompt, g.token_ids),
                              atol=1e-5), role
        gens[role] = g
        assert model.peft_wrapper.active_adapter == "player_1"  # the one active before
    # the roles' distributions differ on the same prompt
    lp1 = own_forward("player_1", prompt, gens["player_2"].token_ids)
    assert float((lp1 - torch.tensor(gens["player_2"].logprobs)).abs().max()) > 1e-3
    # a later, longer prompt of player_2 never reuses keys/values player_1's adapter computed
    longer = prompt + gens["player_1"].token_ids + [7, 11]
    views["player_1"].generate([prompt], sp)
    g = views["player_2"].generate([longer], sp)[0]
    assert torch.allclose(torch.tensor(g.logprobs), own_forward("player_2", longer, g.token_ids),
                          atol=1e-5)


TINY = ["policy.tiny_hidden=32", "policy.tiny_layers=1", "policy.tiny_heads=2",
        "policy.tiny_corpus_episodes=30", "policy.tiny_vocab=400", "rollout.groups=3",
        "rollout.group_size=2", "train.checkpoint_every=1", "train.keep_checkpoints=5",
        "eval.episodes=6", "eval.every=0", "eval.before_training=false", "log.progress=false",
        "log.trajectories_every=1", "log.tensorboard=false", "policy.lora={r: 4, alpha: 8}",
        "train.lr=1e-2", "train.lr_schedule=constant", "train.warmup_iterations=4",
        "algorithm.kl_coef=0.05"]


def _cfg(root: str, name: str, iterations: int, *extra: str) -> Any:
    return load_config(CONFIG, TINY + [f"output_dir={root}", f"run_name={name}",
                                       f"train.iterations={iterations}", *extra])


def _files(cp: str) -> dict[str, dict[str, torch.Tensor]]:
    out = {}
    for rel in ["model/model.safetensors"] + [
            f"{d}/{r}/{f}" for r in ROLES for d, f in (("adapter", "adapter_model.safetensors"),
                                                       ("roles", "model/model.safetensors"))]:
        out[rel] = load_file(os.path.join(cp, rel))
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = str(tmp_path_factory.mktemp("roles"))
    full = Trainer(_cfg(root, "full", 3)).train()
    part = Trainer(_cfg(root, "part", 2)).train()
    Trainer(_cfg(root, "part", 3), resume=True, run_dir=part["run_dir"]).train()
    return {"root": root, "full": full["run_dir"], "part": part["run_dir"]}


def test_per_role_run_resumes_exactly(runs: dict[str, Any]) -> None:
    a = _files(checkpoint.latest(runs["full"]))
    b = _files(checkpoint.latest(runs["part"]))
    assert checkpoint.checkpoint_iteration(checkpoint.latest(runs["part"])) == 3
    for rel in a:
        assert a[rel].keys() == b[rel].keys(), rel
        assert all(torch.equal(a[rel][k], b[rel][k]) for k in a[rel]), rel


def test_both_adapters_train_and_each_role_has_its_model(runs: dict[str, Any]) -> None:
    cp = checkpoint.latest(runs["full"])
    f = _files(cp)
    for role in ROLES:  # B starts at zero: a nonzero B is training
        ad = f[f"adapter/{role}/adapter_model.safetensors"]
        bs = [v for k, v in ad.items() if "lora_B" in k]
        assert bs and any(float(v.abs().max()) > 0 for v in bs), role
    one, two = (f[f"roles/{r}/model/model.safetensors"] for r in ROLES)
    merged = f["model/model.safetensors"]
    assert all(torch.equal(merged[k], one[k]) for k in merged)  # model/ = the first role's
    assert any(not torch.equal(one[k], two[k]) for k in one)  # not a sum, not the same
    base = load_file(os.path.join(runs["full"], "base_model", "model.safetensors"))
    assert any(not torch.equal(base[k], two[k]) for k in base)
    # roles/<role>/model is the base with that role's adapter (PEFT's own loading agrees)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = torch.randint(5, 100, (2, 9))
    for role in ROLES:
        merged_model = AutoModelForCausalLM.from_pretrained(os.path.join(cp, "roles", role,
                                                                         "model"))
        adapted = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(os.path.join(runs["full"], "base_model")),
            os.path.join(cp, "adapter", role))
        with torch.no_grad():
            diff = (merged_model(input_ids=ids).logits - adapted(input_ids=ids).logits).abs()
        assert float(diff.max()) < 1e-4, role
    rows = [r for r in _metrics(runs["full"]) if "train/loss" in r]
    assert len(rows) == 3
    assert all({"train/player_1/loss", "train/player_2/loss"} <= set(r) for r in rows)
    # warmup over 4 iterations, one schedule step per iteration (the rate after the step)
    assert [r["train/lr"] for r in rows] == pytest.approx([1e-2 * k / 4 for k in (2, 3, 4)])
    # the learner scores each row exactly as the sampler drew it, after the adapters parted
    assert all(r["train/logprob_mismatch_max"] < 1e-4 for r in rows)


def _metrics(run: str) -> list[dict[str, Any]]:
    import json

    return [json.loads(x) for x in open(os.path.join(run, "metrics.jsonl"))]


def test_rollouts_sample_each_role_with_its_adapter(runs: dict[str, Any]) -> None:
    """Rollouts of trained, parted adapters: every row's sampler logprobs are its own role's
    adapter's, and far from the other role's."""
    tr = Trainer(_cfg(runs["root"], "part", 4), resume=True, run_dir=runs["part"])
    try:
        assert isinstance(tr.learner, RoleLearner) and tr.learner.adapters.roles == ROLES
        batch = tr.algorithm.build_batch(tr._collect(), 0)
        assert set(tr.learner.adapters.rows(batch)) == set(ROLES)
        mask = batch.loss_mask > 0
        own = tr.learner.score(batch, {"old_logprobs"}).logprobs
        assert float((own - batch.sampler_logprobs)[mask].abs().max()) < 1e-4
        swapped = RoleAdapters(tr.model, ROLES)
        swapped.adapters = {"player_1": "player_2", "player_2": "player_1"}
        other = swapped.score(tr.learner.inner, batch, {"old_logprobs"}).logprobs
        assert float((other - batch.sampler_logprobs)[mask].abs().max()) > 1e-3
    finally:
        tr.close()


def test_eval_plays_each_role_with_its_own_model(runs: dict[str, Any], tmp_path) -> None:
    from agentrl.evaluate import EvalSettings, resolve_target, run_eval_command
    from agentrl.evaluate.command import _role_policies

    cp = checkpoint.latest(runs["full"])
    target = resolve_target(cp)
    policies = _role_policies(target, "cpu", "agentrl/TicTacToe-v0", {"opponent": "random"})
    assert sorted(policies) == ROLES
    for role, p in policies.items():
        saved = load_file(os.path.join(cp, "roles", role, "model", "model.safetensors"))
        sd = p.model.state_dict()
        assert all(torch.equal(sd[k], saved[k]) for k in saved), role
    results = run_eval_command([cp], settings=EvalSettings(seeds=list(range(6)), greedy=True),
                               opponents=["random"], out=str(tmp_path), progress=False)
    g = results[0][1]["games"]["all"]
    assert g["n"] == 6 and g["wins"] + g["draws"] + g["losses"] == 6


def test_env_roles_are_the_games_agents() -> None:
    assert env_roles("agentrl/TicTacToe-v0", {}) == ROLES
    assert env_roles("agentrl/TicTacToe-v0", {"opponent": "random"}) == ROLES


@pytest.mark.parametrize("override,match", [
    ("policy.lora=null", r"set policy.lora"),
    ("train.max_staleness=1", r"set train.max_staleness=0"),
    ("train.strategy=ddp", r"set train.strategy=single"),
    ("multiagent.opponent=league", r"multiagent.opponent=self"),
    ("policy.backend=vllm", r"set policy.backend=hf"),
])
def test_per_role_refuses_what_cannot_work(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(CONFIG, [override])
    load_config(CONFIG)  # the example config itself is valid


def test_per_role_needs_a_multi_agent_env() -> None:
    with pytest.raises(ConfigError, match=r"needs a multi-agent env"):
        load_config(None, ["multiagent.policies=per_role", "policy.lora={r: 4}"])


def test_a_per_role_checkpoint_as_opponent_plays_each_seat_with_its_role_model(
        runs: dict[str, Any]) -> None:
    from agentrl.assemble import load_player
    from agentrl.envpool import InProcessPool
    from agentrl.rollout.lineup import Versus
    from agentrl.rollout.multiagent import MultiAgentRolloutEngine
    from agentrl.run.checkpoint import player_path

    cfg = _cfg(runs["root"], "opp", 1)
    cp = checkpoint.latest(runs["full"])
    player = load_player(player_path(runs["full"]), cfg, "frozen")
    assert sorted(player.roles) == ROLES
    for role, p in player.roles.items():  # each seat's backend holds its own role's model
        saved = load_file(os.path.join(cp, "roles", role, "model", "model.safetensors"))
        sd = p.model.state_dict()
        assert all(torch.equal(sd[k], saved[k]) for k in saved), role
    me = load_player(os.path.join(cp, "roles", "player_1", "model"), cfg, "me")
    assert me.roles == {}  # a plain model directory: one backend for every seat
    pool = InProcessPool(cfg.env.id, cfg.env.kwargs, 4)
    engine = MultiAgentRolloutEngine(me.policy, pool, me.builder, cfg.rollout, cfg.env.id,
                                     Versus([player], seed=0))
    try:
        _, live = engine._start([0, 0, 1, 1], ["g0"] * 2 + ["g1"] * 2)
        seated = [ep for ep in live.values() if engine._seats.get(ep.key) is player]
        assert {ep.agent for ep in seated} == set(ROLES)  # the seats rotate within a group
        for ep in live.values():
            want = player.roles[ep.agent] if ep in seated else me.policy
            assert engine._player(ep)[0] is want
        trajs = engine.run([0, 0, 1, 1], ["g0"] * 2 + ["g1"] * 2)
        assert {t.role for t in trajs if t.player == "frozen"} == set(ROLES)
        assert all(t.termination in ("success", "failure", "truncated") for t in trajs)
    finally:
        pool.close()
        player.close()
        me.close()
