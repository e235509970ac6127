"""Keep logs for the pipeline's own output: third-party progress bars (weight loading, hub),
advisory warnings and chatty INFO loggers are turned down unless `cft --verbose`.

Called before any of those libraries is imported, so environment switches take effect. The
pipeline's own bars (training steps, generation, embedding) and every error stay visible.

The switch reaches the processes a quiet one starts through `CFT_QUIET=1` (set here): `cft stack
up` starts the Prefect worker, the worker starts each flow run, and a flow run imports the flow
file by path, which imports `tasks` first; `tasks/__init__.py` calls this when it sees the
variable. `cft --verbose` sets `CFT_QUIET=0`, so a verbose stack's flow runs are verbose too.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

QUIET_ENV = "CFT_QUIET"

# Libraries whose warnings are advisory in our use (deprecations inside their own code, hints
# about settings we choose on purpose); their errors still raise.
_ADVISORY = r"(torch|transformers|deepspeed|accelerate|peft|mlflow|great_expectations|pydantic|prefect|pandas)(\.|$)"


def _warnings_and_worse(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING


def _not_the_accumulation_mismatch(record: logging.LogRecord) -> bool:
    return "Gradient accumulation steps mismatch" not in record.getMessage()  # after "[RANK 0] "


def _not_the_temporary_server_stopping(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Stopping temporary server")


# What a logger keeps, as a filter on it (a filter outlasts the library's own setLevel):
_KEEP = {
    # great_expectations sets this logger to INFO when imported: "Created temporary directory ...
    # for ephemeral docs site" on every validation.
    "great_expectations.data_context.types.base": _warnings_and_worse,
    # "Gradient accumulation steps mismatch: GradientAccumulationPlugin has 1, DeepSpeed config has
    # N. Using DeepSpeed's value." at every DeepSpeed run: transformers accumulates itself and fills
    # DeepSpeed's "auto" with train.effective_batch_size // micro-batch, so DeepSpeed's value is the
    # configured one (tests/train/test_training_stage.py checks accumulation under DeepSpeed).
    "accelerate.accelerator": _not_the_accumulation_mismatch,
    # "Stopping temporary server on http://127.0.0.1:8525", logged at exit by the temporary Prefect
    # server of `cft run` (and other commands without PREFECT_API_URL), after the command's own last
    # words: `cft run` ended on it, below the summary and the `cft recommend` hint. Prefect's
    # "Starting temporary server", which says how to run a server of one's own, stays.
    "prefect": _not_the_temporary_server_stopping,
}


def _has_cuda_hint() -> bool:
    """Whether a GPU may be present (then DeepSpeed must detect its accelerator itself)."""
    return bool(os.environ.get("CUDA_VISIBLE_DEVICES")) or os.path.exists("/dev/nvidia0")


def quiet_third_parties() -> None:
    os.environ[QUIET_ENV] = "1"  # for the processes this one starts
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # also transformers' "Loading weights" bars
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # store migrations, "Creating experiment" ...
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per model download
    if not _has_cuda_hint():  # DeepSpeed's "Setting accelerator to CPU" warning
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    warnings.filterwarnings("ignore", module=_ADVISORY)
    for name in ("DeepSpeed", "deepspeed", "mlflow", "alembic", "great_expectations", "accelerate", "torch.distributed"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for name, keep in _KEEP.items():
        if keep not in logging.getLogger(name).filters:  # once, however often this is called
            logging.getLogger(name).addFilter(keep)


def verbose_third_parties() -> None:
    """`cft --verbose`: change nothing here, and tell the processes this one starts the same."""
    os.environ[QUIET_ENV] = "0"


@contextmanager
def mlflow_notices_off() -> Iterator[None]:
    """MLflow's `register_model` prints "Registered model 'X' already exists. Creating a new
    version of this model..." and "Created version 'N' of model 'X'." to stderr (not through a
    logger, so no level turns them down) at every registration; the pipeline logs the version
    itself. In a quiet process MLflow's output stream is muted for the block (MLflow's warnings
    in it too; its errors raise as exceptions either way); otherwise nothing changes."""
    if os.environ.get(QUIET_ENV) != "1":
        yield
        return
    from mlflow.utils.logging_utils import MLFLOW_LOGGING_STREAM

    before = MLFLOW_LOGGING_STREAM.enabled
    MLFLOW_LOGGING_STREAM.enabled = False
    try:
        yield
    finally:
        MLFLOW_LOGGING_STREAM.enabled = before
