"""One epoch of Fashion-MNIST training batches: cyclr's InMemoryLoader against DataLoader(TensorDataset).

Both shuffle, use bs=256 and num_workers=0 and read the same float32 tensors; each round times one epoch of each,
alternating which goes first, and the medians and their ratio are printed. Target (issue 7): ratio >= 5.

It measures twice: with torch's default number of intra-op threads and with 1 thread. On a machine whose cores are
busy with other processes, a multi-threaded gather waits for whichever of its threads the OS descheduled, so the
default can be far slower than 1 thread there; DataLoader(TensorDataset), which indexes one sample at a time, hardly
uses the threads at all. `--threads N` measures only N.

    nice .venv/bin/python benchmarks/loader_speed.py [--rounds 11] [--device cuda] [--threads 1]
"""

import argparse
import os
import statistics
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

from cyclr import InMemoryLoader, fashion_mnist


def epoch_seconds(loader, device) -> float:
    start = time.perf_counter()
    n = 0
    for xb, yb in loader:
        # What a training loop does with each batch: move it to the device (free when it is already there).
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        n += len(yb)
    if device.type == "cuda":
        torch.cuda.synchronize()
    assert n == 60000
    return time.perf_counter() - start


def measure(loaders: dict, device, rounds: int) -> dict[str, list[float]]:
    for loader in loaders.values():  # warm-up epoch each
        epoch_seconds(loader, device)
    times = {name: [] for name in loaders}
    names = list(loaders)
    for round_index in range(rounds):
        for name in names if round_index % 2 == 0 else names[::-1]:
            times[name].append(epoch_seconds(loaders[name], device))
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--bs", type=int, default=256)
    parser.add_argument("--device", default="cpu", help="where InMemoryLoader keeps the data (and batches go)")
    parser.add_argument("--threads", type=int, default=None, help="measure only with this many intra-op threads")
    args = parser.parse_args()
    device = torch.device(args.device)

    dls = fashion_mnist(bs=args.bs)
    x, y = dls.train.x, dls.train.y
    loaders = {
        "InMemoryLoader": InMemoryLoader(x, y, args.bs, shuffle=True, seed=0, device=device),
        "DataLoader(TensorDataset)": DataLoader(
            TensorDataset(x, y), batch_size=args.bs, shuffle=True, num_workers=0,
            generator=torch.Generator().manual_seed(0),
        ),
    }
    print(f"Fashion-MNIST train, 60000 samples, bs={args.bs}, shuffle, one epoch, device={device}, "
          f"{args.rounds} rounds, torch {torch.__version__}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}")
    for threads in [args.threads] if args.threads else [torch.get_num_threads(), 1]:
        torch.set_num_threads(threads)
        times = measure(loaders, device, args.rounds)
        medians = {name: statistics.median(t) for name, t in times.items()}
        print(f"intra-op threads: {threads}")
        for name, median in medians.items():
            print(f"  {name:<26} median {median * 1000:8.1f} ms  (min {min(times[name]) * 1000:.1f}, "
                  f"max {max(times[name]) * 1000:.1f})")
        ratio = medians["DataLoader(TensorDataset)"] / medians["InMemoryLoader"]
        print(f"  InMemoryLoader is {ratio:.1f}x faster (target >= 5x)")


if __name__ == "__main__":
    main()
