"""Render every results table of README.md and docs/ from experiments/results/*.json, and the CLI reference.

Each table sits between `<!-- results:NAME -->` and `<!-- /results:NAME -->` in a page; this script replaces what
lies between the markers with the output of NAME's renderer. The benches render their own tables (their
`markdown(path)` functions); the tables of scripts that have left experiments/ are rendered here from their JSON.

    python experiments/render_results.py           # rewrite the pages in place
    python experiments/render_results.py --check   # exit 1 with a diff if a committed page differs
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
MARKER = re.compile(r"(<!-- results:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /results:(?P=name) -->)", re.DOTALL)
# The commands whose --help the CLI reference shows, in this order.
CLI_COMMANDS = (["sample"], ["eval"], ["calibrate"], ["tune"], ["stats"], ["schedules", "list"], ["schedules", "show"])
HELP_WIDTH = 100

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench modules, imported by name
from harness import markdown_table  # noqa: E402  (found through the line above)


def finish_table() -> str:
    """How a monitor-ended sample finishes: x̂0 or a solver tail, against the full run and the static list of about
    the same NFE (choose_finish_tail_n2000.json; the script that wrote it has left)."""
    data = json.loads((RESULTS / "choose_finish_tail_n2000.json").read_text())
    rows = []
    for key, row in data["rows"].items():
        if key == "tail:1:logsnr":  # one step to 0 is the same in t and in log-SNR
            continue
        if key == "full":
            label = f"full run, {data['config']['steps']} steps"
        elif key.startswith("ddim-"):
            label = f"uniform DDIM, {row['nfe']:.0f} steps, no monitor"
        else:
            label = f"`finish={key.removesuffix(':t') if key == 'tail:1:t' else key}`"
        psnr = "" if key == "full" else f"{row['psnr_to_full']:.1f}"
        rows.append([label, f"{row['nfe']:.2f}", f"{row['fid']:.2f}", f"{row['kid']:.3f}", psnr])
    return markdown_table(["row", "NFE", "FID", "KID", "PSNR to full"], rows)


def clip_table() -> str:
    """Uniform DDIM's FID with x̂0 clipping on and off, per step count, on the same noises (quality_table.json and
    quality_table.clip_true.json)."""
    clipped = json.loads((RESULTS / "quality_table.clip_true.json").read_text())
    unclipped = json.loads((RESULTS / "quality_table.json").read_text())
    keys = sorted((k for k in unclipped if k.startswith("ddim-") and k in clipped), key=lambda k: unclipped[k]["nfe"])
    return markdown_table(["DDIM steps", *(k.removeprefix("ddim-") for k in keys)], [
        ["`clip_sample=True`", *(f"{clipped[k]['fid']:.2f}" for k in keys)],
        ["`clip_sample=False` (shipped)", *(f"{unclipped[k]['fid']:.2f}" for k in keys)],
        ["change", *(f"{100 * (unclipped[k]['fid'] / clipped[k]['fid'] - 1):+.0f} %" for k in keys)]])


def t2i_learned_table() -> str:
    """embedded-t2i's learned DPM-Solver++ lists (held-out FID recorded in each catalogue file) beside `eval` of
    uniform and karras on the same held-out seeds (tune_t2i/eval_POLICY-N.json)."""
    rows = []
    for path in sorted((ROOT / "policies" / "embedded-t2i").glob("dpmpp-2m-*.json"),
                       key=lambda p: int(p.stem.rsplit("-", 1)[1])):
        steps = int(path.stem.rsplit("-", 1)[1])
        learned = json.loads(path.read_text())["metrics"]["heldout_fid"]
        static = {policy: json.loads((RESULTS / "tune_t2i" / f"eval_{policy}-{steps}.json").read_text())["fid"]
                  for policy in ("uniform", "karras")}
        best = min(learned, *static.values())
        cells = [f"**{fid:.2f}**" if fid == best else f"{fid:.2f}" for fid in (learned, *static.values())]
        rows.append([str(steps), *cells])
    return markdown_table(["steps", "learned (`learned:embedded-t2i/dpmpp-2m-N`)", "uniform", "karras"], rows)


def cli_reference() -> str:
    """`adaptive-sampler --help` and each command's, at a fixed width without colour, each in a code block."""
    import typer.rich_utils
    from typer.testing import CliRunner

    from adaptive_sampler.cli import app

    typer.rich_utils.MAX_WIDTH, typer.rich_utils.FORCE_TERMINAL, typer.rich_utils.COLOR_SYSTEM = HELP_WIDTH, False, None
    sections = []
    for command in ([], *CLI_COMMANDS):
        result = CliRunner().invoke(app, [*command, "--help"], prog_name="adaptive-sampler",
                                    env={"COLUMNS": str(HELP_WIDTH), "NO_COLOR": "1", "TERM": "dumb"})
        if result.exit_code != 0:
            raise SystemExit(f"adaptive-sampler {' '.join(command)} --help failed: {result.output}")
        text = "\n".join(line.rstrip() for line in result.output.splitlines()).strip("\n")
        title = " ".join(["adaptive-sampler", *command])
        sections.append(f"## `{title}`\n\n```text\n{text}\n```")
    return "\n\n".join(sections)


