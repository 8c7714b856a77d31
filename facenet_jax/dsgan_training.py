"""TSME stage 1: training the DSGAN generators, a documented reconstruction (ours).

No training code, loss, weight or schedule of TSME's stage 1 was published (reference §3.0-3.1):
only the networks (`models/dsgan.py`), the fact that each generator maps the 3-channel grayscale
copy of an image of one modality to the other modality, and hints that the authors trained them
with a CycleGAN script on unpaired images. Everything below is therefore **our choice**, the usual
unpaired CycleGAN objective (Zhu et al., 2017), and no number of the TSME paper depends on it:

* domains: A = grayscale visible images, B = grayscale infrared images, both as 3-channel gray
  (PIL's luma, `augment.to_gray3`) normalised with the ImageNet mean/std, the generators' input
  at stage 2; G_AB: visible -> fake infrared, G_BA: infrared -> fake visible; D_A, D_B PatchGANs;
* generator loss: least-squares GAN (D(G(x)) -> 1), cycle L1 (A -> B -> A, B -> A -> B) with
  weight `lambda_cycle` = 10, identity L1 (G_BA(A) ~ A, G_AB(B) ~ B) with weight
  `lambda_identity` = 5, each averaged over its two directions;
* discriminator loss: least squares, (D(real) - 1)^2 and D(fake)^2, halved; fakes of the current
  step (no replay buffer of past fakes);
* Adam 2e-4, betas (0.5, 0.999) for generators and discriminators; the LR is constant for the
  first half of the steps and decays linearly to 0 over the second half;
* batches: `batch_size` images drawn independently from each modality's training pool at every
  step (unpaired, a pure function of (seed, step)), resized to `image_size`, random flips;
* the generators' BatchNorm runs in training mode.

`scripts/train_dsgan.py` runs it (`train_dsgan`): `<workdir>/checkpoints/<step>` (orbax, the whole
`GanState`, checksums; a killed run resumes from the latest intact step) and `<workdir>/config.json`.
Stage 2 reads the two generators from that workdir (`load_generators`): a missing or incompatible
checkpoint is an error naming it.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from facenet_jax.models import dsgan

IMAGENET_MEAN, IMAGENET_STD = dsgan.IMAGENET_MEAN, dsgan.IMAGENET_STD
GENERATOR_NAMES = {'g_ab': 'visible_to_infrared', 'g_ba': 'infrared_to_visible'}


@dataclasses.dataclass(frozen=True)
class GanSettings:
  """`config.gan` as a frozen value (configs/tsme_dsgan.py documents each field)."""
  image_size: tuple[int, int] = (288, 144)
  batch_size: int = 4
  num_steps: int = 20000
  learning_rate: float = 2e-4
  lambda_cycle: float = 10.0
  lambda_identity: float = 5.0
  width_multiplier: float = 1.0     # 1 = the official networks; smaller only for tests / studies
  depth: int = 50                   # generator encoder depth (official 50)
  seed: int = 0

  @classmethod
  def from_config(cls, config) -> 'GanSettings':
    return cls(image_size=tuple(config.data.image_size), batch_size=config.gan.batch_size,
               num_steps=config.gan.num_steps, learning_rate=config.gan.learning_rate,
               lambda_cycle=config.gan.lambda_cycle, lambda_identity=config.gan.lambda_identity,
               width_multiplier=config.gan.width_multiplier, depth=config.gan.depth,
               seed=config.gan.seed)


@flax.struct.dataclass
class GanState:
  step: jax.Array
  params: Any           # {'g_ab', 'g_ba', 'd_a', 'd_b'}
  batch_stats: Any      # {'g_ab', 'g_ba'}
  opt_g: Any
  opt_d: Any


def learning_rate_fn(settings: GanSettings):
  half = max(settings.num_steps // 2, 1)

  def lr(step):
    decay = jnp.clip((step - half) / max(settings.num_steps - half, 1), 0.0, 1.0)
    return settings.learning_rate * (1.0 - decay)
  return lr


def optimizers(settings: GanSettings) -> tuple[optax.GradientTransformation, ...]:
  make = lambda: optax.adam(learning_rate_fn(settings), b1=0.5, b2=0.999)  # noqa: E731
  return make(), make()


def init_state(settings: GanSettings, rng: jax.Array) -> GanState:
  """The step-0 state, compiled as one program (op by op, each initializer and layer of the dummy
  forward passes would compile on its own: ~1 min on a CPU for the smallest generators).

  Committed to the first device, as a checkpoint restores it: a state placed otherwise would
  give the GAN step another argument mapping, so a resumed run would compile the step again
  (tens of seconds on a CPU for the smallest networks, minutes for the official ones).
  """
  state = _jitted_init_state(settings)(rng)
  return jax.device_put(state, jax.sharding.SingleDeviceSharding(jax.devices()[0]))


@functools.lru_cache(maxsize=4)
def _jitted_init_state(settings: GanSettings):
  return jax.jit(functools.partial(_init_state, settings))


def _init_state(settings: GanSettings, rng: jax.Array) -> GanState:
  gen = dsgan.Generator(width_multiplier=settings.width_multiplier, depth=settings.depth)
  disc = dsgan.Discriminator(width_multiplier=settings.width_multiplier)
  h, w = settings.image_size
  x = jnp.zeros((1, h, w, 3))
  keys = jax.random.split(rng, 4)
  gens = {name: gen.init(k, x) for name, k in zip(('g_ab', 'g_ba'), keys[:2])}
  params = {name: v['params'] for name, v in gens.items()}
  params.update({name: disc.init(k, x)['params'] for name, k in zip(('d_a', 'd_b'), keys[2:])})
  tx_g, tx_d = optimizers(settings)
  g_params = {k: params[k] for k in ('g_ab', 'g_ba')}
  d_params = {k: params[k] for k in ('d_a', 'd_b')}
  return GanState(step=jnp.zeros((), jnp.int32), params=params,
                  batch_stats={name: v['batch_stats'] for name, v in gens.items()},
                  opt_g=tx_g.init(g_params), opt_d=tx_d.init(d_params))


def _lsgan(scores: jax.Array, target: float) -> jax.Array:
  return jnp.mean((scores - target) ** 2)


def make_gan_step(settings: GanSettings):
  """`step(state, a [B, H, W, 3], b [B, H, W, 3]) -> (state, metrics)`: one generator and one
  discriminator update (module docstring), a pure function to jit."""
  gen = dsgan.Generator(width_multiplier=settings.width_multiplier, depth=settings.depth)
  disc = dsgan.Discriminator(width_multiplier=settings.width_multiplier)
  tx_g, tx_d = optimizers(settings)

  def generate(params, stats, x):
    return gen.apply({'params': params, 'batch_stats': stats}, x, train=True,
                     mutable=['batch_stats'])

  def generator_loss(g_params, d_params, stats, a, b):
    fake_b, s_ab = generate(g_params['g_ab'], stats['g_ab'], a)
    fake_a, s_ba = generate(g_params['g_ba'], stats['g_ba'], b)
    rec_a, _ = generate(g_params['g_ba'], s_ba['batch_stats'], fake_b)
    rec_b, _ = generate(g_params['g_ab'], s_ab['batch_stats'], fake_a)
    same_a, _ = generate(g_params['g_ba'], s_ba['batch_stats'], a)
    same_b, _ = generate(g_params['g_ab'], s_ab['batch_stats'], b)
    gan = 0.5 * (_lsgan(disc.apply({'params': d_params['d_b']}, fake_b), 1.0) +
                 _lsgan(disc.apply({'params': d_params['d_a']}, fake_a), 1.0))
    cycle = 0.5 * (jnp.mean(jnp.abs(rec_a - a)) + jnp.mean(jnp.abs(rec_b - b)))
    identity = 0.5 * (jnp.mean(jnp.abs(same_a - a)) + jnp.mean(jnp.abs(same_b - b)))
    loss = gan + settings.lambda_cycle * cycle + settings.lambda_identity * identity
    new_stats = {'g_ab': s_ab['batch_stats'], 'g_ba': s_ba['batch_stats']}
    return loss, (new_stats, fake_a, fake_b, {'gan': gan, 'cycle': cycle, 'identity': identity})

  def discriminator_loss(d_params, a, b, fake_a, fake_b):
    def one(params, real, fake):
      return 0.5 * (_lsgan(disc.apply({'params': params}, real), 1.0) +
                    _lsgan(disc.apply({'params': params}, fake), 0.0))
    return one(d_params['d_a'], a, fake_a) + one(d_params['d_b'], b, fake_b)

  def step(state: GanState, a: jax.Array, b: jax.Array):
    g_params = {k: state.params[k] for k in ('g_ab', 'g_ba')}
    d_params = {k: state.params[k] for k in ('d_a', 'd_b')}
    (g_loss, (stats, fake_a, fake_b, terms)), g_grads = jax.value_and_grad(
        generator_loss, has_aux=True)(g_params, d_params, state.batch_stats, a, b)
    updates, opt_g = tx_g.update(g_grads, state.opt_g, g_params)
    g_params = optax.apply_updates(g_params, updates)
    fake_a, fake_b = jax.lax.stop_gradient(fake_a), jax.lax.stop_gradient(fake_b)
    d_loss, d_grads = jax.value_and_grad(discriminator_loss)(d_params, a, b, fake_a, fake_b)
    updates, opt_d = tx_d.update(d_grads, state.opt_d, d_params)
    d_params = optax.apply_updates(d_params, updates)
    new = GanState(step=state.step + 1, params={**g_params, **d_params}, batch_stats=stats,
                   opt_g=opt_g, opt_d=opt_d)
    return new, {'g_loss': g_loss, 'd_loss': d_loss, **terms}

  return step


@functools.lru_cache(maxsize=4)
def jitted_gan_step(settings: GanSettings):
  """`make_gan_step(settings)`, jitted once per settings in a process (the compile is minutes)."""
  return jax.jit(make_gan_step(settings))


def gray_normalized(images: np.ndarray) -> np.ndarray:
  """uint8 [B, H, W, 3] -> the generators' input: 3-channel PIL gray, ImageNet-normalised."""
  from input_pipeline import augment  # pylint: disable=g-import-not-at-top
  gray = np.stack([augment.to_gray3(x) for x in images]).astype(np.float32) / 255.0
  return (gray - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)


