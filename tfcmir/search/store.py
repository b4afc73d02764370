"""The format of a search index folder (`python -m tfcmir.search index --index=DIR`):

    DIR/search_index.json   {"written_by": "tfcmir", "format_version": 1,
                             "export": {path, name, mode, artifact, fingerprint, projection_dim},
                             "tracks": [{path, size, mtime_ns, patches, padded}, ...]}
    DIR/tracks.faiss        a faiss IndexFlatIP (faiss.write_index) of the tracks' unit-length
                            projections, row i = tracks[i]

A track's vector is the mean of its patches' unit-length projections (the contrastive space, where
the genre tower projects too), scaled to unit length: inner product = cosine. Paths are absolute, so
answers and M3U files work from any folder. The folder is replaced whole (safeio.replace_folder): a
killed run leaves the old index or the new one.

IndexFlatIP scores every track per query: 1M tracks of 128 dims is 0.5 GB and one query a 128M-flop
scan, ~25-40 ms on 2 cores (benchmarks/search.py). An inverted file (IndexIVFFlat) pays beyond that,
or where many queries run at once (a whole playlist's seeds), at some recall cost.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import unicodedata

import faiss
import numpy as np

from tfcmir import export_format, safeio
from tfcmir.errors import InputError

MANIFEST = "search_index.json"
FAISS_FILE = "tracks.faiss"
FORMAT_VERSION = 1


def export_identity(export_dir, manifest, artifact):
  """What an index records of the export that made its vectors; two exports differ in `fingerprint`.

  The fingerprint is the sha256 of the checksums (export_manifest.json's) of the files `artifact`
  loads; for a hand-made export without checksums, of the files themselves.
  """
  checksums = manifest.get("files") or {}
  files = export_format.artifact_files(manifest, artifact)
  if not files:  # no checksums: every file of the SavedModel
    top = os.path.join(export_dir, "saved_model", str(manifest["version"]))
    files = sorted(os.path.relpath(os.path.join(d, f), export_dir).replace(os.sep, "/")
                   for d, _, names in os.walk(top) for f in names)
  lines = [f"{rel} {checksums.get(rel) or safeio.sha256_file(os.path.join(export_dir, rel))}\n"
           for rel in sorted(files)]
  return {"path": os.path.abspath(export_dir),
          "name": manifest.get("name") or os.path.basename(os.path.normpath(export_dir)),
          "mode": manifest.get("mode"), "artifact": artifact,
          "fingerprint": safeio.sha256_chunks(lines)}


def unit(vectors):
  """Rows scaled to unit length (zero rows stay zero), float32."""
  vectors = np.array(vectors, np.float32, ndmin=2)
  norms = np.linalg.norm(vectors, axis=1, keepdims=True)
  return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def track_vector(patch_projections):
  """(patches, D) projections -> (D,) unit vector: the mean of the unit patch projections, rescaled.

  Patches are scaled to unit length first: the contrastive loss compares directions only, so a patch
  whose projection happens to be long must not outvote the others.
  """
  return unit(unit(patch_projections).mean(0, keepdims=True))[0]


def _spelling(path):
  # The paths are stored absolute; only NFC and case (where the OS ignores it) vary. No realpath
  # here: one system call per track made loading a 1M-track index take 30 s.
  return unicodedata.normalize("NFC", os.path.normcase(os.path.abspath(path)))


@dataclasses.dataclass
class SearchIndex:
  """An index in memory: the export it was made with, the tracks, their unit vectors (n, D).

  `flat`: the faiss IndexFlatIP holding `vectors` (store.read passes the one it loaded, `vectors`
  then being a view of its rows); made from `vectors` when None.
  """
  export: dict
  tracks: list
  vectors: np.ndarray
  flat: object = None
  folder: str = None  # where it was read from, for messages

  def __post_init__(self):
    if self.flat is None:
      self.flat = faiss.IndexFlatIP(self.vectors.shape[1])
      self.flat.add(np.ascontiguousarray(self.vectors, np.float32))
    self._rows = None

  def row_of(self, path):
    """The row of an indexed file, or None; a path through a symbolic link finds its target."""
    if self._rows is None:
      self._rows = {_spelling(t["path"]): i for i, t in enumerate(self.tracks)}
    row = self._rows.get(_spelling(path))
    return row if row is not None else self._rows.get(_spelling(os.path.realpath(path)))

  def search(self, queries, k, exclude=(), threads=None):
    """(q, D) unit queries -> (q, k) rows and cosines, nearest first, rows in `exclude` left out
    (-1 and -inf pad when fewer tracks remain).

    `threads`: faiss's OpenMP threads; default, one for a single query (one core scans 1M tracks in
    ~40 ms; on cores other processes keep busy, two threads waiting on each other took 5x as long:
    benchmarks/search.py), faiss's own count for a batch.
    """
    exclude = set(int(r) for r in exclude)
    wanted = min(k + len(exclude), len(self.tracks))
    queries = np.ascontiguousarray(queries, np.float32)
    if threads is None and len(queries) > 1:
      scores, rows = self.flat.search(queries, wanted)
    else:
      before = faiss.omp_get_max_threads()
      faiss.omp_set_num_threads(threads or 1)
      try:
        scores, rows = self.flat.search(queries, wanted)
      finally:
        faiss.omp_set_num_threads(before)
    out_rows = np.full((len(rows), k), -1, np.int64)
    out_scores = np.full((len(rows), k), -np.inf, np.float32)
    for q in range(len(rows)):
      keep = [j for j, r in enumerate(rows[q]) if r >= 0 and int(r) not in exclude][:k]
      out_rows[q, :len(keep)] = rows[q][keep]
      out_scores[q, :len(keep)] = scores[q][keep]
    return out_rows, out_scores


def read(folder):
  """The SearchIndex stored in `folder`; InputError if it is not one or is damaged."""
  path = os.path.join(folder, MANIFEST)
  if not os.path.isfile(path):
    raise InputError(f"{folder}: not a search index (no {MANIFEST}); build one with "
                     "`python -m tfcmir.search index --embed_model=EXPORT --index=DIR AUDIO...`")
  try:
    meta = safeio.read_json(path)
    flat = faiss.read_index(os.path.join(folder, FAISS_FILE))  # 0.7 s at 1M x 128; 8 s by bytes
    vectors = faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * flat.d).reshape(flat.ntotal, flat.d)
    tracks, export = meta["tracks"], meta["export"]
  except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
    raise InputError(f"{folder}: damaged search index ({err}); build it again") from err
  if meta.get("format_version") != FORMAT_VERSION or len(tracks) != len(vectors):
    raise InputError(f"{folder}: damaged search index (format {meta.get('format_version')}, "
                     f"{len(tracks)} tracks for {len(vectors)} vectors); build it again")
  return SearchIndex(export, tracks, vectors, flat, folder)


def write(folder, index):
  """Writes `index` to `folder`, replacing the old index whole."""
  safeio.check_ours(folder, (MANIFEST,), "search index (--index)")
  partial = safeio.partial_folder(folder)
  try:
    with safeio.atomic_path(os.path.join(partial, FAISS_FILE)) as temporary:
      faiss.write_index(index.flat, temporary)
    safeio.write_json(os.path.join(partial, MANIFEST),  # one line: 1M tracks are 125 MB of JSON
                      {"written_by": safeio.WRITTEN_BY, "format_version": FORMAT_VERSION,
                       "export": index.export, "tracks": index.tracks}, indent=None,
                      ensure_ascii=False)
    safeio.replace_folder(partial, folder, {MANIFEST, FAISS_FILE})
  except BaseException:
    shutil.rmtree(partial, ignore_errors=True)
    raise


def check_same_export(folder, index, identity):
  """InputError, one line, when the index was made with another export (or artifact) than `identity`."""
  made = index.export
  if made["fingerprint"] != identity["fingerprint"]:
    raise InputError(
        f"{folder}: made with the export {made['name']} ({made['artifact']}, fingerprint "
        f"{made['fingerprint'][:12]}), not {identity['path']} ({identity['artifact']}, "
        f"{identity['fingerprint'][:12]}); its vectors are in another space: use that export, or "
        "index into a new folder")
