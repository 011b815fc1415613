"""Learning-rate schedulers with torch.optim.lr_scheduler's semantics and numbers.

A scheduler owns the 'lr' of every parameter group of one optimizer. Constructing it stores each group's
starting rate as the group's 'initial_lr' (kept in `base_lrs`) and takes the initial step (last_epoch
-1 -> 0); each later `step()` advances `last_epoch` by one and sets the groups' rates. Call it after
`optimizer.step()`, once per epoch (or once per batch, for a schedule counted in batches):

    scheduler = StepLR(optimizer, step_size=10, gamma=0.5)
    for epoch in range(epochs):
        train_one_epoch(model, optimizer)
        scheduler.step()                          # ReduceLROnPlateau: scheduler.step(val_loss)

Each rate is computed the way PyTorch computes it — from the group's current rate, recursively
(CosineAnnealingLR's recursive form included) — so the trajectories agree with torch's to the last bits
and a rate changed by hand in between is carried on as in torch. `state_dict()` holds Python numbers,
lists, strings and None only, so `tg.save` stores it; `load_state_dict` restores it into a scheduler built
on a fresh optimizer (load the optimizer's state too: the group rates live there).
"""

from __future__ import annotations

import math
import numbers
from collections import Counter

from .. import _checks
from .optimizer import Optimizer

__all__ = ["LRScheduler", "StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR", "LinearLR",
           "ReduceLROnPlateau"]


class LRScheduler:
    """Base class: subclasses name their hyperparameters, check them, and implement `get_lr()`.

    Attributes: optimizer, base_lrs (each group's 'initial_lr'), last_epoch (steps taken, 0 after
    construction). `steps_on_metric` is True for schedulers whose step() takes a validation metric.
    last_epoch >= 0 continues a schedule whose optimizer groups already hold 'initial_lr' (as torch's).
    """

    steps_on_metric = False
    _hyperparameters: tuple[str, ...] = ()

    def __init__(self, optimizer: Optimizer, last_epoch: int = -1):
        name = type(self).__name__
        _check_optimizer(optimizer, name)
        last_epoch = _checks.integer(last_epoch, name, "last_epoch", low=-1)
        if last_epoch == -1:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
        else:
            for i, group in enumerate(optimizer.param_groups):
                if "initial_lr" not in group:
                    raise ValueError(f"{name}: last_epoch={last_epoch} continues a schedule, but param_groups"
                                     f"[{i}] has no 'initial_lr'; load the optimizer's state first, or "
                                     "start with last_epoch=-1")
        self.optimizer = optimizer
        self.base_lrs = [float(group["initial_lr"]) for group in optimizer.param_groups]
        self.last_epoch = last_epoch
        # the initial step sets the rates of epoch 0; some schedules leave them as they are then
        self._initial = True
        try:
            self.step()
        finally:
            self._initial = False

    def get_lr(self) -> list[float]:
        """The groups' rates for epoch `last_epoch` (called by step() after it advanced last_epoch)."""
        raise NotImplementedError(f"{type(self).__name__}: get_lr() is not defined")

    def step(self) -> None:
        """Advance one epoch and set every parameter group's 'lr'."""
        groups = self.optimizer.param_groups
        if len(groups) != len(self.base_lrs):
            raise RuntimeError(f"{type(self).__name__}.step: the optimizer has {len(groups)} parameter "
                               f"group(s) but the scheduler was built for {len(self.base_lrs)}; build a new "
                               "scheduler after add_param_group")
        self.last_epoch += 1
        for group, lr in zip(groups, self.get_lr()):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in groups]

    def get_last_lr(self) -> list[float]:
        """The rate of each parameter group as the last step() set it."""
        return list(self._last_lr)

    def _current_lrs(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    # ----------------------------------------------------------------- state dict
    def _check_hyperparameters(self, values: dict, where: str) -> dict:
        """`values` (one per name in _hyperparameters) checked, as the attributes to set."""
        return values

    def _hyperparameter_state(self) -> dict:
        return {name: getattr(self, name) for name in self._hyperparameters}

    def state_dict(self) -> dict:
        """{hyperparameter: value, ..., 'last_epoch': int, 'base_lrs': [float], 'last_lr': [float]}:
        plain Python values only (tg.save stores them)."""
        state = self._hyperparameter_state()
        state.update(last_epoch=self.last_epoch, base_lrs=list(self.base_lrs), last_lr=list(self._last_lr))
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore what state_dict() returned (hyperparameters included, as torch does). A dict of another
        scheduler, or one for another number of parameter groups, raises ValueError and changes nothing;
        the optimizer's group rates are not touched (they come with the optimizer's state)."""
        where = f"{type(self).__name__}.load_state_dict"
        _check_state_keys(state_dict, set(self._hyperparameters) | {"last_epoch", "base_lrs", "last_lr"},
                          where)
        groups = len(self.optimizer.param_groups)
        hyperparameters = self._check_hyperparameters(
            {name: state_dict[name] for name in self._hyperparameters}, where)
        last_epoch = _checks.integer(state_dict["last_epoch"], where, "last_epoch", low=0)
        base_lrs = _rates(state_dict["base_lrs"], groups, where, "base_lrs")
        last_lr = _rates(state_dict["last_lr"], groups, where, "last_lr")
        for name, value in hyperparameters.items():
            setattr(self, name, value)
        self.last_epoch, self.base_lrs, self._last_lr = last_epoch, base_lrs, last_lr


class StepLR(LRScheduler):
    """StepLR(optimizer, step_size, gamma=0.1): lr = initial_lr * gamma ** (epoch // step_size)."""

    _hyperparameters = ("step_size", "gamma")

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1, last_epoch: int = -1):
        checked = self._check_hyperparameters({"step_size": step_size, "gamma": gamma}, "StepLR")
        self.step_size, self.gamma = checked["step_size"], checked["gamma"]
        super().__init__(optimizer, last_epoch)

    def _check_hyperparameters(self, values: dict, where: str) -> dict:
        return {"step_size": _checks.integer(values["step_size"], where, "step_size", low=1),
                "gamma": _checks.real(values["gamma"], where, "gamma", low=0, low_open=True)}

    def get_lr(self) -> list[float]:
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return self._current_lrs()
        return [lr * self.gamma for lr in self._current_lrs()]


