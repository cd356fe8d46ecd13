"""Inference with a trained Learner (mixed into `Learner`): `get_preds` over a loader, `predict` on one item or a
batch. Both call the model with the same `forward` the fit loop uses, and read batches the way training did: the
number of leading parts of a tuple batch that are inputs (`n_inp`, or as the training batches were split) holds for
every batch, so an unlabelled loader (the inputs only) is recognised by its count and never re-split."""

from __future__ import annotations

import copy
import numbers

import numpy as np
import torch

from ..callbacks.optimizer_modes import evaluating
from ..data.core import Targets, loader_length
from ..data.nested import map_leaves
from .batches import TARGET_KEYS, Batches, describe, logits_of, target_args
from .epoch_length import with_peeked
from .preflight import first_batch


class Inference:
    """Reads the Learner's model, dls, loss_func, n_inp and train_n_inp; keeps `_training_shapes` (the training
    loader whose first batch told inference how training batches look, and its per-sample shapes: read once per
    loader, as a first batch may cost a disk read and a collate). All declared in `Learner.__init__`."""

    def validate(self, dl=None) -> dict[str, float]:
        """Validation loss and metrics on `dl` (default: the validation loader), with the usual events, named as in
        the epoch table (`valid_loss`, then each metric's name)."""
        self._join_launched_group()  # under torchrun: validate this process's shard
        dl = dl if dl is not None else self.dls.valid
        if dl is None:
            raise ValueError("no validation loader: pass validate(dl=...) or build DataLoaders with a valid set")
        if loader_length(dl) == 0:
            raise ValueError("the validation loader is empty")
        self._start_phase(training=False, dl=dl)
        self._with_events(self._do_validate, "validate")
        return self.recorder.validation_results()

    def get_preds(self, dl=None, with_input: bool = False, with_loss: bool = False, act=None,
                  with_targets: bool | None = None, ensemble=None):
        """Model outputs and targets over `dl` (default: the validation loader), concatenated, on the CPU:
        `(preds, targets)`, with the inputs first (`with_input`) and per-sample losses last (`with_loss`).

        Outputs with `logits` give those; tuple and dict outputs are concatenated element by element, and their 0-d
        parts (a batch's auxiliary loss) are stacked, one value per batch. `act` (e.g. `lambda p: p.softmax(-1)`)
        is applied to the output tensor, or to the first element of a tuple, or to a dict's `logits`; 'softmax'
        (over the last dimension) and 'sigmoid' may be given by name.

        Targets are None on an unlabelled loader: tuple batches of the inputs alone (as many parts as the model
        takes: `n_inp`, or as the training batches were split, all but their last part), bare tensors, or dicts
        without labels. `with_targets=False` says the batches hold inputs only, `True` that they hold targets too
        (each refused, naming the counts, when the batches say otherwise); None tells them apart by the count.

        `ensemble` (a `SnapshotEnsemble` that took snapshots) gives `(probabilities, targets)`: the mean over its
        snapshots of `act(outputs)` (softmax by default); the learner's own weights are back afterwards.

        Args:
            dl (Iterable | None): the loader to predict on; None: the validation loader.
            with_input: also return the inputs, first.
            with_loss: also return the per-sample losses, last (needs targets).
            act (Callable | str | None): applied to the outputs: a callable, 'softmax' (over the last dimension) or
                'sigmoid'; None: the raw outputs (softmax with `ensemble`).
            with_targets (bool | None): whether the batches hold targets; None: told apart by the number of parts.
            ensemble (SnapshotEnsemble | None): average the probabilities of its snapshots instead of using the
                learner's weights.
        """
        act = _activation(act)
        self._join_launched_group()  # under torchrun: predict on this process's shard
        if ensemble is not None:
            if with_input or with_loss:
                raise ValueError("get_preds(ensemble=...) gives (probabilities, targets) only: drop with_input and "
                                 "with_loss, or call get_preds once per snapshot")
            return ensemble.get_preds(self, dl, act=act, with_targets=with_targets)
        dl = dl if dl is not None else self.dls.valid
        if dl is None:
            raise ValueError("no loader to predict on: pass get_preds(dl=...) or build DataLoaders with a valid set")
        if with_targets not in (None, True, False):
            raise TypeError(f"with_targets must be None, True or False, got {with_targets!r}")
        loss_func = _per_sample_loss(self.loss_func) if with_loss else None
        if type(self).split_batch is Batches.split_batch and self.n_inp is None:
            self.training_n_inp()  # now, not mid-loop: it may draw from a one-shot stream that is `dl` itself
        inputs, preds, targets, losses = [], [], [], []
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), evaluating(self):  # a schedule-free optimizer's evaluation weights
                for batch in with_peeked(self, dl):  # a one-shot stream's batch drawn to learn its shapes first
                    xb, yb = self.split_for_inference(self.to_device(batch), with_targets)
                    if with_loss and yb is None:
                        raise ValueError(
                            f"get_preds(with_loss=True) needs targets, but a batch ({describe(batch)}) holds the "
                            "inputs only: give a labelled loader, or leave with_loss out"
                        )
                    pred = logits_of(self.forward(xb))
                    preds.append(_to_cpu(pred))
                    targets.append(_to_cpu(yb))
                    if with_input:
                        inputs.append(_to_cpu(xb))
                    if with_loss:
                        losses.append(loss_func(pred, *target_args(yb)).float().cpu())
        finally:
            self.model.train(was_training)
        if not preds:
            raise ValueError("the loader given to get_preds yielded no batch")
        labelled = [t is not None for t in targets]
        if any(labelled) and not all(labelled):
            raise ValueError(
                f"some batches have targets and others not ({labelled.count(True)} of {len(labelled)} have): give "
                "get_preds a loader whose batches all have the same parts"
            )
        preds = _apply_act(_concat(preds), act)
        res = [preds, _concat(targets) if all(labelled) else None]
        if with_input:
            res.insert(0, _concat(inputs))
        if with_loss:
            res.append(torch.cat(losses))
        return tuple(res)

    def split_for_inference(self, batch, with_targets: bool | None = None):
        """(inputs, targets) of a batch given to `get_preds`; targets None when it holds the inputs only. A tuple
        batch is split after the number of inputs training used (`training_n_inp`), whatever its length; a
        subclass's own `split_batch` decides alone."""
        if type(self).split_batch is not Batches.split_batch:
            return self.split_batch(batch)
        if isinstance(batch, dict):
            xb, yb = self.split_batch(batch)
            if with_targets and yb is None:
                raise ValueError(
                    f"get_preds(with_targets=True), but a dict batch has none of the target keys {TARGET_KEYS}"
                )
            return xb, None if with_targets is False else yb
        n_inp = self.training_n_inp()
        if not isinstance(batch, (tuple, list)):  # a bare tensor: the one input
            if with_targets:
                raise ValueError(f"get_preds(with_targets=True), but a batch is a single {describe(batch)}, "
                                 "which holds no targets")
            if n_inp not in (None, 1):
                raise ValueError(_count_error(1, n_inp, with_targets))
            return batch, None
        n = len(batch)
        if n_inp is None:  # the training batches were not tuples: the usual split, all but the last part
            n_inp = n if with_targets is False or n == 1 else n - 1
        labelled = n > n_inp if with_targets is None else with_targets
        if (n <= n_inp) if labelled else (n != n_inp):
            raise ValueError(_count_error(n, n_inp, with_targets))
        xb = batch[0] if n_inp == 1 else tuple(batch[:n_inp])
        rest = batch[n_inp:]
        return xb, None if not rest else rest[0] if len(rest) == 1 else Targets(rest)

    def training_n_inp(self) -> int | None:
        """How many leading parts of a tuple batch are inputs: `n_inp`, or else as the fit splits the training
        batches (all but the last part); None when the training batches are not tuples."""
        if self.n_inp is not None:
            return self.n_inp
        if self.train_n_inp is not None:  # learned by the first fit's pre-flight
            return self.train_n_inp
        shapes = self._training_batch_shapes()
        return len(shapes) - 1 if _is_parts(shapes) and len(shapes) > 1 else None

    def predict(self, item, ensemble=None):
        """Model output for one item (a sample without its batch dimension: the output for it, without one) or a
        batch, in eval mode, without gradients, on the CPU. Outputs with `logits` give those.

        An item is what one training sample's inputs are: a tensor or a numpy array, a tuple of them (a model of
        several inputs) or a dict (called as `model(**item)`). It is collated as the training loader would: each
        part gets the batch dimension, numpy arrays become tensors, and floating-point parts take the model's
        floating dtype (integer parts, such as token ids or categories, stay integers). Whether `item` is one
        item or a batch is told from the number of dimensions of the training inputs. `ensemble` (a
        `SnapshotEnsemble`) gives the mean of its snapshots' softmax instead."""
        if ensemble is not None:
            return ensemble.predict(self, item)
        xb = _as_tensors(item, _floating_dtype(self.model), top=True)
        single = self._is_one_item(xb)
        if single:
            xb = _with_batch_dim(xb)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), evaluating(self):
                out = _to_cpu(logits_of(self.forward(self.to_device(xb))))
        finally:
            self.model.train(was_training)
        return _first_item(out) if single else out

    # ----- how the training batches look ------------------------------------------------------------------------------
    def _training_batch_shapes(self):
        """The shape of one sample of each part of the first training batch (tensors as torch.Size, in the batch's
        structure), None where it cannot be told."""
        train = getattr(self.dls, "train", None)
        if train is None:
            return None
        if self._training_shapes is None or self._training_shapes[0] is not train:
            self._training_shapes = (train, _sample_shapes(first_batch(train, self.peeked)))
        return self._training_shapes[1]

    def _training_input_shapes(self):
        """The per-sample shapes of the training batches' inputs, in their structure (None when unknown)."""
        shapes = self._training_batch_shapes()
        if isinstance(shapes, dict):
            return {k: v for k, v in shapes.items() if k not in TARGET_KEYS}
        if _is_parts(shapes):
            n_inp = self.training_n_inp() or len(shapes)
            return shapes[0] if n_inp == 1 else tuple(shapes[:n_inp])
        return shapes

    def _is_one_item(self, xb) -> bool:
        """Whether `xb` is one sample (True) or a batch (False), from the dimensions of the training inputs; a
        batch when they are unknown."""
        pairs = _paired_parts(xb, self._training_input_shapes())
        verdicts = {}
        for name, part, sample in pairs:
            if part.ndim == len(sample):
                verdicts[name] = True
            elif part.ndim == len(sample) + 1:
                verdicts[name] = False
            else:
                raise ValueError(
                    f"predict: {name} has shape {tuple(part.shape)}, but one training sample's {name} has shape "
                    f"{tuple(sample)} (a batch of them: (n, {', '.join(map(str, sample))})): give one item or a batch"
                )
        if len(set(verdicts.values())) > 1:
            raise ValueError(f"predict: some parts are one item and others a batch ({verdicts}, True: one item)")
        return bool(verdicts) and next(iter(verdicts.values()))


