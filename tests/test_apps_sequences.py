"""The sequence applications: the sequence VAE (tinygen.models.seqvae), ``tinygen app text`` and ``tinygen app music``.

The model, the word and token functions and the text command on a word file need no optional library. Tests that
need the text extra (names) or the music extra (music21, mido) are skipped, with the extra to install, when it
is absent."""
import importlib.util
import json
import math
import sys

import numpy as np
import pytest

import tinygen
from tinygen import cli
from tinygen.apps import music, text
from tinygen.models import seqvae
from tinygen.models.train_utils import read_metrics

from conftest import requires_torch


def _extra_missing(module, extra):
    return pytest.mark.skipif(importlib.util.find_spec(module) is None,
                              reason=f"{module} is not installed (the '{extra}' extra: pip install -e \".[{extra}]\")")


needs_names = _extra_missing("names", "text")
needs_mido = _extra_missing("mido", "music")
needs_music21 = _extra_missing("music21", "music")


def patterns_data(n=300, length=6, vocab=5, kinds=4, seed=0):
    """Sequences that are copies of a few random patterns: a VAE can learn them almost exactly."""
    rng = np.random.default_rng(seed)
    patterns = rng.integers(0, vocab, (kinds, length))
    return patterns[rng.integers(0, kinds, n)], patterns


# ---- the sequence VAE ------------------------------------------------------------------------------------------------
def test_encode_decode_and_sample_shapes():
    tinygen.manual_seed(0)
    model = seqvae.SeqVAE(vocab_size=7, length=5, latent=3, hidden=[10, 8], embed=4)
    tokens = tinygen.as_tensor(np.arange(10).reshape(2, 5) % 7)
    mu, logvar = model.encode(tokens)
    assert mu.shape == logvar.shape == (2, 3)
    logits, mu2, _ = model(tokens)
    assert logits.shape == (2, 5, 7) and mu2.shape == (2, 3)
    assert model.decode(tinygen.zeros((4, 3))).shape == (4, 5, 7)
    for mode in seqvae.DECODE_MODES:
        drawn = seqvae.sample_tokens(model, 6, mode)
        assert drawn.shape == (6, 5) and drawn.min() >= 0 and drawn.max() < 7
    assert seqvae.interpolate_tokens(model, np.zeros(5, int), np.ones(5, int), steps=4).shape == (4, 5)


def _log_softmax(x):
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def test_categorical_nll_matches_a_hand_computation():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 4, 6)).astype(np.float32)
    tokens = rng.integers(0, 6, (3, 4))
    logp = _log_softmax(logits.astype(np.float64))
    expected = -np.take_along_axis(logp, tokens[..., None], -1)[..., 0].sum(1)
    per_seq = seqvae.categorical_nll(tinygen.as_tensor(logits), tinygen.as_tensor(tokens), reduction="none")
    np.testing.assert_allclose(per_seq.detach().numpy(), expected, rtol=1e-5)
    total = seqvae.categorical_nll(tinygen.as_tensor(logits), tinygen.as_tensor(tokens))
    assert total.item() == pytest.approx(expected.sum(), rel=1e-5)


@requires_torch
def test_categorical_nll_and_its_gradient_match_pytorch():
    import torch
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(5, 7, 4)).astype(np.float32)
    tokens = rng.integers(0, 4, (5, 7))
    x = tinygen.tensor(logits, requires_grad=True)
    loss = seqvae.categorical_nll(x, tinygen.as_tensor(tokens))
    loss.backward()
    tx = torch.tensor(logits, requires_grad=True)
    tloss = -torch.distributions.Categorical(logits=tx).log_prob(torch.tensor(tokens)).sum()
    tloss.backward()
    assert loss.item() == pytest.approx(tloss.item(), rel=1e-5)
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-4, atol=1e-6)


