"""The command line: happy paths through typer's CliRunner, error paths through `main()` (the one-line-error
wrapper) in-process and, for a few, through the installed console script in a subprocess."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from diffusers import DDIMScheduler
from typer.testing import CliRunner

from adaptive_sampler.cli import app, main
from adaptive_sampler.schedules.artifact import ScheduleArtifact
from helpers import TINY_SHAPE, build_tiny_unet

SD15_AYS = [999, 850, 736, 645, 545, 455, 343, 233, 124, 24]


def _model_dir(root: Path, safe: bool) -> Path:
    build_tiny_unet().save_pretrained(root, safe_serialization=safe)
    DDIMScheduler().save_config(root)
    return root


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A diffusers folder: config.json, diffusion_pytorch_model.safetensors, scheduler_config.json."""
    path = _model_dir(tmp_path_factory.mktemp("tiny"), safe=True)
    assert (path / "diffusion_pytorch_model.safetensors").is_file() and (path / "scheduler_config.json").is_file()
    return path


@pytest.fixture(scope="module")
def pickled_dir(tmp_path_factory) -> Path:
    """The same model with only a pickled diffusion_pytorch_model.bin."""
    path = _model_dir(tmp_path_factory.mktemp("pickled"), safe=False)
    assert (path / "diffusion_pytorch_model.bin").is_file()
    assert not (path / "diffusion_pytorch_model.safetensors").exists()
    return path


def invoke(*args: str):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.output}\n{result.exception!r}"
    return result


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, list[str]]:
    """Run the console entry point in-process; returns (exit code, stderr lines)."""
    monkeypatch.setattr(sys, "argv", ["adaptive-sampler", *map(str, args)])
    with pytest.raises(SystemExit) as caught:
        main()
    return caught.value.code, capsys.readouterr().err.splitlines()


# ---------------------------------------------------------------- happy paths


def test_sample_writes_npy_json_and_png(tiny_dir, tmp_path):
    save, report, grid = tmp_path / "x.npy", tmp_path / "r.json", tmp_path / "g.png"
    result = invoke("sample", "--model", tiny_dir, "--steps", 3, "--n", 4, "--batch-size", 2,
                    "--save", save, "--json", report, "--out", grid)
    assert "4 samples, 3 steps" in result.stdout
    samples = np.load(save)
    assert samples.shape == (4, *TINY_SHAPE) and samples.dtype == np.float32
    assert np.isfinite(samples).all() and np.abs(samples).max() <= 1.0  # clip_sample=True in the config
    data = json.loads(report.read_text())
    assert {"timesteps", "nfe_per_sample", "nfe_mean", "wall_s", "n", "seed"} <= set(data)
    assert data["timesteps"] == [999, 500, 0]  # uniform (linspace) for 3 steps
    assert data["nfe_per_sample"] == [3, 3, 3, 3] and data["nfe_mean"] == 3.0
    assert data["n"] == 4 and data["seed"] == 0 and data["wall_s"] > 0
    assert data["model"]["name"] == tiny_dir.name and len(data["model"]["weights_sha256"]) == 64
    assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sample_is_reproducible_and_takes_explicit_timesteps(tiny_dir, tmp_path):
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    report = tmp_path / "r.json"
    invoke("sample", "--model", tiny_dir, "--timesteps", "999,600,200,0", "--n", 3, "--batch-size", 1,
           "--seed", 5, "--save", a, "--json", report)
    invoke("sample", "--model", tiny_dir, "--timesteps", "999,600,200,0", "--n", 3, "--batch-size", 3,
           "--seed", 5, "--save", b)
    assert np.array_equal(np.load(a), np.load(b))  # batch size does not change the samples
    data = json.loads(report.read_text())
    assert data["timesteps"] == [999, 600, 200, 0] and data["nfe_per_sample"] == [4, 4, 4]


def test_sample_with_the_adaptive_policy_reports_per_sample_timesteps_and_rejections(tiny_dir, tmp_path):
    save, report = tmp_path / "x.npy", tmp_path / "r.json"
    result = invoke("sample", "--model", tiny_dir, "--policy", "adaptive:0.05", "--n", 3, "--save", save,
                    "--json", report)
    assert "3 samples, per-sample steps (adaptive:0.05, ddim)" in result.stdout
    data = json.loads(report.read_text())
    assert data["policy"] == "adaptive:0.05" and data["steps"] is None and "timesteps" not in data
    per_sample = data["timesteps_per_sample"]
    assert len(per_sample) == 3 and all(ts[0] == 999 and ts[-1] == 0 for ts in per_sample)
    rejected = data["rejected_per_sample"]
    assert data["nfe_per_sample"] == [len(ts) + r for ts, r in zip(per_sample, rejected, strict=True)]
    assert np.load(save).shape == (3, *TINY_SHAPE)


