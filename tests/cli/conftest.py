"""The CLI tests call `cft` in-process through typer's CliRunner, which swaps sys.stdout and
sys.stderr for each call and closes its streams afterwards."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def _prefect_logging_on_the_session_stderr():
    """Prefect's console log handler keeps the stream it was created with. Created inside a
    CliRunner call, it later writes into that closed stream ("--- Logging error ---" when the
    Prefect harness stops): create it first, outside any call."""
    from prefect.logging.configuration import ensure_logging_setup

    ensure_logging_setup()
