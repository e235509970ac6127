"""Shared fixtures: a tiny tokenizer trained on the prompt templates and real-looking titles."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import torch

# Offline, quiet, deterministic: the same settings as CI, also when pytest runs outside make.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under pytest-xdist each worker takes its share of the cores for torch's (OpenMP's) threads, as
# do the processes it starts (torchrun, the e2e stack's worker); by default every worker would use
# all of them (on 2 cores: 4 busy threads, and DeepSpeed's CPU steps slowed by half; README, The two commands).
if workers := os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // int(workers))))
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


def tiny_model_of_type(model_type: str, vocab: int) -> torch.nn.Module:
    """A tiny randomly initialised model of a transformers model type that `build_tiny_model`
    does not build: the types of POST_HEAD_TRANSFORMS (the transform set to bite: random tiny
    logits are ~1 or less), the types with recurrent layers (RECURRENT_TYPES) and multimodal
    checkpoints (MULTIMODAL_TYPES, each as AutoModelForCausalLM loads its folder's class)."""
    import torch
    import transformers as hf

    common = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=8, attn_implementation="eager")
    no_head_dim = {k: v for k, v in common.items() if k != "head_dim"}
    moe = dict(num_local_experts=2, num_experts_per_tok=1)
    mamba2 = dict(mamba_n_heads=4, mamba_d_head=16, mamba_expand=2, mamba_n_groups=1, mamba_d_state=16)
    text = {k: v for k, v in common.items() if k != "attn_implementation"}  # a multimodal config's text part
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28,
                  patch_size=14)
    builders = {
        "gemma3_text": lambda: hf.Gemma3ForCausalLM(hf.Gemma3TextConfig(**common, final_logit_softcapping=0.5)),
        "gemma4_text": lambda: hf.Gemma4ForCausalLM(hf.Gemma4TextConfig(  # per-layer inputs as small as the rest
            **common, final_logit_softcapping=0.5, vocab_size_per_layer_input=vocab, hidden_size_per_layer_input=8)),
        "gemma4_unified_text": lambda: hf.Gemma4UnifiedForCausalLM(hf.Gemma4UnifiedTextConfig(
            **common, final_logit_softcapping=0.5)),
        # Multimodal classes, image towers included. Gemma-3's caps nothing, whatever its text
        # config says (a cap set here, so a table keyed by the text type would get it wrong).
        "gemma3": lambda: hf.Gemma3ForConditionalGeneration(hf.Gemma3Config(
            text_config=dict(**text, final_logit_softcapping=0.5), vision_config=vision, mm_tokens_per_image=4,
            attn_implementation="eager")),
        "gemma4": lambda: hf.Gemma4ForConditionalGeneration(hf.Gemma4Config(
            text_config=dict(**text, final_logit_softcapping=0.5, vocab_size_per_layer_input=vocab,
                             hidden_size_per_layer_input=8), attn_implementation="eager")),
        "gemma4_unified": lambda: hf.Gemma4UnifiedForConditionalGeneration(hf.Gemma4UnifiedConfig(
            text_config=dict(**text, final_logit_softcapping=0.5), attn_implementation="eager")),
        "qwen3_5": lambda: hf.Qwen3_5ForConditionalGeneration(hf.Qwen3_5Config(
            text_config=dict(**text, layer_types=["linear_attention", "full_attention"]),
            vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32),
            attn_implementation="eager")),
        "vaultgemma": lambda: hf.VaultGemmaForCausalLM(hf.VaultGemmaConfig(**common, final_logit_softcapping=0.5)),
        "nanochat": lambda: hf.NanoChatForCausalLM(hf.NanoChatConfig(**common, final_logit_softcapping=0.5)),
        "granitemoe": lambda: hf.GraniteMoeForCausalLM(hf.GraniteMoeConfig(**common, **moe, logits_scaling=4.0)),
        "granitemoeshared": lambda: hf.GraniteMoeSharedForCausalLM(
            hf.GraniteMoeSharedConfig(**common, **moe, logits_scaling=4.0)),
        "granite_swa": lambda: hf.GraniteSWAForCausalLM(hf.GraniteSWAConfig(**common, logits_scaling=4.0)),
        "granitemoe_swa": lambda: hf.GraniteMoeSWAForCausalLM(
            hf.GraniteMoeSWAConfig(**common, **moe, logits_scaling=4.0)),
        # Multi-head latent attention (ranks and head widths of its own); logits_scaling is
        # hidden_size / dim_model_base = 4.
        "minicpm3": lambda: hf.MiniCPM3ForCausalLM(hf.MiniCPM3Config(
            **{**common, "num_key_value_heads": 4}, dim_model_base=8, q_lora_rank=16, kv_lora_rank=8,
            qk_nope_head_dim=4, qk_rope_head_dim=4, v_head_dim=8)),
        "cohere2": lambda: hf.Cohere2ForCausalLM(hf.Cohere2Config(**common, logit_scale=0.25)),
        "cohere2_moe": lambda: hf.Cohere2MoeForCausalLM(hf.Cohere2MoeConfig(**common, logit_scale=0.25)),
        "hyperclovax": lambda: hf.HyperCLOVAXForCausalLM(hf.HyperCLOVAXConfig(**common, logits_scaling=4.0)),
        # With recurrent layers (and a post-head transform, the first two).
        "falcon_h1": lambda: hf.FalconH1ForCausalLM(hf.FalconH1Config(  # Mamba-2 part as small as the rest
            **common, lm_head_multiplier=0.25, mamba_d_ssm=64, mamba_n_heads=4, mamba_d_state=16, mamba_chunk_size=16)),
        "granitemoehybrid": lambda: hf.GraniteMoeHybridForCausalLM(hf.GraniteMoeHybridConfig(
            **common, **moe, **mamba2, logits_scaling=4.0, layer_types=["linear_attention", "full_attention"])),
        "recurrent_gemma": lambda: hf.RecurrentGemmaForCausalLM(hf.RecurrentGemmaConfig(
            **{**common, "num_hidden_layers": 3}, lru_width=32, attention_window_size=16)),
        "mamba": lambda: hf.MambaForCausalLM(hf.MambaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2)),
        "qwen3_next": lambda: hf.Qwen3NextForCausalLM(hf.Qwen3NextConfig(
            **common, layer_types=["linear_attention", "full_attention"], num_experts=2, num_experts_per_tok=1)),
        "lfm2": lambda: hf.Lfm2ForCausalLM(hf.Lfm2Config(**no_head_dim, full_attn_idxs=[1])),
        "jamba": lambda: hf.JambaForCausalLM(hf.JambaConfig(
            **no_head_dim, num_experts=2, num_experts_per_tok=1, attn_layer_period=2, attn_layer_offset=1,
            expert_layer_period=2, expert_layer_offset=1, mamba_d_state=8)),
    }
    torch.manual_seed(0)
    return builders[model_type]().float()


