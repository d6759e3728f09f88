"""Bad input never crashes (issue 16): generated malformed invocations of `sample` and `eval`.

Each generated case passes one bad value (an output path that cannot be written, a number out of range or not a
number, a device this machine lacks, a bad timestep list, a bad monitor spec) among otherwise valid flags, and must
end with exit status 2, exactly one line on stderr that starts "error: --<that flag>:", no traceback, and no file
added to, or changed in, the output folder (the other outputs of the run included: outputs are all-or-nothing).
Valid edge cases must succeed and write exactly their outputs. Every invocation runs in-process through `main()` on
the 8x8 tiny model, and every rejection happens before sampling starts, so the whole file takes seconds; the one
case that needs the embedded model (a successful `eval`) is marked slow.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import stat
import string
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from adaptive_sampler import atomic_write
from adaptive_sampler.cli.outputs import IMAGE_FORMATS
from helpers import TINY_SHAPE, CliRun, run_cli

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
COMMANDS = ("sample", "eval")
OUTPUT_FLAGS = {"sample": ("--save", "--json", "--out"), "eval": ("--save", "--json")}
SUFFIX = {"--save": ".npy", "--json": ".json", "--out": ".png"}


# ---------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@contextmanager
def fresh_folder(work: Path) -> Iterator[Path]:
    """An empty folder for one generated case, removed afterwards (read-only folders in it included)."""
    folder = Path(tempfile.mkdtemp(dir=work))
    try:
        yield folder
    finally:
        for root, dirs, _ in os.walk(folder):
            for d in dirs:
                os.chmod(os.path.join(root, d), 0o755)
        shutil.rmtree(folder)


def snapshot(folder: Path) -> dict[str, object]:
    """Every entry under `folder` (hidden ones included): a file's bytes, or the kind of anything else."""
    seen: dict[str, object] = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            rel = str(path.relative_to(folder))
            mode = path.lstat().st_mode
            seen[rel] = path.read_bytes() if stat.S_ISREG(mode) else stat.S_IFMT(mode)
    return seen


def base_args(command: str, model: Path, steps: bool = True) -> list[str]:
    return [command, "--model", str(model), *(["--steps", "1"] if steps else []), "--n", "2"]


def assert_rejected(run: CliRun, flag: str, folder: Path, before: dict[str, object]) -> None:
    """Exit status 2, one line naming `flag`, no traceback, and the folder exactly as it was."""
    assert "Traceback" not in run.err and "Traceback" not in run.out, run.err
    assert run.code == 2, (run.code, run.err)
    assert len(run.err_lines) == 1, run.err_lines
    assert run.err_lines[0].startswith((f"error: {flag}: ", f"error: {flag}[")), run.err_lines  # [i]: a list item
    assert snapshot(folder) == before


def other_outputs(command: str, flag: str, folder: Path, wanted: list[str], pre_existing: bool) -> list[str]:
    """Valid paths in `folder` for the output flags in `wanted` other than `flag` (optionally existing files with
    old content, which a failed run must leave untouched)."""
    args: list[str] = []
    for other in wanted:
        if other == flag or other not in OUTPUT_FLAGS[command]:
            continue
        path = folder / f"other{SUFFIX[other]}"
        if pre_existing:
            path.write_bytes(b"old content")
        args += [other, str(path)]
    return args


names = st.text(string.ascii_letters + string.digits + "-_", min_size=1, max_size=16)
junk = st.text(string.ascii_letters + string.punctuation + " ", max_size=12)  # no digits: never a number
PATH_KINDS = ("missing-folder", "parent-is-a-file", "is-a-folder", "read-only-folder", "not-a-regular-file",
              "name-too-long", "same-as-another", "bad-image-extension")


# ---------------------------------------------------------------- 1. output paths


@settings(FUZZ, max_examples=100)
@given(command=st.sampled_from(COMMANDS), data=st.data(), kind=st.sampled_from(PATH_KINDS), name=names,
       wanted=st.lists(st.sampled_from(("--save", "--json", "--out")), unique=True), pre_existing=st.booleans())
