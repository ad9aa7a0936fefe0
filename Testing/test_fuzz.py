"""Bad and hostile inputs, as a demanding new user would try them, against the CLI and the API.

Every case must be refused cleanly: exit status 2, exactly one line on stderr (captured at the
file-descriptor level, so C++ warnings count too) naming the file or option and the problem, no
traceback, and an output folder that is absent or unchanged. The API cases must raise
:class:`InputError` with a one-line message naming the image.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from bsafusion.cli import main
from bsafusion.errors import InputError
from bsafusion.inference.fuser import Fuser
from bsafusion.io import write_image
from bsafusion.phantom import phantom_pair

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIDE = 48
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# ------------------------------------------------------------------------------------ inputs


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_weights) -> dict[str, Path]:
    """Good inputs the cases start from: a CT and a PET pair (PNG), an MRI volume, weights."""
    root = tmp_path_factory.mktemp("good")
    ct, pet = phantom_pair("CT", (SIDE, SIDE), seed=1), phantom_pair("PET", (SIDE, SIDE), seed=2)
    files = {"mri": root / "mri.png", "ct": root / "ct.png", "pet": root / "pet.png", "vol": root / "mri_vol.mha"}
    write_image(ct.mri, files["mri"])
    write_image(ct.other, files["ct"])
    write_image(pet.other_rgb, files["pet"])
    volume = sitk.GetImageFromArray((np.stack([ct.mri] * 8) * 1000).astype(np.float32))
    volume.SetSpacing((1.0, 1.0, 3.0))
    sitk.WriteImage(volume, str(files["vol"]))
    return {**files, "CT": Path(tiny_weights["CT"]), "PET": Path(tiny_weights["PET"])}


def _mha(path: Path, values: np.ndarray, vector: bool = False, **geometry) -> Path:
    image = sitk.GetImageFromArray(values, isVector=vector)
    for key, value in geometry.items():
        getattr(image, f"Set{key}")(value)
    sitk.WriteImage(image, str(path))
    return path


def _noise(shape=(SIDE, SIDE), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def _with_nan(shape=(SIDE, SIDE), every: bool = False) -> np.ndarray:
    values = _noise(shape)
    values[(...,) if every else (slice(0, 3),)] = np.nan
    return values


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _weights(path: Path, base: dict, edit: Callable[[dict], object]) -> Path:
    payload = torch.load(base["CT"], weights_only=True)
    torch.save(edit(payload), path)
    return path


def _set(payload: dict, **changes) -> dict:
    payload.update(changes)
    return payload


def _without_state(payload: dict) -> dict:
    payload["state_dict"].pop(next(iter(payload["state_dict"])))
    return payload


class _Payload:
    """A pickle that would run code when loaded without weights_only."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _slices(folder: Path, names: list[str], source: Path) -> Path:
    folder.mkdir()
    for name in names:
        (folder / name).write_bytes(source.read_bytes())
    return folder


def _fuse(fixed, moving, modality: str = "CT", weights: Path | None = None, *extra: str):
    return ["fuse", "--fixed", str(fixed), "--moving", str(moving), "--modality", modality,
            "--weights", str(weights), "--device", "cpu", "--no-progress", *extra]


def _vol(values: np.ndarray, **geometry) -> dict:
    return {"Spacing": (1.0, 1.0, 3.0), **geometry} if values.ndim == 3 else geometry


def _case_mha3(path: Path, values: np.ndarray, **geometry) -> Path:
    return _mha(path, values, **_vol(values, **geometry))


