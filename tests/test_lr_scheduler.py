"""tensorgrad.optim.lr_scheduler: the learning-rate trajectories of torch.optim.lr_scheduler over 50 epochs
(SGD with two parameter groups at different rates, every get_last_lr() within 1e-12), hand-computed
schedules that run without torch, state dicts that go through tg.save mid-run and continue the same
trajectory, and the argument checks."""

import math

import numpy as np
import pytest

import tensorgrad as tg
import tensorgrad.optim as optim
from tensorgrad.optim import lr_scheduler
from tensorgrad.optim.lr_scheduler import (
    CosineAnnealingLR,
    ExponentialLR,
    LinearLR,
    MultiStepLR,
    ReduceLROnPlateau,
    StepLR,
)

pytestmark = pytest.mark.usefixtures("on_the_cpu")

EPOCHS = 50
GROUP_LRS = (0.1, 0.03)

# name -> (keyword arguments, same for tensorgrad and torch)
SCHEDULES = {
    "step": ("StepLR", dict(step_size=7, gamma=0.5)),
    "step-default-gamma": ("StepLR", dict(step_size=3)),
    "multistep": ("MultiStepLR", dict(milestones=[30, 5, 12, 12], gamma=0.3)),
    "exponential": ("ExponentialLR", dict(gamma=0.93)),
    "cosine-restarts": ("CosineAnnealingLR", dict(T_max=10, eta_min=0.001)),  # 50 epochs = 5 half-periods
    "cosine-long": ("CosineAnnealingLR", dict(T_max=50)),
    "cosine-odd": ("CosineAnnealingLR", dict(T_max=7, eta_min=1e-4)),
    "warmup": ("LinearLR", dict(start_factor=0.1, total_iters=8)),
    "warmup-default": ("LinearLR", dict()),
    "linear-decay": ("LinearLR", dict(start_factor=1.0, end_factor=0.2, total_iters=20)),
}

# A validation loss that improves, stalls, wobbles inside the threshold, gets worse and improves again.
PLATEAU_METRIC = ([1.0, 0.8, 0.7, 0.65, 0.65, 0.65, 0.6499, 0.66, 0.64, 0.64, 0.64, 0.64, 0.5]
                  + [0.5] * 6 + [0.49996, 0.7, 0.7, 0.45, 0.44, 0.43] + [0.43 + 0.001 * i for i in range(10)]
                  + [0.3, 0.3, float("nan"), 0.3, 0.2] + [0.2] * 10)

PLATEAUS = {
    "min-rel": dict(mode="min", factor=0.5, patience=2, cooldown=1, min_lr=[0.01, 0.0005]),
    "min-abs": dict(mode="min", factor=0.3, patience=1, threshold=0.02, threshold_mode="abs", min_lr=1e-3),
    "max-rel": dict(mode="max", factor=0.5, patience=0, threshold=0.01),
    "max-abs-cooldown": dict(mode="max", patience=2, threshold=0.005, threshold_mode="abs", cooldown=3),
    "default": dict(patience=3, eps=1e-3),
}


def _params():
    return [tg.zeros(3, requires_grad=True), tg.zeros(2, requires_grad=True)]


def _ours_sgd():
    first, second = _params()
    return optim.SGD([{"params": [first], "lr": GROUP_LRS[0]}, {"params": [second], "lr": GROUP_LRS[1]}],
                     momentum=0.9)


def _torch_sgd(torch):
    first, second = torch.zeros(3, requires_grad=True), torch.zeros(2, requires_grad=True)
    groups = [{"params": [first], "lr": GROUP_LRS[0]}, {"params": [second], "lr": GROUP_LRS[1]}]
    return torch.optim.SGD(groups, momentum=0.9)


def _assert_rates(ours, theirs, where):
    assert len(ours) == len(theirs) == 2, where
    assert all(type(lr) is float for lr in ours), where
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=0, err_msg=where)
    # bitwise too: the rates are computed with torch's own arithmetic (the recursive cosine, not the closed
    # form, which agrees to about 1e-15 and would pass the line above)
    assert ours == theirs, where


# ---------------------------------------------------------------------------------------------
# against torch


