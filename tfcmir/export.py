"""`python -m tfcmir.export --checkpoint=runs/NAME --out=exports/NAME`: the trained audio encoder, shipped.

Writes, in one go, into a temporary folder renamed to --out when everything is written and verified:

  saved_model/<version>/  SavedModel in TF Serving's layout, signatures
                            serving_default  mel (batch, 256, 48) -> embedding (pre-head), projection
                            from_waveform    waveform (batch, samples) 16 kHz mono -> patch_embeddings
                                             (batch, patches, D), embedding (batch, D): the mean
                            genres           genre_ids (batch, T_w) -> genre_projection (contrastive
                                             models with a genre tower only)
                          and assets.extra/tf_serving_warmup_requests (PredictionLog records)
  tflite/                 audio_mel_{float32,dynamic_range}.tflite, audio_waveform_{...}.tflite
  onnx/                   audio_mel.onnx, audio_waveform.onnx (tf2onnx, the [onnx] extra; without it
                            the manifest's onnx_not_written says why there is none)
  essentia/               frozen graph .pb (input node `mel`) + the JSON metadata Essentia models ship
  genre_vocab.json        genre code -> genre_ids row, for the genres signature
  export_manifest.json    checkpoint, flags, versions, sha256 of every file, verification errors
  README.md               how to call each artifact

Each artifact is checked against the Keras model on the same inputs before the folder is renamed.
"""

from __future__ import annotations

import datetime
import os
import shutil

import keras
import numpy as np
import tensorflow as tf
from absl import flags, logging
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from tfcmir import __version__, audio, export_format, levels, runtime, safeio, shards
from tfcmir import flags as tfcmir_flags
from tfcmir.errors import InputError
from tfcmir.model import checkpoint as checkpoint_lib

FLAGS = flags.FLAGS
MANIFEST = export_format.MANIFEST
MIN_QUANTIZED_COSINE = 0.99  # a quantised model whose embeddings drift further is not shipped
ONNX_OPSET = 15  # tf2onnx 1.17's default: onnxruntime >= 1.10 runs it
ONNX_EXTRA = "pip install -e '.[onnx]'"


class AudioTower(tf.Module):
  """The exported functions: the encoder on mel patches, on waveforms, and the genre tower."""

  def __init__(self, model, level=audio.DEFAULT_LEVEL, dft="fft"):
    super().__init__()
    self.audio_encoder = model.audio_encoder
    self.genre_encoder = model.genre_encoder
    # The convention of the training mels; dft="matmul" for ONNX (audio.MelSpectrogram says why).
    self.frontend = audio.MelSpectrogram(level=level, dft=dft)
    # Only towers that exist become functions: SavedModel traces every tf.function it finds.
    self.genres = None
    if self.genre_encoder is not None:
      self.genres = tf.function(
          self._genres, input_signature=[tf.TensorSpec([None, None], tf.int64, name="genre_ids")])

  @tf.function(input_signature=[tf.TensorSpec([None, audio.PATCH_FRAMES, audio.NUM_BANDS], tf.float32, name="mel")])
  def serve_mel(self, mel):
    pre_head, projection = self.audio_encoder(mel, training=False, return_pre_head=True)
    return {"embedding": pre_head, "projection": projection}

  @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32, name="waveform")])
  def from_waveform(self, waveform):
    patches = audio.split_patches(self.frontend(waveform), audio.PATCH_FRAMES)  # (b, n, 256, 48)
    batch, count = tf.shape(patches)[0], tf.shape(patches)[1]
    flat = tf.reshape(patches, [batch * count, audio.PATCH_FRAMES, audio.NUM_BANDS])
    pre_head, projection = self.audio_encoder(flat, training=False, return_pre_head=True)
    per_patch = tf.reshape(pre_head, [batch, count, pre_head.shape[-1]])
    projections = tf.reshape(projection, [batch, count, projection.shape[-1]])
    return {"patch_embeddings": per_patch, "embedding": tf.reduce_mean(per_patch, axis=1),
            "patch_projections": projections}

  def _genres(self, genre_ids):
    return {"genre_projection": self.genre_encoder(genre_ids, training=False)}