SHEAR_2D = (1.0, 0.3, 0.0, 1.0)  # determinant 1, not orthonormal
SHEAR_3D = (1.0, 0.3, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
SCALED_3D = (2.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.5)

# Each case: (tmp folder, good inputs) -> (argv without --out, text the line must name, problem
# regex); "OUT" in argv stands for the output folder.
Case = Callable[[Path, dict], tuple[list[str], str, str]]


def _cli(fixed=None, moving=None, modality="CT", weights=None, extra=(), named=None, problem=""):
    def build(tmp: Path, b: dict) -> tuple[list[str], str, str]:
        f = fixed(tmp, b) if callable(fixed) else b[fixed or "mri"]
        m = moving(tmp, b) if callable(moving) else b[moving or "ct"]
        w = weights(tmp, b) if callable(weights) else b[weights or modality]
        shown = named(tmp, b) if callable(named) else (named or Path(m).name)
        return _fuse(f, m, modality, w, *extra), str(shown), problem
    return build


def _vol_cli(moving, problem, fixed=None, extra=(), named=None):
    return _cli(fixed=fixed or (lambda t, b: b["vol"]), moving=moving, extra=extra, named=named, problem=problem)


CLI_CASES: dict[str, Case] = {
    # missing, empty, corrupt files
    "missing file": _cli(moving=lambda t, b: t / "nope.png", problem="not found"),
    "empty file": _cli(moving=lambda t, b: _bytes(t / "empty.png", b""), problem="empty file"),
    "truncated png": _cli(moving=lambda t, b: _bytes(t / "half.png", b["ct"].read_bytes()[:300]),
                          problem="unreadable or corrupt"),
    "text as png": _cli(moving=lambda t, b: _bytes(t / "text.png", b"hello\n"), problem="unreadable or corrupt"),
    "random nii.gz": _cli(moving=lambda t, b: _bytes(t / "rnd.nii.gz", os.urandom(2000)),
                          problem="unreadable or corrupt"),
    "broken mha header": _cli(moving=lambda t, b: _bytes(t / "bad.mha", b"ObjectType = Image\nNDims = banana\n"),
                              problem="unreadable or corrupt image file .*Cannot parse file"),
    # pixel content
    "constant fixed": _cli(fixed=lambda t, b: write_image(np.zeros((SIDE, SIDE)), t / "black.png"),
                           named="black.png", problem="constant"),
    "constant moving": _cli(moving=lambda t, b: write_image(np.full((SIDE, SIDE), 0.5), t / "grey.png"),
                            problem="constant"),
    "nan in mha": _cli(fixed=lambda t, b: _mha(t / "f.mha", _noise()), moving=lambda t, b: _mha(t / "nan.mha", _with_nan()),
                       problem="NaN"),
    "inf in mha": _cli(fixed=lambda t, b: _mha(t / "f.mha", _noise()),
                       moving=lambda t, b: _mha(t / "inf.mha", np.where(_noise() > 0.9, np.inf, _noise())),
                       problem="infinite"),
    "some nan in nii.gz": _cli(fixed=lambda t, b: _mha(t / "f.nii.gz", _noise()),
                               moving=lambda t, b: _mha(t / "nan.nii.gz", _with_nan()), problem="144 NaN"),
    "all nan in nii": _cli(fixed=lambda t, b: _mha(t / "f.nii", _noise()),
                           moving=lambda t, b: _mha(t / "nan.nii", _with_nan(every=True)), problem="2304 NaN"),
    "complex pixels": _cli(fixed=lambda t, b: _mha(t / "f.mha", _noise()),
                           moving=lambda t, b: _mha(t / "cplx.mha", (_noise() + 1j * _noise()).astype(np.complex64)),
                           problem="complex values"),
    "5 components": _cli(moving=lambda t, b: _mha(t / "five.mha", _noise((SIDE, SIDE, 5)), vector=True),
                         problem="5-component"),
    "4D image": _cli(moving=lambda t, b: _mha(t / "four.nii.gz", _noise((2, 3, SIDE, SIDE))), problem="4D"),
    "volume where 2D expected": _cli(moving=lambda t, b: _mha(t / "vol.mha", _noise((5, SIDE, SIDE))),
                                     problem="2D slice is required"),
    "2x2 pixels": _cli(fixed=lambda t, b: write_image(_noise((2, 2)), t / "f2.png"),
                       moving=lambda t, b: write_image(_noise((2, 2), 1), t / "m2.png"), named="f2.png",
                       problem="at least 16x16"),
    "15x15 pixels": _cli(fixed=lambda t, b: write_image(_noise((15, 15)), t / "f15.png"),
                         moving=lambda t, b: write_image(_noise((15, 15), 1), t / "m15.png"), named="f15.png",
                         problem="at least 16x16"),
    # geometry
    "png sizes differ": _cli(moving=lambda t, b: write_image(_noise((36, 40)), t / "small.png"), problem="same size"),
    "sheared 2D direction": _cli(fixed=lambda t, b: _mha(t / "shear.mha", _noise(), Direction=SHEAR_2D),
                                 moving=lambda t, b: _mha(t / "m.mha", _noise(seed=1)), named="shear.mha",
                                 problem="not orthonormal"),
    "no physical overlap": _cli(fixed=lambda t, b: _mha(t / "f.mha", _noise()),
                                moving=lambda t, b: _mha(t / "far.mha", _noise(seed=1), Origin=(500.0, 0.0)),
                                problem="overlaps"),
    # colour and modality
    "colour moving as CT": _cli(moving="pet", problem="colour image given as CT"),
    "colour fixed": _cli(fixed="pet", moving="ct", named="pet.png", problem="RGB where grey"),
    # folders
    "folder and file": _cli(fixed=lambda t, b: _slices(t / "MRI", ["1.png"], b["mri"]), named="MRI",
                            problem="folder of slices"),
    "empty folders": _cli(fixed=lambda t, b: _slices(t / "A", [], b["mri"]), moving=lambda t, b: _slices(t / "B", [], b["ct"]),
                          named="A", problem="no DICOM series"),
    "garbage dicom": _cli(fixed=lambda t, b: _slices(t / "D", ["x.dcm"], b["vol"]),
                          moving=lambda t, b: _slices(t / "E", ["x.dcm"], b["vol"]), named="D", problem="no DICOM series"),
    "unpaired folders": _cli(fixed=lambda t, b: _slices(t / "MRI", ["1.png", "2.png"], b["mri"]),
                             moving=lambda t, b: _slices(t / "CT", ["1.png", "3.png"], b["ct"]), named="CT",
                             problem="without a partner.*2.png"),
    # weights
    "weights missing": _cli(weights=lambda t, b: t / "none.pt", named="none.pt", problem="not found"),
    "weights folder": _cli(weights=lambda t, b: t, named=lambda t, b: t, problem="is a folder"),
    "weights text": _cli(weights=lambda t, b: _bytes(t / "w.pt", b"not weights\n"), named="w.pt",
                         problem="not a BSAFusion weights file"),
    "weights truncated": _cli(weights=lambda t, b: _bytes(t / "w.pt", b["CT"].read_bytes()[:5000]), named="w.pt",
                              problem="not a PyTorch archive"),
    "weights config banana": _cli(weights=lambda t, b: _weights(t / "w.pt", b, lambda p: _set(
        p, model_config={**p["model_config"], "img_size": "banana"})), named="w.pt", problem="malformed model_config"),
    "weights config not a table": _cli(weights=lambda t, b: _weights(t / "w.pt", b, lambda p: _set(p, model_config=[1])),
                                       named="w.pt", problem="no model_config"),
    "weights without state": _cli(weights=lambda t, b: _weights(t / "w.pt", b, lambda p: _set(p, state_dict=None)),
                                  named="w.pt", problem="no state_dict"),
    "weights missing a tensor": _cli(weights=lambda t, b: _weights(t / "w.pt", b, _without_state), named="w.pt",
                                     problem="do not match.*Missing key"),
    "weights version 99": _cli(weights=lambda t, b: _weights(t / "w.pt", b, lambda p: _set(p, version=99)),
                               named="w.pt", problem="version 99"),
    "weights a list": _cli(weights=lambda t, b: _weights(t / "w.pt", b, lambda p: [1, 2]), named="w.pt",
                           problem="not a BSAFusion weights file"),
    "weights for PET": _cli(weights="PET", named="tiny_PET.pt", problem="trained for PET"),
    "malicious pickle": _cli(weights=lambda t, b: _weights(t / "evil.pt", b, lambda p: _set(p, x=_Payload(t / "pwned"))),
                             named="evil.pt", problem="refused: holds objects other than tensors"),
    # options
    "bad device": _cli(extra=("--device", "bogus"), named="bogus", problem="unknown device"),
    "negative refine steps": _cli(extra=("--refine-steps", "-1"), named="refinement steps", problem=">= 0"),
    # output folder
    "out is a file": _cli(named="OUT", problem="is a file"),
    "out under a file": _cli(named="OUT", problem="lies under the file"),
    # volumes
    "sheared volume": _vol_cli(lambda t, b: _case_mha3(t / "shear.mha", _noise((8, SIDE, SIDE)), Direction=SHEAR_3D),
                               "not orthonormal"),
    "scaled direction": _vol_cli(lambda t, b: _case_mha3(t / "scaled.mha", _noise((8, SIDE, SIDE)), Direction=SCALED_3D),
                                 "not orthonormal"),
    "absurd spacing": _vol_cli(lambda t, b: _mha(t / "wide.mha", _noise((8, SIDE, SIDE)), Spacing=(1.0, 1.0, 400.0)),
                               "absurd voxel spacing"),
    "one-slice moving volume": _vol_cli(lambda t, b: _mha(t / "one.nii.gz", _noise((1, SIDE, SIDE))[0]),
                                        "3D volume"),
    "4D moving volume": _vol_cli(lambda t, b: _mha(t / "four.nii.gz", _noise((2, 8, SIDE, SIDE))), "4D"),
    "colour volume": _vol_cli(lambda t, b: _mha(t / "rgb.mha", _noise((8, SIDE, SIDE, 3)), vector=True,
                                                Spacing=(1.0, 1.0, 3.0)), "3-component"),
    "nan in nifti volume": _vol_cli(lambda t, b: _mha(t / "nan.nii.gz", _with_nan((8, SIDE, SIDE))), "NaN"),
    "small volume slices": _vol_cli(lambda t, b: b["vol"], "at least 16x16",
                                    fixed=lambda t, b: _case_mha3(t / "thin.mha", _noise((20, 10, 10))), named="thin.mha"),
    "volumes far apart": _vol_cli(lambda t, b: _case_mha3(t / "far.mha", (_noise((8, SIDE, SIDE)) * 1000),
                                                          Origin=(900.0, 0.0, 0.0)), "overlaps", extra=("--no-prealign",)),
}

OTHER_CASES: dict[str, Callable[[Path, dict], tuple[list[str], str, str]]] = {
    "evaluate out is a file": lambda t, b: (["evaluate", "--cases", str(t), "--outputs", str(t), "--no-progress"],
                                            "OUT", "is a file"),
    "benchmark out is a file": lambda t, b: (["benchmark", "--cases", str(t), "--no-progress"], "OUT", "is a file"),
    "evaluate cases missing": lambda t, b: (["evaluate", "--cases", str(t / "none"), "--outputs", str(t),
                                             "--no-progress"], "none", "not found|no such|missing"),
    "benchmark cases missing": lambda t, b: (["benchmark", "--cases", str(t / "none"), "--no-progress"], "none",
                                             "not found|no such|missing"),
    "evaluate limit 0": lambda t, b: (["evaluate", "--cases", str(t), "--outputs", str(t), "--limit", "0"],
                                      "--limit", "at least 1"),
}

PERMISSION_CASES = {"unreadable file", "out not writable"}


def _snapshot(folder: Path) -> dict[str, bytes] | None:
    if not folder.exists():
        return None
    if folder.is_file():
        return {"": folder.read_bytes()}
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"/" for p in sorted(folder.rglob("*"))}


