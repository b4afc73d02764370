"""The generative process behind the demo datasets: a genre taxonomy, artists, moods, and audio.

Every demo set (Melon, GTZAN, MTG-Jamendo layouts) is drawn from this one process, so a model trained
on the demo Melon corpus transfers to the demo downstream sets, as a Melon model does to the real ones.

What the audio carries, so that a model has something real to learn:
  * genre (10 main genres, 3 detailed sub-genres each) shapes rhythm (tempo, drum pattern, swing),
    timbre (instruments, brightness, distortion) and pitch (scale, register, note rate);
  * two hidden mood factors, energy and valence, shift tempo, loudness, brightness, register and mode
    (major or minor); they correlate with genre but vary widely within it. Genre labels do not carry
    them; playlists and MTG-Jamendo mood tags do;
  * artists have a signature (instrument, key, mood centre) that their songs share, and playlists pick
    favourite artists, so co-membership also carries what neither genre nor mood explains.

Songs are short loops of drums, bass, chords and a melody rendered with wavetable synthesis; cheap
enough (a few ms per second of audio) to build a few thousand songs in well under a minute.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.signal

# --------------------------------------------------------------------------------------------------
# Taxonomy. Main genres are GTZAN's ten, so the demo GTZAN set is the same process, not a new one.
MAIN_GENRES = ("blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae",
               "rock")

SCALES = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),
    "blues": (0, 3, 5, 6, 7, 10),
    "pentatonic": (0, 2, 4, 7, 9),
    "dorian": (0, 2, 3, 5, 7, 9, 10),
    "harmonic_minor": (0, 2, 3, 5, 7, 8, 11),
    "phrygian": (0, 1, 3, 5, 7, 8, 10),
}
# For each scale, the scale used when a song's valence flips its mood.
MODE_FLIP = {"major": "minor", "minor": "major", "blues": "minor", "pentatonic": "minor",
             "dorian": "major", "harmonic_minor": "major", "phrygian": "major"}


@dataclasses.dataclass(frozen=True)
class Instrument:
  harmonics: tuple      # amplitudes of partials 1..n
  attack: float         # seconds
  decay: float          # seconds; 0 means sustained while the note is held
  drive: float = 0.0    # tanh distortion gain (0: clean)
  vibrato: float = 0.0  # relative depth at 5.5 Hz


def _series(n, power, odd_only=False):
  return tuple((1.0 / k ** power) if (not odd_only or k % 2) else 0.0 for k in range(1, n + 1))


INSTRUMENTS = {
    "piano": Instrument(_series(10, 1.6), 0.004, 0.7),
    "guitar": Instrument(_series(12, 1.1), 0.002, 0.35),
    "electricguitar": Instrument(_series(12, 1.0), 0.005, 0.0, drive=4.0),
    "strings": Instrument(_series(12, 1.0), 0.12, 0.0, vibrato=0.006),
    "organ": Instrument((1.0, 0.8, 0.6, 0.5, 0.0, 0.4, 0.0, 0.3), 0.01, 0.0),
    "brass": Instrument(_series(10, 0.7), 0.05, 0.0, vibrato=0.003),
    "synthesizer": Instrument(_series(11, 1.0, odd_only=True), 0.01, 0.0),
    "flute": Instrument((1.0, 0.25, 0.08), 0.07, 0.0, vibrato=0.008),
}
INSTRUMENT_NAMES = tuple(INSTRUMENTS)


@dataclasses.dataclass(frozen=True)
class Style:
  """Synthesis parameters of a genre; continuous fields are mixed when a song has several genres."""
  bpm: float
  kick: tuple           # 16th-note steps of a bar
  snare: tuple
  hat: tuple
  drums: float          # drum level (0: none)
  bass: float           # bass level
  bass_steps: tuple     # steps on which the bass plays
  leads: tuple          # lead instruments, most typical first
  pad: str              # chord instrument
  register: float       # MIDI note of the melody's centre
  note_rate: float      # melody notes per beat
  brightness: float     # 0..1, the low-pass cut-off
  drive: float          # extra distortion
  swing: float          # 0..0.33 delay of off-beat 16ths
  noise: float          # background hiss level
  scale: str
  mood: tuple           # (energy, valence) centre of the genre's songs


STYLES = {
    "blues": Style(84, (0, 8), (4, 12), (0, 2, 4, 6, 8, 10, 12, 14), 0.55, 0.8, (0, 4, 8, 12),
                   ("guitar", "piano", "organ"), "organ", 60, 2, 0.45, 0.5, 0.3, 0.02, "blues",
                   (-0.2, -0.4)),
    "classical": Style(72, (), (), (), 0.0, 0.5, (0, 8), ("strings", "piano", "flute"), "strings", 72,
                       2, 0.35, 0.0, 0.0, 0.0, "major", (-0.6, 0.1)),
    "country": Style(112, (0, 8), (4, 12), (0, 2, 4, 6, 8, 10, 12, 14), 0.6, 0.8, (0, 8),
                     ("guitar", "strings", "piano"), "guitar", 67, 2, 0.6, 0.0, 0.0, 0.0, "pentatonic",
                     (0.1, 0.5)),
    "disco": Style(122, (0, 4, 8, 12), (4, 12), (2, 6, 10, 14), 0.8, 1.0, (0, 2, 4, 6, 8, 10, 12, 14),
                   ("strings", "synthesizer", "brass"), "strings", 72, 2, 0.8, 0.0, 0.0, 0.0, "dorian",
                   (0.6, 0.4)),
    "hiphop": Style(90, (0, 7, 10), (4, 12), tuple(range(16)), 0.9, 1.2, (0, 7, 10),
                    ("piano", "synthesizer", "brass"), "synthesizer", 60, 1, 0.4, 0.0, 0.15, 0.01,
                    "minor", (0.2, -0.2)),
    "jazz": Style(140, (0, 10), (7,), (0, 4, 6, 8, 12, 14), 0.4, 0.9, (0, 4, 8, 12),
                  ("brass", "piano", "flute"), "piano", 67, 3, 0.5, 0.0, 0.3, 0.0, "dorian",
                  (0.0, 0.2)),
    "metal": Style(170, (0, 2, 4, 6, 8, 10, 12, 14), (4, 12), (0, 2, 4, 6, 8, 10, 12, 14), 0.9, 1.0,
                   (0, 2, 4, 6, 8, 10, 12, 14), ("electricguitar", "electricguitar", "synthesizer"),
                   "electricguitar", 52, 4, 0.9, 3.0, 0.0, 0.0, "phrygian", (0.9, -0.6)),
    "pop": Style(116, (0, 8, 10), (4, 12), (0, 2, 4, 6, 8, 10, 12, 14), 0.7, 0.9, (0, 4, 8, 10, 12),
                 ("synthesizer", "piano", "guitar"), "synthesizer", 72, 2, 0.7, 0.0, 0.0, 0.0, "major",
                 (0.4, 0.6)),
    "reggae": Style(76, (8,), (8,), (0, 2, 4, 6, 8, 10, 12, 14), 0.6, 1.1, (0, 3, 6, 8, 11),
                    ("organ", "guitar", "brass"), "organ", 64, 1.5, 0.5, 0.0, 0.2, 0.0, "major",
                    (-0.1, 0.4)),
    "rock": Style(132, (0, 6, 8), (4, 12), (0, 2, 4, 6, 8, 10, 12, 14), 0.85, 1.0,
                  (0, 2, 4, 6, 8, 10, 12, 14), ("electricguitar", "guitar", "organ"), "electricguitar",
                  64, 2, 0.75, 1.0, 0.0, 0.0, "minor", (0.6, 0.0)),
}

# Detailed genres: (name, tempo factor, register shift, brightness shift, favoured lead instrument).
SUBGENRES = {
    "blues": (("deltablues", 0.9, -3, -0.15, "guitar"), ("electricblues", 1.0, 0, 0.1, "electricguitar"),
              ("soulblues", 1.1, 3, 0.0, "organ")),
    "classical": (("baroque", 1.2, 5, 0.1, "organ"), ("romantic", 0.85, 0, -0.1, "strings"),
                  ("pianosolo", 1.0, -2, 0.0, "piano")),
    "country": (("bluegrass", 1.25, 5, 0.1, "guitar"), ("countrypop", 1.0, 2, 0.1, "piano"),
                ("folk", 0.8, -3, -0.15, "flute")),
    "disco": (("classicdisco", 1.0, 0, 0.0, "strings"), ("nudisco", 0.95, -2, 0.1, "synthesizer"),
              ("funk", 0.9, -5, -0.05, "brass")),
    "hiphop": (("boombap", 0.95, 0, -0.1, "piano"), ("trap", 1.5, -5, 0.15, "synthesizer"),
               ("lofi", 0.85, 3, -0.25, "piano")),
    "jazz": (("bebop", 1.3, 3, 0.05, "brass"), ("cooljazz", 0.8, -2, -0.1, "flute"),
             ("jazzfusion", 1.05, 0, 0.15, "synthesizer")),
    "metal": (("heavymetal", 0.85, 2, -0.05, "electricguitar"), ("thrash", 1.15, 0, 0.05,
                                                                  "electricguitar"),
              ("symphonicmetal", 0.9, 5, 0.0, "strings")),
    "pop": (("kpop", 1.05, 2, 0.1, "synthesizer"), ("ballad", 0.65, 0, -0.2, "piano"),
            ("synthpop", 1.0, -2, 0.1, "synthesizer")),
    "reggae": (("roots", 1.0, 0, -0.05, "organ"), ("dub", 0.9, -5, -0.2, "organ"),
               ("ska", 1.6, 3, 0.15, "brass")),
    "rock": (("hardrock", 1.0, -2, 0.05, "electricguitar"), ("indierock", 1.05, 2, 0.0, "guitar"),
             ("softrock", 0.8, 0, -0.15, "piano")),
}


@dataclasses.dataclass(frozen=True)
class Genre:
  main: int                 # index into MAIN_GENRES
  sub: int                  # 0..2
  name: str                 # e.g. 'electricblues'

  @property
  def main_name(self):
    return MAIN_GENRES[self.main]

  @property
  def main_code(self):      # Melon's GNxx00 codes
    return f"GN{self.main + 1:02d}00"

  @property
  def code(self):           # Melon's detailed GNxxyy codes
    return f"GN{self.main + 1:02d}{self.sub + 1:02d}"


GENRES = tuple(Genre(m, s, SUBGENRES[g][s][0]) for m, g in enumerate(MAIN_GENRES) for s in range(3))

# --------------------------------------------------------------------------------------------------
# Songs: genres + artist signature + mood -> concrete synthesis parameters.


@dataclasses.dataclass(frozen=True)
class Artist:
  index: int
  genres: tuple        # indices into GENRES, primary first
  lead: str
  key: int             # 0..11
  mood: tuple          # (energy, valence) centre
  name: str


@dataclasses.dataclass(frozen=True)
class Song:
  genres: tuple        # indices into GENRES, primary first (1 to 3)
  artist: int
  energy: float        # hidden mood factors in [-1, 1]
  valence: float
  lead: str
  pad: str
  key: int
  seed: int            # drives the notes and noise of the rendering


_SYLLABLES = ("ka", "ri", "mo", "an", "su", "jin", "lee", "na", "to", "bel", "vo", "ra", "del", "oon")


def _name(rng, parts):
  return "".join(rng.choice(_SYLLABLES) for _ in range(parts)).title()


def sample_artist(rng, index, genre_prior=None):
  """An artist: 1-2 genres (a second one 35% of the time), a signature instrument, key and mood."""
  main = rng.choice(len(MAIN_GENRES), p=genre_prior)
  primary = main * 3 + rng.integers(3)
  genres = [primary]
  if rng.random() < 0.35:
    # Half the time a sibling sub-genre, otherwise a sub-genre of another main genre.
    other = main * 3 + rng.integers(3) if rng.random() < 0.5 else rng.integers(len(GENRES))
    if other != primary:
      genres.append(other)
  style = STYLES[MAIN_GENRES[main]]
  sub_lead = SUBGENRES[MAIN_GENRES[main]][primary % 3][4]
  lead = sub_lead if rng.random() < 0.6 else style.leads[rng.integers(len(style.leads))]
  mood = np.clip(np.array(style.mood) + rng.normal(0, 0.45, 2), -1, 1)
  return Artist(index, tuple(int(g) for g in genres), lead, int(rng.integers(12)),
                (float(mood[0]), float(mood[1])), _name(rng, 2) + " " + _name(rng, 1))


def sample_song(rng, artist):
  """A song of `artist`: its genres (sometimes one more), mood near the artist's, and a seed."""
  genres = list(artist.genres)
  if len(genres) < 3 and rng.random() < 0.12:
    extra = int(rng.integers(len(GENRES)))
    if extra not in genres:
      genres.append(extra)
  energy, valence = np.clip(np.array(artist.mood) + rng.normal(0, 0.3, 2), -1, 1)
  style = STYLES[GENRES[genres[0]].main_name]
  lead = artist.lead if rng.random() < 0.8 else style.leads[rng.integers(len(style.leads))]
  pad = style.pad if rng.random() < 0.8 else INSTRUMENT_NAMES[rng.integers(len(INSTRUMENT_NAMES))]
  key = artist.key if rng.random() < 0.7 else int(rng.integers(12))
  return Song(tuple(genres), artist.index, float(energy), float(valence), lead, pad, key,
              int(rng.integers(2 ** 31)))