def test_the_elbo_is_the_nll_at_the_posterior_sample_plus_the_kl():
    tinygen.manual_seed(3)
    model = seqvae.SeqVAE(5, 4, latent=2, hidden=[8])
    tokens = tinygen.as_tensor(np.array([[0, 1, 2, 3], [4, 4, 0, 1]]))
    eps = tinygen.as_tensor(np.array([[0.3, -1.0], [1.2, 0.1]], dtype=np.float32))
    recon, kl = seqvae.elbo_terms(model, tokens, eps=eps)
    mu, logvar = (t.detach().numpy().astype(np.float64) for t in model.encode(tokens))
    z = mu + np.exp(logvar / 2) * eps.numpy()
    logits = model.decode(tinygen.as_tensor(z.astype(np.float32))).detach().numpy().astype(np.float64)
    nll = -np.take_along_axis(_log_softmax(logits), tokens.numpy()[..., None], -1).sum()
    assert recon.item() == pytest.approx(nll, rel=1e-4)
    assert kl.item() == pytest.approx(-0.5 * np.sum(1 + logvar - mu ** 2 - np.exp(logvar)), rel=1e-4)


def test_training_lowers_the_loss_and_learns_the_patterns(tmp_path):
    data, patterns = patterns_data()
    model, history = seqvae.train_seqvae(data[:240], data[240:], 5, out=tmp_path, quiet=True, epochs=25,
                                         batch_size=32, latent=4, hidden=[32], embed=4, lr=3e-3, test_units=60 * 6,
                                         unit="char")
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    assert history[-1]["test_loss"] < history[0]["test_loss"]
    assert history[-1]["test_nats_per_char"] == pytest.approx(history[-1]["test_loss"] / 6)
    # the four patterns come back through their codes
    codes = seqvae.encode_mean(model, patterns)
    np.testing.assert_array_equal(seqvae.decode_tokens(model, codes), patterns)
    assert [r["epoch"] for r in read_metrics(tmp_path / "metrics.jsonl")] == list(range(1, 26))


def test_resume_ends_with_the_same_parameters(tmp_path):
    data, _ = patterns_data(n=120)
    kw = dict(quiet=True, batch_size=16, latent=2, hidden=[8], embed=3, meta={"app": "test"})
    full, _ = seqvae.train_seqvae(data[:100], data[100:], 5, out=tmp_path / "a", epochs=3, **kw)
    seqvae.train_seqvae(data[:100], data[100:], 5, out=tmp_path / "b", epochs=2, **kw)
    resumed, history = seqvae.train_seqvae(data[:100], data[100:], 5, out=tmp_path / "b", resume=True, epochs=3,
                                           **kw)
    assert [r["epoch"] for r in history] == [3]
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        np.testing.assert_array_equal(a.numpy() if hasattr(a, "numpy") else a,
                                      b.numpy() if hasattr(b, "numpy") else b, err_msg=name)
    with pytest.raises(ValueError, match="settings differ"):
        seqvae.train_seqvae(data[:100], data[100:], 5, out=tmp_path / "b", resume=True, epochs=4,
                            **{**kw, "meta": {"app": "other"}})


def test_bad_tokens_and_settings_are_refused():
    model = seqvae.SeqVAE(4, 3, latent=2, hidden=[5])
    with pytest.raises(ValueError, match=r"evaluate_elbo: tokens must lie in 0\.\.3"):
        seqvae.evaluate_elbo(model, np.array([[0, 1, 4]]))
    with pytest.raises(ValueError, match=r"shape \(N, 3\)"):
        seqvae.encode_mean(model, np.zeros((2, 4), dtype=int))
    with pytest.raises(TypeError, match="integers"):
        seqvae.encode_mean(model, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="decode_tokens: mode"):
        seqvae.decode_tokens(model, np.zeros((1, 2)), mode="beam")
    with pytest.raises(ValueError, match=r"z must have shape \(N, 2\)"):
        seqvae.decode_tokens(model, np.zeros((1, 3)))
    with pytest.raises(ValueError, match="vocab_size must be an integer >= 2"):
        seqvae.SeqVAE(1, 3)
    with pytest.raises(ValueError, match="unknown sequence-VAE setting"):
        seqvae.train_seqvae(np.zeros((4, 3), int), np.zeros((2, 3), int), 4, epochz=3)
    with pytest.raises(ValueError, match="test_tokens has sequences of length 2"):
        seqvae.train_seqvae(np.zeros((4, 3), int), np.zeros((2, 2), int), 4, batch_size=2)
    with pytest.raises(ValueError, match="outside 0..3"):
        seqvae.train_seqvae(np.full((4, 3), 7), np.zeros((2, 3), int), 4, batch_size=2)


