"""The audio front end: decoding, resampling, and the mel chain checked against Essentia itself."""

import os

import numpy as np
import pytest
import soundfile as sf
import soxr
import tensorflow as tf

from helpers import REAL_AUDIO, REAL_FILES, run_essentia
from tfcmir import audio

# Same waveform into both chains: what is left is float32 FFT rounding (0.0034 dB measured).
SAME_INPUT_TOL_DB = 0.01


@pytest.fixture(scope="module")
def essentia_mels(tmp_path_factory):
  """Essentia's mels of every excerpt: from our decoded waveform, and from its own MonoLoader."""
  tmp = tmp_path_factory.mktemp("essentia")
  pairs, ours = [], {}
  for name in REAL_FILES:
    wave = audio.load_audio(os.path.join(REAL_AUDIO, name))
    np.save(tmp / f"{name}.wave.npy", wave)
    pairs.append((str(tmp / f"{name}.wave.npy"), str(tmp / f"{name}.from_wave.npy")))
    pairs.append((os.path.join(REAL_AUDIO, name), str(tmp / f"{name}.from_file.npy")))
    ours[name] = audio.mel_spectrogram(wave)
  lengths = (1, 100, 255, 256, 257, 511, 512, 1000, 1025, 4097)
  rng = np.random.default_rng(0)
  for n in lengths:
    np.save(tmp / f"noise{n}.npy", (0.1 * rng.standard_normal(n)).astype(np.float32))
    pairs.append((str(tmp / f"noise{n}.npy"), str(tmp / f"noise{n}.mel.npy")))
  run_essentia(*pairs)
  load = lambda path: np.load(path)
  return {
      "ours": ours,
      "from_wave": {n: load(tmp / f"{n}.from_wave.npy") for n in REAL_FILES},
      "from_file": {n: load(tmp / f"{n}.from_file.npy") for n in REAL_FILES},
      "noise": {n: (np.load(tmp / f"noise{n}.npy"), load(tmp / f"noise{n}.mel.npy")) for n in lengths},
  }


@pytest.mark.parametrize("name", REAL_FILES)
def test_mel_matches_essentia_on_the_same_waveform(essentia_mels, name):
  ours, ref = essentia_mels["ours"][name], essentia_mels["from_wave"][name]
  assert ours.shape == ref.shape
  assert ours.shape[1] == 48
  assert np.max(np.abs(ours - ref)) <= SAME_INPUT_TOL_DB
  # Real music, not two floors compared: loud bands exist and most values sit above the -200 dB floor.
  assert ours.max() > -80
  assert np.mean(ours > audio.DB_FLOOR + 1) > 0.75  # an mp3 low-pass leaves the top bands empty


@pytest.mark.parametrize("name", [n for n in REAL_FILES if "16k" in n])
def test_whole_chain_from_a_16k_file_matches_essentia(essentia_mels, name):
  """No resampling involved: decoding, mixdown and the mel chain all agree with Essentia's."""
  ours = audio.file_to_mel(os.path.join(REAL_AUDIO, name))
  ref = essentia_mels["from_file"][name]
  assert ours.shape == ref.shape
  assert np.max(np.abs(ours - ref)) <= SAME_INPUT_TOL_DB


@pytest.mark.parametrize("name", [n for n in REAL_FILES if "16k" not in n])
def test_resampled_files_agree_with_essentia_below_the_resampler_roll_off(essentia_mels, name):
  """soxr and Essentia's resampler differ only near 8 kHz (bands 46-47, their anti-alias roll-off)."""
  ours, ref = essentia_mels["ours"][name], essentia_mels["from_file"][name]
  assert abs(len(ours) - len(ref)) <= 1  # Essentia's ogg decoder can yield a few more samples
  n = min(len(ours), len(ref))
  diff = np.abs(ours[:n, :46] - ref[:n, :46])
  assert np.median(diff) <= 0.01
  assert np.percentile(diff, 99) <= 0.25


def test_frame_count_and_edges_match_framecutter(essentia_mels):
  for n, (wave, ref) in essentia_mels["noise"].items():
    ours = audio.mel_spectrogram(wave)
    assert ours.shape == ref.shape == (audio.num_frames(n), 48), n
    assert np.max(np.abs(ours - ref)) <= SAME_INPUT_TOL_DB, n