def _count_error(n: int, n_inp: int, with_targets) -> str:
    argument = "" if with_targets is None else f"(with_targets={with_targets}) "
    wanted = {None: f"the {n_inp} inputs, then the targets if any",
              True: f"the {n_inp} inputs, then the targets", False: f"the {n_inp} inputs only"}[with_targets]
    return (f"get_preds {argument}got a batch of {n} part{'s' if n != 1 else ''}, but the model takes {n_inp} "
            f"inputs (n_inp, or as the training batches were split): give batches of {wanted}, or set "
            "Learner(n_inp=...) to the number of inputs")


def _is_parts(shapes) -> bool:
    """Whether `shapes` (from `_sample_shapes`) are those of a tuple of parts, not one part's (a torch.Size)."""
    return isinstance(shapes, (tuple, list)) and not isinstance(shapes, torch.Size)


def _sample_shapes(batch):
    if isinstance(batch, torch.Tensor):
        return batch.shape[1:] if batch.ndim else None
    if isinstance(batch, dict):
        return {k: _sample_shapes(v) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)) and batch and all(isinstance(b, (torch.Tensor, tuple, list, dict))
                                                          for b in batch):
        return type(batch)(_sample_shapes(b) for b in batch)
    return None


def _paired_parts(xb, shapes) -> list[tuple[str, torch.Tensor, torch.Size]]:
    """(name, item's tensor, one training sample's shape) for each input part both have."""
    if shapes is None:
        return []
    if isinstance(shapes, dict):
        if not isinstance(xb, dict):
            raise ValueError(f"predict: the model was trained on dict batches (keys {sorted(shapes)}), give a dict "
                             f"item, not {describe(xb)}")
        return [(repr(k), xb[k], s) for k, s in shapes.items()
                if isinstance(s, torch.Size) and isinstance(xb.get(k), torch.Tensor)]
    if _is_parts(shapes):
        n = len(xb) if isinstance(xb, (tuple, list)) else 1
        if not isinstance(xb, (tuple, list)) or n != len(shapes):
            raise ValueError(f"predict: the item has {n} input{'s' if n != 1 else ''}, but the model takes "
                             f"{len(shapes)} (as the training batches gave them): give a tuple of {len(shapes)}")
        return [(f"input {i}", part, s) for i, (part, s) in enumerate(zip(xb, shapes, strict=True))
                if isinstance(s, torch.Size) and isinstance(part, torch.Tensor)]
    if isinstance(xb, (tuple, list, dict)):
        raise ValueError(f"predict: the model takes one input (as the training batches gave it), got {describe(xb)}")
    return [("the input", xb, shapes)]


