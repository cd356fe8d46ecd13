"""Metrics on dict targets and outputs (issue 23 point 8): `Metric(metric, target=..., output=...)` gives a
torchmetrics object, an AccumMetric or a batch function one part of the targets and of the output."""

import pytest
import torch
from torch import nn

from cyclr import AccumMetric, DataLoaders, Learner, Metric


class Segmenter(nn.Module):
    """Per-pixel scores of 3 classes for 2-channel 6x5 images, and a 0-1 'edge' map, as a dict."""

    def __init__(self):
        super().__init__()
        self.seg, self.edge = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(2, 1, 3, padding=1)

    def forward(self, image):
        return {"seg": self.seg(image), "edge": self.edge(image).squeeze(1)}


def seg_loss(out, target):
    return (nn.functional.cross_entropy(out["seg"], target["mask"])
            + nn.functional.binary_cross_entropy_with_logits(out["edge"], target["edges"]))


def pixel_accuracy(pred, mask):
    return (pred.argmax(1) == mask).float().mean()


def segmentation_data(n=30, seed=4):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(n, 2, 6, 5, generator=g)
    mask = (image[:, 0] > 0).long() + (image[:, 1] > 0.5).long()  # learnable classes 0..2
    edges = (image[:, 1] > 0).float()
    items = [(image[i], {"mask": mask[i], "edges": edges[i]}) for i in range(n)]
    return DataLoaders.from_datasets(items[:20], items[20:], bs=4, valid_bs=4), image[20:], mask[20:]


def test_torchmetrics_accum_and_batch_metrics_read_the_mask_of_dict_targets_and_outputs():
    torchmetrics = pytest.importorskip("torchmetrics")
    from torchmetrics.functional.classification import multiclass_jaccard_index

    dls, image, mask = segmentation_data()
    iou = Metric(torchmetrics.JaccardIndex(task="multiclass", num_classes=3), target="mask", output="seg")
    accum_acc = Metric(AccumMetric(pixel_accuracy, name="accum_pixel_accuracy"), target="mask", output="seg")
    torch.manual_seed(0)
    learn = Learner(Segmenter(), dls, seg_loss, lr=0.05, progress=False, device="cpu",
                    metrics=[iou, accum_acc, Metric(pixel_accuracy, target="mask", output="seg")])
    learn.fit(2)
    row = learn.recorder.epoch_rows[-1]
    with torch.no_grad():
        scores = learn.model(image)["seg"]
    # Each equals its own value over the whole validation set (10 images: 4 + 4 + 2).
    assert row["MulticlassJaccardIndex"] == pytest.approx(
        multiclass_jaccard_index(scores, mask, num_classes=3).item(), abs=1e-6)
    assert row["accum_pixel_accuracy"] == pytest.approx(pixel_accuracy(scores, mask).item(), abs=1e-6)
    assert row["pixel_accuracy"] == pytest.approx(pixel_accuracy(scores, mask).item(), abs=1e-6)


def test_a_key_the_batches_do_not_have_is_refused_before_training_naming_the_keys():
    dls, _, _ = segmentation_data()
    learn = Learner(Segmenter(), dls, seg_loss, progress=False, device="cpu",
                    metrics=[Metric(pixel_accuracy, target="masks", output="seg")])
    before = [p.detach().clone() for p in learn.model.parameters()]
    with pytest.raises(ValueError, match=r"target='masks'.*keys \['edges', 'mask'\]"):
        learn.fit(1)
    assert all(torch.equal(b, p) for b, p in zip(before, learn.model.parameters(), strict=True))
    with pytest.raises(TypeError, match="target=.*must be a key"):
        Metric(pixel_accuracy, target=["mask"])
    with pytest.raises(TypeError, match="must be callable"):
        Metric("iou", target="mask")


def test_metric_parts_by_index_of_tuple_targets():
    g = torch.Generator().manual_seed(8)
    x, y, w = torch.randn(24, 5, generator=g), torch.randint(0, 4, (24,), generator=g), torch.rand(24, generator=g)
    items = [(x[i], (w[i], y[i])) for i in range(24)]  # targets: (weight, label)

    def weighted_ce(out, target):
        weight, label = target
        return (nn.functional.cross_entropy(out, label, reduction="none") * weight).mean()

    learn = Learner(nn.Linear(5, 4), DataLoaders.from_datasets(items[:16], items[16:], bs=8), weighted_ce,
                    progress=False, device="cpu", metrics=[Metric(lambda p, t: (p.argmax(1) == t).float().mean(),
                                                                  target=1, name="acc")])
    learn.fit(1)
    with torch.no_grad():
        want = (learn.model(x[16:]).argmax(1) == y[16:]).float().mean().item()
    assert learn.recorder.epoch_rows[-1]["acc"] == pytest.approx(want, abs=1e-6)
