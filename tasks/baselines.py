"""What the simple baselines learn from a data window's training split: the evaluation scores them
(`most_popular`, `markov`) and the registry serves them (tasks/popularity_pyfunc.py,
tasks/markov_pyfunc.py), from these same numbers.

- popularity: how often each catalogue item is a training target (`train_counts`);
- first-order Markov chain: how often item j came right after item i (`train_transitions`): in
  a training record, its newest history item and its target. Every consecutive pair of a user's
  training interactions is one record's (D3-style records: one per target), so these are the
  pairs of the training sequences.

`window_counts` counts both once per window and keeps them in the sequences folder: a run reads
them four times (its evaluation, the registration of each baseline, the gate's evaluation), and at
20M training records each count took ~8-10 s.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow.parquet as pq

from tasks.storage import atomic_dir, fingerprint, with_code_versions

if TYPE_CHECKING:  # (cft_core.ranking imports torch: 3 s that `cft versions`, which reads BASELINES, never needs)
    from cft_core.ranking import Transitions

log = logging.getLogger(__name__)

BASELINES_VERSION = 1  # bump when what is counted from the same training split changes

# The registered kinds (each window gets one version of each) and the name of each in an
# evaluation's metrics and predictions (`most_popular/NDCG@10`, `markov_rank`, ...).
EVALUATION_NAMES = {"popularity": "most_popular", "markov": "markov"}
BASELINES = tuple(EVALUATION_NAMES)


def catalogue_size(sequences: Path) -> int:
    return pq.read_metadata(sequences / "catalogue.parquet").num_rows


def train_counts(sequences: Path) -> np.ndarray:
    """int64 [I]: training frequency of every catalogue item (as a target) in the window."""
    targets = pq.read_table(sequences / "train.parquet", columns=["target_item_id"]).column(0).to_numpy()
    return np.bincount(targets, minlength=catalogue_size(sequences)).astype(np.int64)


def train_transitions(sequences: Path) -> Transitions:
    """Item-to-item counts of the window's training records: (newest history item, target).
    Read a row group at a time: the histories of a large window (20M records) never sit in
    memory whole."""
    from cft_core.ranking import Transitions

    newest, targets = [], []
    for group in pq.ParquetFile(sequences / "train.parquet").iter_batches(
            columns=["history_item_ids", "target_item_id"], batch_size=1 << 18):
        histories = group.column(0)
        # Each history's last element: offsets[b + 1] - 1 into the values (offsets are absolute
        # there, even for a slice; every training history holds an item).
        ends = np.asarray(histories.offsets)[1:] - 1
        newest.append(np.asarray(histories.values)[ends])
        targets.append(group.column(1).to_numpy())
    if not newest:
        return Transitions.count(np.zeros(0, np.int64), np.zeros(0, np.int64), catalogue_size(sequences))
    return Transitions.count(np.concatenate(newest), np.concatenate(targets), catalogue_size(sequences))


def window_counts(sequences: Path) -> tuple[np.ndarray, Transitions]:
    """(`train_counts`, `train_transitions`) of a window, counted on the first call and then read
    from `sequences/baselines/<key>/` (counts.npy, transitions.npz: no pickle). The key is the
    training split's size and modification time and this module's code version: a sequences
    folder is never rewritten, but a copy that was (a test device, a hand edit) is counted again.
    Where the folder cannot be written (a read-only data root), the counts are used uncached."""
    from cft_core.ranking import Transitions

    train = (sequences / "train.parquet").stat()
    key = fingerprint(with_code_versions({"train": [train.st_size, train.st_mtime_ns]}, baselines=BASELINES_VERSION))
    cache = sequences / "baselines" / key
    if (cache / "transitions.npz").is_file():
        return np.load(cache / "counts.npy", allow_pickle=False), Transitions.load(cache / "transitions.npz")
    counts, transitions = train_counts(sequences), train_transitions(sequences)
    try:
        with atomic_dir(cache) as tmp:
            np.save(tmp / "counts.npy", counts, allow_pickle=False)
            transitions.save(tmp / "transitions.npz")
    except OSError as e:
        log.warning("the baselines' counts of %s are not kept (%s): each use counts them again", sequences, e)
    return counts, transitions
