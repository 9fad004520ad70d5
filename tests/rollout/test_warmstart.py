"""Warm start: expert trajectories recorded through the rollout engine, supervised training on
their action tokens (algorithm ``sft``), exact resume, and the refusals."""

from __future__ import annotations

import json
import os
import random

import pytest
import torch

from agentrl.assemble import run_tokenizer
from agentrl.config import TrainConfig, load_config
from agentrl.learn.learner import LocalLearner
from agentrl.models import build_tiny_model
from agentrl.registry import ENVS, has_expert, load_builtin_envs, make_env, recommended_settings
from agentrl.rollout.collect import collect_expert, tokenizer_fingerprint
from agentrl.rollout.prompts import PromptBuilder
from agentrl.types import read_jsonl, write_jsonl

load_builtin_envs()
#: env id -> overrides that keep the episodes short and the data small
FAMILIES = {
    "agentrl/TextWorld-CoinCollector-v0": {"level": 3, "split": "train", "num_games": 2},
    "agentrl/ALFWorld-v0": {"num_games": 2},
    "agentrl/ScienceWorld-v0": {"task": "find-living-thing", "step_limit": 30},
    "agentrl/WebShop-v0": {"num_products": 300},
    "agentrl/ToolUse-v0": {"action_choices": True},
}


def _cfg(env_id: str, extra: list[str] = ()) -> object:
    kwargs = {**recommended_settings(env_id).get("env", {}).get("kwargs", {}),
              **FAMILIES[env_id]}
    return load_config(None, [f"env.id={env_id}", f"env.kwargs={json.dumps(kwargs)}",
                              "rollout.max_turns=30", *extra])


def test_every_env_family_with_an_expert_is_covered() -> None:
    have = {k for k, e in ENVS.items() if e.expert}
    assert have >= set(FAMILIES) - {"agentrl/TextWorld-CoinCollector-v0"}
    assert all(has_expert(k) for k in FAMILIES)
    assert not has_expert("agentrl/TicTacToe-v0")


@pytest.mark.parametrize("env_id", sorted(FAMILIES))
def test_expert_trajectories_reproduce_the_expert_and_retokenize_exactly(env_id, tiny_tok,
                                                                         request) -> None:
    if env_id == "agentrl/ScienceWorld-v0":
        request.applymarker(pytest.mark.java)
    cfg = _cfg(env_id)
    seeds = [0, 1]
    trajs = collect_expert(cfg, len(seeds), tiny_tok, progress=False)
    # the same expert played directly on the env, without the engine
    env = make_env(env_id, expert_actions=True, **cfg.env.kwargs)
    try:
        for seed, traj in zip(seeds, trajs):
            _, info = env.reset(seed=seed)
            actions, success = [], False
            for _ in range(cfg.rollout.max_turns):
                actions.append(info["expert_action"])
                _, _, term, trunc, info = env.step(actions[-1])
                if term or trunc:
                    success = bool(info.get("success"))
                    break
            assert traj.success and success, (env_id, seed, traj.termination)
            if env_id != "agentrl/ScienceWorld-v0":
                # (ScienceWorld draws some objects anew at each load, e.g. which animal
                # find-living-thing places, from the JVM's random state: same success, other
                # gold actions)
                assert [t.action for t in traj.turns] == actions
    finally:
        env.close()
    builder = PromptBuilder(tiny_tok, cfg.rollout)
    for traj in trajs:
        assert traj.extra["tokenizer"] == tokenizer_fingerprint(tiny_tok)
        for turn in traj.turns:
            # exactly the ids the run's prompt builder encodes this action as (EOS included)
            assert turn.action_ids == builder.candidates([turn.action])[0]
            assert tiny_tok.decode(turn.action_ids, skip_special_tokens=True).strip() == \
                turn.action
            assert turn.action_valid


