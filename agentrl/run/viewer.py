"""Trajectory viewer: one static, self-contained HTML page per run (``runs/x/viewer.html``).

    from agentrl.run.viewer import write_viewer
    write_viewer("runs/quickstart")            # also run by `agentrl report`

It reads the JSONL dumps a run leaves behind (``trajectories/iter_*.jsonl`` from training,
``eval/*_trajectories.jsonl`` from evaluation, or the ``*_trajectories.jsonl`` an
``agentrl eval --out DIR`` writes) and shows each episode turn by turn: observation, the reply
and the action parsed from it, reward, per-turn entropy and advantage when stored. Filters by
source, task type and outcome, and a text search. Plain JS and inline CSS, no network: the page
works offline and can be attached to a bug report. Initial filters can be set in the URL hash
(``viewer.html#outcome=success&type=coin_collector&source=eval%20final``).

The trajectories of one multi-agent game (same episode id, one per role) are shown as one
card, the players side by side, one row per move in game order.

Per-turn entropy is ``info["entropy"]`` when the rollout stored it; otherwise the mean of
-logprob over the sampled tokens, an unbiased estimate of the policy entropy at those positions
(marked with ~). Advantage comes from ``info["advantage"]`` or ``extra["advantages"][turn]``.
"""

from __future__ import annotations

import glob
import html
import json
import math
import os
import re
from typing import TYPE_CHECKING, Any

from agentrl.types import Trajectory, read_jsonl

if TYPE_CHECKING:
    from agentrl.learn.batch import Batch

MAX_TEXT = 4000  # characters per observation/reply kept in the page (keeps big runs loadable)
MAX_EPISODES = 3000  # episodes in the page (the newest dumps win when there are more)


def trajectory_sources(run_dir: str) -> list[tuple[str, str]]:
    """(label, path) of every trajectory dump under ``run_dir``, training first by iteration."""
    out: list[tuple[str, str]] = []
    for p in sorted(glob.glob(os.path.join(run_dir, "trajectories", "iter_*.jsonl"))):
        m = re.search(r"iter_(\d+)", os.path.basename(p))
        out.append((f"train it {int(m.group(1)) if m else p}", p))
    for p in sorted(glob.glob(os.path.join(run_dir, "eval", "*_trajectories.jsonl"))
                    + glob.glob(os.path.join(run_dir, "*_trajectories.jsonl"))):
        out.append((f"eval {os.path.basename(p)[:-len('_trajectories.jsonl')]}", p))
    return out


def turn_entropy(turn: Any) -> tuple[float | None, bool]:
    """(entropy, exact): ``info["entropy"]`` if stored, else mean -logprob (an estimate)."""
    e = turn.info.get("entropy") if isinstance(turn.info, dict) else None
    if isinstance(e, (int, float)):
        return float(e), True
    if turn.logprobs:
        return -sum(turn.logprobs) / len(turn.logprobs), False
    return None, False


def record_turn_advantages(batch: Batch) -> None:
    """Store each turn's mean token advantage in ``extra["advantages"]`` of its trajectory.

    ``batch.advantages`` (N, L) is averaged over the action tokens of each turn of the turn
    table (M,), so the dumps (and the viewer) show the credit every turn received, whichever
    algorithm assigned it. Turns without action tokens get ``None``.
    """
    if batch.advantages is None or batch.num_turns == 0:
        return
    mean, count = batch.turn_mean(batch.advantages)  # (M,) each
    per_traj: dict[int, list[float | None]] = {}
    for m, (ti, k) in enumerate(zip(batch.turn_traj.tolist(), batch.turn_index.tolist())):
        row = per_traj.setdefault(ti, [None] * batch.trajectories[ti].num_turns)
        row[k] = round(float(mean[m]), 6) if count[m] > 0 else None
    for ti, row in per_traj.items():
        batch.trajectories[ti].extra["advantages"] = row


def _cut(s: str) -> str:
    return s if len(s) <= MAX_TEXT else s[:MAX_TEXT] + f" ... [{len(s) - MAX_TEXT} more chars]"


