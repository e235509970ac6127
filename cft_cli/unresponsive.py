"""Runs whose machine is lost are set Crashed: an automation on the Prefect server, made with the
deployments (`cft deploy`, `cft stack up`).

A worker reports Crashed for a run whose process dies under it (the OOM killer taking a training).
When the worker's machine is lost with it (a reboot, an evicted spot instance), nobody reports
anything: the run stays Running on the server for good, no `cft alerts` message goes out, and the
UI shows a retrain in progress that will never end. Prefect's answer ("detect zombie flows") is a
heartbeat each flow run emits (`prefect.flow-run.heartbeat`, from a thread of the run's process,
every PREFECT_FLOWS_HEARTBEAT_FREQUENCY seconds, which prefect.yaml sets for every deployment) and
an automation with a proactive trigger: a run that has beaten once and then, for MISSED_BEATS
beats, neither beats nor ends is set Crashed. Crashed frees its deployment's concurrency slot and
is one of the states `cft alerts` reports.

Only deployment runs are watched: a `cft run` in a terminal emits heartbeats at Prefect's default
frequency, which prefect.yaml does not set, and would be crashed while it still ran.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from cft_cli.alerts import FLOWS, OF_OUR_FLOWS, RUN_EVENTS, replace_automation

NAME = "cft: crash runs that stopped answering"
HEARTBEAT_ENV = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"
MISSED_BEATS = 4  # a beat can be late (a loaded machine, a busy server); four in a row are not
# What ends a run's watch besides a beat (`Cancelling` is no end: a lost worker leaves it there).
ENDS = ("Completed", "Failed", "Crashed", "Cancelled", "TimedOut")


def heartbeat_s(prefect_yaml: Path) -> int:
    """The heartbeat frequency prefect.yaml's deployments set (the longest, where they differ;
    Prefect's default where none sets it), in seconds."""
    from prefect.settings.models.flows import FlowsSettings

    default = FlowsSettings.model_fields["heartbeat_frequency"].default
    deployments = (yaml.safe_load(prefect_yaml.read_text()) or {}).get("deployments") or []
    set_s = [(((d.get("work_pool") or {}).get("job_variables") or {}).get("env") or {}).get(HEARTBEAT_ENV)
             for d in deployments]
    return max([int(s) for s in set_s if s is not None] or [default])


def automation_spec(within_s: float):
    """The automation that sets Crashed a deployment run of FLOWS (the project's) that beat once
    and then neither beat nor ended for `within_s` seconds (one watch a run: `for_each` its id)."""
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    return AutomationCore(
        name=NAME,
        description=f"Set Crashed a deployment run of {', '.join(FLOWS)} that sent no heartbeat for {within_s:.0f} s: "
                    "its process or machine is gone (made by `cft deploy` / `cft stack up`).",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", *(f"prefect.flow-run.{state}" for state in ENDS)},
            match=RUN_EVENTS,
            # (a list: every one must match a related resource of the event)
            match_related=[OF_OUR_FLOWS, {"prefect.resource.role": "deployment"}],
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive, threshold=1, within=within_s),
        actions=[ChangeFlowRunState(
            state=StateType.CRASHED,
            message=f"no heartbeat for {within_s:.0f} s: the process running it, or its worker's machine, is gone")],
    )


def install_unresponsive(api_url: str, within_s: float) -> str:
    """Put the automation on the Prefect server at `api_url`, replacing one made before; its id."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        return replace_automation(client, automation_spec(within_s))
