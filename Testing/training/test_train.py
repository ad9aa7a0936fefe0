"""Training: config handling, determinism, bit-for-bit resume, learning on synthetic pairs."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from bsafusion.model import checkpoint
from bsafusion.cli import main
from bsafusion.training.data import AlignedPairDataset
from bsafusion.errors import InputError
from bsafusion.training.losses import LossWeights, compute_losses
from bsafusion.evaluation.metrics.registration import ncc
from bsafusion.model import BSFAF
from bsafusion.training.train import RunConfig, Trainer, load_config

TINY_MODEL = {"img_size": 64, "channels": 8, "embed_dim": 32, "patch_size": 8, "heads": 2,
              "pyramid_channels": [16, 12, 8]}


def _config(root: Path, out: Path, **train) -> RunConfig:
    data = {
        "model": TINY_MODEL,
        "train": {"data_root": str(root), "modalities": ["CT"], "val_root": None, "out_dir": str(out),
                  "crop_size": 64, "batch_size": 2, "samples_per_epoch": 4, "epochs": 3, "lr": 1e-3,
                  "checkpoint_every": 2, "device": "cpu",
                  "misalignment": {"max_rotation_deg": 5.0, "max_elastic": 8.0}, **train},
    }
    return RunConfig.from_dict(data)


def test_overrides_and_unknown_keys(tmp_path):
    cfg = load_config(None, ["train.lr=3e-4", "loss.gradient=3", "model.channels=8"])
    assert cfg.train.lr == 3e-4 and cfg.loss.gradient == 3 and cfg.model.channels == 8
    with pytest.raises(InputError):
        load_config(None, ["train.nonsense=1"])
    with pytest.raises(InputError):
        load_config(None, ["lr=1"])
    with pytest.raises(InputError):
        load_config(tmp_path / "missing.yaml")


def test_setting_a_switches_off_exchange_and_ce2():
    cfg = load_config(None, ["train.ablation=setting_a"])
    assert cfg.model.exchange is False and cfg.loss.ce2 == 0
    cfg_b = load_config(None, ["train.ablation=setting_b"])
    assert cfg_b.model.exchange is False and cfg_b.loss.ce2 > 0


def test_batches_are_a_pure_function_of_the_step(phantom_root, tmp_path):
    t1 = Trainer(_config(phantom_root, tmp_path / "a"), progress=False)
    t2 = Trainer(_config(phantom_root, tmp_path / "b"), progress=False)
    b5 = t1.batch_for_step(5)
    t1.batch_for_step(0)
    assert torch.equal(b5["moving"], t2.batch_for_step(5)["moving"])
    assert not torch.equal(b5["moving"], t2.batch_for_step(4)["moving"])


def test_resume_continues_bit_for_bit(phantom_root, tmp_path):
    straight = Trainer(_config(phantom_root, tmp_path / "straight"), progress=False)
    straight.fit()
    interrupted = Trainer(_config(phantom_root, tmp_path / "resumed"), progress=False)
    interrupted.fit(max_steps=2)
    resumed = Trainer(_config(phantom_root, tmp_path / "resumed"), resume=True, progress=False)
    assert resumed.step == 2
    resumed.fit()
    for (name, p), q in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(p, q), name
    rows = (tmp_path / "resumed" / "train_log.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + straight.config.train.total_steps  # no duplicated steps after resume


def test_resume_refuses_another_configuration(phantom_root, tmp_path):
    Trainer(_config(phantom_root, tmp_path / "run"), progress=False).fit(max_steps=2)
    with pytest.raises(InputError):
        Trainer(_config(phantom_root, tmp_path / "run", lr=5e-4), resume=True, progress=False)


def test_save_load_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    model = BSFAF(RunConfig.from_dict({"model": TINY_MODEL}).model).eval()
    checkpoint.save(tmp_path / "w.pt", model, "CT")
    loaded = checkpoint.load_model(tmp_path / "w.pt", "CT")
    a, b = torch.rand(1, 1, 64, 64), torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(a, b).fused, loaded(a, b).fused)


def test_bad_weights_are_input_errors(tmp_path):
    model = BSFAF(RunConfig.from_dict({"model": TINY_MODEL}).model)
    checkpoint.save(tmp_path / "ct.pt", model, "CT")
    with pytest.raises(InputError, match="trained for CT"):
        checkpoint.load_model(tmp_path / "ct.pt", "PET")
    (tmp_path / "junk.pt").write_bytes(b"not a zip file")
    with pytest.raises(InputError, match="junk.pt"):
        checkpoint.load_model(tmp_path / "junk.pt")
    payload = checkpoint.read(tmp_path / "ct.pt")
    payload["model_config"]["channels"] = 12  # the state dict no longer fits
    torch.save(payload, tmp_path / "mismatch.pt")
    with pytest.raises(InputError, match="architecture"):
        checkpoint.load_model(tmp_path / "mismatch.pt")
    with pytest.raises(InputError, match="not found"):
        checkpoint.load_model(tmp_path / "absent.pt")


def _held_back_ncc(model, pairs):
    scores = []
    with torch.no_grad():
        for item in pairs:
            out = model(item["fixed"][None], item["moving"][None])
            scores.append(ncc(out.warped_moving[0, 0].numpy(), item["moving_aligned"][0].numpy()))
    return float(np.mean(scores))


SHIFTS = {"max_rotation_deg": 2.0, "max_scale": 0.0, "max_shear": 0.0, "max_translation": 0.08, "max_elastic": 4.0}


def test_few_steps_lower_the_loss_and_improve_registration(phantom_root, tmp_path):
    torch.manual_seed(0)
    cfg = _config(phantom_root, tmp_path / "learn", epochs=40, samples_per_epoch=8, batch_size=4, lr=1e-3,
                  checkpoint_every=1000, misalignment=SHIFTS)
    trainer = Trainer(cfg, progress=False)
    held = AlignedPairDataset(phantom_root, "CT", size=64, augment=False, seed=99, misalignment=SHIFTS)
    pairs = [held[i] for i in range(4)]
    before_ncc = _held_back_ncc(trainer.model.eval(), pairs)
    batch = trainer.batch_for_step(0)
    with torch.no_grad():
        before_loss = float(compute_losses(trainer.model(batch["fixed"], batch["moving"]), batch, LossWeights())["total"])
    trainer.fit()
    with torch.no_grad():
        after_loss = float(compute_losses(trainer.model.eval()(batch["fixed"], batch["moving"]), batch, LossWeights())["total"])
    after_ncc = _held_back_ncc(trainer.model, pairs)
    assert after_loss < 0.8 * before_loss
    assert after_ncc > before_ncc + 0.02, (before_ncc, after_ncc)


def test_cli_train_runs_and_exports(phantom_root, tmp_path):
    out = tmp_path / "cli"
    code = main(["train", "--data", str(phantom_root), "--modality", "CT", "--out", str(out), "--device", "cpu",
                 "--no-progress", "--export", str(tmp_path / "w.pt"),
                 *[f"--set=model.{k}={v}" for k, v in TINY_MODEL.items()],
                 "--set=train.val_root=null", "--set=train.epochs=1", "--set=train.samples_per_epoch=2",
                 "--set=train.batch_size=2", "--set=train.crop_size=64"])
    assert code == 0
    assert (out / "checkpoint.pt").is_file() and (out / "train_log.csv").is_file()


def test_cli_train_bad_data_exits_2(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_freeze_keeps_the_named_blocks_fixed(phantom_root, tmp_path):
    trainer = Trainer(_config(phantom_root, tmp_path / "frozen", freeze=["bsfa", "encoder"]), progress=False)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit(max_steps=2)
    after = trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(("bsfa", "encoder")))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("mmff"))
    with pytest.raises(InputError, match="nothing to train"):
        Trainer(_config(phantom_root, tmp_path / "all", freeze=[""]), progress=False)


def test_warm_up_then_cosine():
    from bsafusion.training.train import _lr_factor

    assert _lr_factor(0, 100, 0.05, warmup=10) == pytest.approx(0.1)
    assert _lr_factor(9, 100, 0.05, warmup=10) == pytest.approx(1.0)
    assert _lr_factor(10, 100, 0.05, warmup=10) < 1.0
    assert _lr_factor(100, 100, 0.05, warmup=10) == pytest.approx(0.05)
    assert _lr_factor(0, 100, 0.05) == pytest.approx(1.0)


def test_validation_is_fixed_and_scores_the_drawn_field(phantom_root):
    from bsafusion.training.train import validate

    torch.manual_seed(0)
    model = BSFAF(RunConfig.from_dict({"model": TINY_MODEL}).model)
    first = validate(model, phantom_root, ["CT"], torch.device("cpu"), max_cases=3)
    assert first == validate(model, phantom_root, ["CT"], torch.device("cpu"), max_cases=3)
    # an untrained model keeps the identity: its endpoint error is that of no registration
    assert first["CT_epe_unregistered"] > 1.0
    assert first["CT_epe"] == pytest.approx(first["CT_epe_unregistered"], abs=0.02)
    assert first["CT_ncc"] == pytest.approx(first["CT_ncc_unregistered"], abs=0.01)
    other_seed = validate(model, phantom_root, ["CT"], torch.device("cpu"), max_cases=3, seed=5)
    assert other_seed["CT_epe_unregistered"] != first["CT_epe_unregistered"]


def test_cpu_time_and_validation_are_logged_and_survive_resume(phantom_root, tmp_path):
    cfg = _config(phantom_root, tmp_path / "cpu", val_root=str(phantom_root), val_max_cases=2)
    Trainer(cfg, progress=False).fit(max_steps=2)
    resumed = Trainer(cfg, resume=True, progress=False)
    assert resumed.cpu_seconds > 0
    resumed.fit()
    with (tmp_path / "cpu" / "val_log.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [2, 4, 6]
    minutes = [float(r["cpu_minutes"]) for r in rows]
    assert minutes == sorted(minutes) and minutes[0] > 0
    assert checkpoint.read(tmp_path / "cpu" / "best.pt")["metadata"]["cpu_minutes"] > 0


def test_resume_accepts_a_checkpoint_written_before_an_option_existed(phantom_root, tmp_path):
    cfg = _config(phantom_root, tmp_path / "old")
    Trainer(cfg, progress=False).fit(max_steps=2)
    payload = checkpoint.read(tmp_path / "old" / "checkpoint.pt")
    del payload["run_config"]["train"]["warmup_steps"]  # as written before the option existed
    torch.save(payload, tmp_path / "old" / "checkpoint.pt")
    assert Trainer(cfg, resume=True, progress=False).step == 2
