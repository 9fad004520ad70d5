"""The non-sandboxed tools: a safe arithmetic calculator and BM25 search over a local corpus."""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# ----------------------------------------------------------------------------- calculator

_BINOPS: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNOPS: dict[type, Callable[[float], float]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCS: dict[str, Callable[..., float]] = {
    "abs": abs, "round": round, "min": min, "max": max, "sqrt": math.sqrt, "log": math.log,
    "log10": math.log10, "log2": math.log2, "exp": math.exp, "floor": math.floor,
    "ceil": math.ceil, "sin": math.sin, "cos": math.cos, "tan": math.tan,
    "factorial": math.factorial, "gcd": math.gcd,
}
_CONSTS = {"pi": math.pi, "e": math.e}
MAX_EXPR_CHARS = 500
_MAX_POW_EXPONENT = 10_000
_MAX_INT_DIGITS = 1000
_MAX_FACTORIAL = 300
_THOUSANDS = re.compile(r"(?<![\d.])\d{1,3}(?:,\d{3})+(?![\d])")


class CalculatorError(ValueError):
    """The expression is not arithmetic the calculator accepts; the message says why."""


def calculate(expr: str) -> float | int:
    """Evaluate an arithmetic expression without ``eval``: numbers, ``+ - * / // % **``
    (``^`` means power), parentheses, ``pi``/``e`` and a few math functions (sqrt, log, ...).

    Raises:
        CalculatorError: for anything else, division by zero, or a result too large.
    """
    text = expr.strip()
    if not text:
        raise CalculatorError("empty expression")
    if len(text) > MAX_EXPR_CHARS:
        raise CalculatorError(f"expression longer than {MAX_EXPR_CHARS} characters")
    # People (and LLMs) write 2^3 for a power and 1,234 for a thousand-separated number.
    text = _THOUSANDS.sub(lambda m: m.group(0).replace(",", ""), text).replace("^", "**")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError) as e:
        raise CalculatorError(f"not a valid expression: {e.msg if isinstance(e, SyntaxError) else e}"
                              ) from None
    try:
        return _eval(tree.body, depth=0)
    except ZeroDivisionError:
        raise CalculatorError("division by zero") from None
    except OverflowError:
        raise CalculatorError("result too large") from None
    except RecursionError:
        raise CalculatorError("expression nested too deeply") from None
    except (TypeError, ValueError) as e:  # math domain errors, min() of nothing, ...
        if isinstance(e, CalculatorError):
            raise
        raise CalculatorError(str(e)) from None


def _eval(node: ast.AST, depth: int) -> float | int:
    if depth > 100:
        raise CalculatorError("expression nested too deeply")
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise CalculatorError(f"only numbers are allowed, not {node.value!r}")
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _eval(node.left, depth + 1), _eval(node.right, depth + 1)
        # Estimate a power's size before computing it: 9**9**9 would take the process hours.
        if isinstance(node.op, ast.Pow) and abs(left) > 1 and (
                abs(right) > _MAX_POW_EXPONENT
                or abs(right) * math.log2(abs(left)) > _MAX_INT_DIGITS * 3.33):
            raise CalculatorError("result too large")
        value = _BINOPS[type(node.op)](left, right)
        return _check_size(value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNOPS:
        return _UNOPS[type(node.op)](_eval(node.operand, depth + 1))
    if isinstance(node, ast.Name):
        if node.id in _CONSTS:
            return _CONSTS[node.id]
        raise CalculatorError(f"unknown name {node.id!r}")
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS:
        if node.keywords:
            raise CalculatorError("keyword arguments are not allowed")
        args = [_eval(a, depth + 1) for a in node.args]
        if node.func.id == "factorial" and args and args[0] > _MAX_FACTORIAL:
            raise CalculatorError(f"factorial is limited to n <= {_MAX_FACTORIAL}")
        return _check_size(_FUNCS[node.func.id](*args))
    if isinstance(node, ast.Call):
        raise CalculatorError("unknown function; allowed: " + ", ".join(sorted(_FUNCS)))
    raise CalculatorError(f"{type(node).__name__} is not allowed in a calculation")


def _check_size(value: float | int) -> float | int:
    if isinstance(value, complex):
        raise CalculatorError("the result is not a real number")
    if isinstance(value, int) and value.bit_length() > _MAX_INT_DIGITS * 3.33:
        raise CalculatorError("result too large")
    if isinstance(value, float) and not math.isfinite(value):
        raise CalculatorError("result too large")
    return value


def format_number(value: float | int) -> str:
    """Render a result the way a person would write it: integral values without ``.0``, floats
    with up to 10 significant digits and no trailing zeros."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.10g}"
    return str(value)


# ----------------------------------------------------------------------------- search

_TOKEN = re.compile(r"[a-z0-9]+")


def tokenize(text: str) -> list[str]:
    """Lower-case alphanumeric tokens (BM25's vocabulary)."""
    return _TOKEN.findall(text.lower())


@dataclass(frozen=True)
class Document:
    """One searchable document: a title and its text."""

    title: str
    text: str


class BM25Search:
    """BM25 (Okapi, via ``rank-bm25``) over a list of documents; ties broken by corpus order
    so results are deterministic."""

    def __init__(self, docs: Sequence[Document], top_k: int = 3) -> None:
        try:
            from rank_bm25 import BM25Okapi
        except ImportError as e:  # an extra, not a core dependency
            raise ImportError("ToolUse search needs rank-bm25: pip install 'agentrl[tooluse]'"
                              ) from e
        self.docs, self.top_k = list(docs), top_k
        self._bm25 = BM25Okapi([tokenize(f"{d.title} {d.text}") for d in self.docs])

    def search(self, query: str, k: int | None = None) -> list[Document]:
        """The ``k`` best documents for ``query`` (none when no query term is in the corpus)."""
        terms = tokenize(query)
        if not terms:
            return []
        scores = self._bm25.get_scores(terms)
        order = sorted(range(len(self.docs)), key=lambda i: (-scores[i], i))
        return [self.docs[i] for i in order[: k or self.top_k] if scores[i] > 0]

    def render(self, query: str, k: int | None = None) -> str:
        """Search results as observation text."""
        return self.format(query, self.search(query, k))

    @staticmethod
    def format(query: str, hits: Sequence[Document]) -> str:
        """``hits`` of ``query`` as observation text."""
        if not hits:
            return f"No results for {query!r}."
        return "\n".join(f"[{i}] {d.title}: {d.text}" for i, d in enumerate(hits, 1))
