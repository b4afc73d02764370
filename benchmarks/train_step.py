"""Training-step throughput: songs/s of the real Contr_CF-G step at paper and demo size, and FLOP rates.

    python benchmarks/train_step.py                   # paper + demo size, 4 configurations each
    python benchmarks/train_step.py --profile         # + where a paper-size step spends its time
    python benchmarks/train_step.py --quick           # smoke test (CI): demo size, tiny batch
    python benchmarks/train_step.py --onednn=on,off --configs=float32   # oneDNN against Eigen

`--onednn` runs each configuration with TensorFlow's oneDNN kernels on, off, or both (the child's
TF_ENABLE_ONEDNN_OPTS; tfcmir turns them on by default, TensorFlow alone only on CPUs with AVX512_VNNI,
AVX512_BF16 or AMX), and reports which kernels actually ran. Each configuration (float32; float32 + XLA `jit_compile`; mixed bfloat16, on CPUs with AVX512_BF16
or AMX; mixed + XLA) runs in its own subprocess, so its peak memory is its own. A subprocess builds the
model as `tfcmir.train.loop.train` does (same strategy, precision policy, model, Adam with weight decay,
`compile(jit_compile=...)`) and runs `fit` on one synthetic batch repeated in memory, so the input
pipeline is not measured. Songs/s is batch / the median step time (each step timed from Keras'
batch-begin to batch-end callbacks, after warm-up steps that include tracing and XLA compilation).

FLOPs per song are counted from the layer shapes (conv 2*H*W*Cin*Cout*K^2, dense 2*in*out, attention
and the NT-Xent similarity matrices; normalisation, activations and pooling left out) and checked
against TensorFlow's own graph FLOP count; a training step is forward + backward = 3x forward, minus
the input gradient of the first convolution, which is not needed. The fp32 peak is shown two ways: the
rate of a large float32 matmul on this machine (an achievable peak), and cores x clock x 64 FLOP per
cycle (Zen 4/5 and Intel AVX-512 cores with two 512-bit FMA pipes; the clock read from /proc/cpuinfo
is the nominal one, a core may boost above it).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

import common

CONFIGS = {  # name: (mixed precision, jit_compile)
    "float32": (False, False),
    "float32 + XLA": (False, True),
    "mixed bfloat16": (True, False),
    "mixed bfloat16 + XLA": (True, True),
}
SIZES = {  # the audio encoder's conv channels and hidden width; the rest is the paper's everywhere
    "paper": ([128, 128, 256, 256, 256, 256, 512], 512),
    "demo": ([16, 16, 32, 32, 32, 32, 64], 256),  # configs/demo.flags
}
FRAMES, BANDS, GENRE_DIM, CF_DIM, MAX_GENRES, GENRE_VOCAB = 256, 48, 200, 300, 10, 254
ISSUE_PAPER_GFLOP = (1.73, 5.2)  # the issue's forward and forward + backward per 256 x 48 patch
PAPER_SONGS_PER_S = 520_000 / (19 * 60)  # the paper: 19 min per epoch of ~520k songs on a V100


def model_config(size):
  from tfcmir.model import contrastive
  channels, hidden = SIZES[size]
  return contrastive.model_config("contr_cf_g", (GENRE_VOCAB + 1, GENRE_DIM), CF_DIM, channels,
                                  kernel_size=3, hidden_dim=hidden)


def flops_per_song(config, batch):
  """Analytic FLOPs per song, {part: (forward, forward + backward)}, from the model config's shapes."""
  from tfcmir.model import encoders
  audio = config["audio"]
  kernel = audio["kernel_size"]
  pools = encoders.default_pools(len(audio["channels"]), FRAMES, BANDS)
  height, width, channels_in = FRAMES, BANDS, 1
  conv = []
  for channels_out, (pool_t, pool_f) in zip(audio["channels"], pools):
    conv.append(2 * height * width * channels_in * channels_out * kernel**2)
    height, width, channels_in = height // pool_t, width // pool_f, channels_out
  flat = height * width * channels_in
  dense = 2 * flat * audio["hidden_dim"] + 2 * audio["hidden_dim"] * audio["embedding_dim"]
  audio_forward = sum(conv) + dense
  # The first convolution's input is the mel: no gradient is propagated into it.
  audio_train = 3 * audio_forward - conv[0]
  genre, cf = config["genre"], config["cf"]
  heads, key_dim, embedding = genre["num_heads"], 128, genre["embedding_dim"]  # key_dim: encoders
  tokens, width_w = MAX_GENRES, GENRE_DIM
  genre_forward = (3 * 2 * tokens * width_w * heads * key_dim        # query, key, value projections
                   + 2 * 2 * heads * tokens * tokens * key_dim       # scores and weighted values
                   + 2 * tokens * heads * key_dim * embedding        # output projection
                   + 2 * tokens * embedding * embedding)             # FF_w
  cf_forward = 2 * CF_DIM * cf["hidden_dim"] + 2 * cf["hidden_dim"] * cf["embedding_dim"]
  # Three NT-Xent pairs, each a (batch x batch) similarity matrix of embedding-wide dot products.
  loss_forward = 3 * 2 * batch * embedding
  parts = {"audio encoder": (audio_forward, audio_train), "genre encoder": (genre_forward, 0),
           "CF encoder": (cf_forward, 0), "NT-Xent": (loss_forward, 0)}
  return {name: (f, t or 3 * f) for name, (f, t) in parts.items()}


