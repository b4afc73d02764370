"""Real music end to end, as a user runs it: a catalogue of the real excerpts -> prepare -> train ->
export -> embed with the SavedModel, the mel TFLite and the waveform TFLite; the same audio in another
format and sample rate embeds the same."""

import json
import os

import numpy as np
import pytest
import soundfile as sf
import soxr

from helpers import REAL_AUDIO, REAL_FILES, run_module

TINY_FLAGS = ["--conv_channels=4,4,8,8,8,8,16", "--hidden_dim=32", "--embedding_dim=16",
              "--cf_dim=8", "--genre_dim=8", "--warp_epochs=2", "--mode=contr_cf_g"]


def _ok(result):
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def _cosines(a, b):
  return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.slow
def test_real_excerpts_through_the_catalogue_path(tmp_path):
  # The split needs 10 songs: the excerpts, and each 10 s one's halves as FLAC at its own rate.
  music = tmp_path / "music"
  music.mkdir()
  songs = []
  for name in REAL_FILES:
    os.symlink(os.path.join(REAL_AUDIO, name), music / name)
    songs.append(name)
    data, rate = sf.read(os.path.join(REAL_AUDIO, name), dtype="float32")
    if len(data) >= 8 * rate:
      for half, part in enumerate((data[:len(data) // 2], data[len(data) // 2:])):
        songs.append(f"{name.rsplit('.', 1)[0]}_half{half}.flac")
        sf.write(music / songs[-1], part, rate)
  tags = ["ambient", "electronic", "rock"]
  csv_path = tmp_path / "songs.csv"
  csv_path.write_text("path,genres\n" + "".join(f"{s},{tags[i % 3]}|{tags[(i + 1) % 3]}\n"
                                                for i, s in enumerate(songs)))
  playlists = tmp_path / "playlists.json"
  playlists.write_text(json.dumps({f"p{k}": songs[k::3] + songs[:2] for k in range(3)}))
  data, run, exported = (str(tmp_path / n) for n in ("tfrecords", "run", "export"))
  common = [f"--tfrecord_dir={data}", *TINY_FLAGS]

  out = _ok(run_module("tfcmir.prepare", "--source=catalogue", f"--catalogue_audio_dir={music}",
                       f"--catalogue_csv={csv_path}", f"--catalogue_playlists={playlists}", *common))
  assert "mel level convention: essentia" in out
  out = _ok(run_module("tfcmir.train", *common, f"--model_dir={run}", "--epochs=2", "--batch_size=2",
                       "--steps_per_epoch=2"))
  assert "genre probe skipped:" in out  # one test song: too few for the probe, and exit 0
  _ok(run_module("tfcmir.export", f"--checkpoint={run}", f"--out={exported}", *common))
  manifest = json.load(open(os.path.join(exported, "export_manifest.json")))
  assert manifest["frontend"] == {"level": "essentia"}

  # The same music in another format and sample rate: a 44.1 kHz FLAC of a 16 kHz wav.
  name = next(n for n in REAL_FILES if n.endswith("mono16k.wav"))
  wave, rate = sf.read(os.path.join(REAL_AUDIO, name), dtype="float32")
  converted = str(tmp_path / "converted_44k.flac")
  sf.write(converted, soxr.resample(wave, rate, 44100, quality="VHQ"), 44100, subtype="PCM_24")
  files = [os.path.join(REAL_AUDIO, n) for n in REAL_FILES] + [converted]

  embeddings = {}
  for artifact in ("saved_model", "tflite"):
    out_dir = str(tmp_path / f"emb_{artifact}")
    out = _ok(run_module("tfcmir.embed", f"--embed_model={exported}", f"--out={out_dir}",
                         f"--artifact={artifact}", *files))
    assert "off-distribution" not in out, out
    embeddings[artifact] = np.load(os.path.join(out_dir, "embeddings.npy"))
  assert len(embeddings["saved_model"]) == len(files)  # every file embedded, none skipped
  assert np.min(_cosines(embeddings["tflite"], embeddings["saved_model"])) > 0.999

  # The waveform TFLite computes the mel itself, in the export's level convention.
  from tfcmir import audio, export
  content = open(os.path.join(exported, manifest["tflite"]["waveform_float32"]), "rb").read()
  from_waveform = np.stack([export.run_tflite(content, {"waveform": audio.load_audio(f)[None]})
                            ["embedding"][0] for f in files])
  assert np.min(_cosines(from_waveform, embeddings["saved_model"])) > 0.999

  original = embeddings["saved_model"][REAL_FILES.index(name)]
  assert _cosines(embeddings["saved_model"][-1:], original[None])[0] > 0.99
