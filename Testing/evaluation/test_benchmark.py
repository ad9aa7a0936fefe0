"""`bsafusion benchmark`: methods, outputs, tables against the CSV, failures, selection, determinism, CLI.

One tiny Harvard-layout set (phantom pairs misaligned by known random fields, 64x64, with labels;
2 CT cases, 1 PET case with colour) and tiny untrained models as weights. The full run (every
method family) is made once per module; the classical registration runs on 3 cases there and
on 2 in the determinism run.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from bsafusion.inference.fuser import Fuser

from bsafusion import io
from bsafusion.model import checkpoint
from bsafusion.evaluation.baselines import FUSION_RULES
from bsafusion.evaluation.benchmark import (
    OURS,
    PUBLISHED,
    ClassicalRegistration,
    TwoStage,
    as_written,
    run_benchmark,
    weights_file,
)
from bsafusion.cli import main
from bsafusion.colour import split_luma
from bsafusion.deform import random_misalignment
from bsafusion.errors import InputError
from bsafusion.evaluation.evaluate import (
    FUSION_METRIC_NAMES,
    METRIC_NAMES,
    Case,
    MethodOutput,
    OutputFolder,
    case_metrics,
    no_registration,
    read_csv,
    summarize,
)
from bsafusion.model import BSFAF, ModelConfig
from bsafusion.phantom import phantom_pair
from bsafusion import modality as modalities
from bsafusion.evaluation.report import METRIC_LABELS, format_value

from report_tables import parse_report_tables  # Testing/report_tables.py

SIZE = 64
CASES = {"CT": 2, "PET": 1}
RULE_NAMES = ("average", "max-abs", "Laplacian")
MISSING = ("CT", "1")  # no published output for this case


def _tiny_model() -> BSFAF:
    config = ModelConfig(img_size=64, channels=8, embed_dim=32, patch_size=8, heads=2, pyramid_channels=(16, 12, 8))
    return BSFAF(config)


def _write_cases(root):
    """Cases (moving = truth misaligned by a random field), published-style outputs, weights."""
    for modality, n in CASES.items():
        base = root / "cases" / modality
        for i in range(n):
            pair = phantom_pair(modality, (SIZE, SIZE), seed=i)
            truth = pair.other if pair.other_rgb is None else split_luma(pair.other_rgb)[0]
            mis = random_misalignment((SIZE, SIZE), seed=100 + i)
            io.write_image(pair.mri, base / "MRI" / f"{i}.png")
            io.write_image(mis.apply(truth).clip(0, 1), base / modality / f"{i}.png")
            io.write_image(truth, base / f"{modality}_label" / f"{i}.png")
            if pair.other_rgb is not None:
                rgb = np.moveaxis(mis.apply(np.moveaxis(pair.other_rgb, -1, 0)), 0, -1).clip(0, 1)
                io.write_image(rgb, base / f"{modality}_RGB" / f"{i}.png")
            if (modality, str(i)) != MISSING:
                io.write_image(truth, root / "published" / modality / f"{modality}_align" / f"{i}.png")
                io.write_image(0.5 * (pair.mri + truth), root / "published" / modality / "Fusion" / f"{i}.png")
    for modality in CASES:
        checkpoint.save(root / "weights" / f"bsafusion_{modality.lower()}.pt", _tiny_model(), modality)
    checkpoint.save(root / "run" / "best.pt", _tiny_model(), "CT+PET")  # a multi-modality training run
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return _write_cases(tmp_path_factory.mktemp("bench"))


@pytest.fixture(scope="module")
def full(data):
    """Every method family on every case."""
    out = data / "full"
    report = run_benchmark(data / "cases", out, weights_dir=data / "weights", ablations={"multi": data / "run"},
                           published=data / "published", seed=0, device="cpu", progress=False)
    return report, read_csv(out / "per_case.csv")


def _methods(rows):
    return list(dict.fromkeys(r["method"] for r in rows))


def _image(path):
    return io.read_slice(path, grey=True, to_luma=True)


# --------------------------------------------------------------------------- outputs


def test_every_output_file_exists(full):
    report, rows = full
    out = report.parent
    assert report == out / "report.md"
    for name in ("per_case.csv", "summary.csv", "settings.json"):
        assert (out / name).is_file()
    for metric in (*FUSION_METRIC_NAMES, "ncc", "ssim", "mae", "mutual_information", "folding_fraction"):
        assert (out / f"boxplot_{metric}.png").is_file(), metric
    text = report.read_text()
    for modality, n in CASES.items():
        for case in range(n):  # fewer cases than the default three panels: every case shown
            kinds = ("panel", "checkerboard", *(("colour",) if modality == "PET" else ()))
            for kind in kinds:
                path = out / f"{kind}_{modality}_{case}.png"
                assert path.stat().st_size > 1000 and f"({path.name})" in text
    assert not list(out.glob("colour_CT_*"))  # grey CT has no colour picture
    settings = json.loads((out / "settings.json").read_text())
    assert settings["methods"] == _methods(rows) and settings["seed"] == 0
    assert settings["weights"]["Ablation: multi"] == {m: str(out.parent / "run" / "best.pt") for m in CASES}
    assert settings["refine_steps"][OURS] == {m: modalities.get(m).refine_steps for m in CASES}


def test_every_method_on_every_case(full):
    _, rows = full
    expected = [OURS, "Ablation: multi", PUBLISHED] + [f"{stage} + {rule}" for stage in
                                                       ("Classical reg", "No reg", "Oracle") for rule in RULE_NAMES]
    assert _methods(rows) == expected
    assert len(rows) == sum(CASES.values()) * len(expected)
    failed = [(r["modality"], r["case"], r["method"]) for r in rows if r["status"] != "ok"]
    assert failed == [(*MISSING, PUBLISHED)]
    ok = [r for r in rows if r["status"] == "ok"]
    assert all(r["fusion_reference"] == "label" and not math.isnan(r["q_abf"]) and r["seconds"] >= 0 for r in ok)
    oracle = [r for r in ok if r["method"].startswith("Oracle")]
    assert all(math.isnan(r["ncc"]) for r in oracle)  # no trivially perfect registration columns
    networks = [r for r in ok if r["method"] in (OURS, "Ablation: multi", "Classical reg + average")]
    assert all(not math.isnan(r["folding_fraction"]) for r in networks)


def test_two_stage_rows_score_what_the_rules_make(full, data):
    """No reg / oracle rows equal the metrics of the rule applied to the files themselves."""
    _, rows = full
    base = data / "cases" / "CT"
    fixed, moving, label = (_image(base / d / "0.png") for d in ("MRI", "CT", "CT_label"))
    by_method = {r["method"]: r for r in rows if r["modality"] == "CT" and r["case"] == "0"}
    for rule, label_name in zip(FUSION_RULES, RULE_NAMES):
        def fuse(a, b):
            return FUSION_RULES[rule](a, b).astype(np.float32)

        def stored(a, b):  # what an 8-bit PNG of the rule's output holds
            return (np.round(np.clip(fuse(a, b), 0, 1) * 255) / 255).astype(np.float32)

        expected = {
            f"No reg + {label_name}": case_metrics(fixed, moving, stored(fixed, moving), aligned=moving, label=label),
            f"Oracle + {label_name}": case_metrics(fixed, moving, stored(fixed, label), label=label),
        }
        if rule == "average":
            assert np.array_equal(no_registration(Case("CT", "0", fixed, moving)).fused_luma, fuse(fixed, moving))
        for method, metrics in expected.items():
            for name in METRIC_NAMES:
                got, want = by_method[method][name], metrics[name]
                assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want, rel=1e-12), (method, name)


def test_computed_outputs_are_scored_as_their_8_bit_file_holds_them():
    """Float noise that an 8-bit PNG rounds away must not cost a method its Q_S; the field stays."""
    rng = np.random.default_rng(0)
    fixed = np.zeros((48, 48), np.float32)
    fixed[12:36, 12:36] = rng.random((24, 24))
    label = np.roll(fixed, 2, axis=0)
    noisy = (0.5 * (fixed + label) + 1e-4 * rng.random(fixed.shape)).astype(np.float32)
    field = rng.standard_normal((2, 48, 48)).astype(np.float32)
    stored = as_written(MethodOutput(fused_luma=noisy, aligned_luma=label + 1e-4, field=field))
    assert np.array_equal(stored.fused_luma * 255, np.round(noisy * 255)) and stored.field is field
    assert (stored.fused_luma[fixed + label == 0] == 0).all()
    assert np.array_equal(stored.aligned_luma * 255, np.round((label + 1e-4) * 255))
    as_file = case_metrics(fixed, fixed, stored.fused_luma, label=label)["q_s"]
    as_float = case_metrics(fixed, fixed, noisy, label=label)["q_s"]
    assert as_file > as_float + 0.1  # the flat background counts once the noise is gone


def test_classical_time_counts_the_shared_registration_for_every_rule(full):
    _, rows = full
    for modality, n in CASES.items():
        for case in map(str, range(n)):
            seconds = [r["seconds"] for r in rows if r["modality"] == modality and r["case"] == case
                       and r["method"].startswith("Classical")]
            no_reg = max(r["seconds"] for r in rows if r["modality"] == modality and r["method"].startswith("No reg"))
            assert len(seconds) == 3 and min(seconds) > 20 * no_reg + 0.05
            assert max(seconds) < 1.5 * min(seconds)  # registration counted once in each, not twice


# --------------------------------------------------------------------------- report


def test_report_tables_equal_csv_means(full):
    report, rows = full
    text = report.read_text()
    tables = parse_report_tables(text)
    assert set(tables) == set(CASES)
    headers = {f"{METRIC_LABELS[m]} {arrow}": m for m in METRIC_NAMES for arrow in "↑↓"}
    checked = 0
    for modality, methods in tables.items():
        assert list(methods) == _methods(rows)
        for method, cells in methods.items():
            ok = [r for r in rows if r["modality"] == modality and r["method"] == method and r["status"] == "ok"]
            for header, cell in cells.items():
                metric = headers.get(header, "seconds" if header == "s/case" else None)
                if metric is None:
                    continue
                values = [r[metric] for r in ok if not math.isnan(r[metric])]
                std = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
                expected = format_value(float(np.mean(values)), std) if values else "–"
                assert cell.strip("*") == expected, (modality, method, header)
                checked += 1
    assert checked > 200
    assert tables["CT"][PUBLISHED]["Cases"] == "1 (+1 failed)"
    assert "## Failed cases" in text and f"| CT | 1 | {PUBLISHED} | InputError:" in text


def test_best_is_bold_with_lower_is_better_q_cv(full):
    report, rows = full
    table = parse_report_tables(report.read_text())["CT"]
    means = {e["method"]: e for e in summarize(rows) if e["modality"] == "CT"}
    for metric, pick in (("q_cv", min), ("q_abf", max)):
        header = next(h for h in table[OURS] if h.startswith(METRIC_LABELS[metric] + " "))
        best = pick(means, key=lambda method: means[method][f"{metric}_mean"])
        bold = [method for method, cells in table.items() if cells[header].startswith("**")]
        assert bold == [best], metric
    assert "Q_CV ↓" in table[OURS] and "s/case" in table[OURS]


def test_report_quotes_the_command(full, data):
    report, _ = full
    text = report.read_text()
    assert f"run_benchmark({str(data / 'cases')!r}, {str(data / 'full')!r}" in text
    assert "ablations={'multi':" in text and "device='cpu'" in text


# --------------------------------------------------------------------------- selection, determinism


def test_selection_and_determinism(full, data):
    """A run of a subset gives only that subset, with metrics identical to the full run's rows.

    The classical registration (seeded sampling) and the network are the nondeterministic
    candidates; their rows must match bit for bit (every column but ``seconds``).
    """
    _, full_rows = full
    out = data / "subset"
    run_benchmark(data / "cases", out, methods="ours,classical", modalities=["CT"], weights_dir=data / "weights",
                  seed=0, device="cpu", progress=False, plots=False)
    rows = read_csv(out / "per_case.csv")
    assert _methods(rows) == [OURS] + [f"Classical reg + {rule}" for rule in RULE_NAMES]
    assert {r["modality"] for r in rows} == {"CT"} and not list(out.glob("boxplot_*.png"))
    reference = {(r["case"], r["method"]): r for r in full_rows if r["modality"] == "CT"}
    for row in rows:
        same = reference[(row["case"], row["method"])]
        for key in row:
            if key != "seconds":
                assert row[key] == same[key] or (math.isnan(row[key]) and math.isnan(same[key])), key


def test_refine_steps_reach_the_networks(full, data):
    """``refine_steps`` other than the default change the CT registrations and are recorded."""
    _, full_rows = full
    out = data / "refined"
    run_benchmark(data / "cases", out, methods="ours", modalities=["CT"], weights_dir=data / "weights",
                  seed=0, device="cpu", progress=False, plots=False, refine_steps=25)
    rows = read_csv(out / "per_case.csv")
    default = {r["case"]: r["ncc"] for r in full_rows if r["modality"] == "CT" and r["method"] == OURS}
    assert any(abs(r["ncc"] - default[r["case"]]) > 1e-4 for r in rows)
    assert json.loads((out / "settings.json").read_text())["refine_steps"][OURS] == {"CT": 25}
    assert "CT 25" in (out / "report.md").read_text()


def test_default_selection_leaves_out_what_is_unavailable(data, tmp_path, monkeypatch):
    """No shipped weights here, no labels, no published folder: noreg and classical remain."""
    monkeypatch.setattr(checkpoint, "default_weights_path", lambda modality: tmp_path / "absent.pt")
    cases = tmp_path / "cases" / "CT"
    for d in ("MRI", "CT"):
        (cases / d).mkdir(parents=True)
        (cases / d / "0.png").write_bytes((data / "cases" / "CT" / d / "0.png").read_bytes())
    report = run_benchmark(tmp_path / "cases", tmp_path / "out", methods=None, device="cpu", progress=False,
                           plots=False)
    rows = read_csv(report.parent / "per_case.csv")
    assert {r["method"].split(" + ")[0] for r in rows} == {"Classical reg", "No reg"}
    assert {r["fusion_reference"] for r in rows} == {"aligned"}
    assert "left out: no shipped weights" in report.read_text()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"methods": "ours,warp"}, "unknown method"),
        ({"methods": "ablations"}, "no ablation given"),
        ({"methods": "published"}, "no folder of published outputs"),
        ({"methods": "noreg", "limit": 0}, "limit must be"),
        ({"methods": "noreg", "seed": -1}, "seed must be"),
        ({"methods": "noreg", "panel_case": "nope"}, "no evaluated case"),
        ({"methods": "ours"}, "weights"),
    ],
)
def test_input_errors(data, tmp_path, kwargs, message, monkeypatch):
    monkeypatch.setattr(checkpoint, "default_weights_path", lambda modality: tmp_path / "absent.pt")
    with pytest.raises(InputError, match=message):
        run_benchmark(data / "cases", tmp_path / "out", modalities=["CT"], progress=False, device="cpu", **kwargs)


# --------------------------------------------------------------------------- pieces


def test_multi_modality_models_load_only_for_their_modalities(data):
    assert Fuser("PET", data / "run" / "best.pt", "cpu").modality == "PET"
    assert weights_file(data / "run", "SPECT") == data / "run" / "best.pt"
    assert weights_file(data / "weights", "PET") == data / "weights" / "bsafusion_pet.pt"
    with pytest.raises(InputError, match="trained for CT\\+PET"):
        Fuser("SPECT", data / "run" / "best.pt", "cpu")
    with pytest.raises(InputError, match="trained for CT, not PET"):
        Fuser("PET", data / "weights" / "bsafusion_ct.pt", "cpu")
    with pytest.raises(InputError, match="no best.pt or bsafusion_spect.pt"):
        weights_file(data / "weights", "SPECT")


def test_shared_registration_failure_fails_each_rule_without_rerunning(monkeypatch):
    import bsafusion.evaluation.benchmark as bench

    calls = []

    def broken(fixed, moving, settings):
        calls.append(settings.seed)
        raise InputError("moving: the image is constant")

    monkeypatch.setattr(bench, "register_classical", broken)
    registration = ClassicalRegistration(seed=3)
    image = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    case = Case("CT", "x", image, image)
    for rule in FUSION_RULES:
        with pytest.raises(InputError, match="constant"):
            TwoStage("classical", rule, registration)(case)
    assert len(calls) == 1 and calls[0] == registration.settings("CT").seed == 20250101 + 3


# --------------------------------------------------------------------------- CLI


def test_cli_missing_cases_folder_exits_2(tmp_path, capsys):
    assert main(["benchmark", "--cases", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "Traceback" not in err


def test_cli_runs_and_quotes_its_command(data, tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["benchmark", "--cases", str(data / "cases"), "--out", str(out), "--methods", "noreg,oracle",
                 "--modality", "PET", "--no-plots", "--no-progress", "--panel-case", "0"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "No reg + average" in printed and "Oracle + Laplacian" in printed
    text = (out / "report.md").read_text()
    assert "bsafusion benchmark --cases" in text and "--methods noreg,oracle" in text and "--modality PET" in text
    assert (out / "panel_PET_0.png").is_file() and not list(out.glob("panel_CT_*"))


def test_panel_count_and_case_choose_the_pictures(data, tmp_path):
    out = tmp_path / "one"
    run_benchmark(data / "cases", out, methods="noreg", modalities=["CT"], panel_case="1", panel_count=1,
                  plots=False, progress=False)
    assert sorted(p.name for p in out.glob("panel_*")) == ["panel_CT_1.png"]
    with pytest.raises(InputError, match="panel_count"):
        run_benchmark(data / "cases", tmp_path / "none", methods="noreg", panel_count=0, progress=False)


def test_published_colour_files_are_read_in_colour(data, tmp_path):
    folder = tmp_path / "published"
    grey = io.read_slice(data / "published" / "PET" / "Fusion" / "0.png")
    rgb = np.stack([grey, 0.5 * grey, 0.2 * grey], axis=-1)
    io.write_image(rgb, folder / "PET" / "Fusion" / "0.png")
    io.write_image(grey, folder / "PET" / "Fusion_GRAY" / "0.png")  # what the metrics read
    io.write_image(grey, folder / "CT" / "Fusion" / "0.png")
    outputs = OutputFolder(folder)
    case = Case("PET", "0", grey, grey)
    np.testing.assert_allclose(outputs.colour(case), np.round(rgb * 255) / 255, atol=1e-6)
    assert outputs.colour(Case("CT", "0", grey, grey)) is None  # a grey file is not a colour picture
    assert outputs.colour(Case("PET", "7", grey, grey)) is None


def test_cli_rejects_a_malformed_ablation(data, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["benchmark", "--cases", str(data / "cases"), "--ablation", "no-path-here"])
    assert exc.value.code == 2 and "NAME=FILE_OR_RUN_FOLDER" in capsys.readouterr().err
