"""``agentrl report RUN_DIR``: PNG plots, the trajectory viewer and an HTML summary of a run.

    from agentrl.run.report import write_report
    out = write_report("runs/quickstart")      # out["html"] == "runs/quickstart/report.html"

Reads only what a run leaves behind (``metrics.jsonl``, ``eval/*.json``, ``trajectories/``,
``config.yaml``), so it works on a finished run, a crashed one, or one still training. Plots go
to ``RUN_DIR/plots/``; a plot whose metric the run never logged is listed with the reason
instead of drawn empty.
"""

from __future__ import annotations

import glob
import html
import json
import os
import sys
from typing import Any

from agentrl.run.metrics import read_metrics
from agentrl.run.viewer import trajectory_sources, turn_entropy, write_viewer
from agentrl.types import read_jsonl

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


def read_evals(run_dir: str) -> list[dict[str, Any]]:
    """The run's ``eval/*.json`` summaries, by iteration."""
    out = []
    for p in glob.glob(os.path.join(run_dir, "eval", "*.json")):
        with open(p, encoding="utf-8") as f:
            s = json.load(f)
        if isinstance(s, dict) and "success_rate" in s:
            s.setdefault("tag", os.path.basename(p)[:-5])
            out.append(s)
    return sorted(out, key=lambda s: (s.get("iteration", 0), s["tag"] != "before"))


def _save(plt: Any, fig: Any, path: str) -> str:
    from matplotlib.ticker import MaxNLocator

    for ax in fig.axes:  # iterations are whole numbers: no 2.5 ticks on a short run
        if ax.get_xlabel() == "iteration":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


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
        ax.plot(tx, ty, lw=0.8, alpha=0.6, label=f"train: {t}")
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


def entropy_matrix(run_dir: str) -> tuple[list[int], list[list[float | None]]]:
    """(iterations, matrix[turn][iteration]) of mean per-turn entropy from training dumps."""
    by_it: dict[int, dict[int, list[float]]] = {}
    for label, p in trajectory_sources(run_dir):
        if not label.startswith("train it "):
            continue
        it = int(label.split()[-1])
        for t in read_jsonl(p):
            for k, u in enumerate(t.turns):
                e, _ = turn_entropy(u)
                if e is not None:
                    by_it.setdefault(it, {}).setdefault(k, []).append(e)
    its = sorted(by_it)
    depth = max((k + 1 for d in by_it.values() for k in d), default=0)
    mat = [[(sum(v) / len(v)) if (v := by_it[i].get(k)) else None for i in its]
           for k in range(depth)]
    return its, mat


