"""Apache Beam pipelines for tfcmir's two embarrassingly parallel steps (the `beam` extra).

    python -m tfcmir.prepare --runner=DirectRunner ...   # prepare.py: the per-song work -> shards
    python -m tfcmir.embed --runner=DirectRunner ...     # embed.py: audio files -> embeddings

The same code runs on Dataflow, Flink or Spark with another --runner; no cluster code of our own.
Only this package imports apache_beam, and only its modules other than this one, so the base install
never needs Beam: the entry points call `require_beam` before importing them. (Beam's embeddings load
back through tfcmir/embeddings.py, without Beam.)
"""

import importlib.util
import logging

from tfcmir.errors import InputError

INSTALL_HINT = "pip install -e '.[beam]'"


def require_beam():
  """Raises InputError (one line for the user) if Apache Beam is not installed."""
  try:
    import apache_beam  # noqa: F401
  except ImportError as err:
    raise InputError(f"--runner needs Apache Beam, which is not installed: install it with "
                     f"{INSTALL_HINT}") from err
  # Beam warns that its TFRecord CRC is 'not as fast as it could be' without snappy or google-crc32c;
  # crcmod's C extension (the [tfrecord] extra) checksums 50 MB in 0.2 s, so the warning misleads.
  try:
    fast_crc = importlib.util.find_spec("crcmod._crcfunext") is not None
  except ImportError:
    fast_crc = False
  if fast_crc:
    logging.getLogger("apache_beam.io.tfrecordio").setLevel(logging.ERROR)


def shard_writer(runner, pipeline_args, timeout_s):
  """The Beam shard writer for tfcmir.prepare.steps.prepare(shard_writer=...)."""
  require_beam()
  from tfcmir.beam import options, prepare
  return prepare.BeamShardWriter(options.pipeline_options(runner, pipeline_args), timeout_s)


def run_embed(runner, pipeline_args, paths, export_dir, out, artifact, batch_patches, per_patch, fmt,
              num_shards, timeout_s):
  """Embeds `paths` with a Beam pipeline (tfcmir/beam/embed.py); returns the summary to print."""
  require_beam()
  from tfcmir.beam import embed as beam_embed, options
  manifest = beam_embed.run(paths, export_dir, out, options.pipeline_options(runner, pipeline_args),
                            artifact, batch_patches, per_patch, fmt, num_shards, timeout_s)
  return beam_embed.summary(manifest, out)
