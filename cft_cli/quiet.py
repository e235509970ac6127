"""Keep the terminal for the pipeline's own output: third-party progress bars (weight loading,
hub), advisory warnings and chatty INFO loggers are turned down unless `cft --verbose`.

Called before any of those libraries is imported, so environment switches take effect. The
pipeline's own bars (training steps, generation, embedding) and every error stay visible.
"""

from __future__ import annotations

import logging
import os
import warnings

# Libraries whose warnings are advisory in our use (deprecations inside their own code, hints
# about settings we choose on purpose); their errors still raise.
_ADVISORY = r"(torch|transformers|deepspeed|accelerate|peft|mlflow|great_expectations|pydantic|prefect|pandas)(\.|$)"


def _has_cuda_hint() -> bool:
    """Whether a GPU may be present (then DeepSpeed must detect its accelerator itself)."""
    return bool(os.environ.get("CUDA_VISIBLE_DEVICES")) or os.path.exists("/dev/nvidia0")


def quiet_third_parties() -> None:
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
    # great_expectations sets this logger to INFO when imported ("Created temporary directory ... for
    # ephemeral docs site" on every validation); a filter on the logger outlasts that setLevel.
    logging.getLogger("great_expectations.data_context.types.base").addFilter(_warnings_and_worse)


def _warnings_and_worse(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING
