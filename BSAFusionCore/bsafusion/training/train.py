"""Training of BSFA-F on aligned pairs, misaligned on the fly.

One YAML file holds three sections, ``model`` (:class:`~bsafusion.model.ModelConfig`),
``loss`` (:class:`~bsafusion.training.losses.LossWeights`) and ``train`` (:class:`TrainConfig`);
``key=value`` overrides (``train.lr=1e-4``, ``loss.gradient=1``) go on top.

Determinism and resume
----------------------
Everything random in a step is a pure function of ``(seed, epoch, step)``: which pairs form
the batch, their flips and misalignment (the dataset's ``set_epoch``), and the crop positions.
A checkpoint stores the model, optimizer and scheduler state and the step, so ``--resume``
replays exactly the schedule an uninterrupted run would have followed (on the same device and
torch build; floating-point order differs across devices).

Several processes (torchrun)
----------------------------
Under ``torchrun`` (:mod:`bsafusion.training.distributed`) the model is wrapped in
DistributedDataParallel and each step's batch, the same global batch a single process would
draw, is split evenly over the ranks: rank ``r`` takes the ``r``-th contiguous share, so its
draws are a pure function of ``(seed, epoch, step, rank)`` and ``--resume`` stays bit-for-bit
for the same number of processes. The losses are means over samples, so the averaged
gradients are those of the whole batch and the run follows the single-process one up to
floating-point order; ``train.batch_size`` is the global batch. Rank 0 alone validates,
writes checkpoints and logs; logged losses are means over the ranks and CPU time their sum.

Training crops
--------------
The network is fully convolutional with convolutional position encoding, so it trains on
``crop_size`` crops of the misaligned 256x256 pairs (4x cheaper at 128) and runs on whole
images. Crops are taken after misalignment, so the displacement statistics are those of
whole images.
"""

from __future__ import annotations

import csv
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import ConcatDataset
from tqdm import tqdm

from bsafusion.model import checkpoint
from bsafusion.config import check_known_keys
from bsafusion.training.data import HARVARD_TEST_PROFILE, VALIDATION_SEED, AlignedPairDataset, validation_pairs
from bsafusion.deform import warp
from bsafusion.device import resolve_device
from bsafusion.training.distributed import World, lost_rank_errors
from bsafusion.errors import InputError
from bsafusion.training.losses import ABLATION_LOSS_OVERRIDES, LossWeights, compute_losses
from bsafusion.model import BSFAF, ModelConfig