def _prepare_out(name: str, tmp: Path) -> Path:
    out = tmp / "out"
    if "out is a file" in name:
        out.write_text("a file")
    elif name == "out under a file":
        (tmp / "plain").write_text("a file")
        out = tmp / "plain" / "out"
    return out


def _assert_clean_refusal(argv: list[str], named: str, problem: str, out: Path, capfd) -> str:
    before = _snapshot(out)
    code = main([*argv, "--out", str(out)])
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"bsafusion {argv[0]}: error: "), err
    assert "Traceback" not in err and "weights_only" not in err and "\x1b[" not in err
    assert (str(out) if named == "OUT" else named) in lines[0], lines[0]
    assert re.search(problem, lines[0]), lines[0]
    assert _snapshot(out) == before, "the output folder changed"
    return lines[0]


@pytest.mark.parametrize("name", list(CLI_CASES) + list(OTHER_CASES))
def test_cli_refuses_cleanly(name, base, tmp_path, capfd):
    build = CLI_CASES.get(name) or OTHER_CASES[name]
    out = _prepare_out(name, tmp_path)
    argv, named, problem = build(tmp_path, base)
    _assert_clean_refusal(argv, named, problem, out, capfd)
    assert not (tmp_path / "pwned").exists()  # the malicious pickle never ran


