"""Errors about what a user gave us: data, config, registry references, serving input.

Each names the file, field, column, rows or value at fault. The CLI prints them in a few lines
and exits 2 (`--debug` or CFT_DEBUG=1 shows the traceback); any other exception is our bug and
exits 1 with its traceback.
"""

import os
import re
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

# MLflow's codes for a request its server refused to this client (a server with users: `mlflow
# server --app-name basic-auth`, a managed MLflow): the credentials (401) or their permissions (403).
# The user's to fix, so never retried, and never read as "not there".
MLFLOW_ACCESS_CODES = ("UNAUTHENTICATED", "CUSTOMER_UNAUTHORIZED", "PERMISSION_DENIED")
# The same refusals as bare HTTP statuses (a response that carries no MLflow error JSON).
MLFLOW_ACCESS_STATUSES = {401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED"}


def mlflow_refused(error: BaseException) -> bool:
    """Whether `error` is an MLflow server refusing this client (`MLFLOW_ACCESS_CODES`). A caller
    that reads an MlflowException as "no such run, model or alias" re-raises these: a user without
    the permission to read the champion must not be told there is none."""
    return getattr(error, "error_code", None) in MLFLOW_ACCESS_CODES


def mlflow_absent(error: BaseException) -> bool:
    """Whether `error` is MLflow saying that what was asked for is not there, or no valid reference
    (`MLFLOW_INPUT_CODES`). A caller that reads an MlflowException as "no such run, model or alias"
    re-raises every other one: a read refused to this client (`mlflow_refused`), a server that
    failed, a TLS failure. Read as "none there", those had the gate see no champion and compare a
    challenger with the baselines alone."""
    return getattr(error, "error_code", None) in MLFLOW_INPUT_CODES


def mlflow_access_message(code: str, request: str = "", server: str | None = None) -> str:
    """The lines for a request the MLflow server refused (`code`, one of MLFLOW_ACCESS_CODES): who
    was refused (MLFLOW_TRACKING_USERNAME, a token, or no credentials), the request where a
    permission is missing, and what to do.
    The permissions each command needs: docs/registry.md, "A registry with users"."""
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    where = f"the MLflow server at {server}" if server else "the MLflow server"
    asked = f" ({request})" if request else ""
    if code == "PERMISSION_DENIED":
        who = f"user {user!r}" if user else "this client"
        return (f"{where} denied {who} a request{asked}: ask its admin for the permission (EDIT on the registered "
                "model to register, gate, promote or roll back; MANAGE to remove versions; EDIT on the experiment "
                "to log runs: docs/registry.md, \"A registry with users\")")
    fix = "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) to an account of that server"
    if user:
        return f"{where} refused user {user!r} with the password in MLFLOW_TRACKING_PASSWORD: {fix}"
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        return f"{where} refused the token in MLFLOW_TRACKING_TOKEN: {fix}"
    return f"{where} asks for credentials: {fix}"


# The HTTP statuses of a request a Prefect server refused to this client: its credentials (401: a
# server started with PREFECT_SERVER_API_AUTH_STRING, or Prefect Cloud's key) or their permissions
# (403: a Cloud workspace's roles). The user's to fix, like MLFLOW_ACCESS_CODES.
PREFECT_ACCESS_STATUSES = (401, 403)


def prefect_access_message(status: int, server: str, request: str = "") -> str:
    """The lines for a request the Prefect server at `server` (its API URL) refused with `status`
    (one of PREFECT_ACCESS_STATUSES): which of Prefect's credential settings was sent, and what to
    do. Never the secret itself. The settings are Prefect's own (the environment or the active
    profile, as `prefect` reads them)."""
    from prefect.settings import get_current_settings

    api = get_current_settings().api
    asked = f" ({request})" if request else ""
    if status == 403:
        return (f"the Prefect server at {server} denied this client a request{asked}: ask the workspace's admin "
                "for a role that allows it")
    fix = ("set PREFECT_API_AUTH_STRING to the `user:password` the server was started with (its "
           "PREFECT_SERVER_API_AUTH_STRING; a team stack's PREFECT_AUTH_STRING in team.env), or PREFECT_API_KEY "
           "for Prefect Cloud")
    # What Prefect's client sent: the auth string before the key, an empty value as none.
    if api.auth_string and api.auth_string.get_secret_value():
        return f"the Prefect server at {server} refused the credentials in PREFECT_API_AUTH_STRING{asked}: {fix}"
    if api.key and api.key.get_secret_value():
        return f"the Prefect server at {server} refused the key in PREFECT_API_KEY{asked}: {fix}"
    return f"the Prefect server at {server} asks for credentials{asked}: {fix}"


def input_error_message(error: BaseException) -> str | None:
    """The few lines to show for an error that is the input's fault, or None for anything else
    (our bug, or a transient failure). The one sorting of errors: the CLI prints these and exits 2,
    and a flow's task does not retry them (`tasks.pipeline.transient_only`). Every `UserError`,
    the library's errors with `user_error = True` (cft_core.ranking.InputError), and MLflow's
    errors with an input or access code, an upload MLflow's artifact proxy refused, and a Prefect
    server's refusals (MLflow, requests and Prefect are only looked at when they are imported)."""
    if isinstance(error, UserError) or getattr(error, "user_error", False):
        return str(error)
    if (refused := _prefect_refusal(error) or _mlflow_upload_refusal(error)) is not None:
        return refused
    exceptions = sys.modules.get("mlflow.exceptions")
    if exceptions is None or not isinstance(error, exceptions.MlflowException):
        return None
    if error.error_code in MLFLOW_INPUT_CODES:
        return error.message.splitlines()[0]
    if mlflow_refused(error):
        request = re.search(r"endpoint (\S+) failed", error.message)
        return mlflow_access_message(error.error_code, request.group(1) if request else "", _mlflow_server())
    return None


def server_failure_message(error: BaseException) -> str | None:
    """The line for a request a server took and did not complete: MLflow's, after its client's own
    retries (no answer, a timeout, 500s, a proxy's 502), or Prefect's (a 5xx). None for anything
    else. Not the input's fault: a flow's task retries these, so only the CLI sorts them (exit 2,
    as a server that does not answer), and a read that failed is never read as "none there"
    (`mlflow_absent`)."""
    if (failed := _mlflow_failure(error)) is not None:
        (what, status), name, url = failed, "MLflow", _mlflow_server()
    elif (asked := _prefect_request(error)) is not None and asked[0] >= 500:
        (status, url, request), name = asked, "Prefect"
        what = f"{request}: HTTP {status}"
    else:
        return None
    where = f"the {name} server at {url}" if url else f"the {name} server"
    if status is not None and status < 500:  # (a route it does not have: no answer that passes)
        return f"{where} does not serve a request ({what}): check that the URL is that of an MLflow server, release 3 or later"
    return f"{where} did not complete a request ({what}): run the command again once it answers; its log says why"


def user_error_message(error: BaseException) -> str | None:
    """The few lines to show for an error a user can act on: a mistake in the input
    (`input_error_message`), a server or source that does not answer, or a request a server did
    not complete (`server_failure_message`); None for anything else (our bug: its traceback). The
    CLI prints these as `error: ...` and exits 2, and a flow run's log shows them without a
    traceback (tasks/error_logs.py)."""
    if isinstance(error, (SourceUnavailable, ServerUnavailable)):
        return str(error)
    return input_error_message(error) or server_failure_message(error)


# The innermost reason a connection failed, as the OS words it inside a client's message:
# "[Errno 111] Connection refused" (no_answer in tasks.servers reads it too).
ERRNO_REASON = re.compile(r"\[Errno -?\d+\][^)'\"]*")


# How MLflow's client words a request its server did not complete, after its own retries: no
# answer, a timeout, or an error status that holds no MLflow error (a proxy's 502, a server's 500s).
_MLFLOW_REQUEST_FAILED = re.compile(r"API request to (?:endpoint )?(\S+) failed with (?:timeout )?(?:exception|error code)")


def _mlflow_failure(error: BaseException) -> tuple[str, int | None] | None:
    """("request: why", the HTTP status where it answered with one) for a request the MLflow server
    did not complete (`_MLFLOW_REQUEST_FAILED`), else None."""
    exceptions = sys.modules.get("mlflow.exceptions")
    if exceptions is None or not isinstance(error, exceptions.MlflowException):
        return None
    failed = _MLFLOW_REQUEST_FAILED.match(error.message)
    if failed is None:
        return None
    text = error.message
    status = re.search(r"error code (\d+) !=", text)
    reason = ERRNO_REASON.findall(text) or re.findall(r"Caused by \w+\('([^']*)'", text)
    why = ("timed out" if "timeout exception" in text else f"HTTP {status.group(1)}" if status else
           reason[-1].strip() if reason else "no answer")
    request = "/" + failed.group(1).split("://", 1)[-1].partition("/")[2].partition("?")[0]
    return f"{request}: {why}", int(status.group(1)) if status else None


# Where an upload goes through an MLflow server's artifact proxy (`mlflow server`, artifacts served):
# PUT <server>/api/2.0/mlflow-artifacts/artifacts/<experiment>/<run or models/m-id>/artifacts/<path>.
_MLFLOW_UPLOAD_PATH = "/api/2.0/mlflow-artifacts/artifacts/"


def _mlflow_upload_refusal(error: BaseException) -> str | None:
    """The line for an upload the MLflow server's artifact proxy (or a proxy in front of it) refused
    with a 4xx status, else None. MLflow's client raises requests' HTTPError for these, not an
    MlflowException (a 408, 429 or 5xx it retries first, then `server_failure_message` words it).
    A refusal is the same on every try, so a flow's task does not retry it: the upload of a model's
    weights, hundreds of MB, would be refused again each time."""
    exceptions = sys.modules.get("requests.exceptions")
    response = getattr(error, "response", None)
    if exceptions is None or not isinstance(error, exceptions.HTTPError) or response is None:
        return None
    server, found, path = (response.url or "").partition(_MLFLOW_UPLOAD_PATH)
    if not found or not 400 <= response.status_code < 500:
        return None
    artifact = path.partition("?")[0].split("/artifacts/", 1)[-1]
    if code := MLFLOW_ACCESS_STATUSES.get(response.status_code):  # (a server with users: as for its REST API)
        return mlflow_access_message(code, f"an upload of {artifact}", server)
    size = error.request.headers.get("Content-Length") if error.request is not None else None
    what = f"{artifact} ({int(size) / 1e6:.1f} MB)" if size and size.isdigit() else artifact
    refused = f"the MLflow server at {server} refused an upload of {what}: HTTP {response.status_code} {response.reason}"
    if response.status_code == 413:
        return (f"{refused}. A proxy in front of it caps the size of a request (nginx: client_max_body_size, 1 MB "
                "unless set): raise the cap above the largest artifact, the model's weights (SmolLM2-135M in fp32: "
                "540 MB). Finished stages are reused: run the command again once it is raised")
    return f"{refused}; the server's log, or its proxy's, says why"


def _prefect_refusal(error: BaseException) -> str | None:
    """`prefect_access_message` for an HTTP error of Prefect's client with an access status, else None."""
    if (failed := _prefect_request(error)) is None or failed[0] not in PREFECT_ACCESS_STATUSES:
        return None
    return prefect_access_message(*failed)


def _prefect_request(error: BaseException) -> tuple[int, str, str] | None:
    """(status, the server's URL, "METHOD path") for an HTTP error of Prefect's client, else None.
    The URL is the API's (PREFECT_API_URL) where the request went to it."""
    exceptions = sys.modules.get("prefect.exceptions")
    if exceptions is None or not isinstance(error, exceptions.PrefectHTTPStatusError):
        return None
    from prefect.settings import get_current_settings

    url, api = error.request.url, get_current_settings().api.url
    server = api if api and str(url).startswith(api) else f"{url.scheme}://{url.netloc.decode()}"
    return error.response.status_code, server, f"{error.request.method} {url.path}"


def _mlflow_server() -> str | None:
    """The tracking server MLflow talks to (its global URI, which every command sets), if a server."""
    uri = sys.modules["mlflow"].get_tracking_uri() if "mlflow" in sys.modules else ""
    return uri if uri.startswith(("http://", "https://")) else None
