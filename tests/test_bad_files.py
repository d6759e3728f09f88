"""Bad files and bad storage values (issue 16): a `--policy file:PATH` schedule, a `--model` folder's files, a
`--storage` URL and the tune command's output folders. Each is refused before anything is sampled, with exit status
2 and exactly one stderr line "error: --<flag>: …" that names the file (and the field inside it) where there is one,
no traceback, and no file left behind.

The CLI runs in-process (`main()`, as tests/test_cli.py's `run_main`); hypothesis generates truncations and random
bytes of a valid schedule JSON and of a valid safetensors file, bad JSON values for the fields of each file, and bad
storage URLs and sampler seeds (derandomised, so a run is reproducible).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import DDIMScheduler, UNet2DModel
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from safetensors.torch import load_file

from adaptive_sampler.cli import main
from adaptive_sampler.errors import FieldError
from adaptive_sampler.schedules.artifact import ScheduleArtifact
from adaptive_sampler.timesteps import validate_timesteps
from adaptive_sampler.tuning.storage import JOURNAL_SUFFIXES, SQLITE_SUFFIXES, check_storage
from helpers import build_tiny_unet

FAST = settings(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow], database=None)
WEIGHTS = "diffusion_pytorch_model.safetensors"
SCHEDULE: dict[str, Any] = {"format_version": 1, "num_train_timesteps": 1000, "timesteps": [999, 500, 0],
                            "solver": "ddim", "eta": 0.0, "model": {"name": "tiny"}, "method": "test"}
SCHEDULE_BYTES = json.dumps(SCHEDULE).encode()
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                    max_leaves=8)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    build_tiny_unet().save_pretrained(root, safe_serialization=True)
    DDIMScheduler().save_config(root)
    return root


def run_cli(*args: Any) -> tuple[int, list[str]]:
    """Run the console entry point in-process; returns (exit code, stderr lines)."""
    err, argv = io.StringIO(), sys.argv
    sys.argv = ["adaptive-sampler", *map(str, args)]
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            main()
        code: Any = 0
    except SystemExit as exc:
        code = exc.code
    finally:
        sys.argv = argv
    return code, err.getvalue().splitlines()


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def assert_refused(args: list[Any], flag: str, *words: str, root: Path | None = None) -> str:
    """`args` exit with status 2 and one line "error: --flag: …" holding `words`; nothing new under `root`."""
    before = files_under(root) if root is not None else None
    code, lines = run_cli(*args)
    assert code == 2, (args, code, lines)
    assert len(lines) == 1, (args, lines)
    assert lines[0].startswith(f"error: {flag}: "), (args, lines)
    assert "Traceback" not in lines[0]
    for word in words:
        assert word in lines[0], (word, lines)
    if root is not None:
        assert files_under(root) == before, (args, files_under(root) - before)
    return lines[0]


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    """A fresh folder per hypothesis example (pytest's tmp_path is per test)."""
    with tempfile.TemporaryDirectory(prefix="bad-files-") as name:
        yield Path(name)


@contextlib.contextmanager
def inside(folder: Path) -> Iterator[None]:
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(cwd)


# ---------------------------------------------------------------- --policy file:PATH


def refuse_schedule(tiny_dir: Path, data: bytes, *words: str, solver: str = "ddim") -> str:
    with scratch() as root:
        path = root / "schedule.json"
        path.write_bytes(data)
        line = assert_refused(["sample", "--model", tiny_dir, "--policy", f"file:{path}", "--solver", solver,
                               "--n", 1], "--policy", str(path), *words, root=root)
    for flag in ("--timesteps", "--eta", "--solver:", "--steps"):  # an inner field is never reported as a flag
        assert not line.startswith(f"error: {flag}")
    return line


@settings(FAST, max_examples=40)
@given(cut=st.integers(0, len(SCHEDULE_BYTES) - 1))
def test_a_truncated_schedule_file_names_policy_and_the_file(tiny_dir, cut):
    refuse_schedule(tiny_dir, SCHEDULE_BYTES[:cut])


@settings(FAST, max_examples=25)
@given(data=st.binary(max_size=64))
def test_random_bytes_as_a_schedule_file_name_policy_and_the_file(tiny_dir, data):
    refuse_schedule(tiny_dir, data)


BAD_FIELD_VALUES = st.one_of(
    st.tuples(st.just("timesteps"), JSON.filter(lambda v: not isinstance(v, list) or not v)),
    st.tuples(st.just("timesteps"), st.lists(st.integers(0, 999), min_size=1, max_size=4).map(
        lambda ts: [*sorted(set(ts), reverse=True), 1000])),  # one out of range
    st.tuples(st.just("timesteps"), st.lists(st.integers(0, 999), min_size=2, max_size=4, unique=True).map(
        lambda ts: sorted(ts))),  # ascending
    st.tuples(st.just("eta"), st.floats(allow_nan=False).filter(lambda v: not 0 <= v <= 1)),
    st.tuples(st.just("eta"), JSON.filter(lambda v: not isinstance(v, int | float) or isinstance(v, bool))),
    st.tuples(st.just("solver"), st.text(max_size=10).filter(lambda v: v not in ("ddim", "dpmpp-2m", "unipc"))),
    st.tuples(st.just("num_train_timesteps"), st.integers().filter(lambda v: v != 1000)),
    st.tuples(st.just("model"), JSON.filter(lambda v: not isinstance(v, dict) or not v)),
    st.tuples(st.just("format_version"), JSON.filter(lambda v: v != 1)),
)


@settings(FAST, max_examples=50)
@given(field_value=BAD_FIELD_VALUES)
def test_a_bad_field_in_a_schedule_file_is_named_inside_the_file(tiny_dir, field_value):
    field, value = field_value
    line = refuse_schedule(tiny_dir, json.dumps({**SCHEDULE, field: value}).encode())
    assert f": {field}" in line or "num_train_timesteps" in line  # a mismatched T may fail at timesteps[i]


@pytest.mark.parametrize(("data", "words"), [
    pytest.param(b"", ["is empty"], id="empty"),
    pytest.param(SCHEDULE_BYTES[:40], ["is not valid JSON"], id="truncated"),
    pytest.param(b"timesteps = [999, 0]", ["is not valid JSON"], id="not-json"),
    pytest.param("{\"a\": \"é\"}".encode("latin-1"), ["is not UTF-8"], id="latin-1"),
    pytest.param(b"[999, 500, 0]", ["list"], id="a-list"),
    pytest.param(json.dumps({**SCHEDULE, "timesteps": 999}).encode(), ["timesteps: 999"], id="timesteps-999"),
    pytest.param(json.dumps({**SCHEDULE, "timesteps": None}).encode(), ["timesteps: None"], id="timesteps-null"),
    pytest.param(json.dumps({**SCHEDULE, "timesteps": [999, 1200]}).encode(), ["timesteps[1]: 1200 is outside"],
                 id="timesteps-1200"),
    pytest.param(json.dumps({**SCHEDULE, "eta": 2.0}).encode(), ["eta: 2.0"], id="eta-2"),
    pytest.param(json.dumps({**SCHEDULE, "solver": "euler"}).encode(), ["solver: 'euler'"], id="solver-euler"),
    pytest.param(json.dumps({**SCHEDULE, "solver": "unipc"}).encode(), ["solver: 'unipc'", "--solver ddim"],
                 id="made-for-unipc"),
    pytest.param(json.dumps({**SCHEDULE, "num_train_timesteps": 500, "timesteps": [499, 0]}).encode(),
                 ["num_train_timesteps=500"], id="other-T"),
    pytest.param(json.dumps({k: v for k, v in SCHEDULE.items() if k != "method"}).encode(), ["method: is required"],
                 id="missing-method"),
    pytest.param(json.dumps({**SCHEDULE, "bogus": 1}).encode(), ["bogus: is not a field"], id="extra-field"),
])
def test_bad_schedule_files(tiny_dir, data, words):
    refuse_schedule(tiny_dir, data, *words)


def test_a_schedule_made_for_unipc_runs_under_unipc(tiny_dir, tmp_path):
    path = tmp_path / "unipc.json"
    path.write_text(json.dumps({**SCHEDULE, "solver": "unipc"}))
    code, lines = run_cli("sample", "--model", tiny_dir, "--policy", f"file:{path}", "--solver", "unipc", "--n", 1)
    assert code == 0, lines


@pytest.mark.parametrize("name", ["file:", "file:{tmp}/missing.json", "file:{tmp}"])
def test_a_schedule_file_that_is_missing_or_a_folder(tiny_dir, tmp_path, name):
    policy = name.format(tmp=tmp_path)
    assert_refused(["sample", "--model", tiny_dir, "--policy", policy, "--n", 1], "--policy",
                   policy.removeprefix("file:"), root=tmp_path)


def test_validate_timesteps_refuses_a_number_with_a_field_error():
    for value in (999, None, "999", {"a": 1}):
        with pytest.raises(FieldError) as caught:
            validate_timesteps(value, 1000)  # type: ignore[arg-type]
        assert caught.value.field == "timesteps"


def test_an_artifact_with_null_timesteps_is_a_validation_error():
    with pytest.raises(ValidationError) as caught:
        ScheduleArtifact.model_validate({**SCHEDULE, "timesteps": None})
    assert caught.value.errors()[0]["loc"] == ("timesteps",)


# ---------------------------------------------------------------- --model PATH


def refuse_model(tiny_dir: Path, change, *words: str) -> str:
    with scratch() as root:
        model = root / "model"
        shutil.copytree(tiny_dir, model)
        change(model)
        return assert_refused(["sample", "--model", model, "--steps", 2, "--n", 1], "--model", *words, root=root)


def set_json(name: str, **values: Any):
    def change(model: Path) -> None:
        data = json.loads((model / name).read_text())
        (model / name).write_text(json.dumps({**data, **values}))
    return change


def write(name: str, data: bytes):
    return lambda model: (model / name).write_bytes(data)


def resave(**changes: Any):
    """A UNet whose config has `changes`, saved with weights that fit it."""
    return lambda model: UNet2DModel.from_config({**UNet2DModel.load_config(model), **changes}).save_pretrained(model)


def pickled(model: Path) -> None:
    """The weights as a pickled checkpoint, as older folders hold them."""
    torch.save(load_file(model / WEIGHTS), model / "diffusion_pytorch_model.bin")
    (model / WEIGHTS).unlink()


@settings(FAST, max_examples=30)
@given(fraction=st.floats(0, 1, exclude_max=True))
def test_truncated_weights_name_model_and_the_weights_file(tiny_dir, fraction):
    raw = (tiny_dir / WEIGHTS).read_bytes()
    refuse_model(tiny_dir, write(WEIGHTS, raw[:int(fraction * len(raw))]), WEIGHTS, "safetensors")


@settings(FAST, max_examples=15)
@given(data=st.binary(max_size=256))
def test_random_bytes_as_weights_name_model_and_the_weights_file(tiny_dir, data):
    refuse_model(tiny_dir, write(WEIGHTS, data), WEIGHTS)


BAD_UNET_VALUES = st.one_of(
    st.tuples(st.just("in_channels"), JSON.filter(lambda v: v != 1)),
    st.tuples(st.just("out_channels"), JSON.filter(lambda v: v != 1)),
    st.tuples(st.just("sample_size"), JSON.filter(
        lambda v: not (isinstance(v, int) and not isinstance(v, bool) and v > 0))
        .filter(lambda v: not (isinstance(v, list) and len(v) == 2))),
    st.tuples(st.just("_class_name"), JSON.filter(lambda v: v not in ("UNet2DModel", "UNet2DConditionModel"))),
)


@settings(FAST, max_examples=30)
@given(field_value=BAD_UNET_VALUES)
def test_a_bad_unet_config_value_names_the_config_and_the_field(tiny_dir, field_value):
    field, value = field_value
    line = refuse_model(tiny_dir, set_json("config.json", **{field: value}))
    if field in ("in_channels", "out_channels"):  # diffusers refuses these, in its own words
        assert "cannot be loaded as UNet2DModel" in line, line
    else:
        assert "config.json" in line and field in line, line


BAD_SCHEDULER_VALUES = st.one_of(
    st.tuples(st.just("num_train_timesteps"), JSON.filter(
        lambda v: not (isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 100_000))),
    st.tuples(st.just("beta_schedule"), JSON.filter(
        lambda v: v not in ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"))),
    st.tuples(st.just("prediction_type"), JSON.filter(lambda v: v not in ("epsilon", "v_prediction", "sample"))),
    st.tuples(st.just("beta_end"), st.floats(allow_nan=False).filter(lambda v: not 0 < v < 1)),
)


@settings(FAST, max_examples=30)
@given(field_value=BAD_SCHEDULER_VALUES)
def test_a_bad_scheduler_config_value_names_the_file_and_the_field(tiny_dir, field_value):
    field, value = field_value
    refuse_model(tiny_dir, set_json("scheduler_config.json", **{field: value}), "scheduler_config.json", field)


@settings(FAST, max_examples=15)
@given(name=st.sampled_from(["config.json", "scheduler_config.json"]), value=JSON.filter(
    lambda v: not isinstance(v, dict)))
def test_a_config_that_is_not_an_object_names_the_file(tiny_dir, name, value):
    refuse_model(tiny_dir, write(name, json.dumps(value).encode()), name, "not a diffusers")


@pytest.mark.parametrize(("change", "words"), [
    pytest.param(write(WEIGHTS, b""), [WEIGHTS, "Unable to load weights"], id="empty-weights"),
    pytest.param(lambda model: (model / WEIGHTS).unlink(), [f"no file named {WEIGHTS}"], id="no-weights"),
    pytest.param(pickled, ["diffusion_pytorch_model.bin", "pickled", "--allow-pickle"], id="pickled-weights"),
    pytest.param(write(WEIGHTS, b"\x08" + b"\0" * 7 + b'{"a": 1}'), [WEIGHTS], id="corrupt-weights"),
    pytest.param(write("config.json", b"[]"), ["config.json", "JSON list"], id="config-a-list"),
    pytest.param(write("config.json", b'{"_class_name": "UNet2DModel",'), ["config.json", "is not valid JSON"],
                 id="config-invalid-json"),
    pytest.param(write("config.json", b"\xff\xfe{}"), ["config.json", "UTF-8"], id="config-not-utf8"),
    pytest.param(set_json("config.json", in_channels=3), ["size mismatch for conv_in.weight", "[8, 1, 3, 3]"],
                 id="in-channels-3"),
    pytest.param(set_json("config.json", block_out_channels=[8, 32]), ["as UNet2DModel", "[16, 8, 3, 3]"],
                 id="wider-blocks"),
    pytest.param(set_json("config.json", norm_num_groups=3), ["as UNet2DModel", "divisible"], id="groups"),
    pytest.param(resave(out_channels=2), ["config.json: out_channels: 2 differs from in_channels 1"],
                 id="out-channels-2"),
    pytest.param(set_json("config.json", num_class_embeds=0), ["config.json: num_class_embeds: 0"], id="classes-0"),
    pytest.param(set_json("config.json", sample_size=None), ["config.json: sample_size: None"], id="no-sample-size"),
    pytest.param(set_json("scheduler_config.json", beta_schedule="cosine"), ["beta_schedule: 'cosine'"],
                 id="unknown-beta-schedule"),
    pytest.param(set_json("scheduler_config.json", num_train_timesteps=-5), ["num_train_timesteps: -5"],
                 id="negative-T"),
    pytest.param(write("scheduler_config.json", b"[]"), ["scheduler_config.json", "JSON list"], id="scheduler-list"),
    pytest.param(write("scheduler_config.json", b"{}"), ["scheduler_config.json: num_train_timesteps: is required"],
                 id="scheduler-empty"),
    pytest.param(set_json("scheduler_config.json", clip_sample="yes"), ["clip_sample: 'yes'"], id="clip-not-bool"),
    pytest.param(set_json("scheduler_config.json", trained_betas=[0.1, 0.2]), ["trained_betas: [0.1, 0.2] does not"],
                 id="betas-not-one-per-step"),
    pytest.param(set_json("scheduler_config.json", clip_sample_range=-1), ["clip_sample_range: -1"],
                 id="clip-range"),
    pytest.param(set_json("scheduler_config.json", beta_start=0.5, beta_end=0.9), ["ᾱ"], id="betas-too-large"),
])
def test_bad_model_files(tiny_dir, change, words):
    refuse_model(tiny_dir, change, *words)


# ---------------------------------------------------------------- --storage, and tune's outputs


def refuse_tune(args: list[Any], flag: str, *words: str) -> str:
    with scratch() as root, inside(root):
        (root / "a-file").write_text("x")
        return assert_refused(["tune", "--trials", 1, *args], flag, *words, root=root)


BAD_URLS = st.one_of(
    st.tuples(st.from_regex(r"[a-z][a-z0-9+]{0,8}", fullmatch=True).filter(
        lambda s: s.split("+")[0] not in ("sqlite", "postgresql", "mysql", "mariadb")), st.text(max_size=12)).map(
        lambda p: f"{p[0]}://{p[1]}"),
    st.text(max_size=20).filter(lambda s: not s.startswith("journal:") and "://" not in s and "\0" not in s
                                and Path(s).suffix not in (*JOURNAL_SUFFIXES, *SQLITE_SUFFIXES)),
    st.from_regex(r"journal:\s*", fullmatch=True),
    st.sampled_from(["sqlite://", "sqlite:///", "sqlite:///:memory:", "sqlite+pysqlite:///:memory:",
                     "sqlite:///file::memory:?cache=shared", "sqlite:///x.db?mode=memory"]),
    st.sampled_from([*JOURNAL_SUFFIXES, *SQLITE_SUFFIXES]).map(lambda s: f"a-file/x{s}"),  # under a file
)


@settings(FAST, max_examples=50)
@given(url=BAD_URLS)
def test_bad_storage_urls_name_storage(url):
    refuse_tune(["--storage", url], "--storage")


@settings(FAST, max_examples=25)
@given(seed=st.integers().filter(lambda s: not 0 <= s < 2**32))
def test_a_sampler_seed_out_of_range_names_the_flag(seed):
    refuse_tune(["--sampler-seed", seed], "--sampler-seed", str(seed))


def test_a_sampler_seed_that_is_not_an_integer_names_the_flag():
    code, lines = run_cli("tune", "--sampler-seed", "x")
    assert code == 2 and len(lines) == 1 and "--sampler-seed" in lines[0]


@pytest.mark.parametrize(("url", "words"), [
    pytest.param("foo://x", ["'foo'"], id="unknown-scheme"),
    pytest.param("postgres://u@h/db", ["postgresql://"], id="postgres-alias"),
    pytest.param("journal:", ["journal:PATH"], id="journal-no-path"),
    pytest.param("sqlite:///:memory:", ["in-memory"], id="sqlite-memory"),
    pytest.param("runs/x.txt", ["is not a storage URL"], id="unknown-suffix"),
    pytest.param("/proc/adaptive-sampler/tune.db", ["cannot be written"], id="unwritable-db"),
    pytest.param("journal:/proc/adaptive-sampler/tune.log", ["cannot be written"], id="unwritable-journal"),
    pytest.param("a-file/tune.journal", ["a-file is a file"], id="journal-under-a-file"),
    pytest.param(".", ["is not a storage URL"], id="a-folder"),
])
def test_bad_storage_values(url, words):
    refuse_tune(["--storage", url], "--storage", *words)


def test_a_corrupt_database_names_storage():
    with scratch() as root, inside(root):
        (root / "tune.db").write_bytes(b"this is not a database" * 10)
        assert_refused(["tune", "--trials", 1, "--storage", "tune.db"], "--storage", "tune.db",
                       "not a database", root=root)


@pytest.mark.parametrize("flag", ["--export", "--plots", "--cache-dir"])
@pytest.mark.parametrize("where", ["a-file/out", "a-file", "/proc/adaptive-sampler-out"])
def test_unwritable_tune_outputs_are_refused_before_any_trial(flag, where):
    extra = ["--export", "exported"] if flag == "--plots" else []
    refuse_tune([*extra, flag, where], flag, where)


def test_check_storage_creates_nothing(tmp_path):
    with inside(tmp_path):
        for url in ("deep/er/tune.journal", "journal:deep/x.log", "deep/x.db", "sqlite:///deep/y.db"):
            check_storage(url)
    assert list(tmp_path.iterdir()) == []


def test_the_storage_module_still_loads_without_torch():
    from adaptive_sampler.tuning import storage

    code = ("import importlib.util, sys; spec = importlib.util.spec_from_file_location('s', sys.argv[1]); "
            "m = importlib.util.module_from_spec(spec); sys.modules['s'] = m; spec.loader.exec_module(m)\n"
            "try:\n    m.open_storage('sqlite:///:memory:')\n"
            "except ValueError as e:\n    print(e.field, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, storage.__file__], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["storage", "False"], done.stderr
