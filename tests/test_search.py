"""Search: index, similar, genre, continue on tiny untrained exports, generated tones and real music."""

import os

import numpy as np
import pytest
import soundfile as sf

from helpers import REAL_AUDIO, REAL_FILES, run_essentia, run_module
from tfcmir import safeio, search
from tfcmir.data.catalogue import read_m3u
from tfcmir.errors import InputError
from tfcmir.search import evaluation, store

CODES = ["GN0100", "GN0200", "GN1000", "GN1002"]
NAMES = {"GN0100": "Blues", "GN0200": "Classical", "GN1000": "Rock", "GN1002": "indierock"}


def _export(out, mode, seed):
  """An export folder as tfcmir.export writes it (manifest with checksums, genre_vocab.json), of an
  untrained small model: enough for ranks, exclusions and errors."""
  import keras
  import tensorflow as tf

  from tfcmir import export
  from tfcmir.model import checkpoint as checkpoint_lib
  from tfcmir.model import contrastive

  keras.utils.set_random_seed(seed)
  config = contrastive.model_config(mode, (len(CODES) + 1, 16), 32, channels=[8, 8, 16, 16, 16, 16, 32],
                                    hidden_dim=64, embedding_dim=32)
  table = np.random.default_rng(seed).normal(size=(len(CODES) + 1, 16)).astype(np.float32)
  table[0] = 0
  model = contrastive.build_model(config, table)
  model.build_from_batch(checkpoint_lib.dummy_batch(config))
  tower = export.AudioTower(model)
  signatures = {"serving_default": tower.serve_mel}
  if tower.genre_encoder is not None:
    signatures["genres"] = tower.genres
  tf.saved_model.save(tower, os.path.join(out, "saved_model", "1"), signatures=signatures)
  safeio.write_json(os.path.join(out, "genre_vocab.json"),
                    {"pad_row": 0, "codes": {c: i + 1 for i, c in enumerate(CODES)}})
  files = {os.path.relpath(os.path.join(d, f), out): safeio.sha256_file(os.path.join(d, f))
           for d, _, names in os.walk(out) for f in names}
  safeio.write_json(os.path.join(out, "export_manifest.json"),
                    {"version": 1, "name": os.path.basename(out), "mode": mode,
                     "signatures": sorted(signatures), "files": files})
  return out


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
  root = tmp_path_factory.mktemp("exports")
  return _export(str(root / "contr_cf_g"), "contr_cf_g", 0), _export(str(root / "bline_cf"), "bline_cf", 1)


def _tone(path, freq, seconds=4.5, seed=0):
  rng = np.random.default_rng(seed)
  t = np.arange(int(16000 * seconds)) / 16000
  wave = 0.3 * np.sin(2 * np.pi * freq * t) + 0.02 * rng.standard_normal(len(t))
  sf.write(path, wave.astype(np.float32), 16000)
  return path


@pytest.fixture(scope="module")
def music(tmp_path_factory):
  folder = tmp_path_factory.mktemp("music")
  return [_tone(str(folder / f"tone{f}.wav"), f, seed=i) for i, f in enumerate((110, 220, 440, 880, 1760))]


@pytest.fixture(scope="module")
def indexed(exports, music, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("index") / "music.index")
  summary = search.index(exports[0], music, out, progress=False)
  assert summary == {"tracks": 5, "added": 5, "updated": 0, "unchanged": 0, "skipped": []}
  return out


def _assert_ranked(hits, k):
  assert [h.rank for h in hits] == list(range(1, len(hits) + 1)) and len(hits) <= k
  scores = [h.score for h in hits]
  assert scores == sorted(scores, reverse=True) and all(-1.001 <= s <= 1.001 for s in scores)


def test_similar_ranks_by_cosine_without_the_query(indexed, music, tmp_path):
  hits = search.similar(indexed, music[2], k=3)
  _assert_ranked(hits, 3)
  assert len(hits) == 3 and music[2] not in [h.path for h in hits]
  # The scores are the cosines of the stored unit vectors.
  found = store.read(indexed)
  expected = found.vectors @ found.vectors[found.row_of(music[2])]
  assert hits[0].score == pytest.approx(np.sort(np.delete(expected, found.row_of(music[2])))[-1], abs=1e-5)
  assert len(search.similar(indexed, music[0], k=10)) == 4  # every other track, no more
  assert search.similar(found, music[2], k=3) == hits  # an index read once (notebooks)
  # A file outside the index is embedded on the fly; nothing is excluded.
  outside = _tone(str(tmp_path / "outside.wav"), 300)
  assert len(search.similar(indexed, outside, k=10)) == 5
  with pytest.raises(InputError, match="neither an indexed track"):
    search.similar(indexed, str(tmp_path / "nothing.wav"))


