"""Text: a character-level VAE on a word list, sampling new words and interpolating between two.

    tinygen app text train --out runs/text                  # US Census first names (the ``names`` package)
    tinygen app text train --words my-words.txt --out runs/w  # any list, one word per line
    tinygen app text sample runs/text/checkpoint.npz --n 20
    tinygen app text interpolate runs/text/checkpoint.npz mary robert --steps 8

A word of up to L-1 characters is L tokens: its characters (indices into the list's alphabet, from 1) then the end
mark (0), which also pads. The sequence VAE (``tinygen.models.seqvae``) models all L positions; the test ELBO per
character divides the negative ELBO of the held-out words by their characters, end marks included (the usual
convention for character models: the end is one more symbol to predict). The held-out split is a fixed share of
the list drawn with ``--split-seed``; samples are sorted into copies of training words, real words of the list
the model never saw (the held-out ones), and new words.

The default list is the US Census Bureau's 1990 first names (male and female, 5,163 distinct after lower-casing)
or surnames (88,799), shipped by the ``names`` package (MIT licence; the Census lists are US Government work,
public domain): ``pip install -e ".[text]"``.
"""
import json
from collections import Counter
from pathlib import Path

import numpy as np

from . import _sequences as seq
from . import require

SUMMARY = "a character-level VAE on a word list (US Census names by default): train, sample words, interpolate"
EXTRA = "text"
END = 0  # the end-of-word token, which also pads
NAME_LISTS = {"first": ("dist.male.first", "dist.female.first"), "last": ("dist.all.last",),
              "all": ("dist.male.first", "dist.female.first", "dist.all.last")}
DEFAULTS = {"epochs": 80, "latent": 16, "hidden": [256], "embed": 16, "batch_size": 64}


# ---- word lists ------------------------------------------------------------------------------------------------------
def census_names(which="first"):
    """The US Census 1990 names the ``names`` package ships, lower-cased, distinct, sorted: ``which`` is "first"
    (male and female first names), "last" (surnames) or "all"."""
    if which not in NAME_LISTS:
        raise ValueError(f"census_names: which must be one of {', '.join(NAME_LISTS)}, got {which!r}")
    package = require("names", EXTRA)
    folder = Path(package.__file__).parent
    words = set()
    for name in NAME_LISTS[which]:
        with open(folder / name, encoding="ascii") as f:
            words.update(line.split()[0].lower() for line in f if line.strip())
    return sorted(words)


def read_word_list(path):
    """The distinct words of a text file, one per line (surrounding blanks dropped, empty lines skipped), sorted."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--words {path}: no such file (give a text file with one word per line)")
    words = set()
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            word = line.strip()
            if any(c.isspace() for c in word):
                raise ValueError(f"--words {path}: line {number} holds more than one word: {word!r}")
            if word:
                words.add(word)
    if len(words) < 2:
        raise ValueError(f"--words {path}: needs at least 2 distinct words, found {len(words)}")
    return sorted(words)


def load_words(source):
    """The words of a source as recorded in a checkpoint: "names:first" (last, all) or "file:PATH"."""
    kind, _, rest = source.partition(":")
    if kind == "names":
        return census_names(rest)
    if kind == "file":
        return read_word_list(rest)
    raise ValueError(f"unknown word source {source!r}; expected names:first|last|all or file:PATH")


def split_words(words, test_fraction=0.1, seed=0):
    """``(train, test)``: a random ``test_fraction`` of ``words`` (at least one) held out, drawn with ``seed``."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"--test-fraction must be in (0, 1), got {test_fraction}")
    order = np.random.default_rng(seed).permutation(len(words))
    n_test = max(1, int(round(test_fraction * len(words))))
    if n_test >= len(words):
        raise ValueError(f"--test-fraction {test_fraction} leaves no training words out of {len(words)}")
    return [words[i] for i in sorted(order[n_test:])], [words[i] for i in sorted(order[:n_test])]


# ---- words <-> tokens ------------------------------------------------------------------------------------------------
def alphabet_of(words):
    """The characters of a word list, sorted, as one string (token i + 1 is alphabet[i])."""
    return "".join(sorted(set("".join(words))))