@pytest.mark.parametrize("parser", ["hermes", "json"])
def test_tool_call_expert_replies_are_calls_that_parse_back_and_retokenize_exactly(
        parser, tiny_tok) -> None:
    from agentrl.rollout.toolcalls import call_to_action, get_tool_parser

    env_id = "agentrl/ToolUse-v0"
    kwargs = {"split": "train", "max_steps": 6, "instructions": False}
    cfg = load_config(None, [f"env.id={env_id}", f"env.kwargs={json.dumps(kwargs)}",
                             "rollout.action_format=tool_call", "rollout.constrained=false",
                             f"rollout.tool_parser={parser}", "rollout.max_turns=6"])
    seeds = list(range(6))  # both task types: searches, calculations, answers
    trajs = collect_expert(cfg, len(seeds), tiny_tok, progress=False)
    env = make_env(env_id, expert_actions=True, **kwargs)
    builder, reader = PromptBuilder(tiny_tok, cfg.rollout), get_tool_parser(parser)
    try:
        for seed, traj in zip(seeds, trajs):
            _, info = env.reset(seed=seed)
            actions = [info["expert_action"]]
            while True:
                _, _, term, trunc, info = env.step(actions[-1])
                if term or trunc:
                    break
                actions.append(info["expert_action"])
            assert traj.success and info["success"], (seed, traj.extra.get("error"))
            assert [t.action for t in traj.turns] == actions
            tools = traj.extra["tools"]
            for turn in traj.turns:
                text = tiny_tok.decode(turn.action_ids, skip_special_tokens=True)
                assert text == builder.reply_text(turn.action, tools) == turn.response
                assert call_to_action(reader.parse(text), tools) == (turn.action, None)
                # re-tokenising the reply gives the recorded ids (EOS closes it)
                assert turn.action_ids == tiny_tok.encode(text, add_special_tokens=False) + \
                    [tiny_tok.eos_token_id]
                assert turn.action_valid
        assert {t.task_type for t in trajs} == {"arithmetic", "multihop"}
        assert any(t.action.startswith("search[") for tr in trajs for t in tr.turns)
    finally:
        env.close()


def test_an_env_without_an_expert_is_refused_in_one_line() -> None:
    from agentrl.cli import main

    # the quickstart's config on a game with no expert: exit 2, nothing written
    assert main(["collect", "env.id=agentrl/TicTacToe-v0", "--episodes", "1", "--out",
                 os.devnull]) == 2


# ------------------------------------------------------------------------------- sft

SMALL = ["env.kwargs={level: 3, split: train, num_games: 2}", "env.train_seeds=2",
         "env.eval_kwargs={split: eval, num_games: 2}", "policy.tiny_corpus_episodes=4",
         "eval.episodes=2", "eval.before_training=false", "log.tensorboard=false",
         "log.progress=false", "train.checkpoint_every=1", "algorithm.name=sft",
         "algorithm.episodes_per_iteration=3", "rollout.groups=1", "rollout.group_size=2",
         "train.lr_schedule=constant"]


@pytest.fixture(scope="module")
def demos(tmp_path_factory) -> str:
    """Expert demos of the quickstart task under SMALL's tokenizer (built from the config)."""
    path = str(tmp_path_factory.mktemp("demos") / "coin.jsonl")
    cfg = load_config(None, SMALL + [f"algorithm.data=[{path}]"])
    write_jsonl(path, collect_expert(cfg, 4, run_tokenizer(cfg), progress=False))
    return path


def test_sft_loss_is_the_nll_of_the_action_tokens_alone(demos) -> None:
    from agentrl.registry import get_algorithm

    cfg = load_config(None, SMALL + [f"algorithm.data=[{demos}]"])
    trajs = read_jsonl(demos)
    algo = get_algorithm("sft")(cfg.algorithm)
    batch = algo.build_batch(trajs, 0)
    vocab = int(batch.input_ids.max()) + 1
    model = build_tiny_model(vocab, hidden=32, layers=1, heads=4, seed=0)
    learner = LocalLearner(model, TrainConfig(lr=1e-2, minibatches=1), 1.0, algo)
    batch.attach(learner.score(batch, algo.requires))
    algo.credit(batch)
    # by hand: -log softmax at each action token, under the recorded allowed ids, averaged
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    nll, n = 0.0, 0
    for r in range(batch.num_rows):
        for p in range(1, batch.input_ids.shape[1]):
            if batch.loss_mask[r, p] == 0:
                continue
            z = logits[r, p - 1].clone()
            allowed = batch.allowed.get(r, {}).get(p)
            if allowed is not None:
                keep = torch.full_like(z, float("-inf"))
                keep[allowed] = 0.0
                z = z + keep
            nll -= float(torch.log_softmax(z, -1)[batch.input_ids[r, p]])
            n += 1
    assert n == int(batch.loss_mask.sum()) and n > 0
    metrics = learner.update(batch, random.Random(0))
    assert metrics["train/nll"] == pytest.approx(nll / n, rel=1e-5)


def test_packed_and_padded_warm_start_steps_agree(demos) -> None:
    from agentrl.registry import get_algorithm

    trajs = read_jsonl(demos)
    params = []
    for pack in (True, False):
        cfg = load_config(None, SMALL + [f"algorithm.data=[{demos}]"])
        algo = get_algorithm("sft")(cfg.algorithm)
        batch = algo.build_batch(trajs, 0)
        model = build_tiny_model(int(batch.input_ids.max()) + 1, hidden=32, layers=2, heads=4,
                                 seed=1)
        learner = LocalLearner(model, TrainConfig(lr=1e-2, minibatches=2, pack=pack,
                                                  micro_batch_tokens=64), 1.0, algo)
        batch.attach(learner.score(batch, algo.requires))
        algo.credit(batch)
        learner.update(batch, random.Random(0))
        params.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert float((params[0] - params[1]).abs().max()) < 1e-6


