"""The built-in synthetic multi-spectral vehicle dataset with lamp flare, in WMVeID863 layout.

    OUT/{train,query,test}/<pid:04d>/{vis,ni,th}/v<cam>_n<0|1>_s<scene:03d>_<idx:03d>.png
    OUT_masks/{train,query,test}/<pid:04d>/{vis,ni}/<same stem>.png     (true glare masks)

The tree itself is exactly the WMVeID863 layout, so `records.load_splits('synthetic', OUT)` (the
WMVeID863 reader) reads it; the glare masks live in a sidecar folder beside it (`OUT_masks`,
one 0/255 PNG per flared RGB/NI image; `glare_mask_path` finds the mask of an image).

Procedural vehicles: each identity has its own body shape (width, height, cabin, roof), body and
stripe colour, window count, grille bars, plate position, wheel size and lamp placement; its NI
reflectances are drawn independently of its colours and its TI heat pattern (engine block,
exhaust side, wheel heat) is its own. Eight cameras differ in viewpoint scale and shift,
brightness, blur and background. RGB shows colour (darkened at night, n1), NI shows grey
reflectance under active illumination, TI shows heat only and ignores light.

Flare: a `flare_fraction` of the triplets get saturating glare blobs with a wide bloom centred on
the lamps (plus sometimes a sun blob) in RGB and NI; TI is untouched. The glare is grown until
more than 12.5% of the final image values saturate, so both pseudo-label rules fire (paper: >10%
of values in [250, 255]; official: >=9.5% in the top 2% of the range); unflared images stay below
value 246 so neither rule fires on them. Identity cues hidden by the glare in RGB/NI stay visible
in TI, which is what FACENet's FCE exploits.

Query/gallery as WMVeID863 describes it: "the query samples are randomly selected from the
gallery": the query ids are a random subset of the test ids and their query triplets are copies of
their gallery triplets. Every test id is seen by at least two cameras, so every query has a gallery
match from another camera (same-camera matches are junk under the camera protocol).

Everything is a pure function of the seed (NumPy + Pillow only).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import numpy as np
from PIL import Image
from PIL import ImageFilter

from input_pipeline import flare_label

MASK_SUFFIX = '_masks'
SATURATED_TARGET = 0.125      # grow the glare until this fraction of values is >= 250
UNFLARED_MAX = 245            # unflared images are clipped here: no value reaches 250
GLARE_MASK_LEVEL = 64.0       # the true mask: glare adds at least this much (of 255)


@dataclasses.dataclass(frozen=True)
class _Identity:
  width: float          # vehicle box width as a fraction of the frame width
  height: float         # box height as a fraction of the frame height
  cabin: float          # cabin bottom (fraction of box height)
  cabin_inset: float    # cabin roof inset (trapezoid)
  color: np.ndarray     # body RGB
  stripe_color: np.ndarray
  stripe_v: float
  windows: int
  grille_bars: int
  plate_u: float
  plate_color: np.ndarray
  lamp_u: float
  lamp_v: float
  lamp_r: float
  wheel_u: float
  wheel_r: float
  ni_body: float
  ni_stripe: float
  ni_plate: float
  ti_body: float
  ti_engine: float
  engine_box: tuple[float, float, float, float]   # u0, u1, v0, v1
  exhaust_u: float
  ti_wheel: float


@dataclasses.dataclass(frozen=True)
class _Camera:
  scale: float
  shift: tuple[float, float]
  brightness: float
  ni_gain: float
  blur: float
  bg_rgb: np.ndarray
  bg_rgb2: np.ndarray
  bg_ni: float
  bg_ti: float
  texture: np.ndarray   # (freq_y, freq_x, phase) of a background pattern


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
  i = int(h * 6) % 6
  f = h * 6 - int(h * 6)
  p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
  return np.asarray([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i])


def _make_identity(rng: np.random.Generator) -> _Identity:
  u = rng.uniform
  color = _hsv_to_rgb(u(), u(0.2, 1.0), u(60, 210))
  stripe = _hsv_to_rgb(u(), u(0.0, 1.0), u(30, 220))
  e_u0 = u(0.15, 0.55)
  e_v0 = u(0.45, 0.6)
  return _Identity(
      width=u(0.72, 0.95), height=u(0.42, 0.7), cabin=u(0.3, 0.5), cabin_inset=u(0.05, 0.25),
      color=color, stripe_color=stripe, stripe_v=u(0.55, 0.75), windows=int(rng.integers(1, 4)),
      grille_bars=int(rng.integers(0, 5)), plate_u=u(0.35, 0.65),
      plate_color=np.asarray([200, 200, 175.0]) if u() < 0.5 else np.asarray([205, 180, 40.0]),
      lamp_u=u(0.1, 0.25), lamp_v=u(0.5, 0.65), lamp_r=u(0.06, 0.1), wheel_u=u(0.12, 0.25),
      wheel_r=u(0.08, 0.14), ni_body=u(50, 200), ni_stripe=u(30, 210), ni_plate=u(150, 210),
      ti_body=u(80, 125), ti_engine=u(160, 215),
      engine_box=(e_u0, e_u0 + u(0.2, 0.4), e_v0, e_v0 + u(0.12, 0.3)),
      exhaust_u=0.15 if u() < 0.5 else 0.85, ti_wheel=u(130, 185))


def _make_camera(rng: np.random.Generator) -> _Camera:
  u = rng.uniform
  return _Camera(
      scale=u(0.7, 1.0), shift=(u(-0.08, 0.08), u(-0.08, 0.08)), brightness=u(0.7, 1.15),
      ni_gain=u(0.8, 1.1), blur=u(0.0, 1.0),
      bg_rgb=_hsv_to_rgb(u(), u(0.0, 0.5), u(40, 170)), bg_rgb2=_hsv_to_rgb(u(), u(0, 0.4), u(40, 170)),
      bg_ni=u(30, 120), bg_ti=u(30, 80), texture=np.asarray([u(1, 5), u(1, 5), u(0, 6.28)]))


def _ellipse(yy, xx, cy, cx, ry, rx):
  return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _render(ident: _Identity, cam: _Camera, rng: np.random.Generator, size: tuple[int, int],
            night: bool, flare: bool):
  """One triplet: (rgb, ni, ti) uint8 [H, W, 3] and the glare mask bool [H, W] (or None).

  One procedural drawing, kept in one piece so the three spectra visibly share the same
  vehicle geometry; each block is commented with what it draws.
  """
  h, w = size
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
  scale = cam.scale * rng.uniform(0.94, 1.06)
  bw, bh = ident.width * w * scale, ident.height * h * scale
  cx = w / 2 + (cam.shift[1] + rng.uniform(-0.03, 0.03)) * w
  cy = h * 0.55 + (cam.shift[0] + rng.uniform(-0.03, 0.03)) * h
  x0, y0 = cx - bw / 2, cy - bh / 2
  uu, vv = (xx - x0) / bw, (yy - y0) / bh

  # Part masks, painted in order (later parts on top).
  inset = ident.cabin_inset * np.clip(1 - vv / ident.cabin, 0, 1)
  cabin = (vv >= 0) & (vv < ident.cabin) & (uu >= 0.04 + inset) & (uu <= 0.96 - inset)
  lower = (vv >= ident.cabin) & (vv <= 0.86) & (uu >= 0) & (uu <= 1)
  body = cabin | lower
  win_in = (vv >= 0.08) & (vv < ident.cabin - 0.05) & (uu >= 0.1 + inset) & (uu <= 0.9 - inset)
  pillars = np.zeros_like(win_in)
  for k in range(1, ident.windows):
    pu = 0.1 + 0.8 * k / ident.windows
    pillars |= np.abs(uu - pu) < 0.025
  window = win_in & ~pillars
  stripe = lower & (vv >= ident.stripe_v) & (vv < ident.stripe_v + 0.06)
  grille = np.zeros_like(body)
  for k in range(ident.grille_bars):
    gv = ident.cabin + 0.05 + 0.04 * k
    grille |= (vv >= gv) & (vv < gv + 0.02) & (uu >= 0.32) & (uu <= 0.68)
  plate = (np.abs(uu - ident.plate_u) < 0.11) & (vv >= 0.72) & (vv < 0.8)
  lamp_ry, lamp_rx = ident.lamp_r * bw / bh, ident.lamp_r
  lamps = _ellipse(vv, uu, ident.lamp_v, ident.lamp_u, lamp_ry, lamp_rx) | \
      _ellipse(vv, uu, ident.lamp_v, 1 - ident.lamp_u, lamp_ry, lamp_rx)
  wheel_ry, wheel_rx = ident.wheel_r * bw / bh, ident.wheel_r
  wheels = _ellipse(vv, uu, 0.88, ident.wheel_u, wheel_ry, wheel_rx) | \
      _ellipse(vv, uu, 0.88, 1 - ident.wheel_u, wheel_ry, wheel_rx)
  e_u0, e_u1, e_v0, e_v1 = ident.engine_box
  engine = lower & (uu >= e_u0) & (uu < e_u1) & (vv >= e_v0) & (vv < e_v1)
  exhaust = _ellipse(vv, uu, 0.84, ident.exhaust_u, 0.05 * bw / bh, 0.05)

  # Background: two-tone road/scene with a camera-specific texture.
  fy, fx, ph = cam.texture
  tex = 0.5 + 0.5 * np.sin(2 * np.pi * (fy * yy / h + fx * xx / w) + ph)
  road = (yy / h > 0.75)[..., None]
  bg_rgb = np.where(road, cam.bg_rgb2, cam.bg_rgb) * (0.8 + 0.4 * tex[..., None])
  bg_ni = cam.bg_ni * (0.8 + 0.4 * tex)
  bg_ti = cam.bg_ti + 15 * (yy / h)

  # RGB.
  rgb = bg_rgb.copy()
  for mask, color in ((body, ident.color), (stripe, ident.stripe_color),
                      (window, np.asarray([35.0, 45, 65])), (grille, np.asarray([30.0, 30, 30])),
                      (plate, ident.plate_color), (wheels, np.asarray([22.0, 22, 22]))):
    rgb[mask] = color
  rgb *= cam.brightness * rng.uniform(0.9, 1.1) * (0.35 if night else 1.0)
  rgb[lamps] = (215.0, 215, 200) if night else (190.0, 190, 180)

  # NI: grey reflectance under active illumination (barely affected by night).
  ni = bg_ni.copy()
  for mask, value in ((body, ident.ni_body), (stripe, ident.ni_stripe), (window, 25.0),
                      (grille, 20.0), (plate, ident.ni_plate), (wheels, 15.0), (lamps, 180.0)):
    ni[mask] = value
  ni *= cam.ni_gain * (0.85 if night else 1.0)

  # TI: heat only, independent of light and flare.
  ti = bg_ti.copy()
  for mask, value in ((body, ident.ti_body), (window, 55.0), (engine, ident.ti_engine),
                      (wheels, ident.ti_wheel), (exhaust, 225.0)):
    ti[mask] = value

  rgb = np.clip(rgb, 0, 225)
  ni = np.clip(ni, 0, 225)
  blur = cam.blur * h / 64.0
  noise_seed = int(rng.integers(2**31 - 1))
  ti8 = _finish(ti, blur + 0.6 * h / 64.0, 2.0, 255, np.random.default_rng([noise_seed, 2]))
  if not flare:
    rgb8 = _finish(rgb, blur, 2.5, UNFLARED_MAX, np.random.default_rng([noise_seed, 0]))
    ni8 = _finish(ni, blur, 2.5, UNFLARED_MAX, np.random.default_rng([noise_seed, 1]))
    return rgb8, _gray3(ni8), _gray3(ti8), None
  centres = [(y0 + ident.lamp_v * bh, x0 + ident.lamp_u * bw),
             (y0 + ident.lamp_v * bh, x0 + (1 - ident.lamp_u) * bw)]
  if rng.random() < 0.3:  # a sun blob somewhere in the upper half
    centres.append((rng.uniform(0, 0.5) * h, rng.uniform(0, 1) * w))
  centres = [(cy + rng.normal(0, 0.02 * h), cx + rng.normal(0, 0.02 * w)) for cy, cx in centres]
  # Grow the glare until both pseudo-label rules fire on the final uint8 RGB and NI images.
  sigma = 0.08 * w
  for _ in range(60):
    glare = _glare_field((h, w), centres, sigma)
    rgb8 = _finish(rgb + glare[..., None] * np.asarray([1.0, 0.97, 0.9]), blur, 2.5, 255,
                   np.random.default_rng([noise_seed, 0]))
    ni8 = _gray3(_finish(ni + glare, blur, 2.5, 255, np.random.default_rng([noise_seed, 1])))
    if all(flare_label.paper_flare_fraction(x) > SATURATED_TARGET and
           flare_label.official_flare_fraction(x) > SATURATED_TARGET for x in (rgb8, ni8)):
      break
    sigma *= 1.1
  return rgb8, ni8, _gray3(ti8), glare >= GLARE_MASK_LEVEL


def _gray3(x: np.ndarray) -> np.ndarray:
  return np.repeat(x[..., None], 3, axis=-1)


def _finish(x: np.ndarray, sigma: float, noise: float, top: int,
            rng: np.random.Generator) -> np.ndarray:
  """Blur (PIL Gaussian), add sensor noise, quantise to uint8 clipped at `top`."""
  img = Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))
  if sigma > 0.05:
    img = img.filter(ImageFilter.GaussianBlur(sigma))
  y = np.asarray(img, np.float64) + rng.normal(0, noise, x.shape)
  return np.clip(np.rint(y), 0, top).astype(np.uint8)


def _glare_field(size: tuple[int, int], centres, sigma: float) -> np.ndarray:
  """Additive glare [H, W]: a saturating core plus a wide bloom (3 sigma) around each centre."""
  h, w = size
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
  field = np.zeros((h, w))
  for cy, cx in centres:
    d2 = (yy - cy) ** 2 + (xx - cx) ** 2
    field += 600.0 * np.exp(-d2 / (2 * sigma ** 2)) + 120.0 * np.exp(-d2 / (2 * (3 * sigma) ** 2))
  return field


def glare_mask_path(image_path: str) -> str | None:
  """The sidecar glare-mask PNG of a synthetic RGB (vis) or NI image, or None if unflared."""
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
  """bool [H, W] true glare mask of a synthetic RGB/NI image, or None if it has no flare."""
  mask = glare_mask_path(image_path)
  if mask is None:
    return None
  with Image.open(mask) as im:
    return np.asarray(im.convert('L')) > 127


def generate_synthetic_dataset(out_dir: str, *, num_ids: int = 24, triplets_per_id: int = 6,
                               image_size: tuple[int, int] = (64, 32), num_cameras: int = 8,
                               flare_fraction: float = 0.3, num_query_ids: int | None = None,
                               night_fraction: float = 0.3, image_format: str = 'png',
                               seed: int = 0) -> str:
  """Writes the synthetic dataset into `out_dir` (WMVeID863 layout) and masks into out_dir_masks.

  Args:
    out_dir: the dataset root to create (must not hold a dataset already).
    num_ids: identities in total; a third (at least 1) are test ids, the rest train ids.
    triplets_per_id: triplets per identity (>= 2; each id is seen by >= 2 cameras).
    image_size: (H, W) of the written images.
    num_cameras: camera views (<= 10: the camera is one digit in the file name).
    flare_fraction: fraction of triplets with glare in RGB and NI.
    num_query_ids: test ids that also appear as queries (default: 70% of them, as WMVeID863's
      205 of 288).
    night_fraction: fraction of night (n1) triplets: darker RGB, brighter lamps.
    image_format: 'png' (lossless) or 'jpg'.
    seed: everything is a pure function of it.
  Returns:
    out_dir.
  """
  if triplets_per_id < 2:
    raise ValueError(f'triplets_per_id: need at least 2 (got {triplets_per_id}) so that every '
                     'query has a gallery match from another camera')
  if not 2 <= num_cameras <= 10:
    raise ValueError(f'num_cameras: must be in 2..10, got {num_cameras}')
  if num_ids < 2:
    raise ValueError(f'num_ids: need at least 2 identities, got {num_ids}')
  if image_format not in ('png', 'jpg'):
    raise ValueError(f"image_format: expected 'png' or 'jpg', got {image_format!r}")
  num_test = max(1, num_ids // 3)
  num_train = num_ids - num_test
  if num_query_ids is None:
    num_query_ids = max(1, int(round(0.7 * num_test)))
  if not 1 <= num_query_ids <= num_test:
    raise ValueError(f'num_query_ids: must be in 1..{num_test} (the test ids), got {num_query_ids}')
  mask_root = out_dir.rstrip('/') + MASK_SUFFIX
  for d in (out_dir, mask_root):
    if os.path.exists(d) and os.listdir(d):
      raise ValueError(f'{d}: output folder exists and is not empty')

  cameras = [_make_camera(np.random.default_rng([seed, 1, c])) for c in range(num_cameras)]
  pids = list(range(1, num_ids + 1))
  split_rng = np.random.default_rng([seed, 2])
  test_pids = sorted(int(p) for p in split_rng.choice(pids, num_test, replace=False))
  query_pids = set(int(p) for p in split_rng.choice(test_pids, num_query_ids, replace=False))
  counts = {'train': 0, 'test': 0, 'query': 0, 'flared': 0}

  for pid in pids:
    split = 'test' if pid in test_pids else 'train'
    ident = _make_identity(np.random.default_rng([seed, 3, pid]))
    rng = np.random.default_rng([seed, 4, pid])
    first = rng.permutation(num_cameras)
    cams = [int(first[t]) if t < num_cameras else int(rng.integers(num_cameras))
            for t in range(triplets_per_id)]
    for idx, cam in enumerate(cams):
      trng = np.random.default_rng([seed, 5, pid, idx])
      night = bool(trng.random() < night_fraction)
      flare = bool(trng.random() < flare_fraction)
      rgb, ni, ti, mask = _render(ident, cameras[cam], trng, image_size, night, flare)
      name = f'v{cam}_n{int(night)}_s{idx:03d}_{idx:03d}.{image_format}'
      splits = [split] + (['query'] if pid in query_pids else [])
      for sp in splits:
        for mod, img in (('vis', rgb), ('ni', ni), ('th', ti)):
          folder = os.path.join(out_dir, sp, f'{pid:04d}', mod)
          os.makedirs(folder, exist_ok=True)
          if sp == 'query':  # "selected from the gallery": the same files
            shutil.copyfile(os.path.join(out_dir, split, f'{pid:04d}', mod, name),
                            os.path.join(folder, name))
          else:
            _save(img, os.path.join(folder, name), image_format)
          if mask is not None and mod != 'th':
            mfolder = os.path.join(mask_root, sp, f'{pid:04d}', mod)
            os.makedirs(mfolder, exist_ok=True)
            Image.fromarray(mask.astype(np.uint8) * 255).save(
                os.path.join(mfolder, os.path.splitext(name)[0] + '.png'), compress_level=1)
        counts[sp] += 1
      counts['flared'] += int(flare)
  meta = dict(num_ids=num_ids, num_train_ids=num_train, num_test_ids=num_test,
              num_query_ids=num_query_ids, triplets_per_id=triplets_per_id,
              image_size=list(image_size), num_cameras=num_cameras, flare_fraction=flare_fraction,
              night_fraction=night_fraction, seed=seed, triplets=counts)
  os.makedirs(mask_root, exist_ok=True)
  with open(os.path.join(mask_root, 'dataset.json'), 'w') as f:
    json.dump(meta, f, indent=1)
  return out_dir


def _save(img: np.ndarray, path: str, image_format: str) -> None:
  if image_format == 'png':
    Image.fromarray(img).save(path, compress_level=1)
  else:
    Image.fromarray(img).save(path, quality=95)