# Types of POST_HEAD_TRANSFORMS that `build_tiny_model` lacks.
TABLE_ONLY_TYPES = ("gemma3_text", "gemma4_text", "gemma4", "gemma4_unified_text", "gemma4_unified", "vaultgemma",
                    "nanochat", "granitemoe", "granitemoeshared", "granite_swa", "granitemoe_swa", "minicpm3",
                    "cohere2", "cohere2_moe", "hyperclovax", "falcon_h1", "granitemoehybrid")
# Layers with a recurrent state: Mamba; Mamba-2 beside attention (Falcon-H1 in each layer,
# Granite-4.0-H and Jamba in turns); gated delta-nets (Qwen3-Next, as Qwen3.5); short
# convolutions (LFM2). RecurrentGemma is refused (cft_core.modeling.PADDING_CHANGES_OUTPUTS).
RECURRENT_TYPES = ("mamba", "falcon_h1", "granitemoehybrid", "jamba", "qwen3_next", "lfm2")
# Multimodal checkpoints: Gemma-3 (4B and up), Gemma-4 and its unified variant load whole (their
# AutoModelForCausalLM class is the multimodal one); Qwen3.5's load as its text model alone.
MULTIMODAL_TYPES = ("gemma3", "gemma4", "gemma4_unified", "qwen3_5")