class MultiStepLR(LRScheduler):
    """MultiStepLR(optimizer, milestones, gamma=0.1): lr multiplied by gamma at each epoch in milestones
    (by gamma**k at an epoch listed k times)."""

    _hyperparameters = ("milestones", "gamma")

    def __init__(self, optimizer: Optimizer, milestones, gamma: float = 0.1, last_epoch: int = -1):
        checked = self._check_hyperparameters({"milestones": milestones, "gamma": gamma}, "MultiStepLR")
        self.milestones, self.gamma = checked["milestones"], checked["gamma"]
        super().__init__(optimizer, last_epoch)

    def _check_hyperparameters(self, values: dict, where: str) -> dict:
        milestones = values["milestones"]
        if isinstance(milestones, (str, bytes, dict)) or not hasattr(milestones, "__iter__"):
            raise TypeError(f"{where}: milestones must be a list of epoch numbers, got "
                            f"{type(milestones).__name__} {milestones!r:.60}")
        epochs = [_checks.integer(m, where, f"milestone {i}", low=0) for i, m in enumerate(milestones)]
        return {"milestones": Counter(epochs),
                "gamma": _checks.real(values["gamma"], where, "gamma", low=0, low_open=True)}

    def _hyperparameter_state(self) -> dict:
        return {"milestones": sorted(self.milestones.elements()), "gamma": self.gamma}

    def get_lr(self) -> list[float]:
        if self.last_epoch not in self.milestones:
            return self._current_lrs()
        return [lr * self.gamma ** self.milestones[self.last_epoch] for lr in self._current_lrs()]


class ExponentialLR(LRScheduler):
    """ExponentialLR(optimizer, gamma): lr multiplied by gamma every epoch."""

    _hyperparameters = ("gamma",)

    def __init__(self, optimizer: Optimizer, gamma: float, last_epoch: int = -1):
        self.gamma = self._check_hyperparameters({"gamma": gamma}, "ExponentialLR")["gamma"]
        super().__init__(optimizer, last_epoch)

    def _check_hyperparameters(self, values: dict, where: str) -> dict:
        return {"gamma": _checks.real(values["gamma"], where, "gamma", low=0, low_open=True)}

    def get_lr(self) -> list[float]:
        if self._initial:
            return self._current_lrs()
        return [lr * self.gamma for lr in self._current_lrs()]


