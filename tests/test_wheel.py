"""The wheel holds what an installed user needs: built from a clean copy of the sources, installed into a fresh
virtual environment, and run from there (not from this checkout): `schedules list` and a sample with a shipped
policy file. The fresh environment borrows this one's dependencies through a `.pth` line, after its own
site-packages, so torch is not installed again and the wheel's package is the one imported. Also: the extras'
packages stay unimported until used, and a missing one names the pip command that installs it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from adaptive_sampler._lazy import MissingExtraError, require_extra

REPO = Path(__file__).resolve().parents[1]
OPTIONAL = ("matplotlib", "lpips", "cmaes", "psycopg")  # the extras' packages: neither import nor --help loads them


def run(*args: str | Path, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def install_wheel(tmp_path: Path) -> Path:
    """Build the wheel, install it into a fresh venv and return the venv's bin folder."""
    source = tmp_path / "source"  # a clean copy: no build/ folder left over from an earlier build
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for folder in ("adaptive_sampler", "policies"):
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist",
        source, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("adaptive_sampler-*.whl")
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    run(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", wheel, cwd=tmp_path)
    # only after the install, so that pip never sees this environment's (editable) adaptive-sampler
    own_site = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path).strip()
    Path(own_site, "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv / "bin"


def test_the_wheel_installs_and_runs_in_a_fresh_environment(tmp_path: Path) -> None:
    bin_dir = install_wheel(tmp_path)
    work = tmp_path / "work"  # not the checkout: its adaptive_sampler/ folder must not be what runs
    work.mkdir()

    probe = ("import sys, adaptive_sampler; from adaptive_sampler.cli import app; print(adaptive_sampler.__file__); "
             f"print([m for m in {OPTIONAL!r} if m in sys.modules])")
    location, loaded = run(bin_dir / "python", "-c", probe, cwd=work).splitlines()
    assert Path(location).is_relative_to(tmp_path / "venv"), location
    assert loaded == "[]"
    help_probe = ("import sys; from adaptive_sampler.cli import main; sys.argv = ['adaptive-sampler', '--help']\n"
                  "try:\n    main()\nexcept SystemExit:\n    pass\n"
                  f"print([m for m in {OPTIONAL!r} if m in sys.modules])")
    assert run(bin_dir / "python", "-c", help_probe, cwd=work).splitlines()[-1] == "[]"

    listed = run(bin_dir / "adaptive-sampler", "schedules", "list", cwd=work)
    names = [line.split()[0] for line in listed.splitlines()]
    assert {"fashion-mnist/unipc-10", "fashion-mnist/ddim-10", "sd15/ays-10", "sdxl/ays-10"} <= set(names)
    assert len(names) == len(list((REPO / "policies").glob("*/*.json")))

    report = work / "sample.json"
    out = run(bin_dir / "adaptive-sampler", "sample", "--policy", "learned:fashion-mnist/unipc-10", "--solver",
              "unipc", "--n", "2", "--out", work / "grid.png", "--json", report, cwd=work)
    assert "2 samples, 10 steps (learned:fashion-mnist/unipc-10, unipc)" in out
    shipped = json.loads((REPO / "policies" / "fashion-mnist" / "unipc-10.json").read_text())
    assert json.loads(report.read_text())["timesteps"] == shipped["timesteps"]
    assert (work / "grid.png").stat().st_size > 0


def test_a_missing_extra_names_the_pip_command_that_installs_it() -> None:
    require_extra("json", "plots", "anything")  # installed: nothing happens
    with pytest.raises(MissingExtraError, match=r"^the export's plots needs no_such_module, which is not installed: "
                                                r"pip install 'adaptive-sampler\[plots\]'$"):
        require_extra("no_such_module", "plots", "the export's plots")