def tf_graph_flops(config):
  """TensorFlow's own FLOP count of the audio encoder's forward graph (one patch), or None."""
  import tensorflow as tf
  from tensorflow.python.profiler import model_analyzer, option_builder
  from tensorflow.python.util import deprecation

  from tfcmir.model import contrastive
  model = contrastive.build_model(config)
  encoder = model.audio_encoder
  function = tf.function(lambda mel: encoder(mel, training=False))
  graph = function.get_concrete_function(tf.TensorSpec([1, FRAMES, BANDS], tf.float32)).graph
  options = option_builder.ProfileOptionBuilder(
      option_builder.ProfileOptionBuilder.float_operation()).with_empty_output().build()
  try:
    with deprecation.silence():
      profile = model_analyzer.profile(graph, options=options)
  except Exception:  # noqa: BLE001  (the v1 profiler is best-effort; the analytic count stands alone)
    return None
  # Count what the analytic figure counts: convolutions and matrix products.
  return sum(child.float_ops for child in _walk(profile)
             if child.name and _op_type(graph, child.name) in ("Conv2D", "MatMul", "BatchMatMulV2"))


def _walk(node):
  for child in node.children:
    yield child
    yield from _walk(child)


def _op_type(graph, name):
  try:
    return graph.get_operation_by_name(name).type
  except (KeyError, ValueError):
    return None


def synthetic_batch(batch, seed=0):
  """One batch as the reader yields it: mel float32 (batch, 256, 48) dB, genres, cf, has_cf, song_id."""
  rng = np.random.default_rng(seed)
  genres = np.zeros((batch, MAX_GENRES), np.int64)
  for row, count in enumerate(rng.integers(1, 4, batch)):
    genres[row, :count] = rng.choice(np.arange(1, GENRE_VOCAB + 1), count, replace=False)
  return {"mel": rng.normal(-80, 20, (batch, FRAMES, BANDS)).astype(np.float32), "genres": genres,
          "cf": rng.normal(0, 0.1, (batch, CF_DIM)).astype(np.float32),
          "has_cf": np.ones(batch, np.int64), "song_id": np.arange(batch, dtype=np.int64)}


