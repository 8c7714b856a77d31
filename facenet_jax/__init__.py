"""facenet-jax: FACENet for multi-spectral (RGB / NI / TI) vehicle re-identification in JAX/Flax."""

__version__ = '0.1.0'
