"""Published learning-rate experiments, run for real: `cyclr reproduce d2l`, `blog`, `averaging` and `lr-finder`.

They live in the repository, outside the installed library (`cyclr.learner`, `cyclr.callbacks`, `cyclr.data`),
which they use as any user would.

- `experiments.d2l`: the chapter "Learning Rate Scheduling" of Dive into Deep Learning, PyTorch edition, its five
  schedules as the chapter describes them plus two as the book's published run actually trained them.
- `experiments.blog`: experiments 1-3 of "Understanding the learning rates of cycle_policy" (`fit_one_cycle` called
  verbatim), on a GPU as the study it translates ran them (ResNet-56 on CIFAR-10) or on a CPU with LeNet on
  Fashion-MNIST and the epochs scaled.
- `experiments.averaging`: what cycling buys: SWA, EMA and snapshot ensembles against plain training of the same
  budget, LeNet with batch norm on Fashion-MNIST.
- `experiments.lr_finder_study`: does the LR finder find the rate a grid search and Optuna would?
- `experiments.common`: the CSV and markdown writers, statistics and checks they share.

Each runner appends one CSV row per finished (run, seed) as soon as it finishes, so a long run that is cut short
keeps what it did, and a later call with more seeds only trains the missing ones. Then it writes the summary (CSV
and a markdown table) and the plots.
"""

from .averaging import EPOCHS as AVERAGING_EPOCHS
from .averaging import run as run_averaging
from .blog import (
    BLOG_CALLS,
    BLOG_SOURCE,
    BlogCall,
    blog_claims,
    blog_markdown,
    blog_measurements,
    blog_summary,
    plot_blog_runs,
    run_blog,
    scaled_epochs,
)
from .common import machine_description
from .d2l import (
    D2L_BATCH_SIZE,
    D2L_BOOK,
    D2L_BOOK_SOURCE,
    D2L_EPOCHS,
    DJL_EDITION,
    D2LRun,
    OneEpochLate,
    d2l_markdown,
    d2l_runs,
    d2l_summary,
    plot_d2l_curves,
    plot_d2l_schedules,
    run_d2l,
)
from .lr_finder_study import run_lr_finder_study

__all__ = [
    "OneEpochLate", "D2LRun", "d2l_runs", "D2L_BOOK", "D2L_BOOK_SOURCE", "DJL_EDITION", "D2L_EPOCHS",
    "D2L_BATCH_SIZE", "run_d2l", "d2l_summary", "d2l_markdown", "plot_d2l_schedules", "plot_d2l_curves",
    "BlogCall", "BLOG_CALLS", "BLOG_SOURCE", "scaled_epochs", "run_blog", "blog_measurements", "blog_summary",
    "blog_claims", "blog_markdown", "plot_blog_runs", "machine_description", "AVERAGING_EPOCHS", "run_averaging",
    "run_lr_finder_study",
]
