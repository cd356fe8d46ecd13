"""LeNet on the real Fashion-MNIST: the foundation's end-to-end check (needs the Debian package, installed by CI)."""

import pytest
import torch

from cyclr import Learner, accuracy, fashion_mnist, lenet, sgd


@pytest.mark.slow
def test_lenet_reaches_85_percent_test_accuracy_in_a_quick_run():
    torch.manual_seed(0)
    dls = fashion_mnist(bs=256, seed=0)
    assert len(dls.train.y) == 60_000 and len(dls.valid.y) == 10_000  # the real data set, not a subset
    learn = Learner(lenet(), dls, torch.nn.CrossEntropyLoss(), opt_func=sgd,
                    metrics=[accuracy], progress=False, device="cpu")
    learn.fit_one_cycle(3, max_lr=0.1)
    final = learn.recorder.epoch_rows[-1]
    assert final["accuracy"] >= 0.85, final
    # The epoch table's accuracy is the accuracy of the final weights on the whole test set.
    preds, targets = learn.get_preds()
    assert (preds.argmax(1) == targets).float().mean().item() == pytest.approx(final["accuracy"], abs=1e-6)