def test_an_output_path_that_cannot_be_written_is_refused_before_any_work(
        tiny_model_dir, work, command, data, kind, name, wanted, pre_existing):
    flags = OUTPUT_FLAGS[command]
    if kind == "bad-image-extension" and command == "eval":
        kind = "missing-folder"
    flag = "--out" if kind == "bad-image-extension" else data.draw(st.sampled_from(flags), label="flag")
    with fresh_folder(work) as folder:
        extra: list[str] = []
        path = folder / f"{name}{SUFFIX[flag]}"
        expected = flag
        if kind == "missing-folder":
            path = folder / "missing" / path.name
        elif kind == "parent-is-a-file":
            (folder / "a-file").write_text("x")
            path = folder / "a-file" / path.name
        elif kind == "is-a-folder":
            path.mkdir()
        elif kind == "read-only-folder":
            (folder / "ro").mkdir()
            os.chmod(folder / "ro", 0o555)
            path = folder / "ro" / path.name
            if os.access(folder / "ro", os.W_OK):  # root writes anywhere: /sys refuses even root
                path = Path("/sys") / path.name
        elif kind == "not-a-regular-file":
            os.mkfifo(path)
        elif kind == "name-too-long":
            path = folder / (name * 300)[:300]
            path = path.with_name(path.name + SUFFIX[flag])
        elif kind == "same-as-another":
            path = folder / f"{name}.npy"  # --save, checked first, takes it; --json is refused
            extra = ["--save", str(path)]
            flag = expected = "--json"
        elif kind == "bad-image-extension":
            ext = data.draw(st.text(string.ascii_letters + string.digits, max_size=5).map(lambda e: f".{e}" if e
                                                                                           else ""), label="ext")
            if ext.lower() in IMAGE_FORMATS:
                ext = ".xyz"
            path = folder / f"{name}{ext}"
        args = [*base_args(command, tiny_model_dir), *extra, flag, str(path)]
        args += other_outputs(command, flag, folder, [w for w in wanted if w not in extra], pre_existing)
        before = snapshot(folder)
        run = run_cli(*args)
        assert_rejected(run, expected, folder, before)


# ---------------------------------------------------------------- 1b. a write that fails after sampling


@settings(FUZZ, max_examples=30)
@given(wanted=st.lists(st.sampled_from(OUTPUT_FLAGS["sample"]), min_size=1, unique=True),
       fail_at=st.integers(0, 2), pre_existing=st.booleans(), failure=st.sampled_from([errno.ENOSPC, errno.EIO]))
def test_a_full_device_leaves_no_output_behind(tiny_model_dir, work, wanted, fail_at, pre_existing, failure):
    real = atomic_write._write_all
    calls = []

    def write_or_fail(fd: int, data: bytes) -> None:
        calls.append(len(data))
        if len(calls) == fail_at % len(wanted) + 1:
            os.close(fd)
            raise OSError(failure, os.strerror(failure))
        real(fd, data)

    with fresh_folder(work) as folder:
        args = base_args("sample", tiny_model_dir) + other_outputs("sample", "", folder, wanted, pre_existing)
        before = snapshot(folder)
        with mock.patch.object(atomic_write, "_write_all", write_or_fail):
            run = run_cli(*args)
        assert run.code == 2, run.err
        last = run.err_lines[-1]  # the progress bar of the sampling that ran comes first
        assert "Traceback" not in run.err
        assert last.startswith("error: --") and last[len("error: "):].split(":")[0] in wanted, last
        assert os.strerror(failure) in last and "no output file was written" in last
        assert snapshot(folder) == before


def test_a_failed_rename_takes_back_the_files_already_renamed(tmp_path):
    files = {tmp_path / "a.npy": b"a", tmp_path / "b.json": b"b", tmp_path / "c.png": b"c"}
    real, calls = os.replace, []

    def replace_or_fail(src: str, dst: str) -> None:
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real(src, dst)

    with mock.patch.object(atomic_write.os, "replace", replace_or_fail), \
            pytest.raises(atomic_write.AtomicWriteError) as caught:
        atomic_write.atomic_write_files(files)
    assert caught.value.path == tmp_path / "b.json"
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- 7. numbers


INT_RANGES = {"--n": (1, 10**7), "--batch-size": (1, 10**5), "--seed": (0, 2**63 - 1), "--network-rows": (0, 4096),
              "--steps": (1, 1000), "--bootstrap": (0, 10**5)}


def bad_ints(low: int, high: int) -> st.SearchStrategy[str]:
    huge = st.integers(7, 40).map(lambda k: 10**k)
    return st.one_of(
        st.integers(max_value=low - 1).map(str), st.integers(min_value=high + 1).map(str),
        huge.filter(lambda v: v > high).map(str), huge.map(lambda v: str(-v)),
        st.sampled_from(["nan", "inf", "-inf", "NaN", "1e3", "1e30", "", "0x10", "2.5"]),
        st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer()).map(repr),
        junk,
    )


