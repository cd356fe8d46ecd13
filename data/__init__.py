"""Data for cyclr: DataLoaders, a fast in-memory loader, Fashion-MNIST and small synthetic data sets.

CIFAR-10 lives in `cyclr.data.cifar10` (`from cyclr.data.cifar10 import cifar10`); it is not imported here, to keep
`import cyclr` light (it needs Pillow).
"""

from .core import DataLoaders, InMemoryLoader, TorchLoader
from .fashion_mnist import FASHION_MNIST_CLASSES, fashion_mnist, load_fashion_mnist
from .synthetic import synthetic_classification, synthetic_regression, tiny_images

__all__ = [
    "DataLoaders", "InMemoryLoader", "TorchLoader",
    "FASHION_MNIST_CLASSES", "fashion_mnist", "load_fashion_mnist",
    "synthetic_classification", "synthetic_regression", "tiny_images",
]
