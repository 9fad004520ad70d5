"""agentrl envs for TRL's ``GRPOTrainer(environment_factory=...)`` (TRL >= 1.16).

TRL's multi-turn environment interface is a class whose instances TRL builds once and reuses:
``reset(**example)`` starts an episode and returns text appended to the prompt, every public
method other than ``reset`` and ``get_reward`` is a tool the model calls (its schema comes
from the type hints and the Google-style docstring), and ``get_reward()`` scores the finished
rollout. `trl_environment` makes such a class for any registered agentrl env:

    from trl import GRPOConfig, GRPOTrainer
    from agentrl.envs.hub.trl import trl_environment

    factory = trl_environment("agentrl/TextWorld-CoinCollector-v0", level=3, num_games=100)
    trainer = GRPOTrainer(model="Qwen/Qwen3-0.6B", environment_factory=factory,
                          args=GRPOConfig(max_steps=100, ...))

The one tool is ``act(action)``: one env step, returning the next observation (with the
admissible actions, where the env lists them). The reward is the episode's return. Episodes
are seeded from the dataset row's ``seed`` column when there is one, else from a counter per
instance. TRL needs a model whose chat template renders tool calls (it checks) and a tokenizer
that parses them back out of generated text; `with_tool_calling` gives a ChatML model (SmolLM2,
whose own template has no tools) both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: A ChatML chat template that renders tools, tool calls and tool results. The tools' JSON
#: schemas go in the system message, with how to call one: a JSON object with ``name`` and
#: ``arguments`` between ``<tool_call>`` and ``</tool_call>``; an assistant turn writes its
#: calls that way and a result comes back as a ``tool`` turn. Each message renders the same
#: whatever follows it (TRL needs the template to be prefix-preserving).
TOOL_CHAT_TEMPLATE = (
    "{% set ns = namespace(system='You are a helpful assistant.', start=0) %}"
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set ns.system = messages[0]['content'] %}{% set ns.start = 1 %}{% endif %}"
    "<|im_start|>system\n{{ ns.system }}"
    "{% if tools %}{{ '\n\nFunctions you can call, as JSON schemas:\n<tools>\n' }}"
    "{% for tool in tools %}{{ (tool['function'] if tool['function'] is defined else tool)"
    " | tojson }}{{ '\n' }}{% endfor %}</tools>\n"
    "Call a function by replying with a JSON object naming it and giving its arguments, "
    "between <tool_call> and </tool_call>:\n"
    "<tool_call>\n{\"name\": \"function_name\", \"arguments\": {\"argument\": \"value\"}}\n"
    "</tool_call>{% endif %}<|im_end|>{{ '\n' }}"
    "{% for message in messages[ns.start:] %}"
    "<|im_start|>{{ message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% endif %}"
    "{% if message['role'] == 'assistant' and message['tool_calls'] is defined"
    " and message['tool_calls'] %}"
    "{% for call in message['tool_calls'] %}"
    "{% set f = call['function'] if call['function'] is defined else call %}"
    "{% if message['content'] or not loop.first %}{{ '\n' }}{% endif %}"
    "<tool_call>\n{\"name\": {{ f['name'] | tojson }}, \"arguments\": "
    "{{ f['arguments'] if f['arguments'] is string else f['arguments'] | tojson }}}\n"
    "</tool_call>{% endfor %}{% endif %}<|im_end|>{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

#: How transformers' ``tokenizer.parse_response`` reads a reply written for
#: `TOOL_CHAT_TEMPLATE` (its ``response_template`` format): text up to ``<|im_end|>`` is the
#: content, each ``<tool_call>`` JSON block a call.
TOOL_RESPONSE_TEMPLATE: dict[str, Any] = {
    "defaults": {"role": "assistant"},
    "start_anchor": "<|im_start|>assistant\n",
    "fields": {
        "tool_calls": {
            "open": "<tool_call>",
            "close_pattern": r"</tool_call>\s*",
            "repeats": True,
            "content": "json",
            "transform": {"type": "function", "function": "{content}"},
        },
        "content": {"close_pattern": r"<\|im_end\|>\s*", "content": "text"},
    },
}


def with_tool_calling(tokenizer: Any) -> Any:
    """``tokenizer`` (a ChatML one: ``<|im_start|>`` / ``<|im_end|>``, e.g. SmolLM2's) with
    `TOOL_CHAT_TEMPLATE` as its chat template and `TOOL_RESPONSE_TEMPLATE` as the
    ``response_template`` its ``parse_response`` reads tool calls with; changed in place and
    returned. Pass it to ``GRPOTrainer(processing_class=...)``."""
    missing = [t for t in ("<|im_start|>", "<|im_end|>") if t not in tokenizer.get_vocab()]
    if missing:
        raise ValueError(f"with_tool_calling needs a ChatML tokenizer; this one lacks {missing}")
    tokenizer.chat_template = TOOL_CHAT_TEMPLATE
    tokenizer.response_template = TOOL_RESPONSE_TEMPLATE
    return tokenizer


class AgentrlTRLEnv:
    """One agentrl env behind TRL's environment interface (see the module docstring)."""

    env_id: str = ""
    env_kwargs: dict[str, Any] = {}

    def __init__(self) -> None:
        from agentrl.registry import make_env

        self._env = make_env(self.env_id, **self.env_kwargs)
        self._episodes, self._return, self._done = 0, 0.0, True
        self.info: dict[str, Any] = {}

    def reset(self, **example: Any) -> str:
        seed = example.get("seed")
        seed = self._episodes if seed is None else int(seed)
        self._episodes += 1
        obs, self.info = self._env.reset(seed=seed)
        self._return, self._done = 0.0, False
        task = self.info.get("task")
        return (f"{task}\n" if task and task not in obs else "") + self._show(obs)

    def act(self, action: str) -> str:
        """Take one action in the environment.

        Args:
            action: The action to take, e.g. one of the admissible actions listed.

        Returns:
            What the environment shows after the action.
        """
        if self._done:
            return "The episode is over."
        obs, reward, terminated, truncated, self.info = self._env.step(str(action))
        self._return += float(reward)
        self._done = bool(terminated or truncated)
        if self._done:
            result = "succeeded" if self.info.get("success") else "ended"
            return f"{obs}\nThe episode {result}."
        return self._show(obs)

    def get_reward(self) -> float:
        """The return of the episode since the last reset."""
        return self._return

    def _show(self, obs: str) -> str:
        return show_observation(obs, self.info)


def show_observation(obs: str, info: dict[str, Any]) -> str:
    """An observation with the env's admissible actions listed, where it has them (what a
    trainer that sees only text is shown: TRL's tool results, verifiers' env responses)."""
    actions = info.get("admissible_actions")
    return f"{obs}\nAdmissible actions: {', '.join(map(str, actions))}" if actions else obs


def trl_environment(env_id: str, **env_kwargs: Any) -> Callable[[], AgentrlTRLEnv]:
    """A class for ``GRPOTrainer(environment_factory=...)`` whose instances play ``env_id``
    made with ``env_kwargs``; an unknown id or a missing package fails here, in one line."""
    from agentrl.registry import check_env_id, missing_requirement

    check_env_id(env_id)
    missing = missing_requirement(env_id)
    if missing:
        raise ImportError(missing)
    name = "".join(c for c in env_id.split("/")[-1].split("-v")[0] if c.isalnum()) or "Env"
    # A class of its own per env: TRL names the reward column after the class.
    return type(f"{name}TRLEnv", (AgentrlTRLEnv,),
                {"env_id": env_id, "env_kwargs": dict(env_kwargs),
                 "__module__": __name__, "__doc__": f"{env_id} for TRL's GRPOTrainer."})
