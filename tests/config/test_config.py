"""Config: strict keys, types and ranges with messages that name the fix; overrides; files."""

import glob
import os

import pytest

from agentrl.config import PLUGIN_KEYS, ConfigError, config_from_dict, config_to_dict, load_config


def test_quickstart_loads_and_roundtrips() -> None:
    cfg = load_config(None)
    assert cfg.algorithm.name == "gigpo"
    again = config_from_dict(config_to_dict(cfg))
    assert config_to_dict(again) == config_to_dict(cfg)


@pytest.mark.parametrize("path", sorted(glob.glob("configs/*.yaml")))
def test_every_shipped_config_loads(path: str) -> None:
    load_config(path)


def test_typo_key_suggests_the_right_one() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'train.lrr'; did you mean 'train.lr'"):
        load_config(None, ["train.lrr=1e-3"])
    with pytest.raises(ConfigError, match="did you mean 'rollout'"):
        load_config(None, ["rolout.groups=2"])
    with pytest.raises(ConfigError, match="algorithm.clip_hgh.*did you mean 'algorithm.clip_high'"):
        load_config(None, ["algorithm.clip_hgh=0.3"])


def test_wrong_type_names_key_and_expected_type() -> None:
    with pytest.raises(ConfigError, match=r"train.lr: expected a number"):
        load_config(None, ["train.lr=fast"])
    with pytest.raises(ConfigError, match=r"rollout.groups: expected an integer"):
        load_config(None, ["rollout.groups=2.5"])
    with pytest.raises(ConfigError, match=r"rollout.constrained: expected true or false"):
        load_config(None, ["rollout.constrained=maybe"])


def test_impossible_values_are_rejected_with_the_bound() -> None:
    with pytest.raises(ConfigError, match=r"rollout.group_size: 0 is out of range; it must be >= 1"):
        load_config(None, ["rollout.group_size=0"])
    with pytest.raises(ConfigError, match=r"train.lr: -0.1 is out of range"):
        load_config(None, ["train.lr=-0.1"])
    with pytest.raises(ConfigError, match=r"rollout.context: 'ful' is not allowed.*did you mean 'full'"):
        load_config(None, ["rollout.context=ful"])
    with pytest.raises(ConfigError, match="unknown algorithm 'gpro'; did you mean 'grpo'"):
        load_config(None, ["algorithm.name=gpro"])


def test_overrides_apply_and_parse_types() -> None:
    cfg = load_config(None, ["train.lr=1e-3", "rollout.group_size=4", "env.kwargs={level: 3}",
                             "rollout.stop=[END]", "algorithm.name=ppo", "algorithm.gamma=0.9"])
    assert cfg.train.lr == 1e-3 and cfg.rollout.group_size == 4
    assert cfg.env.kwargs == {"level": 3} and cfg.rollout.stop == ["END"]
    assert cfg.algorithm.name == "ppo" and cfg.algorithm.gamma == 0.9


def test_bad_file_and_bad_yaml(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "nope.yaml"))
    p = tmp_path / "bad.yaml"
    p.write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(p))


