"""Model families, each registered under `config.model.name` (see `registry`).

Importing this package registers every model; `build_model` / `get_spec` look them up.
"""

from facenet_jax.models import agw  # noqa: F401  (registers 'agw')
from facenet_jax.models import deen  # noqa: F401  (registers 'deen')
from facenet_jax.models import dndm  # noqa: F401  (registers 'dndm')
from facenet_jax.models import facenet  # noqa: F401  (registers 'facenet', 'facenet_vit')
from facenet_jax.models import fscnet  # noqa: F401  (registers 'fsc_net')
from facenet_jax.models import single_stream  # noqa: F401  (registers 'single_stream')
from facenet_jax.models import tsme  # noqa: F401  (registers 'tsme')
from facenet_jax.models.registry import build_model, get_spec, init_variables, names, \
    parameter_counts  # noqa: F401
