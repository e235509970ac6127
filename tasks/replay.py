"""Replay a dataset's timeline as a living system: move `data.as_of` through it, run the whole
pipeline each period (warm start from the champion with `model.source: champion`, the gate with
its floor of baselines), and write a timeline of what the registry decided.

    as_of_1 < as_of_2 < ... (every `every`, the last at the newest interaction by default)
      -> per period: interactions seen, challenger / champion / baseline values on the same
         gate rows with the paired interval, the decision, the time it took

The timeline is a JSON file, rewritten after every period; a replay that is started again with
the same settings skips the periods it already has (and the stages reuse their folders), so an
interrupted replay resumes, also after an upgrade that added settings (`same_settings`).
`cft replay` runs it; flows/replay.py is the same as a Prefect flow.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from schemas.config import PipelineConfig, unix_seconds
from schemas.errors import InputError
from tasks.storage import fingerprint, write_json_atomic


def parse_every(text: str) -> int:
    """"30d" / "2w" / "12h" -> seconds."""
    units = {"d": 86400, "w": 7 * 86400, "h": 3600}
    if len(text) < 2 or text[-1] not in units or not text[:-1].isdigit() or int(text[:-1]) < 1:
        raise InputError(f"every (--every) must look like 30d, 2w or 12h, got {text!r}")
    return int(text[:-1]) * units[text[-1]]


def schedule(cfg: PipelineConfig, periods: int, every: str, start: datetime | None = None) -> list[datetime]:
    """The `as_of` of each period. Default start: the last period sees all the data (its as_of is
    just after the newest interaction), the others `every` apart before it."""
    if periods < 1:
        raise InputError(f"periods (--periods) must be at least 1, got {periods}")
    step = parse_every(every)
    if start is None:
        import pyarrow.parquet as pq

        from tasks.data import ingest

        ts = pq.read_table(ingest(cfg.data).path / "interactions.parquet", columns=["timestamp"]).column(0).to_numpy()
        first = int(ts.max()) + 1 - (periods - 1) * step
    else:
        first = unix_seconds(start)
    return [datetime.fromtimestamp(first + i * step, UTC) for i in range(periods)]


def period_record(cfg: PipelineConfig, out, seconds: float) -> dict:
    """One timeline row from a period's `tasks.chain.ChainOutput`."""
    manifest = json.loads((out.sequences.path / "manifest.json").read_text())
    trained = out.trained is not None and not out.trained.reused
    row = {"as_of": cfg.data.as_of.isoformat(), "interactions": manifest["stats"]["interactions"],
           "train_samples": manifest["stats"]["samples_train"], "trained": trained,
           "warm_start": out.trained.summary.get("warm_start") if out.trained else None, "seconds": round(seconds, 1)}
    if out.unchanged:
        return {**row, "decision": "unchanged", "reason": out.unchanged}
    d = out.decision
    return {**row, "version": d["version"], "decision": "promoted" if d["promoted"] else "kept challenger",
            "reason": d["reason"], "metric": d["metric"], "rows": d["rows"], "rows_fingerprint": d["rows_fingerprint"],
            "challenger": d["challenger_value"], "champion": d["champion_value"],
            "champion_version": d["champion_version"], "popularity": d["popularity_value"],
            "markov": d.get("markov_value"),
            "difference": d["difference"], "ci": [d["ci_low"], d["ci_high"]],
            "floor_promoted": d.get("floor_promoted"), "floor_reason": d.get("floor_reason")}


def replay(cfg: PipelineConfig, periods: int, every: str, out: Path, start: datetime | None = None,
           run_period: Callable | None = None, say: Callable[[str], None] = print) -> dict:
    """Run the periods (skipping those `out` already holds for these settings); returns the
    timeline {"settings": ..., "periods": [...]} and keeps `out` up to date after each period.
    `run_period(cfg) -> ChainOutput` defaults to `tasks.chain.run_pipeline`."""
    if run_period is None:
        from tasks.chain import run_pipeline as run_period
    config = cfg.model_dump(mode="json")
    when = {"every": every, "periods": periods, "start": start.isoformat() if start else None}
    key = fingerprint({"config": config, **when})
    timeline = {"settings": {"key": key, "dataset": cfg.data.name, "every": every, "periods": periods,
                             "objective": cfg.train.objective, "model": cfg.model.source,
                             "gate_metric": cfg.registry.gate_metric, "gate_rule": cfg.registry.gate_rule,
                             "start": when["start"], "config": config},
                "periods": []}
    if out.is_file():
        previous = json.loads(out.read_text())
        settings = previous.get("settings", {})
        # (every, periods and start only decide the periods' as_of: one the timeline has is skipped)
        if settings.get("key") == key or ("config" in settings and same_settings(
                settings["config"], config, type(cfg)().model_dump(mode="json"))):
            previous["settings"] = timeline["settings"]  # (now this run's: its key, config, periods)
            timeline = previous
    done = {p["as_of"] for p in timeline["periods"]}
    out.parent.mkdir(parents=True, exist_ok=True)
    for i, as_of in enumerate(schedule(cfg, periods, every, start), 1):
        if as_of.isoformat() in done:
            say(f"period {i}/{periods} (as of {as_of:%Y-%m-%d}): already in {out}")
            continue
        period_cfg = cfg.updated({"data.as_of": as_of.isoformat()})
        t0 = time.perf_counter()
        record = period_record(period_cfg, run_period(period_cfg), time.perf_counter() - t0)
        timeline["periods"].append(record)
        write_json_atomic(out, timeline)
        say(f"period {i}/{periods} (as of {as_of:%Y-%m-%d}): {record['interactions']:,} interactions, "
            f"{record['decision']} ({record['seconds']:.0f} s)")
    return timeline


