"""A real-music development set, rebuilt by anyone from free Debian packages: a labelled catalogue.

    python benchmarks/devset.py --out=DIR [--debs=DIR] [--packages=A,B] [--clips_per_track=3] [--seed=0]
    python benchmarks/devset.py --quick        # offline smoke test (CI): a generated package tree

Downloads five free game-music packages from Debian (`apt-get download`, no root needed; a .deb
already in --debs is reused, so a rebuild can be offline), unpacks them (`dpkg-deb -x`), and cuts each
music track of at least 35 s into up to --clips_per_track 30-second clips, evenly spaced over the
track, decoded with tfcmir.audio.load_audio (mono, 16 kHz: what the front end reads) and written as
FLAC. Clips quieter than -50 dBFS RMS are left out. It writes, under --out:

  music/SPLIT/PACKAGE/TRACK.cN.flac   the clips, SPLIT train or test
  songs.csv                     every clip: path (relative to music/), genres, track, split, package,
                                source, start_s, title
  playlists/*.m3u               playlists of whole tracks (all their clips), drawn mostly within a style
  train/songs.csv               the training tracks' clips, paths relative to music/train/: with
  train/playlists/*.m3u         the playlists less the held-out tracks, what tfcmir.prepare reads
  LICENSES.md, licenses/        each package's version and the licence of every source track, and the
                                package's own copyright file
  devset.json                   the packages (version, sha256 of the .deb), the options and the counts

Labels: two-level genres, the style first (one style per package: the game's soundtrack) and, where
the package groups its music, a finer genre ('SuperTux|SuperTux forest'). `python -m tfcmir.evaluate
--task=catalogue` takes the first genre as the label.

Split by track, never by clip: per style, a seeded quarter of the tracks (at least one) is held out,
and the `split` column says `train` or `test` for every clip of a track. Held-out tracks are absent from
train/, so a model trained on train/ has never heard them. tfcmir.prepare splits train/ again, by
clip, into its own train/val/test; that split only serves training's validation loss.

Deterministic: the same package versions and options give the same files (tracks sorted, every choice
from one seeded generator). Packages the project's fixtures and an independent check use are not here:
hedgewars-data, singularity-music, warzone2100-music, wesnoth-*-music, fretsonfire-songs-*,
nexuiz-music, tecnoballz-data, tomatoes-data, fb-music-*.
"""

from __future__ import annotations

import argparse
import csv
import collections
import fnmatch
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import soundfile as sf

from tfcmir import safeio

SAMPLE_RATE = 16000  # tfcmir.audio.SAMPLE_RATE: the clips are stored as the front end reads them
CLIP_SECONDS = 30.0
MIN_TRACK_SECONDS = 35.0
QUIET_DBFS = -50.0


class Package(collections.namedtuple("Package", "name style pattern source fine_names")):
  """One Debian package of music.

  name: the Debian package. style: its coarse genre. pattern: a regex on a file's path inside the
  unpacked package (forward slashes) that selects the music; its group `track` names the track (unique
  within the package) and its optional group `fine` the finer genre. source: (installed prefix, source
  prefix) that turns an installed path into the path the copyright file's `Files:` patterns use.
  fine_names: optional {fine group: genre name}.
  """


PACKAGES = (
    Package("supertux-data", "SuperTux",
            r"usr/share/games/supertux2/music/(?P<track>(?P<fine>[^/]+)/[^/]+)\.ogg",
            ("usr/share/games/supertux2/", "data/"), None),
    Package("widelands-data", "Widelands", r"usr/share/games/widelands/data/music/(?P<track>[^/]+)\.ogg",
            ("usr/share/games/widelands/", ""), None),
    Package("freedroidrpg-data", "FreedroidRPG",
            r"usr/share/freedroidrpg/data/sound/music/(?P<track>[^/]+)\.ogg",
            ("usr/share/freedroidrpg/", ""), None),
    Package("hyperrogue-music", "HyperRogue",
            r"usr/share/hyperrogue/music/(?P<track>(?P<fine>hr3|hr-domina|hr-savino)-[^/]+)\.ogg",
            ("usr/share/hyperrogue/", ""),
            {"hr3": "Parrotte", "hr-domina": "Domina", "hr-savino": "Savino"}),  # the composers
    Package("drascula-music", "Drascula",
            r"usr/share/scummvm/drascula/audio/(?P<track>track[0-9]+)\.ogg",  # de/ en/ ... are copies
            ("usr/share/scummvm/drascula/", ""), None),
)
EXCLUDED = ("hedgewars-data", "singularity-music", "warzone2100-music", "wesnoth-*-music",
            "fretsonfire-songs-*", "nexuiz-music", "tecnoballz-data", "tomatoes-data", "fb-music-*")

