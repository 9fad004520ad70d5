"""No function in the core (agentrl/) runs over 60 lines: a longer one has a seam to cut at."""

from __future__ import annotations

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_LINES = 60


def long_functions(source: str, name: str) -> list[str]:
    """``name:line function (N lines)`` for each function of ``source`` over `MAX_LINES`
    (decorators excluded; nested functions counted in their parent and on their own)."""
    out = []
    for node in ast.walk(ast.parse(source, name)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = node.end_lineno - node.lineno + 1
            if n > MAX_LINES:
                out.append(f"{name}:{node.lineno} {node.name} ({n} lines)")
    return out


def test_no_function_over_60_lines_in_agentrl() -> None:
    found = []
    for dirpath, dirnames, files in os.walk(os.path.join(ROOT, "agentrl")):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for f in sorted(files):
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                with open(path, encoding="utf-8") as fh:
                    found += long_functions(fh.read(), os.path.relpath(path, ROOT))
    assert not found, "functions over 60 lines:\n" + "\n".join(found)


def test_the_length_check_counts_lines() -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(60))
    assert long_functions(f"def f():\n{body}\n", "m.py") == ["m.py:1 f (61 lines)"]
    assert long_functions(f"def f():\n{body[:-len(chr(10) + '    x59 = 59')]}\n", "m.py") == []
