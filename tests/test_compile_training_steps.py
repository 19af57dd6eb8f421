"""tinygen.compile on random training steps: a replayed step leaves eager's bits for any composition of the parts a
training step is made of.

Two kinds of step are drawn. A classifier's: an MLP or a small convolutional network (batch norm, layer norm,
dropout, pooling, upsampling, a transposed convolution), one of the optimizers and their options, a scheduler, a
loss, gradient clipping, a second forward and backward accumulated, ``zero_grad`` to zeros or to None (at the end,
or after the forward: then a replay drops the gradients before the forward), and an
accuracy under ``no_grad`` or a look at the batch in eval mode returned beside the loss. A GAN's:
generator and critic MLPs, one of four losses (BCE with smoothed or noisy labels, hinge, least squares, WGAN with a
gradient penalty or with clipped weights), several critic updates a call, the generator's output detached or made
under ``no_grad``, the critic frozen with ``requires_grad_`` during the generator's update, real and fake batches
through the critic apart or concatenated, an EMA copy of the generator, a dict of losses returned. Both run six
calls from the same seed, eager and compiled (fusion on: its exact kernels give NumPy's bits); the losses and every
parameter and buffer must be equal bit for bit, with one recording per batch shape (some runs end on a short
batch). On NumPy and on the CPU stand-in for CuPy (``device``: replayed as CUDA graphs there).
"""
import copy

import numpy as np
from hypothesis import HealthCheck, event, given, settings, strategies as st

import tinygen as tg
from tinygen import nn, optim
from tinygen.capture import replayed
from tinygen.nn import functional as F
from tinygen.optim import lr_scheduler

CALLS = 6
SETTINGS = settings(deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])
ACTIVATIONS = {"relu": nn.ReLU, "leaky": lambda: nn.LeakyReLU(0.2), "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
               "gelu": nn.GELU, "silu": nn.SiLU, "elu": nn.ELU, "softplus": nn.Softplus}


def _activation(draw):
    return ACTIVATIONS[draw(st.sampled_from(sorted(ACTIVATIONS)))]()


def _mlp(draw, inputs, outputs, depth=(1, 3)):
    layers, width = [], inputs
    for _ in range(draw(st.integers(*depth))):
        out = draw(st.sampled_from([5, 8]))
        layers.append(nn.Linear(width, out, bias=draw(st.booleans())))
        width = out
        if draw(st.integers(0, 2)) == 0:
            layers.append(nn.BatchNorm1d(width, eps=draw(st.sampled_from([1e-5, 0.8])),
                                         momentum=draw(st.sampled_from([0.1, None]))))
        elif draw(st.integers(0, 4)) == 0:
            layers.append(nn.LayerNorm(width))
        layers.append(_activation(draw))
        if draw(st.integers(0, 3)) == 0:
            layers.append(nn.Dropout(draw(st.sampled_from([0.1, 0.5]))))
    return nn.Sequential(*layers, nn.Linear(width, outputs))