def sample_song_for_genre(rng, main, index):
  """A stand-alone song of main genre `main` by a new artist (GTZAN-style single-label sets)."""
  prior = np.eye(len(MAIN_GENRES))[main]
  artist = sample_artist(rng, index, genre_prior=prior)
  return artist, sample_song(rng, artist)


# --------------------------------------------------------------------------------------------------
# Rendering.

_TABLE_SIZE = 2048
_TABLES = {}


def _wavetable(name):
  if name not in _TABLES:
    phase = np.arange(_TABLE_SIZE) / _TABLE_SIZE * 2 * np.pi
    amps = INSTRUMENTS[name].harmonics
    table = sum(a * np.sin((k + 1) * phase) for k, a in enumerate(amps))
    _TABLES[name] = (table / np.max(np.abs(table))).astype(np.float32)
  return _TABLES[name]


def _midi_hz(note):
  return 440.0 * 2.0 ** ((np.asarray(note, np.float64) - 69) / 12)


def render_voice(onsets, lengths, notes, velocities, instrument, n, sr, max_harmonic_hz):
  """A monophonic line: notes (MIDI) starting at sample `onsets`, held `lengths` samples.

  Vectorised over samples in float32: each sample knows the note sounding at it and the time since
  that note began; the phase restarts at every onset (as a plucked or struck note does) and indexes
  the instrument's wavetable; an attack/decay/release envelope shapes it.
  """
  if len(onsets) == 0:
    return np.zeros(n, np.float32)
  inst = INSTRUMENTS[instrument]
  order = np.argsort(onsets, kind="stable")
  onsets, lengths, notes, velocities = (np.asarray(a)[order] for a in (onsets, lengths, notes,
                                                                        velocities))
  keep = onsets < n
  onsets, lengths, notes, velocities = onsets[keep], lengths[keep], notes[keep], velocities[keep]
  if len(onsets) == 0:
    return np.zeros(n, np.float32)
  freq = _midi_hz(notes)
  # Keep every partial below `max_harmonic_hz` by folding the note down by octaves (no aliasing).
  top = freq * len(inst.harmonics)
  freq = np.where(top > max_harmonic_hz, freq / 2 ** np.ceil(np.log2(top / max_harmonic_hz)), freq)
  spans = np.diff(np.append(onsets, n))
  which = np.repeat(np.arange(len(onsets)), spans)
  since = (np.arange(onsets[0], n, dtype=np.int64) - np.repeat(onsets, spans)).astype(np.float32)
  since /= sr
  phase = since * np.repeat(freq, spans).astype(np.float32)
  if inst.vibrato:
    phase += inst.vibrato * 5.5 / (2 * np.pi) * np.sin(np.float32(2 * np.pi * 5.5) * since)
  table = _wavetable(instrument)
  wave = table[(phase * _TABLE_SIZE).astype(np.int64) & (_TABLE_SIZE - 1)]
  env = np.minimum(np.float32(1.0), since / np.float32(inst.attack))
  if inst.decay:
    env *= np.exp(-since / np.float32(inst.decay))
  held = (lengths / sr).astype(np.float32)[which]
  env *= np.exp(-np.maximum(np.float32(0.0), since - held) / np.float32(0.04))
  env *= velocities.astype(np.float32)[which]
  out = np.zeros(n, np.float32)
  out[onsets[0]:] = wave * env
  if inst.drive:
    out = np.tanh(out * np.float32(inst.drive)) / np.float32(np.tanh(inst.drive))
  return out


