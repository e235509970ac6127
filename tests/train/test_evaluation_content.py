"""What the evaluation writes, pinned per code version, and the versions in the folder keys.

An evaluation folder and a title-embeddings file are reused whenever their key matches, so a
change in what `evaluate` writes for the same model, data and settings must change the key, or
users would read metrics an older ranking computed as if they were current. The key carries
`tasks.evaluation.EVALUATION_VERSION` and `EMBEDDINGS_VERSION`; the digests below fail the
suite when the output changes but neither version did. (The model is the dataset's untrained
tiny Llama, built from the training seed: no training, deterministic on CPU.)
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest

import tasks.evaluation as evaluation
from tasks.storage import fingerprint
from tests.train.conftest import make_config

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore")]

# (EVALUATION_VERSION, EMBEDDINGS_VERSION): digests of the evaluation folder's parts
EVALUATION_CONTENT = {
    (1, 1): {"rankings": "e9ad4e3abef2822b", "metrics": "02bdd3960499eddf", "diagnostics": "2506be031ce8b1d0"},
    # the tiny model has no generation settings of its own: version 2 ranks it as version 1 did
    (2, 1): {"rankings": "e9ad4e3abef2822b", "metrics": "02bdd3960499eddf", "diagnostics": "2506be031ce8b1d0"},
    # no beam of these rows is the placeholder title, so version 3 ranks them as version 2 did
    (3, 1): {"rankings": "e9ad4e3abef2822b", "metrics": "02bdd3960499eddf", "diagnostics": "2506be031ce8b1d0"},
    # these rows' prompts fit train.cutoff_len, so version 4 cuts none of them
    (4, 1): {"rankings": "e9ad4e3abef2822b", "metrics": "02bdd3960499eddf", "diagnostics": "2506be031ce8b1d0"},
    # version 5 adds the Markov-chain baseline's columns and metrics; without them, version 4's digests
    (5, 1): {"rankings": "8fe7d30dd546efd9", "metrics": "c09ba2ea82244a7d", "diagnostics": "2506be031ce8b1d0"},
    # version 6 fills the constrained lists with popular items (eval.backfill: popularity, the default);
    # with backfill none these rows give version 5's digests (checked when it was pinned)
    (6, 1): {"rankings": "ddcc5a2c39d016fb", "metrics": "f4a519105d60f5f3", "diagnostics": "2506be031ce8b1d0"},
}
# EMBEDDINGS_VERSION: the catalogue's title embeddings (1349 titles x 32), seen through
# `embeddings_probe`. Not a digest: a digest of 43k floats, even rounded to 5 decimals, changes
# with the CPU's kernels (AVX2 or AVX-512) and the thread count; the probe moves by 1e-5 with them.
EMBEDDINGS_CONTENT = {1: [142.024093, -191.830744, -20.571603, 253.946028, 161.802362, -24.788082, 40.156907,
                          109.262548]}
EMBEDDINGS_TOLERANCE = 1e-3  # 100x the spread over 1-4 threads and AVX2 / AVX-512 kernels (measured)


def embeddings_probe(emb: np.ndarray) -> list[float]:
    """Eight fixed random projections of the whole (titles, dim) matrix: a change in any title's
    vector or in the titles' order moves them (values of order 100) by far more than rounding."""
    return (np.random.default_rng(0).standard_normal((8, emb.size)) @ emb.astype(np.float64).ravel()).tolist()


def digest(payload) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def tiny_eval_config(tmp_path):
    cfg = make_config(tmp_path)
    return cfg.model_copy(update={"eval": cfg.eval.model_copy(update={
        "methods": ["constrained", "grounding"], "max_samples": 8, "num_beams": 3, "num_return_sequences": 3,
        "max_new_tokens": 16, "diagnostics_max_samples": 8})})


