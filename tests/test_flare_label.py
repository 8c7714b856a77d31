"""Flare pseudo-label: exact boundary cases of both rules and torch.histc parity."""

import numpy as np
import pytest

from input_pipeline import flare_label


def _image(count_value: int, count: int, total: int = 1000, fill: int = 100,
           low: int = 0, high: int = 255) -> np.ndarray:
  """A uint8 [total] image: `count` values equal to count_value, one `low`, one `high`, rest fill."""
  x = np.full(total, fill, np.uint8)
  x[:count] = count_value
  x[-1], x[-2] = low, high
  return x


def _histc_top_reference(image: np.ndarray) -> int:
  """Plain loop over values, float32 arithmetic, as torch.histc(x / 255, 100) bins 98..99."""
  v = [np.float32(p) / np.float32(255) for p in image.ravel()]
  a, b = min(v), max(v)
  if a == b:
    a, b = a - np.float32(1), b + np.float32(1)
  count = 0
  for x in v:
    k = int(np.float32(np.float32(x - a) * np.float32(100)) / np.float32(b - a))
    count += min(k, 99) >= 98
  return count


def test_paper_rule_boundaries():
  # 1000 values; the last two are 0 and 255 (255 counts as saturated too). Exactly 10% is not
  # "above 10%"; 10.1% is; 249 is not saturated.
  for value, count, expected in ((250, 100, 1), (250, 99, 0), (249, 100, 0), (255, 100, 1)):
    x = _image(value, count)
    n_sat = (count if value >= 250 else 0) + 1
    assert flare_label.paper_flare_fraction(x) == n_sat / 1000
    assert flare_label.paper_flare_bit(x) == expected, (value, count)


def test_official_rule_boundaries_full_range():
  # Full 0..255 range: the top two bins are exactly the values 250..255.
  for value, count, expected in ((250, 94, 1), (250, 93, 0), (249, 200, 0), (251, 94, 1)):
    x = _image(value, count)   # + the single 255 value
    assert flare_label.histc_top_count(x) == (count if value >= 250 else 0) + 1
    assert flare_label.official_flare_bit(x) == expected, (value, count)
  # 9.4% vs 9.5% exactly (inclusive >=).
  x94 = np.r_[np.full(94, 255), np.zeros(906)].astype(np.uint8)
  x95 = np.r_[np.full(95, 255), np.zeros(905)].astype(np.uint8)
  assert flare_label.official_flare_fraction(x94) == pytest.approx(0.094)
  assert flare_label.official_flare_bit(x94) == 0
  assert flare_label.official_flare_bit(x95) == 1


def test_official_rule_uses_the_images_own_range():
  # A dim image spanning 0..100: values 98..100 fall in the top 2% (bins 98, 99); 97 does not.
  x = np.r_[np.full(30, 98), np.full(40, 100), np.full(50, 97), np.zeros(880)].astype(np.uint8)
  assert flare_label.histc_top_count(x) == 70
  assert flare_label.official_flare_bit(x) == 0
  x[:100] = 99
  assert flare_label.histc_top_count(x) == 100
  assert flare_label.official_flare_bit(x) == 1
  assert flare_label.paper_flare_bit(x) == 0   # the paper rule needs absolute saturation


@pytest.mark.parametrize('value', [0, 37, 255])
def test_constant_image_gives_zero(value):
  x = np.full((8, 4, 3), value, np.uint8)
  assert flare_label.histc_top_count(x) == 0
  assert flare_label.official_flare_fraction(x) == 0.0
  assert flare_label.official_flare_bit(x) == 0


def test_histc_matches_loop_reference():
  rng = np.random.default_rng(0)
  for trial in range(20):
    lo, hi = sorted(rng.integers(0, 256, 2))
    x = rng.integers(lo, hi + 1, (7, 5, 3)).astype(np.uint8)
    assert flare_label.histc_top_count(x) == _histc_top_reference(x), trial


@pytest.mark.parity
def test_histc_matches_torch():
  torch = pytest.importorskip('torch')
  rng = np.random.default_rng(1)
  cases = [np.full((4, 4, 3), 9, np.uint8), np.r_[np.zeros(10), np.full(5, 250)].astype(np.uint8)]
  for _ in range(200):
    lo, hi = sorted(rng.integers(0, 256, 2))
    cases.append(rng.integers(lo, hi + 1, (9, 6, 3)).astype(np.uint8))
  for x in cases:
    hist = torch.histc(torch.from_numpy(x).float().div(255), bins=100)
    expected = int(hist[98] + hist[99])
    assert flare_label.histc_top_count(x) == expected
    ratio = ((hist[98] + hist[99]) / hist.sum()).ge(0.095).item()
    assert flare_label.official_flare_bit(x) == int(ratio)


def test_flare_bits_rules():
  flared = np.r_[np.full(200, 255), np.zeros(800)].astype(np.uint8).reshape(10, 100)
  clean = np.r_[np.full(20, 255), np.zeros(980)].astype(np.uint8).reshape(10, 100)
  for rgb, ni, paper, official in ((flared, clean, [1, 0], [0, 0]),
                                   (clean, flared, [0, 1], [0, 0]),
                                   (flared, flared, [1, 1], [1, 1]),
                                   (clean, clean, [0, 0], [0, 0])):
    bits = flare_label.flare_bits(rgb, ni, 'paper')
    assert bits.dtype == np.int32 and bits.shape == (2,)
    assert bits.tolist() == paper
    assert flare_label.flare_bits(rgb, ni, 'official').tolist() == official


def test_errors_name_the_field():
  x = np.zeros((2, 2, 3), np.uint8)
  with pytest.raises(ValueError, match='data.flare_rule'):
    flare_label.flare_bits(x, x, 'median')
  with pytest.raises(ValueError, match='uint8'):
    flare_label.flare_bits(x.astype(np.float32), x, 'paper')