def sample_batch(stores, pools: Mapping[int, np.ndarray], batch_size: int, seed: int,
                 step: int) -> tuple[np.ndarray, np.ndarray]:
  """(A, B) batches of step `step`: independent draws from each modality's pool, random flips."""
  rng = np.random.default_rng([seed, step, 0xD5])
  out = []
  for modality in (0, 1):
    chosen = rng.choice(pools[modality], batch_size, replace=len(pools[modality]) < batch_size)
    images = np.stack([stores.get(int(i)) for i in chosen])
    flips = rng.random(batch_size) < 0.5
    images = np.where(flips[:, None, None, None], images[:, :, ::-1], images)
    out.append(gray_normalized(images))
  return out[0], out[1]


def generator_variables(state: GanState) -> dict[str, dict[str, Any]]:
  """{'visible_to_infrared', 'infrared_to_visible'}: {'params', 'batch_stats'} of the generators."""
  return _generators_of(state.params, state.batch_stats)


def _generators_of(params: Mapping[str, Any], batch_stats: Mapping[str, Any]
                   ) -> dict[str, dict[str, Any]]:
  return {name: {'params': params[key], 'batch_stats': batch_stats[key]}
          for key, name in GENERATOR_NAMES.items()}


def train_dsgan(config, workdir: str, allow_config_change: bool = False, strict: bool = False,
                say=print) -> GanState:
  """Trains (or resumes) stage 1 in `workdir`; returns the final state (module docstring)."""
  import pathlib  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  from facenet_jax import checkpointing  # pylint: disable=g-import-not-at-top
  from facenet_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  from input_pipeline import cross_modal_pipeline  # pylint: disable=g-import-not-at-top
  settings = GanSettings.from_config(config)
  path = pathlib.Path(workdir)
  path.mkdir(parents=True, exist_ok=True)
  with workdir_lib.WorkdirLock(path, notice=say):
    workdir_lib.record_config(path, config, allow_config_change)
    splits = cross_modal_pipeline.load_splits(config.data)
    pools = {m: np.asarray([i for i, r in enumerate(splits.train) if r.modality == m])
             for m in (0, 1)}
    for m, name in enumerate(splits.modality_names):
      if not len(pools[m]):
        raise ValueError(f'{config.data.dataset} at {config.data.root!r}: no {name} training '
                         'images for the GAN')
    store = cross_modal_pipeline.ImageStore(splits.train, settings.image_size, 'bicubic',
                                            config.data.cache_images)
    ckpt = checkpointing.Checkpointer(path, config.gan.keep_checkpoints, strict=strict, warn=say)
    state = init_state(settings, jax.random.PRNGKey(settings.seed))
    if config.gan.pretrained_path:
      state = with_imagenet_encoders(state, config.gan.pretrained_path, settings)
    if ckpt.latest_step() is not None:
      state, _ = ckpt.restore(state)
      say(f'resuming stage 1 from step {int(state.step)} in {path / "checkpoints"}')
    step_fn = jitted_gan_step(settings)
    say(f'DSGAN on {config.data.dataset}: {len(pools[0])} + {len(pools[1])} training images, '
        f'{settings.num_steps} steps of {settings.batch_size} + {settings.batch_size} images')
    start, t0 = int(state.step), time.time()
    for step in range(start, settings.num_steps):
      a, b = sample_batch(store, pools, settings.batch_size, settings.seed, step)
      state, metrics = step_fn(state, a, b)
      done = step + 1
      if done % config.gan.log_every_steps == 0 or done == settings.num_steps:
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        bad = [k for k, v in values.items() if not np.isfinite(v)]
        if bad:
          raise FloatingPointError(f'stage 1: non-finite {bad} at step {done}; the last saved '
                                   f'step is {ckpt.latest_step()} in {path / "checkpoints"}')
        rate = (done - start) / max(time.time() - t0, 1e-9)
        say(f'step {done}/{settings.num_steps} | ' +
            ' '.join(f'{k} {v:.3f}' for k, v in values.items()) + f' | {rate:.2f} it/s')
      if done % config.gan.checkpoint_every_steps == 0 or done == settings.num_steps:
        if ckpt.save(state, {'step': done, 'settings': dataclasses.asdict(settings)}):
          say(f'checkpoint: step {done} -> {path / "checkpoints" / str(done)}')
    ckpt.close()
  return state