def same_settings(before, now, default) -> bool:
    """Whether the config dump a timeline was written with (`before`) names the settings of `now`,
    the dump of this run's config, field by field: each value `before` holds is now's, and each
    field it lacks, one a later version added, holds its default (`default`, the dump of the
    default config). So a replay in progress resumes after an upgrade that adds settings, and
    starts again where a setting it ran with differs, a default included."""
    if isinstance(before, dict) and isinstance(now, dict):
        defaults = default if isinstance(default, dict) else {}
        return set(before) <= set(now) and all(
            same_settings(before[k], v, defaults.get(k)) if k in before else k in defaults and v == defaults[k]
            for k, v in now.items())
    return before == now


def plot_timeline(timeline: dict, path: Path) -> None:
    """Challenger, champion and baseline values per period, the challenger's interval as bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [p for p in timeline["periods"] if p["decision"] != "unchanged"]
    fig, ax = plt.subplots(figsize=(8, 4))
    if rows:
        x = [p["as_of"][:10] for p in rows]
        for key, style in (("challenger", "o-"), ("champion", "s--"), ("popularity", "^:"), ("markov", "v:")):
            values = [p.get(key) for p in rows]
            if any(v is not None for v in values):  # (periods recorded before the Markov floor have none)
                ax.plot(x, [float("nan") if v is None else v for v in values], style, label=key)
        ch = [p["challenger"] for p in rows]
        # The interval is of the paired difference; drawn around the champion's value.
        low = [p["champion"] + p["ci"][0] for p in rows]
        high = [p["champion"] + p["ci"][1] for p in rows]
        ax.vlines(x, low, high, color="grey", alpha=0.5, label="champion + difference interval")
        for xi, yi, p in zip(x, ch, rows, strict=True):
            ax.annotate("promoted" if p["decision"] == "promoted" else "kept", (xi, yi), fontsize=7,
                        textcoords="offset points", xytext=(0, 6), ha="center")
        ax.set_ylabel(rows[0]["metric"])
    ax.set_xlabel("as of")
    ax.set_title(f"{timeline['settings']['dataset']}: replay every {timeline['settings']['every']}")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _floor_note(period: dict) -> str:
    """What the floor did to the standing champion that period (rows written before it: nothing)."""
    v = period.get("floor_promoted")
    return f"; the champion fell below a baseline of this window: v{v} is champion" if v else ""


def report(timeline: dict, command: str) -> str:
    """The timeline as a Markdown report (docs/replay.md)."""
    s = timeline["settings"]
    lines = [f"# Replay: {s['dataset']}, every {s['every']}", "",
             f"Generated by `{command}`. Objective `{s['objective']}`, model `{s['model']}`, gate "
             f"`{s['gate_metric']}` (rule `{s['gate_rule']}`), on the newest validation rows of each "
             "period; the interval is a 95% paired bootstrap interval of challenger - champion.", "",
             "| as of | interactions | trained | challenger | champion | popularity | markov | difference [95% CI] "
             "| decision | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for p in timeline["periods"]:
        if p["decision"] == "unchanged":
            lines.append(f"| {p['as_of'][:10]} | {p['interactions']:,} | no | | | | | | unchanged: no new interactions "
                         f"| {p['seconds']:.0f} |")
            continue
        lines.append(
            f"| {p['as_of'][:10]} | {p['interactions']:,} | {'yes' if p['trained'] else 'reused'} | "
            f"v{p['version']} {p['challenger']:.4f} | v{p['champion_version']} {p['champion']:.4f} | "
            f"{p['popularity']:.4f} | {'' if p.get('markov') is None else format(p['markov'], '.4f')} | {p['difference']:+.4f} [{p['ci'][0]:+.4f}, {p['ci'][1]:+.4f}] | "
            f"{p['decision']}{_floor_note(p)} | {p['seconds']:.0f} |")
    return "\n".join(lines) + "\n"
