"""Faults while writing: a full disk, a writer that stops half-way, SIGKILL and SIGTERM mid-write,
two runs into one folder. A run publishes all its outputs or none, and the next run recovers.

Real processes run ``bsafusion fuse`` (through a small driver that can inject a fault) on tiny
images with the tiny test weights.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from bsafusion.errors import InputError
from bsafusion.inference.fuser import Fuser, fuse_files
from bsafusion.io import read_slice, write_image
from bsafusion.phantom import phantom_pair

pytestmark = pytest.mark.usefixtures("one_torch_thread")

KINDS = ("fused.png", "aligned.png", "field.nii.gz", "panel.png")
TIMEOUT_S = 120

# FAULT=kill|term: the process sends itself that signal at its 2nd image write (one output
# staged, the others not). FAULT=race: both runs wait for each other before publishing, then
# run A renames slowly from the start and run B fast after a pause (PACE="pause,per rename"),
# so unserialised publications would leave B's first files and A's last ones.
DRIVER = textwrap.dedent("""
    import os, signal, sys, time
    from pathlib import Path
    import SimpleITK as sitk
    from bsafusion import io
    from bsafusion.cli import main

    fault, writes = os.environ.get("FAULT", ""), []
    if fault in ("kill", "term"):
        write = sitk.WriteImage
        def faulty(*args, **kwargs):
            writes.append(args[1])
            if len(writes) == 2:
                os.kill(os.getpid(), signal.SIGKILL if fault == "kill" else signal.SIGTERM)
                time.sleep(5)
            return write(*args, **kwargs)
        sitk.WriteImage = faulty
    if fault == "race":
        publish, replace, barrier = io._publish, os.replace, Path(os.environ["BARRIER"])
        pause, per_rename = map(float, os.environ["PACE"].split(","))
        def slow_replace(*args, **kwargs):
            time.sleep(per_rename)
            replace(*args, **kwargs)
        def together(stage, folder, last):
            if folder.name == os.environ["OUT_NAME"]:
                (barrier / os.environ["RUN"]).touch()
                deadline = time.time() + 60
                while len(list(barrier.iterdir())) < 2 and time.time() < deadline:
                    time.sleep(0.01)
                time.sleep(pause)
            return publish(stage, folder, last)
        io._publish, io.os.replace = together, slow_replace
    sys.exit(main(sys.argv[1:]))