def test_cli_reports_config_errors_before_any_work(capsys) -> None:
    from agentrl.cli import main

    assert main(["train", "train.lrr=1"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'train.lr'" in err


def test_key_of_another_algorithm_names_its_owner() -> None:
    with pytest.raises(ConfigError, match="step_weight is a setting of gigpo, not of algorithm 'grpo'"):
        load_config("configs/textworld_gigpo.yaml", ["algorithm.name=grpo"])


def test_policy_section_is_the_backends_own() -> None:
    cfg = load_config(None, ["policy.backend=vllm", "policy.sleep_level=1",
                             "policy.gpu_memory_utilization=0.5"])
    assert type(cfg.policy).__name__ == "VLLMConfig" and cfg.policy.sleep_level == 1
    assert cfg.policy.model == "tiny"  # the shared settings are still there
    again = config_from_dict(config_to_dict(cfg))
    assert config_to_dict(again) == config_to_dict(cfg)
    with pytest.raises(ConfigError, match="policy.sleep_level is a setting of vllm, not of "
                                          "backend 'hf': remove it or change policy.backend"):
        load_config(None, ["policy.sleep_level=1"])
    with pytest.raises(ConfigError, match="did you mean 'policy.sleep_level'"):
        load_config(None, ["policy.backend=vllm", "policy.sleep_levl=1"])
    with pytest.raises(ConfigError, match=r"policy.sleep_level: 3 is out of range"):
        load_config(None, ["policy.backend=vllm", "policy.sleep_level=3"])
    with pytest.raises(ConfigError, match="backend openai needs policy.base_url"):
        load_config(None, ["policy.backend=openai"])
    cfg = load_config(None, ["policy.backend=openai", "policy.base_url=http://h:1/v1"])
    assert cfg.policy.api_key_env == "OPENAI_API_KEY"
    with pytest.raises(ConfigError, match="policy.backend: unknown backend 'vlm'; did you "
                                          "mean 'vllm'"):
        load_config(None, ["policy.backend=vlm"])
    with pytest.raises(ConfigError, match="policy.backend: policy backend 'no.such:Thing' "
                                          "cannot be loaded"):
        load_config(None, ["policy.backend=no.such:Thing"])


def test_env_pool_settings_are_checked() -> None:
    cfg = load_config(None, ["env.pool=process", "env.envs_per_worker=4",
                             "env.reset_timeout=30"])
    assert (cfg.env.pool, cfg.env.envs_per_worker, cfg.env.reset_timeout) == ("process", 4, 30.0)
    assert load_config(None).env.pool == "auto"
    with pytest.raises(ConfigError, match=r"env.pool: 'procss' is not allowed.*did you mean "
                                          "'process'"):
        load_config(None, ["env.pool=procss"])
    with pytest.raises(ConfigError, match="env.envs_per_worker: 0 is out of range"):
        load_config(None, ["env.envs_per_worker=0"])


def test_a_config_saved_with_the_old_flat_backend_keys_still_loads() -> None:
    """A run directory's config.yaml from before each backend had its own policy section
    (every key written, e.g. ``policy.vllm_kv_cache_gb``) loads for ``--resume``."""
    import warnings

    old = {"vllm_gpu_memory_utilization": 0.5, "vllm_sleep_level": 1, "vllm_kv_cache_gb": 3,
           "vllm_enforce_eager": False, "openai_base_url": "http://h/v1", "openai_model": "m",
           "openai_api_key_env": "K"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hf = config_from_dict({"policy": {"backend": "hf", **old}})
        vl = config_from_dict({"policy": {"backend": "vllm", **old, "kv_cache_gb": 2}})
        oa = config_from_dict({"policy": {"backend": "openai", **old}})
    assert not hasattr(hf.policy, "kv_cache_gb") and not hasattr(hf.policy, "base_url")
    assert (vl.policy.gpu_memory_utilization, vl.policy.sleep_level) == (0.5, 1)
    assert vl.policy.kv_cache_gb == 2 and vl.policy.enforce_eager is False  # new name wins
    assert (oa.policy.base_url, oa.policy.served_model, oa.policy.api_key_env) == (
        "http://h/v1", "m", "K")
    assert len(caught) == 3 and "old names" in str(caught[0].message)


@pytest.mark.parametrize("key", PLUGIN_KEYS)
def test_an_untrusted_config_imports_no_plugin(key: str, tmp_path, monkeypatch) -> None:
    """``trust_plugins=False`` (a config saved with a run) refuses every plugin key's
    ``"pkg.module:Class"`` before importing it; an override of the key is the user's."""
    marker = tmp_path / "IMPORTED"
    module = f"planted_{key.replace('.', '_')}"
    (tmp_path / f"{module}.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    section, _, name = key.partition(".")
    saved = tmp_path / "config.yaml"
    saved.write_text(f"{section}:\n  {name}: {module}:Thing\n")
    with pytest.raises(ConfigError, match=f"{key}='{module}:Thing'.*--trust-plugins"):
        load_config(str(saved), trust_plugins=False)
    assert not os.path.exists(marker)
    registered = {"algorithm.name": "grpo", "policy.backend": "hf", "env.pool": "inprocess"}
    cfg = load_config(str(saved), [f"{key}={registered[key]}"], trust_plugins=False)
    assert getattr(getattr(cfg, section), name) == registered[key]
    assert not os.path.exists(marker)


def test_multiagent_combinations_that_cannot_run_are_refused() -> None:
    # AEPO's branching replays single-agent prefixes: refused on every game, with the reason
    for extra in ([], ["multiagent.opponent=league"], ["env.kwargs={opponent: random}"]):
        with pytest.raises(ConfigError, match="algorithm aepo cannot train on the multi-agent "
                           "game agentrl/TicTacToe-v0: its branching"):
            load_config(None, ["env.id=agentrl/TicTacToe-v0", "algorithm.name=aepo", *extra])
    assert load_config(None, ["env.id=agentrl/TicTacToe-v0", "algorithm.name=grpo"])
    assert load_config(None, ["algorithm.name=aepo"])  # single-agent: fine
    # an opponent for a single-agent env would be silently ignored
    with pytest.raises(ConfigError, match="multiagent.opponent=league needs a multi-agent env"):
        load_config(None, ["multiagent.opponent=league"])
