"""The automation that sets Crashed a run whose machine is lost: which runs it watches, judged by
Prefect's own server-side trigger on the heartbeats Prefect's own engine builds (a real server
acting on it, and the heartbeats of a run through the worker: tests/e2e/test_stack.py)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from cft_cli import unresponsive
from cft_cli.deploy import PROJECT_ROOT


def test_every_deployment_beats_as_often_as_the_automation_expects():
    import yaml

    deployments = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())["deployments"]
    beats = {d["name"]: d["work_pool"]["job_variables"]["env"].get(unresponsive.HEARTBEAT_ENV) for d in deployments}
    assert set(beats.values()) == {"60"}, beats  # (a deployment without it would beat every 180 s: crashed alive)
    assert unresponsive.heartbeat_s(PROJECT_ROOT / "prefect.yaml") == 60


def test_the_slowest_heartbeat_sets_the_wait(tmp_path):
    anchor = "definitions:\n  pool: &pool\n    job_variables:\n      env: {PREFECT_FLOWS_HEARTBEAT_FREQUENCY: '45'}\n"
    (tmp_path / "p.yaml").write_text(anchor + "deployments:\n  - {name: a, work_pool: *pool}\n"
                                     "  - {name: b, work_pool: {job_variables: {env: {PREFECT_FLOWS_HEARTBEAT_FREQUENCY: '90'}}}}\n")
    assert unresponsive.heartbeat_s(tmp_path / "p.yaml") == 90
    (tmp_path / "p.yaml").write_text("deployments:\n  - {name: a, work_pool: {name: x}}\n")
    assert unresponsive.heartbeat_s(tmp_path / "p.yaml") == 180  # Prefect's own default


def _heartbeat(flow_name: str, deployment: bool):
    """A heartbeat event as a flow run's engine emits it (Prefect's own template), as the server
    receives it."""
    from prefect import flow
    from prefect.client.schemas.objects import FlowRun
    from prefect.flow_engine import FlowRunEngine
    from prefect.server.events.schemas.events import ReceivedEvent

    @flow(name=flow_name)
    def some_flow():
        pass

    run = FlowRun(id=uuid.uuid4(), name="crimson-fox", flow_id=uuid.uuid4(),
                  deployment_id=uuid.uuid4() if deployment else None, tags=["cft"])
    resource, related = FlowRunEngine(flow=some_flow, flow_run=run)._build_heartbeat_event_template()
    return ReceivedEvent(occurred=datetime.now(UTC), event="prefect.flow-run.heartbeat", resource=resource,
                         related=[r.model_dump() for r in related], id=uuid.uuid4())


def _server_trigger(within_s: float):
    """The automation's trigger as the server holds it."""
    from prefect.server.events.schemas.automations import EventTrigger

    spec = unresponsive.automation_spec(within_s)
    return EventTrigger.model_validate(spec.trigger.model_dump(mode="json"))


def test_deployment_runs_of_the_projects_flows_are_watched_others_not():
    trigger = _server_trigger(240)
    assert trigger.covers(_heartbeat("cft", deployment=True))
    assert trigger.covers(_heartbeat("cft-batch", deployment=True))
    assert not trigger.covers(_heartbeat("cft", deployment=False))  # a `cft run` beats at Prefect's default
    assert not trigger.covers(_heartbeat("someone-elses-flow", deployment=True))


def test_a_beat_starts_the_watch_a_beat_or_an_end_resets_it_and_the_action_crashes():
    from prefect.client.schemas.objects import StateType

    trigger = _server_trigger(240)
    assert trigger.posture == "Proactive" and trigger.within.total_seconds() == 240 and trigger.threshold == 1
    assert trigger.for_each == {"prefect.resource.id"}  # (one watch a run)
    assert trigger.starts_after("prefect.flow-run.heartbeat") and not trigger.starts_after("prefect.flow-run.Running")
    for state in ("heartbeat", "Completed", "Failed", "Crashed", "Cancelled", "TimedOut"):
        assert trigger.expects(f"prefect.flow-run.{state}"), state
    for state in ("Running", "Cancelling", "Pending"):  # (a lost worker leaves a cancelled run Cancelling)
        assert not trigger.expects(f"prefect.flow-run.{state}"), state
    (action,) = unresponsive.automation_spec(240).actions
    assert action.type == "change-flow-run-state" and action.state == StateType.CRASHED and not action.force
    assert "no heartbeat for 240 s" in action.message
