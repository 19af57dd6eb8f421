"""The tinygen side: the same models written with tinygen.nn and tinygen.optim, as a user would write them.

Numba on/off is chosen by the environment (TINYGEN_NUMBA=0/1) that the harness sets before this process
starts; ``numba_status()`` says whether this tinygen has Numba kernels at all.
"""
import importlib.util
import os

from .specs import (BN_EPS, BN_MOMENTUM, CASES, DCGAN_BN, DCGAN_BN_EPS, DCGAN_D, DCGAN_G, DIS_LAYERS, GEN_BN,
                    GEN_LAYERS, LATENT, LEAKY, MLP_LAYERS, VAE_LATENT, VAE_LAYERS, Skip)


def _modules():
    try:
        import tinygen
        import tinygen.nn as nn
        import tinygen.optim as optim
    except ImportError as e:
        raise Skip(f"tinygen.nn not available ({e})") from None
    return tinygen, nn, optim


def numba_status():
    """(in use, reason): whether tinygen's Numba kernels are active in this process (they follow TINYGEN_NUMBA)."""
    if importlib.util.find_spec("tinygen.kernels") is None:
        return False, "tinygen has no Numba kernels (tinygen.kernels) yet"
    if importlib.util.find_spec("numba") is None:
        return False, "numba not installed"
    from tinygen import kernels
    if not kernels.enabled():
        return False, "Numba kernels switched off (TINYGEN_NUMBA=0)"
    return True, "Numba kernels in use"


def _assign(param, array, what):
    """Copy an initial value into a parameter, whichever layout ((out, in) or (in, out)) it uses."""
    data = param.data
    if tuple(data.shape) == array.shape:
        data[...] = array
    elif array.ndim == 2 and tuple(data.shape) == array.T.shape:
        data[...] = array.T
    else:
        raise ValueError(f"{what}: parameter has shape {tuple(data.shape)}, initial value has {array.shape}")


def _linear(nn, params, name, fan_in, fan_out):
    layer = nn.Linear(fan_in, fan_out)
    _assign(layer.weight, params[name]["weight"], f"{name}.weight")
    _assign(layer.bias, params[name]["bias"], f"{name}.bias")
    return layer


def _dcgan(nn, params):
    """(generator, discriminator) of specs.DCGAN_G / DCGAN_D with the given initial weights."""
    def stack(specs, activation, last):
        mods = []
        for i, (name, transposed, c_in, c_out, k, stride, pad, bias, _) in enumerate(specs):
            conv = (nn.ConvTranspose2d if transposed else nn.Conv2d)(c_in, c_out, k, stride, pad, bias=bias)
            _assign(conv.weight, params[name]["weight"], f"{name}.weight")
            if bias:
                _assign(conv.bias, params[name]["bias"], f"{name}.bias")
            mods.append(conv)
            if name in DCGAN_BN:
                bn = nn.BatchNorm2d(c_out, eps=DCGAN_BN_EPS, momentum=BN_MOMENTUM)
                _assign(bn.weight, params[name + "_bn"]["weight"], f"{name}_bn.weight")
                _assign(bn.bias, params[name + "_bn"]["bias"], f"{name}_bn.bias")
                mods.append(bn)
            mods.append(activation() if i < len(specs) - 1 else last())
        return nn.Sequential(*[m for m in mods if m is not None])
    return stack(DCGAN_G, nn.ReLU, nn.Tanh), stack(DCGAN_D, lambda: nn.LeakyReLU(LEAKY), lambda: None)


def _optimizer(optim, case, parameters, capturable=False):
    """The case's optimizer; ``capturable``: Adam counts its steps on the device, so that a compiled step's CUDA
    graph takes the update in too (a graphed step on a GPU)."""
    spec = CASES[case]
    if spec["optimizer"] == "sgd":
        return optim.SGD(parameters, lr=spec["lr"], momentum=spec["momentum"])
    return optim.Adam(parameters, lr=spec["lr"], betas=spec["betas"], capturable=capturable)