def encode_words(words, alphabet, length, fn="encode_words"):
    """Token array (N, length) of words: character indices from 1, then the end mark 0 to the end. ValueError
    (naming ``fn``) for a character outside the alphabet or a word too long for ``length`` (one end mark needed)."""
    index = {c: i + 1 for i, c in enumerate(alphabet)}
    out = np.zeros((len(words), length), dtype=np.int64)
    for row, word in enumerate(words):
        unknown = sorted(set(word) - set(index))
        if unknown:
            raise ValueError(f"{fn}: {word!r} has character(s) {''.join(unknown)!r} the model never saw; its "
                             f"alphabet is {alphabet!r}")
        if len(word) >= length:
            raise ValueError(f"{fn}: {word!r} has {len(word)} characters; this model's words have at most "
                             f"{length - 1}")
        if not word:
            raise ValueError(f"{fn}: got an empty word")
        out[row, :len(word)] = [index[c] for c in word]
    return out


def decode_words(tokens, alphabet):
    """The words of token rows: the characters up to the first end mark."""
    words = []
    for row in np.asarray(tokens):
        ends = np.flatnonzero(row == END)
        row = row[:ends[0]] if len(ends) else row
        words.append("".join(alphabet[t - 1] for t in row))
    return words


def word_statistics(samples, train_words, all_words):
    """How new sampled words are: counts and shares of copies of training words, real words of the list that
    training never saw (held out), new words, and empty ones, plus how many samples are distinct."""
    train, known = set(train_words), set(all_words)
    kinds = Counter("empty" if not w else "train_copy" if w in train else "held_out" if w in known else "new"
                    for w in samples)
    n = len(samples)
    stats = {"samples": n, "distinct": len(set(samples))}
    for kind in ("train_copy", "held_out", "new", "empty"):
        stats[kind] = kinds[kind]
        stats[f"{kind}_share"] = kinds[kind] / n if n else float("nan")
    stats["real_share"] = (kinds["train_copy"] + kinds["held_out"]) / n if n else float("nan")
    return stats


def format_statistics(s):
    return (f"{s['samples']} samples ({s['distinct']} distinct): {100 * s['real_share']:.1f}% real words of the "
            f"list ({100 * s['train_copy_share']:.1f}% copies of training words, {100 * s['held_out_share']:.1f}% "
            f"held-out words never trained on), {100 * s['new_share']:.1f}% new, {100 * s['empty_share']:.1f}% empty")


def bigram_nats_per_char(train_words, test_words, alphabet):
    """A reference for the ELBO: -log p per character (end marks included) of the test words under a character
    bigram model of the training words (``seqvae.bigram_nats_per_token``), nats."""
    from ..models.seqvae import bigram_nats_per_token

    def rows(words):
        return [row[:len(w) + 1] for row, w in zip(encode_words(words, alphabet, max(map(len, words)) + 1), words)]

    return bigram_nats_per_token(rows(train_words), rows(test_words), len(alphabet) + 1)


# ---- the command -----------------------------------------------------------------------------------------------------
def add_arguments(parser):
    actions = seq.add_actions(parser)
    p = seq.action_parser(actions, "train", "train the character VAE on a word list")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--names", choices=tuple(NAME_LISTS), default="first",
                     help="which US Census list of the names package to learn")
    src.add_argument("--words", type=Path, help="a text file of words, one per line, instead of the Census names")
    p.add_argument("--test-fraction", type=float, default=0.1, help="share of the words held out for the test ELBO")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the held-out split")
    p.add_argument("--eval-samples", type=int, default=1000, help="samples drawn after training for the statistics")
    seq.add_training_arguments(p, DEFAULTS)

    p = seq.action_parser(actions, "sample", "print words decoded from random codes, and how many are real")
    p.add_argument("checkpoint", type=Path, help="checkpoint.npz of a train run")
    p.add_argument("--n", type=int, default=20, help="how many words")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--decode", choices=("argmax", "sample"), default="argmax",
                   help="each character: the most likely one, or one drawn from the model's distribution")
    p.add_argument("--json", action="store_true", help="one JSON object: the words and the statistics")
    p.add_argument("--device", default="cpu")

    p = seq.action_parser(actions, "interpolate", "decode points on the line between the codes of two words")
    p.add_argument("checkpoint", type=Path, help="checkpoint.npz of a train run")
    p.add_argument("word1", help="where the path starts: a word in the model's alphabet (any case for the names)")
    p.add_argument("word2", help="where the path ends")
    p.add_argument("--steps", type=int, default=8, help="words on the path, both ends included")
    p.add_argument("--device", default="cpu")


