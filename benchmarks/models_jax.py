"""The JAX side: each whole training step (forward, backward, optimizer, noise draw) is one jax.jit function.

Parameters and optimizer state are donated to the step, so XLA updates them in place. Adam and SGD are
written out here (the same update rules as torch.optim) rather than taken from optax, which is one less
dependency and keeps the arithmetic visibly identical.
"""
from .specs import (ADAM_EPS, BN_EPS, BN_MOMENTUM, CASES, DCGAN_BN, DCGAN_BN_EPS, DCGAN_D, DCGAN_G, DIS_LAYERS,
                    GEN_BN, GEN_LAYERS, LATENT, LEAKY, MLP_LAYERS, VAE_LATENT, VAE_LAYERS, Skip)


def _jax():
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        raise Skip("jax not installed") from None
    return jax, jnp


def _linear_params(jnp, params, layers):
    return {n: {"w": jnp.asarray(params[n]["weight"].T), "b": jnp.asarray(params[n]["bias"])} for n, _, _ in layers}


def _optimizer(jax, jnp, case):
    """(init(params) -> state, update(params, grads, state) -> (params, state)), as torch.optim computes them."""
    spec = CASES[case]
    tmap = jax.tree_util.tree_map
    if spec["optimizer"] == "sgd":
        lr, mu = spec["lr"], spec["momentum"]

        def init(p):
            return {"buf": tmap(jnp.zeros_like, p), "t": jnp.zeros((), jnp.int32)}

        def update(p, g, s):
            first = s["t"] == 0  # torch: the first buffer is the gradient itself
            buf = tmap(lambda b, g: jnp.where(first, g, mu * b + g), s["buf"], g)
            return tmap(lambda p, b: p - lr * b, p, buf), {"buf": buf, "t": s["t"] + 1}
        return init, update
    lr, (b1, b2) = spec["lr"], spec["betas"]

    def init(p):
        return {"m": tmap(jnp.zeros_like, p), "v": tmap(jnp.zeros_like, p), "t": jnp.zeros((), jnp.float32)}

    def update(p, g, s):
        t = s["t"] + 1
        m = tmap(lambda m, g: b1 * m + (1 - b1) * g, s["m"], g)
        v = tmap(lambda v, g: b2 * v + (1 - b2) * g * g, s["v"], g)
        step_size = lr / (1 - b1 ** t)
        c2 = jnp.sqrt(1 - b2 ** t)
        p = tmap(lambda p, m, v: p - step_size * m / (jnp.sqrt(v) / c2 + ADAM_EPS), p, m, v)
        return p, {"m": m, "v": v, "t": t}
    return init, update


def _bce_logits(jnp, z, t):
    return jnp.maximum(z, 0) - z * t + jnp.log1p(jnp.exp(-jnp.abs(z)))


def _leaky(jnp, x):
    return jnp.where(x > 0, x, LEAKY * x)


def _conv(jax, jnp, x, w, transposed, stride, pad):
    """PyTorch's Conv2d / ConvTranspose2d (weights in PyTorch's layout) on NCHW input, bias excluded. The
    transposed one is a convolution of the input dilated by the stride, with the kernel flipped and its channel
    axes swapped, padded by k - 1 - padding."""
    dims = ("NCHW", "OIHW", "NCHW")
    if not transposed:
        return jax.lax.conv_general_dilated(x, w, (stride, stride), [(pad, pad)] * 2, dimension_numbers=dims)
    k = w.shape[-1]
    w = jnp.flip(w, (2, 3)).transpose(1, 0, 2, 3)
    return jax.lax.conv_general_dilated(x, w, (1, 1), [(k - 1 - pad, k - 1 - pad)] * 2, lhs_dilation=(stride, stride),
                                        dimension_numbers=dims)


