"""`adaptive-sampler calibrate`, the line that says a `--monitor` never fired, and the examples and groups of
`--help`."""

from __future__ import annotations

import json
import sys

import pytest
from diffusers import DDIMScheduler
from typer.testing import CliRunner

from adaptive_sampler.cli import app, main
from adaptive_sampler.monitors import ThresholdMonitor, monitor_from_spec
from helpers import build_tiny_unet


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    build_tiny_unet().save_pretrained(path)
    DDIMScheduler().save_config(path)
    return path


def run(monkeypatch, capsys, *args) -> tuple[int, list[str], list[str]]:
    """The console entry point in-process: (exit code, stdout lines, stderr lines without progress bars)."""
    monkeypatch.setattr(sys, "argv", ["adaptive-sampler", *map(str, args)])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out.splitlines(), [line for line in err.splitlines() if line.strip() and "%|" not in line]


def test_calibrate_prints_and_writes_the_calibrated_spec(monkeypatch, capsys, tmp_path):
    report = tmp_path / "calib.json"
    code, out, _ = run(monkeypatch, capsys, "calibrate", "--steps", 6, "--n", 4, "--monitor", "x0-l2,patience=2",
                       "--target-psnr", 25, "--json", report)
    assert code == 0
    data = json.loads(report.read_text())
    assert out[0] == data["monitor"] and data["name"] == "x0-l2" and data["guardrails"] == {"patience": 2}
    assert data["num_steps"] == 6 and data["target_psnr"] == 25 and data["n_calibration"] == 4
    assert data["calibration_seeds"] == [1000] and data["heldout_seeds"] == [2000]
    monitor = monitor_from_spec(out[0])
    assert isinstance(monitor, ThresholdMonitor) and monitor.threshold == data["threshold"]
    assert f"--monitor {out[0]} --steps 6" in out[1]


def test_calibrate_takes_a_kid_target(monkeypatch, capsys):
    code, out, _ = run(monkeypatch, capsys, "calibrate", "--steps", 5, "--n", 4, "--target-kid-pct", 10)
    assert code == 0 and out[0].startswith("x0-l2:") and "KID" in out[1]


@pytest.mark.parametrize(("args", "start"), [
    ([], "error: --target-psnr: None and the other targets are not given"),
    (["--target-psnr", 30, "--target-fid-pct", 3], "error: --target-fid-pct: 3.0 is given with --target-psnr 30.0"),
    (["--target-psnr", 30, "--heldout-seed", 1000], "error: --heldout-seed: 1000 is also --seed"),
    (["--target-psnr", 30, "--monitor", "deadline"], "error: --monitor: 'deadline' cannot be calibrated"),
    (["--target-psnr", 30, "--monitor", "x0-l2|lpips"], "error: --monitor: 'x0-l2|lpips' is a composite"),
    (["--target-psnr", 30, "--policy", "steered:10"], "error: --policy: 'steered:10' is not a named static list"),
])
def test_calibrate_errors_are_one_line_naming_the_flag(monkeypatch, capsys, args, start):
    code, _, err = run(monkeypatch, capsys, "calibrate", *args)
    assert code == 2 and len(err) == 1 and err[0].startswith(start)


def test_a_run_where_no_sample_exited_says_so_with_the_calibrate_command(tiny_dir, monkeypatch, capsys):
    code, _, err = run(monkeypatch, capsys, "sample", "--model", tiny_dir, "--steps", 5, "--n", 2,
                       "--monitor", "x0-l2:0,patience=2", "--solver", "dpmpp-2m")
    assert code == 0
    assert err == [f"--monitor x0-l2:0,patience=2: no sample exited early in 5 steps; calibrate a threshold for this "
                   f"model: adaptive-sampler calibrate --model {tiny_dir} --monitor x0-l2,patience=2 --steps 5 "
                   "--solver dpmpp-2m --target-psnr 30"]


def test_a_run_where_a_sample_exited_says_nothing_more(tiny_dir, monkeypatch, capsys):
    code, _, err = run(monkeypatch, capsys, "sample", "--model", tiny_dir, "--steps", 5, "--n", 2,
                       "--monitor", "max-nfe:2")
    assert code == 0 and err == []


@pytest.mark.parametrize("command", [["sample"], ["eval"], ["calibrate"], ["tune"], ["stats"], ["schedules", "list"],
                                     ["schedules", "show"]])
def test_every_help_ends_with_examples(command):
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    examples = result.output.split("Examples:")[-1].splitlines()
    assert result.output.count("Examples:") == 1
    assert 1 <= sum(line.strip().startswith(f"adaptive-sampler {' '.join(command)}") for line in examples) <= 3


def test_tune_help_groups_its_options():
    output = CliRunner().invoke(app, ["tune", "--help"]).output
    panels = ["Model and conditioning", "Devices", "Search", "Scoring", "Storage and export"]
    assert all(f"─ {panel} ─" in output for panel in panels)
    assert output.index("│ --trials ") > output.index("─ Search ─") > output.index("│ --device ")
