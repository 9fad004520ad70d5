"""The ALFWorld text engine, made fast enough for RL without changing what it prints.

`make_engine` builds TextWorld's PddlEnv (the engine of ALFWorld's ``AlfredTWEnv``) wrapped in
ALFWorld's ``AlfredDemangler`` (ALFRED ids -> "apple 1"). Two caches remove repeated work:
rendering of admissible commands (per operator) and fast-downward's PDDL->SAS translation (per
game, while `CachedTranslations.active`). fast-downward's translator also overwrites
``sys.argv``; `keep_argv` restores it.
"""

from __future__ import annotations

import contextlib
import sys
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def keep_argv() -> Iterator[None]:
    """fast-downward's translator overwrites ``sys.argv``; restore it for the caller."""
    saved = list(sys.argv)
    try:
        yield
    finally:
        sys.argv[:] = saved


class CachedTranslations:
    """Memoize the per-game parsing work of TextWorld's PddlEnv while `active`.

    PddlEnv parses the domain and grammar (tatsu, ~0.12 s) on every load and translates the
    problem with fast-downward (twice, ~0.25 s) on every load *and* reset. Both are pure
    functions of the game file's text, and their results are only read afterwards, so re-using
    them for a game seen recently gives the identical game at a fraction of the cost.
    """

    def __init__(self, max_games: int = 32) -> None:
        self.max_games = max_games
        self._memo: OrderedDict[tuple[Any, ...], Any] = OrderedDict()

    def _cached(self, key: tuple[Any, ...], make: Any) -> Any:
        if key not in self._memo:
            self._memo[key] = make()
            # Two translations and one logic per game.
            while len(self._memo) > 3 * self.max_games:
                self._memo.popitem(last=False)
        self._memo.move_to_end(key)
        return self._memo[key]

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        import fast_downward
        from textworld.envs.pddl import logic as pddl_logic

        pddl2sas, game_logic = fast_downward.pddl2sas, pddl_logic.GameLogic

        def cached_pddl2sas(domain: str, problem: str, verbose: bool = False,
                            optimize: bool = False) -> Any:
            return self._cached(("sas", domain, problem, bool(optimize)), lambda: pddl2sas(
                domain, problem, verbose=verbose, optimize=optimize))

        def cached_logic(domain: str, grammar: str) -> Any:
            return self._cached(("logic", domain, grammar),
                                lambda: game_logic(domain=domain, grammar=grammar))

        fast_downward.pddl2sas, pddl_logic.GameLogic = cached_pddl2sas, cached_logic
        try:
            with keep_argv():
                yield
        finally:
            fast_downward.pddl2sas, pddl_logic.GameLogic = pddl2sas, game_logic


def make_engine() -> Any:
    """An ALFWorld engine whose admissible-command rendering is cached.

    TextWorld's PddlEnv renders every applicable operator through its text grammar after each
    step (a parser run per command: ~50 ms per step in a furnished room). In the shipped
    ``alfred`` grammar a command's text depends only on the operator and its arguments (the one
    list template, "go to", ranges over static receptacle locations), so the text is cached per
    operator for the loaded game. The test suite checks the cached engine against the stock one.
    """
    import textworld
    from alfworld.agents.environment.alfred_tw_env import AlfredDemangler
    from textworld.envs.pddl import PddlEnv

    class FastPddlEnv(PddlEnv):
        def load(self, filename_or_data: Any) -> None:
            self._command_cache: dict[str, str] = {}
            super().load(filename_or_data)

        def _gather_infos(self) -> None:
            cache = self._command_cache
            state, logic = self._pddl_state, self._logic
            self.state["command_templates"] = sorted({a.template for a in logic.actions.values()})
            self.state["won"] = state.check_goal()
            self.state["lost"] = False
            self.state["_entity_infos"] = dict(self._entity_infos)
            self.state["_facts"] = list(state.facts)
            self.state["last_action"] = None
            self.state["_last_action"] = self._last_action
            actions = list(state.all_applicable_actions())
            self.state["_valid_actions"] = actions
            mapping = {k: info.name for k, info in self._entity_infos.items()}
            commands = []
            for action in actions:
                key = action.name + " " + " ".join(v.name for v in action.mapping.values())
                cmd = cache.get(key)
                if cmd is None:
                    context = {"state": state, "facts": list(state.facts),
                               "variables": {ph.name: self._entity_infos[var.name]
                                             for ph, var in action.mapping.items()},
                               "mapping": action.mapping, "entity_infos": self._entity_infos}
                    action.command_template = logic.grammar.derive(action.command_template,
                                                                   context)
                    cmd = cache[key] = action.format_command(mapping)
                commands.append(cmd)
            self.state["_valid_commands"] = commands
            self.state["admissible_commands"] = sorted(set(commands))
            if self.request_infos.moves:
                self.state["moves"] = self._moves

    infos = textworld.EnvInfos(admissible_commands=True, won=True, score=True)
    return AlfredDemangler(shuffle=False)(FastPddlEnv(infos))