@pytest.mark.parametrize("case", SCHEDULES)
def test_trajectory_matches_torch(case):
    torch = pytest.importorskip("torch")
    name, kwargs = SCHEDULES[case]
    ours_opt, theirs_opt = _ours_sgd(), _torch_sgd(torch)
    ours = getattr(lr_scheduler, name)(ours_opt, **kwargs)
    theirs = getattr(torch.optim.lr_scheduler, name)(theirs_opt, **kwargs)
    _assert_rates(ours.get_last_lr(), theirs.get_last_lr(), "after construction")
    assert [g["initial_lr"] for g in ours_opt.param_groups] == list(GROUP_LRS)
    assert ours.last_epoch == theirs.last_epoch == 0
    for epoch in range(1, EPOCHS + 1):
        ours_opt.step()
        theirs_opt.step()
        ours.step()
        theirs.step()
        _assert_rates(ours.get_last_lr(), theirs.get_last_lr(), f"epoch {epoch}")
        _assert_rates([g["lr"] for g in ours_opt.param_groups], [g["lr"] for g in theirs_opt.param_groups],
                      f"group lrs at epoch {epoch}")
    assert ours.last_epoch == EPOCHS
    assert not ours.steps_on_metric


@pytest.mark.parametrize("case", PLATEAUS)
def test_plateau_matches_torch(case):
    torch = pytest.importorskip("torch")
    ours_opt, theirs_opt = _ours_sgd(), _torch_sgd(torch)
    ours = ReduceLROnPlateau(ours_opt, **PLATEAUS[case])
    theirs = torch.optim.lr_scheduler.ReduceLROnPlateau(theirs_opt, **PLATEAUS[case])
    assert ours.steps_on_metric
    # a 'max' schedule is fed the negated loss, so both modes see the same plateaus
    sign = -1.0 if PLATEAUS[case].get("mode") == "max" else 1.0
    changes = 0
    for epoch, value in enumerate(PLATEAU_METRIC[:EPOCHS], start=1):
        before = ours.get_last_lr()
        ours.step(sign * value)
        theirs.step(sign * value)
        _assert_rates(ours.get_last_lr(), theirs.get_last_lr(), f"epoch {epoch}")
        counters = ("num_bad_epochs", "cooldown_counter", "last_epoch", "best")
        assert [getattr(ours, c) for c in counters] == [getattr(theirs, c) for c in counters], epoch
        changes += ours.get_last_lr() != before
    assert changes >= 2  # the metric script does exercise the reductions


def test_plateau_takes_a_0d_tensor_like_torch():
    torch = pytest.importorskip("torch")
    ours_opt, theirs_opt = _ours_sgd(), _torch_sgd(torch)
    ours = ReduceLROnPlateau(ours_opt, patience=0)
    theirs = torch.optim.lr_scheduler.ReduceLROnPlateau(theirs_opt, patience=0)
    for value in (0.5, 0.6, 0.7):
        ours.step(tg.tensor(value, dtype=tg.float64))
        theirs.step(torch.tensor(value, dtype=torch.float64))
    _assert_rates(ours.get_last_lr(), theirs.get_last_lr(), "0-d tensors")


@pytest.mark.parametrize("case", ["step", "multistep", "exponential", "cosine-restarts", "warmup"])
def test_last_epoch_resume_matches_torch(case):
    """Constructed with last_epoch=k on groups that hold 'initial_lr' (torch's older way to resume)."""
    torch = pytest.importorskip("torch")
    name, kwargs = SCHEDULES[case]
    ours_opt, theirs_opt = _ours_sgd(), _torch_sgd(torch)
    for groups in (ours_opt.param_groups, theirs_opt.param_groups):
        for group, lr in zip(groups, (0.07, 0.02)):
            group["initial_lr"], group["lr"] = group["lr"], lr
    ours = getattr(lr_scheduler, name)(ours_opt, last_epoch=9, **kwargs)
    theirs = getattr(torch.optim.lr_scheduler, name)(theirs_opt, last_epoch=9, **kwargs)
    _assert_rates(ours.get_last_lr(), theirs.get_last_lr(), "after construction")
    assert ours.base_lrs == list(GROUP_LRS)
    for epoch in range(20):
        ours_opt.step()
        theirs_opt.step()
        ours.step()
        theirs.step()
        _assert_rates(ours.get_last_lr(), theirs.get_last_lr(), f"step {epoch}")


# ---------------------------------------------------------------------------------------------
# hand-computed, without torch


def _trajectory(scheduler, epochs):
    rates = [scheduler.get_last_lr()[0]]
    for _ in range(epochs):
        scheduler.step()
        rates.append(scheduler.get_last_lr()[0])
    return rates


