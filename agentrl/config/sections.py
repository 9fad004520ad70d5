"""The config's sections: one typed dataclass per YAML section, each field with its help text and
bounds (`agentrl.fields.F`), and `Config`, the whole run. The ``algorithm:`` and ``policy:``
sections are the named algorithm's and backend's own dataclasses (`agentrl.config.load`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from agentrl.fields import F
from agentrl.policies.base import PolicyConfig

DEFAULT_TEMPLATE = (
    "{task}\n{history}Current observation: {observation}\n"
    "Admissible actions: {actions}\n"
    "Think briefly, then give your action inside <action></action>."
)


_DEFAULT_ENV_ID = "agentrl/TextWorld-CoinCollector-v0"


@dataclass
class CurriculumConfig:
    """``env.curriculum``: how training tasks are drawn (`agentrl.rollout.curriculum`)."""

    kind: Literal["uniform", "success"] = F("uniform", "'uniform': seeds drawn uniformly from "
                                            "[0, env.train_seeds); 'success': by recent success")
    prior: float = F(0.5, "success: the rate a task never tried starts at", ge=0, le=1)
    decay: float = F(0.6, "success: weight of the old rate per update (exponential average "
                     "of each episode's success)", ge=0, lt=1)
    floor: float = F(0.02, "success: weight added to every active task (failures come back)",
                     gt=0)
    retire_at: float = F(0.9, "success: a task retires at this smoothed success ...", gt=0,
                         le=1)
    min_attempts: int = F(4, "... after at least this many episodes", ge=1)
    revisit: float = F(0.1, "success: share of draws that go to retired tasks", ge=0, le=1)


@dataclass
class EnvConfig:
    id: str = F(_DEFAULT_ENV_ID, "registered env id (`agentrl envs` lists them)")
    kwargs: dict[str, Any] = F(default_factory=dict, help="constructor kwargs for training envs")
    eval_kwargs: dict[str, Any] = F(default_factory=dict,
                                    help="kwargs merged over `kwargs` for evaluation envs")
    train_seeds: int = F(100_000, "training episodes draw seeds from [0, train_seeds)", ge=1)
    pool: str = F("auto", "where envs run: 'auto' (worker processes for envs registered with "
                  "isolate=True: ScienceWorld's JVM, ALFWorld's planner; else this process), "
                  "'inprocess', 'thread' (this process, many requests at once: envs that wait "
                  "on networks or tools), 'process', 'ray' (Ray actors, see the ray: section) "
                  "or 'pkg.module:Class' (your own EnvPool)")
    threads: int = F(0, "thread pool: requests in flight at once (0 = one per env slot)", ge=0)
    envs_per_worker: int = F(1, "process/ray pool: envs per worker process or actor (they share its JVM, "
                             "and a crash or timeout ends all of its episodes)", ge=1)
    step_timeout: float = F(60.0, "process/ray/thread pool: seconds before a step counts as hung "
                            "(its worker is killed and replaced; a thread is abandoned)", gt=0)
    reset_timeout: float | None = F(None, "process/ray pool: seconds a reset may take (null = "
                                    "step_timeout)", gt=0)
    build_timeout: float = F(600.0, "process/ray pool: seconds a worker may take to build an env "
                             "(load games, start a JVM) before its first reset", gt=0)
    recycle_after: int = F(0, "replace an env (in-process) or a worker after this many "
                           "episodes, to bound memory leaks in env code (0 = never)", ge=0)
    curriculum: CurriculumConfig = F(default_factory=CurriculumConfig,
                                     help="how training tasks are drawn: {kind: uniform} or "
                                     "{kind: success} (by recent success, agentrl.rollout.curriculum)")


@dataclass
class RayConfig:
    """Where ``env.pool=ray`` places its env actors (`agentrl.envpool.ray`)."""

    address: str = F("", "'' = start a local Ray instance for this run (stopped with it); "
                     "'auto' or 'host:port' = join a running cluster (`ray start --head`)")
    num_cpus: int = F(0, "local instance only: CPUs it offers the env actors (0 = this "
                      "machine's)", ge=0)
    worker_cpus: float = F(0.0, "CPUs reserved per env actor (env.envs_per_worker envs each); "
                           "Ray places actors where they fit. 0 = auto: each pool takes at most "
                           "half the CPUs free, so the evaluation pool fits beside the training "
                           "pool: 1 CPU per actor while they last, else envs packed into fewer "
                           "actors (down to one with a fraction of a CPU)", ge=0)


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
                         "JSON object as Llama 3.1; more via agentrl.rollout.toolcalls."
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


#: Default of ``train.logits_chunk``: 2^24 float32 values (64 MB) of logits at once, 341 action
#: positions at a 49k vocabulary, 110 at 152k; a small vocabulary keeps a micro-batch in one.
LOGITS_CHUNK = 1 << 24


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
    logits_chunk: int = F(LOGITS_CHUNK, "vocabulary values (action positions x vocab) of float32 "
                          "logits formed at once; larger chunks are formed again in the "
                          "backward instead of kept (0 = a micro-batch's logits at once)", ge=0)
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
        "single", "learner: one process ('single'), or under `agentrl launch --standalone "
        "--nproc_per_node=N train CONFIG` (torchrun): replicated weights with all-reduced gradients ('ddp') or "
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
                           "correct for the lag (`agentrl.rollout.ahead`)", ge=0)
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
    """Thresholds for the silent-failure alarms (`agentrl.run.alarms`); a threshold of 0 turns
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
    """Who holds the seats of a multi-agent env (`agentrl.rollout.multiagent`); ignored by single-agent
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


def eval_rollout_config(cfg: Config) -> RolloutConfig:
    """``cfg.rollout`` with the evaluation temperature (``eval.temperature``, if set)."""
    if cfg.eval.temperature is None:
        return cfg.rollout
    return dataclasses.replace(cfg.rollout, temperature=cfg.eval.temperature)


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """The resolved config as plain data (saved with every run and checkpoint)."""
    d = dataclasses.asdict(cfg)
    d["algorithm"] = {"name": cfg.algorithm.name, **{k: v for k, v in
                                                     dataclasses.asdict(cfg.algorithm).items()
                                                     if k != "name"}}
    return d


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
