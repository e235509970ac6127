"""The `cft-gc` flow: `cft gc` on a schedule, so that a data root that retrains every week does
not fill its disk with data windows, trainings no alias names (the registry keeps the models of
registered ones), the checkpoints of trainings interrupted a week ago, leftovers of interrupted
writes, registry caches, source downloads no data folder left was read from and, with
`registry.keep_versions`, old registered versions and their model files (tasks/gc.py decides what
goes and says why).

`prefect deployment run cft-gc/weekly --param profile=configs/smoke.yaml [--param dry_run=true]`;
the deployment's schedule (Sundays) is created paused, like the others. A training finished in
the last day stays (a pipeline run registers it after its evaluation), and so does the newest
data window of each dataset; an older window that a run in progress reuses (a replay's period)
may still go from under it, so the schedule sits far from the retraining's.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from schemas.config import load_config
from tasks.pipeline import artifact_slug, transient_only


@task(name="collect", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[10, 60],
      retry_condition_fn=transient_only)
def collect_task(profile: str, overrides: dict[str, Any], dry_run: bool) -> list[str]:
    from tasks.gc import collect

    cfg = load_config(profile, overrides)
    lines = collect(cfg, dry_run=dry_run).lines()
    create_markdown_artifact("**cft gc**" + (" (dry run)" if dry_run else "") + f": {lines[-1]}\n\n"
                             + "\n".join(f"- {line}" for line in lines[:-1]),
                             key=f"gc-{artifact_slug(cfg.data.name)}", description="cft-gc: what was freed")
    return lines


@flow(name="cft-gc", description="Free the data root of what no aliased version, run or window uses (cft gc).")
def gc_flow(profile: str = "configs/demo.yaml", overrides: dict[str, Any] | None = None,
            dry_run: bool = False) -> list[str]:
    """profile/overrides: as the `cft` flow's (its data root and tracking store); dry_run: only
    say what would go. Returns `cft gc`'s lines, the totals last."""
    lines = collect_task(profile, overrides or {}, dry_run)
    get_run_logger().info(lines[-1])
    return lines