def _one_group(lr=1.0):
    return optim.SGD([tg.zeros(2, requires_grad=True)], lr=lr)


def test_hand_computed_schedules():
    assert _trajectory(StepLR(_one_group(), step_size=2, gamma=0.5), 5) == [1, 1, .5, .5, .25, .25]
    assert _trajectory(MultiStepLR(_one_group(), [1, 3, 3], gamma=0.5), 4) == [1, .5, .5, .125, .125]
    assert _trajectory(ExponentialLR(_one_group(2.0), gamma=0.5), 3) == [2, 1, .5, .25]
    np.testing.assert_allclose(_trajectory(LinearLR(_one_group(), 0.25, 1.0, 3), 5),
                               [0.25, 0.5, 0.75, 1.0, 1.0, 1.0], rtol=1e-15)
    np.testing.assert_allclose(_trajectory(LinearLR(_one_group(), 1.0, 0.5, 2), 3),
                               [1.0, 0.75, 0.5, 0.5], rtol=1e-15)
    # the cosine's closed form, eta_min + (1 - eta_min) (1 + cos(pi t / T)) / 2, the whole way up and down
    eta_min = 0.1
    expected = [eta_min + (1 - eta_min) * (1 + math.cos(math.pi * t / 4)) / 2 for t in range(13)]
    np.testing.assert_allclose(_trajectory(CosineAnnealingLR(_one_group(), 4, eta_min), 12),
                               expected, rtol=1e-12)


def test_hand_computed_plateau():
    scheduler = ReduceLROnPlateau(_one_group(), factor=0.5, patience=1, min_lr=0.2)
    rates = []
    for metric in [1, 1, 1, 1, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]:
        scheduler.step(metric)
        rates.append(scheduler.get_last_lr()[0])
    # a reduction after two epochs without improvement (patience 1); never below min_lr
    assert rates == [1, 1, .5, .5, .5, .5, .25, .25, .2, .2, .2]


def test_construction_sets_initial_lr_and_leaves_plateau_rates():
    opt = _one_group(0.5)
    scheduler = LinearLR(opt, start_factor=0.5)
    assert opt.param_groups[0]["initial_lr"] == 0.5 and opt.param_groups[0]["lr"] == 0.25
    assert scheduler.get_last_lr() == [0.25] and scheduler.base_lrs == [0.5]
    scheduler.get_last_lr()[0] = 99.0  # a copy: the caller cannot change the schedule through it
    assert scheduler.get_last_lr() == [0.25]
    opt = _one_group(0.5)
    ReduceLROnPlateau(opt)
    assert opt.param_groups[0]["lr"] == 0.5 and "initial_lr" not in opt.param_groups[0]


def test_reachable_from_tg_optim():
    assert tg.optim.StepLR is StepLR and tg.optim.ReduceLROnPlateau is ReduceLROnPlateau
    assert tg.optim.lr_scheduler.CosineAnnealingLR is CosineAnnealingLR
    assert issubclass(LinearLR, tg.optim.LRScheduler)


# ---------------------------------------------------------------------------------------------
# state dicts through tg.save


def _make(case):
    opt = _ours_sgd()
    if case in PLATEAUS:
        return opt, ReduceLROnPlateau(opt, **PLATEAUS[case])
    name, kwargs = SCHEDULES[case]
    return opt, getattr(lr_scheduler, name)(opt, **kwargs)


def _advance(scheduler, epochs):
    for epoch in epochs:
        if scheduler.steps_on_metric:
            scheduler.step(PLATEAU_METRIC[epoch])
        else:
            scheduler.step()
    return scheduler.get_last_lr()


@pytest.mark.parametrize("stop", [0, 17])
@pytest.mark.parametrize("case", ["step", "multistep", "exponential", "cosine-restarts", "warmup", "min-rel",
                                  "max-abs-cooldown"])
