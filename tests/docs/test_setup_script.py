"""infra/setup.sh (the set-up half of both README commands) refuses a Python release the project
does not run on, in one line and before it makes anything. The interpreters are stand-in scripts
that print a release, as `python -c 'print(version)'` would: this machine need not have a 3.10."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

SETUP = Path(__file__).resolve().parents[2] / "infra" / "setup.sh"


def fake_python(folder: Path, release: str) -> Path:
    path = folder / f"python{release}"
    path.write_text(f"#!/bin/sh\necho {release}\n")
    path.chmod(0o755)
    return path


def setup(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", **env})


@pytest.mark.parametrize("release", ["3.10", "3.14"])
def test_a_python_outside_3_11_to_3_13_is_refused_before_a_venv_is_made(tmp_path, release):
    venv = tmp_path / "venv"
    done = setup({"PYTHON": str(fake_python(tmp_path, release)), "VENV": str(venv)})
    assert done.returncode == 2, done.stderr
    assert f"is Python {release}; cft-rec needs 3.11, 3.12 or 3.13" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not venv.exists()


def test_a_venv_made_with_another_python_is_named_with_what_to_do(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(fake_python(tmp_path, "3.10"))
    done = setup({"PYTHON": str(fake_python(tmp_path, "3.12")), "VENV": str(venv)})
    assert done.returncode == 2
    assert f"{venv} was made with Python 3.10" in done.stderr and f"remove {venv}" in done.stderr
    assert sorted(p.name for p in venv.iterdir()) == ["bin"]  # nothing installed into it


def test_no_interpreter_at_python_is_said(tmp_path):
    done = setup({"PYTHON": str(tmp_path / "absent"), "VENV": str(tmp_path / "venv")})
    assert done.returncode == 2 and f"no Python at '{tmp_path / 'absent'}'" in done.stderr
