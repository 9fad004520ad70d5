"""``agentrl report RUN_DIR``: PNG plots, the trajectory viewer and an HTML summary of a run.

    from agentrl.run.report import write_report
    out = write_report("runs/quickstart")      # out["html"] == "runs/quickstart/report.html"

Reads only what a run leaves behind (``metrics.jsonl``, ``eval/*.json``, ``trajectories/``,
``config.yaml``), so it works on a finished run, a crashed one, or one still training. Plots go
to ``RUN_DIR/plots/``; a plot whose metric the run never logged is listed with the reason
instead of drawn empty.

Every file is read and checked before anything is written: a damaged or hostile one (a
metrics row without its iteration, an eval summary without its interval, a record that is not
a trajectory, a config with a Python tag) is a `ValueError` naming the file, and the run
directory is left as it was. Every value from the run's files is escaped in the page.
"""

from __future__ import annotations

import glob
import html
import json
import math
import os
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

from agentrl.progress import one_line
from agentrl.run.metrics import read_metrics
from agentrl.run.viewer import MAX_EPISODES, collect_episodes, write_viewer

#: (file stem, title, y label, [(metric key, legend label)]) of the simple line plots.
LINE_PLOTS: list[tuple[str, str, str, list[tuple[str, str]]]] = [
    ("return", "Episode return", "return", [("rollout/return", "training episodes"),
                                            ("rollout/score", "score")]),
    ("episode_length", "Episode length", "turns / tokens",
     [("rollout/turns", "turns per episode"), ("rollout/response_tokens", "tokens per reply")]),
    ("entropy", "Policy entropy (sampled tokens)", "nats", [("train/entropy", "entropy")]),
    ("kl", "KL divergence", "nats", [("train/kl", "to the reference policy (k3)"),
                                     ("train/approx_kl_old", "to the sampling policy (approx)")]),
    ("clip_fraction", "PPO clip fraction", "share of tokens", [("train/clip_frac", "clipped")]),
    ("grad_norm", "Gradient norm (before clipping)", "L2 norm", [("train/grad_norm", "grad norm")]),
    ("logprob_mismatch", "Sampler vs trainer log-prob of sampled tokens", "nats",
     [("train/logprob_mismatch", "mean |diff|"), ("train/logprob_mismatch_max", "max |diff|")]),
    ("memory", "Memory", "GB", [("perf/host_rss_gb", "learner RSS"),
                                ("perf/workers_rss_gb", "child processes RSS"),
                                ("perf/gpu_memory_allocated_gb", "GPU allocated"),
                                ("perf/gpu_max_memory_allocated_gb", "GPU peak")]),
    ("rates", "Failure rates", "share", [("rollout/invalid_action_rate", "invalid actions"),
                                          ("rollout/response_length_hit_rate", "replies cut"),
                                          ("algo/zero_variance_groups", "zero-variance groups")]),
]
TIME_KEYS = [("perf/seconds_generate", "generate"), ("perf/seconds_env", "env"),
             ("perf/seconds_train", "train"), ("perf/seconds_sync", "sync")]


