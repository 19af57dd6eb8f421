"""A VAE over fixed-length token sequences (characters of a word, steps of a melody) with a categorical decoder.

Model: tokens (N, L) in 0..V-1 -> an embedding of each token (E numbers), concatenated to L * E features ->
MLP (ReLU) -> (mu, logvar) of q(z|x) = N(mu, diag exp(logvar)); decoder z -> MLP (ReLU, the encoder's widths
reversed) -> L * V logits, one softmax per position: p(x|z) = prod_l Categorical(x_l; softmax(logits_l)).
The positions are independent given z, so the code z has to carry the whole sequence (no autoregressive decoder
that could ignore it), which is what makes sampling and interpolating through z meaningful.

Loss: the negative ELBO, -log p(x|z) (the cross-entropy summed over the L positions) + KL(q(z|x) || N(0, I)),
with one reparameterised sample and the KL in closed form. Reported numbers are nats per sequence (``loss``,
``recon``, ``kl``); with ``test_units`` (e.g. the characters of the test words, end marks included) training
also reports ``test_nats_per_<unit>``.

    model, history = train_seqvae(train_tokens, test_tokens, vocab_size=27, out="runs/x", epochs=30)
    tokens = sample_tokens(model, 10)                   # (10, L) ints: the most likely token at each position
    path = interpolate_tokens(model, a, b, steps=8)     # (8, L): decoded points between the codes of a and b

The applications ``tinygen app text`` and ``tinygen app music`` train it on words and melodies.
"""
import time

import numpy as np

from .. import Tensor, as_tensor, nn, no_grad, optim
from .. import random as _random
from ..data import DataLoader
from ..nn import functional as F
from . import train_utils as tu
from .vae import mean_elbo_terms, relu_mlp

NAME = "seqvae"
DECODE_MODES = ("argmax", "sample")
DEFAULTS = {"epochs": 30, "batch_size": 128, "lr": 1e-3, "latent": 16, "hidden": [256], "embed": 16, "seed": 1,
            "beta": 1.0}



class SeqVAE(nn.Module):
    """VAE over token sequences of length ``length`` from a vocabulary of ``vocab_size``; see the module docstring."""

    def __init__(self, vocab_size, length, latent=16, hidden=(256,), embed=16):
        super().__init__()
        self.vocab_size = tu.check_int("SeqVAE: vocab_size", vocab_size, low=2)
        self.length = tu.check_int("SeqVAE: length", length)
        self.latent = tu.check_int("SeqVAE: latent", latent)
        self.embed_dim = tu.check_int("SeqVAE: embed", embed)
        self.hidden = tu.check_widths("SeqVAE: hidden", hidden)
        self.embedding = nn.Embedding(self.vocab_size, self.embed_dim)
        self.encoder = relu_mlp([self.length * self.embed_dim] + self.hidden)
        self.fc_mu = nn.Linear(self.hidden[-1], self.latent)
        self.fc_logvar = nn.Linear(self.hidden[-1], self.latent)
        self.decoder = relu_mlp([self.latent] + self.hidden[::-1])
        self.fc_out = nn.Linear(self.hidden[0], self.length * self.vocab_size)

    def check_tokens(self, tokens, fn="SeqVAE"):
        """Refuse (ValueError/TypeError naming ``fn``) anything but integer tokens (N, length) in 0..vocab_size-1."""
        arr = tu.host(tokens) if isinstance(tokens, Tensor) else np.asarray(tokens)
        if arr.dtype.kind not in "iu":
            raise TypeError(f"{fn}: tokens must be integers, got dtype {arr.dtype}")
        if arr.ndim != 2 or arr.shape[1] != self.length:
            raise ValueError(f"{fn}: tokens must have shape (N, {self.length}), got {tuple(arr.shape)}")
        if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
            raise ValueError(f"{fn}: tokens must lie in 0..{self.vocab_size - 1}, got values in "
                             f"{int(arr.min())}..{int(arr.max())}")

    def encode(self, tokens):
        """``(mu, logvar)`` of q(z|x) for integer tokens (N, length)."""
        h = self.embedding(tokens).reshape(tokens.shape[0], self.length * self.embed_dim)
        h = self.encoder(h)
        return self.fc_mu(h), self.fc_logvar(h)

    def decode(self, z):
        """Logits (N, length, vocab_size) of p(x|z)."""
        return self.fc_out(self.decoder(z)).reshape(z.shape[0], self.length, self.vocab_size)

    def forward(self, tokens, eps=None):
        """``(logits, mu, logvar)`` with z = mu + exp(logvar / 2) * eps, eps ~ N(0, I) unless given."""
        mu, logvar = self.encode(tokens)
        if eps is None:
            eps = _random.randn(*mu.shape, dtype=mu.dtype, device=mu.device)
        return self.decode(mu + (logvar * 0.5).exp() * eps), mu, logvar

    def extra_repr(self):
        return (f"vocab_size={self.vocab_size}, length={self.length}, latent={self.latent}, hidden={self.hidden}, "
                f"embed={self.embed_dim}")


