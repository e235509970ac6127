"""`cft alerts URL`: be told when a run of the project's flows fails, or waits in vain for a worker,
by the Prefect server at PREFECT_API_URL (the local stack's or a team's).

Prefect does it with its own parts, which the server runs: a Webhook block, `cft-alerts`, holds
the URL (a secret: the UI shows it masked), and an automation, `cft: a run failed`, calls it when a
flow run of one of FLOWS ends Failed, Crashed (its process died, e.g. by the OOM killer, or its
heartbeats stopped: cft_cli/unresponsive.py) or TimedOut. The body is `{"text": "..."}`, which Slack's, Google Chat's and Mattermost's incoming webhooks show as
a message: the flow and deployment, the run, its state and message, and a link to the run where
the server knows its UI's address (PREFECT_UI_URL). A second automation, `cft: a run waits for a
worker`, posts when a run of FLOWS has been Late for LATE_WAIT_S and no worker took it: the
worker machines are gone or stopped, which fails no run (Prefect marks a run Late 15 s past its
start; the wait keeps a worker that starts slowly from raising an alarm). Running it again
replaces all three; `--off` removes them. (A move of the champion is MLflow's to announce:
docs/registry.md.)
"""

from __future__ import annotations

import contextlib

BLOCK = "cft-alerts"
FAILED, LATE = "cft: a run failed", "cft: a run waits for a worker"  # the automations
# The flows of prefect.yaml's deployments (a test holds this to prefect.yaml).
FLOWS = ("cft", "cft-replay", "cft-promote", "cft-batch", "cft-gc")
STATES = ("Failed", "Crashed", "TimedOut")
LATE_WAIT_S = 600  # how long a Late run waits for a worker before it is reported
# What ends a Late run's wait: a worker took it, or it ended otherwise (cancelled by someone).
TAKEN = ("Pending", "Running", "Cancelling", "Cancelled", "Completed", "Failed", "Crashed")
# The events of the project's flow runs, as an automation's trigger picks them (here and in
# cft_cli/unresponsive.py): a flow run's, related to a flow of FLOWS.
RUN_EVENTS = {"prefect.resource.id": "prefect.flow-run.*"}
OF_OUR_FLOWS = {"prefect.resource.role": "flow", "prefect.resource.name": list(FLOWS)}


def _text(says: str) -> str:
    """The message, a Jinja template Prefect renders with the run's objects: "<flow>/<deployment>:
    flow run <name>" + `says` (a Jinja expression) + the link to the run where the server knows
    its UI. `tojson` escapes what the run's state message holds (quotes, line breaks), so the body
    stays JSON whatever the run said."""
    return ('{"text": {{ (flow.name ~ "/" ~ (deployment.name if deployment else "-") ~ ": flow run " ~ flow_run.name ~ '
            + says + ' ~ ((" " ~ (flow_run|ui_url)) if (flow_run|ui_url) else "")) | tojson }}}')


PAYLOAD = _text('" " ~ flow_run.state.name ~ ": " ~ (flow_run.state.message or "")')


def waited(wait_s: float) -> str:
    """A wait as the messages say it: "10 min", "45 s"."""
    return f"{wait_s / 60:g} min" if wait_s >= 60 else f"{wait_s:g} s"


def late_payload(wait_s: float) -> str:
    """The message for a run Late for `wait_s` seconds, naming its work pool."""
    return _text(f'" has waited {waited(wait_s)} for a worker past its start: is a worker running on its work pool"'
                 ' ~ ((" " ~ work_pool.name) if work_pool else "") ~ "?"')


def automation_spec(block_id):
    """The automation that calls the block `block_id` for a run of FLOWS that ends in STATES."""
    from prefect.events.actions import CallWebhook
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    return AutomationCore(
        name=FAILED,
        description=f"POST a message to the {BLOCK} webhook when a flow run of {', '.join(FLOWS)} ends "
                    f"{', '.join(STATES)} (made by `cft alerts`).",
        trigger=EventTrigger(
            expect={f"prefect.flow-run.{state}" for state in STATES},
            match=RUN_EVENTS, match_related=OF_OUR_FLOWS,
            posture=Posture.Reactive, threshold=1, within=0),
        actions=[CallWebhook(block_document_id=block_id, payload=PAYLOAD)],
    )


def late_spec(block_id, wait_s: float = LATE_WAIT_S):
    """The automation that calls the block `block_id` for a run of FLOWS that turned Late and was
    not taken by a worker (nor ended) within `wait_s` seconds (one watch a run: `for_each`)."""
    from prefect.events.actions import CallWebhook
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    return AutomationCore(
        name=LATE,
        description=f"POST a message to the {BLOCK} webhook when a flow run of {', '.join(FLOWS)} has been Late "
                    f"for {wait_s:.0f} s and no worker took it (made by `cft alerts`).",
        trigger=EventTrigger(
            after={"prefect.flow-run.Late"},
            expect={f"prefect.flow-run.{state}" for state in TAKEN},
            match=RUN_EVENTS, match_related=OF_OUR_FLOWS,
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive, threshold=1, within=wait_s),
        actions=[CallWebhook(block_document_id=block_id, payload=late_payload(wait_s))],
    )


def delete_automations(client, name: str) -> int:
    """Delete the automations called `name` (one, unless two commands that make it raced); how many went."""
    old = client.read_automations_by_name(name)
    for automation in old:
        client.delete_automation(automation.id)
    return len(old)


def replace_automation(client, spec) -> str:
    """Create the automation `spec` in place of those of its name (an earlier command's); its id."""
    delete_automations(client, spec.name)
    return str(client.create_automation(spec))


def install_alerts(url: str, late_wait_s: float = LATE_WAIT_S) -> tuple[str, str]:
    """Save the webhook block (URL `url`) and the two automations on the configured Prefect
    server, replacing those of an earlier `cft alerts`; the automations' ids (FAILED, LATE)."""
    from prefect.blocks.webhook import Webhook
    from prefect.client.orchestration import get_client

    block_id = Webhook(url=url, headers={"Content-Type": "application/json"}).save(BLOCK, overwrite=True)
    with get_client(sync_client=True) as client:
        return (replace_automation(client, automation_spec(block_id)),
                replace_automation(client, late_spec(block_id, late_wait_s)))


def remove_alerts() -> int:
    """Delete the automations and the block `install_alerts` saved; how many automations went."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        deleted = sum(delete_automations(client, name) for name in (FAILED, LATE))
        with contextlib.suppress(ObjectNotFound):  # (no earlier `cft alerts`)
            client.delete_block_document(client.read_block_document_by_name(BLOCK, "webhook").id)
    return deleted
