"""A flow run's log shows an error the user can act on as its own few lines, not as a traceback.

Prefect's engines log a failed flow run with the exception's traceback ("Encountered exception
during execution", then "Engine execution exited with unexpected exception" in a worker's flow
run): for a source outside the allowed roots, 85 lines of Prefect's frames and ours above the
line that says which path is at fault and what to do, in the terminal of `cft run` (before its
`error:` line) and in the flow run's log in the Prefect UI. For the errors the CLI prints as
`error: ...` (`schemas.errors.user_error_message`: bad input, a server that does not answer) the
traceback is left out; the record keeps Prefect's message, which holds the error's own text, and
the run's state message says it too. Any other exception is our bug and keeps its traceback, and
`CFT_DEBUG=1` (`cft --debug`) keeps every one.

Installed when `tasks` is imported (tasks/__init__.py), which every flow does first: in the
process of `cft run` and in each flow run a worker starts.
"""

from __future__ import annotations

import logging
import os

from schemas.errors import user_error_message

# The loggers Prefect's engines log a run's failure on: a flow run's (also the worker
# subprocess's "Engine execution exited ...") and a task run's.
RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


class UserErrorsWithoutTraceback(logging.Filter):
    """Drops the traceback from a record whose exception is a user error; passes every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is not None and os.environ.get("CFT_DEBUG") != "1" and user_error_message(error) is not None:
            record.exc_info = record.exc_text = None
        return True


_FILTER = UserErrorsWithoutTraceback()


def user_errors_without_traceback() -> None:
    """Put the filter on Prefect's run loggers (once, however often this is called). A filter on
    a logger outlasts Prefect's own logging set-up, which replaces handlers, not filters."""
    for name in RUN_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
