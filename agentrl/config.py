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
import math
import types
import typing
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import yaml

from agentrl.curriculum import CurriculumConfig
from agentrl.fields import ConfigError, F  # noqa: F401  (re-exported: the public home of both)
from agentrl.policies.base import PolicyConfig

# --------------------------------------------------------------------------------- sections

DEFAULT_TEMPLATE = (
    "{task}\n{history}Current observation: {observation}\n"
    "Admissible actions: {actions}\n"
    "Think briefly, then give your action inside <action></action>."
)


_DEFAULT_ENV_ID = "agentrl/TextWorld-CoinCollector-v0"


@dataclass
class EnvConfig:
    id: str = F(_DEFAULT_ENV_ID, "registered env id (`agentrl envs` lists them)")
    kwargs: dict[str, Any] = F(default_factory=dict, help="constructor kwargs for training envs")
    eval_kwargs: dict[str, Any] = F(default_factory=dict,
                                    help="kwargs merged over `kwargs` for evaluation envs")
    train_seeds: int = F(100_000, "training episodes draw seeds from [0, train_seeds)", ge=1)
    pool: str = F("auto", "where envs run: 'auto' (worker processes for envs registered with "
                  "isolate=True: ScienceWorld's JVM, ALFWorld's planner; else this process), "
                  "'inprocess', 'process', 'ray' (Ray actors, see the ray: section) or "
                  "'pkg.module:Class' (your own EnvPool)")
    envs_per_worker: int = F(1, "process/ray pool: envs per worker process or actor (they share its JVM, "
                             "and a crash or timeout ends all of its episodes)", ge=1)
    step_timeout: float = F(60.0, "process/ray pool: seconds before a step counts as hung (its "
                            "worker is killed and replaced)", gt=0)
    reset_timeout: float | None = F(None, "process/ray pool: seconds a reset may take (null = "
                                    "step_timeout)", gt=0)
    build_timeout: float = F(600.0, "process/ray pool: seconds a worker may take to build an env "
                             "(load games, start a JVM) before its first reset", gt=0)
    recycle_after: int = F(0, "replace an env (in-process) or a worker after this many "
                           "episodes, to bound memory leaks in env code (0 = never)", ge=0)
    curriculum: CurriculumConfig = F(default_factory=CurriculumConfig,
                                     help="how training tasks are drawn: {kind: uniform} or "
                                     "{kind: success} (by recent success, agentrl.curriculum)")