# ---- words -----------------------------------------------------------------------------------------------------------
def test_words_to_tokens_and_back():
    alphabet = text.alphabet_of(["abe", "cab"])
    assert alphabet == "abce"
    tokens = text.encode_words(["abe", "c"], alphabet, 5)
    np.testing.assert_array_equal(tokens, [[1, 2, 4, 0, 0], [3, 0, 0, 0, 0]])
    assert text.decode_words(tokens, alphabet) == ["abe", "c"]
    assert text.decode_words([[2, 0, 1, 1, 1], [0, 3, 3, 3, 3], [1, 1, 1, 1, 1]], alphabet) == ["b", "", "aaaaa"]
    with pytest.raises(ValueError, match=r"'abz' has character\(s\) 'z' the model never saw"):
        text.encode_words(["abz"], alphabet, 5)
    with pytest.raises(ValueError, match="at most 4"):
        text.encode_words(["abcea"], alphabet, 5)


def test_word_statistics_sorts_samples_into_copies_held_out_and_new():
    stats = text.word_statistics(["ann", "bob", "ann", "zed", "", "cy"], train_words=["ann", "al"],
                                 all_words=["ann", "al", "bob", "cy"])
    assert (stats["train_copy"], stats["held_out"], stats["new"], stats["empty"]) == (2, 2, 1, 1)
    assert stats["distinct"] == 5 and stats["samples"] == 6
    assert stats["real_share"] == pytest.approx(4 / 6) and stats["new_share"] == pytest.approx(1 / 6)


def test_split_words_is_a_reproducible_partition():
    words = [f"w{i}" for i in range(50)]
    train, test = text.split_words(words, 0.2, seed=3)
    assert len(test) == 10 and sorted(train + test) == sorted(words)
    assert (train, test) == text.split_words(words, 0.2, seed=3) != text.split_words(words, 0.2, seed=4)
    with pytest.raises(ValueError, match="--test-fraction"):
        text.split_words(words, 1.0)


def test_bigram_reference_matches_a_hand_count():
    # train "ab": start counts end 1, a 2, b 1 (one each for smoothing); transitions a->b, b->end. Test "a" is
    # a then the end mark: p(start a) = 2/4, p(a -> end) = 1/4 (row a: end 1, a 1, b 2)
    alphabet = "ab"
    got = text.bigram_nats_per_char(["ab"], ["a"], alphabet)
    p_start_a = 2 / 4
    p_a_end = 1 / 4
    assert got == pytest.approx(-(math.log(p_start_a) + math.log(p_a_end)) / 2)


@needs_names
def test_census_names_are_read_from_the_names_package():
    first = text.census_names("first")
    assert len(first) > 5000 and {"mary", "james", "linda"} <= set(first)
    assert first == sorted(set(first)) and text.alphabet_of(first) == "abcdefghijklmnopqrstuvwxyz"


def test_a_missing_extra_names_it(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "names", None)  # import names now raises ImportError
    with pytest.raises(ImportError, match=r'pip install -e "\.\[text\]"'):
        text.census_names()
    monkeypatch.setitem(sys.modules, "mido", None)
    with pytest.raises(ImportError, match=r'pip install -e "\.\[music\]"'):
        music.write_midi(tmp_path / "x.mid", [[2, 1, 0]])
    assert cli.main(["app", "text", "train", "--out", str(tmp_path / "run")]) == 1
    assert "install it with: pip install -e \".[text]\"" in capsys.readouterr().err


# ---- the text command on a word file (no extra needed) ---------------------------------------------------------------
@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("text")
    rng = np.random.default_rng(0)
    syllables = ["ka", "ri", "lo", "me", "su", "ta", "no"]
    words = {"".join(rng.choice(syllables, rng.integers(1, 4))) for _ in range(400)}
    (folder / "words.txt").write_text("\n".join(sorted(words)) + "\n\n")
    code = cli.main(["app", "text", "train", "--words", str(folder / "words.txt"), "--out", str(folder / "run"),
                     "--epochs", "3", "--hidden", "32", "--latent", "4", "--batch-size", "16", "--quiet",
                     "--eval-samples", "50", "--threads", "1"])
    assert code == 0
    return folder, sorted(words)