# Marker name -> (bench module, its renderer, the results files it renders): the benches render their own tables.
BENCH_TABLES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "quality": ("quality_table", "markdown", ("quality_table.json",)),
    "t2i-quality": ("t2i_quality_table", "markdown", ("t2i_quality_table.json",)),
    "catalogue": ("bench_search", "catalogue_markdown", ("bench_quality.json", "bench_heldout_space.json")),
    "search-methods": ("bench_search", "markdown", ("bench_search.json",)),
    "search-n2048": ("bench_search", "markdown", ("bench_search_n2048.json",)),
    "solvers": ("bench_quality", "markdown", ("bench_quality.json",)),
    "early-exit-dpmpp": ("bench_early_exit", "markdown", ("early_exit_dpmpp-2m.json",)),
    "early-exit-ddim": ("bench_early_exit", "markdown", ("early_exit_ddim.json",)),
    "early-exit-timing": ("time_early_exit", "markdown",
                          ("early_exit_ddim.timing.json", "early_exit_dpmpp-2m.timing.json")),
    "throughput": ("bench_throughput", "markdown", ("bench_throughput.json",)),
    "dropin": ("bench_dropin", "markdown", ("bench_dropin.json",)),
    "heldout-space": ("bench_heldout_space", "markdown", ("bench_heldout_space.json",)),
}
# Marker name -> the renderer of a table that no bench renders.
OWN_TABLES: dict[str, Callable[[], str]] = {
    "clip": clip_table, "t2i-learned": t2i_learned_table, "finish": finish_table, "cli": cli_reference}


def render_table(name: str) -> str:
    """The markdown of marker `name` (a bench module is imported on first use: the benches import torch).

    Args:
        name: a key of `BENCH_TABLES` or `OWN_TABLES`.
    """
    if name in OWN_TABLES:
        return OWN_TABLES[name]()
    module, function, files = BENCH_TABLES[name]
    return str(getattr(importlib.import_module(module), function)(*(RESULTS / file for file in files)))


def render_page(text: str, tables: dict[str, str]) -> str:
    """`text` with every marked table replaced by its rendering.

    Args:
        text: a page with `<!-- results:NAME -->` ... `<!-- /results:NAME -->` markers.
        tables: each marker name's rendered markdown.
    """
    return MARKER.sub(lambda match: f"{match[1]}{tables[match['name']].strip()}\n{match[4]}", text)


def rendered_pages() -> dict[Path, tuple[str, str]]:
    """Each page with markers -> (its text on disk, its text as rendered now). Each table is rendered once."""
    texts = {page: page.read_text() for page in PAGES}
    names = {match["name"] for text in texts.values() for match in MARKER.finditer(text)}
    unknown = names - BENCH_TABLES.keys() - OWN_TABLES.keys()
    if unknown:
        raise SystemExit(f"unknown results markers: {', '.join(sorted(unknown))}")
    tables = {name: render_table(name) for name in names}
    return {page: (text, render_page(text, tables)) for page, text in texts.items() if MARKER.search(text)}


def page_diff(page: Path, committed: str, rendered: str) -> str:
    """A unified diff from the committed page to its rendering.

    Args:
        page: the page's path (named in the diff relative to the repository).
        committed: its text on disk.
        rendered: its text as rendered now.
    """
    name = str(page.relative_to(ROOT))
    return "".join(difflib.unified_diff(committed.splitlines(True), rendered.splitlines(True), name,
                                        f"{name} (rendered)"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 with a diff if a page differs")
    args = parser.parse_args()
    stale = False
    for page, (old, new) in rendered_pages().items():
        if old == new:
            continue
        if args.check:
            stale = True
            print(page_diff(page, old, new))
        else:
            page.write_text(new)
            print(f"rendered {page.relative_to(ROOT)}")
    if stale:
        raise SystemExit("the pages above differ from experiments/render_results.py's output; run it to update them")


if __name__ == "__main__":
    main()