def _floating_dtype(model) -> torch.dtype:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.get_default_dtype())


def _as_tensors(item, dtype: torch.dtype, top: bool = False):
    """`item` with numpy arrays as tensors and floating-point parts in `dtype`; TypeError for what is no input."""
    if isinstance(item, np.ndarray):
        item = torch.as_tensor(item)
    if isinstance(item, torch.Tensor):
        return item.to(dtype) if item.is_floating_point() and item.dtype != dtype else item
    if isinstance(item, dict):
        return {k: _as_tensors(v, dtype) if isinstance(v, (np.ndarray, torch.Tensor, dict, tuple, list)) else v
                for k, v in item.items()}
    if isinstance(item, (tuple, list)) and item and all(isinstance(o, (np.ndarray, torch.Tensor, dict, tuple, list))
                                                        for o in item):
        return type(item)(_as_tensors(o, dtype) for o in item)
    what = describe(item) if isinstance(item, (tuple, list)) else type(item).__name__
    raise TypeError(
        f"predict expects a tensor or a numpy array, or a tuple or dict of them (one item or a batch), got {what}; "
        "make numbers a tensor first (torch.tensor(...)), or use get_preds(dl=...) for other batch formats"
        if top else f"predict: an item's parts must be tensors or numpy arrays, got {what}"
    )


