"""The DCGAN networks (tinygen/models/dcgan.py): output shapes, a training step's backward, the conditional
variants, a WGAN-GP gradient penalty (double backward through the convolutional critic) and the trainer's step
against PyTorch, and the examples that measure the DCGAN against the MLP GAN (PyTorch reference, step cost)."""
import os

import numpy as np
import pytest

import tinygen as tg
import tinygen.nn.functional as F
from tinygen.models.dcgan import DCGANDiscriminator, DCGANGenerator
from conftest import requires_torch
from op_specs import host


@pytest.mark.parametrize("n_classes", [None, 10])
def test_shapes_and_one_training_step(n_classes):
    tg.manual_seed(0)
    G, D = DCGANGenerator(16, 8, n_classes=n_classes), DCGANDiscriminator(8, n_classes=n_classes)
    z = tg.randn(4, 16)
    labels = tg.tensor(np.array([0, 3, 9, 3]), dtype=tg.int64) if n_classes else None
    fake = G(z, labels)
    assert fake.shape == (4, 1, 28, 28)
    assert float(fake.data.min()) >= -1 and float(fake.data.max()) <= 1
    logits = D(fake, labels)
    assert logits.shape == (4,)
    assert D(fake.reshape(4, 784), labels).shape == (4,)  # flat images are accepted
    loss = F.binary_cross_entropy_with_logits(logits, tg.ones(4))
    loss.backward()
    for name, p in list(G.named_parameters()) + list(D.named_parameters()):
        assert p.grad is not None and p.grad.shape == p.shape, name
        assert np.isfinite(host(p.grad)).all(), name
    assert any(float(abs(p.grad).sum()) > 0 for p in G.parameters())


def test_bad_inputs_say_what_is_wrong():
    G, D = DCGANGenerator(16, 4, n_classes=10), DCGANDiscriminator(4)
    with pytest.raises(ValueError, match=r"z must have shape \(N, 16\)"):
        G(tg.randn(2, 15), tg.tensor(np.array([1, 2]), dtype=tg.int64))
    with pytest.raises(ValueError, match="pass the labels"):
        G(tg.randn(2, 16))
    with pytest.raises(ValueError, match=r"\(N, 1, 28, 28\) or \(N, 784\)"):
        D(tg.randn(2, 1, 32, 32))


def _penalty(kind, g):
    """WGAN-GP's (||dD/dx|| - 1)^2 or R1's gamma / 2 * ||dD/dx||^2 (gamma 10), averaged over the batch (tinygen or
    PyTorch tensors)."""
    squares = g.reshape(3, -1).pow(2).sum(1)
    return ((squares.sqrt() - 1) ** 2).mean() if kind == "wgan-gp" else 5.0 * squares.mean()


