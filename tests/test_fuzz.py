"""Property-based fuzzing (hypothesis) of everything that parses untrusted text: the config
loader and overrides, the action parsers, the trajectory JSONL reader, the WebShop and ToolUse
action grammars, the HTML viewer and the run report page (both also rendered in headless
Chromium). No uncaught exception; a clear error where input is bad; no injected script runs.

Bounded for the default suite (fixed seeds, a few hundred examples each); for a deeper run:
``AGENTRL_FUZZ_EXAMPLES=20000 python -m pytest tests/test_fuzz.py`` (random seeds then).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from datetime import timedelta
from html.parser import HTMLParser

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import agentrl
from agentrl.config import Config, ConfigError, config_to_dict, load_config
from agentrl.rollout.prompts import format_action, parse_action
from agentrl.run.viewer import episode_record, render_html
from agentrl.types import Trajectory, Turn, read_jsonl, write_jsonl

_DEEP = int(os.environ.get("AGENTRL_FUZZ_EXAMPLES", "0"))


def bounded(n: int, seconds: float = 5.0):
    """``n`` examples (fixed seed) in the default suite; AGENTRL_FUZZ_EXAMPLES for deep runs."""
    return settings(max_examples=_DEEP or n, deadline=timedelta(seconds=seconds),
                    derandomize=not _DEEP, database=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])


# Every character, lone surrogates and control characters included.
any_char = st.characters(codec=None, exclude_categories=())
hostile_text = st.one_of(
    st.text(any_char, max_size=60),
    st.lists(st.sampled_from(["</script>", "<!--<script>", "</SCRIPT ", "<script>", "-->", '"',
                              "'", "\\", "\x00", "\u2028", "\ud800", "&amp;", "<\\/", "\r\n",
                              "]]>", "<action>", "</action>", "[", "]", "\x1b[31m", "NaN"]),
             max_size=8).map("".join),
    st.text(any_char, max_size=3).map(lambda s: s * 3000),  # very long lines
)

# ----------------------------------------------------------------------------- config

_SECTIONS = {f.name: f.default_factory() for f in dataclasses.fields(Config)
             if f.default_factory is not dataclasses.MISSING}
_KEYS = sorted(f"{name}.{f.name}" for name, section in _SECTIONS.items()
               if dataclasses.is_dataclass(section) for f in dataclasses.fields(section))
yaml_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.text(any_char, max_size=20),
    st.sampled_from([".inf", "-.inf", ".nan", "1e400", "2020-01-01", "0x1f", "~", "[1, [2]]",
                     "{a: {b: c}}", "!!binary aGk=", "&a [*a]", "[" * 50, "{", "'", "- - -"]),
)


def _assert_finite_numbers(d) -> None:
    if isinstance(d, dict):
        for v in d.values():
            _assert_finite_numbers(v)
    elif isinstance(d, list):
        for v in d:
            _assert_finite_numbers(v)
    elif isinstance(d, float):
        assert math.isfinite(d), d


@bounded(400)
@given(st.lists(st.tuples(st.one_of(st.sampled_from(_KEYS), st.text(any_char, max_size=15)),
                          yaml_scalar), max_size=4))
@example([("train.lr", ".inf")])
@example([("algorithm", "grpo")])
@example([("rollout", "[1, 2]")])
@example([("env.eval_kwargs", "\x1b")])  # found by a deep run (AGENTRL_FUZZ_EXAMPLES=3000)
def test_config_overrides_load_or_fail_clearly(pairs) -> None:
    overrides = [f"{k}={v}" for k, v in pairs]
    try:
        cfg = load_config(None, overrides)
    except ConfigError as e:
        assert str(e) and "\n" not in str(e).strip()[:1] and len(str(e)) < 2000
        return
    d = config_to_dict(cfg)
    _assert_finite_numbers({k: v for k, v in d.items() if k != "env"})
    yaml.safe_load(yaml.safe_dump(d))  # the resolved config is saved as YAML: it must dump


yaml_value = st.recursive(yaml_scalar, lambda kids: st.one_of(
    st.lists(kids, max_size=3), st.dictionaries(st.text(max_size=10), kids, max_size=3)),
    max_leaves=10)


@bounded(300)
@given(st.one_of(
    st.dictionaries(st.sampled_from([*_SECTIONS, "algorithm", "x"]), yaml_value, max_size=4),
    st.text(any_char, max_size=200),
    yaml_value))
@example("a: &a [*a, *a]\nb: *a\n")
@example("seed: !!python/object/apply:os.getcwd []\n")
@example("\ud800")  # invalid UTF-8 on disk; found by a deep run
def test_config_files_load_or_fail_clearly(tmp_path_factory, doc) -> None:
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    text = doc if isinstance(doc, str) else yaml.safe_dump(doc, allow_unicode=True)
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_config(str(path))
    except ConfigError as e:
        assert str(e)


# ----------------------------------------------------------------------------- action parsers


@bounded(500)
@given(hostile_text, st.sampled_from(["tags", "raw"]))
def test_parse_action_never_raises(text: str, fmt: str) -> None:
    action, ok = parse_action(text, fmt)
    assert isinstance(action, str) and isinstance(ok, bool)
    if fmt == "raw":
        assert action == text.strip()
    if ok and fmt == "tags":
        assert "</action>" not in action.lower()


@bounded(300)
@given(st.text(any_char, max_size=40).filter(lambda a: "</action>" not in a.lower()),
       st.text(any_char, max_size=20).filter(lambda s: "<action>" not in s.lower()),
       st.text(any_char, max_size=20), st.sampled_from(["tags", "raw"]))
def test_formatted_actions_parse_back(action: str, before: str, after: str, fmt: str) -> None:
    reply = format_action(action, fmt)
    if fmt == "tags":
        reply = before + reply + after  # thinking before, anything after: the first tag wins
    got, ok = parse_action(reply, fmt)
    if fmt == "tags":
        assert ok and got == action.strip()
    else:
        assert got == action.strip() and ok == bool(action.strip())


# ----------------------------------------------------------------------------- trajectories

finite = st.floats(allow_nan=False, allow_infinity=False, width=32)
any_float = st.floats(width=32)
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**53, 2**53), finite,
                      st.text(any_char, max_size=20))
json_value = st.recursive(json_leaf, lambda kids: st.one_of(
    st.lists(kids, max_size=3), st.dictionaries(st.text(any_char, max_size=8), kids,
                                                max_size=3)), max_leaves=8)


@st.composite
def turns(draw, floats=finite) -> Turn:
    n = draw(st.integers(0, 4))
    return Turn(observation=draw(hostile_text), context_ids=draw(st.lists(st.integers(0, 50000),
                                                                           max_size=5)),
                action_ids=draw(st.lists(st.integers(0, 50000), min_size=n, max_size=n)),
                logprobs=draw(st.lists(floats, min_size=n, max_size=n)),
                response=draw(hostile_text), action=draw(hostile_text),
                action_valid=draw(st.booleans()), reward=draw(floats),
                shaping=draw(floats), finish_reason=draw(st.sampled_from(["stop", "length"])),
                state_key=draw(st.none() | hostile_text),
                info=draw(st.dictionaries(st.text(any_char, max_size=8), json_value,
                                          max_size=3)))


@st.composite
def trajectories(draw, floats=finite) -> Trajectory:
    return Trajectory(trajectory_id=draw(hostile_text), group_id=draw(hostile_text),
                      env_id="agentrl/X-v0", seed=draw(st.integers(-2**40, 2**40)),
                      context_mode=draw(st.sampled_from(["full", "window"])),
                      turns=draw(st.lists(turns(floats), max_size=3)), task=draw(hostile_text),
                      task_type=draw(hostile_text),
                      termination=draw(st.sampled_from(["success", "failure", "env_error", ""])),
                      success=draw(st.booleans()), score=draw(st.none() | floats),
                      extra=draw(st.dictionaries(st.text(any_char, max_size=8), json_value,
                                                 max_size=3)))


@bounded(200)
@given(st.lists(trajectories(), max_size=3))
def test_trajectory_jsonl_roundtrips(tmp_path_factory, trajs) -> None:
    path = str(tmp_path_factory.mktemp("t") / "t.jsonl")
    assert write_jsonl(path, trajs) == len(trajs)
    back = read_jsonl(path)
    assert [t.to_dict() for t in back] == [t.to_dict() for t in trajs]


@bounded(400)
@given(st.one_of(st.binary(max_size=300),
                 st.lists(json_value.map(lambda v: json.dumps(v).encode()), max_size=3)
                 .map(b"\n".join),
                 st.dictionaries(st.sampled_from(["trajectory_id", "group_id", "env_id", "seed",
                                                  "context_mode", "turns", "x"]), json_value,
                                 max_size=6).map(lambda d: json.dumps(d).encode())))
def test_trajectory_reader_rejects_garbage_clearly(tmp_path_factory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("g") / "t.jsonl"
    path.write_bytes(data)
    try:
        out = read_jsonl(str(path))
    except ValueError as e:
        assert str(path) in str(e)
        return
    assert all(isinstance(t, Trajectory) for t in out)


# ----------------------------------------------------------------------------- env grammars


@pytest.fixture(scope="module")
def webshop():
    env = agentrl.make_env("agentrl/WebShop-v0", num_products=1000)
    yield env
    env.close()


def _check_step(out) -> None:
    obs, reward, terminated, truncated, info = out
    assert isinstance(obs, str) and isinstance(reward, float) and math.isfinite(reward)
    assert isinstance(terminated, bool) and isinstance(truncated, bool)
    assert isinstance(info["action_valid"], bool)


webshop_action = st.one_of(
    hostile_text,
    st.tuples(st.sampled_from(["search", "click", "SEARCH", " click ", "buy", ""]),
              st.sampled_from(["[", "]", "[[", "", "(", "[ "]), hostile_text,
              st.sampled_from(["]", "]]", "", " ]", "] x"])).map("".join),
    st.sampled_from(["click[buy now]", "click[< prev]", "click[next >]", "click[back to search]",
                     "click[description]", "search[]", "click[]", "[]", "search[[x]]"]))


@pytest.fixture(scope="module")
def tooluse():
    env = agentrl.make_env("agentrl/ToolUse-v0", python_timeout=2.0)
    yield env
    env.close()


tool_action = st.one_of(
    hostile_text,
    st.tuples(st.sampled_from(["search", "calculate", "answer", "SEARCH", " calculate ", "x"]),
              st.sampled_from(["[", "", "[["]), hostile_text,
              st.sampled_from(["]", "", "]]", "] tail"])).map("".join),
    st.text("0123456789+-*/().,^e %", max_size=40).map(lambda s: f"calculate[{s}]"),
    st.sampled_from(["calculate[9**9**9]", "calculate[factorial(10**6)]", "calculate[(" * 200,
                     "calculate[1/0]", "calculate[sqrt(-1)]", "calculate[2**-10000]",
                     "calculate[1e308*10]", "calculate[round(1e300, -400)]",
                     "calculate[log(0)]", "calculate[max()]", "python[]", "answer[ ]"]))


GRAMMARS = {"webshop": webshop_action, "tooluse": tool_action}


@pytest.mark.parametrize("name", sorted(GRAMMARS))
@bounded(150, seconds=20)
@given(data=st.data())
def test_env_action_grammars_never_raise(request, name: str, data) -> None:
    env = request.getfixturevalue(name)  # the module-scoped env of that name
    env.reset(seed=data.draw(st.integers(0, 50)))
    for a in data.draw(st.lists(GRAMMARS[name], min_size=1, max_size=6)):
        _check_step(env.step(a))


@bounded(8, seconds=30)
@given(hostile_text)
def test_tooluse_python_tool_never_raises(tooluse, code) -> None:
    tooluse.reset(seed=0)
    _check_step(tooluse.step(f"python[{code}]"))


# ----------------------------------------------------------------------------- viewer


class _Scripts(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[tuple[dict, str]] = []
        self._cur: dict | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "script":
            self._cur = dict(attrs)
            self.scripts.append((self._cur, ""))

    def handle_data(self, data):
        if self._cur is not None:
            attrs, text = self.scripts[-1]
            self.scripts[-1] = (attrs, text + data)

    def handle_endtag(self, tag):
        if tag == "script":
            self._cur = None


def _finite_or_none(x):
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, str):
        return x.encode("utf-8", "replace").decode("utf-8")
    if isinstance(x, dict):
        return {k: _finite_or_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite_or_none(v) for v in x]
    return x


@bounded(200, seconds=10)
@given(st.lists(trajectories(floats=any_float), max_size=3), hostile_text)
@example([Trajectory("a", "g", "e", 0, "full", task="<!--<script>", turns=[
    Turn("</script><script>alert(1)</script>", [], [], [], response="<!--<script>")])],
         "</title><script>x</script>")
def test_viewer_page_is_well_formed_whatever_the_text(trajs, title: str) -> None:
    episodes = [episode_record(t, "src") for t in trajs]
    page = render_html(episodes, title)
    page.encode("utf-8")  # writable as UTF-8, lone surrogates included
    # The data block holds no "<" at all: no "</script" to end it early, no "<!--<script" to
    # send the tokenizer into the double-escaped state that swallows the real end tag.
    start = page.index('<script id="data" type="application/json">') + len(
        '<script id="data" type="application/json">')
    data = page[start:page.index("</script>", start)]
    assert "<" not in data and ">" not in data
    # Browsers' JSON.parse accepts no NaN/Infinity: the data is strict JSON.
    parsed = json.loads(data, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert parsed == _finite_or_none(json.loads(json.dumps(episodes)))
    parser = _Scripts()
    parser.feed(page)
    assert [a.get("id") for a, _ in parser.scripts] == ["data", None]  # exactly two scripts
    assert "<script>x" not in page.split("<body>")[0] and re.search(
        r"<title>[^<]*</title>", page)


def test_hostile_viewer_page_runs_in_chromium(tmp_path) -> None:
    """The cases the properties above stand for, in a real browser: before the fix, a task of
    ``<!--<script>`` or a NaN reward left the page empty (the data block swallowed the script,
    or JSON.parse threw)."""
    from helpers import browse

    hostile = [Trajectory(f"t{i}", "g", "e", 0, "full", task=task, turns=[
        Turn(obs, [], [1], [float("-inf")], response="<!--", action="</script>", reward=r)])
        for i, (task, obs, r) in enumerate([
            ("<!--<script>", "x", 0.0), ("plain", "</script><script>", float("nan")),
            ("\ud800 \x00 \u2028", "<!--", float("inf")), ("'\"`${x}`", "&amp;<b>", 1.0)])]
    page = tmp_path / "v.html"
    page.write_text(render_html([episode_record(t, "s") for t in hostile], "<!--<script>"),
                    encoding="utf-8")
    r = browse("file://" + str(page), "--dump-dom")
    dom = r.stdout
    assert re.search(r'id="episodes" data-count="4"', dom), (dom[-2000:], r.stderr[-2000:])
    assert "&lt;!--&lt;script&gt;" in dom and "</script>&lt;" not in dom


# ----------------------------------------------------------------------------- report page

#: every tag and attribute `render_report` writes itself; anything else came from the data
_REPORT_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "a",
                "table", "tr", "th", "td", "ul", "li", "b", "div", "figure", "img", "figcaption"}
_REPORT_ATTRS = {"lang", "charset", "href", "src", "alt", "class"}


class _Markup(HTMLParser):
    """The tags, attribute names and text of a page, as a browser's tokenizer splits them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: set[str] = set()
        self.attrs: set[str] = set()
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.attrs |= {a for a, _ in attrs}

    def handle_data(self, data):
        self.text.append(data)


