"""Commands that only read the registry start without the model stack: importing torch and
transformers costs ~3 s, which `cft versions` spent (4 s instead of 7-9 s) before it answered."""

import subprocess
import sys

import pytest

from tests.conftest import CHECKOUT

HEAVY = ("torch", "transformers", "deepspeed", "peft")


@pytest.mark.parametrize("module", ["cft_cli.main", "tasks.registry"])
def test_importing_leaves_the_model_stack_out(module):
    code = f"import sys, {module}; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=CHECKOUT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"importing {module} imports {out.stdout.strip()}"