class Runner:
    """One case's training step, ``step()``, on ``device`` ("cpu", or "cuda": CuPy or its CPU stand-in); the
    weights are set on the CPU, then the modules are moved (``Module.to``), as a user's script does.
    ``optimizers``: the step's optimizers."""

    def __init__(self, case, batch, params, data, seed=0, noise=None, compile=False, fuse=True, device="cpu",
                 cuda_graph=True, networks=False):
        tg, nn, optim = _modules()
        F = nn.functional
        if os.environ.get("TINYGEN_NUMBA") == "1":
            ok, why = numba_status()
            if not ok:
                raise Skip(f"n/a: {why}")
        tg.manual_seed(seed)
        model = CASES[case]["model"]
        fixed = None if noise is None else tg.tensor(noise, device=device)
        self.device = device
        self.networks = networks  # the gan and dcgan cases: generator and discriminator compiled apart, step eager
        graphed = self.graphed = compile and cuda_graph and device != "cpu"

        if model == "mlp":
            mods = []
            for i, (name, fi, fo) in enumerate(MLP_LAYERS):
                mods.append(_linear(nn, params, name, fi, fo))
                if i < len(MLP_LAYERS) - 1:
                    mods.append(nn.ReLU())
            net = nn.Sequential(*mods).to(device)
            opt = _optimizer(optim, case, net.parameters(), graphed)
            self.optimizers = (opt,)
            x, y = tg.tensor(data["x"], device=device), tg.tensor(data["y"], device=device)

            def step():
                opt.zero_grad()
                loss = F.cross_entropy(net(x), y)
                loss.backward()
                opt.step()
                return loss

        elif model == "vae":
            fc1, fc21, fc22, fc3, fc4 = (_linear(nn, params, n, i, o) for n, i, o in VAE_LAYERS)
            layers = (fc1, fc21, fc22, fc3, fc4)
            for m in layers:
                m.to(device)
            opt = _optimizer(optim, case, [p for m in layers for p in m.parameters()], graphed)
            self.optimizers = (opt,)
            x = tg.tensor(data["x"], device=device)

            def step():
                opt.zero_grad()
                h1 = fc1(x).relu()
                mu, logvar = fc21(h1), fc22(h1)
                eps = fixed if fixed is not None else tg.randn(batch, VAE_LATENT, device=device)
                z = mu + eps * (0.5 * logvar).exp()
                logits = fc4(fc3(z).relu())
                bce = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
                kld = -0.5 * (1 + logvar - mu * mu - logvar.exp()).sum()
                loss = bce + kld
                loss.backward()
                opt.step()
                return loss

        elif model == "dcgan":
            gen, dis = _dcgan(nn, params)
            self._gan_step(tg, optim, F, case, batch, gen, dis, data, fixed,
                           lambda z: gen(z.reshape(batch, LATENT, 1, 1)), lambda x: dis(x).reshape(batch, 1))
            step = self._step

        else:
            mods = []
            for name, fi, fo in GEN_LAYERS[:-1]:
                mods.append(_linear(nn, params, name, fi, fo))
                if name in GEN_BN:
                    bn = nn.BatchNorm1d(fo, eps=BN_EPS, momentum=BN_MOMENTUM)
                    _assign(bn.weight, params[name + "_bn"]["weight"], f"{name}_bn.weight")
                    _assign(bn.bias, params[name + "_bn"]["bias"], f"{name}_bn.bias")
                    mods.append(bn)
                mods.append(nn.LeakyReLU(LEAKY))
            name, fi, fo = GEN_LAYERS[-1]
            gen = nn.Sequential(*mods, _linear(nn, params, name, fi, fo), nn.Tanh())
            mods = []
            for i, (name, fi, fo) in enumerate(DIS_LAYERS):
                mods.append(_linear(nn, params, name, fi, fo))
                if i < len(DIS_LAYERS) - 1:
                    mods.append(nn.LeakyReLU(LEAKY))
            dis = nn.Sequential(*mods)
            self._gan_step(tg, optim, F, case, batch, gen, dis, data, fixed, gen, dis)
            step = self._step

        # compiled: recorded on the first call, then replayed (fuse: its elementwise runs as generated loops)
        self.step = tg.compile(step, fuse=fuse, cuda_graph=cuda_graph) if compile else step

    def _gan_step(self, tg, optim, F, case, batch, gen, dis, data, fixed, generate, discriminate):
        """One generator then one discriminator step (the gan and dcgan cases): generate(z) -> images,
        discriminate(images) -> (batch, 1) logits."""
        device = self.device
        gen.to(device)
        dis.to(device)
        opt_g, opt_d = (_optimizer(optim, case, gen.parameters(), self.graphed),
                        _optimizer(optim, case, dis.parameters(), self.graphed))
        self.optimizers = (opt_g, opt_d)
        real = tg.tensor(data["x"], device=device)
        valid, fake_t = tg.ones(batch, 1, device=device), tg.zeros(batch, 1, device=device)
        bce = F.binary_cross_entropy_with_logits
        if self.networks:  # each backward runs after the calls, through the graphs their replays hand on
            generate, discriminate = tg.compile(generate), tg.compile(discriminate)

        def step():
            z = fixed if fixed is not None else tg.randn(batch, LATENT, device=device)
            opt_g.zero_grad()
            imgs = generate(z)
            lg = bce(discriminate(imgs), valid)
            lg.backward()
            opt_g.step()
            opt_d.zero_grad()
            ld = (bce(discriminate(real), valid) + bce(discriminate(imgs.detach()), fake_t)) / 2
            ld.backward()
            opt_d.step()
            return lg, ld
        self._step = step

    def sync(self):
        import tinygen
        tinygen.synchronize(self.device)

    @staticmethod
    def loss_value(loss):
        return [float(v.item()) for v in (loss if isinstance(loss, tuple) else (loss,))]


def build(case, batch, params, data, seed=0, noise=None, device="cpu"):
    return Runner(case, batch, params, data, seed, noise, device=device)


def build_compiled(case, batch, params, data, seed=0, noise=None, fuse=True, device="cpu", cuda_graph=True):
    """The same step through tinygen.compile (Numba kernels on; ``fuse``: tinygen.compile's fusion; on CuPy,
    ``cuda_graph``: its CUDA graphs)."""
    return Runner(case, batch, params, data, seed, noise, compile=True, fuse=fuse, device=device,
                  cuda_graph=cuda_graph)


def build_networks_compiled(case, batch, params, data, seed=0, noise=None, device="cpu"):
    """The gan or dcgan case with its generator and discriminator each through tinygen.compile, the step eager
    (``benchmarks.compile_bench --forward-only``)."""
    return Runner(case, batch, params, data, seed, noise, device=device, networks=True)


def build_replayed(case, batch, params, data, seed=0, noise=None, device="cpu"):
    """tinygen.compile without CUDA graphs: its replays call each kernel from Python."""
    return build_compiled(case, batch, params, data, seed, noise, device=device, cuda_graph=False)