def test_slaney_filterbank_has_unit_area_triangles():
  """Reference computed another way: each triangle, integrated over Hz, has area 1 (unit_tri)."""
  mel = audio.slaney_mel_matrix()
  assert mel.shape == (257, 48)
  edges = audio.slaney_mel_to_hz(np.linspace(0, audio.hz_to_slaney_mel(8000), 50))
  fine = np.linspace(0, 8000, 200001)
  for band in (0, 10, 30, 47):
    lo, centre, hi = edges[band:band + 3]
    tri = np.interp(fine, [lo, centre, hi], [0, 1, 0], left=0, right=0) * 2 / (hi - lo)
    assert np.trapezoid(tri, fine) == pytest.approx(1.0, rel=1e-3)
    bins = np.linspace(0, 8000, 257)
    np.testing.assert_allclose(mel[:, band], np.interp(bins, [lo, centre, hi], [0, 1, 0], left=0,
                                                       right=0) * 2 / (hi - lo), atol=1e-9)
  # Slaney's scale is linear below 1 kHz: 200/3 Hz per mel.
  assert audio.hz_to_slaney_mel(1000.0) == pytest.approx(15.0)


def test_layer_is_batched_and_length_agnostic():
  rng = np.random.default_rng(1)
  waves = (0.1 * rng.standard_normal((3, 16000))).astype(np.float32)
  layer = audio.MelSpectrogram()
  batch = np.asarray(layer(waves))
  assert batch.shape == (3, audio.num_frames(16000), 48)
  for i in range(3):
    np.testing.assert_allclose(batch[i], np.asarray(layer(waves[i:i + 1]))[0], atol=1e-4)
  fn = tf.function(layer, input_signature=[tf.TensorSpec([None, None], tf.float32)])
  for n in (4000, 16001):
    assert fn(waves[:2, :n]).shape == (2, audio.num_frames(n), 48)
  clone = audio.MelSpectrogram.from_config(layer.get_config())
  np.testing.assert_allclose(np.asarray(clone(waves)), batch)


@pytest.mark.parametrize("level", sorted(audio.LEVELS))
def test_dft_by_matrix_product_gives_the_rfft_mel(level):
  """dft="matmul" (the ONNX export's front end) = the rfft front end, silence floor included."""
  wave = audio.load_audio(os.path.join(REAL_AUDIO, "hedgewars_castle_mono16k.wav"))[None, :48000]
  wave = np.concatenate([wave, np.zeros_like(wave)])  # a silent row: both at the -200 dB floor
  fft = np.asarray(audio.MelSpectrogram(level=level)(wave))
  matmul = audio.MelSpectrogram(level=level, dft="matmul")
  got = np.asarray(matmul(wave))
  assert np.max(np.abs(got - fft)) <= 1e-3  # dB; measured 3e-5 on this file, 3e-4 on tones
  assert np.all(got[1] == audio.DB_FLOOR)
  assert audio.MelSpectrogram.from_config(matmul.get_config()).dft == "matmul"


def test_layer_runs_in_a_saved_model_and_tflite(tmp_path):
  """The export issue relies on this: the front end inside a SavedModel and TFLite builtins."""
  from ai_edge_litert.interpreter import Interpreter

  module = tf.Module()
  module.mel = audio.MelSpectrogram()
  module.__call__ = tf.function(lambda w: module.mel(w),
                                input_signature=[tf.TensorSpec([None, None], tf.float32)])
  tf.saved_model.save(module, str(tmp_path / "sm"))
  wave = audio.load_audio(os.path.join(REAL_AUDIO, "hedgewars_castle_mono16k.wav"))[None, :48000]
  expected = audio.mel_spectrogram(wave)
  reloaded = tf.saved_model.load(str(tmp_path / "sm"))
  np.testing.assert_allclose(np.asarray(reloaded(tf.constant(wave))), expected, atol=1e-3)

  converter = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "sm"))
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no Flex ops allowed
  interpreter = Interpreter(model_content=converter.convert())
  index = interpreter.get_input_details()[0]["index"]
  interpreter.resize_tensor_input(index, wave.shape)
  interpreter.allocate_tensors()
  interpreter.set_tensor(index, wave)
  interpreter.invoke()
  got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
  assert got.shape == expected.shape
  assert np.max(np.abs(got - expected)) <= SAME_INPUT_TOL_DB


