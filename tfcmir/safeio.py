"""Safe writes, shared by every command: nothing half-written, nothing removed that tfcmir did not write.

  atomic_write / write_bytes / write_json   a file appears complete or not at all (temporary sibling,
                                            fsync, os.replace)
  atomic_path                               the same, for writers that want a path (Keras, TensorFlow)
  sha256_file                               the checksum every manifest records
  check_ours                                refuse a folder that holds files but no manifest of ours
  replace_folder                            a complete new folder swapped in for the old one: a kill
                                            at any moment leaves the old or the new one, whole
  clean_leftovers                           temporary files and folders of killed runs (dead PIDs)

Temporary names carry the writer's PID (`.NAME.tmp-PID`, `FOLDER.partial-PID`, `FOLDER.old-PID`), so a
later run can tell a leftover of a dead process from the work of a live one.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import json
import os
import re
import shutil

from tfcmir.errors import InputError

WRITTEN_BY = "tfcmir"  # the field every manifest of ours carries: {"written_by": "tfcmir", ...}
_TEMP_FILE = re.compile(r"^\..+\.tmp-(\d+)(\.[A-Za-z0-9.]+)?$")
_RENAME_EXCHANGE = 2  # linux/fs.h


def _temporary_name(path):
  # The extension stays last: Keras insists that weights files end in ".weights.h5".
  directory, name = os.path.split(path)
  for keep in (".weights.h5", ".tfrecord", ".npy", ".npz", ".json", ".h5"):
    if name.endswith(keep) and len(name) > len(keep):
      return os.path.join(directory, f".{name[:-len(keep)]}.tmp-{os.getpid()}{keep}")
  return os.path.join(directory, f".{name}.tmp-{os.getpid()}")


def _fsync(path):
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


@contextlib.contextmanager
def atomic_path(path, temporary=None):
  """Yields a temporary path next to `path`; renamed to `path` (after fsync) if the block succeeds.

  `temporary`: a name of the caller's own instead of `.NAME.tmp-PID` (a shard's `.NAME.partial`).
  """
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  temporary = temporary or _temporary_name(path)
  try:
    yield temporary
    if os.path.isfile(temporary):
      _fsync(temporary)
    os.replace(temporary, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(temporary)
    raise


def atomic_write(path, write, text=False):
  """Calls write(file object) on a temporary sibling of `path`, then renames it to `path`."""
  with atomic_path(path) as temporary:
    with open(temporary, "w" if text else "wb", **({"encoding": "utf-8", "newline": ""} if text
                                                     else {})) as f:
      write(f)


def write_bytes(path, data, mode=0o644):
  with atomic_path(path) as temporary:
    with open(temporary, "wb") as f:
      f.write(data)
    os.chmod(temporary, mode)


def write_text(path, text):
  atomic_write(path, lambda f: f.write(text), text=True)


def write_json(path, obj, indent=1, **kwargs):
  atomic_write(path, lambda f: json.dump(obj, f, indent=indent, **kwargs), text=True)


def read_json(path):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def sha256_chunks(chunks):
  """The sha256 hex digest of an iterable of bytes or str (str as UTF-8): every checksum and
  fingerprint of the project is this one function."""
  h = hashlib.sha256()
  for chunk in chunks:
    h.update(chunk.encode() if isinstance(chunk, str) else chunk)
  return h.hexdigest()


def sha256_file(path):
  with open(path, "rb") as f:
    return sha256_chunks(iter(lambda: f.read(1 << 22), b""))


def _is_ours(folder, manifests):
  for name in manifests:
    path = os.path.join(folder, name)
    if os.path.isfile(path):
      try:
        return isinstance(read_json(path), dict)
      except (OSError, ValueError):
        return False
  return False


def check_ours(folder, manifests, what):
  """Raises InputError if `folder` holds files but none of `manifests` (JSON files tfcmir writes).

  A missing or empty folder is fine. `what` names the command's output in the message.
  """
  if not os.path.isdir(folder):
    if os.path.exists(folder):
      raise InputError(f"{folder}: is a file, not a folder; choose a folder for the {what}")
    return
  entries = [e for e in os.listdir(folder) if not _leftover(folder, e)]
  if entries and not _is_ours(folder, manifests):
    raise InputError(f"{folder}: holds files tfcmir did not write (e.g. {sorted(entries)[0]}) and no "
                     f"{manifests[0]}; choose an empty or new folder for the {what}")


def _pid_alive(pid):
  if pid == os.getpid():
    return True
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _leftover(directory, name, prefix=None):
  """The dead writer's PID if `name` is a temporary file or folder of a killed run, else None."""
  match = _TEMP_FILE.match(name)
  if not match and prefix is not None:
    match = re.match(rf"^{re.escape(prefix)}\.(?:partial|old)-(\d+)$", name)
  if match and not _pid_alive(int(match.group(1))):
    return int(match.group(1))
  return None


