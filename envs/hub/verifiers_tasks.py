"""Two small verifiers environments, built from verifiers' own classes with in-memory datasets,
for ``agentrl/Verifiers-v0``'s tests, its registered test settings and
``configs/verifiers_tiny.yaml``:

- `arithmetic`: a ``vf.SingleTurnEnv`` (``What is 3 + 4?``), scored by a ``vf.Rubric`` whose
  reward function compares the parsed reply with the answer;
- `guess_number`: a ``vf.MultiTurnEnv`` (`GuessNumberEnv`): guess a hidden number, told
  "higher" or "lower" after each wrong guess, scored by how few guesses it took.

Each row's ``info["choices"]`` lists candidate replies (``choices="choices"`` makes them the
admissible actions) for a model trained from scratch, which cannot yet write an answer; a
pretrained model ignores them.

    agentrl train env.id=agentrl/Verifiers-v0 \\
        'env.kwargs={environment: "agentrl.envs.hub.verifiers_tasks:arithmetic"}'
"""

from __future__ import annotations

import random
import re
from typing import Any

import verifiers as vf
from datasets import Dataset


def _arithmetic_rows(n: int, max_operand: int, num_choices: int, seed: int
                     ) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
        total = a + b
        wrong = [str(x) for x in range(2 * max_operand + 1) if x != total]
        choices = rng.sample(wrong, min(num_choices - 1, len(wrong))) + [str(total)]
        rng.shuffle(choices)
        rows.append({"question": f"What is {a} + {b}?", "answer": str(total),
                     "info": {"choices": choices}})
    return rows


def exact_answer(completion: Any, answer: str, parser: vf.Parser) -> float:
    """1.0 when the reply, parsed by the env's parser and stripped, is the answer."""
    reply = parser.parse_answer(completion) or ""
    return 1.0 if reply.strip() == str(answer).strip() else 0.0


def arithmetic(num_train: int = 200, num_eval: int = 100, max_operand: int = 4,
               num_choices: int = 3, seed: int = 0) -> vf.SingleTurnEnv:
    """Single-turn addition of two numbers from 0 to ``max_operand``; each row offers
    ``num_choices`` candidate sums (the right one among them). Train and eval rows are drawn
    with different seeds from the same ``(max_operand + 1) ** 2`` sums."""
    if num_choices < 1 or max_operand < 0:
        raise ValueError("num_choices >= 1 and max_operand >= 0")
    train = Dataset.from_list(_arithmetic_rows(num_train, max_operand, num_choices, seed))
    evals = Dataset.from_list(_arithmetic_rows(num_eval, max_operand, num_choices, seed + 1))
    parser = vf.Parser()
    rubric = vf.Rubric(funcs=[exact_answer], parser=parser)
    return vf.SingleTurnEnv(dataset=train, eval_dataset=evals, parser=parser, rubric=rubric,
                            system_prompt="Answer with the number only.",
                            env_id="agentrl-arithmetic")


class GuessNumberEnv(vf.MultiTurnEnv):
    """Guess the hidden number (the row's ``answer``) from 1 to ``high``: after a wrong guess
    the env says ``Higher.`` or ``Lower.``, after the right one ``Correct!`` and the rollout
    ends; a reply that is not a number is answered with the rule. At most ``max_turns``
    guesses."""

    def __init__(self, high: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.high = high

    async def setup_state(self, state: vf.State) -> vf.State:
        state["guesses"] = 0
        state["solved"] = False
        return state

    async def env_response(self, messages: vf.Messages, state: vf.State, **kwargs: Any
                           ) -> vf.Messages:
        reply = self.parser.parse_answer(messages) or ""
        found = re.search(r"-?\d+", reply)
        state["guesses"] += 1
        if found is None:
            return [vf.UserMessage(content=f"Reply with a number from 1 to {self.high}.")]
        guess, target = int(found.group()), int(state["answer"])
        if guess == target:
            state["solved"] = True
            done = [vf.UserMessage(content="Correct!")]
            state["final_env_response"] = done
            return done
        return [vf.UserMessage(content="Higher." if guess < target else "Lower.")]


def solved_quickly(state: vf.State) -> float:
    """1.0 for a first-guess hit, 0.25 less for each further guess (never below 0.25 while
    solved); 0.0 unsolved."""
    if not state.get("solved"):
        return 0.0
    return max(0.25, 1.0 - 0.25 * (int(state.get("guesses", 1)) - 1))


def guess_number(num_train: int = 100, num_eval: int = 50, high: int = 8, max_turns: int = 4,
                 seed: int = 0) -> GuessNumberEnv:
    """The multi-turn guessing game over 1..``high`` (see `GuessNumberEnv`)."""
    def rows(n: int, s: int) -> Dataset:
        rng = random.Random(s)
        return Dataset.from_list([
            {"question": f"I am thinking of a number from 1 to {high}. Guess it.",
             "answer": str(rng.randint(1, high)),
             "info": {"choices": [str(x) for x in range(1, high + 1)]}} for _ in range(n)])

    rubric = vf.Rubric(funcs=[solved_quickly])
    return GuessNumberEnv(high=high, dataset=rows(num_train, seed),
                          eval_dataset=rows(num_eval, seed + 1), rubric=rubric,
                          max_turns=max_turns, env_id="agentrl-guess-number")
