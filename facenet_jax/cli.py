"""Command-line helpers shared by the scripts in `scripts/`: flag parsing and `--verbose`."""

import re
import sys
from typing import Sequence

from absl import flags

from facenet_jax import console

VERBOSE = flags.DEFINE_bool('verbose', False, 'Show the INFO logs of absl, orbax, TensorFlow, XLA.')


def parse_flags(argv: Sequence[str]) -> list[str]:
  """absl flag parser that turns a bad `--config.x.y=v` override into a one-line error.

  Configs are locked, so an override with a typo raises deep inside ml_collections with a
  traceback; users should instead see which override failed and why. Then quiets the library
  logs unless `--verbose` (before TensorFlow is imported). Used as
  `app.run(main, flags_parser=parse_flags)`.
  """
  try:
    remaining = flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f'FATAL Flags parsing error: {e}\nPass --helpfull to see the flags.')
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    overrides = [a for a in argv[1:] if a.startswith('--config.')]
    message = str(e).strip('\'"').replace('\\n', ' ').replace('\\\'', '\'')
    message = re.sub(r'\s+', ' ', message)
    sys.exit(f'Invalid config override among {overrides}: {message}')
  console.quiet_library_logs(VERBOSE.value)
  return remaining
