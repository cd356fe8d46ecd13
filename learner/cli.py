"""The `cyclr` command line: `cyclr demo` (and the reproductions). `cyclr --help` and `cyclr <command> --help` show
every option with its default; `cyclr --version`.

Exit status: 0 done; 1 an error the message explains (missing data set, a bad value found once running, a missing
optional package); 2 a bad command line (argparse: unknown option, a value out of range, no CUDA for --device
cuda), before anything runs; 130 interrupted with Ctrl-C."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _save_figure(fig, path: Path) -> None:
    """Save `fig` as a PNG, atomically: a symbolic link planted at `path` is replaced, never written through."""
    import matplotlib.pyplot as plt

    from ..data.state import atomic_write

    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)


def _save_csv(frame, path: Path) -> None:
    """Write a pandas frame as CSV, atomically (as _save_figure)."""
    from ..data.state import atomic_write

    atomic_write(path, lambda f: frame.to_csv(f, index=False, encoding="utf-8"))


def demo(args) -> int:
    """The mission's flow: find the learning rate (plot saved), then train one cycle at the valley suggestion (or
    --max-lr), and write the schedule, loss, metrics and LR-finder plots and the histories."""
    import matplotlib

    matplotlib.use("Agg")
    import torch

    from ..data.fashion_mnist import fashion_mnist
    from .learner import Learner
    from .metrics import accuracy
    from .models import lenet
    from .optimizer import sgd

    if args.threads is not None:
        torch.set_num_threads(args.threads)  # on a busy 2-core machine, 1 thread trains LeNet several times faster
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dls = fashion_mnist(bs=args.bs, seed=args.seed, n_train=args.n_train, n_valid=args.n_valid)
    learn = Learner(lenet(), dls, torch.nn.CrossEntropyLoss(), opt_func=sgd, metrics=[accuracy], device=args.device)

    finder = learn.lr_find(num_it=args.num_it)  # leaves the model, optimizer and RNGs as they were
    if args.max_lr is not None:
        max_lr, source = args.max_lr, "--max-lr"
    else:
        max_lr, source = finder.suggestions["valley"].lr, "the valley suggestion"
    if learn.is_main_process:
        print(finder)
        print(f"fit_one_cycle({args.epochs}, max_lr={max_lr:.4g}) from {source}")
    learn.fit_one_cycle(args.epochs, max_lr)
    if not learn.is_main_process:
        return 0  # launched by torchrun: rank 0 writes the plots and history of the whole job

    _save_figure(finder.plot(), out / "lr_find.png")
    _save_csv(_lr_find_frame(finder), out / "lr_find.csv")
    _save_csv(learn.recorder.to_df("batches"), out / "history_batches.csv")
    _save_csv(learn.recorder.to_df("epochs"), out / "history_epochs.csv")
    _save_figure(learn.recorder.plot_loss(), out / "loss.png")
    _save_figure(learn.recorder.plot_sched(), out / "schedule.png")
    _save_figure(learn.recorder.plot_metrics(), out / "metrics.png")
    final = learn.recorder.epoch_rows[-1]
    print(f"valid accuracy after {args.epochs} epochs of one cycle at max_lr={max_lr:.4g}: {final['accuracy']:.4f}")
    print(f"plots (lr_find, schedule, loss, metrics) and histories written to {out.resolve()}")
    return 0


def _lr_find_frame(finder):
    """The LR-finder curve with its suggestions, one row per iteration."""
    import pandas as pd

    frame = pd.DataFrame({"lr": finder.lrs, "loss": finder.losses, "smooth_loss": finder.smooth_losses,
                          "centred_loss": finder.centred_losses})
    frame["suggestion"] = ""
    for s in finder.suggestions.values():  # `minimum` is read at an index but suggests a tenth of that lr
        frame.loc[s.index, "suggestion"] = " ".join(filter(None, [frame.loc[s.index, "suggestion"], s.name]))
    return frame


def _experiments():
    """The repository's `experiments` package (the reproductions), imported on demand: it lives beside the library's
    folders in a clone, outside the installed `cyclr` packages, so a wheel install has no reproductions."""
    import importlib

    try:
        return importlib.import_module("experiments")
    except ModuleNotFoundError as e:
        if e.name != "experiments":
            raise
    folder = Path(__file__).resolve().parents[1] / "experiments"
    if not (folder / "__init__.py").is_file():
        raise SystemExit("`cyclr reproduce` runs the reproductions in the repository's experiments/ folder, which is "
                         "not part of the installed package: run it from a clone of the repository installed with "
                         "`pip install -e .`")
    sys.path.append(str(folder.parent))
    return importlib.import_module("experiments")


# The options of `cyclr reproduce` that only some experiments take: each experiment refuses the others when given.
_OPTION_USERS = {"--epochs": ("d2l", "averaging"), "--epoch-scale": ("blog",), "--setup": ("blog",),
                 "--model": ("blog",), "--n-train": ("averaging",)}


def _options_given(args) -> list[str]:
    """The experiment-specific options given a value other than their default."""
    given = {"--epochs": args.epochs is not None, "--epoch-scale": args.epoch_scale is not None,
             "--setup": args.setup != "auto", "--model": args.model != "lenet_bn",
             "--n-train": args.n_train is not None}
    return [option for option, is_given in given.items() if is_given]


def _refuse_options_that_do_not_apply(args) -> None:
    wrong = [option for option in _options_given(args) if args.experiment not in _OPTION_USERS[option]]
    if wrong:
        where = "; ".join(f"{option} is an option of " + " and ".join(f"`cyclr reproduce {e}`"
                                                                      for e in _OPTION_USERS[option])
                          for option in wrong)
        hint = ("; the blog's runs scale their cyc_len with --epoch-scale"
                if args.experiment == "blog" and "--epochs" in wrong else "")
        raise SystemExit(f"cyclr reproduce {args.experiment}: {where}{hint}")
    if args.experiment == "lr-finder" and args.device not in (None, "cpu"):
        raise SystemExit(f"cyclr reproduce lr-finder: the study trains on the CPU only (its small tasks are "
                         f"timed there); leave out --device {args.device}")


def reproduce(args) -> int:
    _refuse_options_that_do_not_apply(args)  # before anything is imported, trained or written
    import matplotlib

    matplotlib.use("Agg")
    import torch

    rep = _experiments()

    if args.threads is not None:
        torch.set_num_threads(args.threads)  # on a busy 2-core machine, 1 thread trains LeNet several times faster
    name = args.experiment.replace("-", "_")
    out = Path(args.out or f"runs/{name}{'_quick' if args.quick else ''}")
    command = "cyclr " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["reproduce"] else None
    # Each runner's own defaults (seeds, epochs) apply where an option was not given.
    given = {"seeds": args.seeds} if args.seeds is not None else {}
    if args.epochs is not None:
        given["epochs"] = args.epochs
    if args.experiment == "d2l":
        result = rep.run_d2l(out, quick=args.quick, device=args.device, command=command, **given)
    elif args.experiment == "blog":
        result = rep.run_blog(out, epoch_scale=args.epoch_scale, quick=args.quick, setup=args.setup,
                              cpu_model=args.model, device=args.device, command=command, **given)
    elif args.experiment == "averaging":
        result = rep.run_averaging(out, quick=args.quick, n_train=args.n_train, device=args.device, command=command,
                                   **given)
    else:
        result = rep.run_lr_finder_study(out, quick=args.quick, command=command, **given)
    table = out / f"{name}_table.md"
    print(table.read_text())
    print(f"CSV results, PNG plots and {table.name} written to {Path(result['out']).resolve()}")
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cyclr")
    except PackageNotFoundError:  # run from a clone that was never installed
        return "unknown (not installed)"


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value

    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


def _device(text: str) -> str:
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, TypeError):
        raise argparse.ArgumentTypeError(f"expected a device like cpu, cuda, cuda:1 or mps, got {text!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text}: torch sees no CUDA device on this machine; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                                         f"numbered from 0")
    return text


def _add_device(p) -> None:
    p.add_argument("--device", type=_device, default=None,
                   help="where to train: cpu, cuda, cuda:1, mps; None: the GPU when there is one, else the CPU")


def build_parser() -> argparse.ArgumentParser:
    # Every --help shows every option's default (ArgumentDefaultsHelpFormatter).
    formatter = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(prog="cyclr", description="See and control your learning rate.",
                                     formatter_class=formatter,
                                     epilog="exit status: 0 done, 1 an error (the message says what to change), "
                                            "2 a bad command line, 130 interrupted (Ctrl-C)")
    parser.add_argument("--version", action="version", version=f"cyclr {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,reproduce}")

    p = sub.add_parser("demo", formatter_class=formatter,
                       help="LeNet on the real Fashion-MNIST: lr_find, then fit_one_cycle at the valley "
                            "suggestion, with plots and histories written out",
                       description="LeNet on the real Fashion-MNIST: lr_find, then fit_one_cycle at the valley "
                                   "suggestion (or --max-lr), with plots and histories written to --out")
    p.add_argument("--epochs", type=_int_at_least(1), default=3, help="length of the one cycle, in epochs")
    p.add_argument("--max-lr", type=_positive_float, default=None,
                   help="peak learning rate of the cycle; None: the LR finder's valley suggestion")
    p.add_argument("--num-it", type=_int_at_least(2), default=100, help="iterations of the LR finder's sweep")
    p.add_argument("--bs", type=_int_at_least(1), default=128,
                   help="batch size per process (under torchrun: x the processes)")
    p.add_argument("--n-train", type=_int_at_least(1), default=None,
                   help="use only the first N training images (quick runs); None: all 60000")
    p.add_argument("--n-valid", type=_int_at_least(1), default=None,
                   help="use only the first N test images (quick runs); None: all 10000")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the shuffling")
    p.add_argument("--out", default="runs/demo", help="output folder (created)")
    p.add_argument("--threads", type=_int_at_least(1), default=None,
                   help="torch.set_num_threads; None: torch's choice")
    _add_device(p)
    p.set_defaults(func=demo)

    p = sub.add_parser("reproduce", formatter_class=formatter,
                       help="re-run the d2l chapter's schedules, the blog's one-cycle experiments, the weight "
                            "averaging comparison or the LR-finder study",
                       description="re-run published learning-rate experiments: d2l (the chapter's schedules), "
                                   "blog (the one-cycle experiments), averaging (SWA, EMA and snapshot ensembles "
                                   "against plain training) or lr-finder (the finder's suggestions against a grid "
                                   "search and Optuna); CSV results, plots and a markdown table go to --out")
    p.add_argument("experiment", choices=["d2l", "blog", "averaging", "lr-finder"], help="which experiments")
    p.add_argument("--quick", action="store_true", help="a small data subset and a few epochs: a smoke test")
    p.add_argument("--out", default=None, help="output folder (created); None: runs/<experiment>[_quick]")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="one run per seed; None: 0 1 for d2l and blog, 0 1 2 for averaging and lr-finder")
    p.add_argument("--epochs", type=_int_at_least(1), default=None,
                   help="d2l: epochs per run, None: 30, the book's; averaging: epochs of every training (>= 5), "
                        "None: 10")
    p.add_argument("--epoch-scale", type=_positive_float, default=None,
                   help="blog: epochs = cyc_len x this; None: 0.2 on the CPU, 1 with --setup gpu")
    p.add_argument("--setup", choices=["auto", "cpu", "gpu"], default="auto",
                   help="blog: gpu = ResNet-56 on CIFAR-10, cpu = LeNet on Fashion-MNIST; auto picks gpu with CUDA")
    p.add_argument("--model", choices=["lenet_bn", "lenet"], default="lenet_bn",
                   help="blog, cpu setup: LeNet with batch norm or plain LeNet")
    p.add_argument("--n-train", type=_int_at_least(1), default=None,
                   help="averaging: the first N training images (the test set is whole); None: all 60000")
    p.add_argument("--threads", type=_int_at_least(1), default=None,
                   help="torch.set_num_threads; None: torch's choice")
    p.add_argument("--device", type=_device, default=None,
                   help="where to train: cpu, cuda, cuda:1, mps; None: the GPU when there is one, else the CPU "
                        "(lr-finder: the CPU only)")
    p.set_defaults(func=reproduce)
    return parser


# Errors a user can act on: their message says what to change. Anything else is a bug, shown with its traceback.
_USER_ERRORS = (ValueError, TypeError, FileNotFoundError, PermissionError, ImportError)


def main(argv: list[str] | None = None) -> int:
    """Run a command; return its exit status (0 done, 1 an error whose message says what to change, 2 a bad command
    line, from argparse, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"cyclr {args.command}: interrupted", file=sys.stderr)
        return 130
    except _USER_ERRORS as e:
        print(f"cyclr {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
