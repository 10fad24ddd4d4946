"""Planning and rendering of one demo video (numpy only, no OpenCV or PIL).

A video is first *planned* (:func:`plan_video`): a list of background scenes and a handful of
short, non-overlapping events, all drawn from a generator seeded by ``(seed, split, index)``.
The plan is plain data, so question generation and tests can reason about it without pixels.
:func:`render_video` then turns a plan into RGB frames deterministically (its texture noise is
seeded by the plan too), so re-rendering a plan always gives the same pixels.

Pixels must be a function of the plan alone, never of the process that renders them: a 1-ulp
difference before ``np.rint`` flips a pixel by one level, and H.264 mode decisions turn one
flipped pixel into differences all over the video (a different mp4, so a different DVC hash and
different downstream features). Array code here therefore uses only IEEE-exact operations
(``+``, ``-``, ``*``, ``/``, comparisons, ``rint``), whose results do not depend on which SIMD
kernel numpy dispatches to, on array alignment or on loop peeling. Every transcendental value
(``sin``, ``cos``) is computed with Python's :mod:`math` on scalars -- per scene, per event, or
once per pixel into a per-scene table -- and per-frame time dependence enters through the
angle-addition identity ``sin(a + b) = sin a cos b + cos a sin b``.

Backgrounds are dark, slowly drifting textures (gradient + travelling wave + faint noise) so
consecutive frames are similar but never identical; events are large (about 30-45 % of the
frame), saturated, slightly moving and rotated shapes, so they survive 64 px and H.264.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from msjoe.world.config import MIN_GAP_FRAMES, WorldConfig, split_key, video_id
from msjoe.world.vocab import BACKGROUND_RGB, BACKGROUNDS, COLOUR_RGB, COLOURS, SHAPES, describe, frame_caption

_SUPERSAMPLE = 2  # anti-aliasing factor for shape edges
_RADIUS_FRACTION = (0.18, 0.24)  # shape half-extent as a fraction of the frame side
_EXTENT = 1.26  # farthest shape point from its centre, in radii (any rotation)


@dataclass(frozen=True)
class Event:
    """One shape shown for ``start_frame..end_frame`` (inclusive), drifting by ``(dx, dy)``
    pixels per frame from centre ``(x, y)`` with half-extent ``radius`` and rotation ``angle``."""

    shape: str
    colour: str
    start_frame: int
    end_frame: int
    x: float
    y: float
    dx: float
    dy: float
    radius: float
    angle: float

    @property
    def caption(self) -> str:
        """Canonical caption of the event (``"a red star"``)."""
        return describe(self.shape, self.colour)

    @property
    def length(self) -> int:
        """Number of frames the event is visible."""
        return self.end_frame - self.start_frame + 1

    def covers(self, frame: int) -> bool:
        """Whether the event is visible in ``frame``."""
        return self.start_frame <= frame <= self.end_frame

    def span_s(self, fps: float) -> tuple[float, float]:
        """Evidence span in seconds; frame i covers ``[i/fps, (i+1)/fps)``."""
        return (self.start_frame / fps, (self.end_frame + 1) / fps)


@dataclass(frozen=True)
class Scene:
    """A background shown for ``start_frame..end_frame`` (inclusive) with its texture settings."""

    background: str
    start_frame: int
    end_frame: int
    gradient_angle: float
    gradient_amp: float
    wave_kx: float
    wave_ky: float
    wave_amp: float
    wave_phase: float
    wave_speed: float


@dataclass(frozen=True)
class VideoSpec:
    """The full plan of one video: enough to render it and to pose questions about it."""

    video_id: str
    split: str
    index: int
    frames: int
    fps: float
    size: int
    scenes: tuple[Scene, ...]
    events: tuple[Event, ...]
    noise_seed: int

    def background_at(self, frame: int) -> str:
        """Name of the background visible in ``frame``."""
        for scene in self.scenes:
            if scene.start_frame <= frame <= scene.end_frame:
                return scene.background
        raise IndexError(f"frame {frame} outside video of {self.frames} frames")

    def events_at(self, frame: int) -> list[Event]:
        """Events visible in ``frame`` (at most one, since events never overlap)."""
        return [e for e in self.events if e.covers(frame)]

    def frame_records(self) -> list[dict[str, object]]:
        """Per-frame ground truth rows (the ``frames/{video_id}.jsonl`` contract)."""
        rows: list[dict[str, object]] = []
        for i in range(self.frames):
            background = self.background_at(i)
            objects = [{"shape": e.shape, "colour": e.colour} for e in self.events_at(i)]
            rows.append(
                {
                    "video_id": self.video_id,
                    "split": self.split,
                    "frame": i,
                    "t": i / self.fps,
                    "background": background,
                    "objects": objects,
                    "caption": frame_caption(background, objects),
                }
            )
        return rows

    def events_record(self) -> dict[str, object]:
        """The ``events.jsonl`` row of this video."""
        return {
            "video_id": self.video_id,
            "split": self.split,
            "events": [
                {
                    "shape": e.shape,
                    "colour": e.colour,
                    "start_frame": e.start_frame,
                    "end_frame": e.end_frame,
                    "start_s": e.span_s(self.fps)[0],
                    "end_s": e.span_s(self.fps)[1],
                    "caption": e.caption,
                }
                for e in self.events
            ],
        }


def video_rng(cfg: WorldConfig, split: str, index: int, stream: int) -> np.random.Generator:
    """Generator for one video and one purpose (0 = plan, 1 = questions).

    Seeding from ``(seed, split, index, stream)`` keeps splits independent of each other's
    sizes and keeps the pixels independent of which question families are enabled.
    """
    return np.random.default_rng([cfg.seed, split_key(split), index, stream])


def _event_shapes(n: int, rng: np.random.Generator) -> list[str]:
    """Draw ``n`` shapes i.i.d. until at least one shape occurs exactly once.

    Independent draws make repeats (counts > 1) common, while the singleton guarantees an
    attribute question ("what colour was the star?") can always be posed.
    """
    for _ in range(1000):
        shapes = [SHAPES[i] for i in rng.integers(0, len(SHAPES), size=n)]
        counts = {s: shapes.count(s) for s in shapes}
        if 1 in counts.values() and max(counts.values()) <= len(COLOURS):
            return shapes
    raise RuntimeError(f"could not draw {n} event shapes with a singleton")  # pragma: no cover


def _event_colours(shapes: list[str], rng: np.random.Generator) -> list[str]:
    """Colours such that every (colour, shape) pair is unique within the video, so a caption
    like "the red circle" always names exactly one event."""
    colours: list[str] = []
    used: dict[str, set[str]] = {}
    for shape in shapes:
        free = [c for c in COLOURS if c not in used.setdefault(shape, set())]
        colour = free[int(rng.integers(0, len(free)))]
        used[shape].add(colour)
        colours.append(colour)
    return colours


def _event_starts(lengths: np.ndarray, frames: int, rng: np.random.Generator) -> list[int]:
    """Start frames for events of the given lengths: in order, separated by at least
    ``MIN_GAP_FRAMES``, with the remaining slack spread uniformly at random."""
    n = len(lengths)
    free = frames - int(lengths.sum()) - (n - 1) * MIN_GAP_FRAMES
    cuts = np.sort(rng.integers(0, free + 1, size=n))
    starts: list[int] = []
    position = 0
    previous_cut = 0
    for k in range(n):
        position += int(cuts[k] - previous_cut)
        previous_cut = int(cuts[k])
        starts.append(position)
        position += int(lengths[k]) + MIN_GAP_FRAMES
    return starts


def _plan_scenes(cfg: WorldConfig, rng: np.random.Generator) -> tuple[Scene, ...]:
    scenes: list[Scene] = []
    start = 0
    previous = ""
    while start < cfg.frames:
        length = int(rng.integers(cfg.scene_frames[0], cfg.scene_frames[1] + 1))
        choices = [b for b in BACKGROUNDS if b != previous]
        background = choices[int(rng.integers(0, len(choices)))]
        scenes.append(
            Scene(
                background=background,
                start_frame=start,
                end_frame=min(start + length, cfg.frames) - 1,
                gradient_angle=float(rng.uniform(0, 2 * np.pi)),
                gradient_amp=float(rng.uniform(8, 18)),
                wave_kx=float(rng.uniform(-2.5, 2.5)),
                wave_ky=float(rng.uniform(-2.5, 2.5)),
                wave_amp=float(rng.uniform(4, 10)),
                wave_phase=float(rng.uniform(0, 2 * np.pi)),
                wave_speed=float(rng.uniform(0.05, 0.3)),
            )
        )
        previous = background
        start += length
    return tuple(scenes)


def plan_video(cfg: WorldConfig, split: str, index: int) -> VideoSpec:
    """Plan video ``index`` of ``split``: scenes, events and the texture noise seed."""
    rng = video_rng(cfg, split, index, 0)
    scenes = _plan_scenes(cfg, rng)
    n = int(rng.integers(cfg.events_per_video[0], cfg.events_per_video[1] + 1))
    lengths = rng.integers(cfg.event_frames[0], cfg.event_frames[1] + 1, size=n)
    starts = _event_starts(lengths, cfg.frames, rng)
    shapes = _event_shapes(n, rng)
    colours = _event_colours(shapes, rng)
    events: list[Event] = []
    speed = cfg.size / 64.0
    for shape, colour, start, length in zip(shapes, colours, starts, lengths, strict=True):
        radius = float(rng.uniform(*_RADIUS_FRACTION) * cfg.size)
        dx, dy = (float(v) for v in rng.uniform(-1.0, 1.0, size=2) * speed)
        travel_x, travel_y = dx * (int(length) - 1), dy * (int(length) - 1)
        lo, hi = _EXTENT * radius + 1.0, cfg.size - _EXTENT * radius - 1.0
        x = float(rng.uniform(lo - min(0.0, travel_x), hi - max(0.0, travel_x)))
        y = float(rng.uniform(lo - min(0.0, travel_y), hi - max(0.0, travel_y)))
        events.append(
            Event(
                shape=shape,
                colour=colour,
                start_frame=start,
                end_frame=start + int(length) - 1,
                x=x,
                y=y,
                dx=dx,
                dy=dy,
                radius=radius,
                angle=float(rng.uniform(-np.pi / 9, np.pi / 9)),
            )
        )
    return VideoSpec(
        video_id=video_id(split, index),
        split=split,
        index=index,
        frames=cfg.frames,
        fps=cfg.fps,
        size=cfg.size,
        scenes=scenes,
        events=tuple(events),
        noise_seed=int(rng.integers(0, 2**31 - 1)),
    )


def _polygon_inside(u: np.ndarray, v: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test, vectorised over the grid."""
    inside = np.zeros(u.shape, dtype=bool)
    x1, y1 = vertices[:, 0], vertices[:, 1]
    x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
    for a, b, c, d in zip(x1, y1, x2, y2, strict=True):
        if b == d:
            continue
        crosses = (b > v) != (d > v)
        x_at = a + (v - b) * (c - a) / (d - b)
        inside ^= crosses & (u < x_at)
    return inside


