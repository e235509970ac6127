"""The champion/challenger gate: a new version against the champion as it serves and this window's
baselines, on the same rows, with a paired interval (`decide`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from schemas.config import PipelineConfig
from tasks.baselines import EVALUATION_NAMES
from tasks.registry.champion import drop_challenger, set_champion
from tasks.registry.loading import LoadedPyfunc
from tasks.registry.names import (
    CHALLENGER,
    CHAMPION,
    RANKING_KEY_TAG,
    alias_version,
    promotion_lock,
    registry_client,
    served_ranking_key,
    versions_newest_first,
)
from tasks.registry.registration import answers_source_ids, window_baselines
from tasks.storage import fingerprint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GateDecision:
    """What the gate decided for `version`, on `rows` gate rows (fingerprint `rows_fingerprint`):
    the mean metric of the challenger, the champion and the floor's baselines (popularity, the
    Markov chain) on those rows, and the paired difference challenger - champion with its
    bootstrap interval."""

    version: str
    promoted: bool
    reason: str
    metric: str
    rows: int
    rows_fingerprint: str
    challenger_value: float
    champion_version: str | None
    champion_value: float | None
    popularity_value: float
    difference: float
    ci_low: float
    ci_high: float
    # The floor guards the standing champion too: when the challenger is not promoted and one of
    # this window's baselines beats the champion (the same rule and margin), that baseline version
    # becomes champion; its version and why.
    floor_promoted: str | None = None
    floor_reason: str | None = None
    markov_value: float | None = None  # (None in decisions recorded before the Markov floor)


def decide(ours, champion, floors: dict | None, margin: float, rule: str,
           level: float = 0.95) -> tuple[bool, str, tuple]:
    """The gate rule on per-row metric values of the same rows (float[B] each).

    Promote iff the challenger beats the champion by more than `margin` (rule `point`: the mean
    paired difference; rule `ci`: the lower bound of its bootstrap interval) AND, when `floors`
    ({baseline kind: values}) are given, beats each of them the same way with margin 0. Returns
    (promoted, reason, (difference, low, high)).
    """
    import numpy as np

    from cft_core.metrics import paired_bootstrap_ci

    ours = np.asarray(ours, dtype=float)
    diff = paired_bootstrap_ci(ours, np.asarray(champion, dtype=float), level)
    clears = (diff[1] if rule == "ci" else diff[0]) > margin
    what = "lower bound" if rule == "ci" else "mean difference"
    interval = f"{diff[0]:+.4f} [{diff[1]:+.4f}, {diff[2]:+.4f}]"
    if not clears:
        return False, f"does not beat the champion: {what} of {interval} is not above the margin {margin:g}", diff
    for kind, floor in (floors or {}).items():
        over = paired_bootstrap_ci(ours, np.asarray(floor, dtype=float), level)
        if not (over[1] if rule == "ci" else over[0]) > 0:
            return False, (f"beats the champion ({interval}) but not the {kind} floor: "
                           f"{over[0]:+.4f} [{over[1]:+.4f}, {over[2]:+.4f}]"), diff
    beaten = " and the " + " and ".join(floors) + " floor" + ("s" if len(floors) > 1 else "") if floors else ""
    return True, f"beats the champion by {interval} (margin {margin:g}){beaten}", diff


def _gate_rows(cfg: PipelineConfig, model_dir: Path, sequences: Path):
    """(per-row ranks of `model_dir` by the gate's method, {baseline kind: per-row ranks of this
    window's baseline}, the rows' predictions table): `evaluate` on the gate split."""
    import pandas as pd

    from tasks.evaluation import evaluate

    gate_cfg = cfg.model_copy(update={"eval": cfg.gate_eval()})
    result = evaluate(gate_cfg, model_dir, sequences, progress=False)
    preds = pd.read_parquet(result.path / "predictions.parquet")
    method = cfg.registry.gate_metric.split("/")[0]
    # (The evaluation ranks each baseline as its registered version serves.)
    floors = {kind: preds[f"{column}_rank"].to_numpy() for kind, column in EVALUATION_NAMES.items()}
    return preds[f"{method}_rank"].to_numpy(), floors, preds


def _served_ranks(cfg: PipelineConfig, mv, preds, sequences: Path, rows_fp: str):
    """First-hit ranks [B] on the gate rows (`preds`, as `_gate_rows` read them) of the registered
    version `mv` as it serves: through its own pyfunc, so with its own catalogue, ranking settings
    and model (an LLM's or a baseline's counts), not this window's.

    Each row's history goes in as a client sends it, the source's item ids: those the version's
    catalogue lacks (items newer than it) are left out of the prompt, as serving leaves them out,
    and an item renamed since is shown under the name it had. The history is not excluded from
    the answers (the evaluation does not exclude it either). The answers, the gate metric's K of
    them, are mapped to this window's catalogue by source item id, so an item the version does
    not know is never its hit: a standing champion is judged on what it would recommend, not on
    what a model ranking this window's catalogue could. (A version registered before served
    models spoke the source's ids takes and gives titles here.) Kept under
    <data_root>/registry/gate per version and gate rows, so that gating several challengers on
    one window ranks the champion once."""
    import numpy as np
    import pandas as pd

    from cft_core.metrics import first_hit_ranks, title_ids
    from cft_core.ranking import served_catalogue
    from tasks.evaluation import EVALUATION_VERSION
    from tasks.storage import atomic_dir, with_code_versions

    k = int(cfg.registry.gate_metric.split("@")[1])
    key = fingerprint(with_code_versions({"version": [mv.name, str(mv.version), mv.run_id, mv.creation_timestamp],
                                          "rows": rows_fp, "k": k}, evaluation=EVALUATION_VERSION))
    cache = cfg.data.data_root / "registry" / "gate" / f"{mv.name}-v{mv.version}-{key}"
    if (cache / "ranks.json").is_file():
        return np.asarray(json.loads((cache / "ranks.json").read_text()), dtype=np.int64)
    source_ids, titles = served_catalogue(sequences / "catalogue.parquet")  # row = this window's dense item id
    tid, table = title_ids(titles)  # hits by title, as the evaluation counts them (duplicates share)
    with LoadedPyfunc(f"models:/{mv.name}/{mv.version}") as loaded:
        by_id = answers_source_ids(loaded.pyfunc)
        histories = ([[source_ids[i] for i in h] for h in preds["history_item_ids"]] if by_id
                     else [list(h) for h in preds["history_titles"]])
        size = len(loaded.model.catalogue)
        answers = loaded.pyfunc.predict(pd.DataFrame({"history": histories}),
                                        params={"k": min(k, size), "exclude_history": False})
    if by_id:
        tid_of = dict(zip(source_ids, tid.tolist(), strict=True))
        ranked = [[tid_of.get(str(i), -1) for i in ids] for ids in answers["item_ids"]]
    else:
        ranked = [[table.get(t, -1) for t in row] for row in answers["titles"]]
    padded = np.full((len(ranked), k), -1, dtype=np.int64)
    for b, row in enumerate(ranked):
        padded[b, : len(row)] = row
    ranks = first_hit_ranks(padded, np.array([table[t] for t in preds["target_title"]]))
    with atomic_dir(cache) as tmp:
        (tmp / "ranks.json").write_text(json.dumps(ranks.tolist()))
    return ranks


def gate_model(cfg: PipelineConfig, version: str, model_dir: Path, sequences: Path) -> GateDecision:
    """Champion/challenger on the newest rows: the new version's model, the champion and this
    window's baselines are scored on the same gate rows (`cfg.gate_eval()`), and
    `decide` applies the rule. Records every value, the paired difference with its interval, the
    rows' fingerprint and the decision with its reason as version tags and in the version's
    model card. Serialised per model by `promotion_lock`."""
    from cft_core.metrics import per_row_metric
    from tasks.tracking import tracking_uri

    uri = tracking_uri(cfg)
    client, name, version = registry_client(uri), cfg.registered_model_name(), str(version)
    r = cfg.registry
    metric = r.gate_metric.split("/")[1]
    ours_ranks, floor_ranks, preds = _gate_rows(cfg, model_dir, sequences)
    rows_fp = fingerprint({"data": sequences.name, "rows": preds["user_id"].tolist(),
                           "targets": preds["target_item_id"].tolist()})
    with promotion_lock(cfg, name):
        champion = alias_version(client, name, CHAMPION)
        ours = per_row_metric(ours_ranks, metric)
        floors = {kind: per_row_metric(ranks, metric) for kind, ranks in floor_ranks.items()}
        means = {kind: float(values.mean()) for kind, values in floors.items()}
        if champion == version:
            return _record(client, cfg, GateDecision(version, True, "already champion", r.gate_metric, len(preds),
                                                     rows_fp, float(ours.mean()), champion, float(ours.mean()),
                                                     means["popularity"], 0.0, 0.0, 0.0,
                                                     markov_value=means["markov"]), move=False)
        champion_values = None
        if champion is not None:  # as it serves, on the same rows
            champion_ranks = _served_ranks(cfg, client.get_model_version(name, champion), preds, sequences, rows_fp)
            champion_values = per_row_metric(champion_ranks, metric)
        if champion_values is None:  # no champion at all (no baseline registered): the best floor decides
            champion_values = floors[max(means, key=means.get)]
        promoted, reason, (diff, low, high) = decide(ours, champion_values, floors if r.gate_floor else None,
                                                     r.gate_margin, r.gate_rule, r.gate_ci_level)
        floor_promoted = floor_reason = None
        if not promoted and r.gate_floor and champion is not None:
            floor_promoted, floor_reason = _champion_below_floor(client, cfg, champion, champion_values, floors, sequences)
        decision = GateDecision(version, promoted, reason, r.gate_metric, len(preds), rows_fp, float(ours.mean()),
                                champion, float(champion_values.mean()), means["popularity"], diff, low, high,
                                floor_promoted, floor_reason, markov_value=means["markov"])
        return _record(client, cfg, decision, move=True)


def _champion_below_floor(client, cfg: PipelineConfig, champion: str, champion_values, floors: dict,
                          sequences: Path) -> tuple[str | None, str | None]:
    """(version, reason) of this data window's best baseline (by mean on the gate rows) among
    those that beat the standing `champion` there by the gate's rule and margin, else (None,
    None). The gate's floor otherwise holds only when a version is promoted; a champion can fall
    below it later (an older window's model or baseline, or a person's promotion), and the
    champion must never be worse than the simple baselines. `floors`: {kind: the gate's per-row
    values of the evaluation's baseline}, which ranks as this window's registered baseline
    serves (the same training counts and transitions, `popularity_ranking` and `markov_ranking`;
    tests/train/test_registry.py checks them row for row), so the baseline is not downloaded and
    ranked again. A kind this window has no version of (registered before it existed) is passed over."""
    name, r = cfg.registered_model_name(), cfg.registry
    registered = window_baselines(client, name, json.loads((sequences / "manifest.json").read_text())["fingerprint"])
    for kind in sorted(floors, key=lambda k: -floors[k].mean()):
        window = registered.get(kind)
        if window is None:
            continue
        if window == champion:
            return None, None  # the best baseline there is already serves
        floor = floors[kind]
        better, _, (diff, low, high) = decide(floor, champion_values, None, r.gate_margin, r.gate_rule, r.gate_ci_level)
        if better:
            return window, (f"champion v{champion} ({champion_values.mean():.4f}) fell below this data window's {kind} "
                            f"baseline v{window} ({floor.mean():.4f}): {diff:+.4f} [{low:+.4f}, {high:+.4f}]")
    return None, None


def _record(client, cfg: PipelineConfig, d: GateDecision, move: bool) -> GateDecision:
    """Write the decision on the version (tags, model card) and move the aliases."""
    name = cfg.registered_model_name()
    tags = {"gate.metric": d.metric, "gate.value": repr(d.challenger_value), "gate.rows": str(d.rows),
            "gate.rows_fingerprint": d.rows_fingerprint, "gate.champion_version": str(d.champion_version),
            "gate.champion_value": repr(d.champion_value), "gate.popularity_value": repr(d.popularity_value),
            "gate.markov_value": repr(d.markov_value),
            "gate.difference": repr(d.difference), "gate.ci": f"[{d.ci_low!r}, {d.ci_high!r}]",
            "gate.rule": cfg.registry.gate_rule, "gate.decision": "promoted" if d.promoted else "kept challenger",
            "gate.reason": d.reason}
    if d.floor_promoted:
        tags["gate.floor_promoted"] = f"v{d.floor_promoted}: {d.floor_reason}"
    for key, value in tags.items():
        client.set_model_version_tag(name, d.version, key, value)
    mv = client.get_model_version(name, d.version)
    card = (mv.description or "").split("\n\n**Gate**")[0]
    client.update_model_version(name, d.version, description=card + "\n\n" + gate_card(cfg, d))
    if move and d.promoted:
        set_champion(client, name, d.version, "gate", d.reason)
        # (and from the champion it replaced: a person with EDIT only may have promoted a challenger)
        drop_challenger(client, name, {d.version, str(d.champion_version)})
    elif move:
        client.set_registered_model_alias(name, CHALLENGER, d.version)
        if d.floor_promoted:
            set_champion(client, name, d.floor_promoted, "gate", d.floor_reason)
            log.info("gate %s: v%s (a baseline) is champion: %s", name, d.floor_promoted, d.floor_reason)
    log.info("gate %s v%s: %s", name, d.version, d.reason)
    return d


def gate_card(cfg: PipelineConfig, d: GateDecision) -> str:
    """The gate's section of a model card (Markdown), also the Prefect artifact's text."""
    level = f"{cfg.registry.gate_ci_level:.0%}"
    champion = (f"| champion (v{d.champion_version}, as it serves) | {d.champion_value:.4f} |"
                if d.champion_value is not None else "| champion | none |")
    markov = [f"| Markov-chain baseline | {d.markov_value:.4f} |"] if d.markov_value is not None else []
    floor = ([f"\n**The floor**: v{d.floor_promoted} (a baseline of this window) is champion now: {d.floor_reason}."]
             if d.floor_promoted else [])
    return "\n".join([
        f"**Gate** ({d.metric} on {d.rows} {cfg.registry.gate_split} rows, rows {d.rows_fingerprint}): "
        f"**{'promoted to champion' if d.promoted else 'kept as challenger'}**: {d.reason}.", "",
        "| | value |", "|---|---|",
        f"| this version | {d.challenger_value:.4f} |", champion,
        f"| popularity baseline | {d.popularity_value:.4f} |", *markov,
        f"| difference, {level} interval | {d.difference:+.4f} [{d.ci_low:+.4f}, {d.ci_high:+.4f}] |", *floor])


def previous_decision(cfg: PipelineConfig, train_key: str) -> dict | None:
    """The gate tags of the LLM version trained with `train_key` (the data and every training
    setting, warm start aside: `tasks.training.run_fingerprint`) and served as this config ranks
    (`served_ranking_key`), when it was gated already, with its `version` and the `champion` now
    (a version, or None); else None. Such a run would retrain on the very rows that were judged
    before, and register what is registered."""
    from tasks.tracking import tracking_uri

    client = registry_client(tracking_uri(cfg))
    try:
        versions = versions_newest_first(client, cfg.registered_model_name())
    except Exception:  # noqa: BLE001 (no such model yet)
        return None
    ranking_key = served_ranking_key(cfg)
    for mv in versions:
        if mv.tags.get("cft.train_key") == train_key and mv.tags.get(RANKING_KEY_TAG) == ranking_key and "gate.decision" in mv.tags:
            return {"version": str(mv.version), "champion": alias_version(client, mv.name, CHAMPION),
                    **{k: v for k, v in mv.tags.items() if k.startswith("gate.")}}
    return None