class CosineAnnealingLR(LRScheduler):
    """CosineAnnealingLR(optimizer, T_max, eta_min=0.0): the rate follows

        eta_t = eta_min + (initial_lr - eta_min) * (1 + cos(pi * t / T_max)) / 2

    computed as torch computes it, recursively from the current rate,
        eta_t = eta_min + (eta_{t-1} - eta_min) * (1 + cos(pi t / T_max)) / (1 + cos(pi (t-1) / T_max)),
    with torch's additive step where that ratio would divide by zero (t - 1 an odd multiple of T_max).
    Past T_max the rate climbs back towards initial_lr (no restarts, the cosine simply continues).
    """

    _hyperparameters = ("T_max", "eta_min")

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0, last_epoch: int = -1):
        checked = self._check_hyperparameters({"T_max": T_max, "eta_min": eta_min}, "CosineAnnealingLR")
        self.T_max, self.eta_min = checked["T_max"], checked["eta_min"]
        super().__init__(optimizer, last_epoch)

    def _check_hyperparameters(self, values: dict, where: str) -> dict:
        return {"T_max": _checks.integer(values["T_max"], where, "T_max", low=1),
                "eta_min": _checks.real(values["eta_min"], where, "eta_min", low=0)}

    def get_lr(self) -> list[float]:
        epoch, period, eta_min = self.last_epoch, self.T_max, self.eta_min
        if self._initial:
            return self._current_lrs()
        if (epoch - 1 - period) % (2 * period) == 0:
            return [lr + (base_lr - eta_min) * (1 - math.cos(math.pi / period)) / 2
                    for base_lr, lr in zip(self.base_lrs, self._current_lrs())]
        ratio = (1 + math.cos(math.pi * epoch / period)) / (1 + math.cos(math.pi * (epoch - 1) / period))
        return [ratio * (lr - eta_min) + eta_min for lr in self._current_lrs()]


class LinearLR(LRScheduler):
    """LinearLR(optimizer, start_factor=1/3, end_factor=1.0, total_iters=5): the linear warm-up.

    lr = initial_lr * (start_factor + (end_factor - start_factor) * min(epoch, total_iters) / total_iters),
    computed recursively as torch does. start_factor in (0, 1], end_factor in [0, 1].
    """

    _hyperparameters = ("start_factor", "end_factor", "total_iters")

    def __init__(self, optimizer: Optimizer, start_factor: float = 1.0 / 3, end_factor: float = 1.0,
                 total_iters: int = 5, last_epoch: int = -1):
        checked = self._check_hyperparameters(
            {"start_factor": start_factor, "end_factor": end_factor, "total_iters": total_iters}, "LinearLR")
        self.start_factor, self.end_factor = checked["start_factor"], checked["end_factor"]
        self.total_iters = checked["total_iters"]
        super().__init__(optimizer, last_epoch)

    def _check_hyperparameters(self, values: dict, where: str) -> dict:
        return {"start_factor": _checks.real(values["start_factor"], where, "start_factor", low=0, high=1,
                                             low_open=True),
                "end_factor": _checks.real(values["end_factor"], where, "end_factor", low=0, high=1),
                "total_iters": _checks.integer(values["total_iters"], where, "total_iters", low=1)}

    def get_lr(self) -> list[float]:
        start, end = self.start_factor, self.end_factor
        if self.last_epoch == 0:
            return [lr * start for lr in self._current_lrs()]
        if self._initial or self.last_epoch > self.total_iters:
            return self._current_lrs()
        # the ratio of consecutive factors: (start + (end-start) e/T) / (start + (end-start) (e-1)/T)
        growth = 1.0 + (end - start) / (self.total_iters * start + (self.last_epoch - 1) * (end - start))
        return [lr * growth for lr in self._current_lrs()]


