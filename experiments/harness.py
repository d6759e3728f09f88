"""What the benches share: a resumable results file written atomically, device sync and timing, the record of where
a result was measured, and markdown tables. Import it as `harness` (the scripts' own folder is on sys.path)."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, TypeVar

import torch

from adaptive_sampler.atomic_write import atomic_write_bytes

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
T = TypeVar("T")


def load_report(path: Path, fresh: dict[str, Any], settings_key: str | None = None,
                restart: bool = False) -> dict[str, Any]:
    """The results file that a rerun of the same command resumes, or `fresh` where there is none.

    Args:
        path: the results file (a bench's --json).
        fresh: what a new file holds; keys missing on disk are taken from it.
        settings_key: the key of `fresh` that every row depends on; a file whose entry differs is refused, since
            its rows were measured under other settings.
        restart: ignore the file on disk.
    """
    if restart or not path.is_file():
        return fresh
    data = json.loads(path.read_text())
    if settings_key is not None and data.get(settings_key) != fresh[settings_key]:
        raise SystemExit(f"--json: {path} holds rows of other {settings_key} ({data.get(settings_key)}, not "
                         f"{fresh[settings_key]}); use another file")
    return {**fresh, **data}


def save_report(path: Path, data: dict[str, Any]) -> None:
    """Write `data` as indented JSON, atomically: a run stopped mid-write leaves the previous file.

    Args:
        path: the results file (its folder is created).
        data: the report.
    """
    atomic_write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())


def pick_device(choice: str) -> torch.device:
    """`cuda`, `cpu`, or `auto` (CUDA where available) as a device.

    Args:
        choice: a bench's --device.
    """
    return torch.device("cuda" if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()) else "cpu")


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that a clock read after it times that work.

    Args:
        device: where the work runs (a no-op off CUDA).
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, call: Callable[..., T], *args: Any) -> tuple[T, float]:
    """`call(*args)` and its wall seconds, synchronised before and after on a GPU.

    Args:
        device: where the work runs.
        call: the work to time.
        *args: its arguments.
    """
    sync(device)
    start = time.perf_counter()
    result = call(*args)
    sync(device)
    return result, time.perf_counter() - start


def command() -> str:
    """The command line that runs this script again, with its OMP_NUM_THREADS."""
    exe = os.path.relpath(sys.executable)
    threads = os.environ.get("OMP_NUM_THREADS")
    return " ".join(([f"OMP_NUM_THREADS={threads}"] if threads else [])
                    + [sys.executable if exe.startswith("..") else exe, *sys.argv])


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):  # no git on the machine
        return None
    return out.stdout.strip() or None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def environment(device: torch.device | str = "cpu") -> dict[str, Any]:
    """Where and how a result was measured: command line, commit, versions, device, threads and load.

    Args:
        device: the device the bench runs on.
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    env: dict[str, Any] = {
        "command": command(), "git_commit": _git_commit(), "python": platform.python_version(),
        "platform": platform.platform(), "torch": torch.__version__, "diffusers": _version("diffusers"),
        "device": str(device), "gpu": torch.cuda.get_device_name(device) if cuda else None,
        "cpu_model": _cpu_model(), "cpu_count": os.cpu_count(), "torch_num_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "loadavg_start": os.getloadavg(),
    }
    if cuda:
        env |= {"cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                "cudnn_benchmark": torch.backends.cudnn.benchmark,
                "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
                "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32}
    return env


def round_decimals(text: str, digits: int = 4) -> str:
    """`text` with each decimal number in it to `digits` significant digits (a calibrated spec in a row name).

    Args:
        text: e.g. `steer-x0-l2:0.026608301985197494:0.5004699014852376`.
        digits: significant digits to keep.
    """
    return re.sub(r"\d+\.\d+", lambda m: f"{float(m[0]):.{digits}g}", text)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A markdown table (no trailing newline).

    Args:
        header: the column titles.
        rows: the cells of each row, already formatted (anything `str` accepts).
    """
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