@requires_torch
@pytest.mark.parametrize("kind", ["wgan-gp", "r1"])
def test_gradient_penalty_double_backward_matches_torch(kind):
    """WGAN-GP's and R1's penalties on the critic without batch norm: their gradients with respect to the
    parameters (a double backward through the convolutions) equal PyTorch's, from the same weights (float64)."""
    import torch
    tg.manual_seed(0)
    ours = DCGANDiscriminator(4, batchnorm=False).to(tg.float64)
    theirs = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 4, 2, 1), torch.nn.LeakyReLU(0.2), torch.nn.Conv2d(4, 8, 4, 2, 1),
        torch.nn.LeakyReLU(0.2), torch.nn.Conv2d(8, 1, 7, 1, 0)).double()
    theirs.load_state_dict({k.removeprefix("net."): torch.tensor(host(v)) for k, v in ours.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((3, 1, 28, 28))

    xo = tg.tensor(x, requires_grad=True)
    (go,) = tg.grad(ours(xo).sum(), [xo], create_graph=True)
    penalty_o = _penalty(kind, go)
    penalty_o.backward()

    xt = torch.tensor(x, requires_grad=True)
    (gt,) = torch.autograd.grad(theirs(xt).reshape(3).sum(), [xt], create_graph=True)
    penalty_t = _penalty(kind, gt)
    penalty_t.backward()

    np.testing.assert_allclose(float(penalty_o.data), penalty_t.item(), rtol=1e-10)
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
        if p.grad is None:  # biases do not move the input gradient of a piecewise-linear net
            assert q.grad is None or not q.grad.any(), name
            continue
        np.testing.assert_allclose(host(p.grad), q.grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=name)
    assert all(p.grad is not None for name, p in ours.named_parameters() if name.endswith("weight"))


def _example(name):
    """The script examples/<name>.py as a module."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@requires_torch
@pytest.mark.parametrize("d_fc", [0, 5])
def test_gan_trainer_step_on_the_dcgan_matches_pytorch(d_fc):
    """With and without a fully connected layer in D, five updates of the trainer's GANStep (critic, then
    generator on the same fakes; non-saturating loss; Adam with the DCGAN recipe's betas (0, 0.99); BatchNorm in
    train mode) on the unconditional DCGAN give PyTorch's losses, weights and BatchNorm statistics from the same
    start, batches and noise (float64)."""
    import torch
    import torch.nn.functional as TF
    from tinygen.models.gan import build_discriminator, build_generator, make_config
    from tinygen.models.gan.trainer import GANStep, make_optimizer
    tg.manual_seed(0)
    ngf, latent, n, lr = 4, 8, 6, 1e-3
    cfg = make_config(arch="dcgan", conditional=False, ngf=ngf, ndf=ngf, latent=latent, lr_g=lr, lr_d=lr, d_fc=d_fc)
    G, D = build_generator(cfg).to(tg.float64), build_discriminator(cfg).to(tg.float64)
    step = GANStep(cfg, G, D, make_optimizer(cfg, G.parameters(), lr), make_optimizer(cfg, D.parameters(), lr))
    TG, TD = _example("dcgan_torch_reference").torch_dcgan(torch, latent, ngf, ngf, d_fc)
    TG, TD = TG.double(), TD.double()
    for ours, theirs in ((G, TG), (D, TD)):
        theirs.load_state_dict({k.removeprefix("net."): torch.tensor(host(v)) for k, v in ours.state_dict().items()})
    assert cfg["betas"] == [0.0, 0.99]
    opt_g = torch.optim.Adam(TG.parameters(), lr, betas=tuple(cfg["betas"]))
    opt_d = torch.optim.Adam(TD.parameters(), lr, betas=tuple(cfg["betas"]))
    rng = np.random.default_rng(0)
    for _ in range(5):
        x, z = rng.uniform(-1, 1, (n, 784)), rng.standard_normal((n, latent))
        step._noise = lambda m, device, z=z: (tg.tensor(z), None)  # the noise PyTorch gets too
        ours = step.update(tg.tensor(x))
        fake = TG(torch.tensor(z).reshape(n, latent, 1, 1))
        d_loss = (TF.binary_cross_entropy_with_logits(TD(torch.tensor(x).reshape(n, 1, 28, 28)).reshape(n),
                                                      torch.ones(n, dtype=torch.float64))
                  + TF.binary_cross_entropy_with_logits(TD(fake.detach()).reshape(n),
                                                        torch.zeros(n, dtype=torch.float64)))
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
        g_loss = TF.binary_cross_entropy_with_logits(TD(fake).reshape(n), torch.ones(n, dtype=torch.float64))
        opt_g.zero_grad()
        g_loss.backward()
        opt_g.step()
        np.testing.assert_allclose([ours["d_loss"], ours["g_loss"]], [d_loss.item(), g_loss.item()], rtol=1e-10)
    for ours, theirs in ((G, TG), (D, TD)):
        expected = theirs.state_dict()
        for k, v in ours.state_dict().items():
            np.testing.assert_allclose(host(v), expected[k.removeprefix("net.")].numpy(), rtol=1e-7, atol=1e-10,
                                       err_msg=k)


@requires_torch
def test_torch_reference_script_trains_and_scores_at_the_asked_steps(tmp_path):
    import json
    script = _example("dcgan_torch_reference")
    out = tmp_path / "scores.json"
    assert script.main(["--steps", "1", "3", "--ngf", "4", "--ndf", "4", "--d-fc", "8", "--n", "300",
                        "--betas", "0", "0.99", "--json", str(out)]) == 0
    scores = json.loads(out.read_text())["scores"]
    assert [row["step"] for row in scores] == [1, 3]
    for row in scores:
        assert row["num_samples"] == 300 and 1 <= row["coverage"] <= 10 and row["frechet_distance"] > 0
    with pytest.raises(SystemExit):
        script.parse(["--steps", "0"])
    with pytest.raises(SystemExit):
        script.parse(["--steps", "1", "--betas", "0.5", "1.0"])
    with pytest.raises(SystemExit):
        script.parse(["--steps", "1", "--d-fc", "-1"])
    assert script.parse(["--steps", "1"]).betas == (0.5, 0.999)


def test_step_cost_script_times_the_mlp_and_each_dcgan(tmp_path):
    import json
    # called in-process, the script leaves the thread variables as they are (Numba reads NUMBA_NUM_THREADS again
    # when it compiles a kernel, and stops on a count other than its running threads')
    from tinygen_launcher import THREAD_VARIABLES
    before = {var: os.environ.get(var) for var in THREAD_VARIABLES}
    numba_threads = before["NUMBA_NUM_THREADS"]
    script = _example("gan_step_cost")
    out, threads = tmp_path / "cost.json", tg.get_num_threads()
    try:
        assert script.main(["--dcgan", "4:4", "4:8:16", "4:4:16:8", "--steps", "2", "--rounds", "2",
                            "--json", str(out)]) == 0
    finally:
        tg.set_num_threads(threads)
    assert os.environ.get("NUMBA_NUM_THREADS") == numba_threads
    assert {var: os.environ.get(var) for var in THREAD_VARIABLES} == before
    results = json.loads(out.read_text())["results"]
    assert [r["networks"] for r in results] == ["mlp", "dcgan 4:4:64", "dcgan 4:8:16", "dcgan 4:4:16:8"]
    assert results[0]["ratio_to_mlp"] == 1.0 and results[0]["steps_in_mlp_budget"] == 9000
    for r in results:
        assert len(r["cpu_ms_per_step"]) == 2 and all(t > 0 for t in r["cpu_ms_per_step"])
        assert r["steps_in_mlp_budget"] == pytest.approx(9000 / r["ratio_to_mlp"])
    for bad in (["--dcgan", "4"], ["--dcgan", "4:0"], ["--dcgan", "4:4:16:-1"], ["--dcgan", "4:4:16:8:1"],
                ["--steps", "0"]):
        with pytest.raises(SystemExit):
            script.parse(bad)
