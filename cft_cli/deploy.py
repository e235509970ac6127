"""`cft deploy`: put prefect.yaml's deployments on a Prefect server, in a work pool of your choice.

prefect.yaml names its work pool and the folder a worker runs the flows in by environment
placeholders, `{{ $CFT_WORK_POOL }}` and `{{ $CFT_PROJECT_DIR }}`, which `prefect deploy` fills
from its environment: `prefect deploy --all --pool X` ignores `--pool` (Prefect applies deploy
options to single deployments only), so before these placeholders every deployment went to
`cft-local`, the local stack's pool, which a team's server does not have, and no worker ever took
a run. `deploy_project` sets both, creates the pool when it is missing (a team's existing pool,
with its edited job template, is left as it is), and creates the tag concurrency limit that lets
one promotion run at a time on the whole server (`PROMOTION_TAG`; the file lock in
tasks.registry guards one machine only), and the automation that sets Crashed a run whose
machine was lost (cft_cli/unresponsive.py). `cft stack up` deploys through it to its own pool.
`promotion_slot` holds a slot of that limit for `cft promote` and `cft rollback`, which run
outside a flow.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from schemas.errors import InputError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PROMOTION_TAG = "cft-promotion"  # tasks that move the champion alias run one at a time
PROMOTION_WAIT_S = 1800.0  # a gate holds the slot for minutes (it ranks the gate rows); then give up
POOL_ENV, PROJECT_DIR_ENV = "CFT_WORK_POOL", "CFT_PROJECT_DIR"  # prefect.yaml's placeholders
CLI_LINES_SHOWN = 8  # Prefect's CLI ends its output with the error; everything before is progress


def console_script(name: str) -> str:
    """A console script of this environment (the venv's prefect / mlflow / cft), else the one on PATH."""
    path = Path(sys.executable).with_name(name)
    return str(path) if path.exists() else (shutil.which(name) or name)


def prefect_cli(env: dict[str, str], *args: str, again: str) -> str:
    """Run a prefect CLI command in the project folder with `env`; its output. On failure,
    InputError with the last lines of its output, where Prefect says why (mostly a mistake in
    prefect.yaml, which users edit: a schedule turned on, a cron string), not a traceback under
    80 lines of deploy progress; `again` is the command to run after the fix."""
    res = subprocess.run([console_script("prefect"), *args], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True)
    if res.returncode:
        said = [line.rstrip() for line in (res.stdout + "\n" + res.stderr).splitlines() if line.strip()]
        raise InputError(f"prefect {' '.join(args)} failed (exit {res.returncode}) in {PROJECT_ROOT}:\n"
                         + "\n".join(f"  {line}" for line in said[-CLI_LINES_SHOWN:])
                         + f"\nfix what it names (prefect.yaml, for a deployment) and run `{again}` again")
    return res.stdout


def deploy_project(env: dict[str, str], api_url: str, pool: str, project_dir: str, pool_type: str = "process",
                   replace_pool: bool = False, again: str = "cft deploy") -> float:
    """Every deployment of prefect.yaml into work pool `pool` of the server at `api_url` (which
    `env` points the prefect CLI at), its flows run in `project_dir` on the worker's machine. The
    pool is created (of `pool_type`) when missing, or made anew when `replace_pool` (the local
    stack's own pool); the promotion limit is created or reset to 1; the automation that sets
    Crashed a run whose machine is lost is made anew (cft_cli/unresponsive.py); how long a run may
    stay silent before it does, in seconds."""
    from cft_cli.unresponsive import MISSED_BEATS, heartbeat_s, install_unresponsive

    env = {**env, POOL_ENV: pool, PROJECT_DIR_ENV: project_dir}
    if replace_pool or subprocess.run([console_script("prefect"), "work-pool", "inspect", pool], env=env,
                                      cwd=PROJECT_ROOT, capture_output=True, text=True).returncode != 0:
        prefect_cli(env, "work-pool", "create", pool, "--type", pool_type, *(["--overwrite"] if replace_pool else []),
                    again=again)
    prefect_cli(env, "concurrency-limit", "create", PROMOTION_TAG, "1", again=again)
    prefect_cli(env, "--no-prompt", "deploy", "--all", again=again)
    within_s = MISSED_BEATS * heartbeat_s(PROJECT_ROOT / "prefect.yaml")
    install_unresponsive(api_url, within_s)
    return within_s


def prefect_api(api_url: str, path: str, body: dict | None = None) -> list[dict] | dict:
    """POST `body` (default {}) to an endpoint of the Prefect server at `api_url`; its JSON answer.
    Sent by Prefect's own client, with the credentials and TLS settings it would use
    (PREFECT_API_AUTH_STRING, PREFECT_API_KEY, the profile's); a refusal raises its
    PrefectHTTPStatusError, which `schemas.errors.input_error_message` names."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        response = client.request("POST", path, json=body or {})  # type: ignore[arg-type] (any route)
        return response.json()


def deployments(api_url: str, pool: str | None = None) -> list[str]:
    """`flow/deployment` of each deployment on the server (of work pool `pool`, when given), as
    `prefect deployment run` names it, with "(paused)" after one whose schedules are all off."""
    flows = {f["id"]: f["name"] for f in prefect_api(api_url, "/flows/filter")}
    query = {"work_pools": {"name": {"any_": [pool]}}} if pool else {}
    out = []
    for d in prefect_api(api_url, "/deployments/filter", query):
        paused = bool(d["schedules"]) and not any(s["active"] for s in d["schedules"])
        out.append(f"{flows[d['flow_id']]}/{d['name']}" + (" (paused)" if paused else ""))
    return out


@contextmanager
def promotion_slot(timeout_s: float = PROMOTION_WAIT_S) -> Iterator[None]:
    """Hold a slot of the Prefect server's `cft-promotion` limit around a promotion or rollback
    started outside a flow (`cft promote`, `cft rollback`). The gates and the promote flow hold it
    through their task tag (Prefect 3 keeps a tag limit as the global limit `tag:cft-promotion`), so
    a promotion from a laptop waits for a gate running on a worker elsewhere, which the per-machine
    file lock in tasks.registry cannot see. Nothing to hold without a Prefect server, when the
    server has no such limit (no `cft deploy` or `cft stack up` made it), or when it does not
    answer (no flow can gate then either: a warning says so)."""
    from prefect.settings import get_current_settings

    from tasks.servers import no_answer

    api, name = get_current_settings().api.url, f"tag:{PROMOTION_TAG}"
    if not api:
        yield
        return
    if reason := no_answer(api):
        logging.getLogger(__name__).warning("the Prefect server at %s does not answer (%s): moving the champion "
                                            "without its %s limit", api, reason, PROMOTION_TAG)
        yield
        return
    from prefect.client.orchestration import get_client
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectNotFound

    try:
        with get_client(sync_client=True) as client:
            client.read_global_concurrency_limit_by_name(name)
    except ObjectNotFound:
        yield
        return
    held = False
    try:
        with concurrency(name, occupy=1, timeout_seconds=timeout_s):
            held = True
            yield
    except TimeoutError as e:
        if held:  # the promotion's own timeout, not the wait for the slot
            raise
        raise InputError(f"the {PROMOTION_TAG} limit on {api} stayed taken for {timeout_s:.0f} s (a gate or a "
                         "promotion is running); try again when it is done") from e

