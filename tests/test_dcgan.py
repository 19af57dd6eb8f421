"""The DCGAN networks (tinygen/models/dcgan.py): output shapes, a training step's backward, the conditional
variants, and a WGAN-GP gradient penalty (double backward through the convolutional critic) against PyTorch."""
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


@requires_torch
def test_gradient_penalty_double_backward_matches_torch():
    """WGAN-GP on the critic without batch norm: d/dparams of (||dD/dx|| - 1)^2 equals PyTorch's, from the same
    weights (float64)."""
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
    penalty_o = ((go.reshape(3, -1).pow(2).sum(1).sqrt() - 1) ** 2).mean()
    penalty_o.backward()

    xt = torch.tensor(x, requires_grad=True)
    (gt,) = torch.autograd.grad(theirs(xt).reshape(3).sum(), [xt], create_graph=True)
    penalty_t = ((gt.reshape(3, -1).pow(2).sum(1).sqrt() - 1) ** 2).mean()
    penalty_t.backward()

    np.testing.assert_allclose(float(penalty_o.data), penalty_t.item(), rtol=1e-10)
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
        if p.grad is None:  # biases do not move the input gradient of a piecewise-linear net
            assert q.grad is None or not q.grad.any(), name
            continue
        np.testing.assert_allclose(host(p.grad), q.grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=name)
    assert all(p.grad is not None for name, p in ours.named_parameters() if name.endswith("weight"))
