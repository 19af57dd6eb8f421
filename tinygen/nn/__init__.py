"""Neural-network building blocks, as ``torch.nn``: ``Module``/``Parameter``, layers, losses, ``functional``
(stateless forms, ``import tinygen.nn.functional as F``) and ``init`` (weight initialisation)."""
from .module import Module, Parameter, Sequential, ModuleList
from .layers import (Identity, Linear, Embedding, Dropout, BatchNorm1d, BatchNorm2d, LayerNorm, Flatten, Unflatten,
                     ReLU, LeakyReLU, ELU, Softplus, Tanh, Sigmoid, Softmax, LogSoftmax)
from .losses import (MSELoss, L1Loss, BCELoss, BCEWithLogitsLoss, CrossEntropyLoss, NLLLoss, GaussianNLLLoss)
from . import functional, init, utils
from .layers import Softmin, CosineSimilarity  # noqa: E402
from .losses import KLDivLoss, SmoothL1Loss, HuberLoss  # noqa: E402
from .layers import SyncBatchNorm
from . import parallel
from .layers import Conv2d, ConvTranspose2d, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, Upsample  # noqa: E402
from .layers import ZeroPad2d, ConstantPad2d, ReflectionPad2d, ReplicationPad2d, CircularPad2d  # noqa: E402
from .layers import GELU, SiLU, Mish, LogSigmoid, Softsign, SELU, CELU, Hardtanh, ReLU6, Hardsigmoid