@dataclass
class RayConfig:
    """Where ``env.pool=ray`` places its env actors (`agentrl.raypool`)."""

    address: str = F("", "'' = start a local Ray instance for this run (stopped with it); "
                     "'auto' or 'host:port' = join a running cluster (`ray start --head`)")
    num_cpus: int = F(2, "local instance only: CPUs it offers the env actors", ge=1)
    worker_cpus: float = F(1.0, "CPUs reserved per env actor (env.envs_per_worker envs each); "
                           "Ray places actors where they fit", gt=0)


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
    action_format: Literal["tags", "raw", "tool_call"] = F(
        "tags", "'tags': <action>..</action>; 'raw': the whole reply; 'tool_call': one native "
        "tool call in the chat template's format (envs that list info['tools']: ToolUse, "
        "WebShop); results come back as tool messages")
    tool_parser: str = F("hermes", "action_format=tool_call: how calls are written ('hermes': "
                         "<tool_call>{json}</tool_call> as Qwen2.5/Qwen3/Hermes; 'json': a bare "
                         "JSON object as Llama 3.1; more via agentrl.toolcalls."
                         "register_tool_parser)")
    chat_template_kwargs: dict[str, Any] = F(default_factory=dict, help="extra chat template "
                                             "variables, e.g. {enable_thinking: false} (Qwen3)")
    template_drift: Literal["keep_prefix", "error"] = F(
        "keep_prefix", "full mode, when the chat template renders an earlier turn differently "
        "from the stored tokens (Qwen3 dropping past <think> blocks, re-serialised tool calls, "
        "whitespace, tokenisation): 'keep_prefix' trains on the stored tokens and records the "
        "turn (extra['template_drift']); 'error' stops with the turn")
    constrained: bool = F(False, "decode only admissible actions (needs envs that list them)")
    max_new_tokens: int = F(64, "token limit per reply (constrained decoding raises it to fit the "
                                    "longest admissible action)", ge=1)
    temperature: float = F(1.0, "sampling temperature (also used by the learner)", gt=0)
    top_p: float = F(1.0, "nucleus sampling", gt=0, le=1)
    top_k: int = F(0, "top-k sampling (0 = off)", ge=0)
    stop: list[str] = F(default_factory=list, help="extra stop strings")
    invalid_penalty: float = F(0.1, "reward subtracted on a turn whose action is invalid", ge=0)
    step_penalty: float = F(0.0, "reward subtracted on every turn (favours short episodes)", ge=0)
    max_context_tokens: int = F(4096, "prompt + reply token budget; past it the episode ends, "
                                "or full mode applies history_policy", ge=16)
    max_observation_chars: int = F(2000, "observations are cut to this many characters", ge=16)
    max_observation_tokens: int = F(0, "env observations are cut to this many tokens before "
                                    "the agent sees them (0 = no limit); the cut is recorded in "
                                    "extra['observation_tokens_dropped']", ge=0)
    max_episode_tokens: int = F(0, "reply tokens an episode may generate over all its turns; "
                                "past it the episode ends with token_budget (0 = no limit)", ge=0)
    history_policy: Literal["all", "last_k", "summary"] = F(
        "all", "full mode, when the context would outgrow max_context_tokens: 'all' ends the "
        "episode (context_limit); 'last_k' restarts the context from the task and the last "
        "keep_turns turns; 'summary' does the same after the policy summarises the earlier "
        "turns. Dropped turns are recorded (extra['context_events']); training starts a new "
        "sample at the restart, so each token is trained in the context it was sampled in")
    keep_turns: int = F(2, "history_policy last_k/summary: completed turns kept after a "
                        "restart (fewer if they do not fit)", ge=0)
    summary_prompt: str = F("Summarize the progress so far in a few sentences: what you did, "
                            "what you found, what is left to do.",
                            "history_policy=summary: the request for the summary")
    max_summary_tokens: int = F(128, "history_policy=summary: token limit of the summary (the "
                                "context restarts early enough for the request and the summary "
                                "to fit)", ge=1)
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
    pack: bool = F(True, "run a micro-batch's sequences end to end in one row (position ids "
                   "restart per sequence; with sdpa or flash attention each attends to itself "
                   "only, else block-diagonal masked bins) instead of padding every sequence "
                   "to the longest; same loss and gradients, no padding computed")
    sort_by_length: bool = F(True, "form micro-batches from sequences of similar length "
                             "(less padding; the loss is the same)")
    grad_clip: float = F(1.0, "max grad norm of the policy, and apart of the algorithm's own "
                         "parameters (a critic) (0 = off)", ge=0)
    max_nonfinite_updates: int = F(5, "optimizer steps in a row with a non-finite loss or "
                                   "gradient (each skipped) before the run stops", ge=1)
    checkpoint_every: int = F(10, "iterations between checkpoints (0 = only at the end)", ge=0)
    keep_checkpoints: int = F(2, "checkpoints kept on disk", ge=1)
    strategy: Literal["single", "ddp", "fsdp"] = F(
        "single", "learner: one process ('single'), or under `torchrun --nproc_per_node=N -m "
        "agentrl train CONFIG`: replicated weights with all-reduced gradients ('ddp') or "
        "weights, gradients and optimizer state sharded across ranks ('fsdp', FSDP2); "
        "rollout.groups is the global number, split across ranks")
    mixed_precision: Literal["no", "bf16"] = F(
        "no", "ddp/fsdp: 'bf16' computes in bfloat16 (FSDP: bf16 parameters in the forward, "
        "fp32 gradient reduction; DDP: autocast) with fp32 weights and optimizer state")
    activation_checkpointing: bool = F(False, "recompute each layer's activations in the "
                                       "backward instead of storing them (less memory, ~30% "
                                       "more compute)")
    cpu_offload: bool = F(False, "fsdp: keep sharded parameters, gradients and optimizer "
                          "state in host memory (the GPU holds one layer's weights at a time)")
    checkpoint_format: Literal["full", "sharded"] = F(
        "full", "'full': optimizer state gathered into state.pt (one-process format); "
        "'sharded': model and optimizer state also written by every rank with "
        "torch.distributed.checkpoint (CHECKPOINT/sharded, no gather of the optimizer state), "
        "loaded on any number of ranks")
    memory_check: Literal["error", "warn", "off"] = F(
        "error", "before the first rollout, estimate the learner's memory (weights, gradients, "
        "optimizer, reference, activations, KV cache) and stop with what to change when it "
        "exceeds the free memory ('warn': print only)")
    tis_cap: float = F(0.0, "truncated importance sampling: weight each token's advantage by "
                       "min(pi_learner/pi_sampler, tis_cap) to correct sampler/trainer mismatch "
                       "(0 = off; > 0 implies policy.recompute_old_logprobs)", ge=0)
    max_staleness: int = F(0, "asynchronous training: rollouts for the next iterations run "
                           "while the learner updates, on a copy of the weights at most this "
                           "many updates old (0 = the synchronous loop); set tis_cap to "
                           "correct for the lag (`agentrl.async_loop`)", ge=0)
    partial_rollouts: bool = F(False, "max_staleness > 0: new weights reach the rollouts "
                               "between turns, so an episode may span several versions (each "
                               "turn records its own); false: only between iterations' batches")


