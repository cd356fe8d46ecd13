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


def lenet_bn(n_classes: int = 10, in_channels: int = 1) -> nn.Sequential:
    """The modern LeNet with batch norm after each convolution and hidden linear layer (as d2l's "LeNet with batch
    normalization"): it trains at the high learning rates of one-cycle that plain LeNet diverges at."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, kernel_size=5, padding=2), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2, 2),
        nn.Conv2d(6, 16, kernel_size=5), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2, 2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.BatchNorm1d(120), nn.ReLU(),
        nn.Linear(120, 84), nn.BatchNorm1d(84), nn.ReLU(),
        nn.Linear(84, n_classes),
    )


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm, added to a shortcut (He et al., 2016, the CIFAR-10 ResNets).

    The shortcut is the identity, or a strided 1x1 convolution with batch norm where the shape changes."""

    def __init__(self, ch_in: int, ch_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(ch_in, ch_out, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(ch_out)
        self.conv2 = nn.Conv2d(ch_out, ch_out, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(ch_out)
        self.shortcut = nn.Identity()
        if stride != 1 or ch_in != ch_out:
            self.shortcut = nn.Sequential(nn.Conv2d(ch_in, ch_out, kernel_size=1, stride=stride, bias=False),
                                          nn.BatchNorm2d(ch_out))
        self.relu = nn.ReLU()

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def cifar_resnet(depth: int = 56, n_classes: int = 10, in_channels: int = 3) -> nn.Sequential:
    """ResNet-`depth` for 32x32 images (depth = 6n + 2): a 3x3 stem with 16 channels, then three stages of n
    basic blocks with 16, 32 and 64 channels (the last two halve the resolution), global average pooling, linear."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth must be 6n + 2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, ...), got {depth!r}")
    n = (depth - 2) // 6
    layers: list[nn.Module] = [nn.Conv2d(in_channels, 16, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(16),
                               nn.ReLU()]
    ch_in = 16
    for stage, width in enumerate((16, 32, 64)):
        for block in range(n):
            layers.append(BasicBlock(ch_in, width, stride=2 if stage > 0 and block == 0 else 1))
            ch_in = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, n_classes)]
    return nn.Sequential(*layers)


def resnet56(n_classes: int = 10, in_channels: int = 3) -> nn.Sequential:
    """ResNet-56 for CIFAR-10, the network of Smith's one-cycle experiments and of the blog's study."""
    return cifar_resnet(56, n_classes, in_channels)
