"""Evaluation: success rates over fixed held-out seeds, per task type, with 95% intervals.

Two entry points:

- `evaluate(engine, seeds, ...)`: the trainer's held-out evaluation (``runs/x/eval/*.json``).
- `agentrl eval TARGET [TARGET ...]` (`run_eval_command`): evaluate checkpoints, runs (their
  latest checkpoint), model paths / hub names, a config's untrained initial policy, or a served
  OpenAI-compatible endpoint, on the same env split and seeds, and print one column per target.

Numbers reported for each target: success rate as the mean over ``repeats`` passes over the
seeds, ± the sample std across repeats, and a 95% Wilson interval over all episodes (with
repeats > 1 the episodes of one seed are correlated, so read that interval as optimistic);
pass@k (a seed counts if any of its k repeats succeeded); the same per task type; score (if
the env reports one), return, turns, invalid-action rate, truncated-reply rate and the
termination reasons. By default the sampler is seeded exactly as the trainer seeds its own
evaluation, so evaluating a run's final checkpoint reproduces ``runs/x/eval/final.json``.

The package: `episodes` (the numbers and the in-loop evaluation), `command` (`agentrl eval`),
`games` (win/draw/loss, Elo, opponents).
"""

from agentrl.evaluate.command import (
    EvalError,
    EvalSettings,
    EvalTarget,
    add_eval_arguments,
    eval_main,
    evaluate_target,
    format_markdown,
    format_table,
    parse_seeds,
    resolve_target,
    run_eval_command,
    table_rows,
    untrained_target,
    write_outputs,
)
from agentrl.evaluate.episodes import EVAL_SAMPLER_SEED, eval_line, evaluate, summarize

__all__ = ["EVAL_SAMPLER_SEED", "EvalError", "EvalSettings", "EvalTarget", "add_eval_arguments",
           "eval_line", "eval_main", "evaluate", "evaluate_target", "format_markdown", "format_table",
           "parse_seeds", "resolve_target", "run_eval_command", "summarize", "table_rows",
           "untrained_target", "write_outputs"]
