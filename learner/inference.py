"""Inference with a trained Learner (mixed into `Learner`): `get_preds` over a loader, `predict` on a batch."""

from __future__ import annotations

import torch


class Inference:
    def get_preds(self, dl=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Model outputs and targets over `dl` (default: the validation loader), concatenated, on the CPU."""
        dl = dl if dl is not None else self.dls.valid
        if dl is None:
            raise ValueError("no loader to predict on: pass get_preds(dl=...) or build DataLoaders with a valid set")
        preds, targets = [], []
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                for xb, yb in dl:
                    preds.append(self.forward(self.to_device(xb)).float().cpu())
                    targets.append(yb.cpu() if isinstance(yb, torch.Tensor) else torch.as_tensor(yb))
        finally:
            self.model.train(was_training)
        return torch.cat(preds), torch.cat(targets)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Model output for a batch `x` (eval mode, no gradients), on the CPU."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"predict expects a tensor batch, got {type(x).__name__}")
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                return self.forward(x.to(self.device)).cpu()
        finally:
            self.model.train(was_training)
