"""--runner and the leftover command-line flags -> Beam PipelineOptions; running a pipeline safely.

Every flag on a tfcmir command line that is not a tfcmir flag is a Beam pipeline option
(tfcmir.flags.run_main(..., pipeline_options=True) leaves them in argv): --direct_num_workers=2
--direct_running_mode=multi_processing locally; --project, --region, --temp_location, --setup_file for
Dataflow; --flink_master, --environment_type for Flink. A misspelt flag that Beam does not know either
is an error here, as absl would make it without --runner (Beam itself only warns and drops it).

`run` is the one way tfcmir runs a pipeline. On the DirectRunner in multi_processing mode, a worker
process that dies (killed, out of memory, a crash in native code) leaves the runner waiting forever for
its bundle; `run` sees the worker's exit and stops with a message, and --beam_timeout_s bounds any run.
"""

from __future__ import annotations

import logging
import re
import threading
import time

from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineState, create_runner

from tfcmir.beam import INSTALL_HINT
from tfcmir.errors import InputError

# How long a run may go on after a worker thread failed before it is declared dead: the runner's other
# threads fail in a burst when a worker goes, and a run that was finishing anyway can still finish.
GRACE_S = 5.0


class PipelineFailed(InputError):
  """A Beam run that failed or was stopped; an InputError so entry points print it as one line."""


def split_args(argv):
  """argv (program name first) -> (positional arguments, Beam pipeline flags)."""
  positional = [a for a in argv[1:] if not a.startswith("-")]
  return positional, [a for a in argv[1:] if a.startswith("-")]


def pipeline_options(runner, args):
  """`--runner` and Beam flags (['--name=value', ...]) -> PipelineOptions, checked.

  Raises:
    InputError: an unknown runner, a runner whose extra is missing, or a flag Beam does not know.
  """
  try:
    create_runner(runner)
  except ValueError as err:
    raise InputError(f"--runner={runner}: {str(err).splitlines()[0]}") from err
  except ImportError as err:
    raise InputError(f"--runner={runner}: {err} (tfcmir's own part: {INSTALL_HINT})") from err
  known = set(PipelineOptions([]).get_all_options())
  given = PipelineOptions(list(args)).get_all_options(retain_unknown_options=True)
  unknown = sorted(set(given) - known)
  if unknown:
    raise InputError(f"unknown flag(s) {', '.join('--' + n for n in unknown)}: neither a tfcmir flag "
                     "nor an Apache Beam pipeline option")
  defaults = []
  if not any(a.startswith("--default_sdk_harness_log_level") for a in args):
    # Beam's workers log every bundle at INFO; problems still show as warnings.
    defaults.append("--default_sdk_harness_log_level=WARNING")
  return PipelineOptions([f"--runner={runner}", *defaults, *args])


def runner_name(options):
  return options.get_all_options()["runner"]


class _ThreadErrors:
  """Collects uncaught exceptions of any thread (Beam's worker handlers) while a run is watched."""

  def __init__(self):
    self.errors = []
    self._previous = None

  def __enter__(self):
    self._previous = threading.excepthook
    threading.excepthook = self._hook
    return self

  def _hook(self, args):
    self.errors.append(f"{args.exc_type.__name__}: {args.exc_value}".strip())
    logging.debug("thread %s failed", args.thread.name if args.thread else "?",
                  exc_info=(args.exc_type, args.exc_value, args.exc_traceback))

  def __exit__(self, *exc):
    threading.excepthook = self._previous


def _worker_exit(errors):
  """Beam's 'Worker subprocess exited with return code N' among `errors` -> words, or None."""
  for error in errors:
    match = re.search(r"exited with return code (-?\d+)", error)
    if match:
      code = int(match.group(1))
      # The worker runs under `sh -c`: a signal shows as 128 + N (or -N without the shell).
      signal = -code if code < 0 else code - 128 if code > 128 else None
      if signal == 9:
        return "killed by SIGKILL (signal 9: the out-of-memory killer, or someone killed it)"
      if signal:
        return f"killed by signal {signal}"
      return f"exited with code {code}"
  return None


def _worker_lost(how):
  return PipelineFailed(
      f"a Beam worker process {how}; the run is stopped (the DirectRunner does not re-run a lost "
      "worker's work). The outputs are incomplete: run the command again, with more memory or "
      "fewer --direct_num_workers if it was killed")


