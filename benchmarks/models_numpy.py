"""The reference: each training step written by hand in NumPy — forward, backward and optimizer, no autograd.

It shows what the array calls alone cost, so the gap between it and an autograd framework is that framework's
overhead. Weights are kept transposed, (in, out), so every forward GEMM is x @ W.
"""
import numpy as np

from .specs import (ADAM_EPS, BN_EPS, BN_MOMENTUM, CASES, DIS_LAYERS, GEN_BN, GEN_LAYERS, LATENT, LEAKY,
                    MLP_LAYERS, VAE_LAYERS, Skip)

f32 = np.float32


# ---- optimizers, over a flat list of arrays --------------------------------------------------------------------------
class SGD:
    def __init__(self, params, lr, momentum):
        self.params, self.lr, self.momentum = params, f32(lr), f32(momentum)
        self.bufs = None

    def step(self, grads):
        if self.bufs is None:  # PyTorch: the first momentum buffer is the gradient itself
            self.bufs = [g.copy() for g in grads]
        else:
            for b, g in zip(self.bufs, grads):
                b *= self.momentum
                b += g
        for p, b in zip(self.params, self.bufs):
            p -= self.lr * b


class Adam:
    def __init__(self, params, lr, betas):
        self.params, self.lr = params, lr
        self.b1, self.b2 = betas
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]
        self.t = 0

    def step(self, grads):
        self.t += 1
        b1, b2 = f32(self.b1), f32(self.b2)
        c1 = 1 - self.b1 ** self.t
        c2 = np.sqrt(1 - self.b2 ** self.t)
        step_size = f32(self.lr / c1)
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * (g * g)
            denom = np.sqrt(v)
            denom /= f32(c2)
            denom += f32(ADAM_EPS)
            p -= step_size * (m / denom)


def _optimizer(case, params):
    spec = CASES[case]
    if spec["optimizer"] == "sgd":
        return SGD(params, spec["lr"], spec["momentum"])
    return Adam(params, spec["lr"], spec["betas"])


# ---- layers ----------------------------------------------------------------------------------------------------------
def _linear_params(params, layers):
    ws = [np.ascontiguousarray(params[n]["weight"].T) for n, _, _ in layers]
    bs = [params[n]["bias"].copy() for n, _, _ in layers]
    return ws, bs


def _bce_logits(z, t):
    """Elementwise BCE-with-logits (stable form) and its gradient dL/dz = sigmoid(z) - t."""
    loss = np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z)))
    sig = 1 / (1 + np.exp(-z))
    return loss, sig - t


def _leaky(x):
    return np.where(x > 0, x, f32(LEAKY) * x)


def _leaky_back(g, pre):
    return np.where(pre > 0, g, f32(LEAKY) * g)


class _BatchNorm:
    """Training-mode BatchNorm1d: batch statistics, running statistics updated with the unbiased variance."""

    def __init__(self, n):
        self.mean, self.var = np.zeros(n, f32), np.ones(n, f32)

    def forward(self, x, gamma, beta):
        m = x.shape[0]
        mu = x.mean(0)
        xc = x - mu
        var = (xc * xc).mean(0)
        invstd = 1 / np.sqrt(var + f32(BN_EPS))
        xhat = xc * invstd
        mom = f32(BN_MOMENTUM)
        self.mean *= 1 - mom
        self.mean += mom * mu
        self.var *= 1 - mom
        self.var += mom * var * f32(m / max(m - 1, 1))
        return xhat * gamma + beta, (xhat, invstd)

    @staticmethod
    def backward(g, gamma, cache):
        xhat, invstd = cache
        m = g.shape[0]
        dgamma = (g * xhat).sum(0)
        dbeta = g.sum(0)
        dxhat = g * gamma
        dx = (invstd / m) * (m * dxhat - dxhat.sum(0) - xhat * (dxhat * xhat).sum(0))
        return dx, dgamma, dbeta


