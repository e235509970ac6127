"""The pipeline's stages, one module each (architecture.md).

A flow run that a quiet process started (`cft stack up` -> Prefect worker -> flow run) imports
the flow file by path, and every flow imports `tasks` before any stage library: this is where
it turns third-party chatter down as `cft` does (tasks/quiet.py).
"""

import os

from tasks.quiet import QUIET_ENV, quiet_third_parties

if os.environ.get(QUIET_ENV) == "1":
    quiet_third_parties()
