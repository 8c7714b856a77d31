"""The built-in synthetic multi-spectral vehicle dataset with glare, in WMVeID863 layout.

    OUT/{train,query,test}/<pid:04d>/{vis,ni,th}/v<cam>_n<0|1>_s<idx:03d>_<idx:03d>.png
    OUT_masks/{train,query,test}/<pid:04d>/{vis,ni}/<same stem>.png   (true glare masks)
    OUT_masks/dataset.json                                            (generator settings, counts)

The tree itself is exactly the WMVeID863 layout, so `records.load_splits('synthetic', OUT)` reads
it; the true glare masks live in a sidecar folder (one 0/255 PNG per glared RGB or NI image;
`glare_mask_path` finds the mask of an image, `None` means the image has no glare).

What it is built to resemble (each property is measured by `input_pipeline.realism`, run by
`python scripts/check_dataset.py --realism`):

* Modalities as on real vehicles. Identity lives mostly in RGB: a stable body colour (white,
  silver, black or a hue), decals, a licence plate with a per-vehicle glyph pattern, lamp shape,
  tint and placement, an optional roof rack, all >= 2-3 px at 128x64. NI sees the same geometry
  as grey reflectance: no colour, decals at reduced contrast, the (retro-reflective) plate bright.
  TI sees heat only: the silhouette and the engine/exhaust layout of one of five shared vehicle
  types, with per-capture variation (engine warmth, wheel heat, sun-heated body by day), blurred
  as a low-resolution thermal sensor. So a single-modality ranking should be RGB > NI > TI.
* Glare destroys information locally. A glared image is the clean render veiled by an opacity
  field a in [0, 1]: x -> (1 - a) x + a L with L above white, so a ~ 1 saturates and a ~ 0.5
  halves the contrast; the field has compact support (a biweight bump per source), so outside it
  the glared and clean renders are identical before sensor noise, and the noise is the same draw
  for both (`render_triplet` returns both). The true mask is a >= GLARE_MASK_ALPHA.
* Glare position varies: headlamps (night, front-facing cameras), tail/brake lamps (night, rear
  cameras), sun reflections on the body (day, anywhere on the vehicle), street lights (night, upper
  part) and, in NI only, the illuminator's reflection off the retro-reflective plate. Vehicles sit
  at camera- and capture-dependent positions and scales, so no fixed cell set is glared.
* RGB and NI glare differ: each source is seen by both, or by one modality only, with its own
  extent and strength per modality; some triplets are glared in one of them only.
* No clipping of clean images: white bodies under bright cameras saturate as a real sensor does,
  so the paper's pseudo-label rule (> 10% of values >= 250) fires on some clean images and misses
  weak glare: precision and recall below 1, as on real data.
* A realistic glare rate: `flare_fraction` of the triplets (default 22%), twice as likely at night
  as by day. Every test id has at least one glared and one clean triplet, on different cameras.

Query/gallery as WMVeID863 describes it ("the query samples are randomly selected from the
gallery"): the query ids are a random subset of the test ids and their query triplets are copies of
their gallery triplets; every test id is seen by >= 2 cameras, so every query has a gallery match
from another camera (same-camera matches are junk under the camera protocol).

Everything is a pure function of the seed (NumPy + Pillow only); `render_triplet` re-renders any
triplet of a written tree from its `dataset.json`, with and without glare.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any

import numpy as np
from PIL import Image
from PIL import ImageFilter

GENERATOR_VERSION = 2
MASK_SUFFIX = '_masks'
GLARE_MASK_ALPHA = 0.15     # the true mask: glare veils at least 15% of the scene's contrast
GLARE_LEVEL = 300.0         # the veil's target value, above white: a -> 1 saturates the sensor
SUPERSAMPLE = 2             # geometry is drawn at 2x and box-filtered (anti-aliased small parts)
NIGHT_FLARE_FACTOR = 2.0    # glare is this many times as likely at night as by day
CUE_PARTS = ('plate', 'lamps', 'decals')   # identity cues whose glare coverage `realism` reports


@dataclasses.dataclass(frozen=True)
class VehicleType:
  """Shape and heat layout shared by every vehicle of a type (what TI mostly sees)."""
  name: str
  width: float          # box width as a fraction of the frame width
  height: float         # box height as a fraction of the frame height
  cabin: float          # cabin bottom (fraction of box height)
  cabin_inset: float    # cabin roof inset (trapezoid)
  engine_box: tuple[float, float, float, float]   # u0, u1, v0, v1 of the front engine heat
  exhaust_u: float      # exhaust position seen from the rear


VEHICLE_TYPES = (
    VehicleType('sedan', 0.84, 0.48, 0.42, 0.22, (0.25, 0.75, 0.50, 0.72), 0.25),
    VehicleType('hatchback', 0.78, 0.54, 0.46, 0.16, (0.28, 0.72, 0.52, 0.74), 0.75),
    VehicleType('suv', 0.90, 0.62, 0.44, 0.10, (0.22, 0.78, 0.50, 0.76), 0.20),
    VehicleType('van', 0.92, 0.72, 0.52, 0.04, (0.30, 0.70, 0.60, 0.80), 0.80),
    VehicleType('truck', 0.96, 0.76, 0.36, 0.02, (0.15, 0.85, 0.42, 0.66), 0.15),
)


@dataclasses.dataclass(frozen=True)
class _Identity:
  vtype: int
  width: float
  height: float
  color: np.ndarray          # body RGB (0-255)
  ni_body: float             # body NI reflectance (0-255)
  decals: tuple              # ((u0, u1, v0, v1), rgb, ni) per decal
  plate_u: float
  plate_bg: np.ndarray
  plate_ink: np.ndarray
  plate_code: np.ndarray     # bool [2, 6] glyph cells
  lamp_u: float
  lamp_v: float
  lamp_rx: float
  lamp_ry: float
  lamp_tint: np.ndarray      # front lamp lens RGB
  tail_tint: np.ndarray      # rear lamp lens RGB
  windows: int
  roof_rack: bool
  engine_shift: tuple[float, float]   # (du, dv) of this vehicle's engine heat from its type's
  exhaust_u: float                    # this vehicle's exhaust position seen from the rear


@dataclasses.dataclass(frozen=True)
class _Camera:
  front: bool                # sees vehicles from the front (headlamps) or the rear (tail lamps)
  scale: float
  shift: tuple[float, float]
  brightness: float
  white_balance: np.ndarray  # per-channel gains
  ni_gain: float
  blur: float
  bg_rgb: np.ndarray
  bg_rgb2: np.ndarray
  bg_ni: float
  bg_ti: float
  texture: np.ndarray        # (freq_y, freq_x, phase) of a background pattern


@dataclasses.dataclass(frozen=True)
class GlareSource:
  """One glare bump: centre (pixels), radius (pixels) and peak strength (alpha may exceed 1)."""
  cy: float
  cx: float
  radius: float
  strength: float


@dataclasses.dataclass
class RenderedTriplet:
  """One capture. Images are uint8 [H, W, 3]; masks bool [H, W]."""
  rgb: np.ndarray
  ni: np.ndarray
  ti: np.ndarray
  clean_rgb: np.ndarray      # the same capture without glare (same sensor noise)
  clean_ni: np.ndarray
  glare_rgb: np.ndarray | None   # true glare mask, None when the image has no glare
  glare_ni: np.ndarray | None
  cues: dict[str, np.ndarray]    # identity-cue part masks (CUE_PARTS) in image pixels
  night: bool
  kinds: tuple[str, ...]         # glare source kinds of this capture


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
  i = int(h * 6) % 6
  f = h * 6 - int(h * 6)
  p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
  return np.asarray([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i])


def _body_color(rng: np.random.Generator) -> np.ndarray:
  """Real fleets: ~25% white, ~15% silver/grey, ~20% black, the rest coloured."""
  kind = rng.random()
  if kind < 0.25:
    return np.full(3, rng.uniform(228, 248)) + rng.uniform(-4, 4, 3)
  if kind < 0.40:
    return np.full(3, rng.uniform(120, 190)) + rng.uniform(-6, 6, 3)
  if kind < 0.60:
    return np.full(3, rng.uniform(18, 45)) + rng.uniform(-4, 4, 3)
  return _hsv_to_rgb(rng.uniform(), rng.uniform(0.45, 1.0), rng.uniform(70, 220))


def _luma(rgb: np.ndarray) -> float:
  return float(np.dot(rgb, [0.299, 0.587, 0.114]))


def _make_identity(rng: np.random.Generator) -> _Identity:
  u = rng.uniform
  color = _body_color(rng)
  # NIR reflectance of paint follows its brightness, with little else of the paint in it: in NI
  # vehicles of one brightness look alike (no hue), the main reason NI carries less than RGB.
  ni_body = float(np.clip(0.7 * _luma(color) + 55 + u(-12, 12), 20, 250))
  decals = []
  for _ in range(int(rng.choice([0, 1, 1, 2, 2]))):
    u0, v0 = u(0.05, 0.6), u(0.45, 0.7)
    box = (u0, u0 + u(0.15, 0.35), v0, v0 + u(0.06, 0.14))
    rgb = _hsv_to_rgb(u(), u(0.5, 1.0), u(60, 240))
    # NI sees a decal at a fraction of its visible contrast.
    ni = ni_body + 0.25 * (_luma(rgb) - _luma(color)) + u(-10, 10)
    decals.append((box, rgb, float(np.clip(ni, 10, 240))))
  plate_bg, plate_ink = [(np.asarray([232.0, 232, 222]), np.asarray([25.0, 25, 30])),
                         (np.asarray([236.0, 200, 40]), np.asarray([20.0, 20, 20])),
                         (np.asarray([40.0, 70, 160]), np.asarray([230.0, 230, 230]))][
                             int(rng.integers(3))]
  round_lamp = rng.random() < 0.5
  vtype = int(rng.integers(len(VEHICLE_TYPES)))
  return _Identity(
      vtype=vtype, width=u(0.95, 1.05), height=u(0.95, 1.05),
      color=color, ni_body=ni_body, decals=tuple(decals), plate_u=u(0.36, 0.64),
      plate_bg=plate_bg, plate_ink=plate_ink, plate_code=rng.random((2, 6)) < 0.5,
      lamp_u=u(0.1, 0.24), lamp_v=u(0.48, 0.64),
      lamp_rx=u(0.06, 0.09) if round_lamp else u(0.10, 0.15),
      lamp_ry=u(0.06, 0.09) if round_lamp else u(0.035, 0.06),
      lamp_tint=np.asarray([200.0, 205, 215]) + u(-20, 20, 3),
      tail_tint=np.asarray([u(150, 220), u(20, 60), u(20, 50)]),
      windows=int(rng.integers(1, 4)), roof_rack=bool(rng.random() < 0.3),
      # Engines and exhausts sit differently on each vehicle: what TI sees of the identity.
      engine_shift=(u(-0.1, 0.1), u(-0.08, 0.08)),
      exhaust_u=float(np.clip(VEHICLE_TYPES[vtype].exhaust_u + u(-0.12, 0.12), 0.1, 0.9)))


def _make_camera(rng: np.random.Generator, front: bool) -> _Camera:
  u = rng.uniform
  return _Camera(
      front=front, scale=u(0.68, 1.0), shift=(u(-0.12, 0.12), u(-0.15, 0.15)),
      brightness=u(0.8, 1.2), white_balance=u(0.92, 1.08, 3), ni_gain=u(0.85, 1.25),
      blur=u(0.0, 0.6), bg_rgb=_hsv_to_rgb(u(), u(0.0, 0.5), u(40, 170)),
      bg_rgb2=_hsv_to_rgb(u(), u(0, 0.4), u(40, 150)), bg_ni=u(30, 120), bg_ti=u(30, 80),
      texture=np.asarray([u(1, 5), u(1, 5), u(0, 6.28)]))


def _ellipse(yy, xx, cy, cx, ry, rx):
  return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


@dataclasses.dataclass
class _Scene:
  """Part masks (bool, supersampled grid) and the vehicle box of one capture."""
  parts: dict[str, np.ndarray]
  box: tuple[float, float, float, float]   # x0, y0, bw, bh in supersampled pixels
  lamp_centres: list[tuple[float, float]]
  plate_centre: tuple[float, float]


def _layout(ident: _Identity, cam: _Camera, rng: np.random.Generator,
            size: tuple[int, int]) -> _Scene:
  """Where every part of the vehicle is in this capture (supersampled pixel grid)."""
  h, w = size
  vt = VEHICLE_TYPES[ident.vtype]
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
  scale = cam.scale * rng.uniform(0.92, 1.08)
  bw, bh = vt.width * ident.width * w * scale, vt.height * ident.height * h * scale
  cx = w / 2 + (cam.shift[1] + rng.uniform(-0.08, 0.08)) * w
  cy = h * 0.55 + (cam.shift[0] + rng.uniform(-0.06, 0.06)) * h
  x0, y0 = cx - bw / 2, cy - bh / 2
  uu, vv = (xx - x0) / bw, (yy - y0) / bh
  inset = vt.cabin_inset * np.clip(1 - vv / vt.cabin, 0, 1)
  cabin = (vv >= 0) & (vv < vt.cabin) & (uu >= 0.04 + inset) & (uu <= 0.96 - inset)
  lower = (vv >= vt.cabin) & (vv <= 0.86) & (uu >= 0) & (uu <= 1)
  parts: dict[str, np.ndarray] = {'body': cabin | lower}
  win_in = (vv >= 0.08) & (vv < vt.cabin - 0.05) & (uu >= 0.1 + inset) & (uu <= 0.9 - inset)
  pillars = np.zeros_like(win_in)
  for k in range(1, ident.windows):
    pillars |= np.abs(uu - (0.1 + 0.8 * k / ident.windows)) < 0.025
  parts['window'] = win_in & ~pillars
  parts['rack'] = ((vv >= -0.05) & (vv < 0.0) & (uu >= 0.2) & (uu <= 0.8) if ident.roof_rack
                   else np.zeros_like(win_in))
  parts['decals'] = np.zeros_like(win_in)
  for k, ((u0, u1, v0, v1), _, _) in enumerate(ident.decals):
    parts[f'decal{k}'] = lower & (uu >= u0) & (uu < u1) & (vv >= v0) & (vv < v1)
    parts['decals'] |= parts[f'decal{k}']
  if cam.front:
    parts['grille'] = (lower & (vv >= vt.cabin + 0.06) & (vv < vt.cabin + 0.2) &
                       (np.abs(uu - 0.5) < 0.16) & (np.mod((vv - vt.cabin) * bh, 3.0) < 1.5))
  else:
    parts['grille'] = np.zeros_like(win_in)
  pu, pv0, pv1 = ident.plate_u, 0.70, 0.80
  plate = (np.abs(uu - pu) < 0.12) & (vv >= pv0) & (vv < pv1)
  parts['plate'] = plate
  col = np.clip(((uu - (pu - 0.1)) / 0.2 * 6).astype(int), 0, 5)
  row = np.clip(((vv - (pv0 + 0.015)) / (pv1 - pv0 - 0.03) * 2).astype(int), 0, 1)
  inside = (np.abs(uu - pu) < 0.1) & (vv >= pv0 + 0.015) & (vv < pv1 - 0.015)
  parts['glyphs'] = inside & ident.plate_code[row, col] & (np.mod((uu - pu) * bw, 2.2) < 1.4)
  lamp_ry = ident.lamp_ry * bw / bh
  lamps = np.zeros_like(win_in)
  centres = []
  for lu in (ident.lamp_u, 1 - ident.lamp_u):
    lamps |= _ellipse(vv, uu, ident.lamp_v, lu, lamp_ry, ident.lamp_rx)
    centres.append((y0 + ident.lamp_v * bh, x0 + lu * bw))
  parts['lamps'] = lamps
  wheel_r = 0.12
  parts['wheels'] = (_ellipse(vv, uu, 0.88, 0.2, wheel_r * bw / bh, wheel_r) |
                     _ellipse(vv, uu, 0.88, 0.8, wheel_r * bw / bh, wheel_r))
  e_u0, e_u1, e_v0, e_v1 = vt.engine_box
  du, dv = ident.engine_shift
  e_u0, e_u1, e_v0, e_v1 = e_u0 + du, e_u1 + du, e_v0 + dv, e_v1 + dv
  if cam.front:
    parts['engine'] = lower & (uu >= e_u0) & (uu < e_u1) & (vv >= e_v0) & (vv < e_v1)
    parts['exhaust'] = np.zeros_like(win_in)
  else:
    parts['engine'] = np.zeros_like(win_in)
    parts['exhaust'] = _ellipse(vv, uu, 0.84, ident.exhaust_u, 0.05 * bw / bh, 0.05)
  return _Scene(parts, (x0, y0, bw, bh), centres,
                (y0 + 0.5 * (pv0 + pv1) * bh, x0 + pu * bw))


def _background_texture(cam: _Camera, size: tuple[int, int]) -> np.ndarray:
  """float [H, W] in [0, 1]: the camera's background pattern (shared by RGB and NI)."""
  h, w = size
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
  fy, fx, ph = cam.texture
  return 0.5 + 0.5 * np.sin(2 * np.pi * (fy * yy / h + fx * xx / w) + ph)


