"""Data for cyclr: DataLoaders, a fast in-memory loader, Fashion-MNIST and small synthetic data sets."""

from .core import DataLoaders, InMemoryLoader, TorchLoader
from .fashion_mnist import FASHION_MNIST_CLASSES, fashion_mnist, load_fashion_mnist

__all__ = [
    "DataLoaders", "InMemoryLoader", "TorchLoader",
    "FASHION_MNIST_CLASSES", "fashion_mnist", "load_fashion_mnist",
]
