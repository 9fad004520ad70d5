"""The paths a new user takes off the quickstart: every env trains out of the box, every
mistake ends in one line that names the fix (exit status 2), slow phases show progress, and
Ctrl-C says what was kept. One test (or more) per problem found by trying them as a newcomer.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

import agentrl
from agentrl.cli import main
from agentrl.config import ConfigError, load_config
from agentrl.envs.base import TextEnv
from agentrl.registry import ENVS, recommended_settings

# A short run: no evaluation before, a 2-episode one after, nothing written but metrics.
QUIET = ["log.tensorboard=false", "log.progress=false", "log.trajectories_every=0",
         "eval.before_training=false", "eval.every=0", "eval.episodes=2",
         "train.checkpoint_every=0", "policy.tiny_hidden=32"]


def _one_line_error(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("[agentrl]")]
    assert len(lines) == 1, f"expected one error line, got: {err!r}"
    return lines[0]


# ---------------------------------------------------------------- 1. runs that cannot learn

def test_constrained_decoding_on_an_env_without_admissible_actions_is_refused(
        tmp_path: Any, capsys: Any) -> None:
    rc = main(["train", "env.id=agentrl/ToolUse-v0", "env.kwargs={}", "rollout.constrained=true",
               f"output_dir={tmp_path}", *QUIET])
    line = _one_line_error(capsys.readouterr().err)
    assert rc == 2
    assert "lists none" in line and "rollout.constrained=false" in line


def test_constrained_decoding_on_template_actions_is_refused(tmp_path: Any, capsys: Any) -> None:
    # WebShop's own search page offers `search[<query>]`: a constrained policy could only type
    # that literal (the run: entropy 0, grad norm 0, identical returns, no alarm).
    rc = main(["train", "env.id=agentrl/WebShop-v0", "env.kwargs={num_products: 300}",
               "rollout.constrained=true", f"output_dir={tmp_path}", *QUIET])
    line = _one_line_error(capsys.readouterr().err)
    assert rc == 2
    assert "'search[<query>]'" in line and "rollout.constrained=false" in line
    assert "concrete_search" in line  # the env's own way out, from its recommended settings


def test_alarms_fire_on_a_zero_gradient_and_on_lost_episodes() -> None:
    from agentrl.config import AlarmConfig
    from agentrl.run.alarms import alarm_metrics, firing_alarms

    cfg = AlarmConfig()
    fired = firing_alarms({"train/grad_norm": 0.0, "rollout/termination/env_error": 0.2,
                           "rollout/termination/env_timeout": 0.1}, cfg)
    assert set(fired) == {"zero_grad_norm", "lost_episodes"}
    assert "30%" in fired["lost_episodes"]
    assert firing_alarms({"train/grad_norm": 0.3, "rollout/termination/env_error": 0.1}, cfg) == {}
    # every episode lost: no update at all, still an alarm
    assert alarm_metrics({"train/skipped": 1.0}, cfg)["alarm/lost_episodes"] == 1.0


# ---------------------------------------------------------------- 5. alarms for every algorithm

def _algorithms() -> list[str]:
    """The algorithms that learn from rewards (imitation has no reward alarms to raise)."""
    import agentrl.algorithms  # noqa: F401
    from agentrl.registry import ALGORITHMS

    return sorted(n for n, cls in ALGORITHMS.items() if cls.learns_from_rewards)


@pytest.mark.parametrize("algo", _algorithms())
def test_identical_returns_raise_the_alarms_for_every_algorithm(algo: str, tmp_path: Any) -> None:
    """A corridor of 50 rooms walked for 3 turns: nobody wins, every return is the same, so no
    group has a learning signal; every algorithm logs it and the alarm fires (GiGPO, the
    quickstart's algorithm, used to log nothing: "None fired" on a dead run)."""
    from agentrl.trainer import Trainer

    cfg = load_config(None, ["env.id=test/Corridor-v0", "env.kwargs={length: 50}",
                             "rollout.groups=2", "rollout.group_size=2", "rollout.max_turns=3",
                             f"algorithm.name={algo}", "train.iterations=1",
                             "policy.tiny_corpus_episodes=2", f"output_dir={tmp_path}", *QUIET])
    out = Trainer(cfg).train()
    row = [json.loads(r) for r in open(os.path.join(out["run_dir"], "metrics.jsonl"))][0]
    assert row["algo/zero_variance_groups"] == 1.0
    assert row["alarm/zero_variance_groups"] == 1.0
    # Whether the update was empty depends on the algorithm (a critic or an entropy term still
    # moves the weights); the alarm says so exactly when it was.
    assert row["alarm/zero_grad_norm"] == float(row["train/grad_norm"] < 1e-12)
    if algo == "grpo":
        assert row["train/grad_norm"] == 0.0


# ---------------------------------------------------------------- 2. switching env.id

def test_switching_env_id_starts_from_that_envs_recommended_settings() -> None:
    cfg = load_config(None, ["env.id=agentrl/WebShop-v0"])
    rec = recommended_settings("agentrl/WebShop-v0")
    assert cfg.env.kwargs == rec["env"]["kwargs"]  # not the quickstart's TextWorld `level`
    assert cfg.env.eval_kwargs == rec["env"]["eval_kwargs"]
    assert cfg.env.train_seeds == 100_000  # the quickstart's 100 games are gone too
    assert cfg.rollout.max_new_tokens == rec["rollout"]["max_new_tokens"]
    quick = load_config(None, [])  # the algorithm and budget stay the quickstart's
    assert cfg.algorithm.name == quick.algorithm.name
    assert cfg.train.iterations == quick.train.iterations
    # explicit overrides win over the recommended settings
    cfg = load_config(None, ["env.id=agentrl/WebShop-v0", "env.kwargs.num_products=300",
                             "rollout.max_turns=3"])
    assert cfg.env.kwargs["num_products"] == 300 and cfg.env.kwargs["concrete_search"] is True
    assert cfg.rollout.max_turns == 3
    # a config file that names its env is used as written
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    paper = load_config(os.path.join(here, "configs", "webshop_gigpo_qwen2.5-7b.yaml"))
    assert paper.rollout.constrained is False and paper.env.kwargs == {"split": "train"}


def test_env_kwargs_the_env_does_not_take_are_refused_before_any_env_is_built(
        tmp_path: Any, capsys: Any, monkeypatch: Any) -> None:
    import agentrl.envs.webshop.env as webshop

    def never(*a: Any, **k: Any) -> None:
        raise AssertionError("the env was built before its kwargs were checked")

    monkeypatch.setattr(webshop, "get_store", never)
    rc = main(["train", "env.id=agentrl/WebShop-v0", "env.kwargs.level=3",
               f"output_dir={tmp_path}", *QUIET])
    line = _one_line_error(capsys.readouterr().err)
    assert rc == 2
    assert "WebShopEnv does not take 'level'" in line and "env.kwargs" in line


# ---------------------------------------------------------------- 3. unknown env.id

def test_unknown_env_id_is_a_config_error_with_a_suggestion(tmp_path: Any, capsys: Any) -> None:
    rc = main(["train", "env.id=agentrl/WebShp-v0", f"output_dir={tmp_path}"])
    line = _one_line_error(capsys.readouterr().err)
    assert rc == 2
    assert "did you mean 'agentrl/WebShop-v0'" in line
    with pytest.raises(ConfigError, match="did you mean"):
        load_config(None, ["env.id=agentrl/TextWorld-CoinColector-v0"])


# ---------------------------------------------------------------- 4. ALFWorld, process pool

def _read_until(proc: subprocess.Popen, pred: Any, timeout: float) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if pred(lines[-1]):
            return lines
    raise AssertionError(f"no matching line within {timeout} s; got {lines}")


def test_alfworld_process_pool_reports_progress_first_and_ctrl_c_says_what_was_kept(
        tmp_path: Any) -> None:
    env = {**os.environ, "AGENTRL_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1",
           "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentrl.cli", "train", "env.id=agentrl/ALFWorld-v0",
         "env.pool=process", "env.kwargs.num_games=12", f"output_dir={tmp_path}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        # A test run started in the background inherits an ignored SIGINT; a terminal's is not.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        lines = _read_until(proc, lambda ln: "/12 games" in ln or "1/12" in ln, 600)
        # The first thing a user sees is where the run goes; then what is slow and how slow.
        assert lines[0].startswith("[agentrl] run directory: "), lines
        gen = next(ln for ln in lines if "generating 12 ALFWorld games (train)" in ln)
        assert "about" in gen  # a time estimate up front
        assert not any("\r" in ln for ln in lines)  # plain lines on a pipe, no redrawn bar
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    last = rest.strip().splitlines()[-1]
    assert last.startswith("agentrl: interrupted while generating 12 ALFWorld games (train)"), last
    assert "kept: the finished games in" in last


# ---------------------------------------------------------------- 6. eval / resume mistakes

def test_eval_of_a_missing_run_is_one_line_not_a_hub_lookup(tmp_path: Any, capsys: Any,
                                                            monkeypatch: Any) -> None:
    import agentrl.models

    def no_hub(*a: Any, **k: Any) -> None:
        raise AssertionError("a local path was looked up on the hub")

    monkeypatch.setattr(agentrl.models, "load_pretrained", no_hub)
    monkeypatch.chdir(tmp_path)
    os.makedirs("runs/quickstart")
    rc = main(["eval", "runs/nonexist"])
    line = _one_line_error(capsys.readouterr().err)
    assert rc == 2
    assert "runs/nonexist: no such checkpoint, run directory or model directory" in line
    assert "quickstart" in line  # what is there instead


def test_resume_of_a_missing_run_names_the_run(tmp_path: Any, capsys: Any) -> None:
    rc = main(["train", "--resume", str(tmp_path / "nonexist")])
    line = _one_line_error(capsys.readouterr().err)
    assert rc == 2 and "nonexist: no such run directory" in line


def test_resume_of_a_folder_that_is_not_a_run_refuses(tmp_path: Any, capsys: Any) -> None:
    run = tmp_path / "r"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"iteration": 1}\n')
    rc = main(["train", "--resume", str(run)])
    line = _one_line_error(capsys.readouterr().err)
    assert rc == 2 and "not a run directory of agentrl train" in line
    assert (run / "metrics.jsonl").read_text() == '{"iteration": 1}\n'  # nothing restarted


def test_ctrl_c_during_training_names_the_iteration_and_the_checkpoint_kept(
        tmp_path: Any, capsys: Any, monkeypatch: Any) -> None:
    from agentrl.trainer import Trainer

    calls = {"n": 0}
    real = Trainer.train_iteration

    def stop_at_third(self: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(Trainer, "train_iteration", stop_at_third)
    rc = main(["train", "env.id=test/Corridor-v0", "rollout.groups=1", "rollout.group_size=2",
               "train.iterations=5", "policy.tiny_corpus_episodes=2", f"output_dir={tmp_path}",
               *[q for q in QUIET if not q.startswith("train.checkpoint")],
               "train.checkpoint_every=1"])
    assert rc == 130
    last = capsys.readouterr().err.strip().splitlines()[-1]
    run = os.path.join(str(tmp_path), "quickstart")
    assert last == (f"agentrl: interrupted at iteration 2 of 5 in {run}; kept: checkpoint step_2 "
                    f"(continue with: agentrl train --resume {run})")


# ---------------------------------------------------------------- 7. game generation

def test_game_generation_announces_a_time_estimate_and_leaves_no_partial_files(
        tmp_path: Any, monkeypatch: Any, capsys: Any) -> None:
    from agentrl.envs import textworld_env as tw

    monkeypatch.setenv("AGENTRL_CACHE", str(tmp_path))
    paths = tw.ensure_games("treasure_hunter", 1, [0, 1], workers=1)
    err = capsys.readouterr().err
    assert "generating 2 TextWorld treasure_hunter games (level 1)" in err and "about" in err
    root = os.path.dirname(paths[0])
    # A generation killed outright (SIGKILL) leaves its temporary files; the next generation in
    # that folder removes them under the lock.
    stale = os.path.join(root, "game_2.tmp999999.z8")
    open(stale, "w").close()
    tw.ensure_games("treasure_hunter", 1, [2], workers=1, progress=False)
    assert sorted(f for f in os.listdir(root) if not f.startswith(".")) == [
        f"game_{i}.{e}" for i in range(3) for e in ("json", "z8")]


def test_ctrl_c_during_a_game_compile_leaves_no_partial_files(tmp_path: Any,
                                                               monkeypatch: Any) -> None:
    import textworld.generator

    from agentrl.envs import textworld_env as tw

    monkeypatch.setenv("AGENTRL_CACHE", str(tmp_path))

    def interrupted_compile(game: Any, opts: Any) -> None:
        with open(opts.path, "w") as f:  # the half-written story file
            f.write("partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(textworld.generator, "compile_game", interrupted_compile)
    with pytest.raises(KeyboardInterrupt):
        tw.ensure_games("treasure_hunter", 1, [5], workers=1, progress=False)
    root = os.path.dirname(tw._game_path("treasure_hunter", 1, 5))
    assert [f for f in os.listdir(root) if not f.startswith(".")] == []


def test_only_the_eval_games_an_evaluation_plays_are_generated(tmp_path: Any,
                                                               monkeypatch: Any) -> None:
    from agentrl.envs import textworld_env as tw
    from agentrl.trainer import Trainer

    monkeypatch.setenv("AGENTRL_CACHE", str(tmp_path / "cache"))
    cfg = load_config(None, ["env.id=agentrl/TextWorld-TreasureHunter-v0",
                             "env.kwargs={level: 1, split: train, num_games: 2}",
                             "env.eval_kwargs={split: eval, num_games: 50}", "env.train_seeds=2",
                             "rollout.groups=1", "rollout.group_size=2",
                             "policy.tiny_corpus_episodes=2", f"output_dir={tmp_path}",
                             *QUIET])
    tr = Trainer(cfg)
    try:
        tr.run_eval("before")
    finally:
        tr.close()
    root = os.path.dirname(tw._game_path("treasure_hunter", 1, 0))
    games = sorted(f for f in os.listdir(root) if f.endswith(".z8"))
    assert games == ["game_0.z8", "game_1.z8", "game_100000.z8", "game_100001.z8"]


# ---------------------------------------------------------------- 8. a fast first run

def test_the_quickstart_games_ship_with_the_package_and_match_the_generator(
        tmp_path: Any, monkeypatch: Any) -> None:
    import tarfile

    from agentrl.envs import textworld_env as tw

    cfg = load_config(None)
    kw, ekw = cfg.env.kwargs, {**cfg.env.kwargs, **cfg.env.eval_kwargs}
    archive = tw.packaged_archive("coin_collector", kw["level"])
    assert archive is not None and os.path.getsize(archive) < 10e6
    with tarfile.open(archive, "r:xz") as tar:
        names = set(tar.getnames())
    want = [i for i in range(kw["num_games"])] + [
        tw.EVAL_SEED_OFFSET + i for i in range(ekw["num_games"])]
    assert names == {f"game_{s}.{e}" for s in want for e in ("z8", "json")}

    # A cold cache is filled from the archive: no game is compiled.
    monkeypatch.setenv("AGENTRL_CACHE", str(tmp_path / "cold"))
    monkeypatch.setattr(tw, "_generate_one", lambda job: pytest.fail(f"generated {job}"))
    tw.ensure_games("coin_collector", kw["level"], want)
    packaged = open(tw._game_path("coin_collector", kw["level"], 7), "rb").read()
    monkeypatch.undo()
    # ... and the archive holds exactly what the generator makes (story file bytes).
    monkeypatch.setenv("AGENTRL_CACHE", str(tmp_path / "fresh"))
    monkeypatch.setattr(tw, "packaged_archive", lambda family, level: None)
    path = tw.ensure_games("coin_collector", kw["level"], [7], workers=1, progress=False)[0]
    fresh = open(path, "rb").read()
    # Inform 7 stamps the compile date (YYMMDD) into the Z-machine header's serial number,
    # bytes 0x12-0x17; the game itself (everything the checksum covers, from 0x40) is identical.
    def undated(story: bytes) -> bytes:
        assert story[0x12:0x18].isdigit(), story[0x12:0x18]
        return story[:0x12] + story[0x18:]

    assert undated(fresh) == undated(packaged)


# ---------------------------------------------------------------- 9. smaller things

def test_help_summary_names_every_command(capsys: Any) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    summary = out.split("\n\n")[1].replace("-\n", "-")  # the description under the usage
    for cmd in ("train", "launch", "eval", "report", "envs", "algorithms", "check-env", "play"):
        assert cmd in summary, (cmd, summary)


class Shop(TextEnv):
    """One step: any action buys, scoring 0.667 (like a partial WebShop purchase)."""

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[str, dict]:
        super().reset(seed=seed)
        return "A shop.", {"task_type": "shop", "admissible_actions": ["buy"]}

    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        return "Bought.", 0.0, True, False, {"success": False, "action_valid": True,
                                             "task_type": "shop", "score": 0.667}


agentrl.register_env("test/Shop-v0", entry_point=Shop, description="one purchase",
                     max_episode_steps=3)


def test_play_ends_with_the_score(capsys: Any, monkeypatch: Any) -> None:
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO("buy\n"))
    assert main(["play", "test/Shop-v0"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == (
        "episode over: success=False return=0.00 score=0.667")


def test_check_env_says_when_an_env_passes(capsys: Any) -> None:
    from agentrl.testing import check_env

    check_env(agentrl.make_env("test/Corridor-v0"))
    assert "check_env: test/Corridor-v0 passes" in capsys.readouterr().out


def test_readme_custom_env_trains_after_switching_from_the_quickstart(tmp_path: Any) -> None:
    """The README's Echo env, trained by the embedded quickstart with only env.id changed."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    readme = open(os.path.join(here, "README.md"), encoding="utf-8").read()
    block = readme.split("## Register your own environment", 1)[1].split("```python", 1)[1]
    code = block.split("```", 1)[0].replace('"my/Echo-v0"', '"readme/Echo-v0"')
    ns: dict[str, Any] = {"__name__": "readme_echo"}
    exec(compile(code, "README.md", "exec"), ns)  # noqa: S102 (the README's own example)
    from agentrl.trainer import Trainer

    cfg = load_config(None, ["env.id=readme/Echo-v0", "rollout.groups=1", "rollout.group_size=2",
                             "train.iterations=1", "policy.tiny_corpus_episodes=2",
                             f"output_dir={tmp_path}", *QUIET])
    assert cfg.env.kwargs == {} and cfg.env.eval_kwargs == {}
    out = Trainer(cfg).train()
    assert out["final"]["episodes"] == 2
    assert "env.kwargs" in block.split("```", 1)[1]  # the note on the kwargs of another env


def test_piped_output_has_no_redrawn_progress_bars(tmp_path: Any) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c",
         "import sys; sys.path.insert(0, 'tests'); import conftest; from agentrl.cli import main; "
         "sys.exit(main(sys.argv[1:]))", "train", "env.id=test/Corridor-v0",
         "rollout.groups=1", "rollout.group_size=2", "train.iterations=2",
         "policy.tiny_corpus_episodes=2", "log.progress=true", f"output_dir={tmp_path}",
         *[q for q in QUIET if not q.startswith("log.progress")]],
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "\r" not in proc.stdout + proc.stderr
    assert "[it    2/2]" in proc.stdout


def test_report_x_axes_are_whole_iterations(tmp_path: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from agentrl.run.report import _save

    fig, ax = plt.subplots()
    ax.plot([1, 2, 3], [0.1, 0.4, 0.2])
    ax.set(xlabel="iteration")
    _save(plt, fig, str(tmp_path / "x.png"))
    ticks = [t for t in ax.get_xticks() if 1 <= t <= 3]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks


# ---------------------------------------------------------------- every env trains out of the box

# Small groups, two iterations, no evaluation worth the name: a loop and signal check.
SWEEP = ["train.iterations=2", "rollout.groups=4", "rollout.group_size=4", "eval.episodes=1",
         *QUIET]
# Per family: fewer generated games than a real run (generating 100 takes minutes); for
# ALFWorld's slow engine fewer random episodes of text for the tokenizer; for ToolUse, whose
# only reward is a right answer, and WebShop, whose untrained policy rarely scores, bigger groups.
SMALLER = {"TextWorld": ["env.kwargs.num_games=4", "env.train_seeds=4"],
           "ALFWorld": ["env.kwargs.num_games=6", "env.eval_kwargs.num_games=1",
                        "env.train_seeds=6", "policy.tiny_corpus_episodes=8",
                        "rollout.groups=3"],
           "ScienceWorld": ["rollout.groups=3"],
           "ToolUse": ["rollout.group_size=8"], "WebShop": ["rollout.group_size=8"]}


def _builtin_ids() -> list[Any]:
    agentrl.registry.load_builtin_envs()
    ids = sorted(k for k in ENVS if k.startswith("agentrl/"))
    marks = {"agentrl/ScienceWorld-v0": [pytest.mark.java]}
    return [pytest.param(i, marks=marks.get(i, []), id=i.split("/")[1]) for i in ids]


@pytest.mark.parametrize("env_id", _builtin_ids())
def test_every_registered_env_trains_with_a_live_learning_signal(env_id: str,
                                                                 tmp_path: Any) -> None:
    """``agentrl train env.id=X`` (the quickstart with only the env switched, small groups):
    every update has a non-zero gradient and no episode is lost to the env."""
    from agentrl.trainer import Trainer

    small = next((v for k, v in SMALLER.items() if k in env_id), [])
    cfg = load_config(None, [f"env.id={env_id}", f"output_dir={tmp_path}", *SWEEP, *small])
    out = Trainer(cfg).train()
    rows = [json.loads(r) for r in open(os.path.join(out["run_dir"], "metrics.jsonl"))]
    train_rows = [r for r in rows if "train/grad_norm" in r]
    assert len(train_rows) == 2
    for r in train_rows:
        assert r["train/grad_norm"] > 0, r
        assert not any(k.startswith("rollout/termination/env_") for k in r), r
        # the recommended max_new_tokens fits every admissible action (none cut off)
        assert r["rollout/response_length_hit_rate"] == 0.0


# ---------------------------------------------------------------- scale-out paths fail fast

def _no_slow_set_up(monkeypatch: Any) -> None:
    import agentrl.trainer as T

    def never(*a: Any, **k: Any) -> None:
        raise AssertionError("slow set-up ran before the check")

    monkeypatch.setattr(T, "assemble", never)


def test_vllm_backend_without_vllm_is_one_line_before_any_set_up(
        tmp_path: Any, capsys: Any, monkeypatch: Any) -> None:
    import agentrl.policies.vllm as vllm_backend

    monkeypatch.setattr(vllm_backend, "_IMPORT_ERROR", ImportError("no vllm", name="vllm"))
    _no_slow_set_up(monkeypatch)
    rc = main(["train", "policy.backend=vllm", f"output_dir={tmp_path}", *QUIET])
    line = _one_line_error(capsys.readouterr().err)
    assert rc == 2 and "policy.backend=vllm needs vLLM" in line


@pytest.mark.parametrize("how", ["offline", "unreachable"])
def test_a_hub_model_without_network_is_one_line_in_seconds(
        how: str, tmp_path: Any, capsys: Any, monkeypatch: Any) -> None:
    import huggingface_hub.constants as hub

    if how == "offline":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:  # a hub that refuses connections at once, as a machine without network
        monkeypatch.setattr(hub, "ENDPOINT", "http://127.0.0.1:9")
    _no_slow_set_up(monkeypatch)
    t0 = time.monotonic()
    rc = main(["train", "policy.model=agentrl-test/not-cached-anywhere",
               f"output_dir={tmp_path}", *QUIET])
    line = _one_line_error(capsys.readouterr().err)
    assert rc == 2 and time.monotonic() - t0 < 20
    assert "policy.model=agentrl-test/not-cached-anywhere: not a local directory" in line
    assert ("HF_HUB_OFFLINE is set" if how == "offline" else "cannot be reached") in line


def test_evaluation_inside_training_shows_progress_on_a_terminal(
        tmp_path: Any, monkeypatch: Any) -> None:
    import io

    from agentrl.trainer import Trainer

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    cfg = load_config(None, ["env.id=test/Corridor-v0", "env.kwargs={length: 2}",
                             "rollout.constrained=true", "rollout.max_new_tokens=4",
                             "rollout.groups=1", "rollout.group_size=2", "eval.episodes=3",
                             "policy.tiny_corpus_episodes=2", "log.tensorboard=false",
                             f"output_dir={tmp_path}"])
    tr = Trainer(cfg)
    try:
        term = Terminal()
        monkeypatch.setattr(sys, "stderr", term)
        tr.run_eval("before")
    finally:
        tr.close()
    assert "eval (before): " in term.getvalue()  # the bar, drawn while the episodes ran
