"""Result files name the commit they were measured at, marked when the code had changes."""

from __future__ import annotations

import subprocess

from benchmarks.provenance import commit, machine


def git(root, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args], cwd=root,
                          check=True, capture_output=True, text=True).stdout.strip()


def test_commit_names_head_and_marks_changes_to_tracked_files(tmp_path):
    assert commit(tmp_path) is None  # not a checkout
    git(tmp_path, "init", "-q")
    (tmp_path / "code.py").write_text("a = 1\n")
    git(tmp_path, "add", "code.py")
    git(tmp_path, "commit", "-q", "-m", "first")
    head = git(tmp_path, "rev-parse", "HEAD")
    assert commit(tmp_path) == head[:12]
    (tmp_path / "notes.txt").write_text("untracked files are not the measured code\n")
    assert commit(tmp_path) == head[:12]
    (tmp_path / "code.py").write_text("a = 2\n")
    assert commit(tmp_path) == head[:12] + "+changes"


def test_machine_names_the_accelerator_the_versions_and_the_time_that_ran():
    import time

    import torch
    import transformers

    before = time.strftime("%Y-%m-%d %H:%M")
    m = machine()
    assert m["gpu"] == (torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
    assert (m["torch"], m["transformers"]) == (torch.__version__, transformers.__version__)
    assert before <= m["time"] <= time.strftime("%Y-%m-%d %H:%M")  # every result says when it ran