# The files that take longest (seconds in one run on 2 cores, two workers, 2026-12-03: the e2e
# ~200, training stage 118, SmolLM2 108, cli commands 101, flows 86, registry 65, train-step bench
# 51), handed out first, longest first (`make test` passes --no-loadscope-reorder): pytest-xdist
# otherwise orders files by their number of tests, which put the one-test e2e and SmolLM2 files
# last, one worker running them alone at the end.
LONGEST_FILES = ("tests/e2e/test_stack.py", "tests/train/test_training_stage.py", "tests/train/test_smollm2_slow.py",
                 "tests/cli/test_commands.py", "tests/flows/test_cft_flow.py", "tests/train/test_registry.py",
                 "tests/bench/test_train_step.py")


def pytest_collection_modifyitems(config, items):
    rank = {path: i for i, path in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable: the rest as collected


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


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now (bound, then released): for a server a test
    starts, or one a test needs to find closed."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StandIn(BaseHTTPRequestHandler):
    """A stand-in server's handler (for `serving`): any GET or POST answers `status` (200) with
    `body` (`{}`: what /health, MLflow's experiment search and Prefect's /hello need to pass the
    checks), and `routes` ({path: (status, body)}) answers those paths so. A test subclasses it
    with its own values."""

    status = 200
    body = b"{}"
    routes: dict[str, tuple[int, bytes]] = {}

    def do_GET(self):
        status, body = self.routes.get(self.path, (self.status, self.body))
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *args):
        pass


@contextmanager
def serving(handler, tls_files: tuple[Path, Path] | None = None):
    """A server on 127.0.0.1 answering with `handler`, over TLS with (certificate, key) when given; yields its port."""
    import ssl
    import threading
    from http.server import HTTPServer

    server = HTTPServer(("127.0.0.1", 0), handler)
    if tls_files:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls_files)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()


def infra_script(name: str):
    """infra/<name>.py as a module (the infra folder holds scripts, not a package): what a test of
    an admin's or a rehearsal's script calls into."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "infra" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def wait_until_served(url: str, process, timeout_s: float = 120.0, log=None) -> None:
    """Wait until `url` answers (a server a test started as `process`, a Popen); fail the test
    when it exits or the time runs out first, with the tail of its `log` file where given."""
    import time
    import urllib.request

    deadline = time.time() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            why = log.read_text()[-3000:] if log is not None and log.exists() else "the server did not start"
            assert time.time() < deadline and process.poll() is None, why
            time.sleep(0.5)


@contextmanager
def mlflow_uris_restored(uri: str | None = None):
    """mlflow.set_tracking_uri / set_registry_uri / set_experiment set MLflow's module globals and
    export MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI / MLFLOW_EXPERIMENT_ID: put them back as they
    were on the way out, so that one test's (or one module fixture's) store does not become the
    next one's default, nor its experiment id the next store's active experiment (a run of another
    experiment with that id then refuses to start). With `uri`, both point at it inside the block
    (what the CLI does for a command: `models:/` URIs resolve through them)."""
    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID")
    saved = {k: os.environ.get(k) for k in names}
    experiment = sys.modules["mlflow.tracking.fluent"]._active_experiment_id if "mlflow" in sys.modules else None
    try:
        if uri is not None:
            import mlflow

            mlflow.set_tracking_uri(uri)
            mlflow.set_registry_uri(uri)
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