@dataclass
class EvalConfig:
    every: int = F(10, "iterations between evaluations (0 = only before and after)", ge=0)
    episodes: int = F(50, "held-out episodes per evaluation", ge=1)
    seed_start: int = F(0, "eval seeds are seed_start .. seed_start+episodes-1 of the eval envs", ge=0)
    greedy: bool = F(False, "greedy decoding (else sampled at eval.temperature)")
    temperature: float | None = F(None, "sampling temperature of evaluations (None: "
                                  "rollout.temperature; the GiGPO/verl-agent papers validate "
                                  "at 0.4)", gt=0)
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
    min_grad_norm: float = F(1e-12, "alarm when train/grad_norm is below this (an update "
                             "that changes nothing; 0 = off)", ge=0)
    lost_episodes: float = F(0.25, "alarm when this share of episodes ended env_error or "
                             "env_timeout (left out of the loss)", ge=0, le=1)
    response_length_hit_rate: float = F(0.5, "alarm when this share of replies hit "
                                        "rollout.max_new_tokens", ge=0, le=1)
    invalid_action_rate: float = F(0.5, "alarm when this share of actions is invalid", ge=0, le=1)
    logprob_mismatch: float = F(0.05, "alarm when mean |sampler - trainer| logprob on sampled "
                                "tokens exceeds this (nats)", ge=0)
    host_memory_fraction: float = F(0.9, "alarm when learner + env workers use this share of "
                                    "host RAM", ge=0, le=1)


@dataclass
class MultiAgentConfig:
    """Who holds the seats of a multi-agent env (`agentrl.multiagent`); ignored by single-agent
    envs. Random and scripted opponents are env settings (``env.kwargs={opponent: random}``):
    the env plays those seats itself."""

    opponent: str = F("self", "seats the trained policy does not hold: 'self' (self-play: the "
                      "trained policy holds every seat, its role in the prompt), 'league' "
                      "(frozen snapshots of this run, see league_*), or a checkpoint, run or "
                      "model directory (one frozen player)")
    league_every: int = F(10, "league: the current weights join the pool every N iterations "
                          "(and before training)", ge=1)
    league_size: int = F(5, "league: snapshots kept in the pool (the oldest leave)", ge=1)
    league_self_play: float = F(0.2, "league: share of groups played in self-play instead of "
                                "against a snapshot", ge=0, le=1)
    policies: Literal["shared", "per_role"] = F(
        "shared", "trained seats: 'shared' (one policy plays every role, its role in the "
        "prompt) or 'per_role' (one LoRA adapter per role on one frozen base, each trained "
        "on its own role's trajectories only; needs policy.lora, policy.backend=hf, "
        "train.strategy=single, train.max_staleness=0)")


