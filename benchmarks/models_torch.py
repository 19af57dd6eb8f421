"""The PyTorch side: the same models as plain nn.Modules, run eagerly or under torch.compile.

torch.compile compiles the forward pass and the loss (AOTAutograd compiles the matching backward); the
optimizer step stays eager, as in most training scripts that adopt torch.compile.
"""
from .specs import (BN_EPS, BN_MOMENTUM, CASES, DCGAN_BN, DCGAN_BN_EPS, DCGAN_D, DCGAN_G, DIS_LAYERS, GEN_BN,
                    GEN_LAYERS, LATENT, LEAKY, MLP_LAYERS, VAE_LATENT, VAE_LAYERS, Skip)


def _torch():
    try:
        import torch
    except ImportError:
        raise Skip("torch not installed") from None
    return torch


def _linear(torch, params, name, fan_in, fan_out):
    layer = torch.nn.Linear(fan_in, fan_out)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(params[name]["weight"]))
        layer.bias.copy_(torch.from_numpy(params[name]["bias"]))
    return layer


def _optimizer(torch, case, parameters):
    spec = CASES[case]
    if spec["optimizer"] == "sgd":
        return torch.optim.SGD(parameters, lr=spec["lr"], momentum=spec["momentum"])
    return torch.optim.Adam(parameters, lr=spec["lr"], betas=spec["betas"])


def _mlp(torch, params):
    nn = torch.nn
    mods = []
    for i, (name, fi, fo) in enumerate(MLP_LAYERS):
        mods.append(_linear(torch, params, name, fi, fo))
        if i < len(MLP_LAYERS) - 1:
            mods.append(nn.ReLU())
    return nn.Sequential(*mods)


def _vae(torch, params):
    nn, F = torch.nn, torch.nn.functional

    class VAE(nn.Module):
        def __init__(self):
            super().__init__()
            for name, fan_in, fan_out in VAE_LAYERS:  # fc1, fc21, fc22, fc3, fc4
                setattr(self, name, _linear(torch, params, name, fan_in, fan_out))

        def forward(self, x, eps):
            h1 = F.relu(self.fc1(x))
            mu, logvar = self.fc21(h1), self.fc22(h1)
            z = mu + eps * torch.exp(0.5 * logvar)
            return self.fc4(F.relu(self.fc3(z))), mu, logvar

    return VAE()


def _generator(torch, params):
    nn = torch.nn
    mods = []
    for name, fi, fo in GEN_LAYERS[:-1]:
        mods.append(_linear(torch, params, name, fi, fo))
        if name in GEN_BN:
            bn = nn.BatchNorm1d(fo, eps=BN_EPS, momentum=BN_MOMENTUM)
            with torch.no_grad():
                bn.weight.copy_(torch.from_numpy(params[name + "_bn"]["weight"]))
                bn.bias.copy_(torch.from_numpy(params[name + "_bn"]["bias"]))
            mods.append(bn)
        mods.append(nn.LeakyReLU(LEAKY))
    name, fi, fo = GEN_LAYERS[-1]
    mods += [_linear(torch, params, name, fi, fo), nn.Tanh()]
    return nn.Sequential(*mods)


def _discriminator(torch, params):
    nn = torch.nn
    mods = []
    for i, (name, fi, fo) in enumerate(DIS_LAYERS):
        mods.append(_linear(torch, params, name, fi, fo))
        if i < len(DIS_LAYERS) - 1:
            mods.append(nn.LeakyReLU(LEAKY))
    return nn.Sequential(*mods)


def _dcgan(torch, params):
    """(generator, discriminator) of specs.DCGAN_G / DCGAN_D with the given initial weights."""
    nn = torch.nn

    def stack(specs, activation, last):
        mods = []
        for i, (name, transposed, c_in, c_out, k, stride, pad, bias, _) in enumerate(specs):
            conv = (nn.ConvTranspose2d if transposed else nn.Conv2d)(c_in, c_out, k, stride, pad, bias=bias)
            with torch.no_grad():
                conv.weight.copy_(torch.from_numpy(params[name]["weight"]))
                if bias:
                    conv.bias.copy_(torch.from_numpy(params[name]["bias"]))
            mods.append(conv)
            if name in DCGAN_BN:
                bn = nn.BatchNorm2d(c_out, eps=DCGAN_BN_EPS, momentum=BN_MOMENTUM)
                with torch.no_grad():
                    bn.weight.copy_(torch.from_numpy(params[name + "_bn"]["weight"]))
                    bn.bias.copy_(torch.from_numpy(params[name + "_bn"]["bias"]))
                mods.append(bn)
            mods.append(activation() if i < len(specs) - 1 else last())
        return nn.Sequential(*[m for m in mods if m is not None])
    return stack(DCGAN_G, nn.ReLU, nn.Tanh), stack(DCGAN_D, lambda: nn.LeakyReLU(LEAKY), lambda: None)