def signatures(tower):
  out = {"serving_default": tower.serve_mel, "from_waveform": tower.from_waveform}
  if tower.genre_encoder is not None:
    out["genres"] = tower.genres
  return out


def warmup_requests(path, model_name, has_genres):
  """TF Serving's warm-up file: one PredictRequest per signature, as PredictionLog records."""
  from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

  inputs = {"serving_default": {"mel": np.zeros((1, audio.PATCH_FRAMES, audio.NUM_BANDS), np.float32)},
            "from_waveform": {"waveform": np.zeros((1, audio.SAMPLE_RATE * 5), np.float32)}}
  if has_genres:
    inputs["genres"] = {"genre_ids": np.array([[1, 0]], np.int64)}
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with tf.io.TFRecordWriter(path) as writer:
    for signature, tensors in inputs.items():
      request = predict_pb2.PredictRequest(
          model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature))
      for key, value in tensors.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
      log = prediction_log_pb2.PredictionLog(
          predict_log=prediction_log_pb2.PredictLog(request=request))
      writer.write(log.SerializeToString())
  return len(inputs)


def freeze(function):
  """A signature with its variables folded into constants, outputs keeping their names.

  Converting the SavedModel directly keeps Keras 3's variables as TFLite resource variables
  (READ_VARIABLE ops that the plain runtime cannot initialise: -inf out); freezing first avoids it.
  """
  frozen = convert_variables_to_constants_v2(function)  # also folds captured constant tensors
  args, kwargs = function.structured_input_signature  # a loaded signature takes kwargs, a tf.function args
  (name, spec), = (kwargs or {spec.name: spec for spec in args}).items()
  keys = sorted(function.structured_outputs)  # the order tf.nest flattens a dict in

  @tf.function(input_signature=[spec])
  def named(x):
    return dict(zip(keys, frozen(x)))

  named.__name__ = name
  return named.get_concrete_function()


def convert_tflite(saved_model_dir, signature, quantize):
  loaded = tf.saved_model.load(saved_model_dir)
  converter = tf.lite.TFLiteConverter.from_concrete_functions(
      [freeze(loaded.signatures[signature])], loaded)
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # what any app's runtime has
  if quantize:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]  # dynamic-range: int8 weights, float math
  return converter.convert()


def run_tflite(model_content, inputs):
  """Runs a .tflite model (bytes) on {input name: array}; returns {output name: array}."""
  from ai_edge_litert.interpreter import Interpreter

  interpreter = Interpreter(model_content=model_content)
  # Tensor names are '<signature>_<input>:0'; resize before anything holds the interpreter's buffers.
  for detail in interpreter.get_input_details():
    for name, value in inputs.items():
      if detail["name"].split(":")[0].endswith(f"_{name}") or detail["name"] == name:
        interpreter.resize_tensor_input(detail["index"], value.shape)
  with runtime.quiet_native_lines():
    interpreter.allocate_tensors()
  return interpreter.get_signature_runner()(**inputs)


def _import_tf2onnx():
  """tf2onnx with its converter loaded. Importing `tf2onnx.convert` sets TF_CPP_MIN_LOG_LEVEL=3 in our
  environment; it is put back, or every process started later takes it for the user's setting."""
  with runtime.environment_kept("TF_CPP_MIN_LOG_LEVEL"):
    import tf2onnx
    import tf2onnx.convert  # noqa: F401
  return tf2onnx


def convert_onnx(function):
  """A tf.function of AudioTower -> ONNX model bytes (tf2onnx folds the variables into constants).

  Frozen first (`freeze`): tf2onnx's own freezing leaves the front end's constant matrices as graph
  inputs. Its Python API logs a node it cannot convert and carries on, leaving a TensorFlow op in the
  graph that no runtime loads: such ops are an error here, named.
  """
  import onnx

  tf2onnx = _import_tf2onnx()
  frozen = freeze(function.get_concrete_function())
  proto, _ = tf2onnx.convert.from_function(tf.function(frozen), input_signature=function.input_signature,
                                           opset=ONNX_OPSET)
  unconverted = sorted({node.op_type for node in proto.graph.node
                        if not onnx.defs.has(node.op_type, node.domain)})
  if unconverted:
    raise RuntimeError(f"tf2onnx left TensorFlow ops in the ONNX graph of {function.__name__}: "
                       f"{', '.join(unconverted)}")
  _name_dynamic_dims(proto)
  onnx.checker.check_model(proto)
  return proto.SerializeToString()