def test_text_train_writes_the_run_and_its_summary(text_run):
    folder, words = text_run
    summary = json.loads((folder / "run" / "summary.json").read_text())
    assert summary["samples"] == 50
    assert summary["train_copy"] + summary["held_out"] + summary["new"] + summary["empty"] == 50
    records = read_metrics(folder / "run" / "metrics.jsonl")
    assert len(records) == 3 and summary["test_nats_per_char"] == records[-1]["test_nats_per_char"]
    assert 0 < summary["test_nats_per_char"] < 10


def test_text_sample_and_interpolate(text_run, capsys):
    folder, words = text_run
    ckpt = str(folder / "run" / "checkpoint.npz")
    capsys.readouterr()
    assert cli.main(["app", "text", "sample", ckpt, "--n", "5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["words"]) == 5 and out["statistics"]["samples"] == 5
    assert set("".join(out["words"])) <= set("kariolmesutn")
    assert cli.main(["app", "text", "interpolate", ckpt, words[0], words[-1], "--steps", "5"]) == 0
    assert capsys.readouterr().out.count(" -> ") == 4


def test_text_bad_input_errors(text_run, capsys, tmp_path):
    folder, words = text_run
    ckpt = str(folder / "run" / "checkpoint.npz")
    capsys.readouterr()
    assert cli.main(["app", "text", "interpolate", ckpt, "kari", "kaxi"]) == 2
    err = capsys.readouterr().err
    assert "tinygen app text interpolate: 'kaxi' has character(s) 'x' the model never saw" in err
    assert cli.main(["app", "text", "interpolate", ckpt, "ka" * 20, "ka"]) == 2
    assert "characters; this model's words have at most" in capsys.readouterr().err
    assert cli.main(["app", "text", "sample", str(tmp_path / "none.npz")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    assert cli.main(["app", "music", "sample", ckpt]) == 2
    assert "not a checkpoint of `tinygen app music train` (it is one of `tinygen app text`)" in capsys.readouterr().err
    (tmp_path / "two.txt").write_text("one word\n")
    assert cli.main(["app", "text", "train", "--words", str(tmp_path / "two.txt"), "--out", str(tmp_path / "r")]) == 2
    assert "line 1 holds more than one word" in capsys.readouterr().err


# ---- melodies --------------------------------------------------------------------------------------------------------
def P(midi):
    return music.pitch_token(midi)


def test_tokens_to_notes_and_statistics():
    H, R = music.HOLD, music.REST
    tokens = [H, P(60), H, H, P(62), R, H, P(66), P(60)]
    assert music.notes_of(tokens) == [(60, 1, 3), (62, 4, 1), (66, 7, 1), (60, 8, 1)]
    assert music.in_key_share([tokens]) == pytest.approx(3 / 4)  # F# is outside C major
    assert math.isnan(music.in_key_share([[R, H]]))
    assert music.describe([P(60), H, R, P(69)]) == "C4 - . A4"
    assert music.pitch_token(40) == music.pitch_token(52) == music.pitch_token(64)  # octaves up into the range
    assert music.token_pitch(music.pitch_token(100)) == 76


def test_transposition_to_c_major_or_a_minor():
    assert music.transposition_to_c(7, "major") == 5        # G major: up a fourth
    assert music.transposition_to_c(2, "major") == -2       # D major: down a tone
    assert music.transposition_to_c(4, "minor") == 5        # E minor -> A minor
    assert music.transposition_to_c(9, "minor") == 0
    assert all(-6 <= music.transposition_to_c(t, m) <= 5 for t in range(12) for m in ("major", "minor"))


def test_windows_start_with_the_sounding_note():
    H, R = music.HOLD, music.REST
    melody = [P(60), H, H, H, R, H, P(64), H]
    got = music.windows([melody], length=4, stride=2)
    np.testing.assert_array_equal(got, [[P(60), H, H, H], [P(60), H, R, H], [R, H, P(64), H]])


@needs_mido
def test_midi_writing_round_trip(tmp_path):
    H, R = music.HOLD, music.REST
    melodies = [[P(60), H, P(62), R, P(64), H, H, H], [R, P(67), P(67), H]]
    path = music.write_midi(tmp_path / "m.mid", melodies, step=0.5, gap_steps=2)
    notes, tpb = music.read_midi_notes(path)
    step = tpb // 2  # an eighth note
    expected = [(p, s * step, n * step) for p, s, n in music.notes_of(melodies[0])]
    expected += [(p, (8 + 2 + s) * step, n * step) for p, s, n in music.notes_of(melodies[1])]
    assert notes == expected
    import mido
    assert mido.MidiFile(path).length == pytest.approx((8 + 2 + 4 + 2) * 0.5 * 60 / 90)  # 90 bpm, gap at the end


@needs_music21
def test_a_chorale_soprano_becomes_tokens_in_c():
    from music21 import corpus
    score = corpus.parse("bach/bwv269")  # Aus meines Herzens Grunde, G major
    tokens, key = music.score_melody(score)
    assert key == "G major"
    notes = [(p, s, n) for p, s, n in music.notes_of(tokens)]
    soprano = [n for n in score.parts[0].flatten().notes if n.quarterLength > 0]
    expected = [(n.pitch.midi + 5, int(round(n.offset / 0.5)), int(round(n.quarterLength / 0.5))) for n in soprano
                if not (n.tie and n.tie.type != "start")]
    assert notes[:len(expected)] == expected and len(notes) == len(expected)
    assert music.describe(tokens[:6]) == "C5 - C5 - - -"


@needs_music21
def test_tied_notes_become_holds():
    from music21 import note, stream, tie
    part = stream.Part()
    a, b = note.Note("E4", quarterLength=1), note.Note("E4", quarterLength=0.5)
    a.tie, b.tie = tie.Tie("start"), tie.Tie("stop")
    part.append([a, b, note.Rest(quarterLength=0.5), note.Note("G4", quarterLength=0.5)])
    tokens = music.melody_tokens(part, shift=0)
    np.testing.assert_array_equal(tokens, [P(64), music.HOLD, music.HOLD, music.REST, P(67)])


@needs_music21
@needs_mido
def test_music_train_and_sample_from_a_cached_corpus(tmp_path, capsys):
    import music21
    rng = np.random.default_rng(0)
    scale = [P(p) for p in (60, 62, 64, 65, 67, 69, 71, 72)]
    melodies = [np.array([scale[i % 8] if i % 2 == 0 else music.HOLD for i in range(k, k + 48)]) for k in range(20)]
    melodies = [m if rng.random() < 0.5 else m[::-1].copy() for m in melodies]
    bounds = np.cumsum([0] + [len(m) for m in melodies])
    np.savez(tmp_path / f"chorale-sopranos-music21-{music21.__version__}-step0.5.npz",
             tokens=np.concatenate(melodies), bounds=bounds, keys=np.array(["C major"] * 20))
    run = tmp_path / "run"
    assert cli.main(["app", "music", "train", "--cache", str(tmp_path), "--out", str(run), "--epochs", "2",
                     "--hidden", "32", "--latent", "4", "--length", "16", "--stride", "8", "--batch-size", "16",
                     "--quiet", "--eval-samples", "20", "--test-fraction", "0.2"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test_data"]["in_key_share"] == 1.0 and 0 <= summary["samples"]["in_key_share"] <= 1
    assert summary["test_nats_per_step"] == pytest.approx(summary["test_loss"] / 16)
    assert music.read_midi_notes(run / "samples.mid")[0] or True  # a readable MIDI file
    capsys.readouterr()
    assert cli.main(["app", "music", "sample", str(run / "checkpoint.npz"), "--n", "3",
                     "--out", str(tmp_path / "s.mid")]) == 0
    assert "wrote 3 melodies" in capsys.readouterr().out and (tmp_path / "s.mid").stat().st_size > 20
    assert cli.main(["app", "music", "sample", str(run / "checkpoint.npz"), "--out", str(tmp_path / "s.wav")]) == 2
    assert "name a .mid file" in capsys.readouterr().err


def test_threads_may_come_before_or_after_the_action():
    parser = cli.build_parser()
    assert parser.parse_args(["app", "text", "--threads", "1", "sample", "c.npz"]).threads == 1
    assert parser.parse_args(["app", "music", "sample", "c.npz", "--threads", "2"]).threads == 2
    assert parser.parse_args(["app", "text", "sample", "c.npz"]).threads == "auto"