class Runner:
    """One case's training step, ``step()``, on ``device`` ("cpu" or "cuda"); ``compile_mode`` (None: eager): the
    forward and loss through torch.compile with that mode ("default"; "reduce-overhead" replays CUDA graphs on a
    GPU)."""

    def __init__(self, case, batch, params, data, seed=0, noise=None, compile_mode=None, device="cpu"):
        torch = _torch()
        F = torch.nn.functional
        self.torch, self.device = torch, device
        torch.manual_seed(seed)
        model = CASES[case]["model"]
        fixed = None if noise is None else torch.from_numpy(noise).to(device)
        wrap = (lambda fn: self._compile(fn, compile_mode)) if compile_mode else (lambda fn: fn)
        # CUDA graphs (reduce-overhead) reuse their output memory: each step is marked as a new iteration
        mark = getattr(getattr(torch, "compiler", None), "cudagraph_mark_step_begin", None)
        begin = mark if compile_mode == "reduce-overhead" and device != "cpu" and mark else (lambda: None)

        def on_device(array):
            return torch.from_numpy(array).to(device)

        if model == "mlp":
            net = _mlp(torch, params).to(device)
            opt = _optimizer(torch, case, net.parameters())
            x, y = on_device(data["x"]), on_device(data["y"])
            loss_fn = wrap(lambda x, y: F.cross_entropy(net(x), y))

            def step():
                begin()
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(x, y)
                loss.backward()
                opt.step()
                return loss

        elif model == "vae":
            net = _vae(torch, params).to(device)
            opt = _optimizer(torch, case, net.parameters())
            x = on_device(data["x"])

            def vae_loss(x, eps):
                logits, mu, logvar = net(x, eps)
                bce = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
                kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
                return bce + kld
            loss_fn = wrap(vae_loss)

            def step():
                begin()
                eps = fixed if fixed is not None else torch.randn(batch, VAE_LATENT, device=device)
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(x, eps)
                loss.backward()
                opt.step()
                return loss

        else:
            if model == "dcgan":
                conv_gen, conv_dis = _dcgan(torch, params)
                gen = torch.nn.Sequential(torch.nn.Unflatten(1, (LATENT, 1, 1)), conv_gen)
                dis = torch.nn.Sequential(conv_dis, torch.nn.Flatten(1))
            else:
                gen, dis = _generator(torch, params), _discriminator(torch, params)
            gen, dis = gen.to(device), dis.to(device)
            opt_g = _optimizer(torch, case, gen.parameters())
            opt_d = _optimizer(torch, case, dis.parameters())
            real = on_device(data["x"])
            valid, fake_t = torch.ones(batch, 1, device=device), torch.zeros(batch, 1, device=device)

            def g_loss(z):
                imgs = gen(z)
                return F.binary_cross_entropy_with_logits(dis(imgs), valid), imgs

            def d_loss(real, imgs):
                r = F.binary_cross_entropy_with_logits(dis(real), valid)
                f = F.binary_cross_entropy_with_logits(dis(imgs), fake_t)
                return (r + f) / 2
            g_fn, d_fn = wrap(g_loss), wrap(d_loss)
            # An output of one CUDA-graphed function passed into another is overwritten under it (pytorch/pytorch
            # #160281): under reduce-overhead the fake images reach the discriminator's loss as a copy
            handoff = (lambda t: t.clone()) if compile_mode == "reduce-overhead" else (lambda t: t)

            def step():
                begin()
                z = fixed if fixed is not None else torch.randn(batch, LATENT, device=device)
                opt_g.zero_grad(set_to_none=True)
                lg, imgs = g_fn(z)
                lg.backward()
                opt_g.step()
                opt_d.zero_grad(set_to_none=True)
                ld = d_fn(real, handoff(imgs.detach()))
                ld.backward()
                opt_d.step()
                return lg, ld

        self.step = step

    def _compile(self, fn, mode):
        torch = self.torch
        if not hasattr(torch, "compile"):
            raise Skip("this torch has no torch.compile")
        compiled = torch.compile(fn, mode=mode)

        def call(*args):
            try:
                return compiled(*args)
            except Exception as e:  # no compiler toolchain, unsupported platform, ...
                raise Skip(f"torch.compile failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
        return call

    def sync(self):
        if self.device != "cpu":
            self.torch.cuda.synchronize()

    @staticmethod
    def loss_value(loss):
        return [float(v.detach()) for v in (loss if isinstance(loss, tuple) else (loss,))]


def build(case, batch, params, data, seed=0, noise=None, device="cpu"):
    return Runner(case, batch, params, data, seed, noise, device=device)


def build_compiled(case, batch, params, data, seed=0, noise=None, device="cpu", mode="default"):
    return Runner(case, batch, params, data, seed, noise, compile_mode=mode, device=device)
