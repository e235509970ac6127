"""Accounts and grants on an MLflow server with users (`mlflow server --app-name basic-auth`), as
its admin: MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD name the admin's account.

    python infra/mlflow_accounts.py URL user NAME PASSWORD          # an account (kept if it exists)
    python infra/mlflow_accounts.py URL grant NAME TYPE RESOURCE PERMISSION
        # e.g. grant alice registered_model cft-ml-100k EDIT: alice may promote and roll back

compose.yaml's `mlflow-accounts` service makes the worker's account with it; what each account
needs is in docs/registry.md, "A registry with users". MLflow's own `AuthServiceClient` does the
work; this only makes a second run of the stack find the account it made the first time.
"""

from __future__ import annotations

import sys
import warnings


def main(argv: list[str]) -> int:
    if len(argv) < 2 or (argv[1], len(argv)) not in (("user", 4), ("grant", 6)):
        print(__doc__.strip().split("\n\n")[1], file=sys.stderr)
        return 2
    with warnings.catch_warnings():  # (the client imports MLflow's server app, whose starlette warns)
        warnings.simplefilter("ignore")
        from mlflow.exceptions import MlflowException
        from mlflow.server.auth.client import AuthServiceClient

    accounts = AuthServiceClient(argv[0])
    try:
        if argv[1] == "user":
            name, password = argv[2:]
            try:
                accounts.create_user(name, password)
                print(f"account {name}: made")
            except MlflowException as e:
                if e.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                print(f"account {name}: there already (its password unchanged)")
        else:
            name, kind, resource, permission = argv[2:]
            accounts.grant_user_permission(name, kind, resource, permission)
            print(f"account {name}: {permission} on {kind} {resource}")
    except MlflowException as e:  # a short password, an unknown account, not the admin: MLflow's words
        print(f"error: {e.message.splitlines()[0]}", file=sys.stderr)
        return 2
    return 0

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
