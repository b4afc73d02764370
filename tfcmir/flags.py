"""Every flag of every tfcmir command, in one place, with the paper's values as defaults.

Only the command-line entry points (`python -m tfcmir.<step>`) read FLAGS; everything below them takes
plain arguments. Each command imports this module, so one flagfile (configs/*.flags) serves them all:
`python -m tfcmir.<step> --flagfile=configs/demo.flags`. absl rejects unknown flags and values outside
the bounds below with a message naming the flag.

Sources of the defaults: the paper (Ferraro et al., IEEE SPL 2021, sections 2-3) unless a comment
says otherwise; ../shared/REFERENCE.md section 1 gathers them.
"""

import math
import sys

from absl import flags

# --- Audio front end (Melon mels: Essentia, 16 kHz, frame 512, hop 256, 48 slaney bands, dB). -------
# Not flags: Melon ships its mels made this way, and every export bakes the front end in, so its
# constants live once, in tfcmir/audio.py (SAMPLE_RATE, FRAME_SIZE, HOP_SIZE, NUM_BANDS, PATCH_FRAMES).
flags.DEFINE_enum("mel_level", "auto", ["auto", "essentia", "authors"],
                  "Prepare: the level convention of the corpus's mels: Essentia's Windowing "
                  "normalized=True (essentia) or the authors' normalized=False (authors), 84.25 dB "
                  "apart; auto detects it from the mels (tfcmir/levels.py), or, for a catalogue of "
                  "audio, uses essentia. Every later step reads it from the data.")
flags.DEFINE_integer("crop_frames", 256, "Frames per training crop and embedding patch (T_a).",
                     lower_bound=1)

# --- Genre and playlist inputs. -----------------------------------------------------------------------
flags.DEFINE_integer("genre_dim", 200, "Word2Vec genre vector size (F_w; 128 in the authors' code).",
                     lower_bound=1)
flags.DEFINE_integer("max_genres", 10, "Genres per song fed to the genre encoder (T_w).", lower_bound=1)
flags.DEFINE_integer("cf_dim", 300, "WARP factors per song (F_cf).", lower_bound=1)

# --- Data preparation (python -m tfcmir.prepare). -------------------------------------------------------
flags.DEFINE_enum("source", "melon", ["melon", "catalogue"],
                  "What to prepare: a Melon-layout dataset, or your own catalogue of audio files.")
flags.DEFINE_string("melon_mel_dir", None, "Folder of {id // 1000}/{id}.npy mels (default: --melon_dir).")
flags.DEFINE_string("catalogue_audio_dir", None, "Catalogue: folder of audio files.")
flags.DEFINE_string("catalogue_csv", None, "Catalogue: metadata CSV (path or id, genres separated by |).")
flags.DEFINE_string("catalogue_playlists", None,
                    "Catalogue: a folder of .m3u/.m3u8 playlists, or one .json file of playlists.")
flags.DEFINE_list("split_fractions", ["0.8", "0.1", "0.1"], "Train, validation, test shares of songs.")
flags.DEFINE_integer("w2v_epochs", 5, "Word2Vec passes over the genre sentences (gensim default).",
                     lower_bound=1)
flags.DEFINE_integer("warp_epochs", 50, "WARP epochs (authors' code: 50).", lower_bound=1)
flags.DEFINE_integer("warp_negatives", 40, "WARP negatives sampled per positive (authors: 40).",
                     lower_bound=1)
flags.DEFINE_float("warp_learning_rate", 0.05, "WARP Adagrad learning rate (authors: 0.05).",
                   lower_bound=0.0)
flags.DEFINE_enum("cf_backend", "tf", ["tf", "lightfm"],
                  "Who fits the WARP factors: tf (tfcmir.prepare.warp.fit_warp, TensorFlow) or lightfm "
                  "(the authors' library, as the lightfm-next fork: pip install 'tfcmir[lightfm]'). "
                  "See the README's WARP paragraph for the figures behind the default.")
flags.DEFINE_integer("shard_mb", 128, "Upper bound on a TFRecord shard's size, MiB.", lower_bound=1)
flags.DEFINE_bool("strict", False, "Stop at the first bad input instead of reporting and skipping it "
                  "(embed, evaluate: also an audio file whose mel level is off the training mels').")
flags.DEFINE_enum("verify_shards", "size", ["none", "size", "checksum", "records"],
                  "How readers check shards against the manifest before reading them.")