@pytest.mark.parametrize("solver", ["dpmpp-2m", "unipc"])
def test_adaptive_policy_with_a_multistep_solver_and_a_monitor(tiny_dir, tmp_path, solver):
    report = tmp_path / "r.json"
    result = invoke("sample", "--model", tiny_dir, "--policy", "adaptive:0.05", "--solver", solver,
                    "--monitor", "max-nfe:12", "--n", 3, "--json", report)
    assert f"3 samples, per-sample steps (adaptive:0.05, {solver})" in result.stdout
    data = json.loads(report.read_text())
    assert max(data["nfe_per_sample"]) <= 12
    assert all(by in (None, "max-nfe:12") for by in data["stopped_by"])
    assert data["nfe_per_sample"] == [len(ts) + r for ts, r in
                                      zip(data["timesteps_per_sample"], data["rejected_per_sample"], strict=True)]


def test_pickled_weights_are_accepted_with_allow_pickle(pickled_dir, tmp_path):
    save = tmp_path / "x.npy"
    invoke("sample", "--model", pickled_dir, "--allow-pickle", "--steps", 2, "--n", 2, "--save", save)
    assert np.load(save).shape == (2, *TINY_SHAPE)


def test_schedules_list_shows_the_catalogue():
    out = invoke("schedules", "list").stdout
    assert "sd15/ays-10" in out and "sdxl/ays-10" in out


def test_schedules_show_formats():
    assert json.loads(invoke("schedules", "show", "sd15/ays-10", "--format", "diffusers").stdout) == SD15_AYS
    comfy = invoke("schedules", "show", "sd15/ays-10", "--format", "comfyui").stdout.strip()
    assert comfy.endswith("0.000000") and len(comfy.split(", ")) == 11
    sigmas = json.loads(invoke("schedules", "show", "sd15/ays-10", "--format", "sigmas").stdout)
    assert len(sigmas) == 11 and sigmas[-1] == 0.0
    artifact = ScheduleArtifact.model_validate_json(invoke("schedules", "show", "sd15/ays-10").stdout)
    assert artifact.timesteps == SD15_AYS
    twenty = json.loads(invoke("schedules", "show", "sd15/ays-10", "--steps", 20, "--format", "diffusers").stdout)
    assert len(twenty) == 20 and twenty[0] == 999 and twenty[-1] == 24


def test_schedules_show_takes_a_schedule_file(tmp_path, monkeypatch, capsys):
    """A user's own file converts like a catalogue entry: by path, or as file:PATH; a bad file names it."""
    path = tmp_path / "mine.json"
    path.write_text(invoke("schedules", "show", "sd15/ays-10").stdout)
    assert json.loads(invoke("schedules", "show", path, "--format", "diffusers").stdout) == SD15_AYS
    catalogue = invoke("schedules", "show", "sd15/ays-10", "--format", "comfyui").stdout
    assert invoke("schedules", "show", f"file:{path}", "--format", "comfyui").stdout == catalogue
    five = json.loads(invoke("schedules", "show", path, "--steps", 5, "--format", "diffusers").stdout)
    assert len(five) == 5 and five[0] == 999
    code, lines = run_main(monkeypatch, capsys, "schedules", "show", tmp_path / "missing.json")
    assert code == 2 and lines == [f"error: NAME: '{tmp_path / 'missing.json'}' is a schedule file that does not exist"]


# ---------------------------------------------------------------- error paths through main()


ERROR_CASES = [
    pytest.param(["--steps", "0"], ["--steps"], id="steps-0"),
    pytest.param([], ["--steps"], id="steps-missing"),
    pytest.param(["--steps", "3", "--eta", "2"], ["--eta"], id="eta-2"),
    pytest.param(["--timesteps", "10,20"], ["--timesteps", "descending"], id="timesteps-ascending"),
    pytest.param(["--timesteps", "5,x"], ["--timesteps", "5,x"], id="timesteps-not-integers"),
    pytest.param(["--timesteps", "999,0", "--policy", "karras"], ["--timesteps", "karras"], id="timesteps-policy"),
    pytest.param(["--steps", "3", "--policy", "nope"], ["--policy", "nope"], id="policy-unknown"),
    pytest.param(["--steps", "3", "--n", "0"], ["--n"], id="n-0"),
    pytest.param(["--steps", "3", "--batch-size", "0"], ["--batch-size"], id="batch-size-0"),
    pytest.param(["--steps", "3", "--network-rows", "-1"], ["--network-rows"], id="network-rows-negative"),
    pytest.param(["--steps", "x"], ["--steps"], id="steps-not-int"),
    pytest.param(["--steps", "3", "--bogus"], ["--bogus"], id="unknown-option"),
    pytest.param(["--policy", "adaptive:x"], ["--policy", "'x'"], id="adaptive-tolerance-not-a-number"),
    pytest.param(["--policy", "adaptive:0"], ["--policy", "positive"], id="adaptive-tolerance-0"),
    pytest.param(["--policy", "adaptive:0.01", "--steps", "10"], ["--steps", "adaptive"], id="adaptive-steps"),
    pytest.param(["--policy", "adaptive:0.01", "--solver", "unipc", "--eta", "0.5"], ["--eta", "deterministic"],
                 id="adaptive-unipc-eta"),
    pytest.param(["--policy", "adaptive:0.01", "--monitor", "x0-l2"], ["--monitor", "no threshold"],
                 id="adaptive-monitor-without-threshold"),
]


