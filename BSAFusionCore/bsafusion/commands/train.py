"""Train a BSFA-F model on a folder of aligned pairs (misaligned on the fly).

Example: bsafusion train --config configs/ct.yaml --set train.epochs=5 --device auto

On several GPUs or machines, start it with torchrun (one process per GPU); train.batch_size
is then the global batch, split over the processes:
torchrun --nproc_per_node 4 -m bsafusion.cli train --config configs/ct.yaml --out runs/ct
"""

from __future__ import annotations

import argparse
import contextlib
import sys

NAME = "train"
HELP = "train a model (YAML config + overrides, resumable)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file with model/loss/train sections (defaults otherwise)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value, e.g. train.lr=1e-4 (repeatable)")
    parser.add_argument("--data", help="folder of aligned pairs (train.data_root)")
    parser.add_argument("--modality", action="append", help="CT, PET or SPECT (repeatable; train.modalities)")
    parser.add_argument("--out", help="run folder for checkpoints and logs (train.out_dir)")
    parser.add_argument("--device", help="auto, cpu or cuda (train.device)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    parser.add_argument("--max-steps", type=int, help="stop after this many steps (resume later)")
    parser.add_argument("--export", metavar="WEIGHTS.pt", help="after training, write the best model as a weights file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--dist-timeout", type=float, default=None, metavar="SECONDS",
                        help="under torchrun: how long a process waits for the others before giving up "
                             "(default 600; must exceed the validation time, which the others wait through)")


def run(args: argparse.Namespace) -> int:
    from bsafusion.training import distributed
    from bsafusion.device import resolve_device
    from bsafusion.training.train import Trainer, export_weights, load_config

    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"train.data_root={args.data}")
    if args.modality:
        overrides.append(f"train.modalities=[{','.join(m.upper() for m in args.modality)}]")
    if args.out:
        overrides.append(f"train.out_dir={args.out}")
    if args.device:
        overrides.append(f"train.device={args.device}")
    config = load_config(args.config, overrides)
    group = contextlib.nullcontext()
    if distributed.launched_by_torchrun():
        timeout = distributed.DEFAULT_TIMEOUT_S if args.dist_timeout is None else args.dist_timeout
        group = distributed.process_group(resolve_device(config.train.device), timeout)
    try:
        with group:
            trainer = Trainer(config, resume=args.resume, progress=not args.no_progress)
            best = trainer.fit(args.max_steps)
    except distributed.RankLost as exc:
        print(f"bsafusion train: error: {exc}; the last checkpoint in {config.train.out_dir} is complete: "
              f"start the run again with --resume", file=sys.stderr)
        return 1
    if not trainer.world.is_main:
        return 0
    print(f"run folder: {config.train.out_dir} (step {trainer.step}/{config.train.total_steps})")
    if args.export and best.is_file():
        export_weights(config.train.out_dir, args.export, "+".join(config.train.modalities))
        print(f"weights written to {args.export}")
    return 0
