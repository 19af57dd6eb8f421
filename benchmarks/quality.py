"""Quality at equal steps: tinygen's VAE and GAN against the same models trained in PyTorch.

  * VAE: PyTorch's example VAE (784-400-20, Adam 1e-3, batch 128), trained by tinygen's ``train_vae`` and in
    PyTorch from the same initial weights on the same batches in the same order (``examples/vae_parity.py``);
    reported: the test loss (negative ELBO, nats per test image, one z sample each) after every epoch.
  * GAN: PyTorch-GAN's MLP GAN, tinygen's ``pytorch-gan`` preset and its PyTorch twin
    (``examples/gan_torch_reference.py``), for the same number of generator steps, per seed from the same initial
    weights (tinygen's, loaded into both) and the same batch order, with tinygen's update order (D step, then G step
    on the same fakes). The noise cannot be shared, so each seed is a separate draw. Both generators are scored
    by the same cached classifier on the same number of samples: Fréchet distance of its features against the
    test split, inception score, class coverage and KL, with BatchNorm's running statistics and batch statistics.

The harness runs this in its own process (``--quality``), with the thread settings of a worker:
``python -m benchmarks.quality OUT_JSON`` reads its settings as JSON on stdin and writes the results to OUT_JSON.
Progress goes to stdout, lines of interest prefixed "quality".
"""
import importlib.util
import json
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The default budget: a few minutes on 2 cores (the GAN's steps dominate: ~20 steps/s per framework).
DEFAULTS = {"parts": ["vae", "gan"], "vae_epochs": 2, "gan_steps": 1000, "seeds": 2, "samples": 10000,
            "threads": 2, "framework": "tinygen"}


def say(msg):
    print(msg, flush=True)


def _example(name):
    """A module of examples/ (they are scripts, not a package)."""
    path = os.path.join(REPO, "examples", name + ".py")
    spec = importlib.util.spec_from_file_location(f"_tinygen_example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def skip_reason(part):
    """Why ``part`` ("vae" or "gan") cannot run here, or None: PyTorch, the MNIST training set and (GAN) the
    cached classifier are needed. Imports nothing heavy."""
    if importlib.util.find_spec("torch") is None:
        return "PyTorch is not installed (pip install torch==2.13.0)"
    from tinygen.data.mnist import find_split
    if find_split("train") is None:
        where = os.environ.get("TINYGEN_DATA")
        return ("the MNIST training set was not found (" + (f"$TINYGEN_DATA={where} does not hold it" if where
                                                            else "set TINYGEN_DATA") + ")")
    if part == "gan":
        from tinygen.models.classifier import default_path
        if not default_path().exists():
            return f"no cached MNIST classifier at {default_path()} (build it with `tinygen train classifier`)"
    return None


def run_vae(settings, torch):
    from tinygen.models import vae
    parity = _example("vae_parity")
    cfg = vae.make_config(epochs=settings["vae_epochs"])
    data = vae.load_data(cfg)
    res = parity.parity(cfg, data, torch=torch, log=lambda m: say("  vae " + m))
    out = {"status": "ok", "config": res["config"], "num_train": res["num_train"], "num_test": res["num_test"],
           "tinygen": res["tinygen"], "torch": res["torch"]}
    if "final_difference" in res:
        out["difference"] = res["final_difference"]
    say(f"quality   vae      {cfg['epochs']} epoch(s): test loss tinygen "
        f"{res['tinygen']['test_loss'][-1]:.3f}, torch {res['torch']['test_loss'][-1]:.3f} nats")
    return out


# What the PyTorch twin implements; passed explicitly so that a change of tinygen's defaults cannot make the two
# runs differ unnoticed.
GAN_SETTINGS = {"preset": "pytorch-gan", "loss": "nonsaturating", "optimizer": "adam", "lr_g": 2e-4, "lr_d": 2e-4,
                "betas": [0.5, 0.999], "batch_size": 64, "ema": 0.0, "lr_decay": "none", "n_critic": 1,
                "label_smoothing": 0.0, "conditional": False, "g_dropout": 0.0, "d_dropout": 0.0}


def run_gan(settings, torch):
    import tinygen
    from tinygen.data import DataLoader, mnist
    from tinygen.models import gan, train_utils
    from tinygen.models.classifier import default_path, load_classifier
    ref = _example("gan_torch_reference")
    clf = load_classifier(train_if_missing=False)
    train = mnist("train")
    reference = len(mnist("test").labels)  # what evaluate_images measures the Fréchet distance against
    steps, n = settings["gan_steps"], settings["samples"]
    out = {"status": "ok", "steps": steps, "samples": n, "reference_images": reference,
           "settings": dict(GAN_SETTINGS),
           "classifier": {"path": str(default_path()), "test_accuracy": getattr(clf, "test_accuracy", None)},
           "tinygen": [], "torch": []}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(settings["seeds"]):
            cfg = gan.make_config(steps=steps, seed=seed, **GAN_SETTINGS)
            x, _, _ = gan.trainer.load_data(cfg, (train.images, train.labels))
            out["data"] = f"{len(x)} MNIST training images"
            # one initial G and D for both frameworks
            tinygen.manual_seed(seed)
            G0, D0 = gan.build_generator(cfg), gan.build_discriminator(cfg)
            init = os.path.join(tmp, f"init{seed}.npz")
            train_utils.save_checkpoint(init, gan.trainer.NAME, cfg, 0, {"generator": G0, "discriminator": D0})
            states = tuple({k: v.numpy() for k, v in m.state_dict().items()} for m in (G0, D0))
            # the batch order of train_gan's loader
            order = DataLoader(x, batch_size=cfg["batch_size"], shuffle=True, drop_last=True, seed=seed).order

            t0 = time.perf_counter()
            G, _, _ = gan.train_gan(quiet=True, pictures=False, init=init, train_set=(train.images, train.labels),
                                    **{k: v for k, v in cfg.items() if k != "data"})
            seconds = time.perf_counter() - t0
            row = {"seed": seed, "train_seconds": seconds,
                   **ref.score_both_modes(lambda m, mode: ref.sample_tinygen(G, m, seed, mode), n, clf)}
            out["tinygen"].append(row)
            say(f"quality   gan      tinygen seed {seed}: FD {row['running_stats']['frechet_distance']:.2f} "
                f"(batch stats {row['batch_stats']['frechet_distance']:.2f}), IS "
                f"{row['running_stats']['inception_score']:.2f}, {seconds:.0f} s")

            G_ref, seconds = ref.train_reference(torch, x, steps, seed, cfg["batch_size"], init=states, order=order,
                                                 tinygen_step=True)
            row = {"seed": seed, "train_seconds": seconds,
                   **ref.score_both_modes(lambda m, mode: ref.sample_reference(torch, G_ref, m, seed, mode), n, clf)}
            out["torch"].append(row)
            say(f"quality   gan      torch   seed {seed}: FD {row['running_stats']['frechet_distance']:.2f} "
                f"(batch stats {row['batch_stats']['frechet_distance']:.2f}), IS "
                f"{row['running_stats']['inception_score']:.2f}, {seconds:.0f} s")
    return out


def run(settings):
    """Every requested part: its results, or its status ("skipped: why" / "failed: why")."""
    settings = {**DEFAULTS, **settings}
    t0 = time.perf_counter()
    out = {"status": "ok", "settings": settings, "parts": {}}
    torch = None
    for part in settings["parts"]:
        why = skip_reason(part)
        if why:
            out["parts"][part] = {"status": "skipped: " + why}
            say(f"quality   {part:<8} skipped: {why}")
            continue
        if torch is None:
            import torch
            from .worker import Worker
            pin = Worker(settings["framework"], settings["threads"])
            pin._pin_threads()  # threadpoolctl limits and torch.set_num_threads, as in the throughput workers
            out["versions"] = {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}
        try:
            out["parts"][part] = (run_vae if part == "vae" else run_gan)(settings, torch)
        except Exception as e:  # one part failing still reports the other
            import traceback
            traceback.print_exc()
            out["parts"][part] = {"status": f"failed: {type(e).__name__}: {e}"}
            say(f"quality   {part:<8} failed: {type(e).__name__}: {e}")
    import numpy
    import tinygen
    out.setdefault("versions", {}).update(numpy=numpy.__version__, tinygen=getattr(tinygen, "__version__", "?"),
                                          tinygen_numba=os.environ.get("TINYGEN_NUMBA"))
    out["seconds"] = time.perf_counter() - t0
    return out


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.exit("usage: python -m benchmarks.quality OUT_JSON  (settings as JSON on stdin)")
    settings = json.loads(sys.stdin.read() or "{}")
    res = run(settings)
    with open(argv[0], "w") as f:
        json.dump(res, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