@pytest.mark.parametrize(("args", "words"), ERROR_CASES)
def test_sample_errors_are_one_line_naming_the_flag(tiny_dir, monkeypatch, capsys, args, words):
    code, lines = run_main(monkeypatch, capsys, "sample", "--model", tiny_dir, *args)
    assert code != 0
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    for word in words:
        assert word in lines[0]


def test_missing_model_folder_names_model(monkeypatch, capsys):
    code, lines = run_main(monkeypatch, capsys, "sample", "--model", "/nonexistent", "--steps", 3)
    assert code != 0 and len(lines) == 1
    assert lines[0].startswith("error: --model: '/nonexistent'")


def test_pickled_weights_are_refused_naming_model_and_allow_pickle(pickled_dir, monkeypatch, capsys):
    code, lines = run_main(monkeypatch, capsys, "sample", "--model", pickled_dir, "--steps", 2, "--n", 1)
    assert code != 0 and len(lines) == 1
    assert lines[0].startswith("error: --model: ") and "--allow-pickle" in lines[0]


def test_eval_refuses_n_not_above_the_feature_dimension(monkeypatch, capsys):
    code, lines = run_main(monkeypatch, capsys, "eval", "--n", 100, "--steps", 2)  # the embedded model
    assert code != 0 and len(lines) == 1
    assert lines[0].startswith("error: --n: 100") and "feature dimension" in lines[0]


def test_eval_refuses_a_model_outside_the_embedded_feature_space(tiny_dir, monkeypatch, capsys):
    code, lines = run_main(monkeypatch, capsys, "eval", "--model", tiny_dir, "--n", 200, "--steps", 2)
    assert code != 0 and len(lines) == 1
    assert lines[0].startswith("error: --model: ") and "(1, 8, 8)" in lines[0]


def test_schedules_show_bad_format_names_format(monkeypatch, capsys):
    code, lines = run_main(monkeypatch, capsys, "schedules", "show", "sd15/ays-10", "--format", "bogus")
    assert code != 0 and len(lines) == 1
    assert lines[0].startswith("error: --format: 'bogus'")


def test_schedules_show_unknown_entry_lists_the_known_ones(monkeypatch, capsys):
    code, lines = run_main(monkeypatch, capsys, "schedules", "show", "sd15/nope-10")
    assert code != 0 and len(lines) == 1
    assert "sd15/nope-10" in lines[0] and "sd15/ays-10" in lines[0]


def test_schedules_show_unknown_entry_does_not_name_a_missing_flag(monkeypatch, capsys):
    _, lines = run_main(monkeypatch, capsys, "schedules", "show", "sd15/nope-10")
    assert "--policy" not in lines[0]


def test_no_subcommand_prints_help_without_an_empty_error_line(monkeypatch, capsys):
    _, lines = run_main(monkeypatch, capsys, "schedules")
    assert "error: " not in lines


def test_a_field_error_is_rendered_once_with_the_flag_and_status_2(tiny_dir, monkeypatch, capsys):
    code, lines = run_main(monkeypatch, capsys, "sample", "--model", tiny_dir, "--steps", "0")
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith("error: --steps: 0 ")  # the library's FieldError("num_steps", 0, ...)


def test_schedules_show_names_the_entry_argument(monkeypatch, capsys):
    code, lines = run_main(monkeypatch, capsys, "schedules", "show", "sd15/nope-10")
    assert code == 2 and lines[0].startswith("error: NAME: 'sd15/nope-10'")


def test_the_catalogue_group_has_one_name(monkeypatch, capsys):
    code, lines = run_main(monkeypatch, capsys, "policies", "list")
    assert code == 2 and len(lines) == 1 and "policies" in lines[0]


