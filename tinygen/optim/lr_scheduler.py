"""Learning-rate schedules that set ``group["lr"]`` of an optimizer each ``step()``, as PyTorch's do (a rate held
in a tensor is written in place: ``optim.set_lr``).

Call ``scheduler.step()`` after ``optimizer.step()`` (usually once per epoch). Each schedule computes the new rate
from the current one in PyTorch's recursive ("chainable") form, so the rates are the very same floats PyTorch
gives for the same sequence of calls, and schedules can be combined or the rate changed by hand in between.
"""
import math
import numbers
import types

from ..capture import note_created, replayed
from ..tensor import Tensor
from .optimizer import Optimizer, get_lr, set_lr


class LRScheduler:
    """Base class: sets ``group["lr"]`` of every parameter group to ``get_lr()`` on each ``step()``.

    Attributes: ``optimizer``, ``base_lrs`` (each group's initial lr), ``last_epoch`` (number of ``step()`` calls;
    0 right after construction).
    """

    def __init__(self, optimizer, last_epoch=-1):
        note_created(self)  # inside a compiled step: refused (capture.py)
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(self).__name__}: expected a tinygen.optim.Optimizer, got "
                            f"{type(optimizer).__name__}")
        if not isinstance(last_epoch, int) or last_epoch < -1:
            raise ValueError(f"{type(self).__name__}: last_epoch must be an int >= -1, got {last_epoch!r}")
        self.optimizer = optimizer
        if last_epoch == -1:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", get_lr(group))
        else:
            for i, group in enumerate(optimizer.param_groups):
                if "initial_lr" not in group:
                    raise KeyError(f"{type(self).__name__}: resuming at last_epoch={last_epoch} needs "
                                   f"'initial_lr' in param_groups[{i}]; load the optimizer's state_dict first")
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = last_epoch
        self._step_count = 0
        self._is_initial = True  # the first step() (just below) keeps the current rates
        self.step()
        self._is_initial = False

    def get_lr(self):
        """The rates for the current ``last_epoch`` (called by ``step()``; read ``get_last_lr()`` instead)."""
        raise NotImplementedError

    def get_last_lr(self):
        """The learning rate of each parameter group, as last set by ``step()``."""
        return self._last_lr

    @replayed(grads=lambda self: ("reads", ()),  # writes the rates held in tensors, in place (optimizer.set_lr)
              writes=lambda self: tuple(g["lr"] for g in self.optimizer.param_groups if isinstance(g["lr"], Tensor)))
    def step(self):
        """Advance one epoch and set each group's ``lr``."""
        self._step_count += 1
        self.last_epoch += 1
        values = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, values):
            set_lr(group, lr)  # a rate held in a tensor is written in place
        self._last_lr = self._lrs()

    def state_dict(self):
        """Everything but the optimizer (plain numbers and lists: safe for ``tinygen.save``)."""
        return {key: value for key, value in self.__dict__.items() if key != "optimizer"}

    def load_state_dict(self, state_dict):
        if not isinstance(state_dict, dict):
            raise TypeError(f"{type(self).__name__}.load_state_dict expects a dict, got {type(state_dict).__name__}")
        missing = [k for k in ("last_epoch", "base_lrs") if k not in state_dict]
        if missing:
            raise KeyError(f"{type(self).__name__}.load_state_dict: the state dict lacks {missing}")
        if len(state_dict["base_lrs"]) != len(self.optimizer.param_groups):
            raise ValueError(f"{type(self).__name__}.load_state_dict: the state dict is for "
                             f"{len(state_dict['base_lrs'])} parameter groups, the optimizer has "
                             f"{len(self.optimizer.param_groups)}")
        self.__dict__.update(state_dict)

    def _lrs(self):
        return [get_lr(group) for group in self.optimizer.param_groups]


