"""GAN objectives, one ``GANLoss`` each in the registry ``LOSSES``, and the WGAN-GP gradient penalty.

With D(x) = sigmoid(l(x)) for the logits l of the discriminator (softplus(t) = log(1 + e^t)):

  minimax        the original objective (Goodfellow et al. 2014). D minimises -log D(x) - log(1 - D(G(z)))
                 = softplus(-l_real) + softplus(l_fake); G minimises log(1 - D(G(z))) = -softplus(l_fake), whose
                 gradient vanishes when D confidently rejects the fakes (early in training).
  nonsaturating  the same D loss; G minimises -log D(G(z)) = softplus(-l_fake), strong gradients where the
                 minimax one vanishes (the paper's own recommendation; the default).
  wgan           Wasserstein GAN (Arjovsky et al. 2017): the critic maximises E[f(x)] - E[f(G(z))], i.e. minimises
                 E[f(G(z))] - E[f(x)], kept Lipschitz by clipping its weights to [-c, c] after each step (c 0.01);
                 G minimises -E[f(G(z))]. RMSprop 5e-5 and 5 critic steps per generator step by default.
  wgan-gp        the same, with the Lipschitz constraint as a penalty instead of clipping (Gulrajani et al. 2017):
                 lambda * E[(||grad_x f(x_hat)|| - 1)^2] at x_hat on lines between real and fake samples
                 (lambda 10). Its gradient needs the gradient of a gradient: double backward.
  hinge          D: E[relu(1 - f(x))] + E[relu(1 + f(G(z)))]; G: -E[f(G(z))] (Lim & Ye 2017, SAGAN).
  lsgan          least squares (Mao et al. 2017): D: (E[(f(x) - 1)^2] + E[f(G(z))^2]) / 2; G: E[(f(G(z)) - 1)^2] / 2.
  ragan          relativistic average GAN (Jolicoeur-Martineau 2018): D judges whether a real sample is more
                 realistic than the average fake: D: BCE(l_real - mean l_fake, 1) + BCE(l_fake - mean l_real, 0);
                 G the same with the targets swapped, so its loss also sees D's outputs on real data.

One-sided label smoothing (Salimans et al. 2016) replaces the real target 1 by 1 - s in the D loss of the
sigmoid losses and of lsgan; the fake target stays 0.

A new objective is one ``register_loss(GANLoss(...))`` call: the trainer reads its losses, its settings and its
hooks from the registry, and the command line lists it.
"""
from dataclasses import dataclass, field
from typing import Callable, Optional

from ... import full_like, sigmoid
from ... import grad as _grad
from ... import random as _random
from ...capture import replayed
from ...nn import functional as F
from .. import train_utils as tu

GP_EPS = 1e-12  # inside the square root of the gradient norm, so its derivative stays finite at 0


@dataclass(frozen=True)
class GANLoss:
    """A GAN objective. ``d_loss(real_out, fake_out, real_target)`` and ``g_loss(fake_out, real_out)`` take the
    discriminator's outputs (logits / critic scores, shape (N,)) and return scalar batch means; ``real_target`` is
    1 - label smoothing. ``defaults``: the settings it changes in every recipe (``make_config``), and
    ``dataset_defaults`` {dataset: settings} on top of those. Hooks: ``penalty(D, real, fake, labels, cfg)`` is
    added to the critic's loss (logged as "gp"); ``after_critic_step(D, cfg)`` runs after each critic update."""
    name: str
    summary: str
    d_loss: Callable
    g_loss: Callable
    defaults: dict = field(default_factory=dict)
    dataset_defaults: dict = field(default_factory=dict)
    smoothable: bool = False          # one-sided label smoothing applies
    probabilities: bool = False       # sigmoid(output) is D's probability of "real" (the logs show it)
    g_needs_real: bool = False        # the generator loss also compares with D's outputs on real data
    per_sample_critic: bool = False   # the critic must treat samples independently (no BatchNorm in D)
    penalty: Optional[Callable] = None
    after_critic_step: Optional[Callable] = None

    def check_label_smoothing(self, label_smoothing):
        if label_smoothing and not self.smoothable:
            names = ", ".join(n for n, loss in LOSSES.items() if loss.smoothable)
            raise ValueError(f"label smoothing applies to the {names} losses, not to {self.name!r}")

    def discriminator_loss(self, real, fake, label_smoothing=0.0):
        """The discriminator's (critic's) loss for ``real`` = D(x) and ``fake`` = D(G(z))."""
        self.check_label_smoothing(label_smoothing)
        return self.d_loss(real, fake, 1.0 - label_smoothing)

    def generator_loss(self, fake, real=None):
        """The generator's loss for ``fake`` = D(G(z)) (and ``real`` = D(x) for a relativistic loss)."""
        if self.g_needs_real and real is None:
            raise ValueError(f"the {self.name} generator loss compares fakes with real data: pass real = D(x)")
        return self.g_loss(fake, real)

    def output_means(self, real, fake):
        """(mean D(x), mean D(G(z))) as floats for the logs: probabilities where D's outputs are logits of one,
        raw outputs (critic scores) otherwise."""
        return tuple(float(m.item()) for m in self.output_mean_tensors(real, fake))

    def output_mean_tensors(self, real, fake):
        """``output_means`` as 0-d tensors (no graph), for a step that reads its numbers after it has run."""
        real, fake = real.detach(), fake.detach()
        if self.probabilities:
            real, fake = sigmoid(real), sigmoid(fake)
        return real.mean(), fake.mean()