def _paint_rgb(ident: _Identity, cam: _Camera, scene: _Scene, rng: np.random.Generator,
               night: bool, size: tuple[int, int]) -> np.ndarray:
  h, w = size
  p = scene.parts
  yy = np.mgrid[0:h, 0:w][0].astype(np.float64)
  tex = _background_texture(cam, size)
  road = (yy / h > 0.75)[..., None]
  rgb = np.where(road, cam.bg_rgb2, cam.bg_rgb) * (0.8 + 0.4 * tex[..., None])
  shade = 1.0 - 0.12 * np.clip((yy - scene.box[1]) / max(scene.box[3], 1.0), 0, 1)
  rgb[p['body']] = (ident.color * shade[..., None])[p['body']]
  for k, (_, color, _) in enumerate(ident.decals):
    rgb[p[f'decal{k}']] = color
  for name, color in (('rack', (30.0, 30, 32)), ('window', (35.0, 45, 65)),
                      ('grille', (28.0, 28, 28)), ('plate', ident.plate_bg),
                      ('glyphs', ident.plate_ink), ('wheels', (22.0, 22, 22))):
    rgb[p[name]] = color
  rgb = rgb * cam.white_balance * cam.brightness * rng.uniform(0.92, 1.08)
  if night:
    rgb *= 0.35
  tint = ident.lamp_tint if cam.front else ident.tail_tint
  rgb[p['lamps']] = tint * (1.15 if night else 0.85)   # lit at night
  return rgb