@pytest.fixture
def two_torch_threads():
    """The pins below were made with torch on 2 threads (the CI machine's 2 cores); a float sum
    split over another number of threads rounds differently (a near-tie of the untrained model's
    rankings may flip), so the test runs on 2 whatever the machine or the pytest-xdist worker's share."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_the_evaluation_of_each_code_version_is_pinned(tmp_path, small_sequences, two_torch_threads):
    from tasks.training import model_folder

    seq, _ = small_sequences
    cfg = tiny_eval_config(tmp_path)
    model_dir = model_folder(cfg, seq)
    result = evaluation.evaluate(cfg, model_dir, seq, progress=False)
    assert not result.reused

    preds = pd.read_parquet(result.path / "predictions.parquet")
    ranked = [c for c in preds.columns if c.endswith(("_top10", "_rank", "generated"))]
    found = {
        "rankings": digest({c: [np.asarray(v).tolist() for v in preds[c]] for c in sorted(ranked)}),
        "metrics": digest({k: round(v, 9) for k, v in result.metrics.items()}),
        "diagnostics": digest(pd.read_parquet(result.path / "diagnostics.parquet").round(5).to_dict("list")),
    }
    emb = np.load(evaluation.embeddings_cache(model_dir, seq, "fp32"), allow_pickle=False)
    found_embeddings = embeddings_probe(emb)

    versions = (evaluation.EVALUATION_VERSION, evaluation.EMBEDDINGS_VERSION)
    hint = ("the evaluation writes something else for the same model, data and settings: bump "
            "EVALUATION_VERSION in tasks/evaluation.py (EMBEDDINGS_VERSION if the title embeddings changed), "
            "so that folders written before are not reused, and pin the new digests here (the pins were made on "
            "the CI machine's CPU: elsewhere, float rounding may also flip a near-tie of the untrained model)")
    pinned = EMBEDDINGS_CONTENT.get(versions[1])
    assert pinned is not None and np.allclose(found_embeddings, pinned, rtol=0, atol=EMBEDDINGS_TOLERANCE), (
        f"{hint}: {np.round(found_embeddings, 6).tolist()}")
    assert EVALUATION_CONTENT.get(versions) == found, f"{hint}: {found}"


def test_the_code_versions_join_the_keys_only_past_one(tmp_path, monkeypatch):
    model_dir = tmp_path / "run" / "model"
    model_dir.mkdir(parents=True)
    (model_dir / "model.safetensors").write_bytes(b"w" * 10)
    seq = tmp_path / "ml-100k-0123456789abcdef"
    cfg = make_config(tmp_path)
    monkeypatch.setattr(evaluation, "EVALUATION_VERSION", 1)
    monkeypatch.setattr(evaluation, "EMBEDDINGS_VERSION", 1)

    # At version 1 a key is the settings alone, as before the versions existed (so evaluations
    # written then were reused, until version 4 added train.cutoff_len, which prompts are cut to).
    base = {"eval": cfg.eval.model_dump(), "data": seq.name, "model": evaluation.model_fingerprint(model_dir),
            "domain": cfg.data.domain, "max_history": cfg.data.max_history, "cutoff_len": cfg.train.cutoff_len}
    assert evaluation.evaluation_dir(cfg, model_dir, seq).name == f"test-{fingerprint(base)}"
    emb_base = {"model": evaluation.model_fingerprint(model_dir), "catalogue": seq.name, "precision": "fp32"}
    assert evaluation.embeddings_cache(model_dir, seq, "fp32").name == f"{fingerprint(emb_base)}.npy"

    before = (evaluation.evaluation_dir(cfg, model_dir, seq), evaluation.embeddings_cache(model_dir, seq, "fp32"))
    monkeypatch.setattr(evaluation, "EVALUATION_VERSION", 2)  # a new ranking: evaluations afresh, embeddings kept
    after = (evaluation.evaluation_dir(cfg, model_dir, seq), evaluation.embeddings_cache(model_dir, seq, "fp32"))
    assert after[0] != before[0] and after[1] == before[1]
    monkeypatch.setattr(evaluation, "EVALUATION_VERSION", 1)
    monkeypatch.setattr(evaluation, "EMBEDDINGS_VERSION", 2)  # new embeddings: both afresh (grounding ranks with them)
    again = (evaluation.evaluation_dir(cfg, model_dir, seq), evaluation.embeddings_cache(model_dir, seq, "fp32"))
    assert again[0] not in (before[0], after[0]) and again[1] != before[1]
