"""Typed, strict configuration: dataclasses, one flat YAML file, dotted ``key=value`` overrides.

    cfg = load_config("configs/quickstart.yaml", ["train.lr=1e-3", "rollout.group_size=4"])

Unknown keys fail with a "did you mean", values are checked for type and range, and every error
names the key and what to put there. Two sections depend on a name: ``algorithm:`` is validated
against the hyperparameter dataclass of the algorithm named in ``algorithm.name``, and
``policy:`` against the config dataclass of the backend named in ``policy.backend``
(`agentrl.policies.BACKENDS`); a key that belongs to another algorithm or backend says so.

The package: `sections` (the dataclasses), `load` (building, overrides, layering), `checks`
(cross-section refusals). Everything public is importable from ``agentrl.config``.
"""

from agentrl.config.checks import POOLS, cross_checks
from agentrl.config.load import (
    ENV_SPECIFIC_KEYS,
    PLUGIN_KEYS,
    apply_overrides,
    build_dataclass,
    config_from_dict,
    layer_config,
    load_config,
    parse_overrides,
    plugin_specs,
)
from agentrl.config.sections import (
    DEFAULT_TEMPLATE,
    LOGITS_CHUNK,
    AlarmConfig,
    Config,
    CurriculumConfig,
    EnvConfig,
    EvalConfig,
    LogConfig,
    MultiAgentConfig,
    RayConfig,
    RolloutConfig,
    TrainConfig,
    config_to_dict,
    describe,
    eval_rollout_config,
)
from agentrl.fields import ConfigError, F
from agentrl.policies.base import PolicyConfig

__all__ = ["POOLS", "ENV_SPECIFIC_KEYS", "PLUGIN_KEYS", "DEFAULT_TEMPLATE", "LOGITS_CHUNK",
           "AlarmConfig", "Config", "CurriculumConfig",
           "ConfigError", "EnvConfig", "EvalConfig", "F", "LogConfig", "MultiAgentConfig",
           "PolicyConfig", "RayConfig", "RolloutConfig", "TrainConfig", "apply_overrides",
           "build_dataclass", "config_from_dict", "config_to_dict", "cross_checks", "describe",
           "eval_rollout_config", "layer_config", "load_config", "parse_overrides",
           "plugin_specs"]