def plot_entropy_heatmap(plt: Any, run_dir: str, path: str) -> str | None:
    """Turn index x iteration heatmap of per-turn entropy (from the trajectory dumps)."""
    its, mat = entropy_matrix(run_dir)
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
                ) -> tuple[dict[str, str], dict[str, str]]:
    """Write every plot to ``RUN_DIR/plots``; returns ({name: path}, {name: why skipped}).

    ``rows`` / ``evals``: the run's metrics and eval summaries when already read.
    """
    plt = _plt()
    rows = read_metrics(run_dir) if rows is None else rows
    evals = read_evals(run_dir) if evals is None else evals
    d = os.path.join(run_dir, "plots")
    os.makedirs(d, exist_ok=True)
    done: dict[str, str] = {}
    skipped: dict[str, str] = {}

    def put(name: str, path: str | None, why: str) -> None:
        if path:
            done[name] = path
        else:
            skipped[name] = why

    put("success_rate", plot_success(plt, rows, evals, os.path.join(d, "success_rate.png")),
        "no rollout/success_rate in metrics.jsonl and no eval/*.json")
    for stem, title, ylabel, keys in LINE_PLOTS:
        put(stem, plot_lines(plt, rows, title, ylabel, keys, os.path.join(d, f"{stem}.png")),
            "not logged by this run: " + ", ".join(k for k, _ in keys))
    put("time_split", plot_time(plt, rows, os.path.join(d, "time_split.png")),
        "no perf/seconds_* in metrics.jsonl")
    put("entropy_heatmap", plot_entropy_heatmap(plt, run_dir, os.path.join(d, "entropy_heatmap.png")),
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
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.exists(path):
        return []
    import yaml

    with open(path, encoding="utf-8") as f:
        c = yaml.safe_load(f) or {}
    g = lambda *ks: _dig(c, ks)  # noqa: E731
    return [("env", f"{g('env', 'id')} {json.dumps(g('env', 'kwargs'))}"),
            ("eval split", json.dumps(g("env", "eval_kwargs"))),
            ("algorithm", str(g("algorithm", "name"))),
            ("model", f"{g('policy', 'model')} ({g('policy', 'dtype')}, {g('policy', 'backend')})"),
            ("episodes / iteration", f"{g('rollout', 'groups')} groups x "
                                     f"{g('rollout', 'group_size')}"),
            ("iterations (configured)", str(g("train", "iterations")))]


def _dig(d: Any, keys: tuple[str, ...]) -> Any:
    for k in keys:
        d = d.get(k) if isinstance(d, dict) else None
    return d


def write_report(run_dir: str) -> dict[str, Any]:
    """Plots, ``viewer.html`` and ``report.html`` for ``run_dir``; returns their paths."""
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"{run_dir}: no such run directory")
    rows = read_metrics(run_dir)
    evals = read_evals(run_dir)
    plots, skipped = write_plots(run_dir, rows, evals)
    viewer = write_viewer(run_dir)
    esc = html.escape
    name = os.path.basename(os.path.abspath(run_dir))
    last = max((r["iteration"] for r in rows), default=0)
    parts = [f"<h1>agentrl run: {esc(name)}</h1>",
             f"<p>{last} iterations logged · <a href='viewer.html'>trajectory viewer</a> · "
             "<a href='metrics.jsonl'>metrics.jsonl</a> · <a href='config.yaml'>config.yaml</a>"
             "</p><table>"]
    parts += [f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in _config_summary(run_dir)]
    parts.append("</table><h2>Held-out evaluation</h2>")
    if evals:
        parts.append("<table><tr><th>tag</th><th>iteration</th><th>episodes</th><th>success</th>"
                     "<th>95% CI</th><th>turns</th><th>return</th><th>invalid actions</th></tr>")
        for e in evals:
            lo, hi = e["ci95"]
            parts.append(f"<tr><td>{esc(str(e['tag']))}</td><td>{e.get('iteration', '')}</td>"
                         f"<td>{e.get('episodes', '')}</td><td>{e['success_rate']:.3f}</td>"
                         f"<td>[{lo:.2f}, {hi:.2f}]</td><td>{e.get('turns', 0):.2f}</td>"
                         f"<td>{e.get('return', 0):.3f}</td>"
                         f"<td>{e.get('invalid_action_rate', 0):.3f}</td></tr>")
        parts.append("</table>")
    else:
        parts.append("<p>No eval/*.json yet.</p>")
    fired = _alarm_summary(rows)
    parts.append("<h2>Alarms</h2>")
    if fired:
        parts.append("<ul>" + "".join(
            f"<li class='alarm'><b>{esc(k)}</b> fired at {len(v)} iteration(s): "
            f"{esc(', '.join(map(str, v[:20])))}{' ...' if len(v) > 20 else ''}</li>"
            for k, v in sorted(fired.items())) + "</ul>")
    else:
        parts.append("<p>None fired" + ("" if any(k.startswith("alarm/") for r in rows for k in r)
                                        else " (this run did not log alarm/* metrics)") + ".</p>")
    parts.append("<h2>Plots</h2><div class='grid'>")
    for k, p in plots.items():
        rel = os.path.relpath(p, run_dir)
        parts.append(f"<figure><a href='{esc(rel)}'><img src='{esc(rel)}' alt='{esc(k)}'></a>"
                     f"<figcaption>{esc(k)}</figcaption></figure>")
    parts.append("</div>")
    if skipped:
        parts.append("<h3>Not plotted</h3><ul>" + "".join(
            f"<li>{esc(k)}: {esc(v)}</li>" for k, v in skipped.items()) + "</ul>")
    page = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>agentrl report: {esc(name)}</title><style>"
            "body{font:14px/1.45 system-ui,sans-serif;margin:20px;color:#1d2330}"
            "table{border-collapse:collapse}th,td{border:1px solid #ddd;padding:3px 8px;"
            "text-align:left}.grid{display:flex;flex-wrap:wrap;gap:10px}"
            "figure{margin:0}img{width:480px;border:1px solid #ddd}.alarm{color:#b03a2e}"
            "</style></head><body>" + "\n".join(parts) + "</body></html>")
    path = os.path.join(run_dir, "report.html")
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
    return {"html": path, "viewer": viewer, "plots": plots, "skipped": skipped}


def report_main(run_dir: str) -> int:
    """``agentrl report RUN_DIR``: write everything and print where it went."""
    if not os.path.exists(os.path.join(run_dir, "metrics.jsonl")):
        print(f"agentrl report: {run_dir} has no metrics.jsonl; pass a run directory "
              "(runs/<name>)", file=sys.stderr)
        return 2
    try:
        out = write_report(run_dir)
    except ImportError as e:
        print(f"agentrl report: {e}", file=sys.stderr)
        return 2
    print(f"[agentrl] report:  {os.path.abspath(out['html'])}")
    print(f"[agentrl] viewer:  {os.path.abspath(out['viewer'])}")
    print(f"[agentrl] plots:   {len(out['plots'])} in {os.path.abspath(os.path.join(run_dir, 'plots'))}")
    for k, why in out["skipped"].items():
        print(f"[agentrl] not plotted: {k} ({why})")
    return 0