def _paint_ni(ident: _Identity, cam: _Camera, scene: _Scene, rng: np.random.Generator,
              night: bool, size: tuple[int, int]) -> np.ndarray:
  p = scene.parts
  ni = cam.bg_ni * (0.85 + 0.3 * _background_texture(cam, size))
  ni[p['body']] = ident.ni_body
  for k, (_, _, value) in enumerate(ident.decals):
    ni[p[f'decal{k}']] = value
  for name, value in (('rack', 40.0), ('window', 30.0), ('grille', 25.0), ('plate', 215.0),
                      ('glyphs', 35.0), ('wheels', 18.0), ('lamps', 170.0)):
    ni[p[name]] = value
  # Active illumination: night barely matters; the illuminator's auto-exposure varies per
  # capture and can saturate bright bodies.
  return ni * cam.ni_gain * rng.uniform(0.95, 1.25) * (0.9 if night else 1.0)


def _paint_ti(ident: _Identity, cam: _Camera, scene: _Scene, rng: np.random.Generator,
              night: bool, size: tuple[int, int]) -> np.ndarray:
  """Heat only: type silhouette and layout, with per-capture warmth (no identity colours).

  By day the sun heats dark paint more than light paint, so body heat carries a little of the
  paint's brightness; at night it is ambient.
  """
  h, w = size
  p = scene.parts
  yy = np.mgrid[0:h, 0:w][0].astype(np.float64)
  u = rng.uniform
  ti = cam.bg_ti + u(-8, 8) + 15 * (yy / h)
  dark = 1.0 - _luma(ident.color) / 255.0
  ti[p['body']] = u(80, 100) if night else 100 + 50 * dark + u(-8, 8)
  ti[p['window']] = u(45, 65)
  ti[p['wheels']] = u(110, 190)
  ti[p['engine']] = u(120, 215)    # engine warmth: how long it has been running
  ti[p['exhaust']] = u(170, 235)
  return ti