def with_imagenet_encoders(state: GanState, weights_path: str, settings: GanSettings) -> GanState:
  """Both generators' encoders from converted ImageNet ResNet weights (the official generator
  starts from torchvision's ImageNet ResNet-50); decoders and discriminators keep their init."""
  from facenet_jax import pretrained  # pylint: disable=g-import-not-at-top
  if settings.width_multiplier != 1.0:
    raise ValueError('config.gan.pretrained_path needs config.gan.width_multiplier=1.0')
  backbone = pretrained.load_pretrained_backbone(weights_path, settings.depth)
  params, stats = dict(state.params), dict(state.batch_stats)
  for g in ('g_ab', 'g_ba'):
    params[g], stats[g] = _encoder_into(params[g], stats[g], backbone)
  return state.replace(params=params, batch_stats=stats)


def _encoder_into(params, stats, backbone):
  params, stats = dict(params), dict(stats)
  params['stem'] = {**params['stem'], **backbone['params']['stem']}
  stats['stem'] = {**stats['stem'], **backbone['batch_stats']['stem']}
  for s in range(1, 5):
    params[f'layer{s}'] = backbone['params'][f'layer{s}']
    stats[f'layer{s}'] = backbone['batch_stats'][f'layer{s}']
  return params, stats


def load_generators(workdir: str, settings: GanSettings | None = None
                    ) -> tuple[dict[str, dict[str, Any]], GanSettings]:
  """The stage-1 generators of a workdir's latest intact checkpoint, and their settings.

  Raises a `CheckpointError` naming the folder when there is no checkpoint (TSME's official
  code prints "file is not exist" and goes on with a random decoder; here that is an error).
  """
  import pathlib  # pylint: disable=g-import-not-at-top
  from facenet_jax import checkpointing  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(workdir)
  if not (path / 'checkpoints').is_dir():
    raise checkpointing.CheckpointError(
        f'{path}: no stage-1 checkpoints (expected {path / "checkpoints"}); train the generators '
        'first with scripts/train_dsgan.py (config.model.generator_workdir)')
  ckpt = checkpointing.Checkpointer(path, 1, read_only=True)
  if settings is None:
    _, meta = ckpt.meta()
    saved = dict(meta['settings'])
    saved['image_size'] = tuple(saved['image_size'])
    settings = GanSettings(**saved)
  template = jax.eval_shape(lambda: init_state(settings, jax.random.PRNGKey(0)))
  target = {'params': template.params, 'batch_stats': template.batch_stats}
  variables, _, _ = ckpt.restore_variables(target)
  ckpt.close()
  return _generators_of(variables['params'], variables['batch_stats']), settings
