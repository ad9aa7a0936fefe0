"""Per-case evaluation: metric wiring, folder layout, summary statistics, failures, CLI, real data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bsafusion import io
from bsafusion.cli import main
from bsafusion.colour import split_luma
from bsafusion.deform import random_misalignment
from bsafusion.errors import InputError
from bsafusion.evaluation.evaluate import (
    FUSION_METRIC_NAMES,
    METRIC_NAMES,
    NO_REGISTRATION,
    REGISTRATION_METRIC_NAMES,
    ROW_KEYS,
    Case,
    MethodOutput,
    OutputFolder,
    case_metrics,
    case_sets,
    evaluate_folder,
    evaluate_methods,
    iter_cases,
    no_registration,
    read_csv,
    summarize,
    write_csv,
)
from bsafusion.evaluation.metrics import FUSION_METRICS, HIGHER_IS_BETTER
from bsafusion.evaluation.metrics.registration import folding_fraction, mae, ncc
from bsafusion.phantom import phantom_pair

SIZE = 64
N_CASES = 3


def _write_synthetic(root, modality: str = "CT", n: int = N_CASES):
    """Harvard-layout cases under ``root/cases`` and 'perfect' outputs under ``root/outputs``.

    Moving = truth misaligned by a known random field; outputs: aligned = the truth,
    fused = average of MRI and truth (a method that registered perfectly).
    """
    cases, outputs = root / "cases" / modality, root / "outputs" / modality
    for i in range(n):
        pair = phantom_pair(modality, (SIZE, SIZE), seed=i)
        truth = pair.other if pair.other_rgb is None else split_luma(pair.other_rgb)[0]
        moving = random_misalignment((SIZE, SIZE), seed=100 + i).apply(truth).clip(0, 1)
        io.write_image(pair.mri, cases / "MRI" / f"{i}.png")
        io.write_image(moving, cases / modality / f"{i}.png")
        io.write_image(truth, cases / f"{modality}_label" / f"{i}.png")
        io.write_image(truth, outputs / f"{modality}_align" / f"{i}.png")
        fused = 0.5 * (pair.mri + truth)
        fused_folder = "Fusion" if pair.other_rgb is None else "Fusion_GRAY"
        io.write_image(fused, outputs / fused_folder / f"{i}.png")
    return root / "cases", root / "outputs"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    _write_synthetic(root, "CT")
    return _write_synthetic(root, "PET")


def _read(path):
    return io.read_slice(path, grey=True, to_luma=True)


# --------------------------------------------------------------------------- case_metrics


def test_case_metrics_uses_label_then_aligned_then_moving_as_second_source():
    rng = np.random.default_rng(0)
    fixed, moving, fused, aligned, label = (rng.random((48, 48)) for _ in range(5))
    for kwargs, reference, expected in (
        ({"aligned": aligned, "label": label}, "label", label),
        ({"aligned": aligned}, "aligned", aligned),
        ({}, "moving", moving),
    ):
        row = case_metrics(fixed, moving, fused, **kwargs)
        assert row["fusion_reference"] == reference
        for name, metric in FUSION_METRICS.items():
            assert row[name] == pytest.approx(metric(fused, fixed, expected), rel=1e-12)
    row = case_metrics(fixed, moving, fused, aligned=aligned, label=label)
    assert row["ncc"] == pytest.approx(ncc(aligned, label)) and row["mae"] == pytest.approx(mae(aligned, label))
    assert all(math.isnan(case_metrics(fixed, moving, fused, aligned=aligned)[m]) for m in REGISTRATION_METRIC_NAMES)
    assert all(math.isnan(case_metrics(fixed, moving, fused, label=label)[m]) for m in REGISTRATION_METRIC_NAMES)


def test_case_metrics_identities():
    rng = np.random.default_rng(1)
    image, moving = rng.random((48, 48)), rng.random((48, 48))
    row = case_metrics(image, moving, fused=image, aligned=image, label=image)
    assert row["q_ssim"] == pytest.approx(1.0) and row["ncc"] == pytest.approx(1.0)
    assert row["mae"] == 0.0 and row["ssim"] == pytest.approx(1.0)
    assert row["q_abf"] == pytest.approx(FUSION_METRICS["q_abf"](image, image, image))
    assert set(METRIC_NAMES) <= set(row) and all(name in HIGHER_IS_BETTER for name in METRIC_NAMES)


def test_case_metrics_fields():
    rng = np.random.default_rng(2)
    a, b = rng.random((48, 48)), rng.random((48, 48))
    field = np.zeros((2, 48, 48))
    truth = np.zeros((2, 48, 48))
    truth[0], truth[1] = 3.0, 4.0
    row = case_metrics(a, b, a, field=field, true_field=truth)
    assert row["endpoint_error"] == pytest.approx(5.0) and row["folding_fraction"] == 0.0
    folded = np.zeros((2, 48, 48))
    folded[0] = -2.0 * np.arange(48)[None, :]  # x -> -x: every pixel folds
    assert case_metrics(a, b, a, field=folded)["folding_fraction"] == pytest.approx(folding_fraction(folded))
    assert folding_fraction(folded) > 0.9
    assert math.isnan(case_metrics(a, b, a, field=folded)["endpoint_error"])
    assert math.isnan(case_metrics(a, b, a)["folding_fraction"])


def test_case_metrics_rejects_mismatched_shapes():
    with pytest.raises(InputError):
        case_metrics(np.ones((48, 48)), np.ones((48, 48)), np.ones((46, 48)))


# --------------------------------------------------------------------------- folders


def test_evaluate_folder_rows_match_direct_computation(synthetic):
    cases_root, outputs_root = synthetic
    rows = evaluate_folder(cases_root, outputs_root, "perfect")
    assert [tuple(r) for r in rows] == [ROW_KEYS] * len(rows)
    assert [(r["modality"], r["case"], r["method"]) for r in rows] == [
        (m, str(i), method) for m in ("CT", "PET") for i in range(N_CASES) for method in ("perfect", NO_REGISTRATION)
    ]
    assert all(r["status"] == "ok" and r["error"] == "" and r["fusion_reference"] == "label" for r in rows)
    for r in rows:
        base = cases_root / r["modality"]
        fixed = _read(base / "MRI" / f"{r['case']}.png")
        moving = _read(base / r["modality"] / f"{r['case']}.png")
        label = _read(base / f"{r['modality']}_label" / f"{r['case']}.png")
        if r["method"] == "perfect":
            fused_folder = "Fusion" if r["modality"] == "CT" else "Fusion_GRAY"
            fused = _read(outputs_root / r["modality"] / fused_folder / f"{r['case']}.png")
            assert r["ncc"] == pytest.approx(1.0) and r["mae"] == 0.0  # aligned output == label
        else:
            fused = 0.5 * (fixed + moving)
            assert r["ncc"] == pytest.approx(ncc(moving, label)) and r["ncc"] < 0.99
        for name in FUSION_METRIC_NAMES:
            assert r[name] == pytest.approx(FUSION_METRICS[name](fused, fixed, label), rel=1e-9), name
        assert math.isnan(r["endpoint_error"]) and r["seconds"] >= 0


def test_evaluate_folder_options(synthetic):
    cases_root, outputs_root = synthetic
    rows = evaluate_folder(cases_root, outputs_root, "perfect", modalities=["PET"], baseline=False, limit=2)
    assert [(r["modality"], r["case"], r["method"]) for r in rows] == [("PET", "0", "perfect"), ("PET", "1", "perfect")]
    with pytest.raises(InputError, match="taken"):
        evaluate_folder(cases_root, outputs_root, NO_REGISTRATION)


def test_summary_equals_hand_computed_statistics(synthetic):
    rows = evaluate_folder(*synthetic, "perfect")
    summary = summarize(rows)
    assert [(s["modality"], s["method"]) for s in summary] == [
        ("CT", "perfect"), ("CT", NO_REGISTRATION), ("PET", "perfect"), ("PET", NO_REGISTRATION)
    ]  # fmt: skip
    for entry in summary:
        members = [r for r in rows if (r["modality"], r["method"]) == (entry["modality"], entry["method"])]
        assert entry["cases"] == N_CASES and entry["failed"] == 0
        for name in ("q_abf", "q_cv", "ncc", "mae"):
            values = [r[name] for r in members]
            assert entry[f"{name}_mean"] == pytest.approx(sum(values) / len(values), rel=1e-12)
            sample_var = sum((v - entry[f"{name}_mean"]) ** 2 for v in values) / (len(values) - 1)
            assert entry[f"{name}_std"] == pytest.approx(math.sqrt(sample_var), rel=1e-9, abs=1e-15)
            assert entry[f"{name}_n"] == N_CASES
        assert entry["endpoint_error_n"] == 0 and math.isnan(entry["endpoint_error_mean"])


def test_summary_skips_missing_values_and_single_values():
    rows = [
        {"modality": "CT", "case": "0", "method": "m", "status": "ok", "q_abf": 0.2, "ncc": math.nan},
        {"modality": "CT", "case": "1", "method": "m", "status": "ok", "q_abf": 0.4, "ncc": 0.9},
    ]
    rows = [{**{k: math.nan for k in (*METRIC_NAMES, "seconds")}, **r} for r in rows]
    (entry,) = summarize(rows)
    assert entry["q_abf_mean"] == pytest.approx(0.3) and entry["q_abf_n"] == 2
    assert entry["ncc_mean"] == 0.9 and entry["ncc_n"] == 1 and math.isnan(entry["ncc_std"])


def test_failing_method_is_recorded_for_that_case_only(synthetic):
    cases = list(iter_cases(case_sets(synthetic[0], ["CT"])))

    def flaky(case: Case) -> MethodOutput:
        if case.name == "1":
            raise RuntimeError("network diverged\non this case")
        return no_registration(case)

    def wrong_shape(case: Case) -> MethodOutput:
        return MethodOutput(fused_luma=case.fixed[:-1])

    rows = evaluate_methods(cases, {"flaky": flaky, "wrong": wrong_shape, "avg": no_registration})
    assert len(rows) == 3 * N_CASES
    status = {(r["case"], r["method"]): r for r in rows}
    failed = status[("1", "flaky")]
    assert failed["status"] == "failed" and failed["error"] == "RuntimeError: network diverged on this case"
    assert all(math.isnan(failed[m]) for m in METRIC_NAMES) and math.isnan(failed["seconds"])
    assert all(status[(str(i), "wrong")]["status"] == "failed" for i in range(N_CASES))
    for i in (0, 2):
        assert status[(str(i), "flaky")]["status"] == "ok"
        assert status[(str(i), "flaky")]["q_abf"] == status[(str(i), "avg")]["q_abf"]
    entry = {s["method"]: s for s in summarize(rows)}["flaky"]
    assert (entry["cases"], entry["failed"], entry["q_abf_n"]) == (N_CASES, 1, N_CASES - 1)
    with pytest.raises(RuntimeError, match="diverged"):
        evaluate_methods(cases, {"flaky": flaky}, errors="raise")


def test_csv_round_trip(tmp_path, synthetic):
    rows = evaluate_methods(iter_cases(case_sets(synthetic[0], ["CT"]), limit=2), {"avg": no_registration})
    path = write_csv(rows, tmp_path / "rows.csv")
    back = read_csv(path)
    assert len(back) == len(rows)
    for a, b in zip(rows, back):
        for key in ROW_KEYS:
            if isinstance(a[key], float) and math.isnan(a[key]):
                assert math.isnan(b[key]), key
            else:
                assert b[key] == a[key], key  # floats at full precision
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


# --------------------------------------------------------------------------- bad input


def test_bad_folders_raise_input_error(tmp_path, synthetic):
    cases_root, outputs_root = synthetic
    with pytest.raises(InputError, match="no such folder"):
        evaluate_folder(tmp_path / "missing", outputs_root, "x")
    with pytest.raises(InputError, match="no such folder"):
        evaluate_folder(cases_root, tmp_path / "missing", "x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no CT, PET, SPECT case folder"):
        case_sets(tmp_path / "empty")
    with pytest.raises(InputError, match="no SPECT outputs"):
        OutputFolder(outputs_root).files("SPECT")
    # a single modality's folder serves that modality only, never another one with the same names
    assert OutputFolder(outputs_root / "CT").files("CT")[0] == OutputFolder(outputs_root).files("CT")[0]
    with pytest.raises(InputError, match="no PET outputs"):
        OutputFolder(outputs_root / "CT").files("PET")


def test_case_without_output_and_size_mismatch(tmp_path):
    cases_root, outputs_root = _write_synthetic(tmp_path, "CT", n=2)
    (outputs_root / "CT" / "Fusion" / "1.png").unlink()
    with pytest.raises(InputError, match=r"1\.png: no output named '1'"):
        evaluate_folder(cases_root, outputs_root, "x")
    io.write_image(np.zeros((SIZE, SIZE + 4)), outputs_root / "CT" / "Fusion" / "1.png")
    with pytest.raises(InputError, match=r"1\.png: size 68x64 differs"):
        evaluate_folder(cases_root, outputs_root, "x")


def test_cli_bad_folder_exits_2_without_writing(tmp_path, synthetic, capsys):
    out = tmp_path / "out"
    code = main(["evaluate", "--cases", str(tmp_path / "nope"), "--outputs", str(synthetic[1]),
                 "--out", str(out), "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "nope: no such folder" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_writes_report_and_prints_tables(tmp_path, synthetic, capsys):
    out = tmp_path / "out"
    code = main(["evaluate", "--cases", str(synthetic[0]), "--outputs", str(synthetic[1]), "--name", "perfect",
                 "--out", str(out), "--modality", "ct", "--no-progress", "--no-plots"])  # fmt: skip
    stdout = capsys.readouterr().out
    assert code == 0
    assert "### CT (3 cases)" in stdout and "| perfect | 3 |" in stdout and NO_REGISTRATION in stdout
    assert "PET" not in stdout
    assert {p.name for p in out.iterdir()} == {"per_case.csv", "summary.csv", "report.md"}
    assert len(read_csv(out / "per_case.csv")) == 2 * N_CASES
    assert "bsafusion evaluate --cases" in (out / "report.md").read_text(encoding="utf-8")


# --------------------------------------------------------------------------- real data


@pytest.mark.shared_data
def test_published_outputs_smoke(harvard_dir):
    rows = evaluate_folder(harvard_dir / "test_unaligned", harvard_dir / "official_results", "published",
                           modalities=["CT", "PET"], limit=2)  # fmt: skip
    assert len(rows) == 2 * 2 * 2 and all(r["status"] == "ok" and r["fusion_reference"] == "label" for r in rows)
    by_key = {(r["modality"], r["case"], r["method"]): r for r in rows}
    for modality, case in {(r["modality"], r["case"]) for r in rows}:
        published, unregistered = by_key[(modality, case, "published")], by_key[(modality, case, NO_REGISTRATION)]
        # the published network aligns better than doing nothing and keeps more edges
        assert published["ncc"] > unregistered["ncc"] and published["q_abf"] > unregistered["q_abf"]
        assert 0 < published["q_abf"] < 1 and 0 < published["q_ssim"] < 1 and published["q_cv"] > 0
