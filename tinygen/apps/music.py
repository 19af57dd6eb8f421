"""Music: a VAE on melodies of Bach's chorales, samples written as MIDI files.

    tinygen app music train --out runs/music                       # extracts the corpus once (cached), trains
    tinygen app music sample runs/music/checkpoint.npz --n 8 --out samples.mid

Data: the soprano line of the 371 four-part chorales that music21 ships (``music21.corpus.chorales``), each
transposed to C major or A minor (the key music21's analysis finds, moved by at most a tritone), on a grid of
``--step`` quarter notes (default 0.5, an eighth note). A step is one token: a rest (0), a hold (1: the note
sounding before goes on) or a note onset of MIDI pitch p (2 + p - 55, for G3..C6; the few notes outside are
moved by octaves). Training sequences are windows of ``--length`` steps (default 32: four 4/4 bars of eighths)
every ``--stride`` steps (default 2, a quarter note); a window that starts inside a note starts with that note's
onset. The held-out chorales (``--test-fraction``, drawn with ``--split-seed``) give the test ELBO per step, on
their windows taken the same way; no window of a held-out chorale is trained on. Parsing the corpus takes about a
minute, so the token sequences are cached in ``$TINYGEN_CACHE`` (default ~/.cache/tinygen).

The musical statistic is the in-key note share: the share of note onsets whose pitch class lies in the C major
scale (C D E F G A B), for samples against the data; in minor chorales the raised 7th (G#) and 6th (F#) are
outside it, so the data's own share is below 1.

Extras: ``pip install -e ".[music]"`` (music21 parses the corpus, mido writes and reads the MIDI files).
"""
import json
from pathlib import Path

import numpy as np

from . import _sequences as seq
from . import require

SUMMARY = "a VAE on Bach chorale melodies (music21's corpus); samples written as MIDI files"
EXTRA = "music"
REST, HOLD = 0, 1
LOWEST, HIGHEST = 55, 84  # MIDI pitches G3..C6 (the sopranos span about A3..A5 after transposition)
VOCAB_SIZE = 2 + HIGHEST - LOWEST + 1
C_MAJOR = frozenset((0, 2, 4, 5, 7, 9, 11))
NOTE_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "G#", "A", "Bb", "B")
TICKS_PER_BEAT = 480
DEFAULTS = {"epochs": 35, "latent": 16, "hidden": [512], "embed": 16, "batch_size": 64}


# ---- tokens ----------------------------------------------------------------------------------------------------------
def pitch_token(midi):
    """The token of a note onset of MIDI pitch ``midi``, moved by octaves into LOWEST..HIGHEST."""
    midi = int(midi)
    while midi < LOWEST:
        midi += 12
    while midi > HIGHEST:
        midi -= 12
    return 2 + midi - LOWEST


def token_pitch(token):
    """The MIDI pitch of a note-onset token."""
    return LOWEST + int(token) - 2


def notes_of(tokens):
    """The notes of one token sequence as ``[(midi pitch, start step, length in steps)]``; a hold after a rest or
    at the start continues the silence."""
    notes = []
    for step, t in enumerate(np.asarray(tokens)):
        if t >= 2:
            notes.append([token_pitch(t), step, 1])
        elif t == HOLD and notes and notes[-1][1] + notes[-1][2] == step:
            notes[-1][2] += 1
    return [tuple(n) for n in notes]


def describe(tokens):
    """A token sequence as text: note names with octave, '-' for a hold, '.' for a rest (``C5 - D5 . ...``)."""
    return " ".join("." if t == REST else "-" if t == HOLD else
                    f"{NOTE_NAMES[token_pitch(t) % 12]}{token_pitch(t) // 12 - 1}" for t in np.asarray(tokens))


def in_key_share(token_rows):
    """Share of the note onsets in ``token_rows`` whose pitch class is in the C major scale (NaN without notes)."""
    arr = np.asarray(token_rows)
    pitches = arr[arr >= 2] - 2 + LOWEST
    return float(np.isin(pitches % 12, list(C_MAJOR)).mean()) if pitches.size else float("nan")