def test_state_dict_round_trip_through_save(case, stop, tmp_path):
    _, straight = _make(case)
    expected = [_advance(straight, [epoch]) for epoch in range(EPOCHS)]

    opt, scheduler = _make(case)
    _advance(scheduler, range(stop))
    path = tmp_path / "state.tg"
    tg.save({"optimizer": opt.state_dict(), "scheduler": scheduler.state_dict()}, path)
    del opt, scheduler

    # torch's documented order: a fresh scheduler on a fresh optimizer, then both states
    opt, scheduler = _make(case)
    _advance(scheduler, range(3))  # a different position, which the load must overwrite
    saved = tg.load(path)
    opt.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    assert scheduler.state_dict() == saved["scheduler"]
    resumed = [_advance(scheduler, [epoch]) for epoch in range(stop, EPOCHS)]
    assert resumed == expected[stop:]
    assert [g["lr"] for g in opt.param_groups] == expected[-1]


def test_state_dict_is_plain_python():
    for case in ["multistep", "min-rel"]:
        _, scheduler = _make(case)
        state = scheduler.state_dict()
        stack = [state]
        while stack:
            value = stack.pop()
            if isinstance(value, dict):
                assert all(type(k) is str for k in value)
                stack.extend(value.values())
            elif isinstance(value, list):
                stack.extend(value)
            else:
                assert value is None or type(value) in (int, float, str), (case, value)
    assert _make("multistep")[1].state_dict()["milestones"] == [5, 12, 12, 30]
    assert _make("min-rel")[1].state_dict()["best"] == math.inf


def test_load_state_dict_refuses_foreign_states():
    _, step = _make("step")
    _, cosine = _make("cosine-restarts")
    _, plateau = _make("min-rel")
    before = step.state_dict()
    with pytest.raises(ValueError, match=r"StepLR.load_state_dict: .*missing \['gamma', 'step_size'\]"):
        step.load_state_dict(cosine.state_dict())
    with pytest.raises(ValueError, match="StepLR.load_state_dict"):
        step.load_state_dict(plateau.state_dict())
    with pytest.raises(TypeError, match="StepLR.load_state_dict: expected a dict"):
        step.load_state_dict([1, 2])
    one_group = StepLR(_one_group(), step_size=2).state_dict()
    with pytest.raises(ValueError, match="base_lrs holds 1 learning rate.*2 parameter group"):
        step.load_state_dict(one_group)
    with pytest.raises(ValueError, match="StepLR.load_state_dict: step_size must be >= 1, got 0"):
        step.load_state_dict({**before, "step_size": 0})
    assert step.state_dict() == before
    with pytest.raises(ValueError, match="ReduceLROnPlateau.load_state_dict: unknown mode"):
        plateau.load_state_dict({**plateau.state_dict(), "mode": "median"})
    with pytest.raises(ValueError, match="ReduceLROnPlateau.load_state_dict: best must be a number"):
        plateau.load_state_dict({**plateau.state_dict(), "best": float("nan")})


# ---------------------------------------------------------------------------------------------
# argument checks