def _plt() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ImportError("agentrl report needs matplotlib: pip install 'agentrl[report]'") from None
    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["iteration"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    return [p[0] for p in pts], [float(p[1]) for p in pts]


def _short(value: Any) -> str:
    """``repr(value)`` cut to one short line (hostile values end up in error messages)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def _finite(value: Any) -> bool:
    """A number that can be plotted: finite, and an int small enough for a float."""
    if isinstance(value, int):
        return abs(value) < 2**63
    return isinstance(value, float) and math.isfinite(value)


def _checked_eval(s: dict[str, Any], path: str) -> dict[str, Any]:
    """Summary ``s`` of ``path`` with its tag; ValueError unless the values the report plots
    (iteration, success rate, 95% interval) are numbers."""
    if not _whole(s.get("iteration", 0)):
        raise ValueError(f"{path}: 'iteration' must be a whole number, not "
                         f"{_short(s['iteration'])}")
    if not _finite(s["success_rate"]) or isinstance(s["success_rate"], bool):
        raise ValueError(f"{path}: 'success_rate' must be a number, not "
                         f"{_short(s['success_rate'])}")
    ci = s.get("ci95")
    if not (isinstance(ci, list) and len(ci) == 2 and all(_finite(x) for x in ci)):
        raise ValueError(f"{path}: no 95% interval ('ci95': [low, high] numbers, found "
                         f"{_short(ci)}); it is not an evaluation summary of agentrl")
    return {**s, "tag": str(s.get("tag", os.path.basename(path)[:-5]))}


def read_evals(run_dir: str) -> list[dict[str, Any]]:
    """The run's ``eval/*.json`` summaries, by iteration.

    Raises:
        ValueError: a file that is not JSON, or a summary without a whole-number iteration,
            a numeric success rate or its 95% interval (the message names the file).
    """
    out = []
    for p in sorted(glob.glob(os.path.join(run_dir, "eval", "*.json"))):
        try:
            with open(p, encoding="utf-8") as f:
                s = json.load(f)
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
            raise ValueError(f"{p}: not a JSON file ({e})") from None
        if isinstance(s, dict) and "success_rate" in s:
            out.append(_checked_eval(s, p))
    return sorted(out, key=lambda s: (s.get("iteration", 0), s["tag"] != "before"))


def read_report_metrics(run_dir: str) -> list[dict[str, Any]]:
    """The rows of ``metrics.jsonl`` with their plottable values only (finite numbers; a
    string or NaN is left out of the plots).

    Raises:
        ValueError: a line that is not a JSON object, or a row without a whole-number
            ``iteration`` (the message names the file and row).
    """
    path = os.path.join(run_dir, "metrics.jsonl")
    out = []
    for n, r in enumerate(read_metrics(run_dir), 1):
        if not _whole(r.get("iteration")):
            raise ValueError(f"{path}: row {n} has no whole-number 'iteration' (found "
                             f"{_short(r.get('iteration'))}); it is not a metrics file of "
                             "agentrl train")
        out.append({k: v for k, v in r.items() if _finite(v)})
    return out


def _save(plt: Any, fig: Any, path: str) -> str:
    from matplotlib.ticker import MaxNLocator

    for ax in fig.axes:  # iterations are whole numbers: no 2.5 ticks on a short run
        if ax.get_xlabel() == "iteration":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _legend(text: str) -> str:
    """``text`` as matplotlib draws it verbatim: "$" would start its math mode (which raises on
    what it cannot parse), a lone surrogate cannot be drawn, a long name would hide the plot."""
    text = one_line(text).encode("utf-8", "replace").decode("utf-8").replace("$", r"\$")
    return text if len(text) <= 40 else text[:37] + "..."


def plot_success(plt: Any, rows: list[dict[str, Any]], evals: list[dict[str, Any]],
                 path: str) -> str | None:
    """Training success rate per iteration and held-out success with its 95% CI band."""
    x, y = _series(rows, "rollout/success_rate")
    if not x and not evals:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    if x:
        ax.plot(x, y, label="training episodes", alpha=0.7)
    types = sorted({k.split("/", 2)[2] for r in rows for k in r
                    if k.startswith("rollout/success_rate/")})
    for t in types:
        tx, ty = _series(rows, f"rollout/success_rate/{t}")
        ax.plot(tx, ty, lw=0.8, alpha=0.6, label="train: " + _legend(t))
    if evals:
        ex = [e.get("iteration", 0) for e in evals]
        ax.plot(ex, [e["success_rate"] for e in evals], "o-", label="held-out eval")
        ax.fill_between(ex, [e["ci95"][0] for e in evals], [e["ci95"][1] for e in evals],
                        alpha=0.2, label="eval 95% CI")
    ax.set(title="Success rate", xlabel="iteration", ylabel="success rate", ylim=(-0.02, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def write_curve(run_dir: str, evals: list[dict[str, Any]]) -> str | None:
    """``<run_dir>/curve.png``: `plot_success` of the run's metrics and ``evals`` (what
    `agentrl train` leaves at the end of a run); None without matplotlib or data."""
    try:
        plt = _plt()
    except ImportError:
        return None
    return plot_success(plt, read_metrics(run_dir), evals, os.path.join(run_dir, "curve.png"))


def plot_lines(plt: Any, rows: list[dict[str, Any]], title: str, ylabel: str,
               keys: list[tuple[str, str]], path: str) -> str | None:
    """One line per logged metric key; None if none of the keys was ever logged."""
    data = [(label, *_series(rows, k)) for k, label in keys]
    data = [d for d in data if d[1]]
    if not data:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for label, x, y in data:
        ax.plot(x, y, marker="." if len(x) < 30 else None, label=label)
    ax.set(title=title, xlabel="iteration", ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def plot_time(plt: Any, rows: list[dict[str, Any]], path: str) -> str | None:
    """Stacked seconds per iteration: generate / env / train / sync / other."""
    rows = [r for r in rows if "perf/seconds_iteration" in r]
    if not rows:
        return None
    import numpy as np

    x = np.array([r["iteration"] for r in rows])
    parts = {label: np.array([float(r.get(k, 0.0)) for r in rows]) for k, label in TIME_KEYS}
    total = np.array([float(r["perf/seconds_iteration"]) for r in rows])
    parts["other"] = np.clip(total - sum(parts.values()), 0, None)
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    bottom = np.zeros(len(x))
    for label, v in parts.items():
        ax.bar(x, v, bottom=bottom, label=label, width=0.8)
        bottom += v
    ax.set(title="Time per iteration", xlabel="iteration", ylabel="seconds")
    ax.legend(fontsize=8, ncol=5)
    ax.grid(alpha=0.3, axis="y")
    return _save(plt, fig, path)


def entropy_matrix(episodes: list[dict[str, Any]]) -> tuple[list[int], list[list[float | None]]]:
    """(iterations, matrix[turn][iteration]) of mean per-turn entropy over the training dumps'
    viewer records (`collect_episodes`)."""
    by_it: dict[int, dict[int, list[float]]] = {}
    for ep in episodes:
        if not ep["source"].startswith("train it "):
            continue
        it = int(ep["source"].split()[-1])
        for k, u in enumerate(ep["turns"]):
            if u["entropy"] is not None:
                by_it.setdefault(it, {}).setdefault(k, []).append(u["entropy"])
    its = sorted(by_it)
    depth = max((k + 1 for d in by_it.values() for k in d), default=0)
    mat = [[(sum(v) / len(v)) if (v := by_it[i].get(k)) else None for i in its]
           for k in range(depth)]
    return its, mat


def plot_entropy_heatmap(plt: Any, episodes: list[dict[str, Any]], path: str) -> str | None:
    """Turn index x iteration heatmap of per-turn entropy (from the trajectory dumps)."""
    its, mat = entropy_matrix(episodes)
    if not its:
        return None
    import numpy as np

    arr = np.array([[np.nan if v is None else v for v in row] for row in mat], dtype=float)
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    im = ax.imshow(arr, aspect="auto", origin="lower", cmap="viridis", interpolation="nearest")
    ax.set_xticks(range(len(its)))
    ax.set_xticklabels([str(i) for i in its], fontsize=7, rotation=90 if len(its) > 15 else 0)
    ax.set(title="Per-turn entropy (mean -logprob of sampled tokens)",
           xlabel="iteration (trajectory dumps)", ylabel="turn index")
    fig.colorbar(im, ax=ax, label="nats")
    return _save(plt, fig, path)


def write_plots(run_dir: str, rows: list[dict[str, Any]] | None = None,
                evals: list[dict[str, Any]] | None = None,
                episodes: list[dict[str, Any]] | None = None,
                ) -> tuple[dict[str, str], dict[str, str]]:
    """Write every plot to ``RUN_DIR/plots``; returns ({name: path}, {name: why skipped}).

    ``rows`` / ``evals`` / ``episodes``: the run's metrics (`read_report_metrics`), eval
    summaries and trajectory records (`collect_episodes`) when already read.
    """
    plt = _plt()
    rows = read_report_metrics(run_dir) if rows is None else rows
    evals = read_evals(run_dir) if evals is None else evals
    episodes = collect_episodes(run_dir, None) if episodes is None else episodes
    d = os.path.join(run_dir, "plots")
    os.makedirs(d, exist_ok=True)
    done: dict[str, str] = {}
    skipped: dict[str, str] = {}

    def put(name: str, draw: Callable[[], str | None], why: str) -> None:
        try:
            path = draw()
        except (ValueError, OverflowError) as e:  # values matplotlib cannot lay out (1e308)
            plt.close("all")
            path, why = None, f"could not be drawn ({one_line(e)[:200]})"
        if path:
            done[name] = path
        else:
            skipped[name] = why

    put("success_rate", partial(plot_success, plt, rows, evals, os.path.join(d, "success_rate.png")),
        "no rollout/success_rate in metrics.jsonl and no eval/*.json")
    for stem, title, ylabel, keys in LINE_PLOTS:
        put(stem, partial(plot_lines, plt, rows, title, ylabel, keys, os.path.join(d, f"{stem}.png")),
            "not logged by this run: " + ", ".join(k for k, _ in keys))
    put("time_split", partial(plot_time, plt, rows, os.path.join(d, "time_split.png")),
        "no perf/seconds_* in metrics.jsonl")
    put("entropy_heatmap",
        partial(plot_entropy_heatmap, plt, episodes, os.path.join(d, "entropy_heatmap.png")),
        "no training trajectory dumps (log.trajectories_every=0?)")
    return done, skipped


def _alarm_summary(rows: list[dict[str, Any]]) -> dict[str, list[int]]:
    fired: dict[str, list[int]] = {}
    for r in rows:
        for k, v in r.items():
            if k.startswith("alarm/") and v:
                fired.setdefault(k[len("alarm/"):], []).append(r["iteration"])
    return fired


def _config_summary(run_dir: str) -> list[tuple[str, str]]:
    """(label, value) rows of the run's ``config.yaml``; ValueError if it is not plain YAML."""
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.exists(path):
        return []
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            c = yaml.safe_load(f) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:  # a Python tag, binary, bad syntax
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path}: not a plain YAML config ({first})") from None
    g = lambda *ks: _dig(c, ks)  # noqa: E731
    dumps = lambda v: json.dumps(v, default=str)  # noqa: E731  (YAML dates are not JSON)
    return [("env", f"{g('env', 'id')} {dumps(g('env', 'kwargs'))}"),
            ("eval split", dumps(g("env", "eval_kwargs"))),
            ("algorithm", str(g("algorithm", "name"))),
            ("model", f"{g('policy', 'model')} ({g('policy', 'dtype')}, {g('policy', 'backend')})"),
            ("episodes / iteration", f"{g('rollout', 'groups')} groups x "
                                     f"{g('rollout', 'group_size')}"),
            ("iterations (configured)", str(g("train", "iterations")))]