def test_warm_start_resumes_exactly_and_refuses_other_tokenizers(demos, tmp_path) -> None:
    from safetensors.torch import load_file

    from agentrl.run import checkpoint
    from agentrl.trainer import Trainer

    def cfg(its: int, name: str, extra: tuple[str, ...] = ()):
        return load_config(None, SMALL + [f"algorithm.data=[{demos}]", f"output_dir={tmp_path}",
                                          f"train.iterations={its}", f"run_name={name}", *extra])

    full = Trainer(cfg(3, "full")).train()
    part = Trainer(cfg(2, "part")).train()
    Trainer(cfg(3, "part"), resume=True, run_dir=part["run_dir"]).train()
    a = load_file(os.path.join(checkpoint.latest(full["run_dir"]), "model", "model.safetensors"))
    b = load_file(os.path.join(checkpoint.latest(part["run_dir"]), "model", "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a warm-start iteration steps no env and generates nothing: the demos' recorded timings
    # are not reported as this run's
    with open(os.path.join(full["run_dir"], "metrics.jsonl"), encoding="utf-8") as f:
        its = [r for r in map(json.loads, f) if "perf/seconds_env" in r]
    assert len(its) == 3
    assert all(r["perf/seconds_env"] == r["perf/seconds_generate"] == 0.0 for r in its)
    # demos recorded under another tokenizer (another corpus) are refused, naming the fix
    with pytest.raises(ValueError, match="recorded with another tokenizer"):
        Trainer(cfg(1, "other", ("policy.tiny_corpus_seed=7",))).train()


def test_a_saved_tiny_tokenizer_is_shared_by_later_runs(tmp_path) -> None:
    from agentrl.models import build_policy_model

    path = str(tmp_path / "tok")
    cfg = load_config(None, SMALL + [f"policy.tiny_tokenizer={path}"])
    _, first = build_policy_model(cfg)  # trained on env text, saved
    assert os.path.exists(os.path.join(path, "tokenizer.json"))
    # another corpus seed would train another tokenizer; the saved one wins
    other = load_config(None, SMALL + [f"policy.tiny_tokenizer={path}",
                                       "policy.tiny_corpus_seed=9"])
    _, again = build_policy_model(other)
    assert tokenizer_fingerprint(again) == tokenizer_fingerprint(first)
    assert again.encode("go east") == first.encode("go east")
    # tokenizer files copied without chat_template.jinja still chat with the tiny template
    os.remove(os.path.join(path, "chat_template.jinja"))
    _, copied = build_policy_model(other)
    assert copied.chat_template == first.chat_template


def test_held_out_demos_are_never_trained_and_their_nll_is_logged(demos) -> None:
    from agentrl.registry import get_algorithm

    cfg = load_config(None, SMALL + [f"algorithm.data=[{demos}]", "algorithm.val_demos=1",
                                     "algorithm.episodes_per_iteration=6"])
    trajs = read_jsonl(demos)
    algo = get_algorithm("sft")(cfg.algorithm)
    model = build_tiny_model(int(algo.build_batch(trajs, 0).input_ids.max()) + 1, hidden=32,
                             layers=1, heads=4, seed=0)
    algo.setup(model)
    learner = LocalLearner(model, TrainConfig(lr=1e-2, minibatches=1), 1.0, algo)
    tok = run_tokenizer(cfg)

    class Engine:  # what SFT.collect reads of the engine
        policy = type("P", (), {"tokenizer": tok})

    episodes = algo.collect(Engine(), [], [])
    held = trajs[-1].trajectory_id
    assert [t.trajectory_id for t in algo.val] == [held]
    assert held not in {t.trajectory_id for t in episodes} and len(episodes) == 6
    # the logged value is the held-out episode's NLL under the learner's own scoring pass
    alone = algo.build_batch(algo.val, 0)
    scores = learner.score(alone, {"old_logprobs"})
    expected = -float(scores.logprobs[alone.loss_mask > 0].mean())
    batch = algo.build_batch(episodes, 0)
    batch.attach(learner.score(batch, algo.requires))
    assert algo.credit(batch)["val_nll"] == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="leaves nothing to train on"):
        get_algorithm("sft")(load_config(None, SMALL + [f"algorithm.data=[{demos}]",
                                                        "algorithm.val_demos=4"]).algorithm
                             ).collect(Engine(), [], [])
