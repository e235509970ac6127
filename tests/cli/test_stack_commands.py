"""`cft stack up / status / down` from the command line: real servers on free loopback ports.
(The deployed pipeline through the stack is tests/e2e/test_stack.py.)"""

from __future__ import annotations

import json
import socket
import urllib.request

import pytest
from typer.testing import CliRunner

from cft_cli.main import app

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_stack_up_status_down(tmp_path):
    runner = CliRunner()
    root = str(tmp_path / "data")
    serve_port, prefect_port = free_port(), free_port()
    up = runner.invoke(app, ["stack", "up", "--data-root", root, "--prefect-port", str(prefect_port),
                             "--mlflow-port", str(free_port()), "--no-worker", "--serve", "configs/smoke.yaml",
                             "--serve-port", str(serve_port)], prog_name="cft")
    try:
        assert up.exit_code == 0, up.output + repr(up.exception)
        assert "Prefect UI: http://127.0.0.1:" in up.output and "cft-replay/replay" in up.output
        assert f"Recommender     http://127.0.0.1:{serve_port} (the champion of configs/smoke.yaml" in up.output
        status = runner.invoke(app, ["stack", "status", "--data-root", root], prog_name="cft").output
        assert "prefect-server: running" in status and "mlflow-server: running" in status
        assert "recommender: running" in status  # waiting for a first champion (tests/e2e/test_stack.py)
        request = urllib.request.Request(f"http://127.0.0.1:{prefect_port}/api/deployments/filter", data=b"{}",
                                         headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=30) as r:  # noqa: S310 (loopback)
            deployments = {d["name"]: d for d in json.loads(r.read())}
        assert set(deployments) == {"full-pipeline", "scheduled-retrain", "replay", "promote", "nightly"}
        assert [s["active"] for s in deployments["nightly"]["schedules"]] == [False]  # created paused
    finally:
        down = runner.invoke(app, ["stack", "down", "--data-root", root], prog_name="cft")
    assert down.exit_code == 0 and "stopped recommender" in down.output
    assert "not running" in runner.invoke(app, ["stack", "status", "--data-root", root], prog_name="cft").output


def test_stack_up_refuses_a_bad_serve_profile_before_starting_anything(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {nmae: x}\n")
    up = CliRunner().invoke(app, ["stack", "up", "--data-root", str(tmp_path / "data"), "--serve", str(bad)],
                            prog_name="cft")
    assert up.exit_code == 2 and "nmae" in up.output
    assert not (tmp_path / "data" / "stack").exists()