bad_etas = st.one_of(
    st.floats(max_value=-1e-300).map(repr), st.floats(min_value=1.0000001, allow_infinity=False).map(repr),
    st.sampled_from(["nan", "NaN", "inf", "-inf", "1e400", "-1e400", ""]), junk,
)


@settings(FUZZ, max_examples=100)
@given(command=st.sampled_from(COMMANDS), data=st.data())
def test_a_bad_number_names_its_flag(tiny_model_dir, work, command, data):
    flags = [*INT_RANGES, "--eta"]
    if command == "sample":
        flags.remove("--bootstrap")
    flag = data.draw(st.sampled_from(flags), label="flag")
    value = data.draw(bad_etas if flag == "--eta" else bad_ints(*INT_RANGES[flag]), label="value")
    with fresh_folder(work) as folder:
        args = [*base_args(command, tiny_model_dir, steps=flag != "--steps"), flag, value,
                *other_outputs(command, "", folder, ["--save", "--json"], False)]
        before = snapshot(folder)
        assert_rejected(run_cli(*args), flag, folder, before)


# ---------------------------------------------------------------- 6. devices


def could_be_valid_device(text: str) -> bool:
    low = text.strip().lower()
    if low.startswith(("cpu", "auto")):
        return True
    if "cuda" in low and torch.cuda.is_available():
        return True
    return "mps" in low and torch.backends.mps.is_available()


devices = st.one_of(
    st.sampled_from(["meta", "mps", "xla", "cuda", "cuda:0", "cuda:99", "cuda:-1", "cuda:1.5", "cuda:", "ipu",
                     "xpu", "hpu", "lazy", "vulkan", "fpga", "privateuseone", "CPU", "Cuda", ":0", "", "gpu"]),
    st.text(string.ascii_letters + string.digits + ":-_ ", max_size=10),
).filter(lambda d: not could_be_valid_device(d))


@settings(FUZZ, max_examples=40)
@given(command=st.sampled_from(COMMANDS), device=devices)
def test_a_device_this_machine_lacks_names_device(tiny_model_dir, work, command, device):
    with fresh_folder(work) as folder:
        args = [*base_args(command, tiny_model_dir), "--device", device,
                *other_outputs(command, "", folder, ["--save", "--json"], False)]
        before = snapshot(folder)
        run = run_cli(*args)
        assert_rejected(run, "--device", folder, before)
        assert "is not" in run.err_lines[0]


# ---------------------------------------------------------------- timestep lists


def is_valid_list(items: list[int] | list[float]) -> bool:
    return all(0 <= v <= 999 for v in items) and all(a > b for a, b in zip(items, items[1:], strict=False))


int_lists = st.lists(st.one_of(st.integers(-2000, 2000), st.integers(7, 30).map(lambda k: 10**k)), min_size=1,
                     max_size=8).filter(lambda v: not is_valid_list(v)).map(lambda v: ",".join(map(str, v)))
def is_valid_text_list(items: list[str]) -> bool:
    """The rule on a --timesteps list: finite numbers (fractional ones allowed) in [0, 999], strictly descending."""
    try:
        values = [float(i) for i in items]
    except ValueError:
        return False
    return all(math.isfinite(v) for v in values) and is_valid_list(values)


bad_items = st.lists(st.one_of(st.integers(0, 999).map(str), st.just(""), junk,
                               st.sampled_from(["5.5", "1e3", "x", "nan", "-inf", "999.5"])),
                     min_size=1, max_size=6).filter(lambda items: not is_valid_text_list(items)).map(",".join)


@settings(FUZZ, max_examples=60)
@given(command=st.sampled_from(COMMANDS), timesteps=st.one_of(int_lists, bad_items),
       spaced=st.booleans())
def test_a_bad_timestep_list_names_timesteps(tiny_model_dir, work, command, timesteps, spaced):
    if spaced:
        timesteps = timesteps.replace(",", " , ")
    with fresh_folder(work) as folder:
        args = [*base_args(command, tiny_model_dir, steps=False), "--timesteps", timesteps,
                *other_outputs(command, "", folder, ["--save", "--json"], False)]
        before = snapshot(folder)
        assert_rejected(run_cli(*args), "--timesteps", folder, before)


