"""ScienceWorld (Wang et al., EMNLP 2022) as an agentrl env: the real simulator, all 30 tasks.

The simulator is the Scala jar shipped in the ``scienceworld`` wheel, driven over py4j. One JVM
(heap capped, ``max_heap``) serves every env of a process: it starts with the first ``reset`` of
any env, each env gets its own simulator object (``PythonInterface``) inside it, and the JVM stops
when the last env using it is closed. In the EnvPool's worker processes that is one JVM per
worker; ``shared_jvm=False`` gives an env a JVM of its own. We talk to the simulator's
``PythonInterface`` directly instead of through
``scienceworld.ScienceWorldEnv.step``, because that wrapper fetches every valid action-object
combination on every step (about 10x the cost of the step itself); here valid actions are only
fetched when ``valid_actions=True``.

Tasks and splits: ``task`` is one task name, a list of names, or ``None`` (all 30). Variations
come from the simulator's own ``get_variations_train/dev/test``. ``reset(seed)`` plays task
``tasks[seed % n_tasks]`` with variation ``split_variations[(seed // n_tasks) % n_variations]``,
so seeds ``0..N-1`` enumerate the split task-balanced; ``options={"task": ..., "variation": ...}``
picks one explicitly, ``options={"gold_path": True}`` also returns the simulator's gold action
sequence in ``info["walkthrough"]``.

Reward: the raw score is 0-100 (``info["score"]``; the simulator reports a negative score when the
task is failed, which ends the episode). By default the reward is the score delta / 100 on the
score clipped at 0, so an episode's return is (final score - initial score) / 100 (some tasks
start above 0: find-non-living-thing starts at 8); ``reward_mode="success"``
pays ``success_reward`` (10, as in the EPO fork of verl-agent) once on success instead.
``success`` = the task was completed with score 100.

Ambiguous commands: the simulator answers "Ambiguous request: ... 0: ... 1: ..." and waits for
a number as the next action, exactly as in ScienceWorld (its gold paths contain such numbers),
so that prompt is passed through unchanged; it is a valid step and is part of ``state_key``.
"""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import weakref
from collections.abc import Sequence
from typing import Any

from agentrl.envs.base import TextEnv

SPLITS = ("train", "dev", "test")
JAVA_HELP = ("ScienceWorld needs Java 17+: apt-get install openjdk-17-jre-headless "
             "or set JAVA_HOME")
INVALID_FEEDBACK = "No known action matches that input."
# Replies of the simulator's parser when it could not map the input to any action.
_INVALID_PREFIXES = ("No known action matches that input", "Unknown action")
_AMBIGUOUS_PREFIX = "Ambiguous request"
# C0/C1 controls, zero-width and bidi-override characters: never part of a command, and the
# parser gains nothing from seeing them.
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff\ufffd]")

# task name -> (train, dev, test) variation indices, filled lazily from the simulator; the
# split is a property of the jar, so one query per task and process is enough.
_SPLIT_CACHE: dict[str, tuple[list[int], list[int], list[int]]] = {}


def task_names() -> list[str]:
    """The 30 ScienceWorld task names (sorted), read from the installed package without a JVM."""
    from scienceworld.constants import ID2TASK
    from scienceworld.utils import infer_task

    return sorted(infer_task(name) for name in ID2TASK.values())


def find_java() -> str:
    """Path of the ``java`` executable: ``$JAVA_HOME/bin/java``, else ``java`` on PATH.

    Raises:
        RuntimeError: with the install hint when no Java runtime is found.
    """
    home = os.environ.get("JAVA_HOME")
    if home:
        path = os.path.join(home, "bin", "java")
        if os.access(path, os.X_OK):
            return path
    path = shutil.which("java")
    if path is None:
        raise RuntimeError(f"{JAVA_HELP} (no 'java' on PATH"
                           + (f" and none in JAVA_HOME={home})" if home else ")"))
    return path


def sanitize_action(action: Any, max_chars: int) -> str | None:
    """Normalise an agent's text into a simulator command, or None when it cannot be one.

    Control/bidi characters become spaces and whitespace collapses; text longer than
    ``max_chars`` (the longest real command is under 100 characters) is rejected rather than
    truncated, since a truncated command would be a different command.
    """
    text = _UNPRINTABLE.sub(" ", str(action))
    cmd = " ".join(text.split())
    if not cmd or len(cmd) > max_chars:
        return None
    return cmd