def test_reindexing_skips_unchanged_files_and_adds_new_ones(exports, music, tmp_path):
  out = str(tmp_path / "index")
  search.index(exports[0], music[:3], out, progress=False)
  before = store.read(out)
  new = _tone(str(tmp_path / "new.wav"), 330)
  summary = search.index(exports[0], [*music[:3], new], out, progress=False)
  assert (summary["tracks"], summary["added"], summary["unchanged"]) == (4, 1, 3)
  after = store.read(out)
  np.testing.assert_array_equal(after.vectors[:3], before.vectors)
  _tone(new, 660)  # changed content, size the same: the mtime tells
  os.utime(new, ns=(os.stat(new).st_atime_ns, os.stat(new).st_mtime_ns + 10**9))
  summary = search.index(exports[0], [*music[:3], new], out, progress=False)
  assert (summary["tracks"], summary["updated"], summary["unchanged"]) == (4, 1, 3)
  assert not np.allclose(store.read(out).vectors[3], after.vectors[3])
  assert search.index(exports[0], music[:3], out, progress=False)["unchanged"] == 3
  assert not [n for n in os.listdir(tmp_path) if ".partial-" in n or ".old-" in n]


def test_an_index_from_another_export_is_refused(exports, music, indexed):
  with pytest.raises(InputError, match=r"made with the export contr_cf_g .*not .*bline_cf"):
    search.index(exports[1], music[:1], indexed, progress=False)
  with pytest.raises(InputError, match="made with the export contr_cf_g"):
    search.similar(indexed, music[0], export_dir=exports[1])
  with pytest.raises(InputError, match="not a search index"):
    search.similar(os.path.dirname(indexed), music[0])
  with pytest.raises(InputError, match="holds files tfcmir did not write"):
    search.index(exports[0], music[:1], os.path.dirname(music[0]), progress=False)


def test_a_damaged_index_is_named(indexed, music, tmp_path):
  import shutil
  copy = str(tmp_path / "copy.index")
  shutil.copytree(indexed, copy)
  with open(os.path.join(copy, store.FAISS_FILE), "r+b") as f:
    f.truncate(100)
  with pytest.raises(InputError, match=f"^{copy}: damaged search index"):
    search.similar(copy, music[0])


def test_real_music_is_indexed_as_essentia_mels_through_the_saved_model_give_it(exports, tmp_path):
  """Six real excerpts (Ogg, FLAC, MP3, WAV; mono and stereo; 16 to 48 kHz; one shorter than a patch)
  indexed and searched. Reference computed another way: Essentia's mels of the same files (in its own
  process), cut into patches here, through the export's SavedModel loaded directly."""
  import tensorflow as tf

  files = [os.path.join(REAL_AUDIO, f) for f in REAL_FILES]
  out = str(tmp_path / "real.index")
  assert search.index(exports[0], files, out, progress=False)["tracks"] == len(files) == 6
  run_essentia(*[(f, str(tmp_path / f"{i}.npy")) for i, f in enumerate(files)])
  serve = tf.saved_model.load(os.path.join(exports[0], "saved_model", "1")).signatures["serving_default"]
  reference = {}
  for i, path in enumerate(files):
    mel = np.load(tmp_path / f"{i}.npy").astype(np.float32)
    whole = len(mel) // 256 * 256
    if not whole:
      continue  # the 3-s excerpt: padded to one patch, which Essentia's mel alone does not say how
    projections = serve(mel=tf.constant(mel[:whole].reshape(-1, 256, 48)))["projection"].numpy()
    unit = projections / np.linalg.norm(projections, axis=1, keepdims=True)
    reference[path] = unit.mean(0) / np.linalg.norm(unit.mean(0))
  assert len(reference) == 5
  found = store.read(out)
  for path, vector in reference.items():  # measured >= 0.99997; Essentia's authors-level mels: 0.987
    assert float(found.vectors[found.row_of(path)] @ vector) > 0.9999, path
  # The search scores are those cosines: for each query, its hits agree with the reference's.
  for query, vector in reference.items():
    hits = search.similar(out, query, k=5)
    assert len(hits) == 5 and query not in [h.path for h in hits]
    for hit in hits:
      if hit.path in reference:
        assert hit.score == pytest.approx(float(reference[hit.path] @ vector), abs=2e-3), (query, hit.path)


def test_genre_words_match_codes_and_names(indexed, exports, tmp_path):
  names = str(tmp_path / "genre_gn_all.json")
  safeio.write_json(names, NAMES)
  hits = search.genre(indexed, "rock|Indie Rock", k=3, names=names)
  _assert_ranked(hits, 3)
  assert len(hits) == 3
  assert [h.path for h in search.genre(indexed, "gn1000|GN1002", k=3)] == [h.path for h in hits]
  assert search.match_genres("rock| indie-rock |Rock", {c: i + 1 for i, c in enumerate(CODES)},
                             NAMES) == [3, 4]


def test_unknown_words_name_the_closest_known_ones(indexed, tmp_path):
  with pytest.raises(InputError, match=r"unknown genre 'rokc'; closest known: Rock\b"):
    search.genre(indexed, "rokc", names=NAMES)
  with pytest.raises(InputError, match=r"unknown genre 'rock'.*codes only: --genre_names"):
    search.genre(indexed, "rock")
  with pytest.raises(InputError, match="no genre words"):
    search.genre(indexed, " | ")


