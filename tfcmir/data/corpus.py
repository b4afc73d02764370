"""What every source reader yields: songs with genres, a mel or audio path, and playlists.

Readers (tfcmir.data.melon, tfcmir.data.catalogue) turn a dataset's own layout into a `Corpus`; the
preparation step (tfcmir.prepare) never looks at a layout. Bad input is reported through `Problems`:
a message naming the file or id, a count per kind for the manifest, and the run goes on unless strict.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from tfcmir.errors import InputError, Problems


@dataclasses.dataclass(frozen=True)
class SongRecord:
  """One song as a reader sees it.

  Attributes:
    song_id: the dataset's integer id (Melon's `id`; a catalogue's id column or row number).
    genres: genre codes, main genres first then detailed ones, each group sorted (a fixed order).
    mel_path: a (bands, frames) float .npy file (the Melon layout), or None.
    audio_path: an audio file decoded through tfcmir.audio (your own catalogue), or None.
  """
  song_id: int
  genres: tuple
  mel_path: str | None = None
  audio_path: str | None = None


@dataclasses.dataclass
class Corpus:
  """A dataset, source-independent.

  Attributes:
    name: 'melon' or 'catalogue'.
    songs: the usable songs (those with a mel or audio file), in id order.
    genre_names: genre code -> readable name; the genre vocabulary.
    playlists: song-id lists of the playlists the CF factors are learnt from (Melon: train.json).
    heldout_playlists: other playlists by name (Melon: 'val', 'test'), kept for evaluation.
    problems: what was wrong with the input, counted.
  """
  name: str
  songs: list
  genre_names: dict
  playlists: list
  heldout_playlists: dict = dataclasses.field(default_factory=dict)
  problems: Problems = dataclasses.field(default_factory=Problems)

  @property
  def song_ids(self):
    return np.array([s.song_id for s in self.songs], np.int64)


def order_genres(main_codes, detailed_codes=()):
  """Main genres first, then detailed ones, each sorted and de-duplicated: one order, every run."""
  main = sorted(set(main_codes))
  return tuple(main + sorted(set(detailed_codes) - set(main)))


def load_mel(path, bands=48):
  """Loads a Melon-layout mel file: (bands, frames) on disk -> float32 (frames, bands), checked.

  The result is the file's array transposed (a view, not C-contiguous).

  Raises:
    InputError: unreadable file, wrong shape, or non-finite values; the message names the file.
  """
  try:
    mel = np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError) as err:
    raise InputError(f"{path}: cannot read the mel file ({err})") from err
  if mel.ndim != 2 or mel.shape[0] != bands or mel.shape[1] < 1:
    raise InputError(f"{path}: mel has shape {mel.shape}, expected ({bands}, frames)")
  if not np.issubdtype(mel.dtype, np.floating) and not np.issubdtype(mel.dtype, np.integer):
    raise InputError(f"{path}: mel has dtype {mel.dtype}, expected a number type")
  mel = mel.astype(np.float32, copy=False)
  # One pass, no mask: a NaN or Inf anywhere makes the sum non-finite (a float64 sum cannot overflow).
  if not np.isfinite(mel.sum(dtype=np.float64)):
    raise InputError(f"{path}: mel contains {int(np.sum(~np.isfinite(mel)))} NaN or Inf values")
  # A transposed view, not a copy: the shard writer's float16 cast makes the one contiguous copy.
  return mel.T


def mel_file(root, song_id):
  """Where the Melon layout keeps a song's mel: {root}/{id // 1000}/{id}.npy."""
  return os.path.join(root, str(song_id // 1000), f"{song_id}.npy")