def _with_batch_dim(xb):
    """One item as a batch of one, as a loader's collate would make it."""
    return map_leaves(_one_as_batch, xb)


def _one_as_batch(part):
    if isinstance(part, torch.Tensor):
        return part.unsqueeze(0)
    if isinstance(part, numbers.Number) and not isinstance(part, bool):
        return torch.tensor([part])
    return [part]  # a string or another object: a batch of one


def _per_sample_loss(loss_func):
    if loss_func is None or not hasattr(loss_func, "reduction"):
        raise ValueError(
            "get_preds(with_loss=True) needs a loss_func with a `reduction` attribute (a torch.nn loss such as "
            f"nn.CrossEntropyLoss()), to compute one loss per sample; this learner's loss_func is {loss_func!r}"
        )
    per_sample = copy.copy(loss_func)
    per_sample.reduction = "none"
    return per_sample


def _to_cpu(b):
    return map_leaves(lambda o: o.detach().cpu() if isinstance(o, torch.Tensor) else o, b)


def _concat(parts: list):
    """Batches of outputs joined along the batch dimension, element by element for tuples and dicts; 0-d parts (one
    value per batch, such as an auxiliary loss) stacked into one value per batch."""
    first = parts[0]
    if isinstance(first, torch.Tensor):
        parts = [p.float() if p.is_floating_point() else p for p in parts]
        return torch.stack(parts) if first.ndim == 0 else torch.cat(parts)
    if isinstance(first, dict):
        return {k: _concat([p[k] for p in parts]) for k in first}
    if isinstance(first, tuple) or (isinstance(first, list) and first and isinstance(first[0], torch.Tensor)):
        return type(first)(_concat(list(column)) for column in zip(*parts, strict=True))
    if isinstance(first, list):  # lists of items (token lists, strings): one long list
        return [item for p in parts for item in p]
    return parts


# `act` by name, as fastai users write it: over the last dimension (the classes).
ACTIVATIONS = {"softmax": lambda p: p.softmax(-1), "sigmoid": torch.sigmoid}


def _activation(act):
    """`act` as a callable (None stays None), refused before any batch runs when it cannot be one."""
    if isinstance(act, str):
        if act not in ACTIVATIONS:
            raise ValueError(f"get_preds(act={act!r}): an activation by name must be one of {sorted(ACTIVATIONS)}, "
                             "or pass a callable (e.g. lambda p: p.log_softmax(-1))")
        return ACTIVATIONS[act]
    if act is not None and not callable(act):
        raise TypeError(f"get_preds(act=...) must be callable, 'softmax', 'sigmoid' or None, got {act!r}")
    return act


def _apply_act(preds, act):
    if act is None:
        return preds
    if isinstance(preds, torch.Tensor):
        return act(preds)
    if isinstance(preds, tuple):
        return (act(preds[0]), *preds[1:])
    if isinstance(preds, dict) and "logits" in preds:
        return {**preds, "logits": act(preds["logits"])}
    raise ValueError(f"get_preds(act=...): no tensor to apply it to in outputs of type {type(preds).__name__}")


def _first_item(out):
    """The output for the one item of a batch of one; a 0-d part (the batch's value) as it is."""
    return map_leaves(lambda o: o[0] if isinstance(o, torch.Tensor) and o.ndim else o, out)
