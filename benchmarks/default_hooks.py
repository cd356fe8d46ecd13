"""What each default callback (and the loop's own per-batch work) costs per training step, hook by hook, on the small
MLP of `peers.py --model mlp` (16 -> 32 -> 2, batch 64, AdamW), where the framework's Python is what a step costs.

The learner is put in the state of a fit of one-cycle training, mid-epoch (`before_fit`, `before_epoch`,
`before_train` run; a real forward and backward pass so the gradients exist), then every per-batch hook of every
callback is called `--reps` times in a row, the step counter advancing as in a fit; the fastest of `--blocks`
blocks, in microseconds per call. A Recorder's per-step cost includes its flushes (one every 256 steps); the NaN
guard's is its `after_loss` and `before_step` together. Beside them: the loop's own work per batch (`to_device`,
`split_batch`, dispatching an event, the batch-level bookkeeping) and, for scale, one whole step of a plain loop
(forward, loss, backward, AdamW step, zero_grad, torch's OneCycleLR).

    nice -n -5 .venv/bin/python benchmarks/default_hooks.py [--reps 3000] [--blocks 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch
from overhead import machine

from cyclr import Learner, OneCycleCallback, synthetic_classification

BATCH_EVENTS = ("before_batch", "after_pred", "after_loss", "before_backward", "before_step", "after_step",
                "after_batch")
ADAMW = {"betas": (0.9, 0.99), "eps": 1e-5, "weight_decay": 0.01}


def timed(fn, reps: int, blocks: int) -> float:
    """The fastest block's microseconds per call of `fn()`, after an untimed warm-up block: on a machine others
    load, the block least disturbed by them is the closest to what the call itself costs."""
    per_call = []
    for block in range(blocks + 1):
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        if block:
            per_call.append((time.perf_counter() - start) / reps * 1e6)
    return min(per_call)


def fit_state(learn: Learner, n_steps: int):
    """`learn` as inside a fit, mid-epoch, with a batch through forward and backward; returns that batch."""
    learn.set_counters(n_epoch=1, n_train_iters=n_steps, train_iter=0)
    learn.in_fit = True
    learn("before_fit")
    learn.set_counters(epoch=0)
    learn.training, learn.dl = True, learn.dls.train
    learn.model.train()
    learn("before_epoch")
    learn("before_train")
    batch = next(iter(learn.dls.train))
    learn.set_counters(iter=0)
    learn.xb, learn.yb = learn.split_batch(learn.to_device(batch))
    learn.pred = learn.forward(learn.xb)
    learn.loss = learn.get_loss(learn.pred, learn.yb)
    learn.loss.backward()
    return batch


def advancing(learn: Learner, calls):
    """One step's calls, then the counter moves on (wrapping at the fit's end), as the loop moves it."""
    def step():
        for call in calls:
            call(learn)
        # a plain write rather than set_counters, so that the figure is the hooks' alone
        learn.train_iter = (learn.train_iter + 1) % learn.n_train_iters

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3000, help="calls per timed block (a fit of that many steps)")
    parser.add_argument("--blocks", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dls = synthetic_classification(n_train=64 * 50, n_valid=64, n_features=16, n_classes=2, bs=64)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))

    def opt_func(params, lr):
        return torch.optim.AdamW(params, lr=lr, **ADAMW)

    learn = Learner(model, dls, torch.nn.CrossEntropyLoss(), opt_func=opt_func, lr=1e-2, device="cpu",
                    cbs=[OneCycleCallback(1e-2)])
    learn.create_opt()
    batch = fit_state(learn, args.reps)

    rows = []
    for cb in sorted(learn.cbs, key=lambda c: c.order):
        hooks = [e for e in BATCH_EVENTS if getattr(type(cb), e, None) is not None]
        if hooks:
            calls = [getattr(cb, e) for e in hooks]
            step = advancing(learn, [lambda lrn, c=c: c(lrn) for c in calls])
            rows.append((f"{cb.name} ({', '.join(hooks)})", timed(step, args.reps, args.blocks)))
    total_cbs = sum(us for _, us in rows)

    loop = [
        ("to_device(batch)", lambda: learn.to_device(batch)),
        ("split_batch(batch)", lambda: learn.split_batch(batch)),
        ("one event, no hook: learn('after_pred')", lambda: learn("after_pred")),
    ]
    loop_rows = [(name, timed(fn, args.reps, args.blocks)) for name, fn in loop]

    xb, yb = batch
    plain_opt = torch.optim.AdamW(model.parameters(), lr=1e-2, **ADAMW)
    sched = torch.optim.lr_scheduler.OneCycleLR(plain_opt, max_lr=1e-2, total_steps=10 ** 9)
    loss_func = torch.nn.CrossEntropyLoss()

    def plain_step():
        loss = loss_func(model(xb), yb)
        loss.backward()
        plain_opt.step()
        plain_opt.zero_grad()
        sched.step()

    plain = timed(plain_step, args.reps, args.blocks)
    learn.in_fit = False
    learn("after_fit")
    learn("cleanup_fit")

    print(f"machine: {machine()}; {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"Per training step, fastest of {args.blocks} blocks of {args.reps} calls, MLP 16-32-2, bs 64, AdamW:")
    for name, us in rows + loop_rows:
        print(f"  {name:<62} {us:7.2f} us  {us / plain:6.1%} of a plain step")
    print(f"  {'default callbacks + one-cycle scheduler, all hooks':<62} {total_cbs:7.2f} us  {total_cbs / plain:6.1%}")
    print(f"  {'one plain step (forward, backward, AdamW, OneCycleLR)':<62} {plain:7.2f} us")


if __name__ == "__main__":
    main()
