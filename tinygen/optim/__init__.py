"""Optimizers (SGD, Adam, AdamW, RMSprop) and learning-rate schedules, with PyTorch's update rules and API."""
from . import lr_scheduler
from .adam import Adam, AdamW
from .optimizer import Optimizer, get_lr, set_lr
from .rmsprop import RMSprop
from .sgd import SGD

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "lr_scheduler", "get_lr", "set_lr"]
