"""Neural-network building blocks, as ``torch.nn``: ``Module``/``Parameter``, layers, losses, ``functional``
(stateless forms, ``import tinygen.nn.functional as F``) and ``init`` (weight initialisation)."""
from .module import Module, Parameter, Sequential, ModuleList
from .layers import (Identity, Linear, Embedding, Dropout, BatchNorm1d, BatchNorm2d, LayerNorm, Flatten, Unflatten,
                     ReLU, LeakyReLU, ELU, Softplus, Tanh, Sigmoid, Softmax, LogSoftmax)
from .losses import (MSELoss, L1Loss, BCELoss, BCEWithLogitsLoss, CrossEntropyLoss, NLLLoss, GaussianNLLLoss)
from . import functional, init, utils
from .layers import GELU, SiLU, Mish, LogSigmoid, Softsign, SELU, CELU, Hardtanh, ReLU6, Hardsigmoid
