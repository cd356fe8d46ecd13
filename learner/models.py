"""Models used in the examples and reproductions."""

from torch import nn


def lenet(n_classes: int = 10, in_channels: int = 1) -> nn.Sequential:
    """The d2l "modern LeNet" for 28x28 images: ReLU and max-pooling, PyTorch's default initialisation."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, kernel_size=5, padding=2), nn.ReLU(), nn.MaxPool2d(2, 2),
        nn.Conv2d(6, 16, kernel_size=5), nn.ReLU(), nn.MaxPool2d(2, 2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, n_classes),
    )
