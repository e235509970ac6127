"""The manual's references resolve: every relative link, and every path of the project named in
backticks (`docs/serving.md`, `infra/deepspeed/zero2.json`), in the README, `docs/` and the infra
READMEs, names a file or folder that exists. A page moved or a module renamed shows here."""

import re
from pathlib import Path

import pytest

from tests.conftest import CHECKOUT

PAGES = sorted({CHECKOUT / "README.md", *(CHECKOUT / "docs").glob("*.md"), *(CHECKOUT / "infra").rglob("README.md")})
# Backticked text is taken for a path when it starts at one of the project's folders and ends in
# a file suffix (or a slash): `tasks/registry/`, `configs/gpu.yaml`; not `<data_root>/cache/...`.
FOLDERS = ("cft_core", "cft_cli", "tasks", "flows", "schemas", "configs", "benchmarks", "infra", "docs", "tests")
BACKTICKED_PATH = re.compile(rf"`((?:{'|'.join(FOLDERS)})/[A-Za-z0-9_./-]*(?:\.(?:md|py|yaml|json|sh|toml)|/))`")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def references(page: Path) -> list[str]:
    text = page.read_text()
    links = [t for t in LINK.findall(text) if not t.startswith(("http://", "https://", "mailto:"))]
    return links + BACKTICKED_PATH.findall(text)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(CHECKOUT)))
def test_every_reference_of_a_page_exists(page):
    missing = [ref for ref in references(page)
               if not (page.parent / ref).exists() and not (CHECKOUT / ref).exists()]
    assert not missing, f"{page.relative_to(CHECKOUT)} names what is not there: {missing}"


def test_the_checks_find_references(tmp_path):
    """The patterns match what the pages write (a pattern that matched nothing would pass every
    page), and a reference to what is not there is one the check reports."""
    assert {"docs/serving.md", "infra/README.md"} <= set(references(CHECKOUT / "README.md"))  # a link, a backticked path
    assert "infra/deepspeed/README.md" in references(CHECKOUT / "docs" / "training.md")
    page = tmp_path / "page.md"
    page.write_text("See [the guide](docs/gone.md) and `tasks/renamed.py`, not `<data_root>/cache/x.json`.\n")
    assert references(page) == ["docs/gone.md", "tasks/renamed.py"]