def build(size, mixed, jit, batch):
  """The model, compiled as tfcmir.train.loop.train compiles it, and an endless dataset of one batch."""
  import keras
  import tensorflow as tf

  from tfcmir.model import contrastive
  from tfcmir.train import cluster as cluster_lib
  from tfcmir.train import optimizer as optimizer_lib
  keras.utils.set_random_seed(0)
  policy = optimizer_lib.set_precision(mixed)
  strategy = cluster_lib.make_strategy()
  data = synthetic_batch(batch)
  table = np.random.default_rng(1).normal(0, 0.3, (GENRE_VOCAB + 1, GENRE_DIM)).astype(np.float32)
  dataset = tf.data.Dataset.from_tensors(data).repeat()
  with strategy.scope():
    model = contrastive.build_model(model_config(size), table)
    model.build_from_batch({k: tf.constant(v) for k, v in data.items()})
    optimizer = keras.optimizers.Adam(1e-4, weight_decay=1e-4)  # the flags' defaults
    model.compile(optimizer=optimizer, jit_compile=jit)
    optimizer.build(model.trainable_variables)
  return model, dataset, data, policy


def worker(args):
  """Times one (size, configuration) with fit; prints one JSON line."""
  import keras
  mixed, jit = CONFIGS[args.config]
  started = time.perf_counter()
  model, dataset, _, policy = build(args.size, mixed, jit, args.batch)

  class StepTimes(keras.callbacks.Callback):
    def __init__(self):
      super().__init__()
      self.times = []

    def on_train_batch_begin(self, batch, logs=None):
      self.begin = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
      self.times.append(time.perf_counter() - self.begin)

  warm = StepTimes()
  model.fit(dataset, epochs=1, steps_per_epoch=args.warmup, verbose=0, callbacks=[warm])
  timer = StepTimes()
  for _ in range(args.repeats):
    model.fit(dataset, epochs=1, steps_per_epoch=args.steps, verbose=0, callbacks=[timer])
  median = statistics.median(timer.times)
  print("RESULT " + json.dumps({
      "policy": policy, "step_s": median, "best_step_s": min(timer.times),
      "songs_per_s": args.batch / median, "first_step_s": warm.times[0],
      "onednn": common.onednn_enabled(),
      "peak_rss_gb": common.peak_rss_gb(), "seconds": time.perf_counter() - started,
      "params": int(sum(np.prod(v.shape) for v in model.trainable_variables))}), flush=True)


def profile_worker(args):
  """Where a step's time goes: forward, backward, optimizer; and each conv layer's ops alone."""
  import tensorflow as tf
  mixed, jit = CONFIGS[args.config]
  model, _, data, policy = build(args.size, mixed, jit, args.batch)
  batch = {k: tf.constant(v) for k, v in data.items()}
  variables = model.trainable_variables

  def forward():
    return tf.add_n(list(model.compute_losses(batch, training=True).values()))

  def forward_backward():
    with tf.GradientTape() as tape:
      total = forward()
    return tape.gradient(total, variables)

  def step():
    return model.train_step(batch)

  def timed(fn):
    compiled = tf.function(fn, jit_compile=jit)
    return _median_time(lambda: tf.nest.map_structure(lambda t: t.numpy(), compiled()), args.steps)

  rows = [("forward (training mode)", timed(forward)),
          ("forward + backward", timed(forward_backward)),
          ("forward + backward + Adam (train_step)", timed(step))]
  # Each convolution alone at its shape in this model, in the compute dtype of the policy.
  dtype = tf.bfloat16 if mixed else tf.float32
  audio = model.audio_encoder
  height, width, channels_in = FRAMES, BANDS, 1
  layers = []
  for z, (channels_out, (pool_t, pool_f)) in enumerate(zip(audio.channels, audio.resolved_pools)):
    x = tf.random.normal([args.batch, height, width, channels_in], dtype=tf.float32)
    kernel = tf.random.normal([3, 3, channels_in, channels_out], dtype=tf.float32) * 0.05
    x, kernel = tf.cast(x, dtype), tf.cast(kernel, dtype)
    dy = tf.cast(tf.random.normal([args.batch, height, width, channels_out]), dtype)
    flops = 2 * args.batch * height * width * channels_in * channels_out * 9
    shape = tf.constant([args.batch, height, width, channels_in])
    ops = {
        "forward": lambda x=x, k=kernel: tf.nn.conv2d(x, k, 1, "SAME"),
        "input grad": lambda k=kernel, dy=dy, s=shape: tf.raw_ops.Conv2DBackpropInput(
            input_sizes=s, filter=k, out_backprop=dy, strides=[1, 1, 1, 1], padding="SAME"),
        "filter grad": lambda x=x, dy=dy, k=kernel: tf.raw_ops.Conv2DBackpropFilter(
            input=x, filter_sizes=tf.shape(k), out_backprop=dy, strides=[1, 1, 1, 1], padding="SAME"),
    }
    seconds = {}
    for name, op in ops.items():
      if z == 0 and name == "input grad":
        continue  # not computed in training
      compiled = tf.function(op, jit_compile=jit)
      seconds[name] = _median_time(lambda c=compiled: c().numpy(), max(3, args.steps))
    layers.append({"layer": f"conv{z + 1} {height}x{width}x{channels_in}->{channels_out}",
                   "gflop": flops / 1e9, "seconds": seconds})
    height, width, channels_in = height // pool_t, width // pool_f, channels_out
  print("RESULT " + json.dumps({"policy": policy, "rows": rows, "layers": layers}), flush=True)