def _glare_sources(ident: _Identity, cam: _Camera, scene: _Scene, rng: np.random.Generator,
                   night: bool, size: tuple[int, int]
                   ) -> tuple[list[GlareSource], list[GlareSource], tuple[str, ...]]:
  """The glare bumps of a glared capture, per modality (pixel units of `size`), and their kinds.

  Each source is seen by both modalities (60%) or by one only; its radius and strength differ
  per modality (sensor response and optics differ).
  """
  h, w = size
  u = rng.uniform
  k = 1.0 / SUPERSAMPLE   # the scene is laid out on the supersampled grid
  x0, y0, bw, bh = (k * v for v in scene.box)
  lamp_centres = [(k * cy, k * cx) for cy, cx in scene.lamp_centres]
  if night:
    kinds = ['lamps'] if rng.random() < 0.75 else ['street']
  else:
    kinds = ['sun'] if rng.random() < 0.75 else ['plate_ir']
  if rng.random() < 0.15:
    kinds.append('street' if night else 'sun')
  rgb, ni = [], []
  for kind in kinds:
    if kind == 'lamps':
      centres = lamp_centres if rng.random() < 0.6 else [lamp_centres[int(rng.integers(2))]]
    elif kind == 'street':
      centres = [(u(0.0, 0.45) * h, u(0.05, 0.95) * w)]
    elif kind == 'sun' and rng.random() < 0.5:   # a reflection on the vehicle's body or windows
      centres = [(y0 + u(0.05, 0.8) * bh, x0 + u(0.05, 0.95) * bw)]
    elif kind == 'sun':   # the sun, or its reflection off the road or a facade, anywhere
      centres = [(u(0.0, 1.0) * h, u(0.0, 1.0) * w)]
    else:                 # the NI illuminator reflected by the retro-reflective plate
      centres = [(k * scene.plate_centre[0], k * scene.plate_centre[1])]
    seen = 'ni' if kind == 'plate_ir' else str(rng.choice(['both', 'rgb', 'ni'],
                                                          p=[0.6, 0.2, 0.2]))
    radius = u(0.18, 0.55) * w
    strength = u(1.2, 5.0)
    for cy, cx in centres:
      jy, jx = rng.normal(0, 0.02 * h), rng.normal(0, 0.02 * w)
      if seen in ('both', 'rgb'):
        rgb.append(GlareSource(cy + jy, cx + jx, radius, strength))
      if seen in ('both', 'ni'):
        ni.append(GlareSource(cy + jy + rng.normal(0, 0.015 * h), cx + jx, radius * u(0.6, 1.5),
                              strength * u(0.6, 1.4)))
  return rgb, ni, tuple(kinds)


