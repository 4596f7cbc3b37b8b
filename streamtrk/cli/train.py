"""``streamtrk train``: the edge classifier trained on simulated events."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from streamtrk.cli.common import strict_json, subcommand, torch_threads_argument
from streamtrk.threads import set_torch_threads


def _train_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--config", type=Path, required=True, help="training config (TOML)")
    s.add_argument("--out", type=Path, help="model directory (default: models/<config name>)")
    s.add_argument(
        "--overwrite",
        action="store_true",
        help="replace what --out holds (a directory that is not empty is refused without it)",
    )
    torch_threads_argument(s, default=None)
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


@subcommand(
    "train",
    _train_arguments,
    help="train the edge classifier on simulated events",
    description="Train the edge classifier on simulated events (or a recording) as the "
    "config file says, choose its threshold on the validation events, evaluate it, and "
    "write weights.pt, card.toml, training.png and checkpoints/ (of the best epoch and the "
    "last) into the output directory. "
    "The model is built in OUT.partial and moved to OUT when complete: an interrupted or "
    "failed run leaves OUT as it was (and its checkpoints in OUT.partial, until the next run).",
)
def _train(args: argparse.Namespace) -> int:
    import shlex
    from dataclasses import replace

    import torch

    from streamtrk.train import load_config, train

    cfg = load_config(args.config)
    out = args.out or Path("models") / cfg.name
    argv = ["streamtrk", "train", "--config", str(args.config), "--out", str(out)]
    if args.overwrite:  # the card's reproduce command, run again, replaces the model too
        argv.append("--overwrite")
    if args.torch_threads is None:
        print(f"streamtrk train: torch threads {cfg.threads} (the recipe's)", file=sys.stderr)
    else:  # the count asked for (0: this machine's), in place of the recipe's
        threads = torch.get_num_threads()
        print(f"streamtrk train: {set_torch_threads(args.torch_threads)}", file=sys.stderr)
        cfg = replace(cfg, threads=torch.get_num_threads())
        torch.set_num_threads(threads)  # train() sets cfg.threads for its run
        argv += ["--torch-threads", str(args.torch_threads)]
    card = train(
        cfg,
        out,
        config_text=args.config.read_text(encoding="utf-8-sig"),  # as load_config reads it
        command=shlex.join(argv),
        progress=not args.quiet,
        overwrite=args.overwrite,
        recipe=args.config,
    )
    summary = {
        "model": str(out),
        "threshold": card["model"]["threshold"],
        "seconds": card["training"]["seconds_total"],
        "metrics": card["metrics"],
    }
    print(strict_json(summary, indent=2, sort_keys=True))
    return 0