# --- Encoders. ----------------------------------------------------------------------------------------
flags.DEFINE_list("conv_channels", ["128", "128", "256", "256", "256", "256", "512"],
                  "Channels of the Z conv blocks of the audio encoder (authors' code).")
flags.DEFINE_integer("kernel_size", 3, "Square kernel of the conv blocks (K).", lower_bound=1)
flags.DEFINE_integer("hidden_dim", 512, "Hidden width of the feed-forward heads, FF_a1 and FF_cf1 "
                     "(ours: 512 for both, the width of the authors' audio head; the authors' CF head "
                     "is 301 -> 128, dropout 0.3, -> 128, with the LightFM item bias as a 301st input).",
                     lower_bound=1)
flags.DEFINE_integer("embedding_dim", 128, "Size of the shared contrastive space (authors' code).",
                     lower_bound=1)
flags.DEFINE_integer("attention_heads", 4, "Self-attention heads of the genre encoder.", lower_bound=1)
flags.DEFINE_float("dropout", 0.5, "Dropout probability p.", lower_bound=0.0, upper_bound=0.99)

# --- Objective. ---------------------------------------------------------------------------------------
flags.DEFINE_enum("mode", "contr_cf_g",
                  ["contr_cf_g", "contr_g", "contr_cf", "bline_g", "bline_cf", "bline_cf_g"],
                  "Model: the contrastive model and its ablations, or a supervised baseline.")
flags.DEFINE_float("temperature", 0.1, "NT-Xent temperature tau.", lower_bound=1e-6)
flags.DEFINE_float("lambda_a2g", 1.0, "Weight of the audio-genre loss.", lower_bound=0.0)
flags.DEFINE_float("lambda_a2p", 1.0, "Weight of the audio-playlist loss.", lower_bound=0.0)
flags.DEFINE_float("lambda_g2p", 1.0, "Weight of the genre-playlist loss.", lower_bound=0.0)

# --- Training. ----------------------------------------------------------------------------------------
# `python -m tfcmir.train` sizes batch_size, conv_channels, hidden_dim, learning_rate, lr_schedule, epochs
# and early_stopping to the data where they are not given (tfcmir/train/sizing.py; the paper's at Melon's size).
flags.DEFINE_integer("batch_size", 128, "Global batch size.", lower_bound=2)
flags.DEFINE_float("learning_rate", 1e-4, "Adam learning rate.", lower_bound=0.0)
flags.DEFINE_enum("lr_schedule", "constant", ["constant", "cosine"],
                  "constant: --learning_rate throughout (the paper); cosine: decays from it to a tenth "
                  "over --epochs. `train` chooses it by the data's size unless given "
                  "(tfcmir/train/sizing.py).")
flags.DEFINE_float("weight_decay", 1e-4, "Weight decay (paper silent; authors' code uses 1e-4).",
                   lower_bound=0.0)
flags.DEFINE_enum("weight_decay_form", "l2", ["l2", "decoupled", "none"],
                  "How --weight_decay acts: l2 adds weight_decay * w to the gradient before Adam's "
                  "moments (the authors' torch Adam(weight_decay=)); decoupled is Keras' AdamW-style "
                  "shrink by lr * weight_decay a step (1e-8 at the paper's lr: effectively off).")
