"""GAN objectives by name, and the WGAN-GP gradient penalty.

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

One-sided label smoothing (Salimans et al. 2016) replaces the real target 1 by 1 - s in the D loss of the
sigmoid losses and of lsgan; the fake target stays 0.
"""
from ... import grad as _grad
from ... import ops
from ... import random as _random
from ...nn import functional as F
from ...tensor import full_like

LOSSES = ("minimax", "nonsaturating", "wgan", "wgan-gp", "hinge", "lsgan")
SIGMOID_LOSSES = ("minimax", "nonsaturating")   # D(x) is a probability: sigmoid of the logit
SMOOTHABLE = ("minimax", "nonsaturating", "lsgan")
GP_EPS = 1e-12  # inside the square root of the gradient norm, so its derivative stays finite at 0


def check_loss(name):
    if name not in LOSSES:
        raise ValueError(f"unknown GAN loss {name!r}; expected one of {', '.join(LOSSES)}")
    return name


def _bce(logits, target):
    return F.binary_cross_entropy_with_logits(logits, full_like(logits, target))


def discriminator_loss(name, real, fake, label_smoothing=0.0):
    """The discriminator's (critic's) loss for outputs ``real`` = D(x) and ``fake`` = D(G(z)) (logits, shape (N,)),
    averaged over the batch. ``label_smoothing`` s: the real target is 1 - s (sigmoid losses and lsgan)."""
    check_loss(name)
    if label_smoothing and name not in SMOOTHABLE:
        raise ValueError(f"label smoothing applies to the {', '.join(SMOOTHABLE)} losses, not to {name!r}")
    if name in SIGMOID_LOSSES:
        return _bce(real, 1.0 - label_smoothing) + _bce(fake, 0.0)
    if name in ("wgan", "wgan-gp"):
        return fake.mean() - real.mean()
    if name == "hinge":
        return (1.0 - real).relu().mean() + (1.0 + fake).relu().mean()
    d = real - (1.0 - label_smoothing)
    return ((d * d).mean() + (fake * fake).mean()) * 0.5


def generator_loss(name, fake):
    """The generator's loss for ``fake`` = D(G(z)) (logits, shape (N,)), averaged over the batch."""
    check_loss(name)
    if name == "minimax":
        return -_bce(fake, 0.0)           # E[log(1 - D(G(z)))] = -E[softplus(l)]
    if name == "nonsaturating":
        return _bce(fake, 1.0)            # -E[log D(G(z))] = E[softplus(-l)]
    if name == "lsgan":
        d = fake - 1.0
        return (d * d).mean() * 0.5
    return -fake.mean()                   # wgan, wgan-gp, hinge


def interpolate(real, fake):
    """x_hat = e * real + (1 - e) * fake with one e ~ U(0, 1) per sample (drawn from tinygen's generator)."""
    e = _random.rand(real.shape[0], 1, dtype=real.dtype, device=real.device)
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


def output_means(name, real, fake):
    """(mean D(x), mean D(G(z))) as floats for the logs: probabilities for the sigmoid losses, raw outputs (critic
    scores) for the others."""
    if name in SIGMOID_LOSSES:
        real, fake = ops.sigmoid(real.detach()), ops.sigmoid(fake.detach())
    return float(real.detach().mean().item()), float(fake.detach().mean().item())


def clip_weights_(module, clip):
    """WGAN's Lipschitz constraint: clamp every parameter of the critic to [-clip, clip], in place."""
    for p in module.parameters():
        p.xp.clip(p.data, -clip, clip, out=p.data)