def test_a_timestep_list_with_another_policy_names_timesteps(tiny_model_dir, work):
    with fresh_folder(work) as folder:
        run = run_cli(*base_args("sample", tiny_model_dir, steps=False), "--timesteps", "999,0", "--policy", "karras")
        assert_rejected(run, "--timesteps", folder, {})


# ---------------------------------------------------------------- monitor specs


MONITORS = ("x0-l2", "ssim", "haarpsi", "gmsd", "sharpness", "max-nfe", "deadline")
bad_monitors = st.one_of(
    st.tuples(st.text(string.ascii_letters + "-_", min_size=1, max_size=8).filter(
        lambda n: n not in (*MONITORS, "lpips", "features")), st.sampled_from(["", ":0.1", ":3"])).map("".join),
    st.tuples(st.sampled_from(MONITORS), st.sampled_from(["nan", "inf", "-inf", "-1", "-0.5", "abc", "1e999", "--"])
              ).map(":".join),
    st.sampled_from(["max-nfe:0", "max-nfe:1.5", "max-nfe:-3", "deadline:0", "deadline:-1", "max-nfe", "deadline"]),
    st.tuples(st.sampled_from(["x0-l2:0.1", "max-nfe:5", "sharpness:0.1"]),
              st.sampled_from([",bogus=1", ",patience=x", ",patience", ",every=1.5", ",=3", ",min_steps=abc",
                               ",patience=0", ",every=0", ",max_t=-1", ",min_t=500,max_t=100"])
              ).map("".join),
    st.sampled_from(["", "|", "&", "x0-l2:0.1|", "|max-nfe:3", "x0-l2:0.1|max-nfe:3&max-nfe:4", ":", ",",
                     "x0-l2:0.1,"]),
)


@settings(FUZZ, max_examples=50)
@given(command=st.sampled_from(COMMANDS), spec=bad_monitors, good_first=st.booleans())
def test_a_bad_monitor_spec_names_monitor(tiny_model_dir, work, command, spec, good_first):
    with fresh_folder(work) as folder:
        args = [*base_args(command, tiny_model_dir), *(["--monitor", "max-nfe:3"] if good_first else []),
                "--monitor", spec, *other_outputs(command, "", folder, ["--save", "--json"], False)]
        before = snapshot(folder)
        assert_rejected(run_cli(*args), "--monitor", folder, before)


@pytest.mark.parametrize("guardrail, rule", [
    ("patience=0", "patience = 0 is below its minimum, 1"),
    ("every=0", "every = 0 is below its minimum, 1"),
    ("max_t=-1", "max_t = -1 is below its minimum, 0"),
    ("min_t=500,max_t=100", "min_t 500 is above max_t 100; the t window [min_t, max_t] is empty"),
])
def test_a_bad_monitor_guardrail_is_one_line_with_its_rule(tiny_model_dir, guardrail, rule):
    run = run_cli(*base_args("sample", tiny_model_dir), "--monitor", f"x0-l2:0.01,{guardrail}")
    assert run.code == 2 and run.err_lines == [
        f"error: --monitor: 'x0-l2:0.01,{guardrail}' has bad guardrails: {rule}"], run.err


@pytest.mark.parametrize("flag, typed, suggested", [
    ("--policy", "karas", "'karras'"), ("--policy", "adaptve:0.01", "'adaptive:0.01'"),
    ("--solver", "dpmpp", "'dpmpp-2m'"), ("--monitor", "x0-l3:0.01", "'x0-l2'"),
])
def test_a_mistyped_name_gets_a_suggestion(tiny_model_dir, flag, typed, suggested):
    run = run_cli(*base_args("sample", tiny_model_dir), flag, typed)
    assert run.code == 2 and len(run.err_lines) == 1, run.err
    assert run.err_lines[0].startswith(f"error: {flag}: ") and f"(did you mean {suggested}?)" in run.err
    if flag == "--policy":  # every form is listed
        assert "learned:<model>/<family>-<N>, file:<path>, adaptive:<tolerance>, steered:<N>" in run.err