def _drum_kit(rng, sr, brightness):
  """One-shot kick, snare and hi-hat samples, slightly different for every song."""
  t = np.arange(int(0.3 * sr)) / sr
  kick_f = 45 + 80 * np.exp(-t / 0.03)
  kick = np.sin(2 * np.pi * np.cumsum(kick_f) / sr) * np.exp(-t / (0.09 + 0.04 * rng.random()))
  noise = rng.standard_normal(len(t))
  snare = (0.6 * noise * np.exp(-t / 0.07) + 0.5 * np.sin(2 * np.pi * 185 * t) * np.exp(-t / 0.05))
  hp = scipy.signal.lfilter([1, -1], [1, -0.6 + 0.3 * brightness], rng.standard_normal(len(t)))
  hat = hp * np.exp(-t / (0.02 + 0.03 * rng.random())) * 0.5
  return kick, snare, hat


def _place(hits, sample, n):
  """Sums `sample` at each (onset, gain) in `hits` (a few dozen hits: slices beat an FFT here)."""
  out = np.zeros(n, np.float32)
  sample = sample.astype(np.float32)
  for onset, gain in hits:
    if onset < n:
      end = min(n, onset + len(sample))
      out[onset:end] += gain * sample[:end - onset]
  return out


@dataclasses.dataclass(frozen=True)
class Params:
  """A song's resolved synthesis parameters."""
  bpm: float
  register: float
  brightness: float
  drive: float
  swing: float
  noise: float
  note_rate: float
  drums: float
  bass: float
  level: float
  scale: tuple
  style: Style


