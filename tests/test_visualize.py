"""Pictures: PNG files of the documented pixel size, borders and overlays that mean something."""

import numpy as np
from PIL import Image
import pytest

from facenet_jax.eval import visualize

CELL = (12, 6)     # (H, W) of one modality image: tiny on purpose
BORDER = 2
GAP = 3


def _triplet(value: int, size=(20, 10)):
  """Three flat uint8 images (RGB, NI, TI) of grey levels value, value + 1, value + 2."""
  return tuple(np.full(size + (3,), value + m, np.uint8) for m in range(3))


def _open(path):
  with Image.open(path) as image:
    assert image.format == 'PNG'
    return np.asarray(image.convert('RGB'))


def test_denormalize_inverts_the_input_normalisation():
  pixels = np.array([[0, 64, 255]], np.uint8)[..., None].repeat(3, -1)  # [1, 3, 3]
  mean, std = (0.5, 0.4, 0.3), (0.5, 0.25, 0.2)
  normalised = (pixels / 255.0 - np.array(mean)) / np.array(std)
  np.testing.assert_array_equal(visualize.denormalize(normalised, mean, std), pixels)


def test_to_uint8_accepts_grey_float_and_rejects_bad_shapes():
  grey = np.array([[0.0, 1.0]], np.float32)
  np.testing.assert_array_equal(visualize.to_uint8(grey), [[[0, 0, 0], [255, 255, 255]]])
  with pytest.raises(ValueError, match='query_images'):
    visualize.to_uint8(np.zeros((2, 2, 4)), name='query_images')
  with pytest.raises(ValueError, match='both mean and std'):
    visualize.to_uint8(grey, mean=(0.5,) * 3)


def test_plot_cmc_writes_a_png_of_the_configured_size(tmp_path):
  path = tmp_path / 'sub' / 'cmc.png'
  visualize.plot_cmc(np.linspace(0.5, 1.0, 50), path, title='test')
  image = _open(path)
  width = int(visualize.CMC_FIGSIZE[0] * visualize.CMC_DPI)
  height = int(visualize.CMC_FIGSIZE[1] * visualize.CMC_DPI)
  assert image.shape == (height, width, 3)
  assert image.std() > 0  # something was drawn


def test_plot_cmc_rejects_values_outside_unit_interval(tmp_path):
  with pytest.raises(ValueError, match='cmc'):
    visualize.plot_cmc(np.array([0.5, 1.5]), tmp_path / 'x.png')
  with pytest.raises(ValueError, match='cmc'):
    visualize.plot_cmc(np.zeros((2, 2)), tmp_path / 'x.png')


def _strip_origin(i, j, num_top):
  """Top-left pixel of gallery strip j of query row i (j = -1: the query), from the docstring."""
  strip_h, strip_w = CELL[0] + 2 * BORDER, 3 * CELL[1] + 2 * BORDER
  top = GAP + i * (strip_h + GAP)
  left = GAP if j < 0 else GAP + strip_w + 2 * GAP + j * (strip_w + GAP)
  return top, left


@pytest.mark.parametrize('per_query', [False, True])
def test_rank_list_size_and_border_colours(tmp_path, per_query):
  gallery = [_triplet(10 * g) for g in range(6)]
  queries = [_triplet(200), _triplet(220)]
  ranked = np.array([[3, 1, 0, 5], [2, 4, 1, 0]])
  matches = np.array([[True, False, False, True], [False, True, True, False]])
  top_k = 3
  images = [[gallery[j] for j in row] for row in ranked] if per_query else gallery
  path = tmp_path / 'rank.png'
  visualize.plot_rank_list(queries, images, ranked, matches, path, top_k=top_k, cell_size=CELL,
                           border=BORDER, gap=GAP)
  image = _open(path)
  strip_h, strip_w = CELL[0] + 2 * BORDER, 3 * CELL[1] + 2 * BORDER
  assert image.shape == (2 * GAP + 2 * strip_h + GAP,
                         2 * GAP + strip_w + 2 * GAP + top_k * strip_w + (top_k - 1) * GAP, 3)
  for i in range(2):
    top, left = _strip_origin(i, -1, top_k)
    assert tuple(image[top, left]) == visualize.QUERY_COLOR
    # Inside the border: the query's RGB image (grey level 200 or 220), then NI (+1).
    assert tuple(image[top + BORDER, left + BORDER]) == (200 + 20 * i,) * 3
    assert tuple(image[top + BORDER, left + BORDER + CELL[1]]) == (201 + 20 * i,) * 3
    for j in range(top_k):
      top, left = _strip_origin(i, j, top_k)
      expected = visualize.MATCH_COLOR if matches[i, j] else visualize.MISMATCH_COLOR
      assert tuple(image[top, left]) == expected
      assert tuple(image[top + strip_h - 1, left + strip_w - 1]) == expected
      # The image inside is the ranked gallery item: TI of gallery g has grey level 10 g + 2.
      inside = image[top + BORDER, left + BORDER + 2 * CELL[1]]
      assert tuple(inside) == (10 * ranked[i, j] + 2,) * 3
  # The background between strips stays white.
  assert tuple(image[0, 0]) == visualize.BACKGROUND


