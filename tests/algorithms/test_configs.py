"""Every registered algorithm ships a tiny CPU config (``configs/textworld_<name>.yaml``) and
the paper configs name real algorithms with GPU settings. Loading every file in ``configs/``
is `tests/config/test_config.py::test_every_shipped_config_loads`."""

from __future__ import annotations

import glob
import os

import pytest

import agentrl.algorithms  # noqa: F401  (registration)
from agentrl.config import load_config
from agentrl.registry import ALGORITHMS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_every_algorithm_has_a_tiny_cpu_config(name: str) -> None:
    cfg = load_config(os.path.join(ROOT, "configs", f"textworld_{name}.yaml"))
    assert cfg.algorithm.name == name
    assert cfg.policy.model == "tiny" and cfg.policy.backend == "hf"


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*qwen2.5*.yaml"))))
def test_paper_configs_use_the_papers_scale(path: str) -> None:
    cfg = load_config(path)
    assert cfg.policy.model.startswith("Qwen/Qwen2.5-") and cfg.policy.device == "cuda"
    assert cfg.rollout.temperature == 1.0 and cfg.train.lr <= 3e-6
    # verl-agent family: 8 rollouts per task and 16 (or 32, SPEAR) task groups, history 2
    if cfg.env.id != "agentrl/ToolUse-v0":
        assert cfg.rollout.group_size == 8 and cfg.rollout.groups in (16, 32)
        assert cfg.rollout.history == 2
        assert cfg.rollout.max_turns == {"agentrl/ALFWorld-v0": 50, "agentrl/WebShop-v0": 15,
                                         "agentrl/ScienceWorld-v0": 30}[cfg.env.id]
