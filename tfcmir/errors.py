"""The two ways bad input is reported, shared by every module: `InputError` stops a command with one
line naming the file and the problem (tfcmir.flags.run_main prints it and exits 1); `Problems` collects
what a reader may skip (counts per kind for the manifest, the first few messages), or stops when strict.
"""

from __future__ import annotations

import collections

from absl import logging


class InputError(ValueError):
  """Bad input data; the message names the file or id and the problem."""


class Problems:
  """Collects bad-input reports: counts per kind, the first few messages, or an error when strict."""

  MAX_LOGGED = 10  # per kind; the rest are counted only, so a bad dataset does not flood the log

  def __init__(self, strict=False):
    self.strict = strict
    self.counts = collections.Counter()
    self.examples = collections.defaultdict(list)

  def report(self, kind, message, outcome="skipped"):
    """Records one problem of `kind` ('missing_mel', 'bad_mel', ...); raises InputError if strict.

    `outcome` says what became of the input in the log ('skipped', 'dropped (song kept)', ...).
    """
    if self.strict:
      raise InputError(message)
    self.counts[kind] += 1
    if len(self.examples[kind]) < self.MAX_LOGGED:
      self.examples[kind].append(message)
      logging.warning("%s (%s; --strict stops here)", message, outcome)

  def note(self, kind, message):
    """Counts an expected gap in the data (e.g. a Melon song without a mel file): never fatal."""
    self.counts[kind] += 1
    if len(self.examples[kind]) < self.MAX_LOGGED:
      self.examples[kind].append(message)

  def merge(self, counts, examples):
    for kind, n in counts.items():
      self.counts[kind] += n
      room = self.MAX_LOGGED - len(self.examples[kind])
      self.examples[kind].extend(examples.get(kind, [])[:max(room, 0)])

  def to_json(self):
    return {"counts": dict(sorted(self.counts.items())),
            "examples": {k: v for k, v in sorted(self.examples.items()) if v}}