def _name_dynamic_dims(proto):
  """tf2onnx names the dynamic dimensions unk__N; runtimes and viewers show these names."""
  for value, is_input in [(v, True) for v in proto.graph.input] + [(v, False) for v in proto.graph.output]:
    dims = value.type.tensor_type.shape.dim
    for i, name in ((0, "batch"), (1, "samples" if is_input else "patches")):
      if len(dims) > i and dims[i].dim_param:
        dims[i].dim_param = name


def run_onnx(model_content, inputs, threads=None):
  """Runs an ONNX model (bytes or path) in onnxruntime on {input name: array}; returns {output: array}."""
  import onnxruntime as ort

  options = ort.SessionOptions()
  options.intra_op_num_threads = threads or 0  # 0: onnxruntime's default, one per physical core
  session = ort.InferenceSession(model_content, options, providers=["CPUExecutionProvider"])
  names = [output.name for output in session.get_outputs()]
  return dict(zip(names, session.run(names, inputs)))


def relative_error(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def cosine(a, b):
  a, b = np.asarray(a, np.float64).reshape(len(a), -1), np.asarray(b, np.float64).reshape(len(b), -1)
  return float(np.min(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


def verification_inputs(seed=0, level=audio.DEFAULT_LEVEL):
  """Real-music-like inputs: a demo-style waveform of 10 s, and its mel patches (in `level`)."""
  rng = np.random.default_rng(seed)
  t = np.arange(audio.SAMPLE_RATE * 10) / audio.SAMPLE_RATE
  tones = sum(np.sin(2 * np.pi * f * t) * (0.1 + 0.05 * rng.random()) for f in (110, 220, 330, 660))
  waveform = (tones * (1 + 0.5 * np.sin(2 * np.pi * 2 * t)) + 0.01 * rng.standard_normal(len(t)))
  waveform = (0.3 * waveform / np.max(np.abs(waveform))).astype(np.float32)[None]
  patches = np.asarray(audio.split_patches(audio.mel_spectrogram(waveform, level), audio.PATCH_FRAMES))[0]
  return waveform, patches.astype(np.float32)


def frontend_of(run):
  """The front-end kwargs of a training run (config.json): runs from before the level was recorded
  trained on the front end's default."""
  return dict({"level": audio.DEFAULT_LEVEL}, **run.get("frontend", {}))


def training_level_statistics(run):
  """Per-band statistics of the run's training mels, for the guard of embed and evaluate; None (and a
  warning) when the run's data folder is gone."""
  folder = run["data"]["tfrecord_dir"]
  try:
    manifest = shards.read_manifest(folder)
    return levels.shard_band_statistics(folder, manifest)
  except (InputError, OSError, tf.errors.OpError) as err:
    logging.warning("no level statistics of the training mels (%s): embed cannot check its inputs",
                    err)
    return None


def genre_vocab_of(run, tfrecord_dir=None):
  """The genre_vocab.json of the run's own data folder (config.json), or of `tfrecord_dir` when it
  holds the same preparation (same fingerprint); another corpus's vocabulary is refused."""
  own = run["data"]["tfrecord_dir"]
  folder = tfrecord_dir or own
  if os.path.realpath(folder) != os.path.realpath(own):
    if shards.read_fingerprint(folder) != run["data"]["fingerprint"]:
      raise InputError(f"{folder}: not the data the run was trained on ({own}, fingerprint "
                       f"{run['data']['fingerprint'][:12]}); its genre_vocab.json would not match the "
                       "genre tower. Drop --tfrecord_dir to use the run's own folder")
  path = os.path.join(folder, shards.GENRE_VOCAB)
  if not os.path.exists(path):
    logging.warning("%s: missing; the export ships no genre_vocab.json", path)
    return None
  return path


def export(checkpoint, out, version=1, overwrite=False, name=None, flags_used=None,
           tfrecord_dir=None, essentia=True):
  """Writes every artifact to `out` (atomically); returns the export manifest (a dict).

  The genre vocabulary comes from the run's own data folder (config.json), or from `tfrecord_dir`
  when it holds the same preparation (see genre_vocab_of).
  """
  model, run, weights = checkpoint_lib.load_trained(checkpoint)
  genre_vocab = genre_vocab_of(run, tfrecord_dir)
  name = name or os.path.basename(os.path.normpath(out))
  safeio.check_ours(out, (MANIFEST,), "export (--out)")
  if os.path.isdir(out) and os.listdir(out) and not overwrite:
    raise InputError(f"{out}: already exists; use --overwrite to replace it")
  partial = safeio.partial_folder(out)  # also removes what killed runs left
  try:
    manifest = _write_all(model, run, weights, partial, name, version, genre_vocab, essentia)
    manifest["flags"] = flags_used or {}
    manifest["written_by"] = safeio.WRITTEN_BY
    manifest["files"] = {os.path.relpath(os.path.join(d, f), partial): safeio.sha256_file(os.path.join(d, f))
                         for d, _, files in os.walk(partial) for f in sorted(files)}
    safeio.write_json(os.path.join(partial, MANIFEST), manifest)
    # The old export stays whole until the new one, complete, takes its place.
    safeio.replace_folder(partial, out, _exported_names(out))
  except BaseException:
    shutil.rmtree(partial, ignore_errors=True)  # never leave half an export behind
    raise
  return manifest


def _exported_names(out):
  """The top-level names an earlier export wrote into `out` (from its manifest): not carried over."""
  path = os.path.join(out, MANIFEST)
  try:
    files = safeio.read_json(path).get("files", {})
  except (OSError, ValueError, AttributeError):
    return {MANIFEST}
  return {name.split("/")[0] for name in files} | {MANIFEST}


def _write_all(model, run, weights, out, name, version, genre_vocab, essentia):
  frontend = frontend_of(run)
  tower = AudioTower(model, frontend["level"])
  saved_model = os.path.join(out, "saved_model", str(version))
  tf.saved_model.save(tower, saved_model, signatures=signatures(tower))
  has_genres = tower.genre_encoder is not None
  try:
    warmups = warmup_requests(os.path.join(saved_model, "assets.extra", "tf_serving_warmup_requests"),
                              name, has_genres)
  except ImportError:
    logging.warning("tensorflow-serving-api is not installed (pip install -e '.[serving]'): "
                    "no warm-up requests written")
    warmups = 0
  waveform, patches = verification_inputs(level=frontend["level"])
  keras_pre, keras_proj = model.audio_encoder(patches, training=False, return_pre_head=True)
  loaded = tf.saved_model.load(saved_model)
  sm_mel = loaded.signatures["serving_default"](mel=tf.constant(patches))
  sm_wave = loaded.signatures["from_waveform"](waveform=tf.constant(waveform))
  checks = {"saved_model_vs_keras": max(relative_error(sm_mel["embedding"], keras_pre),
                                        relative_error(sm_mel["projection"], keras_proj)),
            "from_waveform_vs_mel_patches": relative_error(sm_wave["patch_embeddings"][0],
                                                          sm_mel["embedding"])}
  os.makedirs(os.path.join(out, "tflite"))
  tflite_files, not_written = {}, {}
  for kind, signature, inputs, reference in (
      ("mel", "serving_default", {"mel": patches}, sm_mel["embedding"]),
      ("waveform", "from_waveform", {"waveform": waveform}, sm_wave["patch_embeddings"])):
    for quantize, suffix in ((False, "float32"), (True, "dynamic_range")):
      relative = export_format.tflite_file(kind, suffix)
      content = convert_tflite(saved_model, signature, quantize)
      got = run_tflite(content, inputs)
      key = "embedding" if kind == "mel" else "patch_embeddings"
      if quantize:
        checks[f"tflite_{kind}_{suffix}_min_cosine"] = similarity = cosine(got[key], reference)
        if similarity < MIN_QUANTIZED_COSINE:
          # Measured: dynamic-range quantisation also turns the front end's 257 x 48 mel filterbank
          # into int8, which moves the dB values by several dB (cosine 0.65-0.73 on the demo models),
          # so the waveform variant is expected to land here on every export: recorded in the
          # manifest, not warned about. The mel-input variant is what apps quantise.
          not_written[os.path.basename(relative)] = (
              f"cosine {similarity:.3f} with the float model < {MIN_QUANTIZED_COSINE}")
          # The export's summary line shows the cosine too; --verbosity=1 names the file.
          logging.vlog(1, "%s not written: %s", relative, not_written[os.path.basename(relative)])
          continue
      else:
        checks[f"tflite_{kind}_{suffix}_vs_saved_model"] = relative_error(got[key], reference)
      with open(os.path.join(out, *relative.split("/")), "wb") as f:
        f.write(content)
      tflite_files[f"{kind}_{suffix}"] = relative
  onnx_files, onnx_not_written = write_onnx(model, frontend["level"], out, checks,
                                            {"mel": patches, "waveform": waveform},
                                            {"mel": sm_mel, "waveform": sm_wave})
  essentia_files = {}
  if essentia:
    from tfcmir import export_essentia
    pb, meta = export_essentia.write_essentia_model(
        model.audio_encoder, os.path.join(out, "essentia"), f"tfcmir-{name}",
        {"version": str(version),
         "dataset": {"name": f"prepared shards {run['data']['tfrecord_dir']} "
                             f"(fingerprint {run['data']['fingerprint'][:12]})"}},
        level=frontend["level"])
    essentia_files = {"graph": os.path.relpath(pb, out), "metadata": os.path.relpath(meta, out)}
  if genre_vocab:
    shutil.copy(genre_vocab, os.path.join(out, "genre_vocab.json"))
  with open(os.path.join(out, "README.md"), "w", encoding="utf-8") as f:
    f.write(export_readme(name, version, model, has_genres, frontend["level"]))
  return {"name": name, "version": version, "mode": run["model"]["mode"],
          "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "checkpoint": os.path.abspath(weights), "model": run["model"],
          "embedding_dim": int(keras_pre.shape[-1]), "projection_dim": int(keras_proj.shape[-1]),
          "patch_frames": audio.PATCH_FRAMES, "sample_rate": audio.SAMPLE_RATE, "frontend": frontend,
          "level_statistics": training_level_statistics(run),
          "signatures": sorted(signatures(tower)), "warmup_requests": warmups,
          "tflite": tflite_files, "tflite_not_written": not_written,
          "onnx": onnx_files, "onnx_not_written": onnx_not_written, "essentia": essentia_files,
          "verification": checks,
          "versions": {"tfcmir": __version__, "tensorflow": tf.__version__,
                       "keras": keras.__version__, "numpy": np.__version__}}


def write_onnx(model, level, out, checks, inputs, references):
  """onnx/audio_{mel,waveform}.onnx, each run in onnxruntime on `inputs` and compared with the
  SavedModel's outputs (`references`, by signature input) into `checks`; returns (files, not written).

  The waveform model's front end computes the DFT as a matrix product (audio.MelSpectrogram, dft=
  "matmul"): tf2onnx turns tf.signal.rfft into one too, but cannot convert the ComplexAbs after it.
  """
  try:
    import onnxruntime  # noqa: F401
    _import_tf2onnx()
  except ImportError as err:
    reason = f"{err.name} is not installed ({ONNX_EXTRA})"
    logging.warning("no ONNX models written: %s", reason)
    return {}, {os.path.basename(export_format.onnx_file(kind)): reason for kind in ("mel", "waveform")}
  tower = AudioTower(model, level, dft="matmul")
  os.makedirs(os.path.join(out, "onnx"))
  files = {}
  for kind, function in (("mel", tower.serve_mel), ("waveform", tower.from_waveform)):
    content = convert_onnx(function)
    got = run_onnx(content, {kind: inputs[kind]})
    reference = references[kind]
    checks[f"onnx_{kind}_vs_saved_model"] = max(relative_error(got[key], reference[key])
                                                for key in reference)
    files[kind] = export_format.onnx_file(kind)
    with open(os.path.join(out, *files[kind].split("/")), "wb") as f:
      f.write(content)
  return files, {}


def export_readme(name, version, model, has_genres, level=audio.DEFAULT_LEVEL):
  window = "normalized=True, Essentia's default" if audio.LEVELS[level] else (
      "normalized=False, the authors' extraction: 84.25 dB above Essentia's default")
  return f"""# {name}: tfcmir audio encoder

Trained with tfcmir ({model.mode}). Input: 48-band mel patches of 256 frames (16 kHz, frame 512, hop
256, Essentia's Melon front end, level convention "{level}": Windowing({window})), or 16 kHz mono
waveforms (the waveform signature and TFLite model compute that mel themselves). `embedding` is the pre-head vector the
downstream tasks use; `projection` is the contrastive space shared with the genre tower.

## TensorFlow Serving

    docker run -p 8501:8501 -v "$PWD/saved_model:/models/{name}" -e MODEL_NAME={name} tensorflow/serving
    curl -X POST localhost:8501/v1/models/{name}:predict -d '{{"signature_name": "from_waveform",
         "instances": [{{"waveform": [0.0, 0.01, ...]}}]}}'
    curl -X POST localhost:8501/v1/models/{name}:predict -d '{{"instances": [{{"mel": [[...48 floats...],
         ...256 rows...]}}]}}'

Version {version} lives in `saved_model/{version}/`; `assets.extra/tf_serving_warmup_requests` warms
every signature up at load.{" The `genres` signature maps genre_ids (rows of genre_vocab.json, 0 = padding) to the shared space." if has_genres else ""}

## TFLite (LiteRT)

`tflite/audio_mel_float32.tflite` (mel patches) and `tflite/audio_waveform_float32.tflite` (waveform,
any length: resize the input first); `audio_mel_dynamic_range.tflite` is ~3x smaller with int8
weights (cosine >= 0.99 with the float model; see export_manifest.json). A quantised waveform model
is shipped only when it too stays above 0.99: quantising the front end's mel filterbank usually
breaks that, so put the float front end before the quantised mel model instead.

## ONNX (onnxruntime)

`onnx/audio_mel.onnx` (input `mel`, outputs `embedding`, `projection`) and `onnx/audio_waveform.onnx`
(input `waveform` (batch, samples), any length; outputs `patch_embeddings`, `embedding`,
`patch_projections`), opset {ONNX_OPSET}:

    import onnxruntime as ort
    session = ort.InferenceSession("onnx/audio_waveform.onnx")
    embedding = session.run(["embedding"], {{"waveform": waveform[None].astype("float32")}})[0][0]

Absent when the export ran without tf2onnx: export_manifest.json's `onnx_not_written` says so.

## Essentia

`essentia/` holds a frozen graph with input node `mel` and output nodes `embeddings` and
`projection`, and its JSON metadata.

See `export_manifest.json` for the checkpoint, versions, checksums and the measured agreement of
every artifact with the Keras model.
"""


def main(argv):
  if not FLAGS.checkpoint:
    raise InputError("--checkpoint is required (a training run folder, e.g. runs/demo/contr_cf_g)")
  out = FLAGS.out or os.path.join(FLAGS.export_dir, os.path.basename(os.path.normpath(FLAGS.checkpoint)))
  manifest = export(FLAGS.checkpoint, out, FLAGS.export_version, FLAGS.overwrite,
                    flags_used=tfcmir_flags.resolved(),
                    tfrecord_dir=FLAGS.tfrecord_dir if FLAGS["tfrecord_dir"].present else None)
  print(f"exported {manifest['checkpoint']} -> {out}")
  print("| check | value |\n|---|---|")
  for key, value in manifest["verification"].items():
    print(f"| {key} | {value:.3g} |")
  for name, reason in {**manifest.get("tflite_not_written", {}),
                       **manifest.get("onnx_not_written", {})}.items():
    print(f"not written: {name} ({reason})")


if __name__ == "__main__":
  tfcmir_flags.run_main(main)
