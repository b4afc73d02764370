"""Audio front end: decode, mix to mono, resample, and the Melon mel-spectrogram.

The Melon Playlist Dataset's mels were computed with Essentia (16 kHz, frame 512, hop 256, Hann window,
48 slaney-mel bands with unit-triangle normalisation, power spectrum, then dB). `MelSpectrogram` is that
chain as a Keras layer built on `tf.signal`, so the same code makes the training data (demo generator,
your own catalogue), runs inside the exported SavedModel and converts to TFLite builtins.

What it reproduces of Essentia, and why each detail matters (see tests/test_audio.py for the check):
  * `FrameCutter(startFromZero=False)`: the first frame is centred on sample 0 (frame_size/2 zeros in
    front) and frames continue while their start lies inside the signal: ceil((n + F/2) / H) frames.
  * `Windowing(type='hann')`: a *symmetric* Hann window scaled to sum to 2 (`normalized=True`); a
    periodic window costs ~0.3 dB. The authors' own extraction (`utils.melspectrogram`) passes
    `normalized=False`: the unscaled window (sum 255.5), 40*log10(255.5/2) = 84.25 dB higher in every
    bin. Which one a corpus used is a property of its data (tfcmir/levels.py detects it), so every
    function here takes `level`: "essentia" (normalized=True) or "authors" (normalized=False).
  * `MelBands(type='power', normalize='unit_tri', warpingFormula='slaneyMel')`: |rfft|^2 times a slaney
    filterbank with area normalisation (tf.signal's own matrix is HTK-mel and unnormalised).
  * `UnaryOperator(type='lin2db', scale=2)`: 20*log10(power), with Essentia's silence floor: powers
    below 1e-10 map to -200 dB.

Array layout: the layer returns time-major (batch, frames, bands), what the encoders take; the Melon
files store the transpose, (bands, frames).
"""

from __future__ import annotations

import os

import keras
import numpy as np
import soundfile as sf
import soxr
import tensorflow as tf

SAMPLE_RATE = 16000
FRAME_SIZE = 512
HOP_SIZE = 256
NUM_BANDS = 48
PATCH_FRAMES = 256  # the encoder's input: 256 frames (~4.1 s), T_a in the paper
POWER_FLOOR = 1e-10  # Essentia's lin2db silence cutoff: 20*log10(1e-10) = -200 dB.
DB_FLOOR = -200.0

# A file whose peak is below one 16-bit LSB (-90 dBFS) holds no music: refuse it rather than embed noise.
SILENCE_PEAK = 10 ** (-90 / 20)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")


class AudioError(ValueError):
  """An audio file that cannot be used; the message names the file and the problem."""

  def __init__(self, path, problem):
    super().__init__(f"{path}: {problem}")
    self.path = str(path)
    self.problem = problem


def check_waveform(waveform, path="<waveform>", allow_silence=False):
  """Validates a decoded mono waveform; raises AudioError naming `path`."""
  if waveform.size == 0:
    raise AudioError(path, "contains no audio samples (empty file)")
  if not np.all(np.isfinite(waveform)):
    bad = int(np.sum(~np.isfinite(waveform)))
    raise AudioError(path, f"contains {bad} non-finite samples (NaN or Inf)")
  peak = float(np.max(np.abs(waveform)))
  if not allow_silence and peak < SILENCE_PEAK:
    raise AudioError(path, f"is silent (peak amplitude {peak:.3g}, below -90 dBFS)")
  return waveform


def _mix_to_mono(data):
  """(samples, channels) float32 -> (samples,): the mean of the channels, as Essentia's MonoLoader.

  Column sums are ~15x faster than numpy's mean over the short channel axis, and the same float32 sum
  below 8 channels (numpy adds fewer than 8 values one after the other; from 8 on it sums pairwise).
  """
  if 1 < data.shape[1] < 8:
    mono = data[:, 0].copy()
    for channel in range(1, data.shape[1]):
      mono += data[:, channel]
    mono /= np.float32(data.shape[1])
    return mono
  return data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]