def test_a_baseline_export_has_no_shared_space(exports, music, tmp_path):
  out = str(tmp_path / "bline.index")
  search.index(exports[1], music[:3], out, progress=False)
  with pytest.raises(InputError, match=r"bline_cf: a baseline export \(bline_cf\) has no shared space"):
    search.genre(out, "GN1000")
  assert len(search.similar(out, music[0], k=5)) == 2  # similar works without the genre tower


def test_continue_excludes_the_seeds_and_embeds_unindexed_ones(indexed, music, tmp_path):
  outside = _tone(str(tmp_path / "new seed.wav"), 500)
  playlist = tmp_path / "road trip.m3u"
  playlist.write_text(f"#EXTM3U\n#EXTINF:1,a\n{music[0]}\n{os.path.basename(outside)}\n"
                      f"file://{music[1]}\n")
  hits = search.continue_playlist(indexed, str(playlist), k=2)
  _assert_ranked(hits, 2)
  assert len(hits) == 2 and not {music[0], music[1]} & {h.path for h in hits}
  assert all(0 < h.score <= 1 for h in hits)  # the share of the 3 seeds that retrieved the track
  assert len(search.continue_playlist(indexed, [music[0]], k=10)) == 4


def _cli(monkeypatch, *args):
  """cli.main on its own parsed copy of the flags (the global FLAGS stays unparsed for other tests)."""
  import copy

  from absl import flags

  from tfcmir.search import cli
  values = copy.deepcopy(flags.FLAGS)
  argv = values(["tfcmir.search", *args])
  monkeypatch.setattr(cli, "FLAGS", values)
  cli.main(argv)


def test_cli_writes_csv(indexed, music, monkeypatch, capsys):
  _cli(monkeypatch, "similar", f"--index={indexed}", "--k=2", music[0])
  lines = capsys.readouterr().out.splitlines()
  assert lines[0] == "rank,path,score" and [line.split(",")[0] for line in lines[1:]] == ["1", "2"]
  assert float(lines[1].rsplit(",", 1)[1]) >= float(lines[2].rsplit(",", 1)[1])
  with pytest.raises(InputError, match="first argument must be one of index, similar, genre, continue"):
    _cli(monkeypatch, "simliar", f"--index={indexed}", music[0])


def test_cli_writes_a_readable_m3u(indexed, music, tmp_path, monkeypatch, capsys):
  playlist = tmp_path / "seeds.m3u8"
  playlist.write_text(f"{music[0]}\n")
  m3u = str(tmp_path / "next.m3u8")
  _cli(monkeypatch, "continue", f"--index={indexed}", "--k=3", f"--m3u={m3u}", str(playlist))
  assert capsys.readouterr().out == f"{m3u}: 3 tracks\n"
  listed = [text for _, text in read_m3u(m3u)]
  assert len(listed) == 3 and all(os.path.isfile(p) for p in listed) and music[0] not in listed
  assert open(m3u, encoding="utf-8").readline() == "#EXTM3U\n"


@pytest.mark.slow
def test_the_command_answers_and_errors_in_one_line(indexed, music):
  result = run_module("tfcmir.search", "similar", f"--index={indexed}", "--k=2", music[0], timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.splitlines()[0] == "rank,path,score" and len(result.stdout.splitlines()) == 3
  result = run_module("tfcmir.search", "genre", f"--index={indexed}", "rokc", timeout=120)
  assert result.returncode == 1 and "Traceback" not in result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and "unknown genre 'rokc'" in last


def test_search_table_has_genre_rows_and_a_similar_only_baseline(exports, tmp_path):
  gtzan = tmp_path / "gtzan"
  lines = []
  for g, genre in enumerate(("blues", "classical", "rock", "metal")):
    (gtzan / genre).mkdir(parents=True)
    for i in range(3):
      _tone(str(gtzan / genre / f"{genre}.0000{i}.wav"), 100 * (g + 1) * (i + 2), seconds=4.2)
      lines.append(f"{genre}/{genre}.0000{i}.wav")
  for start, name in enumerate(("train", "valid", "test")):
    (gtzan / f"{name}_filtered.txt").write_text("\n".join(lines[start::3]))
  table = evaluation.search_table(exports, str(gtzan), NAMES, k=2)
  rows = [line for line in table.splitlines() if line.startswith("| ")]
  assert rows[0].startswith("| export | blues | classical | metal | rock |")
  contr, bline, chance = rows[1].split(" | "), rows[2].split(" | "), rows[3].split(" | ")
  assert contr[3] == "not in the vocabulary" and all(0 <= float(contr[i]) <= 1 for i in (1, 2, 4))
  assert bline[1] == "-" and "no shared space: similar only" in rows[2]
  assert 0 <= float(bline[-1].strip(" |")) <= 1 and chance[1] == "0.25"
