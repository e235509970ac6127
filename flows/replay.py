"""The `cft-replay` flow: `cft replay` as a Prefect flow (each period a task), for running a
replay on a work pool and watching it in the Prefect UI.

`prefect deployment run cft-replay/replay --param profile=configs/replay-ml100k.yaml --param periods=5`
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from schemas.config import load_config


@task(name="period", cache_policy=NO_CACHE)
def period_task(cfg):
    from tasks.chain import run_pipeline
    from tasks.pipeline import training_log

    # As the full-pipeline flow: the Trainer's entries as task-log lines, no console bars.
    return run_pipeline(cfg, progress=False, train_callbacks=[training_log()])


@flow(name="cft-replay", description="Move data.as_of through a dataset's timeline; run and gate each period.")
def replay_flow(profile: str = "configs/replay-ml100k.yaml", periods: int = 5, every: str = "30d",
                overrides: dict | None = None) -> dict:
    from tasks.replay import plot_timeline, replay, report
    from tasks.tracking import log_timeline

    cfg = load_config(profile, overrides or {})
    out = cfg.data.data_root / "replay" / f"{cfg.data.name}-timeline.json"
    timeline = replay(cfg, periods, every, out, run_period=period_task)
    plot = Path(out).with_suffix(".png")
    plot_timeline(timeline, plot)
    if cfg.tracking.enabled:
        log_timeline(cfg, timeline, plot)
    create_markdown_artifact(report(timeline, f"cft-replay flow ({profile}, {periods} x {every})"),
                             key=f"replay-{cfg.data.name.lower().replace('_', '-').replace('.', '-')}",
                             description="Replay timeline")
    return timeline
