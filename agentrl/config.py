"""Typed, strict configuration: dataclasses, one flat YAML file, dotted ``key=value`` overrides.

    cfg = load_config("configs/quickstart.yaml", ["train.lr=1e-3", "rollout.group_size=4"])

Unknown keys fail with a "did you mean", values are checked for type and range, and every error
names the key and what to put there. Two sections depend on a name: ``algorithm:`` is validated
against the hyperparameter dataclass of the algorithm named in ``algorithm.name``, and
``policy:`` against the config dataclass of the backend named in ``policy.backend``
(`agentrl.policies.BACKENDS`); a key that belongs to another algorithm or backend says so.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

import yaml

from agentrl.fields import ConfigError, F  # noqa: F401  (re-exported: the public home of both)
from agentrl.policies.base import PolicyConfig

# --------------------------------------------------------------------------------- sections

DEFAULT_TEMPLATE = (
    "{task}\n{history}Current observation: {observation}\n"
    "Admissible actions: {actions}\n"
    "Think briefly, then give your action inside <action></action>."
)


@dataclass
class EnvConfig:
    id: str = F("agentrl/TextWorld-CoinCollector-v0", "registered env id (`agentrl envs` lists them)")
    kwargs: dict[str, Any] = F(default_factory=dict, help="constructor kwargs for training envs")
    eval_kwargs: dict[str, Any] = F(default_factory=dict,
                                    help="kwargs merged over `kwargs` for evaluation envs")
    train_seeds: int = F(100_000, "training episodes draw seeds from [0, train_seeds)", ge=1)
    pool: str = F("auto", "where envs run: 'auto' (worker processes for envs registered with "
                  "isolate=True: ScienceWorld's JVM, ALFWorld's planner; else this process), "
                  "'inprocess', 'process', or 'pkg.module:Class' (your own EnvPool)")
    envs_per_worker: int = F(1, "process pool: envs per worker process (they share its JVM, "
                             "and a crash or timeout ends all of its episodes)", ge=1)
    step_timeout: float = F(60.0, "process pool: seconds before a step counts as hung (its "
                            "worker is killed and replaced)", gt=0)
    reset_timeout: float | None = F(None, "process pool: seconds a reset may take (null = "
                                    "step_timeout)", gt=0)
    build_timeout: float = F(600.0, "process pool: seconds a worker may take to build an env "
                             "(load games, start a JVM) before its first reset", gt=0)
    recycle_after: int = F(0, "replace an env (in-process) or a worker after this many "
                           "episodes, to bound memory leaks in env code (0 = never)", ge=0)


@dataclass
class RolloutConfig:
    groups: int = F(8, "task groups per iteration (distinct seeds)", ge=1)
    group_size: int = F(8, "rollouts per group (same seed)", ge=1)
    max_turns: int = F(15, "turn limit per episode", ge=1)
    context: Literal["window", "full"] = F("window", "re-prompt each turn, or one growing conversation")
    history: int = F(2, "window mode: past (observation, action) pairs in the prompt", ge=0)
    template: str = F(DEFAULT_TEMPLATE, "user-message template: {task} {history} {observation} "
                      "{actions} {last_actions} {step}")
    system_prompt: str = F("", "system message ('' for none)")
    action_format: Literal["tags", "raw"] = F("tags", "'tags': <action>..</action>; 'raw': the whole reply")
    constrained: bool = F(False, "decode only admissible actions (needs envs that list them)")
    max_new_tokens: int = F(64, "token limit per reply", ge=1)
    temperature: float = F(1.0, "sampling temperature (also used by the learner)", gt=0)
    top_p: float = F(1.0, "nucleus sampling", gt=0, le=1)
    top_k: int = F(0, "top-k sampling (0 = off)", ge=0)
    stop: list[str] = F(default_factory=list, help="extra stop strings")
    invalid_penalty: float = F(0.1, "reward subtracted on a turn whose action is invalid", ge=0)
    step_penalty: float = F(0.0, "reward subtracted on every turn (favours short episodes)", ge=0)
    max_context_tokens: int = F(4096, "prompt + reply token budget; episodes past it end", ge=16)
    max_observation_chars: int = F(2000, "observations are cut to this many characters", ge=16)
    batch_size: int = F(64, "max sequences per generate call", ge=1)


@dataclass
class TrainConfig:
    iterations: int = F(50, "training iterations (rollout + update)", ge=0)
    lr: float = F(1e-6, "AdamW learning rate", gt=0)
    weight_decay: float = F(0.01, "AdamW weight decay", ge=0)
    betas: list[float] = F(default_factory=lambda: [0.9, 0.999], help="AdamW betas")
    lr_schedule: Literal["constant", "cosine", "linear"] = F("constant", "LR schedule after warmup")
    warmup_iterations: int = F(0, "linear LR warmup", ge=0)
    min_lr_ratio: float = F(0.0, "final LR / peak LR for cosine/linear", ge=0, le=1)
    epochs: int = F(1, "passes over each iteration's batch", ge=1)
    minibatches: int = F(1, "optimizer steps per epoch", ge=1)
    micro_batch_tokens: int = F(16384, "token budget per forward/backward (grad accumulation)", ge=1)
    pack: bool = F(True, "pack several sequences into each row of a micro-batch (position ids "
                   "restart per sequence, block-diagonal attention) instead of padding every "
                   "sequence to the longest; same loss and gradients, fewer tokens computed")
    sort_by_length: bool = F(True, "form micro-batches from sequences of similar length "
                             "(less padding; the loss is the same)")
    grad_clip: float = F(1.0, "max grad norm of the policy, and apart of the algorithm's own "
                         "parameters (a critic) (0 = off)", ge=0)
    checkpoint_every: int = F(10, "iterations between checkpoints (0 = only at the end)", ge=0)
    keep_checkpoints: int = F(2, "checkpoints kept on disk", ge=1)
    tis_cap: float = F(0.0, "truncated importance sampling: weight each token's advantage by "
                       "min(pi_learner/pi_sampler, tis_cap) to correct sampler/trainer mismatch "
                       "(0 = off; > 0 implies policy.recompute_old_logprobs)", ge=0)


@dataclass
class EvalConfig:
    every: int = F(10, "iterations between evaluations (0 = only before and after)", ge=0)
    episodes: int = F(50, "held-out episodes per evaluation", ge=1)
    seed_start: int = F(0, "eval seeds are seed_start .. seed_start+episodes-1 of the eval envs", ge=0)
    greedy: bool = F(False, "greedy decoding (else sampled at rollout.temperature)")
    before_training: bool = F(True, "evaluate the initial policy too")


@dataclass
class LogConfig:
    tensorboard: bool = F(True, "write TensorBoard events")
    trajectories_every: int = F(5, "dump sampled trajectories every N iterations (0 = never)", ge=0)
    trajectories_per_dump: int = F(16, "trajectories per dump", ge=1)
    progress: bool = F(True, "progress bars")
    wandb: bool = F(False, "also log to Weights & Biases (needs `pip install wandb`; "
                    "WANDB_MODE=offline works without network)")


@dataclass
class AlarmConfig:
    """Thresholds for the silent-failure alarms (`agentrl.alarms`); a threshold of 0 turns
    that alarm off. Each fires at most once per iteration, printed and logged as ``alarm/*``."""

    enabled: bool = F(True, "check the alarms every iteration")
    zero_variance_groups: float = F(1.0, "alarm when this share of groups has zero reward "
                                    "variance (1.0 = all: no learning signal)", ge=0, le=1)
    response_length_hit_rate: float = F(0.5, "alarm when this share of replies hit "
                                        "rollout.max_new_tokens", ge=0, le=1)
    invalid_action_rate: float = F(0.5, "alarm when this share of actions is invalid", ge=0, le=1)
    logprob_mismatch: float = F(0.05, "alarm when mean |sampler - trainer| logprob on sampled "
                                "tokens exceeds this (nats)", ge=0)
    host_memory_fraction: float = F(0.9, "alarm when learner + env workers use this share of "
                                    "host RAM", ge=0, le=1)


@dataclass
class Config:
    run_name: str = F("run", "name of the run directory under output_dir")
    output_dir: str = F("runs", "where run directories go")
    seed: int = F(0, "global seed (model init, sampling, task draws)")
    env: EnvConfig = F(default_factory=EnvConfig)
    policy: PolicyConfig = F(default_factory=PolicyConfig)
    rollout: RolloutConfig = F(default_factory=RolloutConfig)
    algorithm: Any = None  # the algorithm's own Config dataclass (validated by name)
    train: TrainConfig = F(default_factory=TrainConfig)
    eval: EvalConfig = F(default_factory=EvalConfig)
    log: LogConfig = F(default_factory=LogConfig)
    alarms: AlarmConfig = F(default_factory=AlarmConfig)

    @property
    def algorithm_name(self) -> str:
        return self.algorithm.name


# --------------------------------------------------------------------------------- building

def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` to annotation ``tp`` or raise a ConfigError naming the key."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is Literal:
        if value not in args:
            hint = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            raise ConfigError(f"{key}: {value!r} is not allowed; choose one of {list(args)}"
                              + (f" (did you mean {hint[0]!r}?)" if hint else ""))
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer, got {value!r} ({type(value).__name__})")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number such as 1e-3, got {value!r} "
                          f"({type(value).__name__})")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if origin is list:
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip().startswith("[") else [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping like {{a: 1}}, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a section (mapping), got {value!r}")
        return build_dataclass(tp, value, key)
    return value


def build_dataclass(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Instantiate dataclass ``cls`` from ``data``, strictly (unknown keys, types, bounds)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in fields:
            hint = difflib.get_close_matches(str(k), list(fields), n=1, cutoff=0.5)
            raise ConfigError(f"unknown key {key!r}"
                              + (f"; did you mean {(prefix + '.' if prefix else '') + hint[0]!r}?"
                                 if hint else f"; valid keys here: {', '.join(fields)}"))
        f = fields[k]
        val = _coerce(v, hints[k], key)
        _check_bounds(val, f.metadata, key)
        kwargs[k] = val
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{prefix or 'config'}: {e}") from e
    return obj


def _check_bounds(val: Any, md: Any, key: str) -> None:
    if not isinstance(val, (int, float)) or isinstance(val, bool):
        return
    checks = [("ge", lambda a, b: a >= b, ">="), ("gt", lambda a, b: a > b, ">"),
              ("le", lambda a, b: a <= b, "<="), ("lt", lambda a, b: a < b, "<")]
    for name, ok, sym in checks:
        bound = md.get(name) if md else None
        if bound is not None and not ok(val, bound):
            raise ConfigError(f"{key}: {val} is out of range; it must be {sym} {bound}")


def _set_dotted(d: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    cur = d
    for p in parts[:-1]:
        nxt = cur.get(p)
        if not isinstance(nxt, dict):
            nxt = {}
            cur[p] = nxt
        cur = nxt
    cur[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """``["train.lr=1e-3", "env.kwargs={level: 3}"]`` -> [(key, yaml-parsed value)]."""
    out = []
    for o in overrides:
        if "=" not in o:
            raise ConfigError(f"override {o!r} must look like key=value (e.g. train.lr=1e-3)")
        k, _, v = o.partition("=")
        k = k.strip()
        if not k:
            raise ConfigError(f"override {o!r} has an empty key")
        try:
            val = yaml.safe_load(v) if v.strip() else ""
        except yaml.YAMLError:
            val = v
        out.append((k, val))
    return out


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each ``key=value`` of ``overrides`` in the nested dict ``data`` (in place); returns it."""
    for k, v in parse_overrides(overrides):
        _set_dotted(data, k, v)
    return data


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build and validate a `Config` from a nested dict (as loaded from YAML)."""
    from agentrl import policies
    from agentrl.registry import ALGORITHMS, get_algorithm

    data = dict(data or {})
    algo = dict(data.pop("algorithm", None) or {})
    name = str(algo.pop("name", "grpo"))
    try:
        algo_cls = get_algorithm(name)
    except KeyError as e:
        raise ConfigError(f"algorithm.name: {e.args[0]}") from e
    pol = dict(data.pop("policy", None) or {})
    backend = str(pol.get("backend", "hf"))
    try:
        pol_cls = policies.backend_config(backend)
    except KeyError as e:
        raise ConfigError(f"policy.backend: {e.args[0]}") from e
    cfg = build_dataclass(Config, data)
    cfg.policy = _named_section("policy", pol, pol_cls, f"backend {backend!r}", "policy.backend",
                                {n: c for n, (_, c) in policies.BACKENDS.items()})
    cfg.algorithm = _named_section("algorithm", algo, algo_cls.Config, f"algorithm {name!r}",
                                   "algorithm.name", {n: c.Config for n, c in ALGORITHMS.items()})
    cfg.algorithm.name = name
    _cross_checks(cfg)
    return cfg


def _named_section(section: str, data: dict[str, Any], cls: type, label: str, switch: str,
                   others: dict[str, type]) -> Any:
    """Build ``section`` against ``cls``, the dataclass of what ``switch`` names (``label``).

    An unknown key is often a setting of another algorithm or backend (``others``: name ->
    dataclass), left behind by a ``switch=...`` override: the error then names its owner.
    """
    try:
        return build_dataclass(cls, data, section)
    except ConfigError as e:
        if "unknown key" not in str(e):
            raise
        known = {f.name for f in dataclasses.fields(cls)}
        bad = next(k for k in data if k not in known)
        owners = sorted(n for n, c in others.items()
                        if bad in {f.name for f in dataclasses.fields(c)})
        if owners:
            raise ConfigError(f"{section}.{bad} is a setting of {', '.join(owners)}, not of "
                              f"{label}: remove it or change {switch}") from None
        raise ConfigError(f"{e} ({label})") from None


POOLS = ("auto", "inprocess", "process")


def _cross_checks(cfg: Config) -> None:
    pool = cfg.env.pool
    if pool not in POOLS and ":" not in pool:
        hint = difflib.get_close_matches(pool, POOLS, n=1)
        raise ConfigError(f"env.pool: {pool!r} is not allowed; choose one of {list(POOLS)} or "
                          "'pkg.module:Class' (an EnvPool of your own)"
                          + (f" (did you mean {hint[0]!r}?)" if hint else ""))
    if cfg.rollout.max_new_tokens >= cfg.rollout.max_context_tokens:
        raise ConfigError("rollout.max_new_tokens must be smaller than rollout.max_context_tokens")
    n = cfg.rollout.groups * cfg.rollout.group_size
    if cfg.train.minibatches > n and cfg.rollout.context == "full":
        raise ConfigError(f"train.minibatches={cfg.train.minibatches} exceeds the {n} trajectories "
                          "of an iteration; lower it")


def load_config(path: str | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (``None`` = the embedded quickstart) and apply ``key=value`` overrides."""
    if path is None:
        text = _quickstart_text()
        data = yaml.safe_load(text) or {}
    else:
        try:
            with open(path, encoding="utf-8") as f:
                data = yaml.safe_load(f) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file {path!r} not found") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return config_from_dict(apply_overrides(data, overrides or []))


def _quickstart_text() -> str:
    from importlib.resources import files

    return files("agentrl").joinpath("data/quickstart.yaml").read_text(encoding="utf-8")


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """The resolved config as plain data (saved with every run and checkpoint)."""
    d = dataclasses.asdict(cfg)
    d["algorithm"] = {"name": cfg.algorithm.name, **{k: v for k, v in
                                                     dataclasses.asdict(cfg.algorithm).items()
                                                     if k != "name"}}
    return d


def save_config(cfg: Config, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(config_to_dict(cfg), f, sort_keys=False, allow_unicode=True)


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) rows for docs and ``agentrl algorithms``."""
    rows = []
    for f in dataclasses.fields(cls):
        if f.name == "name":
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "")
        rows.append((f"{prefix}{f.name}", repr(default), f.metadata.get("help", "")))
    return rows
