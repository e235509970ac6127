"""infra/compose.yaml against what a team fills in: every variable it takes from the env file is in
team.env.example, its ports listen on 127.0.0.1 only (servers are shared through a proxy), and both
servers ask who calls."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

INFRA = Path(__file__).resolve().parents[2] / "infra"


def test_every_variable_compose_takes_is_in_the_env_example():
    text = (INFRA / "compose.yaml").read_text()
    # ${NAME...} is compose's (from team.env); $${NAME} is escaped, for the container's shell.
    taken = set(re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)", text))
    given = {line.split("=", 1)[0] for line in (INFRA / "team.env.example").read_text().splitlines()
             if re.match(r"[A-Z0-9_]+=", line)}
    assert taken - given == set(), f"compose.yaml takes {sorted(taken - given)}, which team.env.example lacks"
    assert {"MLFLOW_ADMIN_PASSWORD", "MLFLOW_WORKER_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"} <= taken


def test_published_ports_listen_on_loopback_and_the_worker_has_an_account_on_both_servers():
    services = yaml.safe_load((INFRA / "compose.yaml").read_text())["services"]
    published = [port for service in services.values() for port in service.get("ports", [])]
    assert published and all(port.startswith("127.0.0.1:") for port in published), published
    assert "--app-name basic-auth" in services["mlflow"]["command"]
    worker = services["worker"]["environment"]
    assert worker["MLFLOW_TRACKING_USERNAME"] == "cft-worker" and "MLFLOW_TRACKING_PASSWORD" in worker
    assert "user cft-worker ${MLFLOW_WORKER_PASSWORD" in services["mlflow-accounts"]["command"]
    # Prefect's server asks for the team's auth string, and the worker (hence its flow runs) sends it.
    server = services["prefect-server"]["environment"]
    assert server["PREFECT_SERVER_API_AUTH_STRING"] == worker["PREFECT_API_AUTH_STRING"] == "${PREFECT_AUTH_STRING}"