def _dcgan_nets(jax, jnp, params):
    """(G params, D params, BatchNorm running stats, generator(p, stats, z), discriminator(p, stats, x)) of
    specs.DCGAN_G / DCGAN_D: each network returns (output, the updated running statistics)."""
    def net_params(specs):
        p = {}
        for name, _, _, _, _, _, _, bias, _ in specs:
            p[name] = {"w": jnp.asarray(params[name]["weight"])}
            if bias:
                p[name]["b"] = jnp.asarray(params[name]["bias"])
            if name in DCGAN_BN:
                p[name + "_bn"] = {"w": jnp.asarray(params[name + "_bn"]["weight"]),
                                   "b": jnp.asarray(params[name + "_bn"]["bias"])}
        return p

    def run(specs, p, stats, h, activation, last):
        new = dict(stats)
        for i, (name, transposed, _, _, _, stride, pad, bias, _) in enumerate(specs):
            h = _conv(jax, jnp, h, p[name]["w"], transposed, stride, pad)
            if bias:
                h = h + p[name]["b"][None, :, None, None]
            if name in DCGAN_BN:  # training-mode BatchNorm2d; running stats take the unbiased variance
                mean = h.mean((0, 2, 3))
                var = ((h - mean[None, :, None, None]) ** 2).mean((0, 2, 3))
                h = ((h - mean[None, :, None, None]) / jnp.sqrt(var + DCGAN_BN_EPS)[None, :, None, None]
                     * p[name + "_bn"]["w"][None, :, None, None] + p[name + "_bn"]["b"][None, :, None, None])
                count = h.shape[0] * h.shape[2] * h.shape[3]
                new[name] = {"mean": (1 - BN_MOMENTUM) * stats[name]["mean"] + BN_MOMENTUM * mean,
                             "var": (1 - BN_MOMENTUM) * stats[name]["var"]
                             + BN_MOMENTUM * var * (count / max(count - 1, 1))}
            h = activation(h) if i < len(specs) - 1 else last(h)
        return h, jax.lax.stop_gradient(new)

    stats = {n: {"mean": jnp.zeros(c, jnp.float32), "var": jnp.ones(c, jnp.float32)} for n, c in DCGAN_BN.items()}

    def generator(gp, stats, z):
        return run(DCGAN_G, gp, stats, z.reshape(z.shape[0], LATENT, 1, 1), lambda h: jnp.maximum(h, 0), jnp.tanh)

    def discriminator(dp, stats, x):
        out, new = run(DCGAN_D, dp, stats, x, lambda h: _leaky(jnp, h), lambda h: h)
        return out.reshape(x.shape[0], 1), new
    return net_params(DCGAN_G), net_params(DCGAN_D), stats, generator, discriminator