def clean_leftovers(folder):
  """Removes what killed runs left: `.NAME.tmp-PID` files inside `folder`, `FOLDER.partial-PID` next
  to it; an `FOLDER.old-PID` is put back if the run died between the two renames of the swap."""
  folder = os.path.normpath(folder)
  parent, base = os.path.split(os.path.abspath(folder))
  if os.path.isdir(parent):
    for name in sorted(os.listdir(parent)):
      if name.startswith(base + ".") and _leftover(parent, name, base) is not None:
        path = os.path.join(parent, name)
        if name.startswith(base + ".old-") and not os.path.exists(folder):
          os.rename(path, folder)  # the old one is the only whole copy
        else:
          shutil.rmtree(path, ignore_errors=True)
  if os.path.isdir(folder):
    for name in os.listdir(folder):
      if _TEMP_FILE.match(name) and _leftover(folder, name) is not None:
        with contextlib.suppress(OSError):
          os.remove(os.path.join(folder, name))


def partial_folder(out):
  """A fresh, empty `OUT.partial-PID` next to `out`, after cleaning the leftovers of killed runs."""
  clean_leftovers(out)
  partial = f"{os.path.normpath(out)}.partial-{os.getpid()}"
  shutil.rmtree(partial, ignore_errors=True)
  os.makedirs(partial)
  return partial


def _exchange(a, b):
  """Atomically swaps two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    renameat2 = libc.renameat2
  except (OSError, AttributeError):
    return False
  renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
  at_fdcwd = -100
  return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0


def replace_folder(partial, out, ours=()):
  """Moves the complete folder `partial` to `out`, replacing ours there without a moment when no
  whole copy exists.

  Top-level entries of the old folder that the new one lacks and that are not named in `ours` (what
  the old folder's manifest says tfcmir wrote) are files of others: they are copied into the new one
  first, so they survive. Then the two are swapped (one atomic rename-exchange
  on Linux; elsewhere the old is renamed to OUT.old-PID and the new one in, and clean_leftovers puts
  the old back if a kill falls between the two) and the old one is removed.
  """
  out = os.path.normpath(out)
  if not os.path.exists(out):
    os.rename(partial, out)
    return
  for name in os.listdir(out):
    source, target = os.path.join(out, name), os.path.join(partial, name)
    if name not in ours and not os.path.lexists(target) and _leftover(out, name) is None:
      if os.path.isdir(source) and not os.path.islink(source):
        shutil.copytree(source, target, symlinks=True)
      else:
        shutil.copy2(source, target, follow_symlinks=False)
  if _exchange(partial, out):
    shutil.rmtree(partial)  # now the old one
    return
  old = f"{out}.old-{os.getpid()}"
  os.rename(out, old)
  os.rename(partial, out)
  shutil.rmtree(old)


def remove_ours(folder, names):
  """Removes the named files and folders of `folder` (ours), leaving everything else."""
  for name in names:
    path = os.path.join(folder, name)
    if os.path.isdir(path) and not os.path.islink(path):
      shutil.rmtree(path)
    elif os.path.lexists(path):
      os.remove(path)
