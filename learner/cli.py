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


def reproduce(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import torch

    from learner import reproduce as rep

    if args.threads is not None:
        torch.set_num_threads(args.threads)  # on a busy 2-core machine, 1 thread trains LeNet several times faster
    out = Path(args.out or f"runs/{args.experiment}{'_quick' if args.quick else ''}")
    command = "cyclr " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["reproduce"] else None
    if args.experiment == "d2l":
        if args.epoch_scale is not None or args.setup != "auto" or args.model != "lenet_bn":
            raise SystemExit("--epoch-scale, --setup and --model are options of `cyclr reproduce blog`")
        epochs = args.epochs if args.epochs is not None else rep.D2L_EPOCHS
        result = rep.run_d2l(out, seeds=args.seeds, epochs=epochs, quick=args.quick, command=command)
    else:
        if args.epochs is not None:
            raise SystemExit("--epochs is an option of `cyclr reproduce d2l`; the blog's runs scale their cyc_len "
                             "with --epoch-scale")
        result = rep.run_blog(out, seeds=args.seeds, epoch_scale=args.epoch_scale, quick=args.quick,
                              setup=args.setup, cpu_model=args.model, command=command)
    table = out / f"{args.experiment}_table.md"
    print(table.read_text())
    print(f"CSV results, PNG plots and {table.name} written to {result['out'].resolve()}")
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

    p = sub.add_parser("reproduce", help="re-run the d2l chapter's schedules or the blog's one-cycle experiments")
    p.add_argument("experiment", choices=["d2l", "blog"])
    p.add_argument("--quick", action="store_true", help="a small data subset and a few epochs: a smoke test")
    p.add_argument("--out", default=None, help="output folder (created; default runs/<experiment>[_quick])")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--epochs", type=int, default=None, help="d2l: epochs per run (default 30, the book's)")
    p.add_argument("--epoch-scale", type=float, default=None,
                   help="blog: epochs = cyc_len x this (default 0.2 on the CPU, 1 with --setup gpu)")
    p.add_argument("--setup", choices=["auto", "cpu", "gpu"], default="auto",
                   help="blog: gpu = ResNet-56 on CIFAR-10, cpu = LeNet on Fashion-MNIST; auto picks gpu with CUDA")
    p.add_argument("--model", choices=["lenet_bn", "lenet"], default="lenet_bn",
                   help="blog, cpu setup: LeNet with batch norm (default) or plain LeNet")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.set_defaults(func=reproduce)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
