"""load_state_dict across dtypes (modules cast, as PyTorch) and across optimizer classes (refused)."""
import io

import numpy as np
import pytest

import tinygen as tg
from tinygen import nn, optim


def test_module_load_state_dict_casts_to_the_parameter_dtype():
    model = nn.Linear(3, 2)
    weight_before = model.weight
    state = {"weight": tg.tensor(np.arange(6, dtype=np.float64).reshape(2, 3) / 3),
             "bias": np.array([1.5, -2.25], dtype=np.float16)}
    model.load_state_dict(state)
    assert model.weight is weight_before  # copied in place
    assert model.weight.dtype == tg.float32 and model.bias.dtype == tg.float32
    np.testing.assert_array_equal(model.weight.detach().numpy(),
                                  (np.arange(6, dtype=np.float64).reshape(2, 3) / 3).astype(np.float32))
    np.testing.assert_array_equal(model.bias.detach().numpy(), [1.5, -2.25])


def test_module_load_state_dict_casts_into_integer_buffers():
    bn = nn.BatchNorm1d(2)
    state = bn.state_dict()
    state["num_batches_tracked"] = tg.tensor(4.0, dtype=tg.float64)
    bn.load_state_dict(state)
    assert bn.num_batches_tracked.dtype == tg.int64 and bn.num_batches_tracked.item() == 4


def test_module_load_state_dict_docstring_says_it_casts():
    assert "cast" in nn.Module.load_state_dict.__doc__


def _stepped(cls, **kwargs):
    tg.manual_seed(0)
    p = tg.randn(4, requires_grad=True)
    opt = cls([p], **kwargs)
    p.grad = tg.ones(4)
    opt.step()
    return p, opt


def test_optimizer_state_dict_names_its_class():
    _, opt = _stepped(optim.Adam, lr=0.1)
    assert opt.state_dict()["optimizer"] == "Adam"


@pytest.mark.parametrize("saved_cls, loading_cls", [(optim.SGD, optim.Adam), (optim.Adam, optim.AdamW),
                                                    (optim.RMSprop, optim.SGD)],
                         ids=["sgd-into-adam", "adam-into-adamw", "rmsprop-into-sgd"])
def test_optimizer_refuses_another_optimizers_state(saved_cls, loading_cls):
    kwargs = {"lr": 0.1, "momentum": 0.9} if saved_cls is optim.SGD else {"lr": 0.1}
    _, saved = _stepped(saved_cls, **kwargs)
    p = tg.randn(4, requires_grad=True)
    opt = loading_cls([p], lr=0.1)
    with pytest.raises(ValueError, match=f"{loading_cls.__name__}.load_state_dict: the state dict was saved by "
                                         f"a {saved_cls.__name__} optimizer"):
        opt.load_state_dict(saved.state_dict())
    assert opt.state == {}  # nothing was half loaded


def test_optimizer_loads_its_own_state_through_a_checkpoint():
    p, opt = _stepped(optim.Adam, lr=0.1)
    buf = io.BytesIO()
    tg.save(opt.state_dict(), buf)
    restored = optim.Adam([tg.tensor(p.detach().numpy().copy(), requires_grad=True)], lr=0.1)
    restored.load_state_dict(tg.load(io.BytesIO(buf.getvalue())))
    (state,) = restored.state.values()
    np.testing.assert_array_equal(state["exp_avg"].numpy(), next(iter(opt.state.values()))["exp_avg"].numpy())


def test_optimizer_loads_an_old_state_dict_without_the_class_name():
    p, opt = _stepped(optim.SGD, lr=0.1, momentum=0.9)
    old = opt.state_dict()
    del old["optimizer"]
    restored = optim.SGD([tg.tensor(p.detach().numpy().copy(), requires_grad=True)], lr=0.1, momentum=0.9)
    restored.load_state_dict(old)
    (state,) = restored.state.values()
    np.testing.assert_array_equal(state["momentum_buffer"].numpy(), np.ones(4, dtype=np.float32))
