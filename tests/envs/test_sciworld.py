"""ScienceWorld env: the real simulator (needs Java; the project's machines have Java 17)."""

from __future__ import annotations

import time

import pytest
import scienceworld  # noqa: E402, F401  (a missing extra fails here: pip install -e '.[all]')

from agentrl.envs.sciworld_env import (  # noqa: E402
    JAVA_HELP,
    ScienceWorldEnv,
    find_java,
    sanitize_action,
    task_names,
)
from agentrl.testing import NASTY_ACTIONS  # noqa: E402

pytestmark = pytest.mark.java

# Twelve tasks whose gold paths replay in about a second each: the default run shows score 100
# on them; the slow run covers the other 18 (all 30 pass).
FAST_GOLD_TASKS = ["find-animal", "find-living-thing", "find-non-living-thing",
                   "identify-life-stages-1", "identify-life-stages-2", "lifespan-longest-lived",
                   "lifespan-longest-lived-then-shortest-lived", "lifespan-shortest-lived",
                   "measure-melting-point-unknown-substance", "power-component",
                   "test-conductivity", "use-thermometer"]


@pytest.fixture(scope="module")
def env() -> ScienceWorldEnv:
    """One JVM shared by the module's tests (each costs ~0.7 GB and ~1.5 s to start)."""
    e = ScienceWorldEnv(task=None, split="train", step_limit=300)
    yield e
    e.close()


def play_gold(env: ScienceWorldEnv, task: str, seed: int = 0) -> tuple[float, dict, int]:
    """Replay the simulator's gold path of ``task``; returns (return + initial score / 100,
    final info, steps): with score-delta rewards that is the final score / 100."""
    obs, info = env.reset(seed=seed, options={"task": task, "gold_path": True})
    gold = info["walkthrough"]
    initial = info["score"] / 100 if env.reward_mode == "score" else 0.0
    assert gold and not gold[0].startswith("ERROR"), gold[:1]
    ret, steps = 0.0, 0
    for a in gold:
        obs, r, term, trunc, info = env.step(a)
        ret, steps = ret + r, steps + 1
        if term or trunc:
            break
    return ret + initial, info, steps


def test_there_are_30_tasks() -> None:
    names = task_names()
    assert len(names) == 30 and "boil" in names and "use-thermometer" in names


@pytest.mark.parametrize("task", FAST_GOLD_TASKS)
def test_gold_path_reaches_score_100(env: ScienceWorldEnv, task: str) -> None:
    ret, info, _ = play_gold(env, task)
    assert info["score"] == 100.0 and info["success"] is True
    assert info["task_type"] == task
    assert ret == pytest.approx(1.0)  # score deltas / 100 sum to the final score / 100


@pytest.mark.slow
@pytest.mark.parametrize("task", [t for t in task_names() if t not in FAST_GOLD_TASKS])
def test_gold_path_other_tasks(env: ScienceWorldEnv, task: str) -> None:
    ret, info, steps = play_gold(env, task)
    assert info["score"] == 100.0 and info["success"] is True, (task, steps, info["score"])
    assert ret == pytest.approx(1.0)


def test_envs_share_one_jvm_with_independent_worlds(env: ScienceWorldEnv) -> None:
    """Two envs of a process use one JVM; interleaved play equals each env playing alone."""
    other = ScienceWorldEnv(task="boil")
    try:
        _, ia = env.reset(seed=0, options={"task": "lifespan-longest-lived", "gold_path": True})
        _, ib = other.reset(seed=0, options={"task": "power-component", "gold_path": True})
        assert other._jvm is env._jvm and other.server is not env.server
        ga, gb = ia["walkthrough"], ib["walkthrough"]
        mixed_a, mixed_b = [], []
        for k in range(max(len(ga), len(gb))):
            if k < len(ga):
                mixed_a.append(env.step(ga[k])[:4])
            if k < len(gb):
                mixed_b.append(other.step(gb[k])[:4])
        env.reset(seed=0, options={"task": "lifespan-longest-lived"})
        assert [env.step(a)[:4] for a in ga] == mixed_a
        assert mixed_a[-1][2] and mixed_b[-1][2] and other._score == 100
    finally:
        other.close()
    assert env._jvm is not None and env._jvm.alive  # still used by `env`
    env.reset(seed=0, options={"task": "find-living-thing"})
    assert env.step("look around")[4]["action_valid"] is True


