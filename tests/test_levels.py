"""The mel level convention: detected from the data, carried to every audio -> mel path, guarded.

Mels computed by Essentia's own algorithms (in their own process) under both window normalisations go
through prepare, a tiny train, export and embed of the same audio; other scales are refused.
"""

import glob
import json
import os
import types

import numpy as np
import pytest

from helpers import FAST_PREPARE, REAL_AUDIO, REAL_FILES, run_essentia, run_module
from tfcmir import audio, inference, levels
from tfcmir.train import loop
from tfcmir.errors import InputError

TINY = dict(channels=[4, 4, 8, 8, 8, 8, 16], hidden_dim=32, embedding_dim=16)
SONGS = 200  # of the small demo's Melon songs, given Essentia's mels


@pytest.fixture(scope="module")
def real_mels():
  return [audio.file_to_mel(os.path.join(REAL_AUDIO, n)) for n in REAL_FILES]


def _corpus_of(tmp_path, mels):
  """A stand-in corpus whose songs' mel files hold `mels` (Melon layout: bands x frames)."""
  songs = []
  for i, mel in enumerate(mels):
    path = str(tmp_path / f"{i}.npy")
    np.save(path, np.ascontiguousarray(mel.T))
    songs.append(types.SimpleNamespace(mel_path=path))
  return types.SimpleNamespace(name="test", songs=songs)


@pytest.mark.parametrize("scale, expected", [
    (lambda m: m, "essentia"),
    (lambda m: m + levels.AUTHORS_OFFSET_DB, "authors")])
def test_both_conventions_are_detected_on_real_music(real_mels, tmp_path, scale, expected):
  from tfcmir.prepare import steps
  level, how, stats = steps.mel_level(_corpus_of(tmp_path, [scale(m) for m in real_mels]))
  assert (level, how) == (expected, "detected")
  assert stats["files"] == len(real_mels)
  # One file is enough, and the flag overrides the detection.
  assert steps.mel_level(_corpus_of(tmp_path, [scale(real_mels[0])]))[0] == expected
  assert steps.mel_level(_corpus_of(tmp_path, [scale(real_mels[0])]), "essentia")[:2] == (
      "essentia", "--mel_level")


def _power(mel_db):  # the authors' mel as power, what other scales start from
  return 10 ** ((mel_db + levels.AUTHORS_OFFSET_DB) / 20)


@pytest.mark.parametrize("name, scale", [
    ("natural log", lambda m: np.log(np.maximum(_power(m), 1e-10))),
    ("log10(1 + 10000 x)", lambda m: np.log10(1 + 10000 * _power(m))),
    ("linear", _power),
    ("shifted 40 dB", lambda m: m + 40.0)])
def test_a_third_convention_is_refused_with_the_level_named(real_mels, tmp_path, name, scale):
  from tfcmir.prepare import steps
  corpus = _corpus_of(tmp_path, [scale(m).astype(np.float32) for m in real_mels])
  with pytest.raises(InputError, match=r"median frame level -?\d+\.\d.*spread"):
    steps.mel_level(corpus)
  with pytest.raises(InputError, match="neither convention|not 20\\*log10 dB"):
    steps.prepare(corpus, str(tmp_path / "out"), FAST_PREPARE())


def test_guard_fires_on_shifted_input_only(real_mels):
  reference = levels.band_statistics(real_mels)
  guard = levels.Guard(reference)
  for name, mel in zip(REAL_FILES, real_mels):
    guard.check(name, mel)
    assert not guard.flagged, name
    guard.check(name, mel - 15)  # a quieter recording of the same: within 20 dB of the training range
    assert not guard.flagged, name
  for name, mel in zip(REAL_FILES, real_mels):
    assert guard.check(name, mel + levels.AUTHORS_OFFSET_DB) > levels.GUARD_SHIFT_DB
  assert [path for path, _ in guard.flagged] == list(REAL_FILES)
  with pytest.raises(InputError, match=f"{REAL_FILES[0]}: mel level \\+\\d+\\.\\d dB"):
    levels.Guard(reference, strict=True).check(REAL_FILES[0], real_mels[0] + 84.25)
  assert levels.Guard(reference).check("silence", np.full((300, 48), audio.DB_FLOOR)) is None


# --- End to end, for both conventions. -------------------------------------------------------------


