"""The built wheel maps envs/, policies/, algorithms/ to agentrl.* and imports without the repo."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import sysconfig
import zipfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_wheel_contains_and_imports_subpackages(tmp_path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path / "dist"), REPO], check=True)
    (whl,) = glob.glob(str(tmp_path / "dist" / "agentrl-*.whl"))
    names = zipfile.ZipFile(whl).namelist()
    for mod in ("agentrl/envs/__init__.py", "agentrl/policies/hf.py",
                "agentrl/algorithms/functional.py", "agentrl/data/quickstart.yaml",
                "agentrl/testing/__init__.py"):
        assert mod in names, mod
    assert not any(n.startswith(("envs/", "algorithms/", "policies/")) for n in names)
    # every sub-package in the source tree made it into the wheel
    for top in ("envs", "policies", "algorithms"):
        for init in glob.glob(os.path.join(REPO, top, "**", "__init__.py"), recursive=True):
            rel = os.path.relpath(init, REPO).replace(os.sep, "/")
            assert f"agentrl/{rel}" in names, f"{rel} missing from the wheel (pyproject packages)"
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(target), whl], check=True)
    # -S: no .pth processing, so the editable install of the repo is invisible; dependencies
    # come from this interpreter's site-packages, agentrl only from the wheel.
    code = (f"import sys; sys.path[:0] = [{str(target)!r}, "
            f"{sysconfig.get_paths()['purelib']!r}, {sysconfig.get_paths()['platlib']!r}]\n"
            "import agentrl, agentrl.envs, agentrl.policies.hf, agentrl.algorithms\n"
            "from agentrl.config import load_config\n"
            "assert load_config(None).algorithm.name == 'gigpo'\n"
            "print(agentrl.__file__)")
    out = subprocess.run([sys.executable, "-S", "-c", code], check=True, capture_output=True,
                         text=True, cwd=str(tmp_path)).stdout.strip()
    assert out.startswith(str(target)), out