def glare_alpha(sources: list[GlareSource], size: tuple[int, int]) -> np.ndarray:
  """float [H, W] veil opacity in [0, 1]: biweight bumps (compact support) combined as veils.

  a_i = min(1, s_i (1 - (d / r_i)^2)^2) inside radius r_i, 0 outside; a = 1 - prod(1 - a_i).
  """
  h, w = size
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
  keep = np.ones((h, w))
  for s in sources:
    rho2 = ((yy - s.cy) ** 2 + (xx - s.cx) ** 2) / s.radius ** 2
    bump = np.where(rho2 < 1.0, s.strength * (1.0 - rho2) ** 2, 0.0)
    keep *= 1.0 - np.minimum(bump, 1.0)
  return 1.0 - keep


def _sensor(x: np.ndarray, size: tuple[int, int], sigma: float) -> np.ndarray:
  """Supersampled float scene -> the output-size float image: box filter, then optical blur.

  Blur happens before glare is added (glare forms in the lens, on top of the focused scene);
  noise and quantisation come later (`_quantise`). Returns float [H, W] or [H, W, 3].
  """
  h, w = size
  x = np.clip(x, 0, 255)
  x = x.reshape(h, SUPERSAMPLE, w, SUPERSAMPLE, *x.shape[2:]).mean(axis=(1, 3))
  if sigma > 0.05:
    img = Image.fromarray(np.rint(x).astype(np.uint8))   # PIL blurs uint8 images
    x = np.asarray(img.filter(ImageFilter.GaussianBlur(sigma)), np.float64)
  return x