def _writable(s: str) -> str:
    return s.encode("utf-8", "replace").decode("utf-8")


eval_summary = st.fixed_dictionaries(
    {"tag": hostile_text, "iteration": st.integers(0, 2**40), "success_rate": finite,
     "ci95": st.tuples(finite, finite).map(list)},
    optional={k: st.one_of(json_value, hostile_text)
              for k in ("episodes", "turns", "return", "invalid_action_rate")})


@bounded(200, seconds=10)
@given(hostile_text, st.lists(eval_summary, max_size=3),
       st.lists(st.dictionaries(hostile_text.map(lambda k: "alarm/" + k), st.just(1.0),
                                max_size=2), max_size=3),
       st.lists(st.tuples(hostile_text, hostile_text), max_size=3),
       st.dictionaries(hostile_text, hostile_text, max_size=2),
       st.dictionaries(hostile_text, hostile_text, max_size=2))
@example("r", [{"tag": "t", "iteration": 0, "success_rate": 0.0, "ci95": [0.0, 0.0],
               "episodes": 0.0}], [], [], {}, {})  # found by a deep run
@example("<script>x</script>", [{"tag": "</td><script>", "iteration": 1, "success_rate": 0.5,
                                 "ci95": [0.1, 0.9], "episodes": "<img src=x onerror=alert(1)>"}],
         [{"alarm/<b onmouseover=x>": 1.0}], [("'><script>", '"><svg onload=x>')],
         {"x' onerror='y": "a.png"}, {"<!--": "-->"})
