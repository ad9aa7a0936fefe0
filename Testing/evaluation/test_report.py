"""Report builder: every file written, table values equal the CSV means, best-in-bold direction."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from bsafusion import io
from bsafusion.evaluation.evaluate import METRIC_NAMES, ROW_KEYS, read_csv, summarize
from bsafusion.evaluation.report import METRIC_LABELS, best_methods, format_value, markdown_tables, write_report

from report_tables import parse_report_tables  # Testing/report_tables.py

METHODS = ("ours", "published", "average")


def _rows() -> list[dict]:
    """Hand-made per-case rows: two modalities, three methods; 'average' has no aligned output
    (registration metrics NaN) and one failed case; no method has a field (EPE column absent)."""
    rng = np.random.default_rng(0)
    rows = []
    offsets = {"ours": 0.1, "published": 0.0, "average": -0.2}
    for modality, n in (("CT", 4), ("PET", 5)):
        for case in range(n):
            for method in METHODS:
                row = {k: math.nan for k in (*METRIC_NAMES, "seconds")}
                row.update(modality=modality, case=str(case), method=method, status="ok", error="",
                           fusion_reference="label")  # fmt: skip
                for name in ("q_abf", "q_vif", "q_s", "q_ssim"):
                    row[name] = 0.5 + offsets[method] + 0.05 * rng.standard_normal()
                # Q_CV: 'ours' has the highest values, i.e. the worst (lower is better)
                row["q_cv"] = 500.0 + 1000.0 * offsets[method] + 10.0 * rng.standard_normal()
                if method != "average":
                    row["ncc"] = 0.9 + offsets[method] / 10 + 0.01 * rng.standard_normal()
                    row["mae"] = 0.05 - offsets[method] / 10 + 0.001 * rng.standard_normal()
                row["seconds"] = 0.1
                rows.append(row)
    failed = next(r for r in rows if r["method"] == "average" and r["modality"] == "PET" and r["case"] == "2")
    failed.update({k: math.nan for k in (*METRIC_NAMES, "seconds")}, status="failed", error="RuntimeError: boom | here",
                  fusion_reference="")  # fmt: skip
    return rows


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    rows = _rows()
    files = write_report(rows, out, title="Test report", command="bsafusion evaluate --x")
    return rows, out, files


def _mean_of(cell: str) -> tuple[float, int, bool]:
    """(mean, decimals shown, bold) of a ``mean ± std`` cell."""
    bold = cell.startswith("**")
    text = cell.strip("*").split(" ± ")[0]
    return float(text), len(text.split(".")[1]), bold


def test_every_file_is_written(report):
    rows, out, files = report
    present = ["q_abf", "q_cv", "q_vif", "q_s", "q_ssim", "ncc", "mae"]
    expected = {"per_case.csv", "summary.csv", "report.md"} | {f"boxplot_{m}.png" for m in present}
    assert {p.name for p in out.iterdir()} == expected  # no plot for metrics without values, no temporaries
    assert set(files) == {"per_case", "summary", "report"} | {f"boxplot_{m}" for m in present}
    for metric in present:
        image = io.read_slice(out / f"boxplot_{metric}.png", grey=False)
        assert image.shape[0] > 200 and image.shape[1] > 400 and image.std() > 0.05
    text = (out / "report.md").read_text(encoding="utf-8")
    assert "bsafusion evaluate --x" in text and text.count("![") == len(present)


def test_table_values_equal_csv_means(report):
    _, out, _ = report
    csv_rows = read_csv(out / "per_case.csv")
    assert [list(r) for r in csv_rows] == [list(ROW_KEYS)] * len(csv_rows)
    tables = parse_report_tables((out / "report.md").read_text(encoding="utf-8"))
    assert set(tables) == {"CT", "PET"} and all(set(t) == set(METHODS) for t in tables.values())
    checked = 0
    for modality, table in tables.items():
        for method, cells in table.items():
            ok = [r for r in csv_rows if r["modality"] == modality and r["method"] == method and r["status"] == "ok"]
            for metric in ("q_abf", "q_cv", "q_vif", "q_s", "q_ssim", "ncc", "mae"):
                cell = cells[next(h for h in cells if h.startswith(METRIC_LABELS[metric] + " "))]
                values = np.array([r[metric] for r in ok])
                if np.isnan(values).all():
                    assert cell == "–"
                    continue
                shown, decimals, _ = _mean_of(cell)
                assert shown == pytest.approx(values.mean(), abs=0.51 * 10**-decimals), (modality, method, metric)
                checked += 1
    assert checked == 2 * (3 * 5 + 2 * 2)
    assert tables["PET"]["average"]["Cases"] == "4 (+1 failed)" and tables["CT"]["ours"]["Cases"] == "4"


def test_summary_csv_equals_per_case_means(report):
    _, out, _ = report
    csv_rows = read_csv(out / "per_case.csv")
    with open(out / "summary.csv", newline="", encoding="utf-8") as handle:
        summary = list(csv.DictReader(handle))
    assert len(summary) == 2 * len(METHODS)
    for entry in summary:
        values = [r["q_cv"] for r in csv_rows
                  if (r["modality"], r["method"]) == (entry["modality"], entry["method"]) and r["status"] == "ok"]  # fmt: skip
        assert float(entry["q_cv_mean"]) == pytest.approx(np.mean(values), rel=1e-12)
        assert float(entry["q_cv_std"]) == pytest.approx(np.std(values, ddof=1), rel=1e-9)
        assert entry["endpoint_error_mean"] == "" and entry["endpoint_error_n"] == "0"


def test_best_in_bold_respects_direction(report):
    _, out, _ = report
    tables = parse_report_tables((out / "report.md").read_text(encoding="utf-8"))
    for modality, table in tables.items():
        bold = {h: [m for m, cells in table.items() if cells[h].startswith("**")] for h in table["ours"] if "↑" in h or "↓" in h}
        assert bold["Q_AB/F ↑"] == ["ours"] and bold["NCC ↑"] == ["ours"]
        assert bold["Q_CV ↓"] == ["average"]  # lowest Q_CV, although 'ours' has the highest
        assert bold["MAE ↓"] == ["ours"]
        assert all(len(v) == 1 for v in bold.values())
    assert "EPE" not in (out / "report.md").read_text(encoding="utf-8")  # column without values left out


def test_best_methods_ties_and_missing():
    entries = [
        {"method": "a", "q_cv_mean": 3.0, "q_abf_mean": 0.5},
        {"method": "b", "q_cv_mean": 2.0, "q_abf_mean": 0.5},
        {"method": "c", "q_cv_mean": math.nan, "q_abf_mean": 0.1},
    ]
    assert best_methods(entries, "q_cv") == {"b"}
    assert best_methods(entries, "q_abf") == {"a", "b"}
    assert best_methods([{"method": "a", "ncc_mean": math.nan}], "ncc") == set()


def test_failed_cases_are_listed(report):
    _, out, _ = report
    text = (out / "report.md").read_text(encoding="utf-8")
    assert "## Failed cases" in text and "| PET | 2 | average | RuntimeError: boom \\| here |" in text


def test_format_value_and_tables_without_files():
    assert format_value(0.123456, 0.01) == "0.1235 ± 0.0100"
    assert format_value(1234.56, 78.9) == "1234.6 ± 78.9"
    assert format_value(0.5) == "0.5000" and format_value(math.nan) == "–"
    text = markdown_tables(summarize(_rows()), show_time=True)
    assert text.startswith("### CT (4 cases)") and "s/case" in text and "0.1000 ± 0.0000" in text


def test_report_without_plots(tmp_path):
    files = write_report(_rows(), tmp_path, plots=False)
    assert set(files) == {"per_case", "summary", "report"}
    assert "Box plots" not in files["report"].read_text(encoding="utf-8")
    with pytest.raises(ValueError):
        write_report([], tmp_path / "empty")