flags.DEFINE_integer("epochs", 100, "Training epochs (paper silent).", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Random seed of every step (split, generator, training).")

flags.DEFINE_integer("early_stopping", 0,
                     "Stop after this many epochs without a better validation loss (0: never).",
                     lower_bound=0)
flags.DEFINE_integer("checkpoint_steps", 0,
                     "Also checkpoint every this many steps within an epoch (0: at epoch ends only).",
                     lower_bound=0)
flags.DEFINE_integer("keep_checkpoints", 3, "Latest checkpoints kept (the best one is kept apart).",
                     lower_bound=1)
flags.DEFINE_integer("steps_per_epoch", 0, "Steps per epoch (0: one pass over the train split).",
                     lower_bound=0)
flags.DEFINE_integer("shuffle_buffer", 2048, "Songs in the training shuffle buffer.", lower_bound=1)
flags.DEFINE_bool("mixed_precision", False,
                  "Compute in bfloat16 (CPU) or float16 (GPU), keeping variables and losses float32.")
flags.DEFINE_bool("jit_compile", False, "Compile the train step with XLA.")
flags.DEFINE_integer("worker_timeout_s", 600,
                     "Multi-worker training (TF_CONFIG): fail, with a message, a cross-worker step "
                     "still waiting for a worker after this many seconds (0: wait forever).",
                     lower_bound=0)

# --- Paths. -------------------------------------------------------------------------------------------
flags.DEFINE_string("melon_dir", None, "Melon Playlist Dataset root (song_meta.json, train.json, mels).")
flags.DEFINE_string("tfrecord_dir", "tfrecords", "Where prepared shards and manifest.json go.")
flags.DEFINE_string("out", None,
                    "Output folder of the command being run (each command says its default).")
flags.DEFINE_string("export_dir", "exports", "Where exported encoders go.")
flags.DEFINE_string("checkpoint", None, "Export: a training run folder (its best weights), a "
                    ".weights.h5 file or a checkpoint prefix.")
flags.DEFINE_integer("export_version", 1, "Export: the SavedModel version folder (TF Serving).",
                     lower_bound=1)
flags.DEFINE_string("embed_model", None, "Embed: the export folder to use (exports/NAME).")
flags.DEFINE_enum("artifact", "saved_model", ["saved_model", "tflite", "tflite_quantized", "onnx"],
                  "Embed: which artifact of the export runs the encoder.")
flags.DEFINE_bool("per_patch", False, "Embed: also write every patch's embedding.")
flags.DEFINE_enum("embed_format", "npy", ["npy", "npz"],
                  "Embed: .npy arrays + index.csv, or one .npz.")
flags.DEFINE_integer("embed_batch", 64, "Embed: patches per encoder call.", lower_bound=1)
flags.DEFINE_enum("task", "all", ["all", "gtzan", "jamendo", "continuation", "catalogue"],
                  "Evaluate: the downstream task(s) of the paper's section 3.3 (all: the three), or "
                  "catalogue: your own catalogue (--catalogue_*) with a `split` column by track.")
flags.DEFINE_list("models", [], "Evaluate: export folders to compare (rows of the tables).")
flags.DEFINE_string("gtzan_dir", None, "Evaluate: GTZAN root ({genre}/*.wav and *_filtered.txt).")
flags.DEFINE_string("jamendo_dir", None, "Evaluate: MTG-Jamendo root (audio/ and data/splits/).")
flags.DEFINE_integer("jamendo_split", 0, "Evaluate: the MTG-Jamendo split (0-4).", lower_bound=0,
                     upper_bound=4)
flags.DEFINE_integer("eval_repetitions", 10, "Evaluate: repetitions of each classifier (paper: 10).",
                     lower_bound=1)
flags.DEFINE_integer("continuation_k", 100, "Evaluate: continuation length and metric cut-off (paper: "
                     "100).", lower_bound=1)
flags.DEFINE_enum("continuation_index", "faiss_ivf", ["annoy", "faiss_ivf", "exact"],
                  "Evaluate: the continuation's cosine search: faiss_ivf (faiss IndexIVFFlat, k-means "
                  "lists: at Melon scale recall@100 0.998 against exact, 5x faster than Annoy), annoy "
                  "(the paper's: recall 0.78) or exact (faiss IndexFlatIP: every candidate, 6x slower "
                  "than faiss_ivf). Figures: benchmarks/results/2026-12-03-continuation-faiss.md.")
flags.DEFINE_integer("continuation_nlist", 0, "Evaluate: k-means lists of --continuation_index=faiss_ivf "
                     "(0: 4 sqrt(candidates), fewer on small sets so that the probed lists hold "
                     "~2 x continuation_k songs).", lower_bound=0)
flags.DEFINE_integer("continuation_nprobe", 4, "Evaluate: lists each seed searches with "
                     "--continuation_index=faiss_ivf (more: slower, closer to exact).", lower_bound=1)
flags.DEFINE_integer("continuation_search_k", -1, "Evaluate: Annoy's search_k for the continuation "
                     "queries (-1: Annoy's default, continuation_k x 50 trees; lower is faster and less "
                     "exact, see benchmarks/continuation.py).", lower_bound=-1)
flags.DEFINE_string("eval_dir", "reports", "Evaluate: where the tables (Markdown, JSON) and plots go.")
flags.DEFINE_string("model_dir", None, "Where training writes checkpoints and logs "
                    "(default: runs/<mode>).")

# --- Apache Beam (python -m tfcmir.prepare | tfcmir.embed --runner=...; tfcmir/beam/). ---------------
# With --runner, prepare's per-song work and the whole of embed run as a Beam pipeline. Flags that are
# not tfcmir's are Beam pipeline options and pass through in --name=value form (--direct_num_workers,
# --direct_running_mode, --project, --region, --temp_location, --setup_file, ...). Needs the `beam`
# extra: pip install -e '.[beam]'.
flags.DEFINE_string("runner", None, "Run as an Apache Beam pipeline on this runner: DirectRunner, "
                    "DataflowRunner, FlinkRunner, SparkRunner, ... (unset: the local path).")
flags.DEFINE_integer("beam_timeout_s", 86400, "Fail a Beam run still unfinished after this many "
                     "seconds, so a stuck worker cannot hang it (0: no limit).", lower_bound=0)
flags.DEFINE_enum("beam_output", "tfrecord", ["tfrecord", "parquet"],
                  "Embed with --runner: the format of the sharded outputs.")
flags.DEFINE_integer("beam_shards", 0, "Embed with --runner: output shards (0: the runner decides).",
                     lower_bound=0)

# --- Search (python -m tfcmir.search index|similar|genre|continue; tfcmir/search/). -------------------
# Also --embed_model (index: the export to embed with), --artifact, --strict.
flags.DEFINE_string("index", None, "Search: the search index folder (written by `search index`).")
flags.DEFINE_integer("k", 10, "Search: tracks in the answer.", lower_bound=1)
flags.DEFINE_string("m3u", None, "Search: write the answer to this M3U playlist instead of CSV.")
flags.DEFINE_string("genre_names", None, "Search genre: a JSON file {genre code: name} (Melon's "
                    "genre_gn_all.json) so that names match too; without it, codes only.")

# --- Demo data (python -m tfcmir.data.generator, python -m tfcmir.demo). ---------------------------------------
flags.DEFINE_string("demo_dir", "data/demo", "Where the demo datasets are written.")
flags.DEFINE_integer("demo_songs", 1500, "Songs in the demo Melon corpus.", lower_bound=50)
flags.DEFINE_integer("demo_playlists", 600, "Playlists in the demo Melon corpus.", lower_bound=10)
flags.DEFINE_float("demo_seconds", 10.0, "Length of every demo clip, seconds.", lower_bound=4.2)
flags.DEFINE_float("demo_missing_mel", 0.03,
                   "Fraction of demo Melon songs without a mel file (as in the real dataset).",
                   lower_bound=0.0, upper_bound=0.5)
flags.DEFINE_integer("demo_gtzan_per_genre", 20, "Demo GTZAN tracks per genre.", lower_bound=4)
flags.DEFINE_integer("demo_jamendo_tracks", 300, "Demo MTG-Jamendo tracks.", lower_bound=20)
flags.DEFINE_integer("workers", 2, "Worker processes for CPU-bound steps.", lower_bound=1)
flags.DEFINE_bool("overwrite", False, "Redo outputs that already exist and are complete.")

FLAGS = flags.FLAGS


def _is_positive_float(text):
  try:
    return float(text) > 0
  except ValueError:
    return False


flags.register_validator("conv_channels",
                         lambda v: bool(v) and all(s.strip().isdigit() and int(s) > 0 for s in v),
                         "--conv_channels must be a comma-separated list of positive integers")
flags.register_validator("split_fractions",
                         lambda v: len(v) == 3 and all(_is_positive_float(x) for x in v)
                         and abs(sum(float(x) for x in v) - 1) < 1e-6,
                         "--split_fractions must be three positive numbers summing to 1")
# absl's bounds let NaN through (every comparison with NaN is false), and a NaN learning rate only
# shows up epochs later as a non-finite loss blamed on the data.
for _flag in FLAGS.get_key_flags_for_module(__name__):
  if isinstance(_flag.parser, flags.FloatParser):
    flags.register_validator(_flag.name, lambda v: v is None or math.isfinite(v),
                             f"--{_flag.name} must be a finite number (not nan or inf)")
for _name in ("learning_rate", "warp_learning_rate"):
  flags.register_validator(_name, lambda v: v is None or v > 0, f"--{_name} must be > 0")


def resolved():
  """{name: value} of every tfcmir flag after parsing: saved beside every output it shapes."""
  return {f.name: f.value for f in FLAGS.get_key_flags_for_module(__name__)}


_HELP = ("-h", "-?", "--help", "--helpshort")


def command_module(orig_argv=None):
  """'tfcmir.train' when this process is `python -m tfcmir.train ...`, else None."""
  orig_argv = sys.orig_argv if orig_argv is None else orig_argv
  try:
    name = orig_argv[orig_argv.index("-m") + 1]
  except (ValueError, IndexError):
    return None
  return name if name.startswith("tfcmir.") else None


def preflight(module, args):
  """Answers --help and flag errors for `python -m <module> <args>` before TensorFlow is imported.

  Called from tfcmir/__init__.py, which runs first under `python -m`: the command's module imports
  TensorFlow (~5 s) before absl's app.run would parse a single flag. Every flag is defined here, so the
  whole command line can be checked now; app.run parses it again for good. A valid line leaves FLAGS
  unparsed (absl would append multi-flag values twice) and hands --verbosity to tfcmir.runtime, which
  decides before TensorFlow loads whether its start-up lines are shown.
  """
  from absl import app  # noqa: F401  (defines absl's own flags: --verbosity, --pdb, ...)

  from tfcmir import runtime

  if any(a in _HELP or a == "--helpfull" for a in args):
    _print_help(module, full="--helpfull" in args)
    sys.exit(0)
  try:
    rest = FLAGS([module] + list(args), known_only=True)
    if FLAGS.runner is None:  # without a pipeline, a flag nobody knows is an error (as in run_main)
      unknown = [a for a in rest[1:] if a.startswith("-")]
      if unknown:
        raise flags.Error(f"Unknown command line flag '{unknown[0].lstrip('-').split('=')[0]}'")
  except flags.Error as err:
    print(f"FATAL Flags parsing error: {err}\nPass --helpshort or --helpfull to see help on flags.",
          file=sys.stderr)
    sys.exit(1)
  runtime.command_verbosity = FLAGS.verbosity
  FLAGS.unparse_flags()


def _print_help(module, full):
  """The command's docstring, read from its source (importing it would load TensorFlow), then the
  flags: tfcmir's (--helpshort) or every flag absl knows (--helpfull)."""
  import ast
  import importlib.util
  import os

  spec = importlib.util.find_spec(module)
  origin = spec.origin if spec else None
  if origin and spec.submodule_search_locations:  # a package: its command line lives in cli.py
    folder = os.path.dirname(origin)
    origin = next((os.path.join(folder, f) for f in ("cli.py", "__main__.py")
                   if os.path.exists(os.path.join(folder, f))), origin)
  try:
    with open(origin, encoding="utf-8") as f:
      doc = ast.get_docstring(ast.parse(f.read())) or ""
  except (OSError, TypeError, SyntaxError):
    doc = ""
  text = doc.strip() + "\n\n" + (FLAGS.get_help() if full else FLAGS.module_help(sys.modules[__name__])
                                  + "\n\nTry --helpfull to get a list of all flags.")
  try:
    print(text)
    sys.stdout.flush()
  except BrokenPipeError:  # `... --helpfull | head`
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _parse_leaving_pipeline_options(argv):
  """Parses tfcmir's flags; with --runner, flags it does not know stay in argv for Apache Beam."""
  from absl import app

  try:
    rest = FLAGS(argv, known_only=True)
  except flags.Error:
    return app.parse_flags_with_usage(argv)  # absl's own message, and exit
  if FLAGS.runner is None and any(a.startswith("-") for a in rest[1:]):
    return app.parse_flags_with_usage(argv)  # no pipeline: an unknown flag is an error, as always
  return rest


def run_main(main, allow_args=False, pipeline_options=False):
  """app.run(main), with tfcmir's bad-input errors printed as one line (no stack trace), exit 1.

  With `pipeline_options`, a command run with --runner gets the flags that are not tfcmir's in argv
  (Beam pipeline options, for tfcmir/beam/options.py); without --runner they are rejected as usual.
  """
  from absl import app

  from tfcmir import runtime
  from tfcmir.errors import InputError

  def guarded(argv):
    runtime.quiet_library_logs(FLAGS.verbosity)
    args = [a for a in argv[1:] if not (pipeline_options and a.startswith("-"))]
    if args and not allow_args:
      raise app.UsageError(f"unexpected arguments: {' '.join(args)}")
    try:
      return main(argv)
    except InputError as err:
      print(f"error: {err}", file=sys.stderr)
      sys.exit(1)

  app.run(guarded, flags_parser=(_parse_leaving_pipeline_options if pipeline_options
                                 else app.parse_flags_with_usage))