class ReduceLROnPlateau(LRScheduler):
    """ReduceLROnPlateau(optimizer, mode='min', factor=0.1, patience=10, threshold=1e-4,
    threshold_mode='rel', cooldown=0, min_lr=0, eps=1e-8), stepped with the monitored metric.

    A metric better than the best so far (mode 'min': below best * (1 - threshold) in 'rel' mode, below
    best - threshold in 'abs' mode; 'max' mirrored) resets the count of bad epochs; once more than
    `patience` bad epochs have passed, every group's rate becomes max(lr * factor, min_lr) (a change
    smaller than eps is skipped) and `cooldown` epochs follow in which bad epochs are not counted.
    A NaN metric counts as a bad epoch, as in torch. min_lr: one number, or one per parameter group.
    Construction leaves the rates as they are and sets no 'initial_lr' (torch's does neither).
    """

    steps_on_metric = True
    _hyperparameters = ("mode", "factor", "patience", "threshold", "threshold_mode", "cooldown", "min_lrs",
                        "default_min_lr", "eps")
    _counters = ("last_epoch", "best", "num_bad_epochs", "cooldown_counter", "last_lr")

    def __init__(self, optimizer: Optimizer, mode: str = "min", factor: float = 0.1, patience: int = 10,
                 threshold: float = 1e-4, threshold_mode: str = "rel", cooldown: int = 0, min_lr=0,
                 eps: float = 1e-8):
        _check_optimizer(optimizer, "ReduceLROnPlateau")
        self.optimizer = optimizer
        groups = len(optimizer.param_groups)
        if isinstance(min_lr, (list, tuple)):
            min_lrs, default_min_lr = list(min_lr), None
        else:
            min_lrs, default_min_lr = [min_lr] * groups, min_lr
        checked = self._check_hyperparameters(
            {"mode": mode, "factor": factor, "patience": patience, "threshold": threshold,
             "threshold_mode": threshold_mode, "cooldown": cooldown, "min_lrs": min_lrs,
             "default_min_lr": default_min_lr, "eps": eps}, "ReduceLROnPlateau")
        for name, value in checked.items():
            setattr(self, name, value)
        self.last_epoch = 0
        self._last_lr = self._current_lrs()
        self.best = self._worst()
        self.num_bad_epochs = 0
        self.cooldown_counter = 0

    def _check_hyperparameters(self, values: dict, where: str) -> dict:
        groups = len(self.optimizer.param_groups)
        min_lrs = values["min_lrs"]
        if not isinstance(min_lrs, (list, tuple)):
            raise TypeError(f"{where}: min_lrs must be a list of numbers, got {type(min_lrs).__name__}")
        if len(min_lrs) != groups:
            raise ValueError(f"{where}: expected {groups} min_lr value(s), one per parameter group, got "
                             f"{len(min_lrs)}")
        default = values["default_min_lr"]
        return {
            "mode": _checks.choice(values["mode"], ("min", "max"), where, "mode"),
            "factor": _checks.real(values["factor"], where, "factor", low=0, high=1, high_open=True),
            "patience": _checks.integer(values["patience"], where, "patience", low=0),
            "threshold": _checks.real(values["threshold"], where, "threshold", low=0),
            "threshold_mode": _checks.choice(values["threshold_mode"], ("rel", "abs"), where,
                                             "threshold_mode"),
            "cooldown": _checks.integer(values["cooldown"], where, "cooldown", low=0),
            "min_lrs": [_checks.real(v, where, f"min_lr[{i}]", low=0) for i, v in enumerate(min_lrs)],
            "default_min_lr": None if default is None else _checks.real(default, where, "min_lr", low=0),
            "eps": _checks.real(values["eps"], where, "eps", low=0),
        }

    def _worst(self) -> float:
        return math.inf if self.mode == "min" else -math.inf

    def step(self, metric) -> None:
        """One epoch's end with the monitored value `metric` (a number or a 0-d Tensor)."""
        current = _metric(metric)
        self.last_epoch += 1
        if self._is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0  # bad epochs in the cooldown do not count
        if self.num_bad_epochs > self.patience:
            self._reduce_lr()
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lr = self._current_lrs()

    def _reduce_lr(self) -> None:
        groups = self.optimizer.param_groups
        if len(groups) != len(self.min_lrs):
            if self.default_min_lr is None:
                raise RuntimeError(f"ReduceLROnPlateau.step: the optimizer has {len(groups)} parameter "
                                   f"group(s) but min_lr was given for {len(self.min_lrs)}; set min_lrs to "
                                   "one value per group")
            self.min_lrs = [self.default_min_lr] * len(groups)
        for group, min_lr in zip(groups, self.min_lrs):
            old_lr = float(group["lr"])
            new_lr = max(old_lr * self.factor, min_lr)
            if old_lr - new_lr > self.eps:
                group["lr"] = new_lr

    def _is_better(self, value: float, best: float) -> bool:
        if self.mode == "min":
            if self.threshold_mode == "rel":
                return value < best * (1.0 - self.threshold)
            return value < best - self.threshold
        if self.threshold_mode == "rel":
            return value > best * (self.threshold + 1.0)
        return value > best + self.threshold

    def state_dict(self) -> dict:
        """The hyperparameters and the counters ('last_epoch', 'best' (inf before the first step),
        'num_bad_epochs', 'cooldown_counter', 'last_lr'): plain Python values only."""
        state = {name: getattr(self, name) for name in self._hyperparameters}
        state["min_lrs"] = list(self.min_lrs)
        state.update(last_epoch=self.last_epoch, best=self.best, num_bad_epochs=self.num_bad_epochs,
                     cooldown_counter=self.cooldown_counter, last_lr=list(self._last_lr))
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore what state_dict() returned; a foreign or damaged dict raises and changes nothing."""
        where = "ReduceLROnPlateau.load_state_dict"
        _check_state_keys(state_dict, set(self._hyperparameters) | set(self._counters), where)
        checked = self._check_hyperparameters({name: state_dict[name] for name in self._hyperparameters},
                                              where)
        best = state_dict["best"]
        if isinstance(best, bool) or not isinstance(best, numbers.Real) or math.isnan(best):
            raise ValueError(f"{where}: best must be a number (inf before the first step), got {best!r:.60}")
        counters = {
            "last_epoch": _checks.integer(state_dict["last_epoch"], where, "last_epoch", low=0),
            "best": float(best),
            "num_bad_epochs": _checks.integer(state_dict["num_bad_epochs"], where, "num_bad_epochs", low=0),
            "cooldown_counter": _checks.integer(state_dict["cooldown_counter"], where, "cooldown_counter",
                                                low=0),
            "_last_lr": _rates(state_dict["last_lr"], len(self.optimizer.param_groups), where, "last_lr"),
        }
        for name, value in {**checked, **counters}.items():
            setattr(self, name, value)


# ---------------------------------------------------------------------------------------------

def _check_optimizer(optimizer, name: str) -> None:
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"{name}: expected a tensorgrad optimizer (tg.optim.SGD, Adam, ...), got "
                        f"{type(optimizer).__name__}")


def _check_state_keys(state_dict, expected: set, where: str) -> None:
    if not isinstance(state_dict, dict):
        raise TypeError(f"{where}: expected a dict as returned by state_dict(), got "
                        f"{type(state_dict).__name__}")
    if set(state_dict) != expected:
        missing = sorted(map(repr, expected - set(state_dict)))
        extra = sorted(map(repr, set(state_dict) - expected))
        raise ValueError(f"{where}: the state dict does not fit this scheduler (missing "
                         f"[{', '.join(missing)}], unexpected [{', '.join(extra)}]); another scheduler's?")


def _rates(values, groups: int, where: str, name: str) -> list[float]:
    """A list of one learning rate per parameter group, as Python floats."""
    if not isinstance(values, (list, tuple)):
        raise ValueError(f"{where}: {name} must be a list of learning rates, got {type(values).__name__}")
    if len(values) != groups:
        raise ValueError(f"{where}: {name} holds {len(values)} learning rate(s) but the optimizer has "
                         f"{groups} parameter group(s)")
    return [_checks.real(v, where, f"{name}[{i}]", low=0) for i, v in enumerate(values)]


def _metric(metric) -> float:
    if isinstance(metric, bool):
        raise TypeError("ReduceLROnPlateau.step: expected a number for the metric, got bool")
    try:
        return float(metric)  # a 0-d Tensor converts itself (one host read per epoch)
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(f"ReduceLROnPlateau.step: expected a number or a 0-d tensor for the metric, got "
                        f"{type(metric).__name__} {metric!r:.60} ({error})") from None
