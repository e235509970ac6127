"""`cft alerts`: the automation it puts on a Prefect server (its delivery by a real server, for a run
that fails through the worker: tests/e2e/test_stack.py)."""

from __future__ import annotations

import importlib
import json
import uuid

import pytest
import yaml

from cft_cli import alerts
from cft_cli.deploy import PROJECT_ROOT


def test_alerts_cover_the_flow_of_every_deployment():
    deployments = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())["deployments"]
    names = set()
    for deployment in deployments:
        path, function = deployment["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        names.add(getattr(module, function).name)
    assert names == set(alerts.FLOWS)


def _render(message: str, ui_url: str | None, payload: str = alerts.PAYLOAD, pool: str | None = None) -> dict:
    """The body the server would send for a failed run of `cft` (`payload`: the failure's
    message, or the one for a run no worker took, of pool `pool`), rendered by Prefect's own
    template environment and filters (`ui_url` included) from server-side objects."""
    from prefect.server.events.jinja_filters import all_filters
    from prefect.server.schemas.core import Flow, FlowRun, WorkPool
    from prefect.server.schemas.states import State, StateType
    from prefect.server.utilities.user_templates import (
        register_user_template_filters,
        render_user_template_sync,
    )
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

    register_user_template_filters(all_filters)  # (as the server does before its first action)
    flow = Flow(id=uuid.uuid4(), name="cft")
    run = FlowRun(id=uuid.uuid4(), name="crimson-fox", flow_id=flow.id,
                  state=State(type=StateType.FAILED, name="Failed", message=message))
    # (without PREFECT_UI_URL, Prefect takes the UI's address from PREFECT_API_URL's, where set)
    with temporary_settings({PREFECT_UI_URL: ui_url, PREFECT_API_URL: None}):
        text = render_user_template_sync(payload, {"flow": flow, "flow_run": run, "deployment": None,
                                                   "work_pool": WorkPool(name=pool, type="process") if pool else None})
    return json.loads(text)


@pytest.mark.parametrize("ui_url", [None, "http://127.0.0.1:4200"])
def test_the_message_is_json_whatever_the_run_says(ui_url):
    message = 'Flow run encountered an exception: DataError: events.csv: column "ts"\nline 3 <b>&'
    body = _render(message, ui_url)
    link = f" {ui_url}/runs/flow-run/" if ui_url else None
    assert set(body) == {"text"}
    assert body["text"].startswith(f"cft/-: flow run crimson-fox Failed: {message}")
    assert (link in body["text"]) if link else body["text"].endswith(message)


@pytest.mark.parametrize("pool", [None, "cft-team"])
def test_the_message_for_a_run_no_worker_took_names_its_pool(pool):
    body = _render("", "http://127.0.0.1:4200", alerts.late_payload(600), pool)
    said = "cft/-: flow run crimson-fox has waited 10 min for a worker past its start: is a worker running on its work pool"
    assert body["text"].startswith(f"{said} {pool}? " if pool else f"{said}? "), body
    assert "/runs/flow-run/" in body["text"]
    assert "waited 45 s for" in _render("", None, alerts.late_payload(45))["text"]


def test_a_run_late_for_the_wait_is_reported_unless_a_worker_takes_it_or_it_ends():
    """Judged by the server's own trigger, as the server holds the automation."""
    from prefect.server.events.schemas.automations import EventTrigger

    spec = alerts.late_spec(uuid.uuid4(), 600)
    trigger = EventTrigger.model_validate(spec.trigger.model_dump(mode="json"))
    assert (trigger.posture, trigger.within.total_seconds(), trigger.for_each) == ("Proactive", 600, {"prefect.resource.id"})
    assert trigger.starts_after("prefect.flow-run.Late") and not trigger.starts_after("prefect.flow-run.Scheduled")
    for taken in ("Pending", "Running", "Cancelled", "Completed", "Crashed"):
        assert trigger.expects(f"prefect.flow-run.{taken}"), taken
    for still_waiting in ("Scheduled", "Late", "heartbeat"):
        assert not trigger.expects(f"prefect.flow-run.{still_waiting}"), still_waiting
    assert set(trigger.match_related["prefect.resource.name"]) == set(alerts.FLOWS)
    assert spec.actions[0].payload == alerts.late_payload(600)


def test_the_automation_asks_for_the_failing_states_of_the_projects_flows():
    spec = alerts.automation_spec(uuid.uuid4())
    assert spec.trigger.expect == {"prefect.flow-run.Failed", "prefect.flow-run.Crashed", "prefect.flow-run.TimedOut"}
    related = spec.trigger.match_related
    assert (related["prefect.resource.role"], set(related["prefect.resource.name"])) == (["flow"], set(alerts.FLOWS))
    assert spec.actions[0].payload == alerts.PAYLOAD and spec.trigger.threshold == 1


def test_alerts_refuse_a_url_that_is_none_and_need_a_server(monkeypatch):
    from typer.testing import CliRunner

    from cft_cli.main import app

    runner = CliRunner()
    monkeypatch.delenv("CFT_ALERT_URL", raising=False)
    bad = runner.invoke(app, ["alerts", "hooks.slack.com/services/T0/B0/x"], prog_name="cft")
    assert bad.exit_code == 2 and "got 'hooks.slack.com/services/T0/B0/x'" in bad.output, bad.output
    none = runner.invoke(app, ["alerts"], prog_name="cft")
    assert none.exit_code == 2 and "$CFT_ALERT_URL" in none.output, none.output
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: None}):
        serverless = runner.invoke(app, ["alerts", "https://hooks.example.com/x"], prog_name="cft")
    assert serverless.exit_code == 2 and "set PREFECT_API_URL" in serverless.output, serverless.output
