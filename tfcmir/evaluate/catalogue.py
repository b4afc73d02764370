"""Whether training helped on your own music: `python -m tfcmir.evaluate --task=catalogue`.

For a labelled catalogue (tfcmir.data.catalogue's layout) whose CSV also says, in a `split` column,
which songs are held out (`test`) and which are not (`train`, or `val`: see below), with the same
split for every song of a track (`track` column; without one every song is its own track):

  1-NN accuracy   each held-out song takes the label of its nearest training song (cosine);
  linear probe    logistic regression (tfcmir.data.structure.classification_probe) fit on the training
                  songs, accuracy on the held-out songs;
  playlist hit@10 from audio alone: for every playlist P and every held-out track t in P with another
                  track in P, a hit when t's 10 nearest tracks (cosine, among every other track of the
                  catalogue, training or held out) include a track of P other than t; hit@10 is the
                  share of hits over all such (P, t) pairs. Its random level is the expected share
                  when the 10 neighbours are drawn at random: 1 - C(N-1-m, 10) / C(N-1, 10) for a
                  track with m other tracks in P among N tracks, averaged over the pairs.

for every export in --models, and for log-mel statistics (tfcmir.data.structure.mel_statistics: per-band
mean, deviation and mean absolute frame-to-frame change of the mel, from the export's own front end),
the floor that needs no training. Chance rows: the training majority label, and the random hit@10.

A song's label is the code of the first genre of its CSV row (benchmarks/devset.py puts the style
first: `SuperTux|SuperTux forest` -> 'supertux'). A song's vector is the mean of its patch embeddings
(or its mel statistics); a track's, the mean of its songs'. Before any distance every feature is
standardised with the training songs' mean and deviation, so the mel statistics (dB means of -60
beside deviations of 5) are compared on an equal footing, the same for every row. Songs without a
genre, and `val` songs, serve only as playlist tracks (queries if held out, candidates always).

Writes catalogue.md and catalogue.json into --eval_dir.
"""

from __future__ import annotations

import collections
import math
import os

import numpy as np

from tfcmir import inference, safeio
from tfcmir.data import catalogue as catalogue_lib
from tfcmir.data.structure import classification_probe, mel_statistics
from tfcmir.errors import InputError

HIT_K = 10
FLOOR = "log-mel statistics"


class Labelled(collections.namedtuple("Labelled", "paths labels tracks splits playlists")):
  """A catalogue ready to evaluate, one entry per usable song (CSV order by song id).

  paths: audio files. labels: label code or None. tracks: track names. splits: 'train', 'val' or
  'test'. playlists: lists of indices into the songs.
  """


def read_labelled(audio_dir, metadata_csv, playlists):
  """Reads a catalogue with its labels, tracks and split; InputError without labels or a split."""
  columns, rows = catalogue_lib.read_csv(metadata_csv)
  if "split" not in columns:
    raise InputError(f"{metadata_csv}: no 'split' column; the catalogue evaluation needs each song's "
                     "split (train or test), the same for every song of a track")
  corpus = catalogue_lib.read_catalogue(audio_dir, metadata_csv, playlists)
  usable = {s.song_id: s for s in corpus.songs}
  entries = {}
  for number, (lines, cells) in enumerate(rows):
    if len(cells) != len(columns):
      continue  # reported by read_catalogue
    row = dict(zip(columns, cells))
    text = row.get("id", str(number)).strip()
    song_id = int(text) if text.isdigit() else None
    if song_id not in usable or song_id in entries:
      continue
    genres = catalogue_lib.parse_genres(row["genres"])
    split = row["split"].strip().lower()
    if split == "validation":
      split = "val"
    if split not in ("train", "val", "test"):
      raise InputError(f"{metadata_csv}: {lines}: split {row['split']!r} is not train, val or test")
    track = row.get("track", "").strip() or f"song {song_id}"
    entries[song_id] = (usable[song_id].audio_path, genres[0][0] if genres else None, track, split)
  order = sorted(entries)
  labelled = Labelled(paths=[entries[i][0] for i in order], labels=[entries[i][1] for i in order],
                      tracks=[entries[i][2] for i in order], splits=[entries[i][3] for i in order],
                      playlists=[])
  index = {song_id: n for n, song_id in enumerate(order)}
  labelled.playlists.extend([index[s] for s in p if s in index] for p in corpus.playlists)
  _check(labelled, metadata_csv)
  return labelled


