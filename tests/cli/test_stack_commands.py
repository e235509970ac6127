"""`cft stack up / status / down` from the command line: real servers on free loopback ports.
(The deployed pipeline through the stack is tests/e2e/test_stack.py.)"""

from __future__ import annotations

import socket

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
    up = runner.invoke(app, ["stack", "up", "--data-root", root, "--prefect-port", str(free_port()),
                             "--mlflow-port", str(free_port()), "--no-worker"], prog_name="cft")
    try:
        assert up.exit_code == 0, up.output + repr(up.exception)
        assert "Prefect UI: http://127.0.0.1:" in up.output and "cft-replay/replay" in up.output
        status = runner.invoke(app, ["stack", "status", "--data-root", root], prog_name="cft").output
        assert "prefect-server: running" in status and "mlflow-server: running" in status
    finally:
        down = runner.invoke(app, ["stack", "down", "--data-root", root], prog_name="cft")
    assert down.exit_code == 0
    assert "not running" in runner.invoke(app, ["stack", "status", "--data-root", root], prog_name="cft").output
