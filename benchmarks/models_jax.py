"""The JAX side: each whole training step (forward, backward, optimizer, noise draw) is one jax.jit function.

Parameters and optimizer state are donated to the step, so XLA updates them in place. Adam and SGD are
written out here (the same update rules as torch.optim) rather than taken from optax, which is one less
dependency and keeps the arithmetic visibly identical.
"""
from .specs import (ADAM_EPS, BN_EPS, BN_MOMENTUM, CASES, DIS_LAYERS, GEN_BN, GEN_LAYERS, LATENT, LEAKY,
                    MLP_LAYERS, VAE_LATENT, VAE_LAYERS, Skip)


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