def episode_record(t: Trajectory, source: str) -> dict[str, Any]:
    """The JSON the page renders for one trajectory (token ids and logprobs left out)."""
    advs = t.extra.get("advantages") if isinstance(t.extra.get("advantages"), list) else None
    turns = []
    for k, u in enumerate(t.turns):
        ent, exact = turn_entropy(u)
        adv = u.info.get("advantage")
        if adv is None and advs is not None and k < len(advs):
            adv = advs[k]
        turns.append({"obs": _cut(u.observation), "reply": _cut(u.response), "action": u.action,
                      "valid": u.action_valid, "reward": u.reward + u.shaping, "env_reward": u.reward,
                      "entropy": ent, "exact": exact,
                      "adv": adv if isinstance(adv, (int, float)) else None,
                      "finish": u.finish_reason, "ntok": len(u.action_ids),
                      "move": u.episode_turn})
    outcome = "success" if t.success else (t.termination or "failure")
    return {"id": t.trajectory_id, "source": source, "group": t.group_id, "seed": t.seed,
            "task": _cut(t.task), "type": t.task_type or "-", "outcome": outcome,
            "success": t.success, "score": t.score, "ret": t.total_reward,
            "error": str(t.extra.get("error", "")), "turns": turns,
            "episode": t.episode_id, "role": t.role, "player": t.player, "result": t.outcome}


def collect_episodes(run_dir: str, max_episodes: int | None = MAX_EPISODES,
                     ) -> list[dict[str, Any]]:
    """Records for every dumped trajectory (the newest ``max_episodes`` when there are more;
    None: all).

    Raises:
        ValueError: a line that is not a trajectory (the message names the file and record).
    """
    eps: list[dict[str, Any]] = []
    for label, path in trajectory_sources(run_dir):
        for i, t in enumerate(read_jsonl(path), 1):
            try:
                eps.append(episode_record(t, label))
            except (TypeError, ValueError, AttributeError) as e:  # fields of the wrong type
                raise ValueError(f"{path}: record {i} is not a trajectory ({e})") from None
    return eps if max_episodes is None else eps[-max_episodes:]


def render_html(episodes: list[dict[str, Any]], title: str) -> str:
    """The complete page: data embedded as JSON, rendered by inline JS."""
    # Inside <script>, "</script" ends the block early and "<!--<script" makes the HTML
    # tokenizer skip the real end tag; JSON can spell every <, > and & as a \u escape, so the
    # block holds none. Lone surrogates become "?" (browsers cannot serialise them); NaN/inf
    # (not JSON: the browser's JSON.parse rejects them) become null.
    data = (json.dumps(_json_safe(episodes), allow_nan=False).replace("<", "\\u003c")
            .replace(">", "\\u003e").replace("&", "\\u0026"))
    title = html.escape(title.encode("utf-8", "replace").decode("utf-8"))
    return _PAGE.replace("__TITLE__", title).replace("__DATA__", data)


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, str) and not x.isascii():  # a lone surrogate becomes "?"
        return x.encode("utf-8", "replace").decode("utf-8")
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def write_viewer(run_dir: str, out_path: str | None = None, max_episodes: int = MAX_EPISODES,
                 episodes: list[dict[str, Any]] | None = None) -> str:
    """Write ``viewer.html`` for ``run_dir`` (or ``out_path``); returns its path.
    ``episodes``: the records to show when already collected (`collect_episodes`)."""
    eps = collect_episodes(run_dir, max_episodes) if episodes is None else episodes
    path = out_path or os.path.join(run_dir, "viewer.html")
    title = f"agentrl trajectories: {os.path.basename(os.path.abspath(run_dir))}"
    with open(path, "w", encoding="utf-8") as f:
        f.write(render_html(eps, title))
    return path