def _dig(d: Any, keys: tuple[str, ...]) -> Any:
    for k in keys:
        d = d.get(k) if isinstance(d, dict) else None
    return d


def _esc(value: Any) -> str:
    """``value`` as HTML text, quotes included (lone surrogates, unwritable, become "?")."""
    return html.escape(str(value).encode("utf-8", "replace").decode("utf-8"))


def _cell(value: Any, spec: str) -> str:
    """A table cell: a number formatted with ``spec``, anything else as escaped text."""
    if value is None:
        return ""
    if _finite(value) and not isinstance(value, bool):
        return format(value, spec)
    return _esc(value)


def _eval_table(evals: list[dict[str, Any]]) -> list[str]:
    if not evals:
        return ["<p>No eval/*.json yet.</p>"]
    out = ["<table><tr><th>tag</th><th>iteration</th><th>episodes</th><th>success</th>"
           "<th>95% CI</th><th>turns</th><th>return</th><th>invalid actions</th></tr>"]
    for e in evals:
        lo, hi = e["ci95"]
        cells = [_esc(e["tag"]), _cell(e.get("iteration"), ""), _cell(e.get("episodes"), ""),
                 _cell(e["success_rate"], ".3f"), f"[{lo:.2f}, {hi:.2f}]",
                 _cell(e.get("turns"), ".2f"), _cell(e.get("return"), ".3f"),
                 _cell(e.get("invalid_action_rate"), ".3f")]
        out.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return out + ["</table>"]