@pytest.fixture(scope="module")
def essentia_corpora(small_demo, tmp_path_factory):
  """The small demo's Melon metadata with mels Essentia computed from real(istic) audio, per level.

  The audio: the demo's GTZAN clips, decoded and resampled by tfcmir (the same waveform then goes to
  Essentia and, from the wav file, to embed), cycled over the Melon songs.
  """
  from tfcmir.data import melon
  tmp = tmp_path_factory.mktemp("levels")
  wavs = sorted(glob.glob(os.path.join(small_demo, "gtzan", "*", "*.wav")))[:40]
  pairs = {level: [] for level in audio.LEVELS}
  for i, wav in enumerate(wavs):
    np.save(tmp / f"{i}.wave.npy", audio.load_audio(wav))
    for level in audio.LEVELS:
      pairs[level].append((str(tmp / f"{i}.wave.npy"), str(tmp / f"{i}.{level}.npy")))
  for level, level_pairs in pairs.items():
    run_essentia(*level_pairs, level=level)
  corpus = melon.read_melon(os.path.join(small_demo, "melon"))
  out = {}
  for level in audio.LEVELS:
    mel_dir = tmp / f"mels_{level}"
    for k, song in enumerate(corpus.songs[:SONGS]):  # the rest have no mel: a smaller corpus
      path = mel_dir / str(song.song_id // 1000) / f"{song.song_id}.npy"
      path.parent.mkdir(parents=True, exist_ok=True)
      np.save(path, np.load(tmp / f"{k % len(wavs)}.{level}.npy").T)
    out[level] = (str(mel_dir), [np.load(tmp / f"{i}.{level}.npy") for i in range(len(wavs))])
  return wavs, out


@pytest.mark.slow
@pytest.mark.parametrize("level", sorted(audio.LEVELS))
def test_essentia_mels_of_either_convention_go_end_to_end(small_demo, essentia_corpora, tmp_path,
                                                          level):
  from tfcmir import export
  from tfcmir.data import melon
  from tfcmir.model import contrastive
  from tfcmir.prepare import genres, steps

  wavs, by_level = essentia_corpora
  mel_dir, essentia_mels = by_level[level]
  corpus = melon.read_melon(os.path.join(small_demo, "melon"), mel_dir)
  tfrecord_dir = str(tmp_path / "tfrecords")
  manifest = steps.prepare(corpus, tfrecord_dir, FAST_PREPARE(), workers=2, progress=False)
  assert manifest["mel_level"]["level"] == level and manifest["mel_level"]["how"] == "detected"

  table = genres.GenreVectors.load(tfrecord_dir).table
  config = contrastive.model_config("contr_cf_g", table.shape, manifest["schema"]["cf_dim"], **TINY)
  run_dir = str(tmp_path / "run")
  loop.train(tfrecord_dir, run_dir, config, epochs=2, batch_size=32, learning_rate=1e-3,
              weight_decay=1e-4, steps_per_epoch=4, verbose=0)
  assert json.load(open(os.path.join(run_dir, "config.json")))["frontend"] == {"level": level}
  out = str(tmp_path / "export")
  exported = export.export(run_dir, out)
  assert exported["frontend"] == {"level": level}
  card = json.load(open(os.path.join(out, exported["essentia"]["metadata"])))
  assert card["front_end"]["level"] == level
  assert card["front_end"]["window_normalized"] == (level == "essentia")
  assert exported["level_statistics"]["songs"] > 0

  # embed of the audio files against the export applied to Essentia's stored mels.
  encoder = inference.Encoder(out)
  n = 16
  rows, per_patch, skipped = inference.embed_files(wavs[:n], encoder, progress=False)
  assert not skipped and not encoder.guard.flagged
  from_audio = np.stack([p.mean(0) for p in per_patch])
  from_mels = np.stack([encoder(np.asarray(audio.split_patches(m[None], 256))[0]).mean(0)
                        for m in essentia_mels[:n]])
  cosines = np.sum(from_audio * from_mels, 1) / (np.linalg.norm(from_audio, axis=1)
                                                 * np.linalg.norm(from_mels, axis=1))
  assert np.median(cosines) > 0.99, cosines
  # The waveform signature computes the same mel: it agrees with embed's front end too.
  import tensorflow as tf
  loaded = tf.saved_model.load(os.path.join(out, "saved_model", "1"))
  wave = audio.load_audio(wavs[0])[None]
  signature = loaded.signatures["from_waveform"](waveform=tf.constant(wave))["embedding"].numpy()[0]
  assert np.dot(signature, from_audio[0]) / (np.linalg.norm(signature)
                                              * np.linalg.norm(from_audio[0])) > 0.999

  # The other convention's mels are 84 dB off: the guard names the file, and --strict stops.
  other = (essentia_mels[0] + (levels.AUTHORS_OFFSET_DB if level == "essentia"
                               else -levels.AUTHORS_OFFSET_DB))
  encoder.guard.check("ordinary", essentia_mels[0])
  assert not encoder.guard.flagged
  encoder.guard.check("shifted", other)
  assert [path for path, _ in encoder.guard.flagged] == ["shifted"]
  if level == "essentia":
    import soundfile as sf
    loud = str(tmp_path / "loud.wav")  # float wav at +84 dB: what an authors-level model expects
    sf.write(loud, audio.load_audio(wavs[0]) * 10 ** (levels.AUTHORS_OFFSET_DB / 20), 16000,
             subtype="FLOAT")
    result = run_module("tfcmir.embed", f"--embed_model={out}", f"--out={tmp_path / 'emb'}",
                        "--strict", loud, wavs[1])
    assert result.returncode == 1 and "loud.wav: mel level +" in result.stderr, result.stderr[-2000:]


def test_essentia_level_keeps_the_fingerprint_of_earlier_preparations():
  """Shards prepared before the level was recorded are essentia-level: they stay valid, not redone."""
  import dataclasses
  import hashlib
  from tfcmir.prepare import steps
  corpus = types.SimpleNamespace(songs=[], playlists=[[1, 2]], genre_names=["GN01"])
  config = steps.PrepareConfig()
  settings = dataclasses.asdict(config)
  del settings["mel_level"]
  del settings["cf_backend"]  # added later still (LightFM); its default "tf" keeps the fingerprint too
  before = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
  before.update(b"1,2\n")
  before.update(json.dumps(["GN01"]).encode())
  assert steps.fingerprint(corpus, config) == before.hexdigest()
  assert steps.fingerprint(corpus, dataclasses.replace(config, mel_level="authors")) != before.hexdigest()
