"""infra/compose.yaml against what a team fills in: every variable it takes from the env file is in
team.env.example, its ports listen on 127.0.0.1 only (servers are shared through a proxy), and both
servers ask who calls."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tests.conftest import infra_script

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
    assert server["PREFECT_SERVER_API_AUTH_STRING"] == worker["PREFECT_API_AUTH_STRING"] == "${PREFECT_AUTH_STRING:?set in team.env}"


def test_compose_builds_the_project_image_from_the_dockerfile_the_rehearsal_runs():
    """Both services of the project's image build it from infra/Dockerfile (`up --build`), and every
    instruction of that Dockerfile is one infra/image_rehearsal.py runs (it stops at any other)."""
    services = yaml.safe_load((INFRA / "compose.yaml").read_text())["services"]
    users = {name: s for name, s in services.items() if s.get("image") == "${CFT_IMAGE:-cft-rec:latest}"}
    assert set(users) == {"worker", "mlflow-accounts"}
    assert all(s["build"] == {"context": "..", "dockerfile": "infra/Dockerfile"} for s in users.values())
    rehearsal = infra_script("image_rehearsal")
    steps = rehearsal.instructions((INFRA / "Dockerfile").read_text())
    assert steps[0] == ("FROM", rehearsal.BASE)
    assert {word for word, _ in steps} <= {"FROM", "ARG", "ENV", "WORKDIR", "USER", "COPY", "RUN", "VOLUME", "CMD"}
    assert ("USER", "cft") in steps and any(w == "RUN" and "bash infra/setup.sh" in a for w, a in steps)


def test_the_image_leaves_out_the_checkouts_environment_state_and_secrets():
    """.dockerignore, matched as Docker matches it: the venv, the data root, git, caches and
    team.env stay out of the build context; the code, configs and lock file go in."""
    rehearsal = infra_script("image_rehearsal")
    patterns = rehearsal.dockerignore()
    out = [".venv/bin/python", ".venv312/bin/python", "data/mlflow/mlflow.db", ".git/HEAD", "infra/team.env", "cft_core/__pycache__/loss.pyc",
           "cft_rec.egg-info/PKG-INFO", "torch-2.13.0-cp311.whl", ".gpukit/a/part"]
    kept = ["cft_core/loss.py", "configs/demo.yaml", "requirements/lock.txt", "infra/setup.sh", "pyproject.toml",
            "tests/data/test_readers.py", "infra/team.env.example", "wheels/own.whl"]
    assert [p for p in out if not rehearsal.ignored(p, patterns)] == []
    assert [p for p in kept if rehearsal.ignored(p, patterns)] == []
