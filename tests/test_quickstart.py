"""The README's promise as a test (slow, ~6 minutes on 2 cores): the embedded quickstart takes
held-out success from at most 0.3 before training to at least 0.8 after.
Run: pytest -m slow tests/test_quickstart.py."""

from __future__ import annotations

import pytest

from agentrl.config import load_config
from agentrl.trainer import Trainer


@pytest.mark.slow
def test_quickstart_learns(tmp_path) -> None:
    cfg = load_config(None, [f"output_dir={tmp_path}", "log.progress=false"])
    out = Trainer(cfg).train()
    before, after = out["before"]["success_rate"], out["final"]["success_rate"]
    print(f"quickstart held-out success {before:.3f} -> {after:.3f}")
    assert before <= 0.3
    assert after >= 0.8