def test_report_page_escapes_every_value(name, evals, alarms, config, plots, skipped) -> None:
    from agentrl.run.report import render_report

    rows = [{"iteration": i, **a} for i, a in enumerate(alarms)]
    page = render_report(name, rows, evals, config, plots, skipped)
    page.encode("utf-8")  # writable as UTF-8, lone surrogates included
    parser = _Markup()
    parser.feed(page)
    assert parser.tags <= _REPORT_TAGS and parser.attrs <= _REPORT_ATTRS, (
        parser.tags - _REPORT_TAGS, parser.attrs - _REPORT_ATTRS)
    text = "".join(parser.text)  # each value is there as text, exactly as written
    for value in [name, *(e["tag"] for e in evals), *(v for p in config for v in p), *plots,
                  *skipped, *skipped.values(), *(k[len("alarm/"):] for a in alarms for k in a)]:
        assert _writable(value) in text, value


@bounded(200, seconds=10)
@given(st.lists(st.one_of(json_value, st.dictionaries(
           st.sampled_from(["iteration", "success_rate", "ci95", "tag", "episodes", "x"]),
           json_value, max_size=5)), min_size=1, max_size=3),
       st.lists(st.one_of(json_value, st.dictionaries(
           st.sampled_from(["iteration", "rollout/success_rate", "alarm/x", "perf/seconds_env"]),
           json_value, max_size=4)), max_size=3))