@pytest.mark.parametrize("name", REAL_FILES)
def test_load_audio_decodes_mixes_and_resamples(name):
  path = os.path.join(REAL_AUDIO, name)
  wave = audio.load_audio(path)
  info = sf.info(path)
  assert wave.dtype == np.float32 and wave.ndim == 1
  assert len(wave) == pytest.approx(info.frames * 16000 / info.samplerate, abs=2)
  # Reference computed another way: channel mean, then soxr.
  raw, rate = sf.read(path, dtype="float64", always_2d=True)
  expected = soxr.resample(raw.mean(1), rate, 16000) if rate != 16000 else raw.mean(1)
  np.testing.assert_allclose(wave, expected, atol=1e-4)


def _write(path, data, rate=16000, subtype="PCM_16"):
  sf.write(str(path), data, rate, subtype=subtype)
  return str(path)


@pytest.mark.parametrize("case, problem", [
    ("missing", "file not found"),
    ("directory", "is a directory"),
    ("garbage", "cannot be decoded"),
    ("empty", "no audio samples"),
    ("silent", "is silent"),
    ("nan", "non-finite"),
])
def test_bad_audio_gets_a_clear_error_naming_the_file(tmp_path, case, problem):
  path = tmp_path / f"{case}.wav"
  if case == "directory":
    path.mkdir()
  elif case == "garbage":
    path.write_bytes(b"RIFF\x00\x00\x00\x00not really a wave file" * 10)
  elif case == "empty":
    _write(path, np.zeros(0, np.float32))
  elif case == "silent":
    _write(path, np.zeros(16000, np.float32))
  elif case == "nan":
    data = np.full(16000, 0.1, np.float32)
    data[100] = np.nan
    _write(path, data, subtype="FLOAT")
  with pytest.raises(audio.AudioError) as err:
    audio.file_to_mel(path)
  assert str(path) in str(err.value)
  assert problem in str(err.value)


def test_silence_is_accepted_when_asked():
  wave = np.zeros(8000, np.float32)
  assert audio.check_waveform(wave, allow_silence=True) is wave
  mel = audio.mel_spectrogram(wave)
  assert np.all(mel == audio.DB_FLOOR)  # Essentia's lin2db floor: -200 dB


def test_authors_level_matches_essentia_unnormalized_window(tmp_path):
  """level="authors" is Essentia's Windowing(normalized=False): 40*log10(255.5/2) = 84.25 dB higher."""
  name = next(n for n in REAL_FILES if "16k" in n)
  wave = audio.load_audio(os.path.join(REAL_AUDIO, name))
  np.save(tmp_path / "wave.npy", wave)
  run_essentia((str(tmp_path / "wave.npy"), str(tmp_path / "authors.npy")), level="authors")
  ref = np.load(tmp_path / "authors.npy")
  ours = audio.mel_spectrogram(wave, level="authors")
  assert ours.shape == ref.shape
  assert np.max(np.abs(ours - ref)) <= SAME_INPUT_TOL_DB
  loud = ours > -150  # away from the -200 dB floor, which both conventions share
  shift = ours[loud] - audio.mel_spectrogram(wave)[loud]
  assert np.allclose(shift, 40 * np.log10(255.5 / 2), atol=0.01)
  with pytest.raises(ValueError, match="natural_log"):
    audio.MelSpectrogram(level="natural_log")


@pytest.mark.parametrize("frames", [1, 100, 255, 256, 257, 511, 600])
def test_numpy_patches_equal_the_tensorflow_patches(frames):
  """split_patches_numpy (evaluation loops) == split_patches (the exported graphs), padding included."""
  mel = np.random.default_rng(frames).normal(-40, 10, (frames, 48)).astype(np.float32)
  expected = np.asarray(audio.split_patches(mel[None], 256))[0]
  got = audio.split_patches_numpy(mel, 256)
  assert got.shape == expected.shape == (max(1, frames // 256), 256, 48)
  np.testing.assert_array_equal(got, expected)