def _alarm_section(rows: list[dict[str, Any]]) -> str:
    fired = _alarm_summary(rows)
    if fired:
        return "<ul>" + "".join(
            f"<li class='alarm'><b>{_esc(k)}</b> fired at {len(v)} iteration(s): "
            f"{_esc(', '.join(map(str, v[:20])))}{' ...' if len(v) > 20 else ''}</li>"
            for k, v in sorted(fired.items())) + "</ul>"
    return "<p>None fired" + ("" if any(k.startswith("alarm/") for r in rows for k in r)
                              else " (this run did not log alarm/* metrics)") + ".</p>"


def render_report(name: str, rows: list[dict[str, Any]], evals: list[dict[str, Any]],
                  config: list[tuple[str, str]], plots: dict[str, str],
                  skipped: dict[str, str]) -> str:
    """The ``report.html`` page of run ``name``: its config summary, held-out evaluations,
    alarms and plots (``plots``: name -> path relative to the page). Every value is escaped."""
    last = max((r["iteration"] for r in rows), default=0)
    parts = [f"<h1>agentrl run: {_esc(name)}</h1>",
             f"<p>{last} iterations logged · <a href='viewer.html'>trajectory viewer</a> · "
             "<a href='metrics.jsonl'>metrics.jsonl</a> · <a href='config.yaml'>config.yaml</a>"
             "</p><table>"]
    parts += [f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in config]
    parts.append("</table><h2>Held-out evaluation</h2>")
    parts += _eval_table(evals)
    parts += ["<h2>Alarms</h2>", _alarm_section(rows), "<h2>Plots</h2><div class='grid'>"]
    for k, rel in plots.items():
        parts.append(f"<figure><a href='{_esc(rel)}'><img src='{_esc(rel)}' alt='{_esc(k)}'></a>"
                     f"<figcaption>{_esc(k)}</figcaption></figure>")
    parts.append("</div>")
    if skipped:
        parts.append("<h3>Not plotted</h3><ul>" + "".join(
            f"<li>{_esc(k)}: {_esc(v)}</li>" for k, v in skipped.items()) + "</ul>")
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>agentrl report: {_esc(name)}</title><style>"
            "body{font:14px/1.45 system-ui,sans-serif;margin:20px;color:#1d2330}"
            "table{border-collapse:collapse}th,td{border:1px solid #ddd;padding:3px 8px;"
            "text-align:left}.grid{display:flex;flex-wrap:wrap;gap:10px}"
            "figure{margin:0}img{width:480px;border:1px solid #ddd}.alarm{color:#b03a2e}"
            "</style></head><body>" + "\n".join(parts) + "</body></html>")


