"""Training settings that follow the size of the data: the defaults of `python -m tfcmir.train`.

The paper's values (batch 128, the 4.0M-parameter audio encoder, lr 1e-4, 100 epochs) are right for
Melon's 650k songs and wrong for a catalogue of a few hundred: one batch of 128 may exceed the whole
training split, and 4.0M parameters overfit it. `choose(n_train)` returns, for a training split of
`n_train` songs, each setting with the reason for it; tfcmir/train/cli.py uses a choice only where the
flag was not given (an explicit flag, on the command line or in a --flagfile, always wins).

The small end comes from the sweep on the real-music development set (209 training songs):
benchmarks/results/2026-12-03-small-catalogue-sweep.md; the widths between 2,000 and 100,000 songs
are interpolated. From `LARGE` training songs up every value is the paper's, so configs/melon.flags
(which sets no hyper-parameter) trains exactly the paper's model.
"""

from __future__ import annotations

import math

# The paper's setting (tfcmir/flags.py's defaults; tests/test_sizing.py checks that they agree).
PAPER = {"batch_size": 128, "conv_channels": (128, 128, 256, 256, 256, 256, 512), "hidden_dim": 512,
         "learning_rate": 1e-4, "lr_schedule": "constant", "epochs": 100, "early_stopping": 0}

LARGE = 100_000      # training songs from which every setting is the paper's (Melon: ~520k)
MIN_STEPS = 6        # batches per epoch the batch size leaves at least: on the development set batch
                     # 32 (6 steps) beat 16 (13 steps) on all three measures
MIN_BATCH = 16       # NT-Xent's negatives are the batch: fewer than 15 make a weak contrast
# Encoder width: (training songs below which it applies, fraction of the paper's channels, hidden).
# On the development set 1/8 (the demo's encoder) beat 1/4 and 1/16.
WIDTHS = ((2_000, 1 / 8, 256), (20_000, 1 / 4, 256), (LARGE, 1 / 2, 512))
SMALL = MIN_STEPS * PAPER["batch_size"]  # 768: below it the batch is smaller than the paper's, and
                                         # a higher learning rate and more epochs make up the steps
SMALL_LR = 3e-4      # the sweep: +10 points of 1-NN over the paper's 1e-4 at batch 32; 1e-3 mixed
TARGET_STEPS = 2_400  # optimizer steps the epoch cap allows (the sweep's best epochs came after
                      # 640-1,040 steps, and early stopping ended every run)
MAX_EPOCHS = 1_000
PATIENCE = 20        # epochs without a better validation loss before stopping (small catalogues)
MID_PATIENCE = 10    # between SMALL and LARGE, where epochs are longer


def _pow2_floor(x):
  return 2 ** int(math.floor(math.log2(x))) if x >= 1 else 1


def batch_size(n_train):
  """The largest power of two up to the paper's 128 that leaves MIN_STEPS batches an epoch (not
  under MIN_BATCH while the split holds two batches of it)."""
  batch = min(PAPER["batch_size"], _pow2_floor(n_train / MIN_STEPS))
  batch = max(batch, MIN_BATCH)
  while batch > 2 and batch * 2 > n_train:
    batch //= 2
  return max(batch, 2)


def choose(n_train):
  """{setting: (value, reason)} for a training split of `n_train` songs."""
  if n_train >= LARGE:
    why = f"{n_train} training songs >= {LARGE}: the paper's value (Melon scale)"
    return {name: (value, why) for name, value in PAPER.items()}
  chosen = {}
  batch = batch_size(n_train)
  steps = max(n_train // batch, 1)
  chosen["batch_size"] = (batch, f"largest power of 2 in {MIN_BATCH}..128 leaving >= {MIN_STEPS} steps "
                                 f"an epoch where it can ({n_train} songs -> {steps} steps)")
  limit, scale, hidden = next(w for w in WIDTHS if n_train < w[0])
  channels = tuple(max(8, int(c * scale)) for c in PAPER["conv_channels"])
  why = f"< {limit} training songs: 1/{round(1 / scale)} of the paper's channels (fewer parameters to fit)"
  chosen["conv_channels"] = (channels, why)
  chosen["hidden_dim"] = (hidden, why)
  epochs = min(MAX_EPOCHS, max(PAPER["epochs"], math.ceil(TARGET_STEPS / steps)))
  chosen["epochs"] = (epochs, f"at least the paper's {PAPER['epochs']}, and {TARGET_STEPS} steps "
                              f"({steps} an epoch); early stopping ends it sooner")
  if n_train < SMALL:
    chosen["learning_rate"] = (SMALL_LR, f"< {SMALL} training songs (a batch under 128): the sweep's best")
    chosen["lr_schedule"] = ("constant", "the sweep: cosine decay scored lower (1-NN)")
    chosen["early_stopping"] = (PATIENCE, f"stop after {PATIENCE} epochs without a better validation "
                                          "loss; the best epoch's weights are the run's")
  else:
    chosen["learning_rate"] = (PAPER["learning_rate"], "the paper's value, with the paper's batch")
    chosen["lr_schedule"] = ("constant", "the paper's")
    chosen["early_stopping"] = (MID_PATIENCE, f"< {LARGE} training songs: stop after {MID_PATIENCE} "
                                              "epochs without a better validation loss")
  return {name: chosen[name] for name in PAPER}  # in the printed table's order


def resolve(chosen, given):
  """Rows (setting, value, source, reason): `given` {setting: value} (the flags set explicitly) win
  over `chosen` (choose's result)."""
  rows = []
  for name, (value, why) in chosen.items():
    if name in given:
      rows.append((name, given[name], "flag", "set explicitly"))
    elif name == "early_stopping" and "epochs" in given:
      rows.append((name, PAPER[name], "auto", "--epochs given: every epoch runs (as the paper's)"))
    else:
      rows.append((name, value, "auto", why))
  return rows


def format_table(rows, n_train):
  """The one table a run prints: what it trains with, and why."""
  def show(value):
    return ",".join(str(v) for v in value) if isinstance(value, (tuple, list)) else f"{value:g}" \
        if isinstance(value, float) else str(value)
  cells = [(name, show(value), source, why) for name, value, source, why in rows]
  widths = [max(len(r[i]) for r in cells + [("setting", "value", "source", "why")]) for i in range(3)]
  lines = [f"training settings for {n_train} training songs (auto: chosen by tfcmir/train/sizing.py; "
           "any flag given wins):"]
  for row in [("setting", "value", "source", "why")] + cells:
    lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(row[:3], widths)) + "  " + row[3])
  return "\n".join(lines)