def _check(labelled, metadata_csv):
  """InputError when the split is not by track, or a side has no labelled song."""
  split_of = {}
  for track, split in zip(labelled.tracks, labelled.splits):
    if split_of.setdefault(track, split) != split:
      raise InputError(f"{metadata_csv}: track {track!r} has songs in both {split_of[track]} and "
                       f"{split}; split by track, so that no held-out track is heard in training")
  if not any(labelled.labels):
    raise InputError(f"{metadata_csv}: no song has a genre; the catalogue evaluation needs labels")
  for side in ("train", "test"):
    if not any(lab and s == side for lab, s in zip(labelled.labels, labelled.splits)):
      raise InputError(f"{metadata_csv}: no labelled song in the {side} split")


# --- The measures, on any song vectors. ---------------------------------------------------------------

def standardise(vectors, reference):
  """z-scores of `vectors` with the mean and deviation of `reference` (constant columns kept at 0)."""
  mean, std = reference.mean(0), reference.std(0)
  return (vectors - mean) / np.where(std > 0, std, 1.0)


def _unit(x):
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def nearest_neighbour_accuracy(train_x, train_y, test_x, test_y):
  """Share of test rows whose most cosine-similar training row has their label."""
  similarity = _unit(test_x) @ _unit(train_x).T
  predicted = np.asarray(train_y)[np.argmax(similarity, axis=1)]
  return float(np.mean(predicted == np.asarray(test_y)))


def playlist_hits(track_vectors, playlists, held_out, k=HIT_K):
  """hit@k of held-out playlist tracks and its random level (the module docstring defines both).

  Args:
    track_vectors: (tracks, D).
    playlists: lists of track indices.
    held_out: the held-out track indices (the queries).

  Returns:
    (hit@k, random level, number of (playlist, track) pairs); NaNs without a pair.
  """
  n = len(track_vectors)
  unit = _unit(np.asarray(track_vectors, np.float64))
  similarity = unit @ unit.T
  np.fill_diagonal(similarity, -np.inf)
  neighbours = {}
  hits, chance = [], []
  for playlist in playlists:
    members = set(playlist)
    for track in sorted(members & set(held_out)):
      others = len(members) - 1
      if not others:
        continue
      if track not in neighbours:
        neighbours[track] = set(np.argsort(-similarity[track], kind="stable")[:k].tolist())
      hits.append(bool(neighbours[track] & (members - {track})))
      chance.append(1 - _ratio(n - 1 - others, n - 1, min(k, n - 1)))
  if not hits:
    return float("nan"), float("nan"), 0
  return float(np.mean(hits)), float(np.mean(chance)), len(hits)


def _ratio(a, b, k):
  """C(a, k) / C(b, k): the chance that k draws from b items all miss the b - a marked ones."""
  return math.comb(a, k) / math.comb(b, k) if a >= k else 0.0


def score(song_vectors, labelled, seed=0):
  """{'nn_accuracy', 'probe_accuracy', 'hit@10', ...} of one feature per song (rows as `labelled`)."""
  x = np.asarray(song_vectors, np.float64)
  splits, labels = np.asarray(labelled.splits), labelled.labels
  train = np.flatnonzero((splits == "train") & np.array([lab is not None for lab in labels]))
  test = np.flatnonzero((splits == "test") & np.array([lab is not None for lab in labels]))
  x = standardise(x, x[train])
  y = np.asarray([lab or "" for lab in labels])
  probe, majority = classification_probe(x[train], y[train], x[test], y[test], seed=seed)
  names = {name: i for i, name in enumerate(sorted(set(labelled.tracks)))}
  track_of = np.array([names[t] for t in labelled.tracks])
  track_vectors = np.stack([x[track_of == i].mean(0) for i in range(len(names))])
  held_out = sorted({int(track_of[i]) for i in np.flatnonzero(splits == "test")})
  playlists = [sorted({int(track_of[i]) for i in p}) for p in labelled.playlists]
  hit, random_hit, pairs = playlist_hits(track_vectors, playlists, held_out)
  return {"nn_accuracy": nearest_neighbour_accuracy(x[train], y[train], x[test], y[test]),
          "probe_accuracy": probe, "majority_accuracy": majority, f"hit@{HIT_K}": hit,
          f"random_hit@{HIT_K}": random_hit, "playlist_pairs": pairs}