def _check_number(owner, name, value, positive=False, integer=False):
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        raise TypeError(f"{owner}: {name} must be {'an int' if integer else 'a number'}, got {value!r}")
    if (value <= 0) if positive else not (value >= 0):
        raise ValueError(f"{owner}: {name} must be {'> 0' if positive else '>= 0'}, got {value!r}")


class LambdaLR(LRScheduler):
    """lr = base_lr * lr_lambda(epoch); ``lr_lambda`` is a function, or a list with one per parameter group."""

    def __init__(self, optimizer, lr_lambda, last_epoch=-1):
        n = len(optimizer.param_groups) if isinstance(optimizer, Optimizer) else 0
        if isinstance(lr_lambda, (list, tuple)):
            if len(lr_lambda) != n:
                raise ValueError(f"LambdaLR: expected {n} lr_lambdas (one per parameter group), got {len(lr_lambda)}")
            self.lr_lambdas = list(lr_lambda)
        else:
            self.lr_lambdas = [lr_lambda] * n
        for f in self.lr_lambdas:
            if not callable(f):
                raise TypeError(f"LambdaLR: lr_lambda must be callable (epoch -> factor), got {f!r}")
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        return [base_lr * f(self.last_epoch) for f, base_lr in zip(self.lr_lambdas, self.base_lrs)]

    def state_dict(self):
        """As the base class; a plain function is not saved (None), a callable object's attributes are."""
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "lr_lambdas")}
        state["lr_lambdas"] = [None if isinstance(f, types.FunctionType) else dict(vars(f))
                               for f in self.lr_lambdas]
        return state

    def load_state_dict(self, state_dict):
        state = dict(state_dict)
        saved = state.pop("lr_lambdas", None) or []
        super().load_state_dict(state)
        for f, attrs in zip(self.lr_lambdas, saved):
            if attrs is not None:
                vars(f).update(attrs)


class StepLR(LRScheduler):
    """Multiply the rate by ``gamma`` every ``step_size`` epochs."""

    def __init__(self, optimizer, step_size, gamma=0.1, last_epoch=-1):
        _check_number("StepLR", "step_size", step_size, positive=True, integer=True)
        _check_number("StepLR", "gamma", gamma)
        self.step_size = step_size
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return self._lrs()
        return [lr * self.gamma for lr in self._lrs()]


class ExponentialLR(LRScheduler):
    """Multiply the rate by ``gamma`` every epoch."""

    def __init__(self, optimizer, gamma, last_epoch=-1):
        _check_number("ExponentialLR", "gamma", gamma)
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        if self._is_initial:
            return self._lrs()
        return [lr * self.gamma for lr in self._lrs()]


class CosineAnnealingLR(LRScheduler):
    """Cosine annealing from the base rate to ``eta_min`` over ``T_max`` epochs (and back up, periodically):

        lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2
    """

    def __init__(self, optimizer, T_max, eta_min=0.0, last_epoch=-1):
        _check_number("CosineAnnealingLR", "T_max", T_max, positive=True, integer=True)
        _check_number("CosineAnnealingLR", "eta_min", eta_min)
        self.T_max = T_max
        self.eta_min = eta_min
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        e, T, eta_min = self.last_epoch, self.T_max, self.eta_min
        if self._is_initial:
            return self._lrs()
        if self._step_count == 1 and e > 0:  # resumed at last_epoch > 0: the closed form
            return [eta_min + (base - eta_min) * (1 + math.cos(e * math.pi / T)) / 2 for base in self.base_lrs]
        if (e - 1 - T) % (2 * T) == 0:  # at the bottom of a period the recursive ratio would be 0/0
            return [lr + (base - eta_min) * (1 - math.cos(math.pi / T)) / 2
                    for lr, base in zip(self._lrs(), self.base_lrs)]
        return [(1 + math.cos(math.pi * e / T)) / (1 + math.cos(math.pi * (e - 1) / T)) * (lr - eta_min) + eta_min
                for lr in self._lrs()]
