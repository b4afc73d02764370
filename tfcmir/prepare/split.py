"""Train / validation / test split of songs, multi-label stratified on their genres.

The paper splits Melon 80/10/10 "applying a stratified approach to assure a similar distribution of
examples in all the sets for the genres" (iterative stratification, Sechidis et al. 2011). Two passes
of `MultilabelStratifiedShuffleSplit`: train vs the rest, then the rest into validation and test.
"""

from __future__ import annotations

import numpy as np
from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit



def multi_hot(genre_lists, vocabulary):
  """Genre code lists -> (songs, len(vocabulary)) uint8 matrix."""
  index = {code: i for i, code in enumerate(vocabulary)}
  labels = np.zeros((len(genre_lists), len(vocabulary)), np.uint8)
  for row, genres in enumerate(genre_lists):
    labels[row, [index[g] for g in genres if g in index]] = 1
  return labels


def _two_way(labels, second_fraction, seed):
  splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=second_fraction,
                                              random_state=seed)
  first, second = next(splitter.split(np.zeros(len(labels)), labels))
  return np.sort(first), np.sort(second)


def stratified_split(genre_lists, vocabulary, fractions=(0.8, 0.1, 0.1), seed=0):
  """Assigns each song to 'train', 'val' or 'test', stratified on its genres.

  Args:
    genre_lists: per song, its genre codes.
    vocabulary: every genre code (the label columns).
    fractions: train, validation and test shares; they must sum to 1.
    seed: the split depends on it and on the inputs only.

  Returns:
    np.ndarray of str (songs,): the split of each song.
  """
  fractions = np.asarray(fractions, np.float64)
  if fractions.shape != (3,) or np.any(fractions <= 0) or abs(fractions.sum() - 1) > 1e-6:
    raise ValueError(f"split fractions must be three positive numbers summing to 1, got {fractions}")
  if len(genre_lists) < 10:
    raise ValueError(f"need at least 10 songs to split, got {len(genre_lists)}")
  labels = multi_hot(genre_lists, vocabulary)
  # Songs without any genre get a label of their own, so they spread over the splits too.
  labels = np.concatenate([labels, (labels.sum(1) == 0)[:, None].astype(np.uint8)], axis=1)
  train, rest = _two_way(labels, 1 - fractions[0], seed)
  val_part, test_part = _two_way(labels[rest], fractions[2] / (fractions[1] + fractions[2]), seed + 1)
  assignment = np.empty(len(labels), dtype=object)
  assignment[train] = "train"
  assignment[rest[val_part]] = "val"
  assignment[rest[test_part]] = "test"
  return assignment.astype(str)
