"""The Recorder's running sums of one phase (loss and metrics, sample-weighted, on the device until read), and how
many samples a batch holds."""

from __future__ import annotations

import torch

from ..data.core import Targets


class PhaseSums:
    """Sample-weighted sums of the loss and metrics over one phase, kept on the device until read."""

    def __init__(self):
        self.count, self.loss, self.metrics = 0, None, None

    def state_dict(self) -> dict:
        def cpu(t):
            return None if t is None else t.detach().cpu().clone()

        return {"count": self.count, "loss": cpu(self.loss), "metrics": cpu(self.metrics)}

    @classmethod
    def from_state(cls, state: dict) -> PhaseSums:
        sums = cls()
        sums.count, sums.loss, sums.metrics = int(state["count"]), state["loss"], state["metrics"]
        return sums

    def add(self, learn, batch_metrics, epoch_metrics) -> None:
        n = batch_size(learn.yb if learn.yb is not None else learn.xb)
        self.count += n
        loss = learn.loss.detach()
        # One tensor op per batch (sum + n * loss), out of place so the sum never aliases a tensor held elsewhere.
        self.loss = loss.float() * n if self.loss is None else torch.add(self.loss, loss, alpha=n)
        if not (batch_metrics or epoch_metrics):
            return
        pred = learn.metric_output(learn.pred) if hasattr(learn, "metric_output") else learn.pred
        targets = learn.yb if type(learn.yb) is Targets else (learn.yb,)  # several: metric(pred, y, w), as fastai
        if batch_metrics:
            values = torch.stack([torch.as_tensor(m(pred, *targets)).detach().float() for m in batch_metrics])
            values = values.to(loss.device) * n
            self.metrics = values if self.metrics is None else self.metrics + values
        for m in epoch_metrics:
            m.update(pred, *targets)

    def summed_over_processes(self, learn, n_metrics: int) -> PhaseSums:
        """The sums over every process's shard (learner/distributed.py), so that all report the average over all
        samples; `self` in a single process. Every process calls it, even one whose shard had no batch."""
        if not is_distributed(learn):
            return self
        zero = torch.zeros(1, dtype=torch.float64)
        loss = zero if self.loss is None else self.loss.detach().double().reshape(1).cpu()
        metrics = zero.repeat(n_metrics) if self.metrics is None else self.metrics.detach().double().cpu()
        count = torch.tensor([float(self.count)], dtype=torch.float64)
        total = learn.all_reduce_sum(torch.cat([count, loss, metrics]))
        summed = PhaseSums()
        summed.count, summed.loss = round(total[0].item()), total[1]
        summed.metrics = total[2:] if n_metrics else None
        return summed

    def averages(self, prefix: str, metric_names: list[str]) -> dict[str, float]:
        if self.count == 0:
            return {}
        out = {f"{prefix}loss": self.loss.item() / self.count}
        if self.metrics is not None:
            for name, total in zip(metric_names, self.metrics.tolist(), strict=True):
                out[f"{prefix}{name}"] = total / self.count
        return out


def is_distributed(learn) -> bool:
    return getattr(learn, "world_size", 1) > 1


def batch_size(b) -> int:
    """Samples in a batch part: its first tensor's first dimension, a dict's first tensor's, or a list's length."""
    if isinstance(b, torch.Tensor):
        return b.shape[0] if b.ndim else 1
    if isinstance(b, dict):
        return next((batch_size(v) for v in b.values() if isinstance(v, (torch.Tensor, tuple, list))), 1)
    if isinstance(b, (tuple, list)) and b:
        return batch_size(b[0]) if isinstance(b[0], (torch.Tensor, dict)) else len(b)
    return 1
