"""A Prefect server that asks who calls: a real `prefect server start` with
PREFECT_SERVER_API_AUTH_STRING (Prefect's own basic authentication, what the team stack of
infra/compose.yaml runs).

Without the credentials, or with wrong ones, a command names the server and the setting in one
line, exits 2 and does nothing (it was a traceback from wherever the command first spoke to the
server: `cft run` from the flow's start, `cft alerts` from its first block). With them, the
commands and the project's own requests to the API (`cft_cli.deploy.prefect_api`) get through.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port, wait_until_served

ROOT = Path(__file__).resolve().parents[2]
AUTH = "cft:prefect-Pass-5521"  # the team's `user:password` (compose.yaml's PREFECT_AUTH_STRING)
ASKS = "asks for credentials: set PREFECT_API_AUTH_STRING to the `user:password` the server was started with"
REFUSED = "refused the credentials in PREFECT_API_AUTH_STRING: set PREFECT_API_AUTH_STRING to the `user:password`"


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    """The API URL of a Prefect server that wants AUTH on every request but /health and /ready."""
    home = tmp_path_factory.mktemp("prefect-server")
    port, log = free_port(), home / "server.log"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_API_AUTH_STRING": AUTH,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    with log.open("w") as out:
        server = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host",
                                   "127.0.0.1", "--port", str(port), "--analytics-off"], env=env, stdout=out,
                                  stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/api"
    try:
        wait_until_served(f"{url}/health", server, timeout_s=180, log=log)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def cft(api: str, tmp_path: Path, auth: str | None, *args: str) -> subprocess.CompletedProcess:
    """`cft ARGS` in a process of its own (Prefect reads its settings when it is imported), pointed
    at `api` with PREFECT_API_AUTH_STRING=`auth` (unset when None) and a Prefect home of its own."""
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_AUTH_STRING", "PREFECT_API_KEY")}
    env |= {"PREFECT_API_URL": api, "PREFECT_HOME": str(tmp_path / "client")}
    if auth is not None:
        env["PREFECT_API_AUTH_STRING"] = auth
    return subprocess.run([sys.executable, "-m", "cft_cli", *args], env=env, capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


@pytest.mark.parametrize(("auth", "said"), [(None, ASKS), ("cft:not-the-password", REFUSED)])
def test_a_run_without_the_credentials_is_refused_before_any_work(api, tmp_path, auth, said):
    """`cft run` against the server without the auth string or with a wrong one: one `error:` line
    naming the server and the setting (never the secret), exit 2, no data written."""
    profile = tmp_path / "p.yaml"
    profile.write_text(f"extends: {ROOT / 'configs/smoke.yaml'}\ndata: {{data_root: {tmp_path / 'data'}}}\n")
    res = cft(api, tmp_path, auth, "run", "-c", str(profile))
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.startswith(f"error: the Prefect server at {api} {said}"), res.stderr
    assert "Traceback" not in res.stderr and "not-the-password" not in res.stderr
    assert not (tmp_path / "data").exists()


def test_with_the_credentials_the_commands_reach_the_server(api, tmp_path):
    """`cft alerts` writes a block and two automations on the server, and `--off` finds and
    removes both: each a request the server let through. Without the credentials, the same command
    is refused and leaves the server as it was (`--off` then finds nothing to remove)."""
    refused = cft(api, tmp_path, None, "alerts", "https://hooks.example/cft")
    assert refused.returncode == 2 and refused.stderr.startswith(f"error: the Prefect server at {api} {ASKS}")
    made = cft(api, tmp_path, AUTH, "alerts", "https://hooks.example/cft")
    assert made.returncode == 0, made.stdout + made.stderr
    assert made.stdout.startswith(f"{api}: the webhook block 'cft-alerts' gets a message"), made.stdout
    removed = cft(api, tmp_path, AUTH, "alerts", "--off")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert removed.stdout.startswith("removed 2 automation(s)"), removed.stdout


def test_the_projects_own_requests_send_prefects_credentials(api):
    """`prefect_api` (the deployments `cft deploy` lists, the runs `cft stack down` ends) goes
    through Prefect's client, so it sends the auth string from Prefect's settings (environment or
    profile), and a refusal is sorted as the user's error: the CLI's one line, and a flow task
    that does not retry it."""
    from prefect.exceptions import PrefectHTTPStatusError
    from prefect.settings import (
        PREFECT_API_AUTH_STRING,
        PREFECT_API_KEY,
        PREFECT_API_URL,
        temporary_settings,
    )

    from cft_cli.deploy import deployments
    from schemas.errors import input_error_message
    from tasks.pipeline import transient_only

    with temporary_settings(updates={PREFECT_API_URL: api, PREFECT_API_AUTH_STRING: AUTH}):
        assert deployments(api) == []  # (none deployed on this server)
    with temporary_settings(updates={PREFECT_API_URL: api}, restore_defaults={PREFECT_API_AUTH_STRING, PREFECT_API_KEY}):
        with pytest.raises(PrefectHTTPStatusError) as refused:
            deployments(api)
        said = input_error_message(refused.value)

    assert said is not None and said.startswith(f"the Prefect server at {api} asks for credentials (GET /api/"), said

    class FailedState:
        def result(self):
            raise refused.value

    assert transient_only(None, None, FailedState()) is False


def test_a_promotion_from_a_laptop_without_the_credentials_waits_for_nothing_and_moves_nothing(api):
    """`cft promote` and `cft rollback` hold the server's cft-promotion slot; without the
    credentials the slot's request is refused before the champion moves (the block never runs)."""
    from prefect.exceptions import PrefectHTTPStatusError
    from prefect.settings import (
        PREFECT_API_AUTH_STRING,
        PREFECT_API_KEY,
        PREFECT_API_URL,
        temporary_settings,
    )

    from cft_cli.deploy import promotion_slot
    from schemas.errors import input_error_message

    moved = []
    with temporary_settings(updates={PREFECT_API_URL: api, PREFECT_API_AUTH_STRING: "cft:wrong"},
                            restore_defaults={PREFECT_API_KEY}):
        with pytest.raises(PrefectHTTPStatusError) as refused, promotion_slot():
            moved.append(1)
        said = input_error_message(refused.value)
    assert moved == []
    assert said is not None and said.startswith(f"the Prefect server at {api} refused the credentials in "
                                                "PREFECT_API_AUTH_STRING (GET /api/"), said