def load_audio(path, sample_rate=SAMPLE_RATE, allow_silence=False):
  """Decodes an audio file, mixes it to mono and resamples it.

  Args:
    path: a wav, flac, ogg or mp3 file (anything libsndfile decodes).
    sample_rate: the output rate in Hz (16 kHz for the Melon front end).
    allow_silence: accept files whose peak is below -90 dBFS.

  Returns:
    float32 array (samples,) at `sample_rate`.

  Raises:
    AudioError: missing, undecodable, empty, silent or non-finite audio; the message names the file.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise AudioError(path, "file not found")
  if os.path.isdir(path):
    raise AudioError(path, "is a directory, not an audio file")
  try:
    data, native_rate = sf.read(path, dtype="float32", always_2d=True)
  except (sf.LibsndfileError, RuntimeError, TypeError) as err:
    raise AudioError(path, f"cannot be decoded as audio ({err})") from err
  if data.shape[0] == 0:
    raise AudioError(path, "contains no audio samples (empty file)")
  mono = _mix_to_mono(data)
  check_waveform(mono, path, allow_silence=True)  # NaN first: soxr would smear it over the signal.
  if native_rate != sample_rate:
    mono = soxr.resample(mono, native_rate, sample_rate, quality="HQ").astype(np.float32)
  return check_waveform(np.ascontiguousarray(mono, dtype=np.float32), path, allow_silence)


def hz_to_slaney_mel(hz):
  """Slaney's mel scale: linear below 1 kHz, logarithmic above (Essentia's 'slaneyMel')."""
  hz = np.asarray(hz, dtype=np.float64)
  f_sp = 200.0 / 3
  min_log_hz = 1000.0
  min_log_mel = min_log_hz / f_sp
  logstep = np.log(6.4) / 27.0
  return np.where(hz >= min_log_hz,
                  min_log_mel + np.log(np.maximum(hz, 1e-10) / min_log_hz) / logstep,
                  hz / f_sp)


def slaney_mel_to_hz(mel):
  mel = np.asarray(mel, dtype=np.float64)
  f_sp = 200.0 / 3
  min_log_hz = 1000.0
  min_log_mel = min_log_hz / f_sp
  logstep = np.log(6.4) / 27.0
  return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), mel * f_sp)


def slaney_mel_matrix(sample_rate=SAMPLE_RATE, frame_size=FRAME_SIZE, num_bands=NUM_BANDS,
                      fmin=0.0, fmax=None):
  """Triangular slaney-mel filterbank with unit-area ('unit_tri') normalisation.

  Returns:
    float64 array (frame_size // 2 + 1, num_bands): power spectrum @ matrix = mel band energies.
  """
  fmax = sample_rate / 2 if fmax is None else fmax
  if not 0 <= fmin < fmax <= sample_rate / 2:
    raise ValueError(f"mel range must satisfy 0 <= fmin < fmax <= sample_rate/2, got {fmin}, {fmax}")
  bin_hz = np.linspace(0, sample_rate / 2, frame_size // 2 + 1)
  edges_hz = slaney_mel_to_hz(np.linspace(hz_to_slaney_mel(fmin), hz_to_slaney_mel(fmax), num_bands + 2))
  widths = np.diff(edges_hz)
  ramps = edges_hz[:, None] - bin_hz[None, :]
  lower = -ramps[:-2] / widths[:-1, None]
  upper = ramps[2:] / widths[1:, None]
  weights = np.maximum(0.0, np.minimum(lower, upper))
  weights *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]  # unit area in Hz: Slaney normalisation
  return weights.T


# The window normalisation of each level convention: Essentia's Windowing(normalized=...).
LEVELS = {"essentia": True, "authors": False}
DEFAULT_LEVEL = "essentia"


def check_level(level):
  if level not in LEVELS:
    raise ValueError(f"mel level convention must be one of {sorted(LEVELS)}, got {level!r}")
  return level


def essentia_hann(frame_size=FRAME_SIZE, level=DEFAULT_LEVEL):
  """Essentia's Windowing(type='hann'): symmetric Hann, scaled to sum to 2 when normalized (the
  "essentia" level), left unscaled for the "authors" level (normalized=False)."""
  window = np.hanning(frame_size)
  return window * (2.0 / window.sum()) if LEVELS[check_level(level)] else window


def num_frames(num_samples, frame_size=FRAME_SIZE, hop_size=HOP_SIZE):
  """Frames Essentia's FrameCutter(startFromZero=False) yields for a signal of `num_samples`."""
  return (num_samples + frame_size // 2 + hop_size - 1) // hop_size


@keras.saving.register_keras_serializable(package="tfcmir")
class MelSpectrogram(keras.layers.Layer):
  """Waveform -> Melon mel-spectrogram in dB, as Essentia computes it.

  `level`: the window normalisation, "essentia" (normalized=True) or "authors" (normalized=False).
  `dft`: "fft" (tf.signal.rfft) or "matmul" (the windowed DFT as one real matrix product, the same
  power spectrum within float32 rounding): ONNX converters cannot take rfft's complex output (tf2onnx
  1.17 fails on the ComplexAbs after it), so the ONNX export uses "matmul".

  Call args:
    waveform: float32 (batch, samples) mono audio at `sample_rate`.

  Returns:
    float32 (batch, frames, num_bands) in dB, frames = ceil((samples + frame_size/2) / hop_size).
  """

  def __init__(self, sample_rate=SAMPLE_RATE, frame_size=FRAME_SIZE, hop_size=HOP_SIZE,
               num_bands=NUM_BANDS, fmin=0.0, fmax=None, level=DEFAULT_LEVEL, dft="fft", **kwargs):
    super().__init__(**kwargs)
    if frame_size % 2 or hop_size <= 0 or frame_size <= 0:
      raise ValueError(f"frame_size must be even and positive, hop_size positive: {frame_size}, {hop_size}")
    self.sample_rate = sample_rate
    self.frame_size = frame_size
    self.hop_size = hop_size
    self.num_bands = num_bands
    self.fmin = fmin
    self.fmax = fmax
    self.level = check_level(level)
    if dft not in ("fft", "matmul"):
      raise ValueError(f"dft must be 'fft' or 'matmul', got {dft!r}")
    self.dft = dft
    # Constants, not weights: they must not train, and a quantiser must not touch them.
    self._window = tf.constant(essentia_hann(frame_size, level), tf.float32)
    if dft == "matmul":
      self._dft = tf.constant(windowed_dft_matrix(frame_size, level), tf.float32)
    self._mel = tf.constant(slaney_mel_matrix(sample_rate, frame_size, num_bands, fmin, fmax), tf.float32)

  def call(self, waveform):
    waveform = tf.convert_to_tensor(waveform, tf.float32)
    n = tf.shape(waveform)[1]
    count = (n + self.frame_size // 2 + self.hop_size - 1) // self.hop_size
    # Centre frame 0 on sample 0, pad the tail generously with zeros, then keep FrameCutter's count.
    padded = tf.pad(waveform, [[0, 0], [self.frame_size // 2, self.frame_size]])
    frames = tf.signal.frame(padded, self.frame_size, self.hop_size)[:, :count]
    if self.dft == "matmul":
      parts = tf.einsum("btn,nk->btk", frames, self._dft)  # (b, t, 2 * bins): real parts, then imaginary
      real, imag = tf.split(parts, 2, axis=-1)
      power = real * real + imag * imag
    else:
      power = tf.square(tf.abs(tf.signal.rfft(frames * self._window)))
    bands = tf.einsum("btf,fm->btm", power, self._mel)
    return 20.0 * tf.math.log(tf.maximum(bands, POWER_FLOOR)) / np.log(10.0)

  def compute_output_shape(self, input_shape):
    batch, samples = input_shape
    frames = None if samples is None else num_frames(samples, self.frame_size, self.hop_size)
    return (batch, frames, self.num_bands)

  def get_config(self):
    config = super().get_config()
    config.update(sample_rate=self.sample_rate, frame_size=self.frame_size, hop_size=self.hop_size,
                  num_bands=self.num_bands, fmin=self.fmin, fmax=self.fmax, level=self.level,
                  dft=self.dft)
    return config


def windowed_dft_matrix(frame_size=FRAME_SIZE, level=DEFAULT_LEVEL):
  """(frame_size, 2 * (frame_size // 2 + 1)) float64: frames @ it = [Re, Im] of rfft(frames * window).

  Built in float64 from exact angles (k * n mod N), so float32 rounding happens once, in the product.
  """
  n = np.arange(frame_size)
  k = np.arange(frame_size // 2 + 1)
  angle = 2 * np.pi * (np.outer(n, k) % frame_size) / frame_size
  window = essentia_hann(frame_size, level).astype(np.float64)[:, None]
  return np.concatenate([window * np.cos(angle), -window * np.sin(angle)], axis=1)


def split_patches(mel, patch_frames=PATCH_FRAMES):
  """(batch, frames, bands) mels -> (batch, patches, patch_frames, bands) non-overlapping patches.

  The paper's downstream protocol: consecutive 256-frame patches, the incomplete tail dropped. A mel
  shorter than one patch is padded with the dB floor (-200, silence) to make exactly one patch.
  Works on tensors and arrays, inside tf.function, SavedModel and TFLite (static patch size).
  """
  mel = tf.convert_to_tensor(mel, tf.float32)
  frames = tf.shape(mel)[1]
  mel = tf.pad(mel, [[0, 0], [0, tf.maximum(0, patch_frames - frames)], [0, 0]],
               constant_values=DB_FLOOR)
  count = tf.maximum(1, frames // patch_frames)
  mel = mel[:, :count * patch_frames]
  return tf.reshape(mel, [tf.shape(mel)[0], count, patch_frames, mel.shape[-1] or NUM_BANDS])



def split_patches_numpy(mel, patch_frames=PATCH_FRAMES):
  """`split_patches` of one (frames, bands) NumPy mel -> (patches, patch_frames, bands), without TensorFlow.

  For loops over many files: the TensorFlow version costs a few eager ops per call, which was half the
  time of embedding the demo's Melon mels.
  """
  mel = np.asarray(mel, np.float32)
  if len(mel) < patch_frames:
    mel = np.pad(mel, [(0, patch_frames - len(mel)), (0, 0)], constant_values=DB_FLOOR)
  count = len(mel) // patch_frames
  return mel[:count * patch_frames].reshape(count, patch_frames, mel.shape[-1])


_MEL_LAYERS = {}


def mel_spectrogram(waveforms, level=DEFAULT_LEVEL):
  """NumPy convenience: (batch, samples) or (samples,) waveform(s) -> (batch, frames, 48) dB mels."""
  if level not in _MEL_LAYERS:
    _MEL_LAYERS[check_level(level)] = MelSpectrogram(level=level)
  waveforms = np.asarray(waveforms, np.float32)
  single = waveforms.ndim == 1
  mels = _MEL_LAYERS[level](waveforms[None] if single else waveforms)
  mels = np.asarray(mels)
  return mels[0] if single else mels


def file_to_mel(path, allow_silence=False, level=DEFAULT_LEVEL):
  """Decodes, resamples and computes the mel of one file: float32 (frames, 48) in dB, at the mel
  level convention `level` (see MelSpectrogram).

  In chunks (mel_chunks): memory holds the mel and one chunk of audio, not the decoded file.
  """
  return np.concatenate(list(mel_chunks(path, MEL_CHUNK_FRAMES, allow_silence=allow_silence,
                                        level=level)))


# --- Long files in bounded memory. ----------------------------------------------------------------------

MEL_CHUNK_FRAMES = 4096  # ~65 s of audio per front-end call
STREAM_BLOCK_SECONDS = 10  # decoded per read: ~3.5 MB of 44.1 kHz stereo float32


def stream_audio(path, sample_rate=SAMPLE_RATE, block_seconds=STREAM_BLOCK_SECONDS,
                 allow_silence=False):
  """load_audio one block at a time: yields float32 mono blocks at `sample_rate`, in order.

  Their concatenation equals load_audio(path) (the same mix; soxr's streaming resampler gives the
  one-shot result), but memory holds one block, not the file: a one-hour 44.1 kHz stereo file
  decodes to 1.3 GB at once. The checks are load_audio's; silence can only be judged at the end, so
  that AudioError comes after the blocks.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise AudioError(path, "file not found")
  if os.path.isdir(path):
    raise AudioError(path, "is a directory, not an audio file")
  try:
    source = sf.SoundFile(path)
  except (sf.LibsndfileError, RuntimeError, TypeError) as err:
    raise AudioError(path, f"cannot be decoded as audio ({err})") from err
  with source:
    native_rate = source.samplerate
    resampler = (soxr.ResampleStream(native_rate, sample_rate, 1, dtype="float32", quality="HQ")
                 if native_rate != sample_rate else None)
    peak, samples = 0.0, 0
    block = max(1, int(block_seconds * native_rate))
    while True:
      try:
        data = source.read(block, dtype="float32", always_2d=True)
      except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioError(path, f"cannot be decoded as audio ({err})") from err
      last = len(data) < block
      mono = _mix_to_mono(data)  # load_audio's mix, for the same float32 values
      samples += len(mono)
      if len(mono) and not np.all(np.isfinite(mono)):
        raise AudioError(path, f"contains {int(np.sum(~np.isfinite(mono)))} non-finite samples "
                         "(NaN or Inf)")
      if resampler is not None:
        mono = resampler.resample_chunk(np.ascontiguousarray(mono), last=last)
      if len(mono):
        peak = max(peak, float(np.max(np.abs(mono))))
        yield np.ascontiguousarray(mono, dtype=np.float32)
      if last:
        break
  if samples == 0:
    raise AudioError(path, "contains no audio samples (empty file)")
  if not allow_silence and peak < SILENCE_PEAK:
    raise AudioError(path, f"is silent (peak amplitude {peak:.3g}, below -90 dBFS)")


_MEL_FUNCTIONS = {}


def _mel_function(frontend):
  """A MelSpectrogram(**frontend) traced once for 1-D waveforms of any length (one per front end)."""
  key = tuple(sorted(frontend.items()))
  if key not in _MEL_FUNCTIONS:
    layer = MelSpectrogram(**frontend)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
    def mel(samples):
      return layer(samples[None])[0]

    _MEL_FUNCTIONS[key] = layer, mel
  return _MEL_FUNCTIONS[key]


def mel_chunks(path, chunk_frames, allow_silence=False, stats=None, **frontend):
  """One file's mel, `chunk_frames` frames at a time: yields float32 (frames, bands) arrays whose
  concatenation is the whole-file mel (MelSpectrogram(**frontend) on load_audio(path)).

  Each chunk is computed from the samples its frames cover plus the frames' context on either
  side, so chunks equal the slices of the whole-file mel; the last one holds what remains (up to
  chunk_frames + frame_size / hop_size frames). Memory: one chunk of samples and frames.
  `frontend` goes to MelSpectrogram unchanged; `stats`, a dict, receives the file's 'samples' and
  'sample_rate' once it is read.
  """
  layer, mel = _mel_function(frontend)
  hop, half = layer.hop_size, layer.frame_size // 2
  context = -(-half // hop)  # frames before a chunk whose windows reach into it
  buffer, start, first = np.zeros(0, np.float32), 0, 0  # buffer holds samples from `start` on
  for block in stream_audio(path, layer.sample_rate, allow_silence=allow_silence):
    buffer = np.concatenate([buffer, block])
    # Frames first .. first + chunk_frames - 1 need samples up to (last frame) * hop + half.
    while start + len(buffer) >= (first + chunk_frames - 1) * hop + half:
      skip = min(first, context)  # frames computed for their context only, then dropped
      begin = (first - skip) * hop
      end = (first + chunk_frames - 1) * hop + half
      frames = mel(tf.constant(buffer[begin - start:end - start])).numpy()
      yield frames[skip:skip + chunk_frames]
      first += chunk_frames
      keep_from = (first - min(first, context)) * hop
      buffer, start = buffer[keep_from - start:], keep_from
  if stats is not None:
    stats.update(samples=start + len(buffer), sample_rate=layer.sample_rate)
  skip = min(first, context)
  total = num_frames(start + len(buffer), layer.frame_size, hop)  # the whole file's frame count
  if total > first:
    frames = mel(tf.constant(buffer[(first - skip) * hop - start:])).numpy()
    yield frames[skip:skip + total - first]
