"""`python -m tfcmir.search SUBCOMMAND`: search a catalogue in an export's shared space.

    python -m tfcmir.search index    --embed_model=EXPORT --index=DIR AUDIO...   files or folders
    python -m tfcmir.search similar  --index=DIR FILE_OR_INDEXED_PATH          the query excluded
    python -m tfcmir.search genre    --index=DIR "rock|indie rock"            [--genre_names=FILE]
    python -m tfcmir.search continue --index=DIR PLAYLIST.m3u                  the seeds excluded

`index` embeds the files through the export (tfcmir.inference: its checksums, level convention and
level guard) and stores their L2-normalised projections (the contrastive space) in a faiss index
with their paths, the export's fingerprint and each file's patch count (tfcmir/search/store.py).
Running it again adds new files, embeds changed ones again (size or mtime) and skips the rest; an
index made with another export is refused.

The others answer with the --k (default 10) best tracks as CSV on stdout (rank,path,score; the score
is the cosine, for `continue` the share of seeds that retrieved the track), or with --m3u=FILE as an
M3U playlist. `genre` matches words to the export's genre_vocab.json codes, and to names with
--genre_names (a JSON {code: name}, e.g. Melon's genre_gn_all.json); it needs a contrastive export
(a baseline one has no shared space). `continue` is the paper's continuation: each seed's k nearest
tracks, then the k retrieved most often; seeds that are not indexed are embedded on the fly.
"""

from __future__ import annotations

import sys

from absl import flags

from tfcmir import search
from tfcmir.errors import InputError

FLAGS = flags.FLAGS
SUBCOMMANDS = ("index", "similar", "genre", "continue")


def main(argv):
  args = [a for a in argv[1:] if not a.startswith("-")]
  if not args or args[0] not in SUBCOMMANDS:
    raise InputError(f"the first argument must be one of {', '.join(SUBCOMMANDS)} "
                     f"(got {args[0] if args else 'none'}); see --help")
  command, rest = args[0], args[1:]
  if not FLAGS.index:
    raise InputError("--index is required (the search index folder)")
  if command == "index":
    if not FLAGS.embed_model:
      raise InputError("--embed_model is required (an export folder, e.g. exports/demo/contr_cf_g)")
    summary = search.index(FLAGS.embed_model, rest, FLAGS.index, FLAGS.artifact, FLAGS.strict)
    for path, reason in summary["skipped"]:
      print(f"skipped {path}: {reason}", file=sys.stderr)
    print(f"{FLAGS.index}: {summary['tracks']} tracks ({summary['added']} added, "
          f"{summary['updated']} embedded again, {summary['unchanged']} unchanged, "
          f"{len(summary['skipped'])} unreadable)")
    return
  if len(rest) != 1:
    what = {"similar": "one audio file or indexed path", "genre": 'one quoted list, e.g. "rock|indie rock"',
            "continue": "one .m3u or .m3u8 playlist"}[command]
    raise InputError(f"{command} takes {what}; got {len(rest)} arguments")
  model = FLAGS.embed_model  # optional: default, the export the index records
  if command == "similar":
    hits = search.similar(FLAGS.index, rest[0], FLAGS.k, model, FLAGS.strict)
  elif command == "genre":
    hits = search.genre(FLAGS.index, rest[0], FLAGS.k, model, FLAGS.genre_names)
  else:
    hits = search.continue_playlist(FLAGS.index, rest[0], FLAGS.k, model, FLAGS.strict)
  if FLAGS.m3u:
    search.write_m3u(FLAGS.m3u, hits)
    print(f"{FLAGS.m3u}: {len(hits)} tracks")
  else:
    sys.stdout.write(search.csv_text(hits))