@pytest.mark.parametrize(("status", "settings", "said"), [
    (401, {}, "asks for credentials (GET /api/hello): set PREFECT_API_AUTH_STRING"),
    (401, {"PREFECT_API_AUTH_STRING": ""}, "asks for credentials (GET /api/hello)"),  # empty: sent as none
    (401, {"PREFECT_API_AUTH_STRING": "a:b", "PREFECT_API_KEY": "pnu_x"}, "refused the credentials in PREFECT_API_AUTH_STRING"),
    (401, {"PREFECT_API_KEY": "pnu_x"}, "refused the key in PREFECT_API_KEY (GET /api/hello)"),
    (403, {"PREFECT_API_KEY": "pnu_x"}, "denied this client a request (GET /api/hello): ask the workspace's admin"),
])
def test_the_refusal_names_what_prefects_client_sent(status, settings, said):
    """The message follows Prefect's client: the auth string before the key, an empty value as none;
    a 403 (a Prefect Cloud role) asks for a role. Other statuses are not the user's (None)."""
    import httpx
    from prefect import settings as prefect_settings
    from prefect.exceptions import PrefectHTTPStatusError

    from schemas.errors import input_error_message

    api = "https://prefect.example/api"

    def error(code: int) -> PrefectHTTPStatusError:
        request = httpx.Request("GET", f"{api}/hello")
        response = httpx.Response(code, request=request)
        return PrefectHTTPStatusError.from_httpx_error(httpx.HTTPStatusError("x", request=request, response=response))

    updates = {getattr(prefect_settings, name): value for name, value in settings.items()}
    unset = {prefect_settings.PREFECT_API_AUTH_STRING, prefect_settings.PREFECT_API_KEY} - set(updates)
    with prefect_settings.temporary_settings(updates={prefect_settings.PREFECT_API_URL: api, **updates},
                                             restore_defaults=unset):
        assert input_error_message(error(status)).startswith(f"the Prefect server at {api} {said}")
        assert input_error_message(error(500)) is None and input_error_message(error(404)) is None