class _JVM:
    """One ScienceWorld JVM and its py4j gateway."""

    def __init__(self, max_heap: str) -> None:
        from py4j.java_gateway import GatewayParameters, JavaGateway, launch_gateway
        from scienceworld.constants import BASEPATH, JAR_PATH

        java = find_java()
        stderr: collections.deque[str] = collections.deque(maxlen=50)
        # Serial GC: a single collector thread; the box has 2 cores shared by several JVMs.
        opts = [f"-Xmx{max_heap}", "-XX:+UseSerialGC"]
        from agentrl.progress import phase, worker_index

        # A few seconds idle, much longer on a busy machine: say so, once per process, or in
        # an env pool's workers once for all of them (from worker 0).
        w = worker_index()
        what = (f"starting a ScienceWorld JVM (-Xmx{max_heap}, process {os.getpid()})"
                if w is None else
                f"starting ScienceWorld JVMs, one per env worker process (-Xmx{max_heap} each)")
        try:
            with phase(what, announce=w in (None, 0)):
                port, proc = launch_gateway(classpath=JAR_PATH, javaopts=opts, java_path=java,
                                            die_on_exit=True, cwd=BASEPATH, return_proc=True,
                                            redirect_stderr=stderr)
        except Exception as e:  # py4j raises a bare Py4JError when the JVM fails to start
            raise RuntimeError(f"could not start the ScienceWorld JVM with {java} {opts}: {e}; "
                               f"JVM stderr: {''.join(stderr)[-2000:]!r}. {JAVA_HELP}") from e
        self.proc = proc
        self.gateway = JavaGateway(gateway_parameters=GatewayParameters(port=port,
                                                                        auto_field=True),
                                   java_process=proc)
        self.max_heap = max_heap
        self.users = 0  # envs holding a simulator in this JVM
        # Stop the JVM even if close() is never called (finalize runs at gc or interpreter exit).
        self._finalizer = weakref.finalize(self, _shutdown, self.gateway, proc)

    def new_simulator(self) -> Any:
        """A fresh, independent simulator object inside this JVM."""
        return self.gateway.jvm.scienceworld.runtime.pythonapi.PythonInterface()

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        self._finalizer()


# The process's shared JVMs, by heap size (envs asking for another cap get another JVM).
_SHARED: dict[str, _JVM] = {}


def _acquire_jvm(max_heap: str, shared: bool) -> _JVM:
    if not shared:
        jvm = _JVM(max_heap)
    else:
        jvm = _SHARED.get(max_heap)
        if jvm is None or not jvm.alive:
            jvm = _SHARED[max_heap] = _JVM(max_heap)
    jvm.users += 1
    return jvm


def _release_jvm(jvm: _JVM) -> None:
    jvm.users -= 1
    if jvm.users <= 0:
        jvm.close()
        if _SHARED.get(jvm.max_heap) is jvm:
            del _SHARED[jvm.max_heap]


def _shutdown(gateway: Any, proc: Any) -> None:
    try:
        gateway.shutdown()
    except Exception:  # the JVM may already be gone; we only need it stopped
        pass
    try:
        if proc.poll() is None:
            # die_on_exit: the JVM exits when it reads a line (or EOF) on stdin.
            proc.stdin.write(b"\n")
            proc.stdin.flush()
            proc.wait(timeout=5)
    except Exception:
        pass
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=5)