def resolve(song):
  """Song -> synthesis parameters: genre styles mixed (75/25), then moved by energy and valence."""
  primary = GENRES[song.genres[0]]
  style = STYLES[primary.main_name]
  weights = np.array([0.75] + [0.25 / max(1, len(song.genres) - 1)] * (len(song.genres) - 1))
  def mix(field, sub_index=None, sub_op=None):
    total = 0.0
    for w, g in zip(weights, song.genres):
      genre = GENRES[g]
      value = getattr(STYLES[genre.main_name], field)
      if sub_index is not None:
        value = sub_op(value, SUBGENRES[genre.main_name][genre.sub][sub_index])
      total += w * value
    return total
  e, v = song.energy, song.valence
  bpm = mix("bpm", 1, lambda a, b: a * b) * (1 + 0.15 * e)
  register = mix("register", 2, lambda a, b: a + b) + 3 * v
  brightness = float(np.clip(mix("brightness", 3, lambda a, b: a + b) + 0.15 * e, 0.05, 1.0))
  scale_name = style.scale
  # Valence flips the mode when it clearly disagrees with the genre's usual one.
  mode_major = scale_name in ("major", "pentatonic")
  if (v < -0.25 and mode_major) or (v > 0.25 and not mode_major):
    scale_name = MODE_FLIP[scale_name]
  return Params(bpm=float(bpm), register=float(register), brightness=brightness,
                drive=float(mix("drive")), swing=float(mix("swing")), noise=float(mix("noise")),
                note_rate=float(mix("note_rate") * (1 + 0.3 * e)), drums=float(mix("drums")),
                bass=float(mix("bass")), level=float(0.35 + 0.25 * (e + 1) / 2),
                scale=SCALES[scale_name], style=style)


