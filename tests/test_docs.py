"""The front door and the docs: generated tables are what is committed, the README stays short, links stay inside.

Every results table and the CLI reference come from experiments/render_results.py; a page edited by hand, or a
results file or `--help` text that changed without re-rendering, fails here with the script's diff.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_README_LINES = 260
PAGES = [ROOT / "README.md", ROOT / "ARCHITECTURE.md", *sorted((ROOT / "docs").rglob("*.md"))]
# Citations of well-known papers and projects; anything else must point inside the repository.
CITED_HOSTS = {"arxiv.org", "github.com/huggingface/diffusers", "huggingface.co/docs/diffusers",
               "optuna.readthedocs.io"}
FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)
LINK = re.compile(r"\]\(([^)\s]+)\)|<(https?://[^>]+)>|\b(?:href|src)=\"([^\"]+)\"")


def _render_results():
    spec = importlib.util.spec_from_file_location("render_results", ROOT / "experiments" / "render_results.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text())  # code is not prose: `x[i](y)` is no link
    return [next(group for group in match.groups() if group) for match in LINK.finditer(text)]


def test_committed_tables_are_the_rendered_ones() -> None:
    render_results = _render_results()
    stale = [render_results.page_diff(page, committed, rendered)
             for page, (committed, rendered) in render_results.rendered_pages().items() if committed != rendered]
    assert not stale, "run `python experiments/render_results.py`:\n" + "\n".join(stale)


def test_readme_is_short() -> None:
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; move prose into docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_links_stay_in_the_repository(page: Path) -> None:
    for link in _links(page):
        url = urlparse(link)
        if url.scheme in ("http", "https"):
            where = url.netloc + url.path
            assert any(where == host or where.startswith(host + "/") for host in CITED_HOSTS), (
                f"{page.name}: {link} points outside the repository")
            continue
        assert not url.scheme, f"{page.name}: {link}: only relative links and cited papers"
        if not url.path:  # an anchor on the same page
            continue
        target = (page.parent / url.path).resolve()
        assert target.is_relative_to(ROOT), f"{page.name}: {link} leaves the repository"
        assert target.exists(), f"{page.name}: {link} does not resolve ({target} is missing)"
