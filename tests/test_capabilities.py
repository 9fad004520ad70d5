"""The core reads what a policy backend can do from its declared capabilities, never from its
name: no backend name appears in agentrl/ outside the backend table (policies/__init__.py)."""

from __future__ import annotations

import ast
import os

import pytest

from agentrl.config import ConfigError, load_config
from agentrl.policies import BACKENDS, backend_class
from agentrl.policies.base import Policy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORRIDOR = ["env.id=agentrl/TextWorld-CoinCollector-v0"]


def backend_names_in(folder: str) -> list[str]:
    """``file:line 'name'`` for every string constant equal to a backend name under
    ``folder`` (f-string parts included)."""
    out = []
    for dirpath, dirnames, files in os.walk(folder):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for f in files:
            if not f.endswith(".py"):
                continue
            path = os.path.join(dirpath, f)
            with open(path, encoding="utf-8") as fh:
                tree = ast.parse(fh.read(), path)
            out += [f"{os.path.relpath(path, ROOT)}:{n.lineno} {n.value!r}"
                    for n in ast.walk(tree)
                    if isinstance(n, ast.Constant) and n.value in BACKENDS]
    return out


def test_no_backend_name_in_the_core() -> None:
    found = backend_names_in(os.path.join(ROOT, "agentrl"))
    assert not found, "backend names in agentrl/ (declare a capability on Policy instead):\n" \
        + "\n".join(found)


def test_the_name_check_finds_names(tmp_path) -> None:
    (tmp_path / "m.py").write_text('if cfg.policy.backend != "hf":\n    x = f"{a}vllm"\n')
    (tmp_path / "n.py").write_text('y = ("vllm_server", "hf x")\n')
    found = [f.rpartition(" ")[2] for f in backend_names_in(str(tmp_path))]
    assert sorted(found) == ["'hf'", "'vllm'", "'vllm_server'"]  # not "hf x"


def test_builtin_backends_declare_their_capabilities() -> None:
    caps = {name: (backend_class(name).shares_learner_module,
                   backend_class(name).switches_adapters, backend_class(name).supports_async,
                   backend_class(name).single_process) for name in BACKENDS}
    # (shares the learner's module, switches adapters, runs ahead async, one process only)
    assert caps == {"hf": (True, True, True, False), "vllm": (False, False, False, False),
                    "openai": (False, False, False, False),
                    "vllm_server": (False, False, False, True),
                    "expert": (False, False, True, False)}
    assert (Policy.supports_async, Policy.shares_learner_module) == (True, False)


class _Ahead(Policy):
    """A user backend that says it can run ahead and switch adapters."""

    switches_adapters = True


class _Pinned(Policy):
    """A user backend that must run in one process."""

    single_process = True
    supports_async = False


def test_config_checks_read_capabilities() -> None:
    """A user backend is judged by what it declares, like the built-ins."""
    me = f"{__name__}:"
    cfg = load_config(None, CORRIDOR + [f"policy.backend={me}_Ahead", "train.max_staleness=1"])
    assert cfg.train.max_staleness == 1
    with pytest.raises(ConfigError, match="needs a second copy of the weights"):
        load_config(None, CORRIDOR + [f"policy.backend={me}_Pinned", "train.max_staleness=1"])
    with pytest.raises(ConfigError, match="runs with train.strategy=single"):
        load_config(None, CORRIDOR + [f"policy.backend={me}_Pinned", "train.strategy=ddp"])