class Runner:
    """step() runs one jitted training step; sync() waits for XLA's asynchronous dispatch to finish."""

    def __init__(self, case, batch, params, data, seed=0, noise=None):
        jax, jnp = _jax()
        self.jax = jax
        model = CASES[case]["model"]
        init, update = _optimizer(jax, jnp, case)
        rng = jax.random

        if model == "mlp":
            p = _linear_params(jnp, params, MLP_LAYERS)
            x, y = jnp.asarray(data["x"]), jnp.asarray(data["y"])

            def loss_fn(p, noise):
                h = x
                for i, (n, _, _) in enumerate(MLP_LAYERS):
                    h = h @ p[n]["w"] + p[n]["b"]
                    if i < len(MLP_LAYERS) - 1:
                        h = jnp.maximum(h, 0)
                logp = jax.nn.log_softmax(h)
                return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

            def core(state, noise):
                p, s = state
                loss, g = jax.value_and_grad(loss_fn)(p, noise)
                return update(p, g, s), loss
            state = (p, init(p))
            noise_shape = None

        elif model == "vae":
            p = _linear_params(jnp, params, VAE_LAYERS)
            x = jnp.asarray(data["x"])

            def loss_fn(p, eps):
                lin = (lambda n, h: h @ p[n]["w"] + p[n]["b"])
                h1 = jnp.maximum(lin("fc1", x), 0)
                mu, logvar = lin("fc21", h1), lin("fc22", h1)
                z = mu + eps * jnp.exp(0.5 * logvar)
                logits = lin("fc4", jnp.maximum(lin("fc3", z), 0))
                bce = jnp.sum(_bce_logits(jnp, logits, x))
                kld = -0.5 * jnp.sum(1 + logvar - mu ** 2 - jnp.exp(logvar))
                return bce + kld

            def core(state, eps):
                p, s = state
                loss, g = jax.value_and_grad(loss_fn)(p, eps)
                return update(p, g, s), loss
            state = (p, init(p))
            noise_shape = (batch, VAE_LATENT)

        elif model == "dcgan":
            gp, dp, stats, generator, discriminator = _dcgan_nets(jax, jnp, params)
            real = jnp.asarray(data["x"])

            def g_loss(gp, dp, stats, z):
                imgs, stats = generator(gp, stats, z)
                out, stats = discriminator(dp, stats, imgs)
                return jnp.mean(_bce_logits(jnp, out, 1.0)), (imgs, stats)

            def d_loss(dp, stats, imgs):
                out_r, stats = discriminator(dp, stats, real)
                out_f, stats = discriminator(dp, stats, imgs)
                return (jnp.mean(_bce_logits(jnp, out_r, 1.0)) + jnp.mean(_bce_logits(jnp, out_f, 0.0))) / 2, stats

            def core(state, z):
                gp, dp, stats, gs, ds = state
                (lg, (imgs, stats)), g = jax.value_and_grad(g_loss, has_aux=True)(gp, dp, stats, z)
                gp, gs = update(gp, g, gs)
                (ld, stats), g = jax.value_and_grad(d_loss, has_aux=True)(dp, stats, jax.lax.stop_gradient(imgs))
                dp, ds = update(dp, g, ds)
                return (gp, dp, stats, gs, ds), (lg, ld)
            state = (gp, dp, stats, init(gp), init(dp))
            noise_shape = (batch, LATENT)

        else:
            gp = _linear_params(jnp, params, GEN_LAYERS)
            for n in GEN_BN:
                gp[n + "_bn"] = {"w": jnp.asarray(params[n + "_bn"]["weight"]),
                                 "b": jnp.asarray(params[n + "_bn"]["bias"])}
            dp = _linear_params(jnp, params, DIS_LAYERS)
            stats = {n: {"mean": jnp.zeros(c, jnp.float32), "var": jnp.ones(c, jnp.float32)}
                     for n, c in GEN_BN.items()}
            real = jnp.asarray(data["x"])
            m = batch

            def generator(gp, stats, z):
                h, new = z, {}
                for i, (n, _, _) in enumerate(GEN_LAYERS):
                    h = h @ gp[n]["w"] + gp[n]["b"]
                    if n in GEN_BN:  # training-mode BatchNorm1d; running stats take the unbiased variance
                        mean = h.mean(0)
                        var = ((h - mean) ** 2).mean(0)
                        h = (h - mean) / jnp.sqrt(var + BN_EPS) * gp[n + "_bn"]["w"] + gp[n + "_bn"]["b"]
                        unbiased = var * (m / max(m - 1, 1))
                        new[n] = {"mean": (1 - BN_MOMENTUM) * stats[n]["mean"] + BN_MOMENTUM * mean,
                                  "var": (1 - BN_MOMENTUM) * stats[n]["var"] + BN_MOMENTUM * unbiased}
                    h = jnp.tanh(h) if i == len(GEN_LAYERS) - 1 else _leaky(jnp, h)
                return h, jax.lax.stop_gradient(new)

            def discriminator(dp, x):
                h = x
                for i, (n, _, _) in enumerate(DIS_LAYERS):
                    h = h @ dp[n]["w"] + dp[n]["b"]
                    if i < len(DIS_LAYERS) - 1:
                        h = _leaky(jnp, h)
                return h

            def g_loss(gp, dp, stats, z):
                imgs, new = generator(gp, stats, z)
                return jnp.mean(_bce_logits(jnp, discriminator(dp, imgs), 1.0)), (imgs, new)

            def d_loss(dp, imgs):
                r = jnp.mean(_bce_logits(jnp, discriminator(dp, real), 1.0))
                f = jnp.mean(_bce_logits(jnp, discriminator(dp, imgs), 0.0))
                return (r + f) / 2

            def core(state, z):
                gp, dp, stats, gs, ds = state
                (lg, (imgs, stats)), g = jax.value_and_grad(g_loss, has_aux=True)(gp, dp, stats, z)
                gp, gs = update(gp, g, gs)
                ld, g = jax.value_and_grad(d_loss)(dp, jax.lax.stop_gradient(imgs))
                dp, ds = update(dp, g, ds)
                return (gp, dp, stats, gs, ds), (lg, ld)
            state = (gp, dp, stats, init(gp), init(dp))
            noise_shape = (batch, LATENT)

        if noise is not None or noise_shape is None:
            fixed = None if noise is None else jnp.asarray(noise)
            jcore = jax.jit(core, donate_argnums=(0,))

            def step():
                self.state, loss = jcore(self.state, fixed)
                return loss
        else:
            def full(state, key):
                key, sub = rng.split(key)
                state, loss = core(state, rng.normal(sub, noise_shape, jnp.float32))
                return state, key, loss
            jfull = jax.jit(full, donate_argnums=(0, 1))
            self.key = rng.PRNGKey(seed)

            def step():
                self.state, self.key, loss = jfull(self.state, self.key)
                return loss
        self.state = state
        self.step = step

    def sync(self):
        self.jax.block_until_ready(self.state)

    @staticmethod
    def loss_value(loss):
        return [float(v) for v in (loss if isinstance(loss, tuple) else (loss,))]


def build(case, batch, params, data, seed=0, noise=None):
    return Runner(case, batch, params, data, seed, noise)