def _input_error(error):
  """The InputError a DoFn raised (bad input under --strict, a bad export), or None.

  In-process runners re-raise it; the others wrap it in their own exception, its traceback flattened
  into the message, whose last 'InputError: ...' line is what the user needs.
  """
  text = str(error)
  found = re.findall(r"InputError: (.+?)(?: \[while running '[^']*'\])?$", text, flags=re.MULTILINE)
  if isinstance(error, InputError) or found:
    return InputError(re.sub(r" \[while running '[^']*'\]$", "", found[-1] if found else text))
  return None


def _failed(error):
  lines = [line for line in str(error).strip().splitlines() if line.strip()]
  return PipelineFailed(f"the Beam pipeline failed: {lines[-1] if lines else type(error).__name__}")


def _cancel(box):
  result = box.get("result")
  if result is not None:
    try:
      result.cancel()  # remote runners: stop the job, not only our wait for it
    except Exception:  # noqa: BLE001  (the DirectRunner cannot cancel; we are failing anyway)
      pass


def run(pipeline, timeout_s=0):
  """Runs `pipeline` to the end; returns its PipelineResult.

  The run happens in a daemon thread while this one watches: a worker process that dies, or a run
  past `timeout_s` (0: no limit), raises PipelineFailed instead of hanging, and the daemon thread
  cannot keep the process alive after the caller exits.

  Raises:
    InputError: a DoFn met bad input it must not skip (e.g. --strict).
    PipelineFailed: the run failed, lost a worker, or timed out.
  """
  box = {}
  done = threading.Event()

  def target():
    try:
      box["result"] = pipeline.run()
      box["result"].wait_until_finish()  # the DirectRunner has finished already; others have not
    except BaseException as err:  # noqa: BLE001  (handed to the watching thread)
      box["error"] = err
    finally:
      done.set()

  started = time.monotonic()
  first_error = None
  with _ThreadErrors() as thread_errors:
    threading.Thread(target=target, name="tfcmir-beam-run", daemon=True).start()
    while not done.wait(0.25):
      now = time.monotonic()
      if thread_errors.errors and first_error is None:
        first_error = now
      if first_error is not None and now - first_error > GRACE_S:
        # The usual way a lost worker shows: the runner waits for its bundle forever.
        _cancel(box)
        raise _worker_lost(_worker_exit(thread_errors.errors) or f"was lost "
                           f"({thread_errors.errors[0]})")
      if timeout_s and now - started > timeout_s:
        _cancel(box)
        raise PipelineFailed(f"the Beam run did not finish within --beam_timeout_s={timeout_s} s and "
                             "was stopped; raise --beam_timeout_s if it is only slow")
    if "error" in box:
      error = box["error"]
      bad_input = _input_error(error)
      if bad_input is not None:
        raise bad_input from error
      # Or the runner fails on the closed channel ('Channel closed prematurely'), maybe before the
      # worker's exit code is in: give it a moment, then say what happened to the worker.
      deadline = time.monotonic() + 2
      while _worker_exit(thread_errors.errors) is None and time.monotonic() < deadline:
        time.sleep(0.1)
      if _worker_exit(thread_errors.errors):
        raise _worker_lost(_worker_exit(thread_errors.errors)) from error
      raise _failed(error) from error
  for error in thread_errors.errors:
    logging.warning("a Beam thread failed during a run that still finished: %s", error)
  state = box["result"].state
  if state != PipelineState.DONE:
    raise PipelineFailed(f"the Beam run ended in state {state}, not DONE")
  return box["result"]


def counter(result, name):
  """The committed (else attempted) value of a Beam counter named `name`, or None if not reported."""
  from apache_beam.metrics.metric import MetricsFilter

  try:
    counters = result.metrics().query(MetricsFilter().with_name(name))["counters"]
  except (NotImplementedError, AttributeError, KeyError):
    return None
  if not counters:
    return 0
  values = []
  for c in counters:
    try:
      values.append(c.committed if c.committed is not None else c.attempted)
    except Exception:  # noqa: BLE001  (some runners do not support committed metrics)
      values.append(c.attempted)
  return sum(v or 0 for v in values)