@dataclass
class Config:
    run_name: str = F("run", "name of the run directory under output_dir")
    output_dir: str = F("runs", "where run directories go")
    seed: int = F(0, "global seed (model init, sampling, task draws)")
    env: EnvConfig = F(default_factory=EnvConfig)
    ray: RayConfig = F(default_factory=RayConfig)
    policy: PolicyConfig = F(default_factory=PolicyConfig)
    rollout: RolloutConfig = F(default_factory=RolloutConfig)
    algorithm: Any = None  # the algorithm's own Config dataclass (validated by name)
    train: TrainConfig = F(default_factory=TrainConfig)
    eval: EvalConfig = F(default_factory=EvalConfig)
    log: LogConfig = F(default_factory=LogConfig)
    alarms: AlarmConfig = F(default_factory=AlarmConfig)
    multiagent: MultiAgentConfig = F(default_factory=MultiAgentConfig)

    @property
    def algorithm_name(self) -> str:
        return self.algorithm.name


# --------------------------------------------------------------------------------- building

def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _yaml_value(text: str, key: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{key}: {text!r} is not valid YAML ({str(e).splitlines()[0]})"
                          ) from None


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
        try:
            number = float(value) if isinstance(value, (int, float, str)) else None
        except (ValueError, OverflowError):
            number = None
        if number is not None and not math.isfinite(number):
            raise ConfigError(f"{key}: {value!r} is not a finite number")
        if number is not None:
            return number
        raise ConfigError(f"{key}: expected a number such as 1e-3, got {value!r} "
                          f"({type(value).__name__})")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if origin is list:
        if isinstance(value, str):
            value = _yaml_value(value, key) if value.strip().startswith("[") else [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if isinstance(value, str):
            value = _yaml_value(value, key)
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
    algo = _section(data, "algorithm", "{name: grpo}")
    name = str(algo.pop("name", "grpo"))
    try:
        algo_cls = get_algorithm(name)
    except KeyError as e:
        raise ConfigError(f"algorithm.name: {e.args[0]}") from e
    pol = _section(data, "policy", "{backend: hf}")
    backend = str(pol.get("backend", "hf"))
    pol = _migrate_policy_keys(pol, backend)
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


# Backend settings that were flat ``policy.*`` keys before each backend had its own section:
# old key -> (backend, key in that backend's section). Configs saved by such runs (a run
# directory's config.yaml) hold all of them, so `--resume` of an old run must still load.
LEGACY_POLICY_KEYS = {
    "vllm_gpu_memory_utilization": ("vllm", "gpu_memory_utilization"),
    "vllm_sleep_level": ("vllm", "sleep_level"),
    "vllm_kv_cache_gb": ("vllm", "kv_cache_gb"),
    "vllm_enforce_eager": ("vllm", "enforce_eager"),
    "openai_base_url": ("openai", "base_url"),
    "openai_model": ("openai", "served_model"),
    "openai_api_key_env": ("openai", "api_key_env"),
}


def _migrate_policy_keys(pol: dict[str, Any], backend: str) -> dict[str, Any]:
    """Rename the legacy flat keys of ``backend`` to its section's names (with a warning) and
    drop those of other backends; a key given both ways keeps the new name's value."""
    old = [k for k in pol if k in LEGACY_POLICY_KEYS]
    if not old:
        return pol
    pol = dict(pol)
    for k in old:
        owner, new = LEGACY_POLICY_KEYS[k]
        value = pol.pop(k)
        if owner == backend:
            pol.setdefault(new, value)
    warnings.warn(f"policy: {', '.join(sorted(old))} are old names; each backend's settings now "
                  f"sit under their own names (e.g. policy.gpu_memory_utilization for vllm, "
                  f"policy.base_url for openai); converted", stacklevel=3)
    return pol


def _section(data: dict[str, Any], key: str, example: str) -> dict[str, Any]:
    """``data.pop(key)`` as a dict (absent: empty); anything else is a ConfigError."""
    value = data.pop(key, None) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a section (mapping) like {example}, got {value!r}")
    return dict(value)


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
        bad = next((k for k in data if k not in known), None)
        if bad is None:  # the unknown key is inside a nested section (e.g. policy.lora)
            raise ConfigError(f"{e} ({label})") from None
        owners = sorted(n for n, c in others.items()
                        if bad in {f.name for f in dataclasses.fields(c)})
        if owners:
            raise ConfigError(f"{section}.{bad} is a setting of {', '.join(owners)}, not of "
                              f"{label}: remove it or change {switch}") from None
        raise ConfigError(f"{e} ({label})") from None


POOLS = ("auto", "inprocess", "process", "ray")


def _cross_checks(cfg: Config) -> None:
    if cfg.multiagent.opponent in ("random", "heuristic"):
        opp = cfg.multiagent.opponent
        raise ConfigError(f"multiagent.opponent={opp}: the env plays random and scripted "
                          f"opponents itself: set env.kwargs={{opponent: {opp}}} and leave "
                          "multiagent.opponent=self")
    pool = cfg.env.pool
    if pool not in POOLS and ":" not in pool:
        hint = difflib.get_close_matches(pool, POOLS, n=1)
        raise ConfigError(f"env.pool: {pool!r} is not allowed; choose one of {list(POOLS)} or "
                          "'pkg.module:Class' (an EnvPool of your own)"
                          + (f" (did you mean {hint[0]!r}?)" if hint else ""))
    from agentrl.registry import UnknownEnvError, check_env_id

    try:
        check_env_id(cfg.env.id)
    except UnknownEnvError as e:
        raise ConfigError(f"env.id: {e}") from None
    r = cfg.rollout
    if r.max_new_tokens >= r.max_context_tokens:
        raise ConfigError("rollout.max_new_tokens must be smaller than rollout.max_context_tokens")
    if r.action_format == "tool_call" and r.constrained:
        raise ConfigError("rollout.constrained=true needs admissible action strings; with "
                          "action_format=tool_call set rollout.constrained=false")
    if r.history_policy != "all" and r.context != "full":
        raise ConfigError(f"rollout.history_policy={r.history_policy} applies to "
                          "rollout.context=full (window mode keeps rollout.history turns)")
    if r.action_format == "tool_call":
        from agentrl.toolcalls import TOOL_PARSERS

        if r.tool_parser not in TOOL_PARSERS:
            raise ConfigError(f"rollout.tool_parser: {r.tool_parser!r} is not a parser; choose "
                              f"one of {sorted(TOOL_PARSERS)}")
    _async_checks(cfg)
    _per_role_checks(cfg)
    n = cfg.rollout.groups * cfg.rollout.group_size
    if cfg.train.minibatches > n and cfg.rollout.context == "full":
        raise ConfigError(f"train.minibatches={cfg.train.minibatches} exceeds the {n} trajectories "
                          "of an iteration; lower it")


def _async_checks(cfg: Config) -> None:
    """Asynchronous training only where it is sound: what the algorithm allows
    (``Algorithm.async_rollouts``), an in-process backend with a weight copy, one player, one
    process; remote servers with one process pushing weights."""
    t = cfg.train
    if cfg.policy.backend == "vllm_server" and t.strategy != "single":
        raise ConfigError("policy.backend=vllm_server runs with train.strategy=single (every "
                          "rank would push its weights to the servers): use the vllm or hf "
                          "backend under torchrun")
    if t.max_staleness == 0:
        if t.partial_rollouts:
            raise ConfigError("train.partial_rollouts needs train.max_staleness >= 1")
        return
    from agentrl.registry import get_algorithm

    name = cfg.algorithm.name
    allows = get_algorithm(name).async_rollouts
    if allows == "current":
        raise ConfigError(f"algorithm {name} needs on-policy groups (its rollouts depend on the "
                          "policy being trained): set train.max_staleness=0")
    if allows == "whole" and t.partial_rollouts:
        raise ConfigError(f"algorithm {name} needs every group sampled by one policy version: "
                          "set train.partial_rollouts=false")
    if cfg.policy.backend not in ("hf",) and ":" not in cfg.policy.backend:
        raise ConfigError(f"train.max_staleness={t.max_staleness} needs a second copy of the "
                          f"weights to generate with; policy.backend={cfg.policy.backend} does "
                          "not have one here: use policy.backend=hf or train.max_staleness=0")
    if cfg.multiagent.opponent != "self":
        raise ConfigError("train.max_staleness >= 1 does not support fixed or league "
                          "opponents (multiagent.opponent): set train.max_staleness=0")
    if t.strategy != "single":
        raise ConfigError(f"train.max_staleness >= 1 runs with train.strategy=single; under "
                          f"torchrun ({t.strategy}) set train.max_staleness=0")


def _per_role_checks(cfg: Config) -> None:
    """``multiagent.policies=per_role``: adapters on one model in this process, and a game."""
    if cfg.multiagent.policies != "per_role":
        return
    pre = "multiagent.policies=per_role"
    if cfg.policy.lora is None:
        raise ConfigError(f"{pre} trains one LoRA adapter per role: set policy.lora (e.g. "
                          "policy.lora={r: 8, alpha: 16})")
    if cfg.policy.backend != "hf":
        raise ConfigError(f"{pre} switches adapters between generate calls on the learner's "
                          f"own model: set policy.backend=hf (not {cfg.policy.backend})")
    if cfg.train.strategy != "single":
        raise ConfigError(f"{pre} runs in one process: set train.strategy=single (not "
                          f"{cfg.train.strategy})")
    if cfg.train.max_staleness:
        raise ConfigError(f"{pre} generates with the learner's own adapters: set "
                          "train.max_staleness=0")
    if cfg.multiagent.opponent == "league":
        raise ConfigError(f"{pre}: league snapshots hold one policy, not one per role: use "
                          "multiagent.opponent=self or a checkpoint")
    from agentrl.registry import ENVS, load_builtin_envs

    load_builtin_envs()
    entry = ENVS.get(cfg.env.id)
    if entry is None or not entry.multiagent:
        raise ConfigError(f"{pre} needs a multi-agent env (registered with multiagent=True); "
                          f"{cfg.env.id} is single-agent: use multiagent.policies=shared")


#: Keys of the ``env`` section that describe one particular env: a config file's values for
#: them are dropped when ``env.id`` is switched to another env (see `layer_config`).
ENV_SPECIFIC_KEYS = ("kwargs", "eval_kwargs", "train_seeds")


def layer_config(file_data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Merge a config file, its ``key=value`` overrides and the env's recommended settings.

    Precedence, lowest first: dataclass defaults < the env's recommended settings < the
    config file < the overrides. The recommended settings (`agentrl.registry.register_env`)
    only take part when the file does not speak for the env being run:

    - the file names ``env.id`` and no override changes it: the file is taken as written;
    - an override picks another env (``agentrl train env.id=X``, e.g. on the quickstart):
      X's recommended settings replace the file's settings for its own env, namely
      ``env.kwargs``, ``env.eval_kwargs``, ``env.train_seeds`` and every key X recommends
      (decoding, action format, turn limit, prompt...); the file's other settings
      (algorithm, training budget, model) are kept;
    - the file names no env: the default env's recommended settings sit under the file.

    Sections merge key by key; a value, including a mapping such as ``env.kwargs``, replaces
    the lower layer's value whole (``env.kwargs.level=3`` sets one key inside it).
    """
    from agentrl.registry import UnknownEnvError, check_env_id, recommended_settings

    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in file_data.items()}
    pairs = parse_overrides(overrides)
    named = isinstance(data.get("env"), dict) and "id" in data["env"]
    file_env = str(data["env"]["id"]) if named else _DEFAULT_ENV_ID
    env_id = file_env
    for k, v in pairs:  # the last override of env.id (or of the whole env section) wins
        if k == "env.id":
            env_id = str(v)
        elif k == "env" and isinstance(v, dict) and "id" in v:
            env_id = str(v["id"])
    try:
        check_env_id(env_id)
    except UnknownEnvError as e:
        raise ConfigError(f"env.id: {e}") from None
    merged: dict[str, Any] = {}
    if env_id != file_env or not named:
        merged = recommended_settings(env_id)
        if env_id != file_env:
            for sec, keys in [("env", ENV_SPECIFIC_KEYS), *merged.items()]:
                if isinstance(data.get(sec), dict):
                    for k in keys:
                        data[sec].pop(k, None)
    for k, v in data.items():
        if isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k].update(v)
        else:
            merged[k] = v
    for k, v in pairs:
        _set_dotted(merged, k, v)
    return merged


def load_config(path: str | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (``None`` = the embedded quickstart) and apply ``key=value``
    overrides, over the recommended settings of the chosen env (`layer_config`)."""
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
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not UTF-8 text ({e}); save it as UTF-8") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return config_from_dict(layer_config(data, overrides or []))


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