def categorical_nll(logits, tokens, reduction="sum"):
    """-log p(tokens) under independent categoricals softmax(logits) per position: logits (N, L, V), tokens (N, L)
    ints. ``reduction``: "sum" (over everything), "none" (one number per sequence, shape (N,))."""
    if reduction not in ("sum", "none"):
        raise ValueError(f"categorical_nll: reduction must be 'sum' or 'none', got {reduction!r}")
    if logits.ndim != 3 or tuple(tokens.shape) != tuple(logits.shape[:2]):
        raise ValueError(f"categorical_nll: expected logits (N, L, V) and tokens (N, L), got {tuple(logits.shape)} "
                         f"and {tuple(tokens.shape)}")
    n, length, vocab = logits.shape
    flat = F.cross_entropy(logits.reshape(n * length, vocab), tokens.reshape(n * length),
                           reduction="sum" if reduction == "sum" else "none")
    return flat if reduction == "sum" else flat.reshape(n, length).sum(1)


def elbo_terms(model, tokens, eps=None):
    """One-sample ELBO pieces summed over the batch: ``(recon, kl)`` scalar tensors."""
    logits, mu, logvar = model(tokens, eps=eps)
    return categorical_nll(logits, tokens), F.kl_normal(mu, logvar, reduction="sum")


def _tokens(array, device="cpu"):
    return as_tensor(np.ascontiguousarray(array, dtype=np.int64), device=device)


def evaluate_elbo(model, tokens, batch_size=1000, device="cpu"):
    """Per-sequence test ELBO terms in nats over all ``tokens`` (N, L), one z sample each, under no_grad in eval
    mode: ``{"recon", "kl", "loss"}`` with loss = recon + kl, the negative ELBO (an upper bound on -log p(x))."""
    model.check_tokens(tokens, "evaluate_elbo")
    return mean_elbo_terms(model, len(tokens), batch_size,
                           lambda sl: elbo_terms(model, _tokens(tokens[sl], device)))


def bigram_nats_per_token(train_rows, test_rows, vocab_size):
    """A reference for the ELBO: -log p per token (nats) of the test sequences under a first-order Markov chain of
    the training ones (a start distribution and token-to-token transitions, add-one smoothing). Rows are 1-D
    integer sequences, of any lengths."""
    start, counts = np.ones(vocab_size), np.ones((vocab_size, vocab_size))
    for row in train_rows:
        row = np.asarray(row)
        start[row[0]] += 1
        np.add.at(counts, (row[:-1], row[1:]), 1)
    log_start, log_step = np.log(start / start.sum()), np.log(counts / counts.sum(1, keepdims=True))
    total = tokens = 0.0
    for row in test_rows:
        row = np.asarray(row)
        total -= log_start[row[0]] + log_step[row[:-1], row[1:]].sum()
        tokens += len(row)
    return total / tokens


# ---- decoding --------------------------------------------------------------------------------------------------------
def decode_tokens(model, z, mode="argmax"):
    """Token sequences (N, L) for codes z (N, latent), a tensor or array: the most likely token at each position
    (``mode="argmax"``), or one drawn from each position's softmax with tinygen's generator (``"sample"``)."""
    if mode not in DECODE_MODES:
        raise ValueError(f"decode_tokens: mode must be one of {', '.join(DECODE_MODES)}, got {mode!r}")
    z = z if isinstance(z, Tensor) else as_tensor(np.asarray(z, dtype=np.float32))
    if z.ndim != 2 or z.shape[1] != model.latent:
        raise ValueError(f"decode_tokens: z must have shape (N, {model.latent}), got {tuple(z.shape)}")
    with no_grad():
        logits = tu.host(model.decode(z)).astype(np.float64)
    if mode == "argmax":
        return logits.argmax(-1)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    u = _random.generator("cpu").random(probs.shape[:2] + (1,))
    return np.minimum((probs.cumsum(-1) < u).sum(-1), model.vocab_size - 1)


