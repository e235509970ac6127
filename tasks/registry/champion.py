"""The champion alias and its history: every move (gate, `cft promote`, `cft rollback`) with its reason,
under the per-model lock.
"""

from __future__ import annotations

import getpass
import json
import os
from datetime import UTC, datetime

from schemas.config import PipelineConfig
from schemas.errors import InputError, RegistryError
from tasks.registry.names import (
    CHALLENGER,
    CHAMPION,
    HISTORY_TAG,
    alias_version,
    promotion_lock,
    registry_client,
)


def _history(client, name: str) -> list[dict]:
    return champion_history(client.get_registered_model(name))


def champion_history(model) -> list[dict]:
    """A RegisteredModel's changes of champion, oldest first: {version, action, reason, by, at} and,
    for one asked through a flow run, via (`set_champion`)."""
    return json.loads(model.tags.get(HISTORY_TAG, "[]"))


# A registry tag holds 5,000 characters on a SQL store (MLflow's own check allows 100,000, so
# SQLite takes more and PostgreSQL refuses it), and `champion_history` keeps its newest entries within
# HISTORY_MAX_CHARS. A person's reason is checked against REASON_MAX_CHARS before anything moves.
HISTORY_MAX_CHARS, REASON_MAX_CHARS = 4800, 1000
BY_MAX_CHARS = 200  # who asked: a name or an address


def check_reason(reason: str, what: str) -> None:
    """InputError for a reason that is empty or longer than REASON_MAX_CHARS."""
    if not reason.strip():
        raise InputError(f"{what} needs a reason (`--reason`, the flow's `reason`)")
    if len(reason) > REASON_MAX_CHARS:
        raise InputError(f"the reason is {len(reason):,} characters long; at most {REASON_MAX_CHARS:,} (a line or two: "
                         "it is kept in the registry's champion_history tag, which holds 5,000)")


def _who() -> str:
    """Who moves the champion: the registry's account where the MLflow server has users
    (MLFLOW_TRACKING_USERNAME, the name the server checked the password of), else the login name,
    or the uid where the user has none (a container run as an arbitrary uid without a passwd
    entry, where getpass raises)."""
    if user := os.environ.get("MLFLOW_TRACKING_USERNAME", "").strip():
        return user
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def check_by(by: str | None) -> None:
    """InputError for a `by` (who asks for a promotion or rollback) that is blank or too long."""
    if by is not None and (not by.strip() or len(by) > BY_MAX_CHARS):
        raise InputError(f"`by` names who asks, in at most {BY_MAX_CHARS} characters (a name or an address); "
                         f"got {by[:40]!r}{'...' if len(by) > 40 else ''}")


def set_champion(client, name: str, version: str, action: str, reason: str, by: str | None = None,
                  via: str | None = None) -> None:
    """Move the champion alias to `version` and append the change to `champion_history`: what,
    why, by whom (`by`, else this process's user) and, for a change asked through a flow run, via
    which (`via`: the process's user is then the worker's, not the person's)."""
    history = _history(client, name)
    entry = {"version": str(version), "action": action, "reason": reason, "by": by or _who(),
             "at": datetime.now(UTC).isoformat(timespec="seconds")}
    if via:
        entry["via"] = via if by else f"{via}, whose user this is"
    history.append(entry)
    text = json.dumps(history)  # (written in full before the alias moves: nothing half-done)
    while len(text) > HISTORY_MAX_CHARS and len(history) > 1:
        history = history[1:]
        text = json.dumps(history)
    if len(text) > HISTORY_MAX_CHARS:  # one entry: the reason's check keeps it far below
        raise RegistryError(f"champion_history entry of {len(text):,} characters: {text[:200]}...")
    client.set_registered_model_alias(name, CHAMPION, str(version))
    client.set_registered_model_tag(name, HISTORY_TAG, text)
    client.set_model_version_tag(name, str(version), "champion.reason", reason)


def drop_challenger(client, name: str, versions: set[str]) -> str | None:
    """Remove the challenger alias where it names one of `versions` (the new champion, or the one it
    replaced: a challenger that serves is no longer one). Returns the version it was left on where
    the server refused: removing an alias needs MANAGE on a registry with users, where EDIT may move
    the champion (docs/registry.md); the next gate, run by the model's creator, removes it."""
    import mlflow

    held = alias_version(client, name, CHALLENGER)
    if held is None or held not in versions:
        return None
    try:
        client.delete_registered_model_alias(name, CHALLENGER)
    except mlflow.exceptions.MlflowException as e:
        if e.error_code != "PERMISSION_DENIED":
            raise
        return held
    return None


def challenger_left_note(name: str, version: str) -> str:
    """What to tell whoever promoted when `drop_challenger` was refused."""
    return (f"{name}: the challenger alias stays on v{version}, the champion now: removing an alias needs MANAGE "
            "on the registered model (this account may move the champion); the next gate removes it")


def promote(cfg: PipelineConfig, name: str, version: str, reason: str, uri: str, by: str | None = None,
            via: str | None = None) -> str | None:
    """A person's override: make `version` the champion, recording why (and who: `set_champion`).
    Returns the version the challenger alias was left on, where this account may not remove it
    (`drop_challenger`), else None."""
    check_reason(reason, "a manual promotion")
    check_by(by)
    client = registry_client(uri)
    version = str(version)
    with promotion_lock(cfg, name):
        client.get_model_version(name, version)  # raises when it does not exist
        set_champion(client, name, version, "promote", reason, by, via)
        return drop_challenger(client, name, {version})


def champion_stack(history: list[dict]) -> list[str]:
    """The champions a rollback walks back through, newest last, from `champion_history`.

    A promotion (the gate's or a person's) pushes its version and a rollback undoes the one before
    it, like an undo stack: after v1, v2, v3 and a rollback to v2, the next rollback goes to v1,
    never back to the v3 that was just rolled back. Promoting the champion again changes nothing.
    """
    stack: list[str] = []
    for entry in history:
        version = str(entry["version"])
        if entry["action"] == "rollback" and stack:
            stack.pop()
        if not stack or stack[-1] != version:  # (a rollback's target is normally the top by now)
            stack.append(version)
    return stack


def rollback(cfg: PipelineConfig, name: str, reason: str, uri: str, by: str | None = None,
             via: str | None = None) -> str:
    """Undo the last change of champion: make the champion before it champion again (repeated,
    further back: `champion_stack`); returns that version. by, via: as `promote`'s."""
    check_reason(reason, "a rollback")
    check_by(by)
    client = registry_client(uri)
    with promotion_lock(cfg, name):
        current = alias_version(client, name, CHAMPION)
        stack = champion_stack(_history(client, name))
        if stack and stack[-1] == current:
            stack.pop()  # (when the alias was moved by hand elsewhere, the last recorded champion)
        if current is None or not stack:
            raise RegistryError(f"{name} has no earlier champion to roll back to (current: {current})")
        target = stack[-1]
        set_champion(client, name, target, "rollback", f"{reason} (was v{current})", by, via)
        return target
