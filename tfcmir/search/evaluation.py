"""How well search finds genres: the main job's "search" table, on GTZAN-layout tracks.

For each export, every track of the GTZAN folder (all three split files) is embedded into the
projection space, then
  * genre -> audio: for each GTZAN genre, `search genre` with the genre's name; precision@k is the
    share of the k answers that carry that genre; chance is the genre's share of the tracks;
  * audio -> audio: each track's k nearest other tracks (`search similar`, the query excluded);
    precision@k is the share of the same genre; chance is (tracks of its genre - 1) / (tracks - 1).
A baseline export has no genre tower: its genre cells say so and only audio -> audio is measured.

The GTZAN genre names are matched to the export's genre vocabulary through `genre_names` (a
{code: name} such as the demo's melon/genre_gn_all.json, whose main genres are the ten GTZAN
genres, "Blues" ... "Rock"). Real Melon's names are Korean and its genres not GTZAN's: there the
words need a hand-made map to codes, and a genre without one is shown as "not in the vocabulary".

In the main job (tfcmir/demo.py), after the exports:

    search_table(exports, os.path.join(out, "gtzan"), os.path.join(out, "melon", "genre_gn_all.json"))

It embeds the 200 demo GTZAN tracks once per export (~6 s each for the demo models on 2 cores).
"""

from __future__ import annotations

import collections
import os

import numpy as np

from tfcmir import inference, search
from tfcmir.errors import InputError
from tfcmir.evaluate.gtzan import read_gtzan
from tfcmir.search import store


def gtzan_tracks(gtzan_dir):
  """[(absolute path, genre)] of every track the three split files list, in their order."""
  seen = {}
  for tracks in read_gtzan(gtzan_dir).values():
    for rel, label in tracks:
      seen.setdefault(os.path.abspath(os.path.join(gtzan_dir, rel)), label)
  return list(seen.items())


def precisions(export_dir, tracks, genre_names=None, k=10, artifact="saved_model", progress=False):
  """{"audio": mean audio->audio precision@k, "audio_chance", "genres": {genre: precision@k or a
  reason string}, "chance": {genre: share}, "shared_space": bool, "tracks": n embedded}."""
  paths = [p for p, _ in tracks]
  rows, vectors, skipped = search.embed(paths, search.projection_encoder(export_dir, artifact),
                                        progress)
  inference.check_some_read(paths, skipped)
  label_of = dict(tracks)
  labels = np.array([label_of[r["path"]] for r in rows])
  found = store.SearchIndex({}, [{"path": r["path"]} for r in rows], vectors)
  counts = collections.Counter(labels.tolist())
  n = len(labels)
  audio = []
  for i in range(n):
    top = found.search(vectors[i:i + 1], k, exclude=(i,))[0][0]
    audio.append(np.mean(labels[top[top >= 0]] == labels[i]))
  result = {"audio": float(np.mean(audio)), "tracks": n,
            "audio_chance": float(np.mean([(counts[g] - 1) / (n - 1) for g in labels])),
            "chance": {g: counts[g] / n for g in sorted(counts)}, "genres": {}}
  try:
    tower = search.GenreTower(export_dir, genre_names)
  except InputError as err:
    if "no shared space" not in str(err):
      raise
    result["shared_space"] = False
    return result
  result["shared_space"] = True
  for g in sorted(counts):
    try:
      query = tower.query(g)
    except InputError:
      result["genres"][g] = "not in the vocabulary"
      continue
    top = found.search(query[None], k)[0][0]
    result["genres"][g] = float(np.mean(labels[top[top >= 0]] == g))
  return result


def search_table(exports, gtzan_dir, genre_names=None, k=10, artifact="saved_model", progress=False):
  """A Markdown table per export (rows) and GTZAN genre (columns) of genre->audio precision@k, then
  the mean over genres, audio->audio precision@k and chance."""
  tracks = gtzan_tracks(gtzan_dir)
  results = {e: precisions(e, tracks, genre_names, k, artifact, progress) for e in exports}
  genres = sorted({g for _, g in tracks})
  first = next(iter(results.values()))
  header = (["export", *genres, f"genre->audio P@{k} (mean)", "genres above chance",
             f"audio->audio P@{k}"])
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for export_dir, r in results.items():
    name = os.path.basename(os.path.normpath(export_dir))
    if not r["shared_space"]:
      cells = ["-"] * len(genres) + ["no shared space: similar only", ""]
    else:
      values = [r["genres"][g] for g in genres]
      numbers = [(v, r["chance"][g]) for v, g in zip(values, genres) if not isinstance(v, str)]
      cells = [v if isinstance(v, str) else f"{v:.2f}" for v in values]
      cells += [f"{np.mean([v for v, _ in numbers]):.2f}" if numbers else "",
                f"{sum(v > 2 * c for v, c in numbers)}/{len(genres)}"]
    lines.append("| " + " | ".join([name, *cells, f"{r['audio']:.2f}"]) + " |")
  lines.append("| chance | " + " | ".join(f"{first['chance'][g]:.2f}" for g in genres)
               + f" | {np.mean(list(first['chance'].values())):.2f} | | {first['audio_chance']:.2f} |")
  note = (f"\n{first['tracks']} tracks of {gtzan_dir}; \"above chance\": precision@{k} more than "
          "twice the genre's share of the tracks.")
  return "\n".join(lines) + "\n" + note