@pytest.mark.skipif(IS_ROOT, reason="root reads and writes regardless of permissions")
@pytest.mark.parametrize("name", sorted(PERMISSION_CASES))
def test_cli_refuses_permission_problems(name, base, tmp_path, capfd):
    locked = tmp_path / "locked"
    locked.mkdir()
    if name == "unreadable file":
        moving = locked / "ct.png"
        moving.write_bytes(base["ct"].read_bytes())
        moving.chmod(0)
        argv, named, problem, out = _fuse(base["mri"], moving, "CT", base["CT"]), "ct.png", "cannot read", tmp_path / "o"
    else:
        locked.chmod(0o500)
        argv, named, problem, out = _fuse(base["mri"], base["ct"], "CT", base["CT"]), "OUT", "not writable", locked / "o"
    try:
        _assert_clean_refusal(argv, named, problem, out, capfd)
    finally:
        locked.chmod(0o700)


def test_folder_run_reports_and_continues(base, tmp_path, capfd):
    """Documented choice: good pairs are written (each complete), bad ones named, exit status 2."""
    fixed = _slices(tmp_path / "MRI", ["1.png", "2.png", "3.png"], base["mri"])
    moving = _slices(tmp_path / "CT", ["1.png", "2.png"], base["ct"])
    (moving / "3.png").write_bytes(b"\x89PNG broken")
    out = tmp_path / "out"
    code = main([*_fuse(fixed, moving, "CT", base["CT"]), "--out", str(out)])
    captured = capfd.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "3.png" in lines[0] and "1 of 3 pairs skipped" in lines[0]
    assert "fused 2 of 3 pairs" in captured.out
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{i}_{kind}" for i in (1, 2) for kind in ("fused.png", "aligned.png", "field.nii.gz", "panel.png"))


