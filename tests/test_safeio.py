"""tfcmir.safeio: atomic files and folders, ownership checks, leftovers of killed runs."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tfcmir import safeio
from tfcmir.errors import InputError


def _dead_pid():
  child = subprocess.Popen([sys.executable, "-c", "pass"])
  child.wait()
  return child.pid


def test_atomic_write_leaves_the_old_file_on_error(tmp_path):
  path = tmp_path / "a.json"
  safeio.write_json(path, {"v": 1})

  def fail(f):
    f.write("{half")
    raise RuntimeError("killed")
  with pytest.raises(RuntimeError):
    safeio.atomic_write(str(path), fail, text=True)
  assert json.loads(path.read_text()) == {"v": 1}
  assert os.listdir(tmp_path) == ["a.json"]


def test_atomic_path_keeps_the_extension_keras_wants(tmp_path):
  with safeio.atomic_path(str(tmp_path / "best.weights.h5")) as temporary:
    assert temporary.endswith(".weights.h5") and os.path.basename(temporary).startswith(".best.tmp-")
    open(temporary, "wb").write(b"x")
  assert (tmp_path / "best.weights.h5").read_bytes() == b"x"


def test_sha256_file(tmp_path):
  (tmp_path / "f").write_bytes(b"abc")
  assert safeio.sha256_file(tmp_path / "f") == (
      "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")


def test_check_ours_refuses_a_folder_of_others(tmp_path):
  safeio.check_ours(str(tmp_path / "missing"), ("m.json",), "output")
  safeio.check_ours(str(tmp_path), ("m.json",), "output")  # empty
  (tmp_path / "thesis.tex").write_text("years of work")
  with pytest.raises(InputError, match=r"thesis.tex.*did not write|did not write.*thesis.tex"):
    safeio.check_ours(str(tmp_path), ("m.json",), "output")
  safeio.write_json(tmp_path / "m.json", {"written_by": "tfcmir"})
  safeio.check_ours(str(tmp_path), ("m.json",), "output")


def test_replace_folder_keeps_files_of_others(tmp_path):
  out, new = tmp_path / "out", tmp_path / "new"
  for folder, value in ((out, "old"), (new, "new")):
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "model").write_text(value)
  (out / "notes.txt").write_text("mine")
  safeio.replace_folder(str(new), str(out))
  assert (out / "sub" / "model").read_text() == "new"
  assert (out / "notes.txt").read_text() == "mine"
  assert sorted(os.listdir(tmp_path)) == ["out"]


def test_replace_folder_without_exchange_recovers_from_a_kill(tmp_path, monkeypatch):
  out, new = tmp_path / "out", tmp_path / "out.partial-1"
  out.mkdir()
  new.mkdir()
  (out / "m").write_text("old")
  (new / "m").write_text("new")
  monkeypatch.setattr(safeio, "_exchange", lambda a, b: False)
  renames = []
  real_rename = os.rename

  def rename_then_die(a, b):
    if renames:
      raise KeyboardInterrupt  # killed between the two renames
    renames.append(a)
    real_rename(a, b)
  monkeypatch.setattr(os, "rename", rename_then_die)
  with pytest.raises(KeyboardInterrupt):
    safeio.replace_folder(str(new), str(out))
  monkeypatch.setattr(os, "rename", real_rename)
  assert not out.exists()
  # The next run's cleanup, as if the writer's PID were dead: the old export comes back.
  old = tmp_path / f"out.old-{os.getpid()}"
  os.rename(old, tmp_path / f"out.old-{_dead_pid()}")
  os.rename(new, tmp_path / f"out.partial-{_dead_pid()}")
  safeio.clean_leftovers(str(out))
  assert (out / "m").read_text() == "old"
  assert sorted(os.listdir(tmp_path)) == ["out"]


def test_clean_leftovers_spares_live_writers(tmp_path):
  out = tmp_path / "out"
  out.mkdir()
  dead, live = _dead_pid(), os.getpid()
  for pid in (dead, live):
    (tmp_path / f"out.partial-{pid}").mkdir()
    (out / f".index.tmp-{pid}.csv").write_text("")
  (out / ".hidden.tmp-notes").write_text("not ours")
  safeio.clean_leftovers(str(out))
  assert sorted(os.listdir(tmp_path)) == ["out", f"out.partial-{live}"]
  assert sorted(os.listdir(out)) == [".hidden.tmp-notes", f".index.tmp-{live}.csv"]


KILLED_WRITER = textwrap.dedent("""
    import os, sys
    from tfcmir import safeio
    out = sys.argv[1]
    for i in range(10**6):
      partial = safeio.partial_folder(out)
      data = os.urandom(1 << 20)
      with open(os.path.join(partial, "model.bin"), "wb") as f:
        f.write(data)
      safeio.write_json(os.path.join(partial, "manifest.json"),
                        {"sha256": safeio.sha256_file(os.path.join(partial, "model.bin"))})
      safeio.replace_folder(partial, out)
      print(i, flush=True)
""")


def test_a_kill_at_any_moment_leaves_a_whole_folder(tmp_path):
  """SIGKILL a writer that replaces a folder in a loop, 12 times at random moments (~10 s)."""
  out = str(tmp_path / "export")
  rng = __import__("random").Random(0)
  env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(safeio.__file__)))
  for _ in range(12):
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, out], stdout=subprocess.PIPE,
                              env=env)
    writer.stdout.readline()  # at least one complete folder exists
    time.sleep(rng.uniform(0, 0.3))
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=10)
    writer.stdout.close()
    safeio.clean_leftovers(out)
    manifest = json.loads(open(os.path.join(out, "manifest.json")).read())
    assert safeio.sha256_file(os.path.join(out, "model.bin")) == manifest["sha256"]
    assert sorted(os.listdir(tmp_path)) == ["export"]


def test_replace_folder_drops_what_the_old_manifest_lists(tmp_path):
  out, new = tmp_path / "out", tmp_path / "new"
  (out / "essentia").mkdir(parents=True)  # the old export's, absent from the new one
  (out / "notes.txt").write_text("mine")
  new.mkdir()
  safeio.replace_folder(str(new), str(out), ours={"essentia"})
  assert sorted(os.listdir(out)) == ["notes.txt"]