def _quantise(x: np.ndarray, noise: np.ndarray) -> np.ndarray:
  """Add the (shared) sensor noise, clip to the sensor's range, round to uint8."""
  return np.clip(np.rint(x + noise), 0, 255).astype(np.uint8)


def _gray3(x: np.ndarray) -> np.ndarray:
  return np.repeat(x[..., None], 3, axis=-1)


def _veil(x: np.ndarray, alpha: np.ndarray) -> np.ndarray:
  a = alpha[..., None] if x.ndim == 3 else alpha
  return (1.0 - a) * x + a * GLARE_LEVEL


def _box_down(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  h, w = size
  return mask.reshape(h, SUPERSAMPLE, w, SUPERSAMPLE).mean(axis=(1, 3)) >= 0.5


def render_triplet(ident: _Identity, cam: _Camera, rng: np.random.Generator,
                   size: tuple[int, int], night: bool, glared: bool) -> RenderedTriplet:
  """One capture of `ident` by `cam`, rendered with and (when `glared`) without glare."""
  h, w = size
  big = (h * SUPERSAMPLE, w * SUPERSAMPLE)
  scene = _layout(ident, cam, rng, big)
  rgb_s = _paint_rgb(ident, cam, scene, rng, night, big)
  ni_s = _paint_ni(ident, cam, scene, rng, night, big)
  ti_s = _paint_ti(ident, cam, scene, rng, night, big)
  blur = cam.blur * h / 64.0
  rgb = _sensor(rgb_s, size, blur)
  ni = _sensor(ni_s, size, blur + 0.5 * h / 64.0)   # NI sensors resolve less than RGB ones
  ti = _sensor(ti_s, size, blur + 1.3 * h / 64.0)   # low-resolution thermal optics
  noise_sd = 4.0 if night else 2.5
  n_rgb = rng.normal(0, noise_sd, rgb.shape)
  n_ni = rng.normal(0, 4.0, ni.shape)
  n_ti = rng.normal(0, 2.0, ti.shape)
  clean_rgb, clean_ni = _quantise(rgb, n_rgb), _gray3(_quantise(ni, n_ni))
  cues = {name: _box_down(scene.parts[name], size) for name in CUE_PARTS}
  out = RenderedTriplet(rgb=clean_rgb, ni=clean_ni, ti=_gray3(_quantise(ti, n_ti)),
                        clean_rgb=clean_rgb, clean_ni=clean_ni, glare_rgb=None, glare_ni=None,
                        cues=cues, night=night, kinds=())
  if not glared:
    return out
  src_rgb, src_ni, kinds = _glare_sources(ident, cam, scene, rng, night, size)
  out.kinds = kinds
  if src_rgb:
    a = glare_alpha(src_rgb, size)
    out.rgb = _quantise(_veil(rgb, a), n_rgb)
    out.glare_rgb = a >= GLARE_MASK_ALPHA
  if src_ni:
    a = glare_alpha(src_ni, size)
    out.ni = _gray3(_quantise(_veil(ni, a), n_ni))
    out.glare_ni = a >= GLARE_MASK_ALPHA
  # A source whose mask misses the frame (a lamp outside the crop) leaves no glare: no mask then.
  if out.glare_rgb is not None and not out.glare_rgb.any():
    out.glare_rgb, out.rgb = None, clean_rgb
  if out.glare_ni is not None and not out.glare_ni.any():
    out.glare_ni, out.ni = None, clean_ni
  return out


# ------------------------------------------------------------------------------------ the tree
@dataclasses.dataclass(frozen=True)
class GeneratorSettings:
  """Everything the tree is a function of (stored in OUT_masks/dataset.json)."""
  num_ids: int = 24
  triplets_per_id: int = 6
  image_size: tuple[int, int] = (64, 32)
  num_cameras: int = 8
  flare_fraction: float = 0.22
  num_query_ids: int | None = None
  night_fraction: float = 0.3
  image_format: str = 'png'
  seed: int = 0

  def rates(self) -> tuple[float, float]:
    """(day, night) glare probability: the mean is flare_fraction, night twice as likely."""
    day = self.flare_fraction / (1.0 + (NIGHT_FLARE_FACTOR - 1.0) * self.night_fraction)
    night = min(1.0, NIGHT_FLARE_FACTOR * day)
    if night == 1.0:   # keep the mean when night saturates
      day = (self.flare_fraction - self.night_fraction) / max(1e-9, 1.0 - self.night_fraction)
    return float(np.clip(day, 0.0, 1.0)), night

  def validate(self) -> None:
    if self.triplets_per_id < 2:
      raise ValueError(f'triplets_per_id: need at least 2 (got {self.triplets_per_id}) so that '
                       'every query has a gallery match from another camera')
    if not 2 <= self.num_cameras <= 10:
      raise ValueError(f'num_cameras: must be in 2..10, got {self.num_cameras}')
    if self.num_ids < 2:
      raise ValueError(f'num_ids: need at least 2 identities, got {self.num_ids}')
    if self.image_format not in ('png', 'jpg'):
      raise ValueError(f"image_format: expected 'png' or 'jpg', got {self.image_format!r}")
    if not 0.0 <= self.flare_fraction <= 1.0:
      raise ValueError(f'flare_fraction: must be in [0, 1], got {self.flare_fraction}')
    if not 0.0 <= self.night_fraction <= 1.0:
      raise ValueError(f'night_fraction: must be in [0, 1], got {self.night_fraction}')
    h, w = self.image_size
    if h < 8 or w < 8:
      raise ValueError(f'image_size: at least 8x8, got {h}x{w}')

  @property
  def num_test_ids(self) -> int:
    return max(1, self.num_ids // 3)

  def to_json(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d['image_size'] = list(self.image_size)
    return d

  @classmethod
  def from_json(cls, d: dict[str, Any]) -> 'GeneratorSettings':
    fields = {f.name for f in dataclasses.fields(cls)}
    kw = {k: v for k, v in d.items() if k in fields}
    kw['image_size'] = tuple(kw['image_size'])
    return cls(**kw)


@dataclasses.dataclass(frozen=True)
class Capture:
  """Where one triplet comes from: everything `render_capture` needs to redraw it."""
  pid: int
  index: int
  camera: int
  night: bool
  glared: bool
  split: str                 # 'train' or 'test'
  is_query: bool

  @property
  def stem(self) -> str:
    return f'v{self.camera}_n{int(self.night)}_s{self.index:03d}_{self.index:03d}'


def plan_captures(settings: GeneratorSettings) -> list[Capture]:
  """Every triplet of the tree: id split, camera, day/night and glare draw, in writing order.

  Test ids get at least one glared and one clean triplet on different cameras (their first two
  triplets are on different cameras: the first `num_cameras` triplets of an id use distinct ones).
  """
  s = settings
  pids = list(range(1, s.num_ids + 1))
  split_rng = np.random.default_rng([s.seed, 2])
  num_test = s.num_test_ids
  num_query = s.num_query_ids if s.num_query_ids is not None else max(1, round(0.7 * num_test))
  if not 1 <= num_query <= num_test:
    raise ValueError(f'num_query_ids: must be in 1..{num_test} (the test ids), got {num_query}')
  test_pids = sorted(int(p) for p in split_rng.choice(pids, num_test, replace=False))
  query_pids = {int(p) for p in split_rng.choice(test_pids, num_query, replace=False)}
  day_rate, night_rate = s.rates()
  captures = []
  for pid in pids:
    rng = np.random.default_rng([s.seed, 4, pid])
    first = rng.permutation(s.num_cameras)
    cams = [int(first[t]) if t < s.num_cameras else int(rng.integers(s.num_cameras))
            for t in range(s.triplets_per_id)]
    nights, glares = [], []
    for idx in range(s.triplets_per_id):
      trng = np.random.default_rng([s.seed, 5, pid, idx])
      night = bool(trng.random() < s.night_fraction)
      nights.append(night)
      glares.append(bool(trng.random() < (night_rate if night else day_rate)))
    is_test = pid in test_pids
    if is_test and 0.0 < s.flare_fraction < 1.0 and not any(glares):
      glares[0] = True
    if is_test and 0.0 < s.flare_fraction < 1.0 and all(glares):
      glares[1] = False
    for idx, (cam, night, glared) in enumerate(zip(cams, nights, glares)):
      captures.append(Capture(pid, idx, cam, night, glared, 'test' if is_test else 'train',
                              pid in query_pids))
  return captures


def _cameras(settings: GeneratorSettings) -> list[_Camera]:
  # Half the cameras face oncoming traffic (headlamps), half see vehicles from behind.
  return [_make_camera(np.random.default_rng([settings.seed, 1, c]), front=c % 2 == 0)
          for c in range(settings.num_cameras)]


def render_capture(settings: GeneratorSettings, capture: Capture,
                   cameras: list[_Camera] | None = None) -> RenderedTriplet:
  """Re-render one planned triplet (a pure function of the settings and the capture)."""
  cameras = cameras if cameras is not None else _cameras(settings)
  ident = _make_identity(np.random.default_rng([settings.seed, 3, capture.pid]))
  trng = np.random.default_rng([settings.seed, 6, capture.pid, capture.index])
  return render_triplet(ident, cameras[capture.camera], trng, settings.image_size, capture.night,
                        capture.glared)


def generate_synthetic_dataset(out_dir: str, *, num_ids: int = 24, triplets_per_id: int = 6,
                               image_size: tuple[int, int] = (64, 32), num_cameras: int = 8,
                               flare_fraction: float = 0.22, num_query_ids: int | None = None,
                               night_fraction: float = 0.3, image_format: str = 'png',
                               seed: int = 0) -> str:
  """Writes the synthetic dataset into `out_dir` (WMVeID863 layout) and masks into out_dir_masks.

  Args:
    out_dir: the dataset root to create (must not hold a dataset already).
    num_ids: identities in total; a third (at least 1) are test ids, the rest train ids.
    triplets_per_id: triplets per identity (>= 2; each id is seen by >= 2 cameras).
    image_size: (H, W) of the written images.
    num_cameras: camera views (<= 10: the camera is one digit in the file name); even-numbered
      cameras see vehicles from the front, odd ones from the rear.
    flare_fraction: mean probability that a triplet is glared (RGB, NI or both); night captures
      are NIGHT_FLARE_FACTOR times as likely as day ones.
    num_query_ids: test ids that also appear as queries (default: 70% of them, as WMVeID863's
      205 of 288).
    night_fraction: fraction of night (n1) triplets: darker, noisier RGB, lamps lit.
    image_format: 'png' (lossless) or 'jpg'.
    seed: everything is a pure function of it.
  Returns:
    out_dir.
  """
  settings = GeneratorSettings(num_ids=num_ids, triplets_per_id=triplets_per_id,
                               image_size=tuple(image_size), num_cameras=num_cameras,
                               flare_fraction=flare_fraction, num_query_ids=num_query_ids,
                               night_fraction=night_fraction, image_format=image_format, seed=seed)
  settings.validate()
  captures = plan_captures(settings)
  mask_root = out_dir.rstrip('/') + MASK_SUFFIX
  for d in (out_dir, mask_root):
    if os.path.exists(d) and os.listdir(d):
      raise ValueError(f'{d}: output folder exists and is not empty')
  cameras = _cameras(settings)
  counts = {'train': 0, 'test': 0, 'query': 0, 'glared': 0, 'glared_rgb': 0, 'glared_ni': 0}
  name_of = lambda c: f'{c.stem}.{image_format}'
  for c in captures:
    t = render_capture(settings, c, cameras)
    counts['glared'] += int(t.glare_rgb is not None or t.glare_ni is not None)
    counts['glared_rgb'] += int(t.glare_rgb is not None)
    counts['glared_ni'] += int(t.glare_ni is not None)
    for sp in [c.split] + (['query'] if c.is_query else []):
      for mod, img, mask in (('vis', t.rgb, t.glare_rgb), ('ni', t.ni, t.glare_ni),
                             ('th', t.ti, None)):
        folder = os.path.join(out_dir, sp, f'{c.pid:04d}', mod)
        os.makedirs(folder, exist_ok=True)
        if sp == 'query':  # "selected from the gallery": the same files
          shutil.copyfile(os.path.join(out_dir, c.split, f'{c.pid:04d}', mod, name_of(c)),
                          os.path.join(folder, name_of(c)))
        else:
          _save(img, os.path.join(folder, name_of(c)), image_format)
        if mask is not None:
          mfolder = os.path.join(mask_root, sp, f'{c.pid:04d}', mod)
          os.makedirs(mfolder, exist_ok=True)
          Image.fromarray(mask.astype(np.uint8) * 255).save(
              os.path.join(mfolder, c.stem + '.png'), compress_level=1)
      counts[sp] += 1
  meta = dict(generator_version=GENERATOR_VERSION, settings=settings.to_json(),
              num_train_ids=settings.num_ids - settings.num_test_ids,
              num_test_ids=settings.num_test_ids, triplets=counts)
  os.makedirs(mask_root, exist_ok=True)
  with open(os.path.join(mask_root, 'dataset.json'), 'w') as f:
    json.dump(meta, f, indent=1)
  return out_dir


def read_settings(root: str) -> GeneratorSettings:
  """The generator settings of a written tree (from OUT_masks/dataset.json)."""
  path = os.path.join(root.rstrip('/') + MASK_SUFFIX, 'dataset.json')
  if not os.path.isfile(path):
    raise ValueError(f'{path}: missing; {root} was not written by the synthetic generator')
  with open(path) as f:
    meta = json.load(f)
  if meta.get('generator_version') != GENERATOR_VERSION:
    raise ValueError(f'{path}: generator version {meta.get("generator_version")}, this code '
                     f'writes version {GENERATOR_VERSION}; regenerate the tree')
  return GeneratorSettings.from_json(meta['settings'])


def _save(img: np.ndarray, path: str, image_format: str) -> None:
  if image_format == 'png':
    Image.fromarray(img).save(path, compress_level=1)
  else:
    Image.fromarray(img).save(path, quality=95)


def glare_mask_path(image_path: str) -> str | None:
  """The sidecar glare-mask PNG of a synthetic RGB (vis) or NI image, or None if it has no glare."""
  path = os.path.abspath(image_path)
  mod_dir = os.path.dirname(path)
  pid_dir = os.path.dirname(mod_dir)
  split_dir = os.path.dirname(pid_dir)
  root = os.path.dirname(split_dir)
  mask = os.path.join(root + MASK_SUFFIX, os.path.basename(split_dir), os.path.basename(pid_dir),
                      os.path.basename(mod_dir),
                      os.path.splitext(os.path.basename(path))[0] + '.png')
  return mask if os.path.isfile(mask) else None


def load_glare_mask(image_path: str) -> np.ndarray | None:
  """bool [H, W] true glare mask of a synthetic RGB/NI image, or None if it has no glare."""
  mask = glare_mask_path(image_path)
  if mask is None:
    return None
  with Image.open(mask) as im:
    return np.asarray(im.convert('L')) > 127