def _convnet(draw, outputs):
    layers, channels, side = [], 1, 8
    for _ in range(draw(st.integers(1, 2))):
        k, stride = draw(st.sampled_from([1, 3])), draw(st.sampled_from([1, 2]))
        layers.append(nn.Conv2d(channels, 3, k, stride=stride, padding=k // 2, bias=draw(st.booleans())))
        channels, side = 3, (side + 2 * (k // 2) - k) // stride + 1
        if draw(st.booleans()):
            layers.append(nn.BatchNorm2d(channels, momentum=draw(st.sampled_from([0.1, None]))))
        layers.append(_activation(draw))
        extra = draw(st.sampled_from(["", "", "max", "avg", "upsample", "transposed", "dropout"]))
        if extra in ("max", "avg") and side >= 2:
            layers.append(nn.MaxPool2d(2) if extra == "max" else nn.AvgPool2d(2))
            side //= 2
        elif extra == "upsample":
            layers.append(nn.Upsample(scale_factor=2))
            side *= 2
        elif extra == "transposed":
            layers.append(nn.ConvTranspose2d(channels, channels, 3, stride=1, padding=1))
        elif extra == "dropout":
            layers.append(nn.Dropout(0.2))
        event(f"conv: {extra or 'plain'}")
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels * side * side, outputs))


def _optimizer(draw, params):
    kind = draw(st.sampled_from(["sgd", "nesterov", "adam", "adamw", "rmsprop"]))
    event(f"optimizer: {kind}")
    if kind == "sgd":
        return optim.SGD(params, lr=0.05, momentum=draw(st.sampled_from([0.0, 0.9])),
                         weight_decay=draw(st.sampled_from([0.0, 1e-3])))
    if kind == "nesterov":
        return optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True)
    if kind == "adam":
        return optim.Adam(params, lr=1e-2, betas=draw(st.sampled_from([(0.9, 0.999), (0.5, 0.999)])),
                          amsgrad=draw(st.booleans()), weight_decay=draw(st.sampled_from([0.0, 1e-2])),
                          capturable=draw(st.booleans()))
    if kind == "adamw":
        return optim.AdamW(params, lr=1e-2, maximize=draw(st.booleans()))
    return optim.RMSprop(params, lr=1e-2, centered=draw(st.booleans()), momentum=draw(st.sampled_from([0.0, 0.5])))


def _scheduler(draw, opt):
    kind = draw(st.sampled_from(["none", "step", "exponential", "cosine"]))
    event(f"scheduler: {kind}")
    return {"none": lambda: None, "step": lambda: lr_scheduler.StepLR(opt, 2, 0.5),
            "exponential": lambda: lr_scheduler.ExponentialLR(opt, 0.9),
            "cosine": lambda: lr_scheduler.CosineAnnealingLR(opt, 5)}[kind]()


def _classifier(draw, device):
    """(modules, step, batches): a classifier's training step on (x, y)."""
    conv = draw(st.booleans())
    model = (_convnet(draw, 3) if conv else _mlp(draw, 6, 3)).to(device)
    shape = (4, 1, 8, 8) if conv else (5, 6)
    opt = _optimizer(draw, model.parameters())
    sched = _scheduler(draw, opt)
    loss_kind = draw(st.sampled_from(["cross-entropy", "smoothed cross-entropy", "mse", "bce", "smooth-l1 + l2"]))
    clip = draw(st.sampled_from(["none", "norm", "value"]))
    accumulate, to_none = draw(st.booleans()), draw(st.booleans())
    zero_at = draw(st.sampled_from(["end", "after the forward"]))  # after the forward: the early drop (passes.py)
    evaluate = draw(st.sampled_from(["none", "accuracy", "eval mode"]))
    event(f"zero_grad: {zero_at}")
    event(f"loss: {loss_kind}")
    event(f"evaluate: {evaluate}")

    def step(x, y):
        extra = ()
        if evaluate == "eval mode":  # a look at the batch in eval mode first, then back to training
            model.eval()
            with tg.no_grad():
                extra = (model(x).sum(),)
            model.train()
        out = model(x)
        if evaluate == "accuracy":
            with tg.no_grad():
                extra = ((out.argmax(1) == y).float().mean(),)
        if loss_kind == "cross-entropy":
            loss = F.cross_entropy(out, y)
        elif loss_kind == "smoothed cross-entropy":
            loss = F.cross_entropy(out, y, label_smoothing=0.1)
        elif loss_kind == "mse":
            loss = F.mse_loss(out, out.detach() * 0.5)
        elif loss_kind == "bce":
            loss = F.binary_cross_entropy_with_logits(out, tg.zeros_like(out) + 0.3)
        else:
            loss = F.smooth_l1_loss(out, tg.zeros_like(out)) + 0.01 * sum(p.pow(2).sum() for p in model.parameters())
        if zero_at == "after the forward":
            opt.zero_grad(set_to_none=to_none)
        loss.backward()
        if accumulate:
            F.cross_entropy(model(x * 0.5), y).backward()
        if clip == "norm":
            nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        elif clip == "value":
            nn.utils.clip_grad_value_(model.parameters(), 0.1)
        opt.step()
        if zero_at == "end":
            opt.zero_grad(set_to_none=to_none)
        if sched is not None:
            sched.step()
        return (loss, *extra)

    def batches():
        return [(tg.randn(*shape, device=device), tg.randint(0, 3, (shape[0],), device=device))
                for _ in range(CALLS)]
    return [model], step, batches


class _EMA:
    """An EMA of a generator's parameters, its update a recorded call (as tinygen.models.gan's)."""

    def __init__(self, module, decay):
        self.module, self.decay = module, decay
        self.shadow = copy.deepcopy(module)
        self.shadow.requires_grad_(False)

    @replayed
    def update(self):
        for a, b in zip(self.shadow.parameters(), self.module.parameters()):
            a.data *= self.decay
            a.data += (1 - self.decay) * b.data


@replayed
def _clip_weights(params, c):
    for p in params:
        p.xp.clip(p.data, -c, c, out=p.data)


def _gan(draw, device):
    """(modules, step, batches): one call is the critic's updates, then the generator's (or the other way)."""
    latent, features = 4, 6
    G = _mlp(draw, latent, features, (1, 2))
    if draw(st.booleans()):
        G = nn.Sequential(G, nn.Tanh())
    D = _mlp(draw, features, 1, (1, 2))
    G, D = G.to(device), D.to(device)
    opt_g, opt_d = _optimizer(draw, G.parameters()), _optimizer(draw, D.parameters())
    sched = lr_scheduler.StepLR(opt_g, 2, 0.5) if draw(st.booleans()) else None
    loss_kind = draw(st.sampled_from(["bce", "hinge", "least squares", "wgan-gp", "wgan-clip"]))
    critic_steps = draw(st.sampled_from([1, 2]))
    smoothing, noisy = draw(st.sampled_from([0.0, 0.1])), draw(st.booleans())
    freeze, concat, g_first = draw(st.booleans()), draw(st.booleans()), draw(st.booleans())
    to_none, as_dict = draw(st.booleans()), draw(st.booleans())
    ema = _EMA(G, 0.9) if draw(st.booleans()) else None
    event(f"gan loss: {loss_kind}")

    def critic_loss(real, fake):
        n = real.shape[0]
        if concat:
            both = D(tg.cat([real, fake], 0))
            d_real, d_fake = both[:n], both[n:]
        else:
            d_real, d_fake = D(real), D(fake)
        if loss_kind == "bce":
            target = tg.full((n, 1), 1.0 - smoothing, device=device)
            if noisy:
                target = target - 0.1 * tg.rand(n, 1, device=device)
            return (F.binary_cross_entropy_with_logits(d_real, target)
                    + F.binary_cross_entropy_with_logits(d_fake, tg.zeros(n, 1, device=device)))
        if loss_kind == "hinge":
            return F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
        if loss_kind == "least squares":
            return 0.5 * ((d_real - 1) ** 2).mean() + 0.5 * (d_fake ** 2).mean()
        loss = d_fake.mean() - d_real.mean()
        if loss_kind == "wgan-gp":
            a = tg.rand(n, 1, device=device)
            mixed = (a * real + (1 - a) * fake).detach().requires_grad_(True)
            grad, = tg.grad(D(mixed).sum(), [mixed], create_graph=True)
            loss = loss + 10 * ((grad.pow(2).sum(1) + 1e-12).sqrt() - 1).pow(2).mean()
        return loss

    def generator_loss(fake):
        d_fake = D(fake)
        if loss_kind == "bce":
            return F.binary_cross_entropy_with_logits(d_fake, tg.ones(d_fake.shape[0], 1, device=device))
        if loss_kind == "least squares":
            return 0.5 * ((d_fake - 1) ** 2).mean()
        return -d_fake.mean()

    def critic_step(real):
        for _ in range(critic_steps):
            z = tg.randn(real.shape[0], latent, device=device)
            if freeze:
                with tg.no_grad():
                    fake = G(z)
            else:
                fake = G(z).detach()
            loss = critic_loss(real, fake)
            opt_d.zero_grad(set_to_none=to_none)
            loss.backward()
            opt_d.step()
            if loss_kind == "wgan-clip":
                _clip_weights(list(D.parameters()), 0.05)
        return loss

    def generator_step(n):
        if freeze:
            D.requires_grad_(False)
        loss = generator_loss(G(tg.randn(n, latent, device=device)))
        opt_g.zero_grad(set_to_none=to_none)
        loss.backward()
        opt_g.step()
        if freeze:
            D.requires_grad_(True)
        if ema is not None:
            ema.update()
        return loss

    def step(real):
        if g_first:
            loss_g = generator_step(real.shape[0])
            loss_d = critic_step(real)
        else:
            loss_d = critic_step(real)
            loss_g = generator_step(real.shape[0])
        if sched is not None:
            sched.step()
        return {"d": loss_d, "g": loss_g} if as_dict else (loss_d, loss_g)

    def batches():
        return [(tg.randn(5, features, device=device),) for _ in range(CALLS)]
    return [G, D] + ([ema.shadow] if ema is not None else []), step, batches


def _train(kind, draw, seed, short, device, compiled):
    """The losses of each call and the final state (host arrays), and the step it ran."""
    tg.manual_seed(seed)
    modules, step, batches = kind(draw, device)
    run = tg.compile(step) if compiled else step
    tg.manual_seed(1)
    data = batches()
    if short:  # the last batch is shorter: a new signature, recorded anew
        data[-1] = tuple(t[:3] for t in data[-1])
    tg.manual_seed(2)
    losses = []
    for args in data:
        out = run(*args)
        losses += [t.detach().cpu().numpy().copy() for t in (out.values() if isinstance(out, dict)
                                                      else out if isinstance(out, tuple) else (out,))]
    state = [t.detach().cpu().numpy().copy() for m in modules for t in (*m.parameters(), *m.buffers())]
    return losses, state, run


class _Choices:
    """``draw`` for both builds of a step: hypothesis draws each choice once (from ``data``), during the eager
    build; after ``rewind()`` the compiled build reads the same choices back in order."""

    def __init__(self, data):
        self.data, self.made, self.at = data, [], 0

    def __call__(self, strategy):
        if self.at == len(self.made):
            self.made.append(self.data.draw(strategy))
        self.at += 1
        return self.made[self.at - 1]

    def rewind(self):
        self.at = 0


def _check(kind, data, device):
    seed, short, draw = data.draw(st.integers(0, 2 ** 16)), data.draw(st.booleans()), _Choices(data)
    eager_losses, eager_state, _ = _train(kind, draw, seed, short, device, False)
    draw.rewind()
    losses, state, compiled = _train(kind, draw, seed, short, device, True)
    assert draw.at == len(draw.made)  # the compiled build drew what the eager one did
    assert compiled.records == 1 + short, (compiled.records, compiled.replays)
    assert compiled.replays == CALLS - 1 - short
    for k, (a, b) in enumerate(zip(eager_losses, losses)):
        assert np.array_equal(a, b, equal_nan=True), f"loss {k} differs from eager: {a} against {b}"
    for k, (a, b) in enumerate(zip(eager_state, state)):
        assert np.array_equal(a, b, equal_nan=True), f"parameter or buffer {k} differs from eager"


@SETTINGS
@given(data=st.data())
def test_random_classifier_steps_replay_bitwise_eager(data, device):
    _check(_classifier, data, device)


@SETTINGS
@given(data=st.data())
def test_random_gan_steps_replay_bitwise_eager(data, device):
    _check(_gan, data, device)