Track = collections.namedtuple("Track", "track_id package style fine path source licence")


# --- Packages: download, unpack, licences. -------------------------------------------------------------

def _run(command, **kwargs):
  """subprocess.run that stops with one line when the tool is missing or fails."""
  try:
    return subprocess.run(command, check=True, **kwargs)
  except FileNotFoundError:
    sys.exit(f"{command[0]} not found: this script needs Debian's dpkg-deb, and apt-get unless the "
             f".deb files are already in --debs (from http://deb.debian.org/debian/pool/)")
  except subprocess.CalledProcessError as err:
    sys.exit(f"{' '.join(command)} failed with exit code {err.returncode}")


def download(name, deb_dir):
  """The .deb of package `name` in deb_dir, downloaded with apt-get unless one is already there."""
  found = sorted(glob.glob(os.path.join(deb_dir, f"{name}_*.deb")))
  if found:
    return found[-1]
  _run(["apt-get", "download", name], cwd=deb_dir)
  found = sorted(glob.glob(os.path.join(deb_dir, f"{name}_*.deb")))
  if not found:
    sys.exit(f"apt-get download {name} wrote no .deb into {deb_dir}")
  return found[-1]


def unpack(deb, dest):
  """Unpacks a .deb into dest (reused when complete); returns (dest, version)."""
  version = _run(["dpkg-deb", "-f", deb, "Version"], capture_output=True, text=True).stdout.strip()
  done = os.path.join(dest, ".unpacked")
  if not os.path.exists(done):
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest)
    _run(["dpkg-deb", "-x", deb, dest])
    open(done, "w").close()
  return dest, version


def read_dep5(path):
  """A machine-readable debian/copyright -> [(Files patterns, licence, copyright)], file order.

  Stanzas without Files (standalone License texts) are left out. A copyright file in free form gives
  one stanza for every file: its first `License:` line, or 'see the copyright file'.
  """
  with open(path, encoding="utf-8", errors="replace") as f:
    text = f.read()
  stanzas = []
  for block in re.split(r"\n\s*\n", text):
    fields, name = {}, None
    for line in block.splitlines():
      if line[:1] in (" ", "\t") and name:
        fields[name] += "\n" + line.strip()
      elif ":" in line:
        name, value = line.split(":", 1)
        name = name.strip().lower()
        fields[name] = value.strip()
    if "files" in fields:
      stanzas.append((fields["files"].split(), fields.get("license", "").split("\n")[0].strip(),
                      fields.get("copyright", "").split("\n")[0].strip()))
  if not stanzas:
    match = re.search(r"^License:\s*(.+)$", text, re.M)
    stanzas.append((["*"], match.group(1).strip() if match else "see the copyright file", ""))
  return stanzas


def licence_of(installed, source, stanzas):
  """The (licence, copyright) of an installed file: the last stanza whose pattern matches (DEP-5)."""
  prefix, replacement = source
  path = replacement + installed[len(prefix):] if installed.startswith(prefix) else installed
  found = ("unknown", "")
  for patterns, licence, holder in stanzas:
    if any(fnmatch.fnmatchcase(path, p) for p in patterns):
      found = (licence, holder)
  return found


