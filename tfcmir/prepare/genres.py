"""Genre word vectors: Word2Vec trained on genre co-occurrence (paper section 2.1).

Sentences are each song's genres and each playlist's genres (the set of its songs' genres), as the
authors' code does with gensim (CBOW, `window` = the longest sentence, `min_count` = 1). Genres that
appear with the same companions end up close (sibling sub-genres of one main genre, genres that share
playlists); a main code and its own sub-genres, which predict each other, do not. The table saved for
the genre encoder has row 0 reserved for padding (zeros) and one row per genre code of the vocabulary.
"""

from __future__ import annotations

import dataclasses
import os
import zlib

import numpy as np
from gensim.models import Word2Vec

from tfcmir import safeio, shards

PAD = shards.GENRE_PAD


def _stable_hash(text):
  # gensim seeds each word's initial vector with hash(word + seed); Python's str hash changes every
  # process (PYTHONHASHSEED), which would make the vectors differ run to run.
  return zlib.crc32(text.encode("utf-8"))


@dataclasses.dataclass
class GenreVectors:
  """The genre embedding table the genre encoder starts from.

  Attributes:
    codes: genre codes, row i + 1 of `table` is codes[i].
    table: float32 (len(codes) + 1, dim); row 0 is padding (zeros); codes never seen are zeros too.
  """
  codes: list
  table: np.ndarray

  @property
  def index(self):
    return {code: row + 1 for row, code in enumerate(self.codes)}

  def ids(self, genres, length):
    """Genre codes -> int64 (length,) rows of the table, in the given order, 0-padded, truncated."""
    index = self.index
    rows = [index[g] for g in genres if g in index][:length]
    return np.array(rows + [PAD] * (length - len(rows)), np.int64)

  def save(self, folder):
    safeio.atomic_write(os.path.join(folder, shards.GENRE_VECTORS), lambda f: np.save(f, self.table))
    safeio.write_json(os.path.join(folder, shards.GENRE_VOCAB),
                      {"pad_row": PAD, "codes": {c: i + 1 for i, c in enumerate(self.codes)}},
                      indent=0, ensure_ascii=False)

  @classmethod
  def load(cls, folder):
    return cls(*shards.genre_table(folder))


def train_genre_vectors(song_genres, playlist_genres, vocabulary, dim=200, epochs=5, seed=0):
  """Trains Word2Vec on genre sentences.

  Args:
    song_genres: per song, its genre codes.
    playlist_genres: per playlist, the genre codes of its songs (a set; order is irrelevant).
    vocabulary: every genre code, in table order.
    dim: vector size F_w (paper: 200).
    epochs: passes over the sentences (gensim's default, 5).
    seed: with one worker thread, the vectors depend on the seed and inputs only.

  Returns:
    GenreVectors.
  """
  sentences = [list(s) for s in song_genres if s] + [sorted(set(p)) for p in playlist_genres if p]
  codes = list(vocabulary)
  table = np.zeros((len(codes) + 1, dim), np.float32)
  if not sentences:
    return GenreVectors(codes, table)
  # sample=0 departs from the authors' gensim default (1e-3): with a vocabulary of a few hundred genre
  # codes every code counts as 'frequent', and downsampling drops most of the corpus; on the demo data
  # all vectors then end at cosine 0.999 of each other, while with sample=0 sibling sub-genres sit at
  # 0.84 and unrelated ones at 0.05.
  model = Word2Vec(sentences, vector_size=dim, window=max(len(s) for s in sentences), min_count=1,
                   sample=0, workers=1, seed=seed, epochs=epochs, hashfxn=_stable_hash)
  for row, code in enumerate(codes):
    if code in model.wv:
      table[row + 1] = model.wv[code]
  return GenreVectors(codes, table)
