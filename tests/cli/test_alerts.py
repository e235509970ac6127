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


def _render(message: str, ui_url: str | None) -> dict:
    """The body the server would send for a failed run of `cft`, rendered by Prefect's own template
    environment and filters (`ui_url` included) from server-side objects."""
    from prefect.server.events.jinja_filters import all_filters
    from prefect.server.schemas.core import Flow, FlowRun
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
        text = render_user_template_sync(alerts.PAYLOAD, {"flow": flow, "flow_run": run, "deployment": None})
    return json.loads(text)


@pytest.mark.parametrize("ui_url", [None, "http://127.0.0.1:4200"])
def test_the_message_is_json_whatever_the_run_says(ui_url):
    message = 'Flow run encountered an exception: DataError: events.csv: column "ts"\nline 3 <b>&'
    body = _render(message, ui_url)
    link = f" {ui_url}/runs/flow-run/" if ui_url else None
    assert set(body) == {"text"}
    assert body["text"].startswith(f"cft/-: flow run crimson-fox Failed: {message}")
    assert (link in body["text"]) if link else body["text"].endswith(message)


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