def sample_tokens(model, n, mode="argmax", device="cpu"):
    """``n`` sequences decoded from z ~ N(0, I) (tinygen's generator; seed it with ``tinygen.manual_seed``)."""
    n = tu.check_int("sample_tokens: n", n)
    return decode_tokens(model, _random.randn(n, model.latent, device=device), mode)


def encode_mean(model, tokens, device="cpu"):
    """The posterior means mu(x) (N, latent) of token sequences, as an array."""
    model.check_tokens(tokens, "encode_mean")
    with no_grad():
        return tu.host(model.encode(_tokens(tokens, device))[0])


def interpolate_tokens(model, a, b, steps=8, device="cpu"):
    """Decoded (argmax) points on the line from mu(a) to mu(b), ends included: (steps, L) for sequences a, b (L,)."""
    steps = tu.check_int("interpolate_tokens: steps", steps, low=2)
    za, zb = encode_mean(model, np.stack([a, b]), device)
    t = np.linspace(0.0, 1.0, steps, dtype=np.float32)[:, None]
    return decode_tokens(model, as_tensor((za * (1 - t) + zb * t).astype(np.float32), device=device))


# ---- training --------------------------------------------------------------------------------------------------------
def make_config(**overrides):
    """The defaults updated with ``overrides``, validated (ValueError names the bad setting)."""
    unknown = sorted(set(overrides) - set(DEFAULTS) - {"device"})
    if unknown:
        raise ValueError(f"unknown sequence-VAE setting(s) {unknown}; known: {sorted(DEFAULTS)} and device")
    cfg = dict(DEFAULTS, device="cpu")
    cfg.update(overrides)
    for key, low in (("epochs", 0), ("batch_size", 1), ("seed", 0), ("latent", 1), ("embed", 1)):
        cfg[key] = tu.check_int(key, cfg[key], low=low)
    cfg["lr"] = tu.check_number("lr", cfg["lr"], allow_low=False)
    cfg["beta"] = tu.check_number("beta", cfg["beta"])
    cfg["hidden"] = tu.check_widths("hidden", cfg["hidden"])
    return cfg


def build_model(cfg, vocab_size, length):
    return SeqVAE(vocab_size, length, cfg["latent"], cfg["hidden"], cfg["embed"])


def model_from_checkpoint(ckpt, device="cpu"):
    """The trained SeqVAE of a checkpoint (the dict ``tinygen.load`` returns), in eval mode."""
    if not isinstance(ckpt, dict) or ckpt.get("model") != NAME:
        raise ValueError(f"not a sequence-VAE checkpoint (model "
                         f"{ckpt.get('model') if isinstance(ckpt, dict) else None!r})")
    cfg = ckpt["config"]
    model = build_model(make_config(**{k: v for k, v in cfg.items() if k in DEFAULTS}), cfg["vocab_size"],
                        cfg["length"])
    model.load_state_dict(ckpt["modules"]["model"])
    return model.to(device).eval()


def _check_token_set(name, tokens, vocab_size, length=None):
    arr = np.asarray(tokens)
    if arr.dtype.kind not in "iu" or arr.ndim != 2 or len(arr) == 0:
        raise ValueError(f"train_seqvae: {name} must be a non-empty 2-D integer array (N, L), got "
                         f"{arr.dtype} {arr.shape}")
    if length is not None and arr.shape[1] != length:
        raise ValueError(f"train_seqvae: {name} has sequences of length {arr.shape[1]}, the training set {length}")
    if arr.min() < 0 or arr.max() >= vocab_size:
        raise ValueError(f"train_seqvae: {name} holds tokens outside 0..{vocab_size - 1} (vocab_size {vocab_size})")
    return arr.astype(np.int64)