def melody_statistics(token_rows):
    """In-key share, note onsets per sequence, rest share and distinct pitches of a set of sequences."""
    arr = np.asarray(token_rows)
    onsets = arr >= 2
    return {"in_key_share": in_key_share(arr), "notes_per_sequence": float(onsets.sum(1).mean()),
            "rest_share": float((arr == REST).mean()), "distinct_pitches": int(len(np.unique(arr[onsets])))}


# ---- the corpus ------------------------------------------------------------------------------------------------------
def transposition_to_c(tonic_pitch_class, mode):
    """Semitones (-6..5) that move a key with this tonic to C major (mode "major") or A minor (otherwise)."""
    target = 0 if mode == "major" else 9
    return (target - int(tonic_pitch_class) + 6) % 12 - 6


def melody_tokens(part, shift, step=0.5):
    """The token sequence of a music21 part (its top note where it has chords) moved by ``shift`` semitones, on a
    grid of ``step`` quarter notes. Tied continuations are holds; a note shorter than a step still takes one."""
    total = int(round(float(part.highestTime) / step))
    tokens = np.full(max(total, 1), REST, dtype=np.int64)
    for n in part.flatten().notes:
        if float(n.quarterLength) <= 0:  # grace notes take no time
            continue
        start = int(round(float(n.offset) / step))
        end = max(int(round(float(n.offset + n.quarterLength) / step)), start + 1)
        if start >= len(tokens):
            continue
        pitch = max(p.midi for p in n.pitches)
        tied_on = n.tie is not None and n.tie.type in ("stop", "continue") and start > 0 and tokens[start - 1] != REST
        tokens[start] = HOLD if tied_on else pitch_token(pitch + shift)
        tokens[start + 1:end] = HOLD
    return tokens


def score_melody(score, step=0.5):
    """The soprano (first part) of a music21 score transposed to C major / A minor, as tokens; and its key."""
    key = score.analyze("key")
    part = score.parts[0]
    return melody_tokens(part, transposition_to_c(key.tonic.pitchClass, key.mode), step), f"{key.tonic.name} {key.mode}"


def chorale_melodies(step=0.5, limit=None, quiet=False):
    """``(melodies, keys)``: the token sequence and original key of every chorale of music21's corpus (the first
    ``limit`` only, when given)."""
    require("music21", EXTRA)
    from music21 import corpus
    from ..models.train_utils import Progress
    chorales = corpus.chorales.Iterator(returnType="stream")
    total = len(chorales) if limit is None else min(limit, len(chorales))
    melodies, keys = [], []
    with Progress(total, desc="parsing chorales", quiet=quiet) as bar:
        for score in chorales:
            if len(melodies) == total:
                break
            tokens, key = score_melody(score, step)
            melodies.append(tokens)
            keys.append(key)
            bar.update()
    return melodies, keys


def cached_chorale_melodies(step=0.5, cache=None, quiet=False):
    """``chorale_melodies(step)``, read from / written to an .npz in ``cache`` (default $TINYGEN_CACHE) named by
    the music21 version and the step, since parsing the corpus takes about a minute."""
    from .. import config
    music21 = require("music21", EXTRA)
    folder = Path(cache) if cache is not None else config.get("TINYGEN_CACHE")
    path = folder / f"chorale-sopranos-music21-{music21.__version__}-step{step:g}.npz"
    if path.is_file():
        with np.load(path) as f:
            tokens, bounds, keys = f["tokens"], f["bounds"], f["keys"]
        return [tokens[a:b] for a, b in zip(bounds[:-1], bounds[1:])], [str(k) for k in keys]
    melodies, keys = chorale_melodies(step, quiet=quiet)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, tokens=np.concatenate(melodies), bounds=np.cumsum([0] + [len(m) for m in melodies]),
             keys=np.array(keys))
    tmp.replace(path)
    return melodies, keys


def windows(melodies, length=32, stride=8):
    """All windows of ``length`` steps every ``stride`` steps of each melody, (N, length); a window starting
    inside a note starts with that note's onset, one starting in a rest with a rest."""
    out = []
    for m in melodies:
        m = np.asarray(m)
        sounding = m.copy()  # at each step, the token that started what sounds there (onset or rest)
        for i in range(1, len(m)):
            if m[i] == HOLD:
                sounding[i] = sounding[i - 1]
        sounding[sounding == HOLD] = REST
        for start in range(0, len(m) - length + 1, stride):
            w = m[start:start + length].copy()
            if w[0] == HOLD:
                w[0] = sounding[start]
            out.append(w)
    return np.array(out, dtype=np.int64).reshape(-1, length)


