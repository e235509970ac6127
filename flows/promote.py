"""The `cft-promote` flow: a person's override of the registry gate, recorded with a reason.

`prefect deployment run cft-promote/promote --param model_name=cft-ml-100k --param version=3
--param reason="..." --param by=alice`; `action=rollback` undoes the last change of champion
(repeated, it walks further back: `tasks.registry.champion_stack`).
The same functions back `cft promote` and `cft rollback`.
"""

from __future__ import annotations

from typing import Literal

from prefect import flow, get_run_logger, task

from schemas.config import load_config
from schemas.errors import InputError
from tasks.pipeline import transient_only


@task(name="set-champion", tags=["cft-promotion"], retries=3, retry_delay_seconds=[2, 10, 30],
      retry_condition_fn=transient_only)
def set_champion_task(profile: str, model_name: str, version: int | None, reason: str, action: str,
                      by: str | None, via: str) -> str:
    from tasks.registry import challenger_left_note, promote, rollback
    from tasks.tracking import tracking_uri

    cfg = load_config(profile)
    uri = tracking_uri(cfg)
    if action == "rollback":
        return rollback(cfg, model_name, reason, uri, by=by, via=via)
    if not version:
        raise InputError("action=promote needs the version to promote (the `version` parameter)")
    if left := promote(cfg, model_name, str(version), reason, uri, by=by, via=via):
        get_run_logger().warning(challenger_left_note(model_name, left))
    return str(version)


@flow(name="cft-promote", description="Move the champion alias by hand (promote or roll back), with a reason.")
def promote_flow(model_name: str, reason: str, version: int | None = None,
                 action: Literal["promote", "rollback"] = "promote", profile: str = "configs/demo.yaml",
                 by: str = "") -> str:
    """profile: only its data root (registry lock) and tracking settings are used. by: who asks
    (`--param by=alice`), recorded in `champion_history` with this flow run; empty: the worker's
    user is recorded, said to be the worker's."""
    from prefect.runtime import flow_run

    via = f"Prefect flow run {flow_run.name}"
    champion = set_champion_task(profile, model_name, version, reason, action, by or None, via)
    get_run_logger().info("%s: champion is now version %s (%s: %s)", model_name, champion, action, reason)
    return champion
