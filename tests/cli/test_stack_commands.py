"""`cft stack up` refusing bad input before it starts anything. (Up, status and down with real
servers, and the deployed pipeline through the stack: tests/e2e/test_stack.py.)"""

from __future__ import annotations

from typer.testing import CliRunner

from cft_cli.main import app


def test_stack_up_refuses_a_bad_serve_profile_before_starting_anything(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {nmae: x}\n")
    up = CliRunner().invoke(app, ["stack", "up", "--data-root", str(tmp_path / "data"), "--serve", str(bad)],
                            prog_name="cft")
    assert up.exit_code == 2 and "nmae" in up.output
    assert not (tmp_path / "data" / "stack").exists()
