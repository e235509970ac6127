"""Third-party chatter is turned down in `cft` and in the processes it starts (the stack's worker
and its flow runs, which import `tasks` first), and left alone with `cft --verbose`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from cft_cli.main import app
from cft_cli.stack import Stack
from tasks.quiet import QUIET_ENV

ROOT = Path(__file__).resolve().parents[2]

# What a flow run does first (`import tasks`), then what the stage libraries say.
CHATTER = """
import logging, sys, warnings
logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(name)s: %(message)s")
import tasks
warnings.warn_explicit("an mlflow advisory", UserWarning, "pyfunc.py", 1, module="mlflow.pyfunc")
warnings.warn_explicit("our own warning", UserWarning, "pipeline.py", 1, module="tasks.pipeline")
logging.getLogger("accelerate.accelerator").warning(
    "[RANK 0] Gradient accumulation steps mismatch: GradientAccumulationPlugin has 1, DeepSpeed config has 2.")
logging.getLogger("accelerate.accelerator").warning("another accelerate warning")
logging.getLogger("great_expectations.data_context.types.base").info("Created temporary directory")
logging.getLogger("mlflow.store").info("Creating initial MLflow database tables")
import subprocess
from prefect.server.api.server import SubprocessASGIServer  # (Prefect's logging set up as in a flow run)
server = SubprocessASGIServer(port=1)  # a temporary server stopped at exit, as `cft run`'s is
server.server_process = subprocess.Popen([sys.executable, "-c", "pass"])
server.stop()
logging.getLogger("prefect").info("Starting temporary server on http://127.0.0.1:1")
print("TRANSFORMERS_VERBOSITY=" + str(__import__("os").environ.get("TRANSFORMERS_VERBOSITY")))
"""


def run_chatter(quiet: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k not in (QUIET_ENV, "TRANSFORMERS_VERBOSITY")}
    if quiet is not None:
        env[QUIET_ENV] = quiet
    res = subprocess.run([sys.executable, "-c", CHATTER], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stdout + res.stderr


def test_a_process_started_quiet_keeps_only_warnings_that_matter():
    out = run_chatter("1")
    for dropped in ("an mlflow advisory", "Gradient accumulation steps mismatch", "Created temporary directory",
                    "Creating initial MLflow database tables", "Stopping temporary server"):
        assert dropped not in out, out
    assert "our own warning" in out and "another accelerate warning" in out and "Starting temporary server" in out
    assert "TRANSFORMERS_VERBOSITY=error" in out


def test_without_the_switch_nothing_is_turned_down():
    for quiet in (None, "0"):
        out = run_chatter(quiet)
        for said in ("an mlflow advisory", "Gradient accumulation steps mismatch", "Created temporary directory",
                     "Creating initial MLflow database tables", "our own warning", "Stopping temporary server"):
            assert said in out, (quiet, out)
        assert "TRANSFORMERS_VERBOSITY=None" in out


def test_cft_passes_quiet_or_verbose_on_to_the_stack(tmp_path, monkeypatch):
    monkeypatch.setenv(QUIET_ENV, "unset by the test")  # restored afterwards
    monkeypatch.delenv(QUIET_ENV)
    assert Stack(tmp_path).env()[QUIET_ENV] == "1"  # stack processes log into files: quiet by default

    for flags, expected in ((["--verbose"], "0"), ([], "1")):
        res = CliRunner().invoke(app, [*flags, "stack", "status", "--data-root", str(tmp_path)], prog_name="cft")
        assert res.exit_code == 3, res.output  # (nothing runs)
        assert os.environ[QUIET_ENV] == expected
        assert Stack(tmp_path).env()[QUIET_ENV] == expected