def test_reset_is_deterministic_and_uses_the_split(env: ScienceWorldEnv) -> None:
    n = len(env.tasks)
    obs1, info1 = env.reset(seed=3)
    obs2, info2 = env.reset(seed=3)
    assert obs1 == obs2 and info1 == info2
    assert info1["task_type"] == env.tasks[3] and obs1.startswith("Task Description:")
    # seed // n_tasks walks through the task's training variations
    _, info = env.reset(seed=3 + 5 * n)
    assert info["task_type"] == env.tasks[3]
    assert info["variation"] == env.variations(env.tasks[3], "train")[5]
    train, dev, test = (set(env.variations("boil", s)) for s in ("train", "dev", "test"))
    assert train and dev and test and not (train & dev or train & test or dev & test)


def test_any_action_string_is_a_step_and_the_simulator_survives(env: ScienceWorldEnv) -> None:
    env.reset(seed=0, options={"task": "find-living-thing"})
    for a in (*NASTY_ACTIONS, "open door to nowhere", "\x00" * 10_000, "look around\x00\x1b[2J"):
        obs, r, term, trunc, info = env.step(a)
        assert isinstance(obs, str) and r == 0.0 and not term
        if a.strip() in ("", "<action></action>", "go north; rm -rf /") or len(a) > 1000:
            assert info["action_valid"] is False, a[:40]
    obs, _, _, _, info = env.step("look around")
    assert info["action_valid"] is True and "This room is called" in obs


def test_sanitize_action() -> None:
    assert sanitize_action("  look\taround\n", 300) == "look around"
    assert sanitize_action("look\x00around\u202e", 300) == "look around"
    assert sanitize_action("x" * 301, 300) is None
    assert sanitize_action("\x00\x01", 300) is None


def test_ambiguous_request_waits_for_a_number(env: ScienceWorldEnv) -> None:
    _, info0 = env.reset(seed=0, options={"task": "boil", "variation": 0})
    obs, _, _, _, info = env.step("open door")  # four doors in the hallway
    assert obs.startswith("Ambiguous request") and info["action_valid"] is True
    assert info["state_key"] != info0["state_key"]  # the pending choice is part of the state
    obs, _, _, _, info = env.step("0")
    assert not obs.startswith(("Ambiguous", "No known")) and info["action_valid"] is True


def test_failure_ends_the_episode(env: ScienceWorldEnv) -> None:
    env.reset(seed=0, options={"task": "boil", "variation": 0})
    obs, r, term, trunc, info = env.step("focus on picture")  # boil asks to focus on water
    assert term and not trunc and info["success"] is False and info["score"] < 0
    assert r == 0.0  # the score is clipped at 0 for the reward
    assert env.step("look around")[2] is True  # stays over until reset


def test_success_reward_mode_and_valid_actions(env: ScienceWorldEnv) -> None:
    env.reward_mode = "success"
    try:
        ret, info, _ = play_gold(env, "lifespan-longest-lived")
    finally:
        env.reward_mode = "score"
    assert ret == 10.0 and info["success"] is True
    env.valid_actions = True
    try:
        _, info = env.reset(seed=0, options={"task": "find-living-thing"})
        adm = info["admissible_actions"]
        assert len(adm) > 10 and adm == sorted(set(adm)) and "look around" in adm
        _, _, _, _, info = env.step("look around")
        assert info["action_valid"] and "admissible_actions" in info
    finally:
        env.valid_actions = False
    _, info = env.reset(seed=0)
    assert "admissible_actions" not in info  # only when asked: the query costs ~10 steps


