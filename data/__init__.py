"""Data for cyclr: DataLoaders, a fast in-memory loader, Fashion-MNIST and small synthetic data sets.

CIFAR-10 lives in `cyclr.data.cifar10` (`from cyclr.data.cifar10 import cifar10`); it is not imported here, to keep
`import cyclr` light (it needs Pillow).
"""