class ScienceWorldEnv(TextEnv):
    """The ScienceWorld simulator: 30 science-experiment tasks in a text world.

    Args:
        task: a task name (e.g. ``"boil"``), a list of names, or None for all 30 tasks.
        split: ``train`` | ``dev`` | ``test`` variations (the simulator's own split).
        simplification: ScienceWorld simplification string, e.g. ``"easy"`` (teleport, open
            doors/containers, self-watering pots, no electrical actions except where needed) or
            ``""`` for none, or a comma-separated subset.
        valid_actions: fetch the valid action-object combinations after every step into
            ``info["admissible_actions"]`` (about 10x the cost of a step).
        step_limit: agent steps per episode before truncation (every step counts, invalid too).
        reward_mode: ``score`` (score delta / 100) or ``success`` (``success_reward`` on success).
        success_reward: reward paid on success when ``reward_mode="success"``.
        max_heap: JVM ``-Xmx`` (768m suffices: 8 envs in one JVM measured 333 MiB resident).
        shared_jvm: share the process's JVM with other envs of the same ``max_heap`` (each
            keeps its own simulator); False starts a JVM for this env alone.
        max_action_chars: longer actions are invalid without reaching the simulator.
    """

    def __init__(self, task: str | Sequence[str] | None = None, split: str = "train",
                 simplification: str = "easy", valid_actions: bool = False,
                 step_limit: int = 100, reward_mode: str = "score", success_reward: float = 10.0,
                 max_heap: str = "768m", shared_jvm: bool = True, max_action_chars: int = 300,
                 render_mode: str | None = None) -> None:
        super().__init__(render_mode)
        from scienceworld.utils import infer_task

        known = task_names()
        wanted = known if task is None else [task] if isinstance(task, str) else list(task)
        self.tasks = [infer_task(t) for t in wanted]
        self._known_tasks = frozenset(known)  # reset() checks option tasks against it
        unknown = [t for t in self.tasks if t not in known]
        if unknown or not self.tasks:
            raise ValueError(f"unknown ScienceWorld task(s) {unknown or wanted!r}; "
                             f"known: {', '.join(known)}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if reward_mode not in ("score", "success"):
            raise ValueError(f"reward_mode must be 'score' or 'success', got {reward_mode!r}")
        if step_limit < 1:
            raise ValueError("step_limit must be >= 1")
        self.split, self.simplification = split, simplification
        self.valid_actions, self.step_limit = valid_actions, step_limit
        self.reward_mode, self.success_reward = reward_mode, float(success_reward)
        self.max_heap, self.max_action_chars = max_heap, max_action_chars
        self.shared_jvm = shared_jvm
        self._jvm: _JVM | None = None
        self._server: Any = None
        self._loaded: tuple[str, int, str, bool] | None = None
        self._task, self._variation, self._task_desc = "", -1, ""
        self._score, self._steps, self._done = 0, 0, True
        self._pending = ""  # an ambiguity prompt awaiting a number
        self._success = False

    # -- simulator ------------------------------------------------------------------------
    @property
    def server(self) -> Any:
        """The simulator's py4j ``PythonInterface`` (starts the JVM on first use)."""
        if self._server is None:
            self._jvm = _acquire_jvm(self.max_heap, self.shared_jvm)
            try:
                self._server = self._jvm.new_simulator()
            except Exception:
                _release_jvm(self._jvm)
                self._jvm = None
                raise
        return self._server

    def _check_jvm(self, restart: bool) -> None:
        """A JVM that died (OOM-killed, killed by hand) is replaced at the next reset; during
        an episode its world is gone, so the step fails with a clear error instead."""
        if self._jvm is None or self._jvm.alive:
            return
        code = self._jvm.proc.poll()
        self.close()
        if not restart:
            raise RuntimeError(f"the ScienceWorld JVM exited (code {code}) during the episode; "
                               f"the next reset() starts a new one (JVM heap: -Xmx{self.max_heap})")

    def variations(self, task: str, split: str | None = None) -> list[int]:
        """Variation indices of ``task`` in ``split`` (default: this env's split)."""
        if task not in _SPLIT_CACHE:
            srv = self.server
            srv.load(task, 0, self.simplification, False)
            self._loaded = None  # variation 0 is loaded now, not necessarily what reset wants
            _SPLIT_CACHE[task] = (list(srv.getVariationsTrain()), list(srv.getVariationsDev()),
                                  list(srv.getVariationsTest()))
        return _SPLIT_CACHE[task][SPLITS.index(split or self.split)]

    def _admissible(self) -> list[str]:
        # One JSON string over py4j instead of a py4j round trip per list element.
        data = json.loads(self.server.getValidActionObjectCombinationsJSON())
        return sorted({a["action"] for a in data["validActions"]})

    def _info(self, action_valid: bool) -> dict[str, Any]:
        srv = self.server
        look, inv = srv.freeActionLook(), srv.freeActionInventory()
        info: dict[str, Any] = {
            "task_type": self._task,
            "task": self._task_desc,
            "variation": self._variation,
            "split": self.split,
            "score": float(self._score),
            "action_valid": action_valid,
            "success": self._success,
            # History-free: what the agent could see now (room, inventory), plus a pending
            # ambiguity prompt, which changes what the next action means.
            "state_key": f"{look}\n{inv}\n{self._pending}",
            "moves": int(srv.getNumMoves()),
        }
        if self.valid_actions:
            info["admissible_actions"] = self._admissible()
        return info

    # -- gymnasium API --------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        opts = dict(options or {})
        if seed is None:
            seed = int(self.np_random.integers(0, 2**31))
        self._check_jvm(restart=True)
        task = opts.get("task") or self.tasks[seed % len(self.tasks)]
        if task not in self._known_tasks:
            raise ValueError(f"unknown ScienceWorld task {task!r}")
        if opts.get("variation") is not None:
            variation = int(opts["variation"])
        else:
            pool = self.variations(task)
            variation = pool[(seed // len(self.tasks)) % len(pool)]
        gold = bool(opts.get("gold_path", False))
        key = (task, variation, self.simplification, gold)
        srv = self.server
        if key != self._loaded:
            srv.load(task, variation, self.simplification, gold)
            self._loaded = key
        srv.reset()
        # A first "look around" (no time passes) as ScienceWorld's own reset does: until the
        # simulator steps once, getScore() still reports the previous episode's score.
        look = srv.step("look around").strip()
        self._task, self._variation = task, variation
        self._task_desc = srv.freeActionTaskDesc().strip()
        self._score = int(round(100 * srv.getScore()))
        self._steps, self._done, self._pending, self._success = 0, False, "", False
        obs = f"{self._task_desc}\n\n{look}"
        info = self._info(True)
        if gold:
            info["walkthrough"] = list(srv.getGoldActionSequence())
        self._last_obs = obs
        return obs, info

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self._done:
            return ("The episode is over; call reset().", 0.0, True, False,
                    {"action_valid": False, "success": self._success, "task_type": self._task,
                     "score": float(self._score)})
        self._check_jvm(restart=False)
        self._steps += 1
        cmd = sanitize_action(action, self.max_action_chars)
        srv = self.server
        prev, completed = self._score, False
        if cmd is None:  # nothing reaches the simulator, so nothing changes
            obs, valid = INVALID_FEEDBACK, False
        else:
            obs = srv.step(cmd).strip()
            valid = not obs.startswith(_INVALID_PREFIXES)
            self._pending = obs if obs.startswith(_AMBIGUOUS_PREFIX) else ""
            self._score = int(round(100 * srv.getScore()))
            completed = bool(srv.getCompleted())
        self._success = completed and self._score >= 100
        terminated = completed or self._score < 0  # a negative score means the task failed
        truncated = not terminated and self._steps >= self.step_limit
        if self.reward_mode == "score":
            reward = (max(self._score, 0) - max(prev, 0)) / 100.0
        else:
            reward = self.success_reward if self._success else 0.0
        self._done = terminated or truncated
        self._last_obs = obs
        return obs, reward, terminated, truncated, self._info(valid)

    def close(self) -> None:
        """Release this env's simulator; the JVM stops when no env of the process uses it (a
        later ``reset`` starts a new one)."""
        if self._jvm is not None:
            jvm, server = self._jvm, self._server
            self._jvm, self._server, self._loaded = None, None, None
            if jvm.alive and server is not None:
                try:  # the JVM may now collect this env's world
                    jvm.gateway.detach(server)
                except Exception:  # the gateway may be gone; the JVM stops below if unused
                    pass
            _release_jvm(jvm)


class ScienceWorldExpert:
    """The simulator's gold action sequence for the episode's task and variation (generated at
    reset, ``gold_path``), played in order: the expert for episodes it plays from the start."""

    reset_options: dict[str, Any] = {"gold_path": True}

    def __init__(self, env: ScienceWorldEnv, info: dict[str, Any]) -> None:
        self.plan = [str(a) for a in info.get("walkthrough") or []]
        self.turn = 0

    def act(self, info: dict[str, Any]) -> str | None:
        listed = info.get("admissible_actions")
        while self.turn < len(self.plan):
            gold = self.plan[self.turn]
            self.turn += 1
            if listed is None or gold in listed or gold.isdigit():
                return gold
            door = re.match(r"open door to (.+)$", gold)
            if door and re.search(rf"door to (the )?{re.escape(door.group(1))} \(that is open\)",
                                  str(info.get("state_key", ""))):
                continue  # the door is open already: the gold step is a no-op
            return _listed_form(gold, listed)
        return None


#: Gold-path verbs and the form the valid-action list uses for the same action.
_SYNONYMS = (("drop ", "put down "), ("examine ", "look at "))


def _listed_form(gold: str, listed: Sequence[str]) -> str:
    """The valid action that names the gold action's objects the way the simulator lists them
    (the gold path says "move egg blue jay egg in inventory to red box", the valid actions
    "move blue jay to red box"): same verb and target, object words a subset of the gold
    object's, the most words shared; the gold action itself when none fits (it stays valid
    for the simulator's parser, only not listed)."""
    for said, listed_as in _SYNONYMS:  # the parser's synonyms for verbs the list spells out
        if gold.startswith(said) and listed_as + gold[len(said):] in listed:
            return listed_as + gold[len(said):]
    verb, _, rest = gold.partition(" ")
    obj, sep, target = rest.rpartition(" to ") if " to " in rest else (rest, "", "")
    words = set(obj.split())
    best, best_n = gold, 0
    for a in listed:
        v, _, r = a.partition(" ")
        if v != verb:
            continue
        o, s2, t = r.rpartition(" to ") if " to " in r else (r, "", "")
        if (s2, t) != (sep, target) or not set(o.split()) <= words:
            continue
        if len(set(o.split())) > best_n:
            best, best_n = a, len(set(o.split()))
    return best