def test_the_library_does_not_import_the_cli():
    """No import cycle: the library (tuning included) never imports the CLI package."""
    code = ("import sys, adaptive_sampler.tuning.study, adaptive_sampler.tuning.export, adaptive_sampler.sampler, "
            "adaptive_sampler.monitors, adaptive_sampler.distributed; "
            "print(sorted(m for m in sys.modules if m.startswith('adaptive_sampler.cli')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("args", [["--help"], ["sample", "--help"], ["tune", "--help"], ["schedules", "list"]])
def test_help_and_the_catalogue_list_import_no_torch(args):
    """The CLI answers --help and `schedules list` without torch, diffusers or optuna (they cost seconds)."""
    code = ("import sys\nfrom adaptive_sampler.cli import main\nsys.argv = ['adaptive-sampler', *sys.argv[1:]]\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "print(sorted(m for m in ('torch', 'diffusers', 'optuna') if m in sys.modules), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("package", ["adaptive_sampler", "adaptive_sampler.tuning"])
def test_every_lazily_exported_name_resolves(package):
    module = importlib.import_module(package)
    assert sorted(module.__all__) == sorted(module._EXPORTS)
    for name in module.__all__:
        assert getattr(module, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        module.nope  # noqa: B018


def test_the_names_the_help_lists_are_the_registries():
    from adaptive_sampler.options import POLICY_NAMES, SOLVER_NAMES
    from adaptive_sampler.policies import POLICY_NAMES as REGISTERED_POLICIES
    from adaptive_sampler.solvers import SOLVERS

    assert POLICY_NAMES == REGISTERED_POLICIES and SOLVER_NAMES == tuple(SOLVERS)


# ---------------------------------------------------------------- the installed console script


def _console_script() -> list[str]:
    script = Path(sys.executable).parent / "adaptive-sampler"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from adaptive_sampler.cli import main; main()"]


def test_console_script_errors_are_one_line_without_traceback(tiny_dir, pickled_dir):
    """Two real processes, started together (each spends 5-15 s importing torch and diffusers): a flag error
    raised by the library and a parse error raised by typer. The other error paths run main() in-process above."""
    cases = [
        (["sample", "--model", str(pickled_dir), "--steps", "2"], "error: --model: ", ["--allow-pickle"]),
        (["sample", "--model", str(tiny_dir), "--steps", "2", "--bogus"], "error: ", ["--bogus"]),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([*_console_script(), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for args, _, _ in cases]
    for proc, (args, start, words) in zip(procs, cases, strict=True):
        _, err = proc.communicate(timeout=300)
        lines = err.strip().splitlines()
        assert proc.returncode != 0, args
        assert len(lines) == 1 and lines[0].startswith(start), (args, err)
        assert all(word in lines[0] for word in words), (args, err)


def _main(monkeypatch, capsys, *args: object) -> tuple[int, list[str]]:
    """Like run_main, for a run that may succeed (main() returns without SystemExit)."""
    monkeypatch.setattr(sys, "argv", ["adaptive-sampler", *map(str, args)])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err.splitlines()


def test_a_schedule_file_interpolated_or_made_for_another_model_is_said(tiny_dir, tmp_path, monkeypatch, capsys):
    report = tmp_path / "r.json"
    invoke("sample", "--model", tiny_dir, "--steps", 6, "--n", 1, "--json", report)
    data = json.loads(report.read_text())
    assert data["interpolated_from"] is None
    path = tmp_path / "six.json"
    ScheduleArtifact.model_validate({"num_train_timesteps": 1000, "timesteps": data["timesteps"], "method": "test",
                                     "model": data["model"]}).save(path)
    # another --steps interpolates the file: said on stderr and in the report
    code, err = _main(monkeypatch, capsys, "sample", "--model", tiny_dir, "--policy", f"file:{path}", "--steps", 4,
                      "--n", 1, "--json", report)
    assert code == 0 and f"note: --policy file:{path} holds 6 steps; it is interpolated (log-linear) to --steps 4" \
        in err, err
    assert json.loads(report.read_text())["interpolated_from"] == 6
    # a file made for other weights is refused in one line naming both models, or run with a warning
    other = tmp_path / "other.json"
    theirs = {"name": "theirs", "weights_sha256": "cd" * 32}
    ScheduleArtifact.model_validate({**json.loads(path.read_text()), "model": theirs}).save(other)
    code, err = _main(monkeypatch, capsys, "sample", "--model", tiny_dir, "--policy", f"file:{other}", "--n", 1)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: --policy: 'file:{other}' was made for model 'theirs' (weights SHA-256 "
                             f"cdcdcdcdcdcd…); this run samples '{tiny_dir.name}' (weights SHA-256 "
                             f"{data['model']['weights_sha256'][:12]}…)"), err
    code, err = _main(monkeypatch, capsys, "sample", "--model", tiny_dir, "--policy", f"file:{other}", "--n", 1,
                      "--allow-other-model")
    assert code == 0 and any(line.startswith(f"warning: --policy file:{other} was made for model 'theirs'")
                             for line in err), err