@dataclass(frozen=True)
class TrainConfig:
    """Schedule, data and bookkeeping of a training run.

    ``freeze`` lists parameter-name prefixes kept fixed (e.g. ``["bsfa"]`` to fine-tune the
    fusion without disturbing the registration layers).

    ``modalities`` lists the moving modalities to train on together (one model per modality
    is the paper's setting; several give a shared model to fine-tune from). ``epochs`` x
    ``samples_per_epoch`` pairs are drawn (with fresh misalignment each epoch). Validation runs
    after every epoch on the aligned pairs of ``val_root``, misaligned once and for all by
    ``val_misalignment`` with ``val_seed`` (the same pairs, the same fields at every epoch):
    checkpoints are chosen there, never on the test cases.
    """

    data_root: str = "../shared/data/harvard/train_aligned"
    modalities: tuple[str, ...] = ("CT",)
    val_root: str | None = "../shared/data/harvard/val_aligned"
    val_max_cases: int | None = None
    val_seed: int = VALIDATION_SEED
    val_misalignment: dict[str, float] = field(default_factory=lambda: dict(HARVARD_TEST_PROFILE))
    out_dir: str = "runs/ct"
    ablation: str = "full"
    crop_size: int = 128
    batch_size: int = 4
    samples_per_epoch: int = 256
    epochs: int = 20
    lr: float = 3e-4
    min_lr_ratio: float = 0.05
    warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    checkpoint_every: int = 50
    init_weights: str | None = None
    threads: int | None = None
    freeze: tuple[str, ...] = ()
    misalignment: dict[str, float] = field(default_factory=dict)

    @property
    def steps_per_epoch(self) -> int:
        return max(1, self.samples_per_epoch // self.batch_size)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs


@dataclass(frozen=True)
class RunConfig:
    """The three sections of a training configuration."""

    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossWeights = field(default_factory=LossWeights)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        t = asdict(self.train)
        t["modalities"] = list(self.train.modalities)
        t["freeze"] = list(self.train.freeze)
        return {"model": self.model.to_dict(), "loss": self.loss.to_dict(), "train": t}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        check_known_keys(data, ("model", "loss", "train"), "config sections", InputError)
        t = dict(data.get("train", {}))
        check_known_keys(t, TrainConfig, "train config keys", InputError)
        if "freeze" in t:
            t["freeze"] = tuple([t["freeze"]] if isinstance(t["freeze"], str) else t["freeze"])
        if "modalities" in t:
            mods = t["modalities"]
            t["modalities"] = tuple(m.upper() for m in ([mods] if isinstance(mods, str) else mods))
        train = TrainConfig(**t)
        try:
            model = ModelConfig.from_dict(data.get("model", {})).with_ablation(train.ablation)
            loss = LossWeights.from_dict({**data.get("loss", {}), **ABLATION_LOSS_OVERRIDES.get(train.ablation, {})})
        except ValueError as exc:
            raise InputError(str(exc)) from None
        return cls(model, loss, train)


def _parse_value(text: str) -> Any:
    """YAML scalar/list parsing, plus ``3e-4``-style floats that YAML 1.1 reads as strings."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> RunConfig:
    """Read a YAML config (or the defaults) and apply ``section.key=value`` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: config file not found")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise InputError(f"{path}: invalid YAML ({exc})") from None
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or section not in ("model", "loss", "train"):
            raise InputError(f"override {item!r} is not of the form section.key=value (section: model, loss, train)")
        data.setdefault(section, {})[name] = _parse_value(value)
    return RunConfig.from_dict(data)


def _lr_factor(step: int, total: int, min_ratio: float, warmup: int = 0) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay from 1 to ``min_ratio`` at ``total``.

    The cosine is the paper's schedule; the warm-up lets small batches use a larger peak rate
    without the first Adam steps (whose second-moment estimates are still noise) throwing the
    Transformer layers off.
    """
    if step < warmup:
        return (step + 1) / warmup
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))


def _crop_corners(count: int, shape: tuple[int, int], size: int, rng: np.random.Generator) -> list[tuple[int, int]] | None:
    """Top-left corners of ``size`` crops of ``count`` images of ``shape`` (``None``: no crop).

    Drawn for the whole global batch, so that each rank crops its share where a single
    process would have.
    """
    h, w = shape
    if size >= min(h, w):
        return None
    return [(int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))) for _ in range(count)]


def _crop(item: dict[str, Any], size: int, corner: tuple[int, int]) -> dict[str, Any]:
    y, x = corner
    return {k: (v[..., y : y + size, x : x + size] if torch.is_tensor(v) and v.ndim == 3 else v) for k, v in item.items()}


def _collate(items: list[dict[str, Any]], device: torch.device) -> dict[str, torch.Tensor]:
    batch: dict[str, torch.Tensor] = {}
    for key in items[0]:
        values = [it[key] for it in items]
        if torch.is_tensor(values[0]):
            batch[key] = torch.stack(values).to(device)
        elif isinstance(values[0], (int, np.integer)):
            batch[key] = torch.tensor(values, device=device)
    return batch


def _load_matching(model: BSFAF, state: dict[str, torch.Tensor], source: str) -> int:
    """Start from another model's parameters where names and shapes match (fine-tuning, or
    warm-starting an architecture variant); the rest keeps its fresh initialisation.

    Returns how many tensors were taken; none at all is an input error (wrong file).
    """
    own = model.state_dict()
    taken = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not taken:
        raise InputError(f"{source}: no parameter matches this architecture")
    model.load_state_dict(taken, strict=False)
    return len(taken)


class _Objective(nn.Module):
    """The network and its losses as one module.

    DistributedDataParallel then finds the unused parameters (a discriminator without L_ce2,
    a translator without its loss) by following the loss itself, not every tensor the network
    returns, and waits only for the gradients that will come.
    """

    def __init__(self, model: BSFAF, weights: LossWeights) -> None:
        super().__init__()
        self.model = model
        self.weights = weights

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return compute_losses(self.model(batch["fixed"], batch["moving"]), batch, self.weights)


class Trainer:
    """Runs (or resumes) one training run described by a :class:`RunConfig`.

    ``world`` is this process's place in a ``torchrun`` group (:meth:`World.current` by
    default: the joined process group, or a single process).
    """

    def __init__(self, config: RunConfig, resume: bool = False, progress: bool = True, world: World | None = None) -> None:
        self.config = config
        self.world = World.current() if world is None else world
        self.progress = progress and self.world.is_main
        t = config.train
        self.shard = self.world.shard(t.batch_size)
        if t.threads:
            torch.set_num_threads(t.threads)
        self.device = self.world.device(resolve_device(t.device))
        self.out_dir = Path(t.out_dir)
        self.datasets = [AlignedPairDataset(t.data_root, m, augment=True, seed=t.seed, misalignment=t.misalignment) for m in t.modalities]
        self.dataset = ConcatDataset(self.datasets)
        torch.manual_seed(t.seed)
        self.model = BSFAF(config.model).to(self.device)
        if t.init_weights:
            self.initialised_from = _load_matching(self.model, checkpoint.read(t.init_weights)["state_dict"], t.init_weights)
        # a shared module (the MFRH head lives in the encoder too) is frozen by any of its names
        frozen = {id(p) for name, p in self.model.named_parameters(remove_duplicate=False)
                  if any(name.startswith(prefix) for prefix in t.freeze)}
        for param in self.model.parameters():
            param.requires_grad_(id(param) not in frozen)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        if not trainable:
            raise InputError(f"train.freeze={list(t.freeze)} leaves nothing to train")
        self.optimizer = torch.optim.Adam(trainable, lr=t.lr, weight_decay=t.weight_decay)
        self.objective: nn.Module = _Objective(self.model, config.loss)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: _lr_factor(s, t.total_steps, t.min_lr_ratio, t.warmup_steps)
        )
        self.step = 0
        self.best_score = -math.inf
        self.cpu_seconds = 0.0  # process CPU time (all threads) spent in training and validation
        if resume:
            self._resume()
        if self.world.grouped:
            # built after resuming: its construction broadcasts rank 0's parameters and is the
            # first collective, so no rank writes a checkpoint before every rank has read it
            with lost_rank_errors():
                self.objective = DistributedDataParallel(self.objective, find_unused_parameters=True)

    # ------------------------------------------------------------------ bookkeeping
    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / "checkpoint.pt"

    def _resume(self) -> None:
        payload = checkpoint.read(self.checkpoint_path)
        saved = payload.get("run_config")
        # compared through RunConfig so that options added since the run started, at their
        # defaults, do not refuse a resume; a changed value does
        try:
            same = saved is not None and RunConfig.from_dict(saved).to_dict() == self.config.to_dict()
        except (InputError, TypeError):
            same = False
        if not same:
            raise InputError(f"{self.checkpoint_path}: the run was started with another configuration; resume with the same one")
        self.model.load_state_dict(payload["state_dict"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.step = int(payload["step"])
        self.best_score = float(payload.get("best_score", -math.inf))
        self.cpu_seconds = float(payload.get("cpu_seconds", 0.0))
        if self.world.is_main:
            self._truncate_log(self.out_dir / "train_log.csv", self.step)
            self._truncate_log(self.out_dir / "val_log.csv", self.step)

    @staticmethod
    def _truncate_log(path: Path, step: int) -> None:
        """Drop log rows written after the checkpoint, so a resumed log has no duplicates."""
        if not path.is_file():
            return
        with path.open() as fh:
            rows = list(csv.reader(fh))
        kept = [rows[0]] + [r for r in rows[1:] if int(r[0]) <= step]
        with path.open("w", newline="") as fh:
            csv.writer(fh).writerows(kept)

    def _save_checkpoint(self) -> None:
        checkpoint.save(
            self.checkpoint_path,
            self.model,
            "+".join(self.config.train.modalities),
            kind="checkpoint",
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            step=self.step,
            best_score=self.best_score,
            cpu_seconds=self.cpu_seconds,
            world_size=self.world.size,
            run_config=self.config.to_dict(),
        )

    def _log(self, name: str, row: dict[str, Any]) -> None:
        path = self.out_dir / name
        new = not path.is_file()
        with path.open("a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)

    # ------------------------------------------------------------------ data
    def batch_for_step(self, step: int) -> dict[str, torch.Tensor]:
        """This rank's share of the batch of global ``step``: a pure function of (seed, epoch, step, rank)."""
        t = self.config.train
        epoch, within = divmod(step, t.steps_per_epoch)
        for ds in self.datasets:
            ds.set_epoch(epoch)
        n = len(self.dataset)
        order_rng = np.random.default_rng([t.seed, epoch])
        repeats = math.ceil(t.samples_per_epoch / n)
        order = np.concatenate([order_rng.permutation(n) for _ in range(repeats)])
        idx = order[within * t.batch_size : (within + 1) * t.batch_size]
        items = [self.dataset[int(i)] for i in idx[self.shard]]
        corners = _crop_corners(len(idx), items[0]["fixed"].shape[-2:], t.crop_size,
                                np.random.default_rng([t.seed, epoch, within, 7]))
        if corners is not None:
            items = [_crop(item, t.crop_size, corner) for item, corner in zip(items, corners[self.shard])]
        return _collate(items, self.device)

    # ------------------------------------------------------------------ loop
    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One optimizer step on this rank's share; returns the loss terms of the global batch.

        Under DDP the backward pass averages the gradients over the ranks, so clipping and the
        update see the same (whole-batch) gradients on every rank.
        """
        self.model.train()
        use_amp = self.config.train.amp and self.device.type == "cuda"
        with lost_rank_errors():
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_amp):
                terms = self.objective(batch)
            self.optimizer.zero_grad(set_to_none=True)
            terms["total"].backward()
        if self.config.train.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.train.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        means = self.world.sum(torch.stack([v.detach().float() for v in terms.values()])) / self.world.size
        return dict(zip(terms, means.tolist()))

    def fit(self, max_steps: int | None = None) -> Path:
        """Train until the schedule ends (or ``max_steps`` more steps); returns the best weights path."""
        t = self.config.train
        main = self.world.is_main
        if main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.yaml").write_text(yaml.safe_dump(self.config.to_dict(), sort_keys=False))
        end = t.total_steps if max_steps is None else min(t.total_steps, self.step + max_steps)
        bar = tqdm(total=t.total_steps, initial=self.step, desc="train", disable=not self.progress, dynamic_ncols=True)
        running: dict[str, float] = {}
        while self.step < end:
            started, cpu_started = time.perf_counter(), time.process_time()
            terms = self.train_step(self.batch_for_step(self.step))
            self.cpu_seconds += float(self.world.sum(torch.tensor([time.process_time() - cpu_started], dtype=torch.float64)))
            if not main:
                continue
            running = {k: 0.9 * running.get(k, v) + 0.1 * v for k, v in terms.items()}
            self._log(
                "train_log.csv",
                {"step": self.step, "epoch": (self.step - 1) // t.steps_per_epoch, "lr": self.scheduler.get_last_lr()[0],
                 **terms, "seconds": time.perf_counter() - started, "cpu_minutes": self.cpu_seconds / 60},
            )
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in running.items() if k in ("total", "registration", "ssim")})
            epoch_end = self.step % t.steps_per_epoch == 0
            if epoch_end and t.val_root:
                self._validate_and_keep_best()
            if epoch_end or self.step % t.checkpoint_every == 0 or self.step == end:
                self._save_checkpoint()
        bar.close()
        self.world.barrier()  # no rank reports the run finished before rank 0 has saved it
        return self.out_dir / "best.pt"

    def _validate_and_keep_best(self) -> None:
        t = self.config.train
        cpu_started = time.process_time()
        scores = validate(self.model, t.val_root, t.modalities, self.device, t.val_max_cases,
                          seed=t.val_seed, misalignment=t.val_misalignment)
        self.cpu_seconds += time.process_time() - cpu_started
        score = float(np.mean([v for k, v in scores.items() if k.endswith("score")]))
        self._log("val_log.csv", {"step": self.step, "samples": self.step * t.batch_size,
                                  "cpu_minutes": self.cpu_seconds / 60, **scores})
        if score > self.best_score:
            self.best_score = score
            checkpoint.save(self.out_dir / "best.pt", self.model, "+".join(t.modalities),
                            metadata={"step": self.step, "cpu_minutes": self.cpu_seconds / 60,
                                      "validation": scores, "run_config": self.config.to_dict()})


@torch.no_grad()
def validate(
    model: BSFAF,
    root: str | Path,
    modalities: Iterable[str],
    device: torch.device,
    max_cases: int | None = None,
    seed: int = VALIDATION_SEED,
    misalignment: dict[str, float] | None = None,
) -> dict[str, float]:
    """Mean registration and fusion quality on aligned pairs misaligned with a fixed seed.

    ``misalignment`` defaults to :data:`~bsafusion.training.data.HARVARD_TEST_PROFILE`. Per modality:
    NCC of the aligned moving image (warped as inference warps it, border padding) against the
    truth and of the unaligned one, mean endpoint error of the field against the drawn one (and
    of the identity), the share of pairs the field brings closer to the truth, Q_AB/F of the
    fused image, and ``score`` = NCC + Q_AB/F, the quantity the best checkpoint is chosen by.
    """
    from bsafusion.evaluation.metrics import q_abf
    from bsafusion.evaluation.metrics.registration import endpoint_error, ncc

    model.eval()
    out: dict[str, float] = {}
    for mod in modalities:
        pairs = validation_pairs(root, mod, seed, misalignment)
        n = len(pairs) if max_cases is None else min(len(pairs), max_cases)
        rows = []
        for i in range(n):
            item = pairs[i]
            fixed, moving = item["fixed"][None].to(device), item["moving"][None].to(device)
            pred = model.infer(fixed, moving)
            aligned = warp(moving, pred.field_ba, padding="border")[0, 0].cpu().numpy()
            truth, unaligned = item["moving_aligned"][0].numpy(), item["moving"][0].numpy()
            true_field = item["field"].numpy()
            epe = endpoint_error(pred.field_ba[0].cpu().numpy(), true_field)
            registered, unregistered = ncc(aligned, truth), ncc(unaligned, truth)
            translated = np.nan if pred.translation is None else ncc(pred.translation[0, 0].cpu().numpy(), truth)
            rows.append((registered, unregistered, epe, endpoint_error(np.zeros_like(true_field), true_field),
                         float(registered > unregistered), q_abf(pred.fused[0, 0].cpu().numpy(), item["fixed"][0].numpy(), aligned),
                         translated))
        m = np.mean(rows, axis=0)
        out.update({f"{mod}_ncc": m[0], f"{mod}_ncc_unregistered": m[1], f"{mod}_epe": m[2],
                    f"{mod}_epe_unregistered": m[3], f"{mod}_better": m[4], f"{mod}_qabf": m[5],
                    f"{mod}_score": m[0] + m[5]})
        if pred.translation is not None:
            out[f"{mod}_translation_ncc"] = m[6]
    return {k: float(v) for k, v in out.items()}


def export_weights(run_dir: str | Path, destination: str | Path, modality: str, **metadata: Any) -> None:
    """Copy a run's best model into a small inference-only weights file (no optimizer state)."""
    payload = checkpoint.read(Path(run_dir) / "best.pt")
    model = BSFAF(ModelConfig.from_dict(payload["model_config"]))
    model.load_state_dict(payload["state_dict"])
    checkpoint.save(destination, model, modality, metadata={**payload.get("metadata", {}), **metadata})


__all__ = ["RunConfig", "TrainConfig", "Trainer", "load_config", "validate", "export_weights"]
