"""CIFAR-10 from the JPEG edition: cyclr's in-memory loader against torchvision's ImageFolder + DataLoader.

One augmented training epoch (padding-4 random crop, horizontal flip, normalisation, bs 512) of every contender,
alternating round after round in this process; the table gives medians and the median over rounds of each
contender's time divided by the in-memory loader's time in the same round:

- in-memory:     `cyclr.data.cifar10(bs)`: decoded once, uint8 on the device, crop + flip + normalise per batch;
- imagefolder-0: `torchvision.datasets.ImageFolder` over the extracted JPEGs, `RandomCrop(32, padding=4)`,
                 `RandomHorizontalFlip`, `ToTensor`, `Normalize`, `DataLoader(shuffle=True, num_workers=0)`;
- imagefolder-2: the same with `num_workers=2` (each worker limited to `--threads` torch threads).

The decode cache is checked too: a fresh decode of the tarball against the tensors that `load_cifar10()` returns
from cyclr's disk cache (identical pixels and labels, or the script fails), and the time of each way of loading.
torchvision's ImageFolder needs files: the tarball is extracted once, to `$XDG_CACHE_HOME/cyclr/cifar10-jpg/`.

    nice .venv/bin/python benchmarks/cifar_loader.py [--rounds 3] [--n-train 50000] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import tarfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from overhead import Timer, machine, print_table  # noqa: E402

from cyclr.data.cifar10 import SHARED_TARBALL, cifar10, load_cifar10, load_image_folder  # noqa: E402
from cyclr.data.sources import cache_dir  # noqa: E402


def extracted_folder(tarball) -> str:
    """The tarball's train/ and test/ folders on disk, extracted once (a marker file says the extraction finished)."""
    target = cache_dir() / "cifar10-jpg"
    marker = target / ".extracted"
    if not marker.is_file():
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tarball) as archive:
            archive.extractall(target, filter="data")
        marker.write_text(str(tarball))
    return str(target / "train")


def check_decode_cache(tarball) -> dict[str, float]:
    """Decode the tarball afresh and compare with what the cache returns; the seconds each way takes."""
    with Timer() as cached:
        x_train, y_train, x_test, y_test = load_cifar10(root=tarball)
    with Timer() as fresh:
        decoded = load_image_folder(tarball)
    for key, cached_tensor in (("x_train", x_train), ("y_train", y_train), ("x_test", x_test), ("y_test", y_test)):
        if not torch.equal(decoded[key], cached_tensor):
            raise SystemExit(f"decode cache is stale: {key} differs from a fresh decode of {tarball}")
    return {"cached_load_s": cached.wall, "fresh_decode_s": fresh.wall, "n_images": len(y_train) + len(y_test)}


def torchvision_loader(folder: str, bs: int, n_train: int | None, num_workers: int, threads: int | None, mean, std):
    from torchvision import datasets, transforms

    tfm = transforms.Compose([
        transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize(mean.tolist(), std.tolist()),
    ])
    dataset = datasets.ImageFolder(folder, transform=tfm)
    if n_train is not None:  # the same fixed random subset size as the in-memory loader (files are sorted by class)
        keep = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:n_train].tolist()
        dataset = torch.utils.data.Subset(dataset, keep)

    def limit_threads(_):
        if threads is not None:
            torch.set_num_threads(threads)

    return torch.utils.data.DataLoader(dataset, batch_size=bs, shuffle=True, num_workers=num_workers,
                                       worker_init_fn=limit_threads if num_workers else None,
                                       persistent_workers=num_workers > 0, generator=torch.Generator().manual_seed(0))


def epoch(loader) -> int:
    """Iterate one epoch and touch every batch (a sum, so nothing is left lazy); the number of images."""
    n = 0
    for xb, _ in loader:
        xb.sum()
        n += len(xb)
    return n


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (after one untimed warm-up round)")
    parser.add_argument("--bs", type=int, default=512)
    parser.add_argument("--n-train", type=int, default=None, help="a fixed random subset of the 50000 images")
    parser.add_argument("--threads", type=int, default=None, help="torch threads, here and in each worker")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader num_workers to compare")
    parser.add_argument("--tarball", default=str(SHARED_TARBALL))
    parser.add_argument("--skip-cache-check", action="store_true")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    if not args.skip_cache_check:
        cache = check_decode_cache(args.tarball)
        print(f"decode cache checked: identical to a fresh decode of {cache['n_images']} JPEGs; cached load "
              f"{cache['cached_load_s']:.2f} s, fresh decode {cache['fresh_decode_s']:.2f} s "
              f"({cache['fresh_decode_s'] / cache['cached_load_s']:.1f}x)")
    with Timer() as extraction:
        folder = extracted_folder(args.tarball)
    print(f"ImageFolder source: {folder} (ready in {extraction.wall:.1f} s)")

    dls = cifar10(bs=args.bs, root=args.tarball, n_train=args.n_train, device="cpu")
    # The same normalisation for both: the training images' channel statistics, as cifar10() computed them.
    mean, std = dls.train.batch_tfm.mean.flatten(), dls.train.batch_tfm.std.flatten()
    contenders = {"in-memory": lambda: epoch(dls.train)}
    for workers in args.workers:
        loader = torchvision_loader(folder, args.bs, args.n_train, workers, args.threads, mean, std)
        contenders[f"imagefolder-{workers}"] = lambda loader=loader: epoch(loader)

    names = list(contenders)
    timings = {name: [] for name in names}
    counts = {}
    for round_index in range(args.rounds + 1):
        for name in names if round_index % 2 == 0 else names[::-1]:
            with Timer() as timer:
                counts[name] = contenders[name]()
            if round_index > 0:  # round 0 warms up every contender (and starts the persistent workers)
                timings[name].append(timer)

    print(f"CIFAR-10 JPEGs, one augmented training epoch ({counts['in-memory']} images), bs {args.bs}, "
          f"{args.rounds} rounds after a warm-up round")
    print(f"machine: {machine()}; {time.strftime('%Y-%m-%d %H:%M')}")
    print_table(timings, "in-memory", {name: f"{counts[name]} images" for name in names}, "epoch")
    for name in names[1:]:
        speedups = [t.wall / b.wall for t, b in zip(timings[name], timings["in-memory"], strict=True)]
        print(f"in-memory is {sorted(speedups)[len(speedups) // 2]:.1f}x faster than {name} (median wall ratio)")


if __name__ == "__main__":
    main()
