"""Errors about what a user gave us: data, config, registry references, serving input.

Each names the file, field, column, rows or value at fault. The CLI prints them in a few lines
and exits 2 (`--debug` or CFT_DEBUG=1 shows the traceback); any other exception is our bug and
exits 1 with its traceback.
"""

import sys


class UserError(Exception):
    """A mistake in the user's input, reported without a traceback. (Errors of the library, which
    does not import this module, carry `user_error = True` instead: cft_core.ranking.InputError.)"""

    user_error = True


class DataError(UserError, ValueError):
    """Bad input that cannot be read into the stage's schema (unreadable, wrong shape, unsafe)."""


class DataValidationError(DataError):
    """A Great Expectations suite failed; `report` is the JSON-able summary that was written."""

    def __init__(self, message: str, report: dict, report_path=None):
        super().__init__(message)
        self.report = report
        self.report_path = report_path


class ConfigError(UserError, ValueError):
    """A profile that cannot be read or does not validate (names the file and the fields)."""


class InputError(UserError, ValueError):
    """A command's or request's input that cannot be used: a request the recommender cannot serve
    (unknown item id, k out of range, no history), an option out of range, a folder or store that
    is not there."""


class RegistryError(UserError, LookupError):
    """A registry reference that does not resolve (unknown model, version or alias)."""


class SourceUnavailable(ConnectionError):
    """A source URL could not be fetched (network). Transient, so the flow retries it; the
    message says where to place the file by hand when there is no network."""


class ServerUnavailable(ConnectionError):
    """A server a command talks to does not answer: the MLflow tracking server, the Prefect API
    (network, or not started; `tasks.servers`). Transient like `SourceUnavailable`: a flow's task
    retries it, the CLI prints it and exits 2."""


# MLflow's codes for a reference that does not resolve (an unknown model, version or alias) or a
# value it refuses: the input's fault, like a `RegistryError`.
MLFLOW_INPUT_CODES = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def input_error_message(error: BaseException) -> str | None:
    """The few lines to show for an error that is the input's fault, or None for anything else
    (our bug, or a transient failure). The one sorting of errors: the CLI prints these and exits 2,
    and a flow's task does not retry them (`tasks.pipeline.transient_only`). Every `UserError`,
    the library's errors with `user_error = True` (cft_core.ranking.InputError), and MLflow's
    errors with an input code (MLflow is only looked at when it is imported)."""
    if isinstance(error, UserError) or getattr(error, "user_error", False):
        return str(error)
    exceptions = sys.modules.get("mlflow.exceptions")
    if exceptions is not None and isinstance(error, exceptions.MlflowException) and error.error_code in MLFLOW_INPUT_CODES:
        return error.message.splitlines()[0]
    return None

