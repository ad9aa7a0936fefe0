"""Training on two CPU processes (gloo): DDP follows the single-process run, every rank holds the
same parameters, a lost rank stops the others with a clear error, and a resumed run continues
the same schedule."""

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import yaml
from test_train import TINY_MODEL

from bsafusion.model import checkpoint
from bsafusion.training.distributed import World, process_group
from bsafusion.training.train import RunConfig, Trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEPS = 4


def _config(root: Path, out: Path, **train) -> dict:
    """A tiny run of ``STEPS`` steps at global batch 4 (2 pairs per rank on two ranks)."""
    return {
        "model": TINY_MODEL,
        "train": {"data_root": str(root), "modalities": ["CT"], "val_root": None, "out_dir": str(out),
                  "crop_size": 64, "batch_size": 4, "samples_per_epoch": 8, "epochs": STEPS // 2, "lr": 1e-3,
                  "checkpoint_every": 1, "device": "cpu", "threads": 1,
                  "misalignment": {"max_rotation_deg": 5.0, "max_elastic": 8.0}, **train},
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_env(rank: int, size: int, port: int) -> dict[str, str]:
    """What torchrun tells each process."""
    return {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(size),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}


def _record_every_step(rank: int, size: int, port: int, config: dict, steps: int, out: str) -> None:
    """Rank body: join the group, train one step at a time, save the parameters after each."""
    os.environ.update(_rank_env(rank, size, port))
    with process_group(torch.device("cpu"), timeout_s=60):
        trainer = Trainer(RunConfig.from_dict(config), progress=False)
        assert trainer.world == World(rank, size, rank, grouped=True)
        for _ in range(steps):
            trainer.fit(max_steps=1)
            torch.save(trainer.model.state_dict(), Path(out) / f"rank{rank}_step{trainer.step}.pt")


def _two_ranks(config: dict, out: Path, steps: int = STEPS) -> list[list[dict[str, torch.Tensor]]]:
    """Parameters of each rank after each step, ``[rank][step]``."""
    out.mkdir(parents=True, exist_ok=True)
    mp.spawn(_record_every_step, args=(2, _free_port(), config, steps, str(out)), nprocs=2, join=True)
    return [[torch.load(out / f"rank{r}_step{s}.pt") for s in range(1, steps + 1)] for r in range(2)]


@pytest.fixture(scope="module")
def two_rank_run(phantom_root, tmp_path_factory) -> tuple[list[list[dict[str, torch.Tensor]]], Path]:
    """Per-rank, per-step parameters of an uninterrupted two-rank run, and its run folder."""
    out = tmp_path_factory.mktemp("ddp")
    return _two_ranks(_config(phantom_root, out / "run"), out / "states"), out / "run"


def _losses(run: Path) -> list[float]:
    with (run / "train_log.csv").open() as fh:
        return [float(row["total"]) for row in csv.DictReader(fh)]


def test_ranks_agree_and_follow_the_single_process_run(two_rank_run, phantom_root, tmp_path):
    states, run = two_rank_run
    config = _config(phantom_root, tmp_path / "single")
    single = Trainer(RunConfig.from_dict(config), progress=False)
    start = {k: v.clone() for k, v in single.model.state_dict().items()}
    # Adam moves each weight by up to lr a step, whatever the size of its gradient, so weights
    # whose gradients are rounding noise (the attention key biases) may differ by a few
    # hundredths of lr; half-batch gradients or unsynchronised ranks differ by about lr
    tolerance = 0.1 * config["train"]["lr"]
    for step in range(STEPS):
        single.fit(max_steps=1)
        for name, p in single.model.state_dict().items():
            assert torch.equal(states[0][step][name], states[1][step][name]), (step, name)
            torch.testing.assert_close(states[0][step][name], p, rtol=0, atol=tolerance, msg=f"{step} {name}")
    moved = [n for n, p in single.model.state_dict().items() if not torch.equal(p, start[n])]
    assert len(moved) > 0.5 * len(start)  # the comparison is between runs that learnt something
    assert _losses(run) == pytest.approx(_losses(tmp_path / "single"), rel=1e-4)  # rank 0 logs the global batch


def test_unused_and_frozen_parameters(phantom_root, tmp_path):
    # setting_a has no L_ce2, so the discriminator gets no gradient; mmff is kept fixed
    config = _config(phantom_root, tmp_path / "run", ablation="setting_a", freeze=["mmff"])
    ranks = _two_ranks(config, tmp_path / "states", steps=2)
    start = Trainer(RunConfig.from_dict(config), progress=False).model.state_dict()
    for name, p in ranks[0][-1].items():
        assert torch.equal(p, ranks[1][-1][name]), name
        if name.startswith(("mmff", "mdffr.discriminator")):
            assert torch.equal(p, start[name]), name
    assert any(not torch.equal(p, start[n]) for n, p in ranks[0][-1].items() if n.startswith("bsfa"))


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "bsafusion.cli", "train", "--no-progress", *args]


def _write_config(config: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def test_torchrun_resume_continues_the_same_schedule(two_rank_run, phantom_root, tmp_path):
    cfg = _write_config(_config(phantom_root, tmp_path / "run"), tmp_path / "tiny.yaml")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    for extra in (["--max-steps", "2"], ["--resume"]):
        done = subprocess.run([*torchrun, *_cli("--config", str(cfg), *extra)[1:]], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run folder:") == 1  # rank 0 alone reports
    payload = checkpoint.read(tmp_path / "run" / "checkpoint.pt")
    assert payload["step"] == STEPS and payload["world_size"] == 2
    for name, p in payload["state_dict"].items():
        assert torch.equal(p, two_rank_run[0][0][-1][name]), name
    steps = [int(line.split(",")[0]) for line in (tmp_path / "run" / "train_log.csv").read_text().splitlines()[1:]]
    assert steps == list(range(1, STEPS + 1))


@pytest.mark.parametrize("victim, sig", [(0, signal.SIGKILL), (1, signal.SIGKILL), (1, signal.SIGSTOP)],
                         ids=["rank0-killed", "rank1-killed", "rank1-hangs"])
def test_a_lost_rank_stops_the_other_with_a_clear_error(victim, sig, phantom_root, tmp_path):
    """A dead rank is noticed at the next collective; a hung one after --dist-timeout (10 s)."""
    out = tmp_path / "run"
    cfg = _write_config(_config(phantom_root, out, epochs=1000), tmp_path / "tiny.yaml")
    port = _free_port()
    ranks = [subprocess.Popen(_cli("--config", str(cfg), "--dist-timeout", "10"), env={**os.environ, **_rank_env(r, 2, port)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoint.pt").is_file() and time.monotonic() < deadline:
            assert all(p.poll() is None for p in ranks), ranks[0].communicate()[1][-2000:]
            time.sleep(0.2)
        time.sleep(0.5)  # into the next steps, possibly while rank 0 writes
        ranks[victim].send_signal(sig)
        lost = time.monotonic()
        _, err = ranks[1 - victim].communicate(timeout=60)
        assert time.monotonic() - lost < 30
    finally:
        for p in ranks:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert ranks[1 - victim].returncode == 1
    assert "another training process stopped answering" in err and "--resume" in err, err[-2000:]
    resumed = Trainer(RunConfig.from_dict(_config(phantom_root, out, epochs=1000)), resume=True, progress=False)
    assert resumed.step >= 1
    resumed.fit(max_steps=1)