def _unit_vertices(angles: list[float], radii: list[float]) -> np.ndarray:
    """Polygon vertices from polar coordinates, with :mod:`math` (see the module docstring)."""
    return np.array([[r * math.cos(a), r * math.sin(a)] for a, r in zip(angles, radii, strict=True)])


def _star_vertices(points: int = 5, inner: float = 0.45) -> np.ndarray:
    angles = [-math.pi / 2 + k * math.pi / points for k in range(2 * points)]
    radii = [1.0 if k % 2 == 0 else inner for k in range(2 * points)]
    return _unit_vertices(angles, radii)


_TRIANGLE = _unit_vertices([-math.pi / 2, math.pi / 6, 5 * math.pi / 6], [1.0, 1.0, 1.0]) * 1.1
_STAR = _star_vertices() * 1.1


def _unit_shape(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Membership of normalised coordinates (shape centred at 0, half-extent about 1)."""
    if shape == "circle":
        return u * u + v * v <= 0.9
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.78
    if shape == "triangle":
        return _polygon_inside(u, v - 0.275, _TRIANGLE)  # centre the bounding box
    if shape == "star":
        return _polygon_inside(u, v - 0.1, _STAR)
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))
    raise ValueError(f"unknown shape {shape!r}")


def event_alpha(event: Event, frame: int, size: int) -> np.ndarray:
    """Coverage in [0, 1] of ``event`` over a ``size x size`` frame at ``frame``
    (zeros when the event is not visible); anti-aliased by supersampling."""
    if not event.covers(frame):
        return np.zeros((size, size), dtype=np.float32)
    step = frame - event.start_frame
    cx, cy = event.x + event.dx * step, event.y + event.dy * step
    s = _SUPERSAMPLE
    coords = (np.arange(size * s, dtype=np.float64) + 0.5) / s
    gy, gx = np.meshgrid(coords, coords, indexing="ij")
    rx, ry = (gx - cx) / event.radius, (gy - cy) / event.radius
    cos, sin = math.cos(event.angle), math.sin(event.angle)  # scalars: see the module docstring
    u, v = cos * rx + sin * ry, -sin * rx + cos * ry
    mask = _unit_shape(event.shape, u, v).astype(np.float32)
    return mask.reshape(size, s, size, s).mean(axis=(1, 3))


@dataclass(frozen=True)
class _SceneTexture:
    """Frame-independent part of a scene's background, computed once per scene.

    ``shade`` is the gradient term; the travelling wave of frame t is ``sin(spatial + temporal(t))``,
    stored as ``sin(spatial)`` and ``cos(spatial)`` so each frame only needs two scalar
    :mod:`math` calls and IEEE multiplies and adds (see the module docstring).
    """

    shade: np.ndarray  # (size, size) float64: gradient_amp * along
    sin_spatial: np.ndarray  # (size, size) float64
    cos_spatial: np.ndarray  # (size, size) float64


def _pixel_centres(size: int) -> np.ndarray:
    """Pixel-centre coordinates ``(k + 0.5) / size - 0.5`` in [-0.5, 0.5), float64, IEEE arithmetic only."""
    return (np.arange(size, dtype=np.float64) + 0.5) / size - 0.5


def _scene_texture(scene: Scene, size: int) -> _SceneTexture:
    grid = _pixel_centres(size)
    ys, xs = np.meshgrid(grid, grid, indexing="ij")
    along = xs * math.cos(scene.gradient_angle) + ys * math.sin(scene.gradient_angle)
    spatial = 2 * math.pi * (scene.wave_kx * xs + scene.wave_ky * ys) + scene.wave_phase
    # math.sin per element instead of np.sin on the array: numpy's vectorised sin/cos are not
    # guaranteed to give the same bits as its scalar path (SIMD kernel choice, loop peeling).
    flat = spatial.ravel().tolist()
    sin_spatial = np.array([math.sin(a) for a in flat], dtype=np.float64).reshape(size, size)
    cos_spatial = np.array([math.cos(a) for a in flat], dtype=np.float64).reshape(size, size)
    return _SceneTexture(shade=scene.gradient_amp * along, sin_spatial=sin_spatial, cos_spatial=cos_spatial)


def _render_background(scene: Scene, texture: _SceneTexture, frame: int) -> np.ndarray:
    """Background of ``frame`` (float64, not yet rounded): gradient plus travelling wave."""
    base = np.asarray(BACKGROUND_RGB[scene.background], dtype=np.float64)
    temporal = scene.wave_speed * (frame - scene.start_frame)
    # sin(spatial + temporal) by angle addition: scalars from math, arrays only multiply and add
    wave = texture.sin_spatial * math.cos(temporal) + texture.cos_spatial * math.sin(temporal)
    shade = texture.shade + scene.wave_amp * wave
    return base[None, None, :] + shade[:, :, None]


def render_video(spec: VideoSpec) -> np.ndarray:
    """Render a planned video to ``uint8`` RGB frames of shape ``(frames, size, size, 3)``.

    Bit-reproducible for a given plan, whatever the process state (see the module docstring).
    """
    size = spec.size
    noise = np.random.default_rng(spec.noise_seed).normal(0.0, 2.5, size=(spec.frames, size, size, 1))
    out = np.empty((spec.frames, size, size, 3), dtype=np.uint8)
    for scene in spec.scenes:
        texture = _scene_texture(scene, size)
        for frame in range(scene.start_frame, scene.end_frame + 1):
            image = _render_background(scene, texture, frame) + noise[frame]
            for event in spec.events_at(frame):
                alpha = event_alpha(event, frame, size)[:, :, None]
                colour = np.asarray(COLOUR_RGB[event.colour], dtype=np.float32)
                image = alpha * colour + (1.0 - alpha) * image
            out[frame] = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return out