_PAGE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{background:#1d2330;color:#fff;padding:10px 18px}
header h1{font-size:17px;margin:0 0 6px}
.filters label{margin-right:14px;font-size:13px}
.filters select,.filters input{font-size:13px;margin-left:4px}
#summary{padding:8px 18px;font-size:13px;color:#444}
#episodes{padding:0 18px 30px}
.episode{background:#fff;border:1px solid #d8dce3;border-radius:6px;margin:8px 0}
.episode>summary{cursor:pointer;padding:7px 10px;display:flex;gap:12px;align-items:center}
.badge{border-radius:10px;padding:1px 9px;font-size:12px;color:#fff;background:#8a8f98}
.badge.success{background:#1f9d55}.badge.failure{background:#c0392b}
.badge.max_turns,.badge.truncated,.badge.context_limit{background:#d68910}
.badge.env_error,.badge.env_timeout{background:#6c3483}
.meta{color:#555;font-size:12px}.task{color:#222;flex:1;overflow:hidden;white-space:nowrap;
text-overflow:ellipsis}
table{border-collapse:collapse;width:100%;font-size:12.5px}
th,td{border-top:1px solid #e5e7eb;padding:4px 6px;vertical-align:top;text-align:left}
th{background:#f0f2f5;font-weight:600}
td.obs,td.reply{white-space:pre-wrap;max-width:460px;font-family:ui-monospace,monospace}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.invalid{color:#c0392b;font-weight:600}
.act{display:block;margin-top:3px;color:#1f5fa8;font-weight:600}
.err{color:#6c3483;padding:4px 10px}
</style></head><body>
<header><h1>__TITLE__</h1><div class="filters">
<label>source<select id="f-source"></select></label>
<label>task type<select id="f-type"></select></label>
<label>outcome<select id="f-outcome"></select></label>
<label>search<input id="f-text" type="search" placeholder="text in task, observation or reply"></label>
</div></header>
<div id="summary"></div><div id="episodes"></div>
<script id="data" type="application/json">__DATA__</script>
<script>
"use strict";
const EPS = JSON.parse(document.getElementById("data").textContent);
const $ = (id) => document.getElementById(id);
const el = (tag, cls, text) => {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);  // never innerHTML
  return e;
};
const fmt = (x, d) => (x === null || x === undefined) ? "-" : Number(x).toFixed(d);
const maxEnt = Math.max(1e-9, ...EPS.flatMap(e => e.turns.map(t => t.entropy || 0)));

function fill(id, values) {
  const s = $(id);
  s.appendChild(el("option", null, "all")).value = "";
  [...new Set(values)].forEach(v => { s.appendChild(el("option", null, v)).value = v; });
}
fill("f-source", EPS.map(e => e.source));
fill("f-type", EPS.map(e => e.type).sort());
fill("f-outcome", EPS.map(e => e.outcome).sort());

// Initial filters from the URL hash: #source=...&type=...&outcome=...&q=...
const H = new URLSearchParams(location.hash.slice(1));
const setIf = (id, key) => { if (H.has(key)) $(id).value = H.get(key); };
setIf("f-source", "source"); setIf("f-type", "type"); setIf("f-outcome", "outcome");
setIf("f-text", "q");

function entCell(t) {
  const td = el("td", "num");
  if (t.entropy === null) { td.textContent = "-"; return td; }
  td.textContent = (t.exact ? "" : "~") + fmt(t.entropy, 3);
  const a = Math.min(1, t.entropy / maxEnt);
  td.style.background = `rgba(214,137,16,${(0.1 + 0.6 * a).toFixed(2)})`;
  td.title = t.exact ? "policy entropy (stored)" : "estimate: mean -logprob of sampled tokens";
  return td;
}

function episodeNode(e, open) {
  const d = el("details", "episode");
  d.open = open;
  d.dataset.outcome = e.outcome; d.dataset.type = e.type;
  const s = el("summary");
  s.appendChild(el("span", "badge " + e.outcome, e.outcome));
  s.appendChild(el("span", "meta", `${e.source} · seed ${e.seed} · ${e.type}`));
  s.appendChild(el("span", "task", e.task));
  s.appendChild(el("span", "meta", `return ${fmt(e.ret, 2)}` +
    (e.score !== null ? ` · score ${fmt(e.score, 2)}` : "") + ` · ${e.turns.length} turns`));
  d.appendChild(s);
  if (e.error) d.appendChild(el("div", "err", "error: " + e.error));
  const tb = el("table");
  const hr = el("tr");
  ["#", "observation", "reply → action", "reward", "entropy", "advantage", "tokens"]
    .forEach(h => hr.appendChild(el("th", null, h)));
  tb.appendChild(hr);
  e.turns.forEach((t, i) => {
    const r = el("tr");
    r.appendChild(el("td", "num", i));
    r.appendChild(el("td", "obs", t.obs));
    const rc = el("td", "reply", t.reply);
    const a = el("span", "act" + (t.valid ? "" : " invalid"),
                 "→ " + (t.action || "(none)") + (t.valid ? "" : "  (invalid)"));
    rc.appendChild(a);
    r.appendChild(rc);
    r.appendChild(el("td", "num", fmt(t.reward, 2)));
    r.appendChild(entCell(t));
    r.appendChild(el("td", "num", fmt(t.adv, 3)));
    r.appendChild(el("td", "num", t.ntok + (t.finish === "length" ? " (cut)" : "")));
    tb.appendChild(r);
  });
  d.appendChild(tb);
  return d;
}

// A multi-agent game: every agent's trajectory side by side, one row per move in game order.
function gameNode(recs, open) {
  const d = el("details", "episode game");
  d.open = open;
  const s = el("summary");
  s.appendChild(el("span", "badge", "game"));
  recs.forEach(e => s.appendChild(el("span", "badge " + (e.result === "win" ? "success" :
    e.result === "loss" ? "failure" : ""), `${e.role}${e.player ? " (" + e.player + ")" : ""}: ` +
    (e.result || e.outcome))));
  s.appendChild(el("span", "meta", `${recs[0].source} · seed ${recs[0].seed} · ${recs[0].type}`));
  d.appendChild(s);
  const tb = el("table");
  const hr = el("tr");
  hr.appendChild(el("th", null, "move"));
  recs.forEach(e => hr.appendChild(el("th", null, e.role + (e.player ? ` (${e.player})` : ""))));
  tb.appendChild(hr);
  const moves = recs.flatMap((e, c) => e.turns.map((t, i) => ({c, i, t})))
    .sort((a, b) => (a.t.move ?? a.i) - (b.t.move ?? b.i));
  moves.forEach(({c, t}) => {
    const r = el("tr");
    r.appendChild(el("td", "num", t.move ?? "-"));
    recs.forEach((_, k) => {
      if (k !== c) { r.appendChild(el("td")); return; }
      const td = el("td", "reply", t.obs);
      td.appendChild(el("span", "act" + (t.valid ? "" : " invalid"), "→ " + (t.action || "(none)") +
        (t.valid ? "" : "  (invalid)") + `  reward ${fmt(t.reward, 2)}` +
        (t.adv === null ? "" : `  adv ${fmt(t.adv, 3)}`)));
      r.appendChild(td);
    });
    tb.appendChild(r);
  });
  d.appendChild(tb);
  return d;
}

// Cards in order: the trajectories of one multi-agent game become one game card.
function cards(shown) {
  const out = [], games = new Map();
  shown.forEach(e => {
    if (!e.role) { out.push([e]); return; }
    const key = e.source + "|" + e.episode;
    if (!games.has(key)) { games.set(key, []); out.push(games.get(key)); }
    games.get(key).push(e);
  });
  return out;
}

function render() {
  const src = $("f-source").value, ty = $("f-type").value, oc = $("f-outcome").value;
  const q = $("f-text").value.toLowerCase();
  const shown = EPS.filter(e => (!src || e.source === src) && (!ty || e.type === ty) &&
    (!oc || e.outcome === oc) && (!q || (e.task + " " + e.turns.map(t => t.obs + " " + t.reply)
      .join(" ")).toLowerCase().includes(q)));
  const box = $("episodes");
  box.replaceChildren();
  box.dataset.count = shown.length;
  const wins = shown.filter(e => e.success).length;
  const turns = shown.reduce((a, e) => a + e.turns.length, 0);
  $("summary").textContent = `${shown.length} of ${EPS.length} episodes` + (shown.length ?
    ` · success ${(100 * wins / shown.length).toFixed(1)}% · ` +
    `${(turns / shown.length).toFixed(1)} turns on average` : "");
  // Render at most 300 cards at once: a big run stays responsive; filter to see the rest.
  const all = cards(shown);
  all.slice(0, 300).forEach((recs, i) => box.appendChild(
    recs.length > 1 ? gameNode(recs, i === 0) : episodeNode(recs[0], i === 0)));
  if (all.length > 300) box.appendChild(el("p", "meta", `${all.length - 300} more: narrow the filters`));
}
["f-source", "f-type", "f-outcome"].forEach(id => $(id).addEventListener("change", render));
$("f-text").addEventListener("input", render);
render();
</script></body></html>
"""
