"""Tool-use environment: real tools (BM25 search, calculator, sandboxed Python) and questions
with verifiable answers. `ToolUseEnv` is registered as ``agentrl/ToolUse-v0``."""

from agentrl.envs.tooluse.env import ToolUseEnv
from agentrl.envs.tooluse.kb import KnowledgeBase, Task, answers_match, normalize_answer
from agentrl.envs.tooluse.sandbox import SandboxResult, SandboxUnavailable, run_python
from agentrl.envs.tooluse.tools import BM25Search, CalculatorError, calculate

__all__ = ["BM25Search", "CalculatorError", "KnowledgeBase", "SandboxResult",
           "SandboxUnavailable", "Task", "ToolUseEnv", "answers_match", "calculate", "normalize_answer", "run_python"]
