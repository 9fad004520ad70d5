"""The learner under torchrun (gloo, CPU): the update does not depend on the number of ranks.

One ``torchrun --nproc_per_node=2`` launch runs every case of `agentrl.testing.distributed`:
the same batch (three groups; rank 0 holds one group of short turns, rank 1 two groups of long
turns, so ranks differ in tokens, rows and micro-batches) goes through DDP and FSDP2 for GRPO,
PPO (separate critic: its gradients are all-reduced outside DDP/FSDP), EMPG (batch-global
entropy statistics) and GRPO with LoRA adapters and a KL term against the adapters-off base
(frozen and trainable weights in the same FSDP2 group), in each loss aggregation mode. Loss and every gradient must equal the
one-process update of the whole batch within 1e-5, and so must the optimizer state a
checkpoint holds (gathered from FSDP's shards).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from agentrl.testing.distributed import AGG_MODES, STRATEGIES, reference

ALGOS = ("grpo", "ppo", "empg", "grpo+lora")  # the last: PEFT adapters, KL to adapters-off


def torchrun(args: list[str], timeout: float = 600, nproc: int = 2,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``torchrun --standalone --nproc_per_node=nproc ARGS`` on the CPU with one thread
    per rank; fails the test with the ranks' output when it exits non-zero."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
                **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={nproc}", *args], env=full_env, text=True,
                          capture_output=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"torchrun {' '.join(args)} exited {proc.returncode}:\n"
                    f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("dist") / "results.pt"
    torchrun(["-m", "agentrl.testing.distributed", str(out), ",".join(ALGOS),
              ",".join(STRATEGIES)])
    return {**torch.load(out, weights_only=False), "dir": out.parent}


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("agg", AGG_MODES)
def test_two_ranks_give_the_one_process_update(two_rank_results: dict, algo: str,
                                               agg: str) -> None:
    ref_loss, ref_grads = reference(algo, agg)
    assert sum(float(g.norm()) for g in ref_grads.values()) > 0  # a gradient to compare
    for strategy in STRATEGIES:
        loss, grads = two_rank_results[(strategy, algo, agg)]
        assert abs(loss - ref_loss) < 1e-5, (strategy, loss, ref_loss)
        assert set(grads) == set(ref_grads), strategy
        for name, g in ref_grads.items():
            diff = float((grads[name] - g).abs().max())
            assert diff < 1e-5, (strategy, name, diff)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_optimizer_state_resumes_across_rank_counts(two_rank_results: dict, strategy: str) -> None:
    # Written by 2 ranks == written by 1 process (the exp_avg.* entries above); here the other
    # way: a one-process optimizer state loaded into 2 ranks (FSDP: cut into shards) and
    # written out again is unchanged.
    rt = two_rank_results[(strategy, "roundtrip")]
    assert rt["saved"].keys() == rt["loaded"].keys() and rt["saved"]
    for k, st in rt["saved"].items():
        for name, v in st.items():
            assert torch.equal(rt["loaded"][k][name], v), (strategy, k, name)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_sharded_checkpoint_of_two_ranks_loads_in_one_process(two_rank_results: dict,
                                                              strategy: str) -> None:
    from agentrl.testing.distributed import load_sharded_single

    gathered = two_rank_results[(strategy, "sharded")]
    path = two_rank_results["dir"] / f"dcp-{strategy}"
    assert sorted(p.name for p in path.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    state, _ = load_sharded_single(str(path))
    assert state.keys() == gathered.keys() and gathered
    for k, st in gathered.items():
        for name, v in st.items():
            assert torch.equal(state[k][name], v), (strategy, k, name)


def test_strategy_and_launch_must_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    from agentrl.learn.distributed import init_distributed

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ValueError, match="torchrun --nproc_per_node"):
        init_distributed("fsdp")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ValueError, match="train.strategy=ddp"):
        init_distributed("single")


QUICK = ["train.iterations=1", "rollout.groups=2", "rollout.group_size=3", "rollout.max_turns=4",
         "policy.tiny_corpus_episodes=20", "eval.episodes=4", "eval.before_training=false",
         "train.checkpoint_every=1", "log.progress=false", "log.tensorboard=false",
         "log.trajectories_every=1"]


@pytest.mark.slow  # ~1 min each: three launches, each training a tokenizer and a tiny model
@pytest.mark.parametrize("fmt", ["full", "sharded"])
def test_train_under_torchrun_resumes_across_rank_counts(tmp_path, fmt: str) -> None:
    """`torchrun -m agentrl train` with FSDP2 on 2 ranks writes one run (rank 0 alone), whose
    checkpoint resumes in one process; that one resumes on 2 ranks under DDP. ``sharded``:
    the optimizer state is in torch.distributed.checkpoint shards, resharded on load."""
    from agentrl.run import checkpoint
    from agentrl.types import read_json_lines

    run = tmp_path / "run"
    common = [f"output_dir={tmp_path}", "run_name=run", f"train.checkpoint_format={fmt}",
              *QUICK]
    torchrun(["-m", "agentrl", "train", "train.strategy=fsdp", *common])
    st = checkpoint.load_state(str(run / "checkpoints" / "step_1"))
    assert len(st["rank_rng"]) == 2  # every rank's RNG states
    assert st["rank_rng"][0]["trainer_rng"] != st["rank_rng"][1]["trainer_rng"]
    if fmt == "sharded":
        assert "optimizer" not in st
        shards = sorted(p.name for p in (run / "checkpoints" / "step_1" / "sharded").iterdir())
        assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    else:
        exp_avg = next(iter(st["optimizer"]["state"].values()))["exp_avg"]
        assert type(exp_avg) is torch.Tensor  # gathered, not a shard
    subprocess.run([sys.executable, "-m", "agentrl", "train", "--resume", str(run),
                    "train.iterations=2", "train.strategy=single"], check=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True)
    torchrun(["-m", "agentrl", "train", "--resume", str(run), "train.iterations=3",
              "train.strategy=ddp"])
    rows = [r for r in read_json_lines(str(run / "metrics.jsonl")) if "rollout/success_rate" in r]
    assert [r["iteration"] for r in rows] == [1, 2, 3]  # one row per iteration: rank 0 logs
    assert sorted(os.listdir(run / "trajectories")) == [f"iter_0000{i}.jsonl" for i in (1, 2, 3)]
    assert checkpoint.checkpoint_iteration(checkpoint.latest(str(run))) == 3


def test_ddp_without_torchrun_is_one_line_before_any_work(monkeypatch, tmp_path, capsys) -> None:
    from agentrl.cli import main

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    rc = main(["train", "train.strategy=ddp", f"output_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert err.startswith("agentrl: train.strategy=ddp runs under torchrun: ")
    assert not os.listdir(tmp_path)  # nothing was written


def test_on_resume_rank_0_alone_cuts_the_run_back(monkeypatch, tmp_path) -> None:
    # Every rank resumes the same run directory; ranks other than 0 must not rewrite its files
    # (they raced on metrics.jsonl.tmp) and all wait at a barrier until rank 0 has.
    import agentrl.trainer as T
    from agentrl.config import load_config

    cfg = load_config(None, [f"output_dir={tmp_path}", "run_name=r"])

    class Stop(Exception):
        pass

    def stop(*a, **k):
        raise Stop

    for rank in (0, 1):
        calls: list[str] = []
        monkeypatch.setattr(T, "init_distributed", lambda *a: None)
        monkeypatch.setattr(T.C, "rank", lambda r=rank: r)
        monkeypatch.setattr(T.C, "broadcast", lambda x, src=0: x)
        monkeypatch.setattr(T.C, "barrier", lambda c=calls: c.append("barrier"))
        monkeypatch.setattr(T.checkpoint, "latest", lambda run: "cp/step_3")
        monkeypatch.setattr(T.Trainer, "_open_checkpoint", staticmethod(lambda path: {}))
        monkeypatch.setattr(T.Trainer, "_prepare_run_dir", lambda self: None)
        monkeypatch.setattr(T.checkpoint, "checkpoint_iteration", lambda p: 3)
        monkeypatch.setattr(T.checkpoint, "discard_after",
                            lambda run, it, c=calls: c.append(f"discard_after {it}"))
        monkeypatch.setattr(T, "assemble", stop)
        with pytest.raises(Stop):
            T.Trainer(cfg, resume=True, run_dir=str(tmp_path / "r"))
        assert calls == (["discard_after 3", "barrier"] if rank == 0 else ["barrier"])


@pytest.mark.slow  # ~30 s: one 2-rank launch training a tokenizer and a tiny model
def test_preemption_under_torchrun_exits_75_on_every_rank(tmp_path) -> None:
    # Every rank gets SIGTERM at the end of its first iteration, as a scheduler's preemption
    # forwarded by torchrun: each writes its part of the checkpoint and stops; rank 0 names
    # the agentrl launch command that resumes the run. (Plain torchrun itself then reports the
    # ranks' exit codes and exits 1: its own convention; tests/run/test_launch.py has the
    # launcher that exits 75.)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "AGENTRL_FAULT": "iteration_end:term"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", "-m", "agentrl", "train", "train.strategy=ddp",
                           f"output_dir={tmp_path}", "run_name=run", *QUICK,
                           "train.iterations=3"], env=env, text=True, capture_output=True,
                          timeout=600)
    out = proc.stdout + proc.stderr
    # (torchrun ends the other rank once the first exits, so its summary may list one)
    assert "exitcode  : 75" in out, out[-3000:]
    run = tmp_path / "run"
    assert (f"Continue with: agentrl launch --standalone --nproc_per_node=2 train --resume {run} "
            in out)
    assert "rank 1 stopped by SIGTERM after iteration 1" in out
    frames = [ln for ln in out.splitlines() if ln.strip().startswith('File "')]
    import agentrl

    pkg = os.path.dirname(agentrl.__file__)
    assert not [f for f in frames if pkg in f], out[-3000:]  # no traceback from agentrl
    assert (run / "checkpoints" / "step_1").is_dir()