BAD_ARGUMENTS = [
    (lambda o: StepLR(o, step_size=0), ValueError, "StepLR: step_size must be >= 1, got 0"),
    (lambda o: StepLR(o, step_size=2.5), TypeError, "StepLR: expected an int for step_size"),
    (lambda o: StepLR(o, 2, gamma=0.0), ValueError, r"StepLR: invalid gamma: 0.0"),
    (lambda o: StepLR(o, 2, gamma=float("nan")), ValueError, "StepLR: invalid gamma"),
    (lambda o: StepLR("sgd", 2), TypeError, "StepLR: expected a tensorgrad optimizer"),
    (lambda o: StepLR(o, 2, last_epoch=-2), ValueError, "StepLR: last_epoch must be >= -1"),
    (lambda o: StepLR(o, 2, last_epoch=4), ValueError, "StepLR: last_epoch=4 .*'initial_lr'"),
    (lambda o: MultiStepLR(o, 5), TypeError, "MultiStepLR: milestones must be a list"),
    (lambda o: MultiStepLR(o, [3, -1]), ValueError, "MultiStepLR: milestone 1 must be >= 0"),
    (lambda o: MultiStepLR(o, [3, "6"]), TypeError, "MultiStepLR: expected an int for milestone 1"),
    (lambda o: ExponentialLR(o, gamma=-0.5), ValueError, "ExponentialLR: invalid gamma"),
    (lambda o: ExponentialLR(o, gamma=True), TypeError, "ExponentialLR: expected a real number"),
    (lambda o: CosineAnnealingLR(o, T_max=0), ValueError, "CosineAnnealingLR: T_max must be >= 1"),
    (lambda o: CosineAnnealingLR(o, 10, eta_min=-1), ValueError, "CosineAnnealingLR: invalid eta_min"),
    (lambda o: LinearLR(o, start_factor=0.0), ValueError, "LinearLR: invalid start_factor"),
    (lambda o: LinearLR(o, start_factor=1.5), ValueError, "LinearLR: invalid start_factor"),
    (lambda o: LinearLR(o, end_factor=1.1), ValueError, "LinearLR: invalid end_factor"),
    (lambda o: LinearLR(o, total_iters=0), ValueError, "LinearLR: total_iters must be >= 1"),
    (lambda o: ReduceLROnPlateau(o, mode="best"), ValueError, "ReduceLROnPlateau: unknown mode"),
    (lambda o: ReduceLROnPlateau(o, factor=1.0), ValueError, "ReduceLROnPlateau: invalid factor"),
    (lambda o: ReduceLROnPlateau(o, patience=-1), ValueError, "ReduceLROnPlateau: patience must be"),
    (lambda o: ReduceLROnPlateau(o, threshold_mode="pct"), ValueError,
     "ReduceLROnPlateau: unknown threshold_mode"),
    (lambda o: ReduceLROnPlateau(o, cooldown=1.5), TypeError, "ReduceLROnPlateau: expected an int"),
    (lambda o: ReduceLROnPlateau(o, min_lr=[0.1]), ValueError,
     "ReduceLROnPlateau: expected 2 min_lr value.*got 1"),
    (lambda o: ReduceLROnPlateau(o, min_lr=-1e-3), ValueError, "ReduceLROnPlateau: invalid min_lr"),
    (lambda o: ReduceLROnPlateau(o, eps=float("inf")), ValueError, "ReduceLROnPlateau: invalid eps"),
    (lambda o: ReduceLROnPlateau(o).step("low"), TypeError,
     "ReduceLROnPlateau.step: expected a number or a 0-d tensor"),
    (lambda o: ReduceLROnPlateau(o).step(None), TypeError, "ReduceLROnPlateau.step"),
    (lambda o: ReduceLROnPlateau(o).step(tg.ones(3)), TypeError, "ReduceLROnPlateau.step"),
]


@pytest.mark.parametrize("make, error, message", BAD_ARGUMENTS)
def test_bad_arguments(make, error, message):
    opt = _ours_sgd()
    with pytest.raises(error, match=message):
        make(opt)
    assert [g["lr"] for g in opt.param_groups] == list(GROUP_LRS)


def test_step_refuses_a_group_added_later():
    opt = _ours_sgd()
    scheduler = StepLR(opt, step_size=2)
    opt.add_param_group({"params": [tg.zeros(1, requires_grad=True)]})
    with pytest.raises(RuntimeError, match="StepLR.step: the optimizer has 3 parameter group.*built for 2"):
        scheduler.step()


def test_adam_state_with_initial_lr_loads_and_is_checked(tmp_path):
    """The 'initial_lr' a scheduler puts in each group travels with the optimizer's state dict."""
    p = tg.ones(3, dtype=tg.float64, requires_grad=True)
    opt = optim.Adam([p], lr=0.01)
    scheduler = CosineAnnealingLR(opt, T_max=4)
    for _ in range(2):
        (p * p).sum().backward()
        opt.step()
        opt.zero_grad()
        scheduler.step()
    tg.save({"optimizer": opt.state_dict(), "scheduler": scheduler.state_dict()}, tmp_path / "adam.tg")
    saved = tg.load(tmp_path / "adam.tg")
    fresh_p = tg.ones(3, dtype=tg.float64, requires_grad=True)
    fresh = optim.Adam([fresh_p], lr=0.5)
    fresh_scheduler = CosineAnnealingLR(fresh, T_max=4)
    fresh.load_state_dict(saved["optimizer"])
    fresh_scheduler.load_state_dict(saved["scheduler"])
    assert fresh.param_groups[0]["initial_lr"] == 0.01
    assert fresh.param_groups[0]["lr"] == opt.param_groups[0]["lr"] != 0.01
    scheduler.step()
    fresh_scheduler.step()
    assert fresh_scheduler.get_last_lr() == scheduler.get_last_lr()
    bad = saved["optimizer"]
    bad["param_groups"][0]["initial_lr"] = -1.0
    with pytest.raises(ValueError, match="Adam.load_state_dict: parameter group 0 .*invalid initial_lr"):
        fresh.load_state_dict(bad)
