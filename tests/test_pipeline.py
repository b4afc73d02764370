"""The reader's crops, cut from the encoded float16 bytes, against NumPy crops of the decoded mel."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tfcmir import safeio, shards
from tfcmir.train import pipeline


BANDS, GENRES, CF = 48, 4, 6
# Shorter than a crop, exactly one, one frame more, and a Melon-length song.
LENGTHS = (100, 256, 257, 1876, 700, 31, 400, 1000)


def _mel(song, frames):
  rng = np.random.default_rng(song)
  return rng.normal(-80, 20, (frames, BANDS)).astype(np.float16)


def _write_shards(out_dir):
  """Two train shards of the songs in LENGTHS (odd songs without a CF vector) and a manifest."""
  listed = []
  for index, songs in enumerate((range(0, 4), range(4, len(LENGTHS)))):
    name = shards.shard_name("train", index, 2)
    path = os.path.join(out_dir, name)
    with tf.io.TFRecordWriter(path) as writer:
      for song in songs:
        writer.write(shards.serialize(song, "train", _mel(song, LENGTHS[song]),
                                       np.arange(1, GENRES + 1), np.full(CF, song, np.float32),
                                       has_cf=song % 2 == 0))
    listed.append({"file": name, "split": "train", "records": len(songs),
                   "bytes": os.path.getsize(path), "sha256": safeio.sha256_file(path)})
  manifest = {"schema": {"bands": BANDS, "max_genres": GENRES, "cf_dim": CF}, "shards": listed,
              "counts": {"songs": {"train": len(LENGTHS)}, "with_cf": {"train": 4}}}
  with open(os.path.join(out_dir, "manifest.json"), "w", encoding="utf-8") as f:
    json.dump(manifest, f)


def _reference_crop(mel16, start, frames=256):
  """NumPy: float32 crop at `start`, padded at the end with -200 dB."""
  mel = mel16.astype(np.float32)
  mel = np.concatenate([mel, np.full((max(0, frames - len(mel)), BANDS), -200.0, np.float32)])
  return mel[start:start + frames]


def _starts(crop, mel16):
  """The starts at which `crop` equals the reference crop (random mels: exactly one, if any)."""
  frames = len(crop)
  padded = _reference_crop(mel16, 0, max(frames, len(mel16)))
  room = len(padded) - frames
  candidates = np.flatnonzero(np.all(padded[:room + 1] == crop[0], axis=1))
  return [int(s) for s in candidates if np.array_equal(crop, padded[s:s + frames])]


@pytest.mark.parametrize("frames", LENGTHS[:4])
def test_encoded_crop_equals_numpy_crop(frames):
  mel16 = _mel(7, frames)
  encoded = tf.constant(mel16.tobytes())
  centre = pipeline.crop_encoded(encoded, 256, BANDS, training=False)
  assert centre.dtype == tf.uint16 and centre.shape == (256, BANDS)  # float16 bit patterns
  centre = shards.mel_from_bits(centre)
  room = max(0, frames - 256)
  np.testing.assert_array_equal(centre.numpy(), _reference_crop(mel16, room // 2))
  # The decoded-mel crop of the old reader gives the same centre crop.
  np.testing.assert_array_equal(
      centre.numpy(),
      pipeline.crop(tf.constant(mel16.astype(np.float32)), 256, training=False).numpy())
  starts = set()
  for _ in range(40):
    crop = shards.mel_from_bits(pipeline.crop_encoded(encoded, 256, BANDS, training=True)).numpy()
    found = _starts(crop, mel16)
    assert len(found) == 1, "a training crop is not a window of the mel"
    starts.add(found[0])
  assert starts <= set(range(room + 1))
  if room >= 1:  # starts are drawn anew each time, over the whole range
    assert len(starts) > 1 and (room > 1 or starts == {0, 1})
  else:
    assert starts == {0}


def test_encoded_crop_rejects_bytes_that_are_not_whole_frames():
  with pytest.raises(tf.errors.InvalidArgumentError, match="whole frames"):
    pipeline.crop_encoded(tf.constant(b"\x00" * (2 * BANDS * 300 + 2)), 256, BANDS, training=False)


def test_dataset_crops_every_song_like_numpy(tmp_path):
  out = str(tmp_path)
  _write_shards(out)
  mels = {song: _mel(song, frames) for song, frames in enumerate(LENGTHS)}
  # Evaluation: centre crops of every song, in file order, float32, with the other fields.
  batches = list(pipeline.dataset(out, "train", batch_size=3, training=False))
  assert [b["mel"].shape[0] for b in batches] == [3, 3, 2]
  ids = np.concatenate([b["song_id"].numpy() for b in batches])
  assert ids.tolist() == list(range(len(LENGTHS)))
  for batch in batches:
    assert batch["mel"].dtype == tf.float32 and batch["mel"].shape[1:] == (256, BANDS)
    for song, mel, cf in zip(batch["song_id"].numpy(), batch["mel"].numpy(), batch["cf"].numpy()):
      room = max(0, LENGTHS[song] - 256)
      np.testing.assert_array_equal(mel, _reference_crop(mels[song], room // 2))
      np.testing.assert_array_equal(cf, np.full(CF, song, np.float32))
  # Training, repeated: every crop is a window of its song; songs come back with new crops; only
  # the songs with a CF vector when asked.
  ds = pipeline.dataset(out, "train", batch_size=4, training=True, seed=3, repeat=True,
                        only_with_cf=True, shuffle_buffer=8)
  seen = {}
  for batch in ds.take(12):
    assert batch["mel"].shape == (4, 256, BANDS) and batch["mel"].dtype == tf.float32
    for song, mel in zip(batch["song_id"].numpy(), batch["mel"].numpy()):
      assert song % 2 == 0
      found = _starts(mel, mels[song])
      assert len(found) == 1
      seen.setdefault(int(song), set()).add(found[0])
  assert set(seen) == {0, 2, 4, 6}
  assert seen[0] == {0}  # 100 frames: padded, a single possible crop
  assert len(seen[6]) > 1  # 400 frames: 145 possible starts, drawn anew each time