# --- Features: export embeddings and the mel-statistics floor. -----------------------------------------

def export_vectors(encoder, paths):
  """(songs, D): each song's mean patch embedding (tfcmir.inference.embed_files)."""
  rows, per_patch, skipped = inference.embed_files(paths, encoder, progress=False)
  if skipped:
    path, reason = skipped[0]
    raise InputError(f"{path}: {reason} ({len(skipped)} unreadable files in all)")
  by_path = {row["path"]: patches.mean(0) for row, patches in zip(rows, per_patch)}
  return np.stack([by_path[p] for p in paths])


def mel_vectors(paths, frontend):
  """(songs, 144): mel_statistics of each song's mel, computed as the export's front end does."""
  from tfcmir import audio
  vectors = []
  for path in paths:
    try:
      patches, _, _ = inference.file_patches(path, **frontend)
    except audio.AudioError as err:
      raise InputError(str(err)) from err
    vectors.append(mel_statistics(patches.reshape(-1, patches.shape[-1])))
  return np.stack(vectors)


def evaluate_catalogue(encoders, audio_dir, metadata_csv, playlists, out_dir, seed=0):
  """Scores every encoder ({row label: inference.Encoder}) and the floor; writes the report.

  Without encoders only the floor is scored, with the front end's default level. Returns the
  Markdown table.
  """
  from tfcmir import audio
  labelled = read_labelled(audio_dir, metadata_csv, playlists)
  results = {}
  for label, encoder in encoders.items():
    results[label] = score(export_vectors(encoder, labelled.paths), labelled, seed)
  frontends = {}
  for encoder in encoders.values():
    frontends.setdefault(tuple(sorted(encoder.frontend.items())), encoder.frontend)
  if not frontends:
    frontends[()] = {"level": audio.DEFAULT_LEVEL}
  for frontend in frontends.values():
    name = FLOOR if len(frontends) == 1 else f"{FLOOR} (level {frontend.get('level')})"
    results[name] = score(mel_vectors(labelled.paths, frontend), labelled, seed)
  counts = _counts(labelled)
  table = catalogue_table(results, counts)
  os.makedirs(out_dir, exist_ok=True)
  safeio.write_text(os.path.join(out_dir, "catalogue.md"), table + "\n")
  safeio.write_json(os.path.join(out_dir, "catalogue.json"), {"counts": counts, "results": results})
  return table


def _counts(labelled):
  counts = {side: {"songs": labelled.splits.count(side),
                   "tracks": len({t for t, s in zip(labelled.tracks, labelled.splits) if s == side})}
            for side in ("train", "val", "test")}
  counts["labels"] = len({lab for lab in labelled.labels if lab})
  counts["playlists"] = len(labelled.playlists)
  return counts


def catalogue_table(results, counts):
  """Markdown: one row per model and the floor, then chance; a line of counts above."""
  hit = f"hit@{HIT_K}"
  lines = [f"held out: {counts['test']['songs']} songs of {counts['test']['tracks']} tracks; training: "
           f"{counts['train']['songs']} songs of {counts['train']['tracks']} tracks; {counts['labels']} "
           f"labels; {counts['playlists']} playlists", "",
           f"| Model | 1-NN accuracy | linear probe accuracy | playlist {hit} |", "|---|---|---|---|"]
  for model, r in results.items():
    lines.append(f"| {model} | {r['nn_accuracy']:.3f} | {r['probe_accuracy']:.3f} | {r[hit]:.3f} |")
  first = next(iter(results.values()))
  lines.append(f"| chance (majority label; random {hit}) | {first['majority_accuracy']:.3f} | "
               f"{first['majority_accuracy']:.3f} | {first[f'random_{hit}']:.3f} |")
  lines.append(f"\n{hit} over {first['playlist_pairs']} (playlist, held-out track) pairs.")
  return "\n".join(lines)