# ---- models ----------------------------------------------------------------------------------------------------------
class MLP:
    def __init__(self, case, params, data, seed):
        self.ws, self.bs = _linear_params(params, MLP_LAYERS)
        self.opt = _optimizer(case, self.ws + self.bs)
        self.x, self.y = data["x"], data["y"]

    def step(self):
        ws, bs, x = self.ws, self.bs, self.x
        h1p = x @ ws[0] + bs[0]
        h1 = np.maximum(h1p, 0)
        h2p = h1 @ ws[1] + bs[1]
        h2 = np.maximum(h2p, 0)
        z = h2 @ ws[2] + bs[2]
        z = z - z.max(1, keepdims=True)
        e = np.exp(z)
        p = e / e.sum(1, keepdims=True)
        m = x.shape[0]
        loss = -np.log(p[np.arange(m), self.y]).mean()
        g = p
        g[np.arange(m), self.y] -= 1
        g /= m
        gw3, gb3 = h2.T @ g, g.sum(0)
        g = (g @ ws[2].T) * (h2p > 0)
        gw2, gb2 = h1.T @ g, g.sum(0)
        g = (g @ ws[1].T) * (h1p > 0)
        gw1, gb1 = x.T @ g, g.sum(0)
        self.opt.step([gw1, gw2, gw3, gb1, gb2, gb3])
        return loss


class VAE:
    def __init__(self, case, params, data, seed):
        self.ws, self.bs = _linear_params(params, VAE_LAYERS)
        self.opt = _optimizer(case, self.ws + self.bs)
        self.x = data["x"]
        self.rng = np.random.default_rng(seed)
        self.noise = None

    def step(self):
        (w1, w21, w22, w3, w4), (b1, b21, b22, b3, b4) = self.ws, self.bs
        x = self.x
        h1p = x @ w1 + b1
        h1 = np.maximum(h1p, 0)
        mu = h1 @ w21 + b21
        logvar = h1 @ w22 + b22
        std = np.exp(f32(0.5) * logvar)
        eps = self.noise if self.noise is not None else self.rng.standard_normal(mu.shape, dtype=f32)
        z = mu + eps * std
        h3p = z @ w3 + b3
        h3 = np.maximum(h3p, 0)
        logits = h3 @ w4 + b4
        bce, g = _bce_logits(logits, x)
        kld = f32(-0.5) * (1 + logvar - mu * mu - std * std).sum()
        loss = bce.sum() + kld
        # backward
        gw4, gb4 = h3.T @ g, g.sum(0)
        g = (g @ w4.T) * (h3p > 0)
        gw3, gb3 = z.T @ g, g.sum(0)
        gz = g @ w3.T
        gmu = gz + mu                                   # d(kld)/dmu = mu
        glogvar = gz * eps * std * f32(0.5) + f32(0.5) * (std * std - 1)
        gw21, gb21 = h1.T @ gmu, gmu.sum(0)
        gw22, gb22 = h1.T @ glogvar, glogvar.sum(0)
        gh1 = (gmu @ w21.T + glogvar @ w22.T) * (h1p > 0)
        gw1, gb1 = x.T @ gh1, gh1.sum(0)
        self.opt.step([gw1, gw21, gw22, gw3, gw4, gb1, gb21, gb22, gb3, gb4])
        return loss


