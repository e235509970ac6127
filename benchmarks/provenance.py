"""What a result was measured on and from: every result file records it, so a number can be
traced to its code and machine (`machine()` in each file's meta; `commit()` in the meta and, for
the resumable studies whose runs span sessions, in each run)."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def commit(root: Path = ROOT) -> str | None:
    """The commit checked out at `root` (12 hex digits), with "+changes" when tracked files differ
    from it; None outside a git checkout."""
    def git(*args: str) -> str | None:
        try:
            res = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return res.stdout.strip() if res.returncode == 0 else None

    head = git("rev-parse", "--short=12", "HEAD")
    if head is None:
        return None
    return head + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def machine() -> dict:
    """{"machine": OS and CPU architecture, "cpu_count": logical CPUs, "gpu": the CUDA device's
    name (None without one), "torch" and "transformers": their versions (a GPU box may run other
    ones than the lock's), "commit": `commit()`, "time": when, local, to the minute}: the meta of
    every result file."""
    import torch
    import transformers

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"machine": platform.platform(), "cpu_count": os.cpu_count(), "gpu": gpu, "torch": torch.__version__,
            "transformers": transformers.__version__, "commit": commit(), "time": time.strftime("%Y-%m-%d %H:%M")}


def write_result(stem: str, data: dict, lines: list[str], folder: Path | None = None) -> None:
    """<folder>/<stem>.json (`data`: its meta and rows) and <stem>.md (the table `lines`), and the
    table printed; `folder`: benchmarks/results unless a benchmark's --out names another."""
    import json

    results = folder or ROOT / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{stem}.json").write_text(json.dumps(data, indent=1))
    (results / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