def _median_time(fn, repeats, warmup=2):
  return statistics.median(common.timings(fn, repeats, warmup))


def matmul_rate(size, dtype_name, repeats=5):
  """GFLOP/s of a (size x size) @ (size x size) tf.linalg.matmul, best of `repeats`."""
  import tensorflow as tf
  dtype = getattr(tf, dtype_name)
  a = tf.cast(tf.random.normal([size, size]), dtype)
  b = tf.cast(tf.random.normal([size, size]), dtype)
  product = tf.function(lambda: tf.reduce_sum(tf.cast(tf.linalg.matmul(a, b)[:1, :1], tf.float32)))
  seconds = common.best_of(lambda: product().numpy(), repeats=repeats, warmup=1)
  return 2 * size**3 / seconds / 1e9


def clock_mhz():
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      return max(float(line.split(":")[1]) for line in f if line.startswith("cpu MHz"))
  except (OSError, ValueError):
    return None


def run_child(args, size, config, profile=False, onednn="on"):
  env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="1" if onednn == "on" else "0")
  command = [sys.executable, os.path.abspath(__file__), "--worker", "--size", size, "--config",
             config, "--batch", str(args.batch), "--steps", str(args.steps), "--repeats",
             str(args.repeats), "--warmup", str(args.warmup)] + (["--profile"] if profile else [])
  done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
  lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
  if done.returncode or not lines:
    return {"error": (done.stderr.strip().splitlines() or ["no output"])[-1][:200]}
  return json.loads(lines[-1][len("RESULT "):])


def fp32_flop_per_cycle():
  """Two FMA units a core: 2 x 2 x 16 floats with AVX-512, 2 x 2 x 8 with AVX2 (Zen 4 runs AVX-512 on
  256-bit units, so this over-states it by 2x there)."""
  flags = common.cpu_flags()
  return 64 if "avx512f" in flags else 32 if "avx2" in flags else 16