def write_report(run_dir: str) -> dict[str, Any]:
    """Plots, ``viewer.html`` and ``report.html`` for ``run_dir``; returns their paths.

    Raises:
        ValueError: a damaged or hostile file (named in the message); nothing is written then.
        ImportError: matplotlib is not installed.
    """
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"{run_dir}: no such run directory")
    rows = read_report_metrics(run_dir)
    evals = read_evals(run_dir)
    config = _config_summary(run_dir)
    episodes = collect_episodes(run_dir, None)
    _plt()  # matplotlib missing: say so before writing anything
    plots, skipped = write_plots(run_dir, rows, evals, episodes)
    viewer = write_viewer(run_dir, episodes=episodes[-MAX_EPISODES:])
    name = os.path.basename(os.path.abspath(run_dir))
    rel = {k: os.path.relpath(p, run_dir) for k, p in plots.items()}
    path = os.path.join(run_dir, "report.html")
    with open(path, "w", encoding="utf-8") as f:
        f.write(render_report(name, rows, evals, config, rel, skipped))
    return {"html": path, "viewer": viewer, "plots": plots, "skipped": skipped}


def report_main(run_dir: str) -> int:
    """``agentrl report RUN_DIR``: write everything and print where it went."""
    if not os.path.exists(os.path.join(run_dir, "metrics.jsonl")):
        print(f"agentrl report: {run_dir} has no metrics.jsonl; pass a run directory "
              "(runs/<name>)", file=sys.stderr)
        return 2
    try:
        out = write_report(run_dir)
    except (ImportError, ValueError) as e:  # ValueError: a damaged file, nothing written
        print(f"agentrl report: {one_line(e)}", file=sys.stderr)
        return 2
    print(f"[agentrl] report:  {os.path.abspath(out['html'])}")
    print(f"[agentrl] viewer:  {os.path.abspath(out['viewer'])}")
    print(f"[agentrl] plots:   {len(out['plots'])} in {os.path.abspath(os.path.join(run_dir, 'plots'))}")
    for k, why in out["skipped"].items():
        print(f"[agentrl] not plotted: {k} ({why})")
    return 0