def train_seqvae(train_tokens, test_tokens, vocab_size, out=None, resume=False, quiet=False, meta=None,
                 test_units=None, unit="token", **settings):
    """Train a SeqVAE on integer token arrays (N, L); returns ``(model, history)``, one metrics dict per epoch run.

    settings: see ``DEFAULTS`` (plus ``device``). out: folder for ``checkpoint.npz`` (rewritten after every epoch)
    and ``metrics.jsonl``; ``resume=True`` continues the run saved there (same settings; ``epochs`` may grow).
    meta: plain values saved in the checkpoint's config beside the settings (what an application needs to read
    its samples back: an alphabet, a pitch range); a resumed run must pass the same. test_units: the number of
    units (characters, steps) in the test set, for ``test_nats_per_<unit>``.
    """
    cfg = make_config(**settings)
    vocab_size = tu.check_int("train_seqvae: vocab_size", vocab_size, low=2)
    train_tokens = _check_token_set("train_tokens", train_tokens, vocab_size)
    length = train_tokens.shape[1]
    test_tokens = _check_token_set("test_tokens", test_tokens, vocab_size, length)
    config = {**cfg, **(meta or {}), "vocab_size": vocab_size, "length": int(length)}
    device = cfg["device"]
    tu.check_batch_fits(cfg["batch_size"], len(train_tokens))
    _random.manual_seed(cfg["seed"])
    model = build_model(cfg, vocab_size, length).to(device)
    opt = optim.Adam(model.parameters(), lr=cfg["lr"])
    loader = DataLoader(train_tokens, batch_size=cfg["batch_size"], shuffle=True, seed=cfg["seed"], device=device)
    parts = {"modules": {"model": model}, "optimizers": {"adam": opt}, "loaders": {"train": loader}}
    folder = tu.RunFolder(out, resume)
    start = folder.restore(parts, NAME, config)[1] if resume else 0
    history = []
    for epoch in range(start, cfg["epochs"]):
        t0 = time.perf_counter()
        record = {"epoch": epoch + 1, **train_epoch(model, opt, loader, cfg, epoch, quiet)}
        with tu.fork_rng(cfg["seed"], (device,)):  # the same noise every epoch; training's stream is untouched
            test = evaluate_elbo(model, test_tokens, device=device)
        record.update({f"test_{k}": v for k, v in test.items()})
        if test_units:
            record[f"test_nats_per_{unit}"] = test["loss"] * len(test_tokens) / test_units
        record["seconds"] = time.perf_counter() - t0
        history.append(record)
        if not quiet:
            print(format_record(record), flush=True)
        folder.write("metrics", record)
        folder.save(NAME, config, epoch + 1, parts, devices=(device,),
                    extra={"last": record, "num_train": int(len(train_tokens)), "num_test": int(len(test_tokens))})
    return model, history


def train_epoch(model, opt, loader, cfg, epoch, quiet=True):
    """One pass minimising recon + beta * KL; returns the per-sequence means train_recon, train_kl, train_loss
    (recon + kl, the negative ELBO whatever beta is)."""
    def batch_loss(tokens):
        recon, kl = elbo_terms(model, tokens)
        loss = recon + kl * cfg["beta"] if cfg["beta"] != 1.0 else recon + kl
        return loss, tokens.shape[0], {"recon": recon, "kl": kl}  # read by optimize_epoch after the step

    sums, seen = tu.optimize_epoch(model, opt, loader, batch_loss, f"epoch {epoch + 1}/{cfg['epochs']}", quiet)
    recon, kl, n = sums.get("recon", 0.0), sums.get("kl", 0.0), max(seen, 1)
    return {"train_recon": recon / n, "train_kl": kl / n, "train_loss": (recon + kl) / n}


def format_record(r):
    """One line of an epoch's numbers, as printed during training."""
    per_unit = "".join(f" = {v:.4f} nats/{k[len('test_nats_per_'):]}" for k, v in r.items()
                       if k.startswith("test_nats_per_"))
    return (f"epoch {r['epoch']}: train loss {r['train_loss']:.4f} (recon {r['train_recon']:.4f}, kl "
            f"{r['train_kl']:.4f}) | test loss {r['test_loss']:.4f} nats/sequence{per_unit} (kl {r['test_kl']:.4f}) "
            f"| {r['seconds']:.1f}s")
