"""Shared fixtures: a tiny tokenizer trained on the prompt templates and real-looking titles."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

# Offline, quiet, deterministic: the same settings as CI, also when pytest runs outside make.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# As `cft run` and the stack set it: no telemetry heartbeat from the Prefect test server, which
# would otherwise race the migration of its fresh SQLite database ("database is locked").
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CHECKOUT = Path(__file__).resolve().parents[1]
# Where a test that forgot its tmp_path writes: relative defaults (data_root "data", MLflow's ./mlruns,
# `cft compare`'s ./compare) resolve against the working directory, which is the checkout under make test.
WATCHED = [CHECKOUT, CHECKOUT / "data", CHECKOUT / "data" / "mlflow"]
SCRATCH = {".pytest_cache", ".hypothesis", "__pycache__"}  # the test tools' own caches (gitignored)
_BEFORE = pytest.StashKey[set]()  # the watched entries when the session starts


def _checkout_entries() -> set[Path]:
    return {p for folder in WATCHED if folder.is_dir() for p in folder.iterdir() if p.name not in SCRATCH}


def pytest_sessionstart(session):
    session.config.stash[_BEFORE] = _checkout_entries()


def pytest_sessionfinish(session, exitstatus):
    """Fail the run when tests left new files in the checkout: each test writes under its tmp_path."""
    left = sorted(str(p.relative_to(CHECKOUT)) for p in _checkout_entries() - session.config.stash[_BEFORE])
    if left:
        terminal = session.config.get_terminal_writer()
        terminal.line()
        terminal.line(f"tests wrote into the checkout: {', '.join(left)}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# A few MovieLens-100K titles (as RecBole writes them) with a spread of lengths.
TITLES = [
    "Toy Story", "GoldenEye", "Four Rooms", "Get Shorty", "Copycat", "Twelve Monkeys", "Babe",
    "Dead Man Walking", "Richard III", "Seven", "Usual Suspects, The", "Mighty Aphrodite",
    "Postino, Il", "Mr. Holland's Opus", "French Twist (Gazon maudit)", "From Dusk Till Dawn",
    "White Balloon, The", "Antonia's Line", "Angels and Insects", "Muppet Treasure Island", "Heat",
]


def make_records(n: int, seed: int = 0) -> list[dict]:
    """n instruction records with uneven history lengths (1..10)."""
    import random

    rng = random.Random(seed)
    records = []
    for i in range(n):
        k = 1 + (i * 3) % 10
        hist = rng.sample(TITLES, k)
        target = rng.choice([t for t in TITLES if t not in hist])
        records.append({"history_titles": hist, "target_title": target})
    return records


@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory) -> Path:
    """A model cache (what CFT_CACHE_DIR names) holding the packaged SmolLM2, converted once per
    test run (~30 s), not in the user's ~/.cache. The pytest-xdist workers of a run share the
    parent of their temporary folders: the first converts, the other waits for it and reuses it."""
    from filelock import FileLock

    from cft_core.model_sources import smollm2_folder

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    with FileLock(str(shared / "cft-cache.lock")):
        smollm2_folder(shared / "cft-cache")
    return shared / "cft-cache"


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from cft_core.prompts import DOMAINS, PromptBuilder
    from cft_core.tiny import build_tiny_tokenizer

    texts = list(TITLES)
    for name in DOMAINS:
        pb = PromptBuilder.for_domain(name)
        texts += [pb.factual(TITLES[:3]), pb.counterfactual(), pb.response(TITLES[0])]
    return build_tiny_tokenizer(texts * 4, vocab_size=400)


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server for the session (starting one costs 10-15 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness():
        yield


@contextmanager
def mlflow_uris_restored():
    """mlflow.set_tracking_uri / set_registry_uri / set_experiment set MLflow's module globals and
    export MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI / MLFLOW_EXPERIMENT_ID: put them back as they
    were on the way out, so that one test's (or one module fixture's) store does not become the
    next one's default, nor its experiment id the next store's active experiment (a run of another
    experiment with that id then refuses to start)."""
    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID")
    saved = {k: os.environ.get(k) for k in names}
    experiment = sys.modules["mlflow.tracking.fluent"]._active_experiment_id if "mlflow" in sys.modules else None
    try:
        yield
    finally:
        if "mlflow" in sys.modules:
            import mlflow
            import mlflow.tracking.fluent

            mlflow.set_tracking_uri(saved["MLFLOW_TRACKING_URI"])
            mlflow.set_registry_uri(saved["MLFLOW_REGISTRY_URI"])
            mlflow.tracking.fluent._active_experiment_id = experiment
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(autouse=True)
def _restore_mlflow_uris():
    with mlflow_uris_restored():
        yield