def run(args):
    return {"train": _train, "sample": _sample, "interpolate": _interpolate}[args.action](args)


def _source(args):
    return f"file:{args.words.resolve()}" if args.words is not None else f"names:{args.names}"


def _sample_words(model, config, n, seed, mode, device):
    from .. import manual_seed
    from ..models.seqvae import sample_tokens
    from ..models.train_utils import check_int
    manual_seed(check_int("--seed", seed, low=0))
    return decode_words(sample_tokens(model, check_int("--n", n), mode, device), config["alphabet"])


def _train(args):
    from ..models.train_utils import check_int
    check_int("--eval-samples", args.eval_samples)  # before training, not after it
    source = _source(args)
    words = load_words(source)
    train, test = split_words(words, args.test_fraction, args.split_seed)
    alphabet = alphabet_of(words)
    length = max(map(len, words)) + 1
    meta = {"app": "text", "source": source, "alphabet": alphabet, "test_fraction": args.test_fraction,
            "split_seed": args.split_seed}
    print(f"{len(words)} words ({len(train)} train, {len(test)} held out) from {source}; alphabet {alphabet!r}, "
          f"{length} tokens a word")
    test_tokens = encode_words(test, alphabet, length)
    model, history = seq.train_from_args(args, encode_words(train, alphabet, length), test_tokens,
                                         len(alphabet) + 1, meta, int((test_tokens > END).sum() + len(test)), "char")
    if not history:
        return 0
    last = history[-1]
    summary = {"test_nats_per_char": last["test_nats_per_char"], "test_loss": last["test_loss"],
               "bigram_nats_per_char": bigram_nats_per_char(train, test, alphabet)}
    samples = _sample_words(model, meta, args.eval_samples, 0, "argmax", args.device)
    summary.update(word_statistics(samples, train, words))
    with open(args.out / "summary.json", "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    print(f"held-out words: negative ELBO {last['test_nats_per_char']:.4f} nats/char ({last['test_loss']:.3f} "
          f"nats a word); a character bigram model: {summary['bigram_nats_per_char']:.4f} nats/char")
    print(format_statistics(summary))
    print(f"outputs in {args.out} (summary.json, metrics.jsonl, checkpoint.npz)")
    return 0


def _words_of(config):
    words = load_words(config["source"])
    return split_words(words, config["test_fraction"], config["split_seed"])[0], words


def _sample(args):
    model, config = seq.load_app_checkpoint(args.checkpoint, "text", args.device)
    samples = _sample_words(model, config, args.n, args.seed, args.decode, args.device)
    try:
        train, words = _words_of(config)
    except (OSError, ImportError) as e:  # the training list is gone: the words still print
        train = words = None
        note = f"(no statistics: the training list cannot be read: {e})"
    stats = None if words is None else word_statistics(samples, train, words)
    if args.json:
        print(json.dumps({"words": samples, "statistics": stats}))
        return 0
    train, words = set(train or ()), set(words or ())
    for w in samples:
        print(w + ("  (training word)" if w in train else "  (held-out word)" if w in words else ""))
    print(format_statistics(stats) if stats else note)
    return 0


def _interpolate(args):
    from ..models.seqvae import interpolate_tokens
    model, config = seq.load_app_checkpoint(args.checkpoint, "text", args.device)
    ends = encode_words([args.word1.lower(), args.word2.lower()] if config["source"].startswith("names:")
                        else [args.word1, args.word2], config["alphabet"], model.length, "tinygen app text interpolate")
    path = decode_words(interpolate_tokens(model, ends[0], ends[1], args.steps, args.device), config["alphabet"])
    print(" -> ".join(path))
    return 0