def test_rank_list_accepts_normalised_float_images(tmp_path):
  mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
  grey = lambda v: tuple((np.full((8, 4, 3), v / 255.0) - 0.5) / 0.5 for _ in range(3))
  canvas = visualize.rank_list_canvas([grey(100)], [grey(30), grey(60)], [[1, 0]],
                                      [[False, True]], top_k=2, cell_size=CELL, border=BORDER,
                                      gap=GAP, mean=mean, std=std)
  top, left = _strip_origin(0, 0, 2)
  assert tuple(canvas[top + BORDER, left + BORDER]) == (60, 60, 60)
  assert tuple(canvas[top, left]) == visualize.MISMATCH_COLOR


def test_rank_list_errors_name_the_argument(tmp_path):
  gallery = [_triplet(0) for _ in range(3)]
  with pytest.raises(ValueError, match='ranked_indices'):
    visualize.plot_rank_list([_triplet(0)], gallery, [[0, 1]], [[True, False]],
                             tmp_path / 'x.png', top_k=3)
  with pytest.raises(ValueError, match='matches'):
    visualize.plot_rank_list([_triplet(0)], gallery, [[0, 1, 2]], [[True]], tmp_path / 'x.png',
                             top_k=3)
  with pytest.raises(ValueError, match=r'ranked_indices\[0, 1\] = 7'):
    visualize.plot_rank_list([_triplet(0)], gallery, [[0, 7]], [[True, False]],
                             tmp_path / 'x.png', top_k=2)
  with pytest.raises(ValueError, match=r'query_images\[0\]'):
    visualize.plot_rank_list([_triplet(0)[:2]], gallery, [[0]], [[True]], tmp_path / 'x.png',
                             top_k=1)


def test_flare_masks_size_and_overlay_follows_the_upsampled_mask(tmp_path):
  grey = np.full((24, 12, 3), 128, np.uint8)
  # 2 x 2 feature-map mask: left column flared (1), right column clean (0).
  mask = np.array([[1.0, 0.0], [1.0, 0.0]], np.float32)
  path = tmp_path / 'masks.png'
  visualize.plot_flare_masks([grey, grey], [grey, grey], [mask, 1 - mask], [mask, mask], path,
                             cell_size=CELL, gap=GAP)
  image = _open(path)
  assert image.shape == (2 * GAP + 2 * CELL[0] + GAP, 2 * GAP + 4 * CELL[1] + 3 * GAP, 3)
  top = GAP + CELL[0] // 2
  overlay_left = GAP + CELL[1] + GAP    # second cell of a row: RGB + M_R
  plain = image[top, GAP]
  assert tuple(plain) == (128, 128, 128)  # the unmodified RGB cell
  hot = image[top, overlay_left]                     # mask 1: jet red
  cold = image[top, overlay_left + CELL[1] - 1]      # mask 0: jet blue
  # jet(1) = (0.5, 0, 0) and jet(0) = (0, 0, 0.5): blended half and half with grey 128.
  np.testing.assert_allclose(hot, [128, 64, 64], atol=1)
  np.testing.assert_allclose(cold, [64, 64, 128], atol=1)
  # The second sample's RGB mask is inverted, so its colours swap.
  top2 = top + CELL[0] + GAP
  assert image[top2, overlay_left][2] > image[top2, overlay_left][0]


def test_flare_masks_errors_name_the_argument(tmp_path):
  grey = np.zeros((8, 4, 3), np.uint8)
  with pytest.raises(ValueError, match='masks_ni'):
    visualize.plot_flare_masks([grey], [grey], [np.zeros((2, 2))], [], tmp_path / 'x.png')
  with pytest.raises(ValueError, match='mask must be'):
    visualize.plot_flare_masks([grey], [grey], [np.zeros((2, 2, 2))], [np.zeros((2, 2))],
                               tmp_path / 'x.png')
