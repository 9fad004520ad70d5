"""Rollout: episodes from envs and a policy (engine, multi-agent engine and lineups, context modes, prompts, chat templates, tool calls, rollouts ahead of the learner)."""