def bf16_capable():
  import tensorflow as tf
  flags = common.cpu_flags()
  return bool(tf.config.list_physical_devices("GPU")) or "avx512_bf16" in flags or any(
      f.startswith("amx") for f in flags)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true",
                      help="smoke test: demo size, batch 8, float32 and mixed, two steps")
  parser.add_argument("--sizes", default="paper,demo")
  parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated, of: "
                      + ", ".join(CONFIGS))
  parser.add_argument("--onednn", default="on", help="on, off or on,off: TensorFlow's oneDNN kernels "
                      "in the timed subprocesses (off = Eigen, TensorFlow's default on AVX2 CPUs)")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--steps", type=int, default=10, help="timed steps per repeat")
  parser.add_argument("--repeats", type=int, default=3, help="timed fit calls")
  parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (tracing, XLA)")
  parser.add_argument("--matmul", type=int, default=4096, help="size of the peak-rate matmul")
  parser.add_argument("--profile", action="store_true",
                      help="also profile a paper-size step (forward/backward/Adam, each conv alone)")
  parser.add_argument("--pipeline_json", help="input_pipeline.py --json output, for the ratio")
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--size", default="paper", help=argparse.SUPPRESS)
  parser.add_argument("--config", default="float32", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    return profile_worker(args) if args.profile else worker(args)
  if args.quick:
    args.sizes, args.configs, args.batch = "demo", "float32,mixed bfloat16", 8
    args.steps, args.repeats, args.warmup, args.matmul = 2, 1, 1, 512
  started = time.perf_counter()
  configs = args.configs.split(",")
  unknown = [c for c in configs if c not in CONFIGS] + [s for s in args.sizes.split(",")
                                                        if s not in SIZES]
  onednn = args.onednn.split(",")
  unknown += [o for o in onednn if o not in ("on", "off")]
  if unknown:
    parser.error(f"unknown configuration, size or --onednn value: {unknown}")

  import tensorflow as tf
  cores = common.usable_cores()
  matmul32 = matmul_rate(args.matmul, "float32")
  matmul16 = matmul_rate(args.matmul, "bfloat16") if bf16_capable() else None
  mhz = clock_mhz()
  per_cycle = fp32_flop_per_cycle()
  theoretical = cores * mhz * 1e-3 * per_cycle if mhz else None
  print(common.machine_line())
  print(f"fp32 peak: {matmul32:,.0f} GFLOP/s measured ({args.matmul}^3 float32 matmul, best of 5)"
        + (f"; {theoretical:,.0f} GFLOP/s theoretical ({cores} cores x {mhz:,.0f} MHz x "
           f"{per_cycle} FLOP/cycle)" if theoretical else "")
        + (f"; bfloat16 matmul {matmul16:,.0f} GFLOP/s" if matmul16 else ""))
  peak = matmul32

  flop_rows, train_flops = [], {}
  for size in args.sizes.split(","):
    parts = flops_per_song(model_config(size), args.batch)
    forward = sum(f for f, _ in parts.values())
    train_flops[size] = sum(t for _, t in parts.values())
    graph = tf_graph_flops(model_config(size))
    audio_f, audio_t = parts["audio encoder"]
    flop_rows.append([size, f"{audio_f / 1e9:.3f}", f"{graph / 1e9:.3f}" if graph else "n/a",
                      f"{audio_t / 1e9:.3f}", f"{forward / 1e9:.3f}",
                      f"{train_flops[size] / 1e9:.3f}"])
  print("\nFLOPs per song (GFLOP), counted from the layer shapes; TensorFlow's graph count of the "
        f"audio encoder's convs and matmuls beside it (issue: {ISSUE_PAPER_GFLOP[0]} forward, "
        f"{ISSUE_PAPER_GFLOP[1]} forward + backward at paper size):")
  print(common.table(["size", "audio fwd", "audio fwd (TF count)", "audio fwd+bwd",
                      "model fwd", "model fwd+bwd"], flop_rows))

  pipeline = None
  if args.pipeline_json:
    with open(args.pipeline_json, encoding="utf-8") as f:
      measured = json.load(f)["cores"]
    pipeline = {int(c): v["dataset"]["songs_per_s"] for c, v in measured.items() if "dataset" in v}

  rows, results = [], {}
  bf16 = bf16_capable()
  for size in args.sizes.split(","):
    for config, kernels in [(c, o) for c in configs for o in onednn]:
      if CONFIGS[config][0] and not bf16:
        rows.append([size, config, kernels, "skipped: no AVX512_BF16/AMX or GPU"] + [""] * 7)
        continue
      print(f"running {size} size, {config}, oneDNN {kernels} ...", file=sys.stderr, flush=True)
      result = results[size, config, kernels] = run_child(args, size, config, onednn=kernels)
      if "error" in result:
        rows.append([size, config, kernels, f"failed: {result['error']}"] + [""] * 7)
        continue
      ran = "oneDNN" if result["onednn"] else "Eigen"
      first = results.get((size, config, onednn[0]), {})
      ratio = (f"{result['songs_per_s'] / first['songs_per_s']:.2f}x"
               if kernels != onednn[0] and "songs_per_s" in first else "1.00x")
      gflops = result["songs_per_s"] * train_flops[size] / 1e9
      row = [size, config, ran, f"{result['songs_per_s']:,.1f}", ratio,
             f"{result['step_s'] * 1e3:,.0f}",
             f"{result['first_step_s']:,.1f}", f"{result['peak_rss_gb']:.2f}", f"{gflops:,.0f}",
             f"{100 * gflops / peak:.0f} %"]
      row.append(f"{100 * gflops / theoretical:.0f} %" if theoretical else "n/a")
      if pipeline:
        row.append(f"{pipeline[max(pipeline)] / result['songs_per_s']:,.0f}x")
      rows.append(row)
  headers = ["size", "configuration", "kernels", "songs/s", f"vs oneDNN {onednn[0]}", "ms/step", "first step s", "peak RSS GB",
             "GFLOP/s", "of measured fp32 peak", "of theoretical fp32 peak"]
  if pipeline:
    headers.append(f"pipeline ({max(pipeline)} cores) / step")
  print(f"\nTraining step, Contr_CF-G, batch {args.batch}, {cores} cores: median of "
        f"{args.steps * args.repeats} steps after {args.warmup} warm-up; GFLOP/s from the "
        "fwd+bwd FLOPs above")
  print(common.table(headers, rows))
  for size in [s for s in args.sizes.split(",") if s == "paper"]:
    result = results.get((size, "float32", onednn[0]), {})
    if "songs_per_s" in result:
      epoch = 520_000 / result["songs_per_s"]
      print(f"{size} size, float32: {result['songs_per_s']:,.1f} songs/s = "
            f"{result['songs_per_s'] / PAPER_SONGS_PER_S:.2f}x the paper's V100 "
            f"(~{PAPER_SONGS_PER_S:.0f} songs/s); an epoch of 520k songs in {epoch / 3600:.1f} h")

  if args.profile:
    print("running the profile ...", file=sys.stderr, flush=True)
    for config in [c for c in configs if not CONFIGS[c][1] and (bf16 or not CONFIGS[c][0])]:
      profile = run_child(args, "paper", config, profile=True)
      if "error" in profile:
        print(f"profile of {config} failed: {profile['error']}")
        continue
      print(f"\nProfile, paper size, {config}, batch {args.batch}: median seconds")
      step = profile["rows"][-1][1]
      print(common.table(["part", "s", "share of the step"],
                         [[name, f"{s:.3f}", f"{100 * s / step:.0f} %"] for name, s in profile["rows"]]))
      layer_rows = []
      for layer in profile["layers"]:
        cells = [layer["layer"], f"{layer['gflop']:.1f}"]
        for name in ("forward", "input grad", "filter grad"):
          s = layer["seconds"].get(name)
          cells += ["-", "-"] if s is None else [f"{s * 1e3:.0f}", f"{layer['gflop'] / s:,.0f}"]
        layer_rows.append(cells)
      total_conv = sum(sum(layer["seconds"].values()) for layer in profile["layers"])
      print(common.table(["conv (batch " + str(args.batch) + ")", "GFLOP fwd", "fwd ms", "GFLOP/s",
                          "input grad ms", "GFLOP/s", "filter grad ms", "GFLOP/s"], layer_rows))
      print(f"the convolutions alone: {total_conv:.3f} s of the {step:.3f} s step "
            f"({100 * total_conv / step:.0f} %)")
  print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
  main()