_PROGRESSIONS = ((0, 3, 4, 0), (0, 5, 3, 4), (0, 4, 5, 3), (5, 3, 0, 4), (0, 0, 3, 4))


def render(song, seconds, sr):
  """Renders `song` to a float32 mono waveform of `seconds` at `sr` Hz."""
  rng = np.random.default_rng(song.seed)
  p = resolve(song)
  n = int(round(seconds * sr))
  step = 60.0 / p.bpm / 4  # a 16th note
  n_steps = int(np.ceil(seconds / step)) + 1
  steps = np.arange(n_steps)
  # Swing delays the off-beat 16ths; a little human timing jitter everywhere.
  times = steps * step + (steps % 2) * p.swing * step + rng.normal(0, 0.003, n_steps)
  onsets = np.maximum(0, np.round(times * sr)).astype(np.int64)
  bar = steps // 16
  pos = steps % 16
  scale = np.array(p.scale)
  root = 48 + song.key
  prog = _PROGRESSIONS[rng.integers(len(_PROGRESSIONS))]
  chord_degree = np.array(prog)[bar % 4] % len(scale)

  def degree_to_midi(degree, base):
    return base + scale[degree % len(scale)] + 12 * (degree // len(scale))

  max_hz = 0.45 * sr
  mix = np.zeros(n, np.float32)
  # Drums.
  if p.drums > 0:
    kick, snare, hat = _drum_kit(rng, sr, p.brightness)
    density = 1 if song.energy > 0.3 else 2  # energetic songs keep every hi-hat, calm ones half
    for sample, pattern, gain in ((kick, p.style.kick, 1.0), (snare, p.style.snare, 0.7),
                                  (hat, p.style.hat, 0.35)):
      keep = np.isin(pos, pattern)
      if sample is hat:
        keep &= (steps // 2) % density == 0 if len(pattern) > 8 else keep
      hits = [(onsets[i], gain * rng.uniform(0.8, 1.0)) for i in np.flatnonzero(keep)]
      mix += (p.drums * _place(hits, sample, n)).astype(np.float32)
  # Bass: chord roots on the style's bass steps, an octave jump now and then.
  bass_steps = np.flatnonzero(np.isin(pos, p.style.bass_steps))
  if p.bass > 0 and len(bass_steps):
    notes = degree_to_midi(chord_degree[bass_steps], root - 12) + 12 * (rng.random(len(bass_steps)) < 0.2)
    lengths = np.full(len(bass_steps), int(step * sr * 1.8))
    mix += 0.5 * p.bass * render_voice(onsets[bass_steps], lengths, notes,
                                       np.full(len(bass_steps), 1.0), "synthesizer" if
                                       p.style is STYLES["hiphop"] else "guitar", n, sr, max_hz / 4)
  # Chords: three voices, one chord a bar.
  bar_starts = np.flatnonzero(pos == 0)
  for offset in (0, 2, 4):
    notes = degree_to_midi(chord_degree[bar_starts] + offset, root + 12)
    lengths = np.full(len(bar_starts), int(16 * step * sr * 0.95))
    mix += 0.18 * render_voice(onsets[bar_starts], lengths, notes, np.ones(len(bar_starts)),
                               song.pad, n, sr, max_hz)
  # Melody: a random walk on the scale near the register, on a grid of `note_rate` notes a beat.
  grid = max(1, int(round(4 / max(p.note_rate, 0.25))))
  mel_steps = steps[steps % grid == 0]
  mel_steps = mel_steps[rng.random(len(mel_steps)) > 0.15]  # rests
  walk = np.cumsum(rng.choice([-2, -1, 0, 1, 2], size=len(mel_steps), p=[.15, .3, .1, .3, .15]))
  walk = np.clip(walk, -6, 6)
  centre = int(round((p.register - root) / 12 * len(scale)))
  notes = degree_to_midi(chord_degree[mel_steps] + centre + walk, root)
  lengths = np.full(len(mel_steps), int(grid * step * sr * 0.9))
  velocities = rng.uniform(0.7, 1.0, len(mel_steps))
  mix += 0.45 * render_voice(onsets[mel_steps], lengths, notes, velocities, song.lead, n, sr, max_hz)
  # Brightness: a one-pole low-pass whose cut-off follows the song's brightness (500 Hz to ~7 kHz).
  cutoff = 500 * (14 ** p.brightness)
  a = np.exp(-2 * np.pi * min(cutoff, 0.45 * sr) / sr)
  mix = scipy.signal.lfilter([1 - a], [1, -a], mix)
  if p.drive > 0:
    mix = np.tanh(mix * (1 + p.drive)) / (1 + 0.3 * p.drive)
  mix = mix + p.noise * rng.standard_normal(n)
  mix *= p.level / (np.max(np.abs(mix)) + 1e-9)
  return mix.astype(np.float32)
