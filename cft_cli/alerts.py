"""`cft alerts URL`: be told when a run of the project's flows fails, on the Prefect server at
PREFECT_API_URL (the local stack's or a team's).

Prefect does it with its own parts, which the server runs: a Webhook block, `cft-alerts`, holds
the URL (a secret: the UI shows it masked), and an automation, `cft: a run failed`, calls it when a
flow run of one of FLOWS ends Failed, Crashed (its process died, e.g. by the OOM killer, or its
heartbeats stopped: cft_cli/unresponsive.py) or TimedOut. The
body is `{"text": "..."}`, which Slack's, Google Chat's and Mattermost's incoming webhooks show as
a message: the flow and deployment, the run, its state and message, and a link to the run where
the server knows its UI's address (PREFECT_UI_URL). Running it again replaces both; `--off`
removes them. (A move of the champion is MLflow's to announce: README, Registry.)
"""

from __future__ import annotations

import contextlib

BLOCK = "cft-alerts"
AUTOMATION = "cft: a run failed"
# The flows of prefect.yaml's deployments (a test holds this to prefect.yaml).
FLOWS = ("cft", "cft-replay", "cft-promote", "cft-batch", "cft-gc")
STATES = ("Failed", "Crashed", "TimedOut")
# The message, a Jinja template Prefect renders with the run's objects; `tojson` escapes what the
# state's message holds (quotes, line breaks), so the body stays JSON whatever failed.
TEXT = ('{{ (flow.name ~ "/" ~ (deployment.name if deployment else "-") ~ ": flow run " ~ flow_run.name ~ " "'
        ' ~ flow_run.state.name ~ ": " ~ (flow_run.state.message or "") ~ ((" " ~ (flow_run|ui_url))'
        ' if (flow_run|ui_url) else "")) | tojson }}')
PAYLOAD = '{"text": ' + TEXT + '}'


def automation_spec(block_id):
    """The automation that calls the block `block_id` for a run of FLOWS that ends in STATES."""
    from prefect.events.actions import CallWebhook
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    return AutomationCore(
        name=AUTOMATION,
        description=f"POST a message to the {BLOCK} webhook when a flow run of {', '.join(FLOWS)} ends "
                    f"{', '.join(STATES)} (made by `cft alerts`).",
        trigger=EventTrigger(
            expect={f"prefect.flow-run.{state}" for state in STATES},
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={"prefect.resource.role": "flow", "prefect.resource.name": list(FLOWS)},
            posture=Posture.Reactive, threshold=1, within=0),
        actions=[CallWebhook(block_document_id=block_id, payload=PAYLOAD)],
    )


def delete_automations(client, name: str) -> int:
    """Delete the automations called `name` (one, unless two commands that make it raced); how many went."""
    old = client.read_automations_by_name(name)
    for automation in old:
        client.delete_automation(automation.id)
    return len(old)


def install_alerts(url: str) -> str:
    """Save the webhook block (URL `url`) and the automation on the configured Prefect server,
    replacing those of an earlier `cft alerts`; the automation's id."""
    from prefect.blocks.webhook import Webhook
    from prefect.client.orchestration import get_client

    block_id = Webhook(url=url, headers={"Content-Type": "application/json"}).save(BLOCK, overwrite=True)
    with get_client(sync_client=True) as client:
        delete_automations(client, AUTOMATION)
        return str(client.create_automation(automation_spec(block_id)))


def remove_alerts() -> int:
    """Delete the automation and the block `install_alerts` saved; how many automations went."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        deleted = delete_automations(client, AUTOMATION)
        with contextlib.suppress(ObjectNotFound):  # (no earlier `cft alerts`)
            client.delete_block_document(client.read_block_document_by_name(BLOCK, "webhook").id)
    return deleted