@example([{"success_rate": 0.5, "ci95": [0, 1], "iteration": "2"}], [{"iteration": True}])
@example([{"success_rate": 0.5, "ci95": [0, "1"]}], [{"iteration": 2**70}])
def test_report_reads_hostile_files_or_says_which(tmp_path_factory, evals, rows) -> None:
    """Whatever ``eval/*.json`` and ``metrics.jsonl`` hold: the page, or a ValueError that
    names the file (what `agentrl report` prints as its one line)."""
    from agentrl.run.report import read_evals, read_report_metrics, render_report

    run = tmp_path_factory.mktemp("run")
    (run / "eval").mkdir()
    for i, e in enumerate(evals):
        (run / "eval" / f"e{i}.json").write_text(json.dumps(e))
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    try:
        page = render_report("r", read_report_metrics(str(run)), read_evals(str(run)), [], {}, {})
    except ValueError as e:
        assert str(run) in str(e)
        return
    page.encode("utf-8")


def test_hostile_report_page_runs_no_script_in_chromium(tmp_path) -> None:
    """``agentrl report`` on a run whose files carry script, rendered in a real browser: no
    injected script runs (before escaping every value, an eval file's ``episodes`` ran), and
    the values show as text."""
    from helpers import browse

    from agentrl.cli import main

    title = "<script>document.title='PWNED'</script>"
    onerror = "<img src=x onerror=\"document.body.id='pwned'\">"
    run = tmp_path / "run<b>"
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "final.json").write_text(json.dumps(
        {"tag": title, "iteration": 1, "success_rate": 0.5, "ci95": [0.1, 0.9],
         "episodes": title + onerror, "turns": onerror, "return": 1.0}))
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"iteration": 0, "rollout/success_rate": 0.1, f"alarm/{onerror}": 1.0,
         "rollout/success_rate/a$\\frac$b": 0.2, "rollout/success_rate/" + title: 0.3,
         "rollout/success_rate/\ud800": 0.4, "train/kl": 1e308},  # matplotlib can neither draw nor lay out these
        {"iteration": 1, "rollout/success_rate": 0.5, f"alarm/{onerror}": 0.0}]))
    (run / "config.yaml").write_text(yaml.safe_dump({"env": {"id": title, "kwargs": {
        "x": onerror}}, "algorithm": {"name": onerror}}))
    assert main(["report", str(run)]) == 0
    r = browse("file://" + str(run / "report.html"), "--dump-dom", "--virtual-time-budget=2000")
    dom = r.stdout
    assert "<h1>agentrl run: run&lt;b&gt;</h1>" in dom, (dom[-2000:], r.stderr[-2000:])
    assert re.search(r"<title>agentrl report: run&lt;b&gt;</title>", dom), dom[:500]
    assert "PWNED</title>" not in dom and 'id="pwned"' not in dom, dom
    assert "&lt;img src=x onerror=" in dom and "&lt;script&gt;document.title" in dom
