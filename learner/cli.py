"""The `cyclr` command line: `cyclr demo` (and the reproductions)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def demo(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import torch

    from data.fashion_mnist import fashion_mnist
    from learner import Learner, accuracy, lenet

    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dls = fashion_mnist(bs=args.bs, seed=args.seed)
    learn = Learner(lenet(), dls, torch.nn.CrossEntropyLoss(), lr=args.lr, metrics=[accuracy])
    learn.fit(args.epochs)

    learn.recorder.to_df("batches").to_csv(out / "history_batches.csv", index=False)
    learn.recorder.to_df("epochs").to_csv(out / "history_epochs.csv", index=False)
    _save_figure(learn.recorder.plot_loss(), out / "loss.png")
    _save_figure(learn.recorder.plot_sched(), out / "schedule.png")
    _save_figure(learn.recorder.plot_metrics(), out / "metrics.png")
    final = learn.recorder.epoch_rows[-1]
    print(f"valid accuracy after {args.epochs} epochs: {final['accuracy']:.4f}")
    print(f"plots and history written to {out.resolve()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cyclr", description="See and control your learning rate.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="LeNet on the real Fashion-MNIST, with plots and history written out")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--bs", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/demo", help="output folder (created)")
    p.set_defaults(func=demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