def find_tracks(package, root):
  """The package's music files under its unpacked tree `root`, sorted, as Tracks."""
  copyright_file = os.path.join(root, "usr/share/doc", package.name, "copyright")
  stanzas = read_dep5(copyright_file) if os.path.exists(copyright_file) else [(["*"], "unknown", "")]
  pattern = re.compile(package.pattern)
  tracks = []
  for folder, dirs, files in os.walk(root):
    dirs.sort()
    for name in sorted(files):
      relative = os.path.relpath(os.path.join(folder, name), root).replace(os.sep, "/")
      match = pattern.fullmatch(relative)
      if not match:
        continue
      fine = match.groupdict().get("fine")
      if fine and package.fine_names:
        fine = package.fine_names.get(fine, fine)
      tracks.append(Track(f"{package.name}/{match.group('track')}", package.name, package.style,
                          f"{package.style} {fine}" if fine else None, os.path.join(root, relative),
                          relative, licence_of(relative, package.source, stanzas)))
  return sorted(tracks)


# --- Clips, split, playlists. --------------------------------------------------------------------------

def clip_starts(seconds, clip_seconds=CLIP_SECONDS, max_clips=3, min_seconds=MIN_TRACK_SECONDS):
  """Start times of up to max_clips non-overlapping clips, evenly spaced with equal gaps around them."""
  if seconds < max(min_seconds, clip_seconds):
    return []
  count = int(min(max_clips, seconds // clip_seconds))
  gap = (seconds - count * clip_seconds) / (count + 1)
  return [round(gap * (i + 1) + clip_seconds * i, 3) for i in range(count)]


def cut_clips(track, max_clips, clip_seconds=CLIP_SECONDS):
  """[(start seconds, mono 16 kHz float32 clip)] of one track; quiet clips left out."""
  from tfcmir import audio
  try:
    waveform = audio.load_audio(track.path, SAMPLE_RATE)
  except audio.AudioError as err:
    print(f"skipped {track.track_id}: {err.problem}", file=sys.stderr)
    return []
  clips = []
  for start in clip_starts(len(waveform) / SAMPLE_RATE, clip_seconds, max_clips):
    first = int(round(start * SAMPLE_RATE))
    clip = waveform[first:first + int(round(clip_seconds * SAMPLE_RATE))]
    rms = float(np.sqrt(np.mean(np.square(clip, dtype=np.float64))))
    if 20 * np.log10(max(rms, 1e-12)) >= QUIET_DBFS:
      clips.append((start, clip))
  return clips


def split_tracks(tracks, test_fraction, seed):
  """{track id: 'train' | 'test'}: per style, round(test_fraction * tracks) held out (at least one
  when the style has two tracks or more), chosen by a generator seeded from `seed` and the style."""
  by_style = collections.defaultdict(list)
  for track in sorted(tracks):
    by_style[track.style].append(track.track_id)
  split = {}
  for style, ids in sorted(by_style.items()):
    rng = np.random.default_rng([seed, int(safeio.sha256_chunks([style])[:8], 16)])
    held = max(1, int(round(test_fraction * len(ids)))) if len(ids) >= 2 else 0
    order = rng.permutation(len(ids))
    for rank, index in enumerate(order):
      split[ids[index]] = "test" if rank < held else "train"
  return split


def make_playlists(tracks, count, seed, within_style=0.8, sizes=(5, 10)):
  """`count` playlists of distinct tracks: each has a home style (styles in turn) and takes each track
  from it with probability within_style, else from the other styles. A track no playlist took joins
  the shortest playlist of its home style, so every track is in one at least.

  Returns:
    [[track id, ...]] in the order drawn.
  """
  rng = np.random.default_rng(seed)
  by_style = collections.defaultdict(list)
  for track in sorted(tracks):
    by_style[track.style].append(track.track_id)
  styles = sorted(by_style)
  everything = [t for s in styles for t in by_style[s]]
  playlists, homes = [], []
  for number in range(count):
    home = styles[number % len(styles)]
    others = [t for t in everything if t not in set(by_style[home])]
    size = int(rng.integers(sizes[0], sizes[1] + 1))
    chosen = []
    for _ in range(size):
      pool = by_style[home] if rng.random() < within_style or not others else others
      pool = [t for t in pool if t not in chosen]
      if pool:
        chosen.append(pool[int(rng.integers(len(pool)))])
    playlists.append(chosen)
    homes.append(home)
  covered = {t for p in playlists for t in p}
  style_of = {t.track_id: t.style for t in tracks}
  for track_id in everything:
    if track_id not in covered:
      candidates = [i for i, h in enumerate(homes) if h == style_of[track_id]] or range(len(playlists))
      shortest = min(candidates, key=lambda i: (len(playlists[i]), i))
      playlists[shortest].append(track_id)
  return playlists


# --- Writing the catalogue. ----------------------------------------------------------------------------

CSV_COLUMNS = ("path", "genres", "track", "split", "package", "source", "start_s", "title")


def clip_path(track_id, number):
  """A clip's path, relative to its split's folder: PACKAGE/TRACK.cN.flac."""
  return f"{track_id}.c{number}.flac"


def move_to_splits(music_dir, clips, split):
  """Moves each clip into music/SPLIT/; returns the clips with their new paths (relative to music/)."""
  moved = {}
  for track_id, parts in clips.items():
    moved[track_id] = []
    for relative, start in parts:
      target = f"{split[track_id]}/{relative}"
      os.renames(os.path.join(music_dir, *relative.split("/")),
                 os.path.join(music_dir, *target.split("/")))
      moved[track_id].append((target, start))
  return moved


def write_clips(tracks, music_dir, max_clips):
  """Cuts and writes every track's clips; returns {track id: [(relative path, start seconds)]}."""
  written = {}
  for number, track in enumerate(tracks, 1):
    clips = []
    for k, (start, clip) in enumerate(cut_clips(track, max_clips)):
      relative = clip_path(track.track_id, k)
      target = os.path.join(music_dir, *relative.split("/"))
      os.makedirs(os.path.dirname(target), exist_ok=True)
      sf.write(target, clip, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
      clips.append((relative, start))
    if clips:
      written[track.track_id] = clips
    print(f"[{number}/{len(tracks)}] {track.track_id}: {len(clips)} clips", file=sys.stderr)
  return written


def _genres(track):
  return "|".join(g for g in (track.style, track.fine) if g)


def write_csv(path, tracks, clips, split, keep, base=""):
  """songs.csv of the clips of the tracks `keep` accepts (a track id predicate); paths relative to
  music/`base`."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8", newline="") as f:
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for track in tracks:
      if track.track_id not in clips or not keep(track.track_id):
        continue
      for k, (relative, start) in enumerate(clips[track.track_id]):
        title = f"{os.path.basename(track.track_id)} ({k + 1}/{len(clips[track.track_id])})"
        writer.writerow([relative[len(base):], _genres(track), track.track_id, split[track.track_id],
                         track.package, track.source, f"{start:.3f}", title])


def write_playlists(folder, music_dir, playlists, clips, keep):
  """One .m3u per playlist: every clip of each of its tracks that `keep` accepts, paths relative to
  the playlist. Playlists left with fewer than two tracks are not written; returns how many were."""
  os.makedirs(folder, exist_ok=True)
  written = 0
  for number, tracks in enumerate(playlists):
    kept = [t for t in tracks if t in clips and keep(t)]
    if len(kept) < 2:
      continue
    lines = ["#EXTM3U"]
    for track_id in kept:
      for relative, _ in clips[track_id]:
        lines.append(os.path.relpath(os.path.join(music_dir, *relative.split("/")), folder)
                     .replace(os.sep, "/"))
    with open(os.path.join(folder, f"playlist_{number:03d}.m3u"), "w", encoding="utf-8") as f:
      f.write("\n".join(lines) + "\n")
    written += 1
  return written


def write_licences(out, packages, tracks, clips, roots):
  """LICENSES.md: per package, its version, licences and source tracks; licenses/PKG.copyright."""
  os.makedirs(os.path.join(out, "licenses"), exist_ok=True)
  lines = ["# Licences of the development set",
           "",
           "Every clip is cut from a track of a Debian package; each package's own copyright file is in",
           "licenses/. The licence of each track is that of the copyright file's last `Files:` stanza",
           "matching it.", ""]
  for package, version in packages:
    copyright_file = os.path.join(roots[package.name], "usr/share/doc", package.name, "copyright")
    if os.path.exists(copyright_file):
      shutil.copyfile(copyright_file, os.path.join(out, "licenses", f"{package.name}.copyright"))
    used = [t for t in tracks if t.package == package.name and t.track_id in clips]
    licences = collections.Counter(t.licence[0] for t in used)
    lines += [f"## {package.name} {version}", "",
              f"Style {package.style}; {len(used)} tracks, "
              f"{sum(len(clips[t.track_id]) for t in used)} clips; licences: "
              + ", ".join(f"{name} ({n} tracks)" for name, n in sorted(licences.items())), "",
              "| source file | licence | copyright |", "|---|---|---|"]
    lines += [f"| {t.source} | {t.licence[0]} | {t.licence[1]} |" for t in used]
    lines.append("")
  with open(os.path.join(out, "LICENSES.md"), "w", encoding="utf-8") as f:
    f.write("\n".join(lines))


def build(packages, roots, out, clips_per_track=3, test_fraction=0.25, playlists=60, seed=0):
  """Writes the catalogue of the unpacked packages into `out`; returns a summary dict.

  Args:
    packages: [(Package, version)].
    roots: {package name: the folder it is unpacked in}.
    out: the output folder (its music/, playlists/ and train/ are replaced).
  """
  for name in ("music", "playlists", "train"):
    shutil.rmtree(os.path.join(out, name), ignore_errors=True)
  tracks = [t for package, _ in packages for t in find_tracks(package, roots[package.name])]
  music_dir = os.path.join(out, "music")
  clips = write_clips(tracks, music_dir, clips_per_track)
  tracks = [t for t in tracks if t.track_id in clips]
  split = split_tracks(tracks, test_fraction, seed)
  clips = move_to_splits(music_dir, clips, split)
  lists = make_playlists(tracks, playlists, seed)
  every, training = (lambda t: True), (lambda t: split[t] == "train")
  write_csv(os.path.join(out, "songs.csv"), tracks, clips, split, every)
  write_csv(os.path.join(out, "train", "songs.csv"), tracks, clips, split, training, base="train/")
  n_lists = write_playlists(os.path.join(out, "playlists"), music_dir, lists, clips, every)
  n_train_lists = write_playlists(os.path.join(out, "train", "playlists"), music_dir, lists, clips,
                                  training)
  write_licences(out, packages, tracks, clips, roots)
  rows = []
  for package, version in packages:
    mine = [t for t in tracks if t.package == package.name]
    rows.append({"package": package.name, "version": version, "style": package.style,
                 "tracks": len(mine), "test_tracks": sum(split[t.track_id] == "test" for t in mine),
                 "clips": sum(len(clips[t.track_id]) for t in mine),
                 "test_clips": sum(len(clips[t.track_id]) for t in mine if split[t.track_id] == "test"),
                 "fine_genres": len({t.fine for t in mine if t.fine})})
  summary = {"options": {"clips_per_track": clips_per_track, "clip_seconds": CLIP_SECONDS,
                         "test_fraction": test_fraction, "playlists": playlists, "seed": seed,
                         "sample_rate": SAMPLE_RATE},
             "packages": rows, "playlists_written": n_lists, "train_playlists_written": n_train_lists}
  with open(os.path.join(out, "devset.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=1)
  return summary


def print_summary(summary, out):
  import common
  headers = ("package", "version", "style", "tracks", "test tracks", "clips", "test clips",
             "finer genres")
  rows = [[r["package"], r["version"], r["style"], r["tracks"], r["test_tracks"], r["clips"],
           r["test_clips"], r["fine_genres"]] for r in summary["packages"]]
  print(common.machine_line())
  print(common.table(headers, rows))
  print(f"\n{summary['playlists_written']} playlists ({summary['train_playlists_written']} in train/) "
        f"in {out}")


# --- The offline smoke test: a generated tree shaped like unpacked packages. --------------------------

def fake_packages(root, seconds=70.0, rate=8000):
  """Two made-up packages of tones (different pitch per style) unpacked under root; [(Package, root)]."""
  made = []
  for name, style, base in (("fake-tones-data", "Low", 220.0), ("fake-chimes-music", "High", 880.0)):
    tree = os.path.join(root, name)
    for k in range(4):
      sub = ("calm", "busy")[k % 2]
      path = os.path.join(tree, "usr/share/games", name, "music", sub, f"song{k}.wav")
      os.makedirs(os.path.dirname(path), exist_ok=True)
      t = np.arange(int(seconds * rate)) / rate
      tone = 0.3 * np.sin(2 * np.pi * base * (1 + 0.1 * k) * t) * (1 + 0.5 * np.sin(2 * np.pi * t))
      sf.write(path, tone.astype(np.float32), rate)
    doc = os.path.join(tree, "usr/share/doc", name)
    os.makedirs(doc, exist_ok=True)
    with open(os.path.join(doc, "copyright"), "w", encoding="utf-8") as f:
      f.write("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n"
              "Files: *\nCopyright: nobody\nLicense: CC0-1.0\n")
    pattern = rf"usr/share/games/{name}/music/(?P<track>(?P<fine>[^/]+)/[^/]+)\.wav"
    made.append((Package(name, style, pattern, (f"usr/share/games/{name}/", ""), None), tree))
  return made


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", help="where the catalogue is written")
  parser.add_argument("--debs", help="where the .deb files are downloaded and unpacked "
                      "(default: OUT/../devset-debs)")
  parser.add_argument("--clips_per_track", type=int, default=3)
  parser.add_argument("--test_fraction", type=float, default=0.25)
  parser.add_argument("--playlists", type=int, default=60)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--packages", default=",".join(p.name for p in PACKAGES),
                      help="comma-separated subset of the packages (default: all five)")
  parser.add_argument("--quick", action="store_true", help="offline: build from generated packages")
  args = parser.parse_args()
  started = time.time()
  if args.quick:
    with tempfile.TemporaryDirectory(prefix="tfcmir-bench-devset-") as tmp:
      made = fake_packages(os.path.join(tmp, "debs"))
      out = os.path.join(tmp, "devset")
      summary = build([(p, "0") for p, _ in made], {p.name: r for p, r in made}, out,
                      args.clips_per_track, args.test_fraction, 6, args.seed)
      print_summary(summary, out)
    return
  if not args.out:
    parser.error("--out is required (or --quick)")
  out = os.path.abspath(args.out)
  debs = os.path.abspath(args.debs or os.path.join(os.path.dirname(out), "devset-debs"))
  os.makedirs(debs, exist_ok=True)
  os.makedirs(out, exist_ok=True)
  chosen = [name.strip() for name in args.packages.split(",") if name.strip()]
  unknown = sorted(set(chosen) - {p.name for p in PACKAGES})
  if unknown:
    parser.error(f"--packages: {', '.join(unknown)} not one of {', '.join(p.name for p in PACKAGES)}")
  packages, roots, debs_used = [], {}, {}
  for package in (p for p in PACKAGES if p.name in chosen):
    deb = download(package.name, debs)
    roots[package.name], version = unpack(deb, os.path.join(debs, "unpacked", package.name))
    packages.append((package, version))
    debs_used[package.name] = {"file": os.path.basename(deb), "sha256": safeio.sha256_file(deb)}
  summary = build(packages, roots, out, args.clips_per_track, args.test_fraction, args.playlists,
                  args.seed)
  summary["debs"] = debs_used
  summary["seconds"] = round(time.time() - started, 1)
  with open(os.path.join(out, "devset.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=1)
  print_summary(summary, out)


if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  main()