def test_state_key_is_history_free(env: ScienceWorldEnv) -> None:
    # Two different routes to the same place and inventory give the same key.
    _, info = env.reset(seed=0, options={"task": "find-living-thing", "variation": 0})
    _, _, _, _, a = env.step("look around")
    env.reset(seed=0, options={"task": "find-living-thing", "variation": 0})
    env.step("inventory")
    _, _, _, _, b = env.step("look around")
    assert a["state_key"] == b["state_key"] == info["state_key"]
    _, _, _, _, c = env.step("teleport to kitchen")
    assert c["state_key"] != a["state_key"]


def test_test_split_step_limit_heap_cap_and_close() -> None:
    # One extra JVM for everything a separately configured env must show.
    e = ScienceWorldEnv(task="boil", split="test", step_limit=3, max_heap="640m")
    try:
        test_vars = set(e.variations("boil", "test"))
        seen = {e.reset(seed=s)[1]["variation"] for s in range(3)}
        assert seen <= test_vars and len(seen) == 3
        outs = [e.step("look around") for _ in range(3)]
        assert [o[3] for o in outs] == [False, False, True] and not outs[-1][2]
        assert outs[-1][4]["success"] is False
        proc = e._jvm.proc
        with open(f"/proc/{proc.pid}/cmdline", "rb") as f:
            assert b"-Xmx640m" in f.read().split(b"\x00")
    finally:
        e.close()
    deadline = time.time() + 10
    while proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert proc.poll() is not None and e._jvm is None


def test_a_dead_jvm_fails_the_step_and_the_next_reset_restarts_it() -> None:
    e = ScienceWorldEnv(task="lifespan-longest-lived", max_heap="600m")  # a JVM of its own
    try:
        e.reset(seed=0)
        old = e._jvm.proc
        old.kill()
        old.wait(timeout=10)
        with pytest.raises(RuntimeError, match="JVM exited"):
            e.step("look around")
        obs, info = e.reset(seed=0)
        assert e._jvm.proc.pid != old.pid and obs.startswith("Task Description:")
        assert e.step("look around")[4]["action_valid"] is True
    finally:
        e.close()


def test_missing_java_names_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "nojdk"))
    with pytest.raises(RuntimeError, match="openjdk-17-jre-headless") as err:
        find_java()
    assert JAVA_HELP in str(err.value)
    with pytest.raises(RuntimeError, match="JAVA_HOME"):
        ScienceWorldEnv(task="boil", shared_jvm=False).reset(seed=0)


def test_unknown_task_and_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown ScienceWorld task"):
        ScienceWorldEnv(task="boil-an-egg")
    with pytest.raises(ValueError, match="split"):
        ScienceWorldEnv(split="validation")


@pytest.mark.parametrize("worker,lines", [(None, 1), ("0", 1), ("1", 0)])
def test_jvm_starts_are_announced_once_per_pool(worker: str | None, lines: int, monkeypatch,
                                                capsys) -> None:
    # In an env pool's workers only worker 0 says that JVMs are starting (one line, not one
    # per worker); a process outside a pool says it for its own JVM.
    import py4j.java_gateway

    from agentrl.envs import sciworld_env

    def no_jvm(**kw):
        raise RuntimeError("not started in this test")

    monkeypatch.setattr(py4j.java_gateway, "launch_gateway", no_jvm)
    if worker is None:
        monkeypatch.delenv("AGENTRL_WORKER", raising=False)
    else:
        monkeypatch.setenv("AGENTRL_WORKER", worker)
    with pytest.raises(RuntimeError, match="could not start the ScienceWorld JVM"):
        sciworld_env._JVM("1g")
    said = [ln for ln in capsys.readouterr().err.splitlines() if "ScienceWorld JVM" in ln]
    assert len(said) == lines