@pytest.mark.timeout(30)
def test_a_fifo_as_a_schedule_file_is_refused_not_read(tiny_model_dir, tmp_path):
    fifo = tmp_path / "schedule.json"
    os.mkfifo(fifo)  # opening it to read would wait for a writer forever
    run = run_cli(*base_args("sample", tiny_model_dir), "--policy", f"file:{fifo}")
    assert run.code == 2 and run.err_lines == [
        f"error: --policy: file:{fifo}: is not a regular file (a FIFO, socket or device); it should hold a "
        "schedule artifact"], run.err


# ---------------------------------------------------------------- valid edge cases succeed


@settings(FUZZ, max_examples=40)
@given(n=st.integers(1, 3), batch_size=st.sampled_from([1, 2, 10**5]),
       seed=st.one_of(st.sampled_from([0, 2**63 - 1]), st.integers(0, 2**63 - 1)),
       network_rows=st.sampled_from([0, 1, 8, 64]), eta=st.sampled_from(["0", "1", "0.5", "1.0", "-0.0"]),
       plan=st.one_of(st.integers(1, 3).map(lambda s: ["--steps", str(s)]),
                      st.lists(st.integers(0, 999), min_size=1, max_size=3, unique=True).map(
                          lambda v: ["--timesteps", ",".join(map(str, sorted(v, reverse=True)))])),
       device=st.sampled_from(["cpu", "auto", "cpu:0"]), wanted=st.lists(st.sampled_from(OUTPUT_FLAGS["sample"]),
                                                                        unique=True),
       image=st.sampled_from(sorted(IMAGE_FORMATS)), upper=st.booleans(), bare_save=st.booleans(),
       pre_existing=st.booleans())
def test_valid_edge_cases_succeed_and_write_exactly_their_outputs(
        tiny_model_dir, work, n, batch_size, seed, network_rows, eta, plan, device, wanted, image, upper, bare_save,
        pre_existing):
    if device == "auto" and torch.cuda.is_available():
        device = "cpu"  # keep this test on the CPU
    with fresh_folder(work) as folder:
        paths = {"--save": folder / ("samples" if bare_save else "samples.npy"), "--json": folder / "report.json",
                 "--out": folder / f"grid{image.upper() if upper else image}"}
        written = {"--save": folder / "samples.npy", "--json": paths["--json"], "--out": paths["--out"]}
        args = ["sample", "--model", str(tiny_model_dir), *plan, "--n", str(n), "--batch-size", str(batch_size),
                "--seed", str(seed), "--network-rows", str(network_rows), "--eta", eta, "--device", device]
        for flag in wanted:
            if pre_existing:
                written[flag].write_bytes(b"old content")
            args += [flag, str(paths[flag])]
        run = run_cli(*args)
        assert run.code == 0, run.err
        assert "error" not in run.err and "Traceback" not in run.err
        assert sorted(p.name for p in folder.iterdir()) == sorted(written[f].name for f in wanted)  # no temporaries
        if "--save" in wanted:
            samples = np.load(written["--save"])
            assert samples.shape == (n, *TINY_SHAPE) and samples.dtype == np.float32
        if "--json" in wanted:
            assert json.loads(written["--json"].read_text())["seed"] == seed
        if "--out" in wanted:
            with Image.open(written["--out"]) as grid:
                assert grid.format == IMAGE_FORMATS[image]


def test_the_largest_network_rows_runs(tiny_model_dir):
    run = run_cli("sample", "--model", tiny_model_dir, "--steps", 1, "--n", 1, "--network-rows", 4096)
    assert run.code == 0, run.err


@pytest.mark.slow
def test_eval_on_the_embedded_model_writes_both_outputs_or_neither(work):
    """A successful eval (embedded model, 129 samples, one step), then the same with its --json write failing."""
    with fresh_folder(work) as folder:
        save, report = folder / "x.npy", folder / "r.json"
        args = ["eval", "--steps", 1, "--n", 129, "--batch-size", 129, "--save", save, "--json", report]
        run = run_cli(*args)
        assert run.code == 0, run.err
        assert np.load(save).shape[0] == 129 and "fid" in json.loads(report.read_text())
        save.unlink()
        report.unlink()
        real = atomic_write._write_all
        calls = []

        def second_fails(fd: int, data: bytes) -> None:
            calls.append(fd)
            if len(calls) == 2:
                os.close(fd)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real(fd, data)

        with mock.patch.object(atomic_write, "_write_all", second_fails):
            run = run_cli(*args)
        assert run.code == 2 and run.err_lines[-1].startswith("error: --json: "), run.err
        assert list(folder.iterdir()) == []