# ------------------------------------------------------------------------------------ API


def _grey(shape=(SIDE, SIDE)) -> np.ndarray:
    return phantom_pair("CT", shape, seed=3).mri


API_CASES: dict[str, tuple[object, object, str, str]] = {
    # name: (fixed, moving, which image the message names, problem regex)
    "string array": (np.full((SIDE, SIDE), "a"), _grey(), "fixed", "numeric"),
    "object array": (np.array([[None] * SIDE] * SIDE), _grey(), "fixed", "numeric"),
    "ragged list": ([[0.1, 0.2], [0.3]], _grey(), "fixed", "ragged"),
    "None": (None, _grey(), "fixed", "numeric"),
    "complex array": (_grey() + 1j, _grey(), "fixed", "complex"),
    "complex moving": (_grey(), _grey().astype(np.complex64), "moving", "complex"),
    "2x3": (_noise((2, 3)), _noise((2, 3)), "fixed", "at least 16x16"),
    "15x15": (_noise((15, 15)), _noise((15, 15)), "fixed", "at least 16x16"),
    "uint16 range": ((_grey() * 65535).astype(np.uint16), _grey(), "fixed", r"\[0, 1\]"),
    "nan": (_with_nan(), _grey(), "fixed", "NaN"),
    "inf": (_grey(), np.where(_grey() > 0.5, np.inf, 0.1), "moving", "infinite"),
    "4D": (_noise((2, 2, SIDE, SIDE)), _grey(), "fixed", "2D"),
    "two channels": (_grey(), _noise((SIDE, SIDE, 2)), "moving", "2D"),
    "empty": (np.zeros((0, SIDE)), _grey(), "fixed", "empty"),
    "constant fixed": (np.zeros((SIDE, SIDE)), _grey(), "fixed", "constant"),
    "constant moving": (_grey(), np.full((SIDE, SIDE), 0.4), "moving", "constant"),
    "colour moving for CT": (_grey(), phantom_pair("PET", (SIDE, SIDE), seed=4).other_rgb, "moving", "colour"),
    "colour fixed": (phantom_pair("PET", (SIDE, SIDE), seed=4).other_rgb, _grey(), "fixed", "2D grey"),
}


@pytest.fixture(scope="module")
def ct_fuser(tiny_weights) -> Fuser:
    return Fuser("CT", tiny_weights["CT"], "cpu")


@pytest.mark.parametrize("name", list(API_CASES))
def test_api_refuses_cleanly(name, ct_fuser):
    fixed, moving, which, problem = API_CASES[name]
    with pytest.raises(InputError) as info:
        ct_fuser.fuse(fixed, moving)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{which}: "), message
    assert re.search(problem, message), message


def test_smallest_accepted_image_is_fused(ct_fuser):
    result = ct_fuser.fuse(_noise((16, 16)), _noise((16, 16), 1))
    assert result.fused.shape == (16, 16)


def test_malicious_pickle_is_not_a_pickle_we_would_run(tmp_path):
    """The hostile weights case is real: plain pickle would run it."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()