LOSSES = {}


def register_loss(loss):
    """Add a ``GANLoss`` to ``LOSSES`` under its name (which checkpoints store); returns it."""
    if not isinstance(loss, GANLoss):
        raise TypeError(f"register_loss: expected a GANLoss, got {type(loss).__name__}")
    if loss.name in LOSSES:
        raise ValueError(f"register_loss: a GAN loss named {loss.name!r} is already registered")
    LOSSES[loss.name] = loss
    return loss


def get_loss(name):
    """The registered ``GANLoss`` called ``name`` (ValueError naming the known ones otherwise)."""
    if not isinstance(name, str) or name not in LOSSES:
        raise ValueError(f"unknown GAN loss {name!r}; expected one of {', '.join(LOSSES)}")
    return LOSSES[name]


# ---- the objectives ------------------------------------------------------------------------------------------------
def _bce(logits, target):
    return F.binary_cross_entropy_with_logits(logits, full_like(logits, target))


def _sigmoid_d(real, fake, real_target):
    return _bce(real, real_target) + _bce(fake, 0.0)


def _wasserstein_d(real, fake, real_target):
    return fake.mean() - real.mean()


def _critic_score_g(fake, real):
    return -fake.mean()


def _lsgan_d(real, fake, real_target):
    d = real - real_target
    return ((d * d).mean() + (fake * fake).mean()) * 0.5


def _lsgan_g(fake, real):
    d = fake - 1.0
    return (d * d).mean() * 0.5


def _ragan_d(real, fake, real_target):
    return _bce(real - fake.mean(), real_target) + _bce(fake - real.mean(), 0.0)


def _ragan_g(fake, real):
    return _bce(fake - real.mean(), 1.0) + _bce(real - fake.mean(), 0.0)


def _wgan_gp_penalty(discriminator, real, fake, labels, cfg):
    # conditional critic: penalise at x_hat with the real labels (real and fake pairs share no label)
    return gradient_penalty(discriminator, real, fake, labels, cfg["gp"])


def _clip_after_step(discriminator, cfg):
    clip_weights_(discriminator, cfg["clip"])


register_loss(GANLoss(
    "minimax", "the original log(1 - D(G(z))) objective; G's gradient vanishes early",
    _sigmoid_d, lambda fake, real: -_bce(fake, 0.0),      # E[log(1 - D(G(z)))] = -E[softplus(l)]
    smoothable=True, probabilities=True))
register_loss(GANLoss(
    "nonsaturating", "G minimises -log D(G(z))",
    _sigmoid_d, lambda fake, real: _bce(fake, 1.0),       # -E[log D(G(z))] = E[softplus(-l)]
    smoothable=True, probabilities=True))
register_loss(GANLoss(
    "wgan", "Wasserstein critic, weights clipped to [-clip, clip]", _wasserstein_d, _critic_score_g,
    defaults={"optimizer": "rmsprop", "lr_g": 5e-5, "lr_d": 5e-5, "n_critic": 5, "clip": 0.01},
    after_critic_step=_clip_after_step))
