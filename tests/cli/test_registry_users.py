"""A registry with users: the commands against a real `mlflow server --app-name basic-auth` (MLflow's
own authentication, with its admin, two accounts and a permission granted on the registered model).

A wrong password or none is named as such before any work, where it read as "no registered
model"; a permission the account lacks is named with the request, and nothing is half-written;
the champion's history records the account the server checked, not the machine's login.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import contextmanager

import pytest
from typer.testing import CliRunner

from cft_cli.main import app
from cft_cli.stack import JOB_EXECUTION_ENV
from tasks import registry
from tasks.registry import champion
from tests.conftest import free_port, infra_script, mlflow_uris_restored, wait_until_served

ADMIN = ("admin", "admin-Pass-4821")  # (MLflow refuses to start with its old default password)
ALICE = ("alice", "alice-Pass-7719")  # granted EDIT on the registered model: may promote
BOB = ("bob", "bob-Pass-3307")  # the server's default permission only (READ): may look, not promote


@contextmanager
def account(user_password: tuple[str, str] | None):
    """MLflow's credentials in the environment, as a user exports them, for the block."""
    saved = {k: os.environ.pop(k, None) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    if user_password:
        os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = user_password
    try:
        yield
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None)
            if value is not None:
                os.environ[key] = value


def accounts(*argv: str) -> int:
    """infra/mlflow_accounts.py, the admin's script for accounts and grants (compose.yaml's too)."""
    return infra_script("mlflow_accounts").main(list(argv))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The server's URI and a profile tracking to it; registered model cft-shop with two versions,
    v1 champion (set by the admin), alice granted EDIT on it."""
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("registry-users")
    (root / "basic_auth.ini").write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{root / 'auth.db'}\n"
        f"admin_username = {ADMIN[0]}\nadmin_password = {ADMIN[1]}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    port = free_port()
    env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(root / "basic_auth.ini"),
           "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-only-secret",
           JOB_EXECUTION_ENV: "false"}  # (as compose.yaml starts it: 2 processes, not 10)
    log = (root / "server.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth", "--backend-store-uri",
         f"sqlite:///{root / 'mlflow.db'}", "--default-artifact-root", str(root / "artifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_until_served(f"{uri}/health", process, 180, log=root / "server.log")
        profile = root / "shop.yaml"
        profile.write_text(f"data: {{name: shop, data_root: {root / 'data'}}}\ntracking: {{tracking_uri: '{uri}'}}\n")
        with account(ADMIN), mlflow_uris_restored(uri):
            for name, password in (ALICE, BOB, BOB):  # (the second time finds bob's account there)
                assert accounts(uri, "user", name, password) == 0
            client = MlflowClient(uri, registry_uri=uri)
            client.create_registered_model("cft-shop")
            run = client.create_run(client.create_experiment("shop")).info  # (a server takes a run's artifacts only)
            for kind in ("popularity", "llm"):
                client.create_model_version("cft-shop", source=f"{run.artifact_uri}/model", run_id=run.run_id,
                                            tags={"cft.kind": kind})
            registry.set_champion(client, "cft-shop", "1", "gate", "first champion")
            client.set_registered_model_alias("cft-shop", "challenger", "2")  # (as a gate that kept v2 leaves it)
            assert accounts(uri, "grant", ALICE[0], "registered_model", "cft-shop", "EDIT") == 0
        yield uri, profile
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
        log.close()


def cft(*args: str, as_: tuple[str, str] | None):
    with account(as_):
        return CliRunner().invoke(app, list(args), prog_name="cft")


def state(uri: str) -> tuple[str, str | None, list[dict]]:
    """(the versions the champion and challenger aliases name, champion_history), read as the admin."""
    from mlflow import MlflowClient

    with account(ADMIN):
        client = MlflowClient(uri, registry_uri=uri)
        return (registry.alias_version(client, "cft-shop", "champion"),
                registry.alias_version(client, "cft-shop", "challenger"), champion._history(client, "cft-shop"))


def test_a_refused_password_or_none_is_named_before_any_work(server):
    uri, profile = server
    with mlflow_uris_restored():
        wrong = cft("versions", "-c", str(profile), as_=(ALICE[0], "not-her-password"))
        none = cft("versions", "-c", str(profile), as_=None)
        looked = cft("versions", "-c", str(profile), as_=BOB)
    fix = "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) to an account of that server"
    assert wrong.exit_code == 2 and wrong.output.replace("\n", " ").strip() == (
        f"error: the MLflow server at {uri} refused user 'alice' with the password in MLFLOW_TRACKING_PASSWORD: {fix}")
    assert none.exit_code == 2 and none.output.replace("\n", " ").strip() == (
        f"error: the MLflow server at {uri} asks for credentials: {fix}")
    # An account with READ sees the versions (the check asks nothing more of it).
    assert looked.exit_code == 0 and looked.output.startswith("cft-shop: 2 version(s), newest first"), looked.output


def test_a_promotion_without_the_permission_is_refused_whole_and_one_with_it_records_the_account(server):
    uri, profile = server
    before = state(uri)
    with mlflow_uris_restored():
        denied = cft("promote", "-c", str(profile), "--version", "2", "--reason", "try", as_=BOB)
    assert denied.exit_code == 2, denied.output
    assert denied.output.replace("\n", " ").startswith(
        f"error: the MLflow server at {uri} denied user 'bob' a request (/api/2.0/mlflow/registered-models/alias): "
        "ask its admin for the permission"), denied.output
    assert state(uri) == before  # the alias did not move and no history entry was written

    with mlflow_uris_restored():
        promoted = cft("promote", "-c", str(profile), "--version", "2", "--reason", "approved", as_=ALICE)
    assert promoted.exit_code == 0, promoted.output
    version, challenger, history = state(uri)
    assert version == "2" and len(history) == len(before[2]) + 1
    assert (history[-1]["by"], history[-1]["action"], history[-1]["reason"]) == ("alice", "promote", "approved")
    assert before[2][-1]["by"] == "admin"  # the fixture's first champion, set with the admin's account
    # Removing the challenger alias from the new champion needs MANAGE, which alice lacks: it stays,
    # and she is told; the model's creator (a gate's worker, here the admin) removes it.
    assert challenger == "2" and promoted.output.replace("\n", " ").endswith(
        "cft-shop: the challenger alias stays on v2, the champion now: removing an alias needs MANAGE on the "
        "registered model (this account may move the champion); the next gate removes it "), promoted.output
    from mlflow import MlflowClient

    with account(ADMIN):
        assert champion.drop_challenger(MlflowClient(uri, registry_uri=uri), "cft-shop", {"1", "2"}) is None
    assert state(uri)[1] is None
