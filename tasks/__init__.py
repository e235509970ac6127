"""The pipeline's stages, one module each (architecture.md).

A flow run that a quiet process started (`cft stack up` -> Prefect worker -> flow run) imports
the flow file by path, and every flow imports `tasks` before any stage library: this is where
it turns third-party chatter down as `cft` does (tasks/quiet.py), and where a run's log learns
to show a user's mistake without a traceback (tasks/error_logs.py).
"""

import os

from tasks.error_logs import user_errors_without_traceback
from tasks.quiet import QUIET_ENV, quiet_third_parties

if os.environ.get(QUIET_ENV) == "1":
    quiet_third_parties()
user_errors_without_traceback()
