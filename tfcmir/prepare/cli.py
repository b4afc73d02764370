"""`python -m tfcmir.prepare --flagfile=...`: a Melon-layout dataset or your own catalogue -> shards.

The flag-reading side of the step (tfcmir/prepare/steps.py is the flag-free side); `run` takes plain
arguments, and tfcmir.demo calls it so.

Writes to --tfrecord_dir (or --out): split.json, genre_vectors.npy, genre_vocab.json, warp.npz, the
TFRecord shards and manifest.json. See tfcmir/prepare/steps.py for the steps and resumption.
"""

from absl import flags

from tfcmir import flags as tfcmir_flags
from tfcmir.errors import InputError, Problems
from tfcmir.prepare import steps

FLAGS = flags.FLAGS
DEMO_HINT = "for the demo data, run `python -m tfcmir.data.generator --flagfile=configs/demo.flags` first"


def source_from_flags():
  """The source the flags name, as the manifest records it: {'name': 'melon' | 'catalogue', paths...}."""
  source = {"name": FLAGS.source, "melon_dir": FLAGS.melon_dir, "mel_dir": FLAGS.melon_mel_dir,
            "catalogue_audio_dir": FLAGS.catalogue_audio_dir, "catalogue_csv": FLAGS.catalogue_csv,
            "catalogue_playlists": FLAGS.catalogue_playlists}
  return {k: v for k, v in source.items() if v}


def read_corpus(source, problems):
  """A source dict (source_from_flags) -> its Corpus, read by the layout's own reader."""
  if source["name"] == "melon":
    from tfcmir.data import melon
    if not source.get("melon_dir"):
      raise InputError("--melon_dir is required with --source=melon")
    try:
      return melon.read_melon(source["melon_dir"], source.get("mel_dir"), problems)
    except InputError as err:
      if "folder not found" in str(err):
        raise InputError(f"{err} ({DEMO_HINT})") from err
      raise
  from tfcmir.data import catalogue
  missing = [f"--{n}" for n in ("catalogue_audio_dir", "catalogue_csv", "catalogue_playlists")
             if not source.get(n)]
  if missing:
    raise InputError(f"--source=catalogue needs {', '.join(missing)}")
  return catalogue.read_catalogue(source["catalogue_audio_dir"], source["catalogue_csv"],
                                  source["catalogue_playlists"], problems)


def config_from_flags():
  return steps.PrepareConfig(
      seed=FLAGS.seed, fractions=tuple(float(x) for x in FLAGS.split_fractions),
      genre_dim=FLAGS.genre_dim, max_genres=FLAGS.max_genres, w2v_epochs=FLAGS.w2v_epochs,
      cf_dim=FLAGS.cf_dim, warp_epochs=FLAGS.warp_epochs, warp_negatives=FLAGS.warp_negatives,
      warp_learning_rate=FLAGS.warp_learning_rate, cf_backend=FLAGS.cf_backend,
      shard_mb=FLAGS.shard_mb, crop_frames=FLAGS.crop_frames)


def summary(out, manifest):
  c = manifest["counts"]
  s = manifest["seconds"]
  lines = [f"prepared {out} in {s['total']:.1f} s (split {s.get('split', 0):.1f}, word2vec "
           f"{s.get('word2vec', 0):.1f}, warp {s.get('warp', 0):.1f}, shards {s.get('shards', 0):.1f})",
           "| split | songs | with CF vector | shards |", "|---|---|---|---|"]
  for name in ("train", "val", "test"):
    n_shards = sum(1 for sh in manifest["shards"] if sh["split"] == name)
    lines.append(f"| {name} | {c['songs'][name]} | {c['with_cf'][name]} | {n_shards} |")
  w = manifest["warp"]
  lines.append(f"genres: {manifest['genres']['vocabulary']} codes, Word2Vec dim "
               f"{manifest['genres']['dim']}; WARP: {w['songs_in_matrix']} songs x {w['playlists']} "
               f"playlists, {w['memberships']} memberships, dim {w['dim']}")
  level = manifest.get("mel_level", {})
  if level:
    lines.append(f"mel level convention: {level['level']} ({level['how']}"
                 + (f", median frame level {level['statistics']['frame_level_db']:.1f} dB"
                    if level.get("statistics") else "") + ")")
  lines.append(f"mels shorter than the crop (padded when read): {c['short_mel']}")
  problems = manifest["problems"]["counts"]
  lines.append("input problems: " + (", ".join(f"{k} {v}" for k, v in problems.items()) or "none"))
  return "\n".join(lines)


def run(out, source, config, workers=2, overwrite=False, strict=False, flags_used=None,
        shard_writer=None, mel_level="auto"):
  """Prepares `source` (source_from_flags) into `out`; returns the manifest.

  `config`: a steps.PrepareConfig. `shard_writer`: see steps.prepare (None: the local worker pool).
  """
  problems = Problems(strict=strict)
  corpus = read_corpus(source, problems)
  return steps.prepare(corpus, out, config, workers, overwrite, strict, progress=True,
                       flags_used=flags_used, source=source, shard_writer=shard_writer,
                       mel_level_flag=mel_level)


def main(argv):
  out = FLAGS.out or FLAGS.tfrecord_dir
  shard_writer = None
  if FLAGS.runner:  # the per-song work as an Apache Beam pipeline; leftover flags are its options
    from tfcmir import beam
    shard_writer = beam.shard_writer(FLAGS.runner, argv[1:], FLAGS.beam_timeout_s)
  print(summary(out, run(out, source_from_flags(), config_from_flags(), FLAGS.workers, FLAGS.overwrite,
                          FLAGS.strict, tfcmir_flags.resolved(), shard_writer, FLAGS.mel_level)))