register_loss(GANLoss(
    "wgan-gp", "Wasserstein critic with a gradient penalty of weight gp", _wasserstein_d, _critic_score_g,
    defaults={"optimizer": "adam", "lr_g": 1e-4, "lr_d": 1e-4, "betas": [0.5, 0.9], "n_critic": 5, "gp": 10.0},
    # the 2-D mixtures: a small penalty (WGAN-GP's toy code uses 0.1: a critic held to gradient norm 1 by a large
    # one cannot resolve modes of std 0.02-0.05) and Adam 1e-3 (docs/results-gan.md has the sweep)
    dataset_defaults={name: {"lr_g": 1e-3, "lr_d": 1e-3, "gp": 0.1} for name in ("ring", "grid")},
    per_sample_critic=True, penalty=_wgan_gp_penalty))
register_loss(GANLoss(
    "hinge", "D: relu(1 - f(x)) + relu(1 + f(G(z))); G: -f(G(z))",
    lambda real, fake, real_target: (1.0 - real).relu().mean() + (1.0 + fake).relu().mean(), _critic_score_g))
register_loss(GANLoss("lsgan", "least squares", _lsgan_d, _lsgan_g, smoothable=True))
register_loss(GANLoss(
    "ragan", "relativistic average: is a real sample more realistic than the average fake?", _ragan_d, _ragan_g,
    g_needs_real=True))


# ---- by name (the functional interface) ----------------------------------------------------------------------------
def discriminator_loss(name, real, fake, label_smoothing=0.0):
    """The loss ``name``'s discriminator loss for ``real`` = D(x) and ``fake`` = D(G(z)) (shape (N,)), averaged
    over the batch. ``label_smoothing`` s: the real target is 1 - s (sigmoid losses and lsgan)."""
    return get_loss(name).discriminator_loss(real, fake, label_smoothing)


def generator_loss(name, fake, real=None):
    """The loss ``name``'s generator loss for ``fake`` = D(G(z)) (and ``real`` = D(x) for ragan)."""
    return get_loss(name).generator_loss(fake, real)


def output_means(name, real, fake):
    """(mean D(x), mean D(G(z))) as floats for the logs (see ``GANLoss.output_means``)."""
    return get_loss(name).output_means(real, fake)


# ---- hooks ---------------------------------------------------------------------------------------------------------
def interpolate(real, fake):
    """x_hat = e * real + (1 - e) * fake with one e ~ U(0, 1) per sample (drawn from tinygen's generator; under
    data parallelism, this rank's rows of the global batch's draws)."""
    e = tu.global_batch_noise(lambda n: _random.rand(n, 1, dtype=real.dtype, device=real.device), real.shape[0])
    return fake + (real - fake) * e


def gradient_penalty(discriminator, real, fake, labels=None, weight=10.0, x_hat=None):
    """WGAN-GP's penalty ``weight * mean_i (||grad_x D(x_hat_i)||_2 - 1)^2`` as a scalar tensor with a graph (so
    its gradient with respect to D's parameters flows through the double backward).

    real, fake: (N, D) batches (fake detached from the generator); x_hat: the points to penalise (default: random
    points on the lines between real and fake, ``interpolate``). labels: for a conditional critic.
    """
    if x_hat is None:
        x_hat = interpolate(real.detach(), fake.detach())
    x_hat = x_hat.detach().requires_grad_(True)
    out = discriminator(x_hat, labels) if labels is not None else discriminator(x_hat)
    (g,) = _grad(out.sum(), x_hat, create_graph=True)
    g = g.reshape(g.shape[0], -1)
    norm = ((g * g).sum(1) + GP_EPS).sqrt()
    d = norm - 1.0
    return (d * d).mean() * weight


# array code: a compiled step calls it again on every replay, a CUDA graph with the device work around it
@replayed(grads=lambda module, clip: ("reads", ()),
          graph_key=lambda module, clip: (clip, *(id(p.data) for p in module.parameters())))
def clip_weights_(module, clip):
    """WGAN's Lipschitz constraint: clamp every parameter of the critic to [-clip, clip], in place."""
    for p in module.parameters():
        p.xp.clip(p.data, -clip, clip, out=p.data)
