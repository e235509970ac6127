"""The `cft-batch` flow: every user's top-K from the champion into one Parquet file, the nightly
job beside the server (`cft recommend-all` as a flow; tasks/batch.py does the work).

`prefect deployment run cft-batch/nightly --param profile=configs/smoke.yaml`; the deployment's
daily schedule is created paused, like the weekly retraining's.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from schemas.config import load_config
from tasks.pipeline import artifact_slug, transient_only


@task(name="recommend-all", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[10, 60],
      retry_condition_fn=transient_only)
def recommend_all_task(profile: str, overrides: dict[str, Any], model: str, k: int, out: str | None) -> dict:
    from pathlib import Path

    from tasks import batch

    cfg = load_config(profile, overrides)
    done, exact, version = batch.run(cfg, model, k, Path(out) if out else None, progress=False)
    summary = {"path": str(done.path), "users": done.users, "users_without_history": done.users_without_history,
               "unknown_items": done.unknown_items, "excluded_seen": done.excluded_seen, "model": exact,
               "version": version, "k": k, "users_short": done.users_short}
    create_markdown_artifact(
        f"**Batch recommendations**: top {k} for {done.users} users from `{exact}` -> `{done.path}`"
        + (f"; left out {done.unknown_items} history item(s) the model does not know, "
           f"{done.users_without_history} user(s) with none, ranked as new users" if done.unknown_items else "")
        + ("" if done.excluded_seen else "; this version predates the `exclude` input: only each user's history "
           "was left out of their recommendations, not all they have")
        + (f"; {done.users_short} user(s) got fewer than {k} items" if done.users_short else ""),
        key=f"batch-{artifact_slug(cfg.data.name)}", description="cft-batch: every user's top-K")
    return summary


@flow(name="cft-batch", description="Every user's top-K from the champion (or a given version) into one Parquet file.")
def batch_flow(profile: str = "configs/demo.yaml", overrides: dict[str, Any] | None = None, model: str = "",
               k: int = 10, out: str | None = None) -> dict:
    """profile/overrides: as the `cft` flow's; model: a model URI (default the champion); out: the
    Parquet file (default <data_root>/recommendations/cft-<data.name>.parquet)."""
    summary = recommend_all_task(profile, overrides or {}, model, k, out)
    get_run_logger().info("top %d for %d users from %s -> %s", k, summary["users"], summary["model"], summary["path"])
    return summary