def split_melodies(n, test_fraction=0.1, seed=0):
    """``(train indices, test indices)`` of ``n`` melodies: a random ``test_fraction`` held out, drawn with ``seed``."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"--test-fraction must be in (0, 1), got {test_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    n_test = max(1, int(round(test_fraction * n)))
    if n_test >= n:
        raise ValueError(f"--test-fraction {test_fraction} leaves no training melodies out of {n}")
    return np.sort(order[n_test:]), np.sort(order[:n_test])


# ---- MIDI ------------------------------------------------------------------------------------------------------------
def write_midi(path, melodies, step=0.5, bpm=90, gap_steps=8, program=0):
    """Write token sequences to a MIDI file (type 0, one track), one melody after another with ``gap_steps`` of
    silence between; ``step`` quarter notes a step, ``bpm`` quarter notes a minute, General MIDI ``program``."""
    mido = require("mido", EXTRA)
    step_ticks = int(round(step * TICKS_PER_BEAT))
    if step_ticks < 1:
        raise ValueError(f"write_midi: step {step} is shorter than a tick (1/{TICKS_PER_BEAT} of a quarter note)")
    events, offset = [], 0  # (absolute tick, order: offs before ons at the same tick, message)
    for tokens in melodies:
        for pitch, start, steps in notes_of(tokens):
            on = (offset + start) * step_ticks
            events.append((on, 1, mido.Message("note_on", note=pitch, velocity=80)))
            events.append((on + steps * step_ticks, 0, mido.Message("note_off", note=pitch, velocity=0)))
        offset += len(tokens) + gap_steps
    events.sort(key=lambda e: (e[0], e[1]))
    track = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm)),
                            mido.Message("program_change", program=program)])
    now = 0
    for tick, _, msg in events:
        track.append(msg.copy(time=tick - now))
        now = tick
    track.append(mido.MetaMessage("end_of_track", time=offset * step_ticks - now if offset * step_ticks > now else 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mido.MidiFile(type=0, ticks_per_beat=TICKS_PER_BEAT, tracks=[track]).save(path)
    return path


def read_midi_notes(path):
    """The notes of a MIDI file as ``[(midi pitch, start tick, length in ticks)]`` in order of onset, and its
    ticks per beat (a note_on with velocity 0 ends a note, as note_off does)."""
    mido = require("mido", EXTRA)
    mid = mido.MidiFile(path)
    notes, sounding = [], {}
    for track in mid.tracks:
        now = 0
        for msg in track:
            now += msg.time
            if msg.type == "note_on" and msg.velocity > 0:
                sounding[msg.note] = now
            elif msg.type in ("note_off", "note_on") and msg.note in sounding:
                start = sounding.pop(msg.note)
                notes.append((msg.note, start, now - start))
    return sorted(notes, key=lambda n: (n[1], n[0])), mid.ticks_per_beat


# ---- the command -----------------------------------------------------------------------------------------------------
def add_arguments(parser):
    actions = seq.add_actions(parser)
    p = seq.action_parser(actions, "train", "train the melody VAE on the chorales' soprano lines")
    p.add_argument("--length", type=int, default=32, help="steps per training sequence")
    p.add_argument("--stride", type=int, default=2, help="steps between the starts of consecutive windows")
    p.add_argument("--step", type=float, default=0.5, help="quarter notes per step (0.5: eighth notes)")
    p.add_argument("--test-fraction", type=float, default=0.1, help="share of the chorales held out")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the held-out split")
    p.add_argument("--cache", type=Path,
                   help="folder of the parsed corpus; unset: $TINYGEN_CACHE, else ~/.cache/tinygen")
    p.add_argument("--eval-samples", type=int, default=1000, help="samples drawn after training for the statistics")
    seq.add_training_arguments(p, DEFAULTS)

    p = seq.action_parser(actions, "sample", "write melodies decoded from random codes to a MIDI file")
    p.add_argument("checkpoint", type=Path, help="checkpoint.npz of a train run")
    p.add_argument("--n", type=int, default=8, help="how many melodies (played one after another)")
    p.add_argument("--out", type=Path, help="the .mid file; unset: samples_seed<SEED>.mid beside the checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--decode", choices=("argmax", "sample"), default="argmax",
                   help="each step: the most likely token, or one drawn from the model's distribution")
    p.add_argument("--bpm", type=float, default=90, help="tempo in quarter notes a minute")
    p.add_argument("--device", default="cpu")


def run(args):
    return {"train": _train, "sample": _sample}[args.action](args)


def _sample_melodies(model, n, seed, mode, device):
    from .. import manual_seed
    from ..models.seqvae import sample_tokens
    from ..models.train_utils import check_int
    manual_seed(check_int("--seed", seed, low=0))
    return sample_tokens(model, check_int("--n", n), mode, device)


def _train(args):
    from ..models.train_utils import check_int, check_number
    length, stride = check_int("--length", args.length, low=2), check_int("--stride", args.stride)
    check_int("--eval-samples", args.eval_samples)  # before training, not after it
    step = check_number("--step", args.step, allow_low=False)
    require("mido", EXTRA)  # before an hour of training, not after it
    melodies, keys = cached_chorale_melodies(step, args.cache, args.quiet)
    train_ids, test_ids = split_melodies(len(melodies), args.test_fraction, args.split_seed)
    train = windows([melodies[i] for i in train_ids], length, stride)
    test = windows([melodies[i] for i in test_ids], length, stride)
    if not len(train) or not len(test):
        raise ValueError(f"--length {length} is longer than the melodies; choose fewer steps")
    print(f"{len(melodies)} chorales ({len(train_ids)} train, {len(test_ids)} held out): {len(train)} training and "
          f"{len(test)} test windows of {length} steps of {step:g} quarter notes")
    meta = {"app": "music", "step": step, "stride": stride, "test_fraction": args.test_fraction,
            "split_seed": args.split_seed, "lowest_pitch": LOWEST}
    model, history = seq.train_from_args(args, train, test, VOCAB_SIZE, meta, test.size, "step")
    if not history:
        return 0
    from ..models.seqvae import bigram_nats_per_token
    samples = _sample_melodies(model, args.eval_samples, 0, "argmax", args.device)
    summary = {"test_nats_per_step": history[-1]["test_nats_per_step"], "test_loss": history[-1]["test_loss"],
               "markov_nats_per_step": bigram_nats_per_token(train, test, VOCAB_SIZE),
               "samples": melody_statistics(samples), "test_data": melody_statistics(test),
               "train_data": melody_statistics(train)}
    with open(args.out / "summary.json", "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    midi = write_midi(args.out / "samples.mid", samples[:8], step)
    print(f"held-out chorales: negative ELBO {summary['test_nats_per_step']:.4f} nats/step "
          f"({summary['test_loss']:.3f} nats a {length}-step melody); a first-order Markov chain of the tokens: "
          f"{summary['markov_nats_per_step']:.4f} nats/step")
    print(f"in-key note share: samples {summary['samples']['in_key_share']:.3f}, held-out data "
          f"{summary['test_data']['in_key_share']:.3f}, training data {summary['train_data']['in_key_share']:.3f}")
    print(f"outputs in {args.out} (samples.mid: 8 samples; summary.json, metrics.jsonl, checkpoint.npz); {midi}")
    return 0


def _sample(args):
    model, config = seq.load_app_checkpoint(args.checkpoint, "music", args.device)
    out = args.out or Path(args.checkpoint).parent / f"samples_seed{args.seed}.mid"
    if out.suffix.lower() not in (".mid", ".midi"):
        raise ValueError(f"--out {out}: name a .mid file")
    require("mido", EXTRA)
    samples = _sample_melodies(model, args.n, args.seed, args.decode, args.device)
    for i, tokens in enumerate(samples):
        print(f"{i + 1:3d}: {describe(tokens)}")
    write_midi(out, samples, config["step"], bpm=args.bpm)
    print(f"in-key note share {in_key_share(samples):.3f}; wrote {len(samples)} melodies to {out}")
    return 0