""")


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    """Two CT pairs whose moving images share a file name (so their outputs share names)."""
    root = tmp_path_factory.mktemp("pairs")
    files = {}
    for run, seed in (("A", 1), ("B", 7)):
        ct = phantom_pair("CT", (64, 64), seed=seed)
        (root / run).mkdir()
        files[f"mri_{run}"] = write_image(ct.mri, root / run / "mri.png")
        files[f"ct_{run}"] = write_image(ct.other, root / run / "ct.png")
    return files


def _run(pair: dict, weights: str, out: Path, run: str = "A", fault: str = "", limit: int | None = None,
         env: dict | None = None, wait: bool = True):
    argv = [sys.executable, "-c", DRIVER, "fuse", "--fixed", str(pair[f"mri_{run}"]), "--moving",
            str(pair[f"ct_{run}"]), "--modality", "CT", "--weights", weights, "--device", "cpu",
            "--no-progress", "--out", str(out)]

    def limits() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "FAULT": fault, "OMP_NUM_THREADS": "1", **(env or {})},
                               preexec_fn=limits if limit else None)
    if not wait:
        return process
    stdout, stderr = process.communicate(timeout=TIMEOUT_S)
    return process.returncode, stdout, stderr


def _visible(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) if out.exists() else []


def _hidden(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith(".")) if out.exists() else []


def _assert_complete(out: Path) -> None:
    assert _visible(out) == sorted(f"ct_{kind}" for kind in KINDS)
    assert _hidden(out) == []
    assert read_slice(out / "ct_fused.png").shape == (64, 64)
    field = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "ct_field.nii.gz")))
    assert field.shape == (64, 64, 2) and np.isfinite(field).all()


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_full_disk_fails_cleanly_and_a_rerun_recovers(pair, tiny_weights, tmp_path):
    """Every file over 16 kB fails half-way (RLIMIT_FSIZE: EFBIG, as a full disk gives ENOSPC)."""
    out = tmp_path / "out"
    code, _, stderr = _run(pair, tiny_weights["CT"], out, limit=16_000)
    line = _one_error_line(stderr)
    assert code == 2 and line.startswith("bsafusion fuse: error: ") and "cannot write" in line, stderr
    assert _visible(out) == [] and _hidden(out) == []
    code, _, stderr = _run(pair, tiny_weights["CT"], out)
    assert code == 0, stderr
    _assert_complete(out)


def test_writer_stopping_half_way_without_an_error_is_caught(pair, tiny_weights, tmp_path, monkeypatch):
    """ITK's gzip writer can stop at a full disk without raising: the file reads as valid zeros."""
    write = sitk.WriteImage

    def truncating(image, path, *args):
        write(image, path, *args)
        if str(path).endswith(".nii.gz"):
            os.truncate(path, os.path.getsize(path) // 2)

    out = tmp_path / "out"
    fuser = Fuser("CT", tiny_weights["CT"], "cpu")
    fuse_files(pair["mri_B"], pair["ct_B"], fuser, out)
    before = {name: (out / name).read_bytes() for name in _visible(out)}
    monkeypatch.setattr(sitk, "WriteImage", truncating)
    with pytest.raises(InputError, match=r"ct_field\.nii\.gz: cannot write image .*disk full"):
        fuse_files(pair["mri_A"], pair["ct_A"], fuser, out)
    assert {name: (out / name).read_bytes() for name in _visible(out)} == before
    assert _hidden(out) == []


@pytest.mark.parametrize("fault, code", [("kill", -signal.SIGKILL), ("term", 130)])
def test_signal_mid_write_publishes_nothing_and_a_rerun_recovers(pair, tiny_weights, tmp_path, fault, code):
    out = tmp_path / "out"
    returncode, _, stderr = _run(pair, tiny_weights["CT"], out, fault=fault)
    assert returncode == code, stderr
    assert _visible(out) == []
    if fault == "term":  # unwound: the staging folder is gone too
        assert _hidden(out) == [] and "interrupted" in _one_error_line(stderr)
    else:  # killed: its staging folder stays until the next run into the folder removes it
        assert len(_hidden(out)) == 1
    returncode, _, stderr = _run(pair, tiny_weights["CT"], out)
    assert returncode == 0, stderr
    _assert_complete(out)


def _arrays(folder: Path) -> dict[str, np.ndarray]:
    return {kind: sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"ct_{kind}"))).astype(float) for kind in KINDS}


def test_two_concurrent_runs_into_one_folder_leave_one_complete_set(pair, tiny_weights, tmp_path):
    references = {}
    for run in "AB":
        assert _run(pair, tiny_weights["CT"], tmp_path / f"ref_{run}", run=run)[0] == 0
        references[run] = _arrays(tmp_path / f"ref_{run}")
    out, barrier = tmp_path / "shared", tmp_path / "barrier"
    barrier.mkdir()
    processes = [_run(pair, tiny_weights["CT"], out, run=run, fault="race", wait=False,
                      env={"BARRIER": str(barrier), "RUN": run, "OUT_NAME": out.name, "PACE": pace})
                 for run, pace in (("A", "0,0.3"), ("B", "0.4,0.05"))]
    for process in processes:
        _, stderr = process.communicate(timeout=TIMEOUT_S)
        assert process.returncode == 0, stderr
    _assert_complete(out)
    found = _arrays(out)
    origin = {kind: min("AB", key=lambda run: np.abs(found[kind] - references[run][kind]).mean()) for kind in KINDS}
    assert len(set(origin.values())) == 1, f"outputs mixed from both runs: {origin}"
