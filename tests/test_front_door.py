"""User code imports from `agentrl` itself: the front door exports every public name, lightly,
and the examples and README snippets use nothing behind it (so the layout can change)."""

from __future__ import annotations

import ast
import glob
import os
import re
import subprocess
import sys

import agentrl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: what user code may import besides `agentrl` itself (documented subpackages)
DOCUMENTED = {"agentrl", "agentrl.algorithms.functional", "agentrl.testing", "agentrl.envs",
              "agentrl.policies", "agentrl.algorithms", "agentrl.envs.hub"}


def _agentrl_imports(source: str) -> list[str]:
    """Every ``agentrl...`` module that ``source`` imports (``from agentrl.x import y`` counts
    ``agentrl.x.y`` when that is a documented subpackage, as ``from agentrl.algorithms import
    functional`` does)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.split(".")[0] == "agentrl"]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "agentrl":
            subs = [f"{node.module}.{a.name}" for a in node.names]
            out += [s for s in subs if s in DOCUMENTED] or [node.module]
    return out


def test_every_public_name_resolves() -> None:
    for name in agentrl.__all__:
        assert getattr(agentrl, name) is not None, name
    assert agentrl.Trainer.__module__ == "agentrl.trainer"
    assert agentrl.check_env.__name__ == "check_env"


def test_import_is_light() -> None:
    """``import agentrl`` pulls in neither torch nor transformers (the names load on use)."""
    code = "import sys, agentrl; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]", out


def test_unknown_name_is_an_attribute_error() -> None:
    try:
        agentrl.Trainr  # noqa: B018
    except AttributeError as e:
        assert "Trainr" in str(e)
    else:
        raise AssertionError("agentrl.Trainr resolved")


def test_examples_import_only_the_front_door() -> None:
    files = sorted(glob.glob(os.path.join(ROOT, "examples", "custom_*.py")))
    assert len(files) >= 5
    bad = {}
    for path in files:
        with open(path, encoding="utf-8") as f:
            mods = _agentrl_imports(f.read())
        assert mods, path  # each example uses agentrl
        if [m for m in mods if m not in DOCUMENTED]:
            bad[os.path.basename(path)] = [m for m in mods if m not in DOCUMENTED]
    assert not bad, bad


def test_readme_snippets_import_only_the_front_door() -> None:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)
    mods = [m for b in blocks for m in _agentrl_imports(b)]
    assert mods, "README has python snippets that import agentrl"
    assert set(mods) <= DOCUMENTED, sorted(set(mods) - DOCUMENTED)


def test_the_import_checker_sees_a_deep_import() -> None:
    assert _agentrl_imports("from agentrl.trainer import Trainer") == ["agentrl.trainer"]
    assert _agentrl_imports("from agentrl.algorithms import functional as Fn") == [
        "agentrl.algorithms.functional"]