class GAN:
    def __init__(self, case, params, data, seed):
        self.gw, self.gb = _linear_params(params, GEN_LAYERS)
        self.dw, self.db = _linear_params(params, DIS_LAYERS)
        self.gamma = [params[n + "_bn"]["weight"].copy() for n in GEN_BN]
        self.beta = [params[n + "_bn"]["bias"].copy() for n in GEN_BN]
        self.bn = [_BatchNorm(n) for n in GEN_BN.values()]
        self.opt_g = _optimizer(case, self.gw + self.gb + self.gamma + self.beta)
        self.opt_d = _optimizer(case, self.dw + self.db)
        self.real = data["x"]
        self.rng = np.random.default_rng(seed)
        self.noise = None

    def _generator(self, z):
        gw, gb = self.gw, self.gb
        cache = {"pre": [], "inp": [z], "bn": []}
        h = z @ gw[0] + gb[0]
        cache["pre"].append(h)
        h = _leaky(h)
        for i in range(3):
            cache["inp"].append(h)
            a = h @ gw[i + 1] + gb[i + 1]
            a, bc = self.bn[i].forward(a, self.gamma[i], self.beta[i])
            cache["bn"].append(bc)
            cache["pre"].append(a)
            h = _leaky(a)
        cache["inp"].append(h)
        out = np.tanh(h @ gw[4] + gb[4])
        return out, cache

    def _generator_back(self, g, out, cache):
        gw = self.gw
        g = g * (1 - out * out)
        gws, gbs, ggam, gbet = [None] * 5, [None] * 5, [None] * 3, [None] * 3
        gws[4], gbs[4] = cache["inp"][4].T @ g, g.sum(0)
        g = g @ gw[4].T
        for i in (2, 1, 0):
            g = _leaky_back(g, cache["pre"][i + 1])
            g, ggam[i], gbet[i] = _BatchNorm.backward(g, self.gamma[i], cache["bn"][i])
            gws[i + 1], gbs[i + 1] = cache["inp"][i + 1].T @ g, g.sum(0)
            g = g @ gw[i + 1].T
        g = _leaky_back(g, cache["pre"][0])
        gws[0], gbs[0] = cache["inp"][0].T @ g, g.sum(0)
        return gws + gbs + ggam + gbet

    def _discriminator(self, x):
        dw, db = self.dw, self.db
        p1 = x @ dw[0] + db[0]
        h1 = _leaky(p1)
        p2 = h1 @ dw[1] + db[1]
        h2 = _leaky(p2)
        return h2 @ dw[2] + db[2], (x, p1, h1, p2, h2)

    def _discriminator_back(self, g, cache, weights=True, inputs=True):
        dw = self.dw
        x, p1, h1, p2, h2 = cache
        grads = [h2.T @ g, g.sum(0)] if weights else None
        g = _leaky_back(g @ dw[2].T, p2)
        if weights:
            grads += [h1.T @ g, g.sum(0)]
        g = _leaky_back(g @ dw[1].T, p1)
        if weights:
            grads += [x.T @ g, g.sum(0)]
        gx = g @ dw[0].T if inputs else None
        return gx, grads

    def step(self):
        m = self.real.shape[0]
        z = self.noise if self.noise is not None else self.rng.standard_normal((m, LATENT), dtype=f32)
        fake, gcache = self._generator(z)
        # generator step: make D call the fakes real
        logit, dcache = self._discriminator(fake)
        loss_g, g = _bce_logits(logit, f32(1))
        g_fake, _ = self._discriminator_back(g / m, dcache, weights=False)
        self.opt_g.step(self._generator_back(g_fake, fake, gcache))
        # discriminator step: (BCE(D(real), 1) + BCE(D(fake), 0)) / 2
        logit_r, cache_r = self._discriminator(self.real)
        logit_f, cache_f = self._discriminator(fake)
        loss_r, g_r = _bce_logits(logit_r, f32(1))
        loss_f, g_f = _bce_logits(logit_f, f32(0))
        _, grads_r = self._discriminator_back(g_r / (2 * m), cache_r, inputs=False)
        _, grads_f = self._discriminator_back(g_f / (2 * m), cache_f, inputs=False)
        grads = [a + b for a, b in zip(grads_r, grads_f)]
        # grads are ordered (w3, b3, w2, b2, w1, b1); the optimizer holds (w1, w2, w3, b1, b2, b3)
        w3, b3, w2, b2, w1, b1 = grads
        self.opt_d.step([w1, w2, w3, b1, b2, b3])
        return loss_g.mean(), (loss_r.mean() + loss_f.mean()) / 2


MODELS = {"mlp": MLP, "vae": VAE, "gan": GAN}


class Runner:
    """step() runs one training step; with ``noise`` (specs.make_noise) the step's random draws are that array."""

    def __init__(self, case, batch, params, data, seed=0, noise=None):
        if CASES[case]["model"] not in MODELS:
            raise Skip(f"n/a: no hand-written NumPy step for {case}")
        self.model = MODELS[CASES[case]["model"]](case, params, data, seed)
        self.model.noise = noise
        self.step = self.model.step

    def sync(self):
        pass

    @staticmethod
    def loss_value(loss):
        return [float(v) for v in (loss if isinstance(loss, tuple) else (loss,))]


def build(case, batch, params, data, seed=0, noise=None):
    return Runner(case, batch, params, data, seed, noise)
