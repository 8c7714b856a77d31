"""Command-line helpers shared by the scripts in `scripts/`: flag parsing, `--verbose`, errors."""

import re
import sys
from typing import Any, Callable, Sequence

from absl import flags

from facenet_jax import console
from facenet_jax import workdir

# What a user can cause and fix (bad data, config, weights file, full or read-only disk, a held
# workdir, a diverged run): printed as one message naming the file or field, exit status 1.
# Anything else is a bug and keeps its traceback.
EXPECTED_ERRORS = (ValueError, OSError, FloatingPointError, workdir.WorkdirLockedError)

VERBOSE = flags.DEFINE_bool('verbose', False, 'Show the INFO logs of absl, orbax, TensorFlow, XLA.')


def parse_flags(argv: Sequence[str]) -> list[str]:
  """absl flag parser that turns a bad `--config.x.y=v` override into a one-line error.

  Configs are locked, so an override with a typo raises deep inside ml_collections with a
  traceback; users should instead see which override failed and why. Then quiets the library
  logs unless `--verbose` (before TensorFlow is imported). Used as
  `app.run(main, flags_parser=parse_flags)`.
  """
  repeated = _repeated_overrides(argv[1:])
  if repeated:
    sys.exit(f'Config override given more than once: {", ".join(repeated)} (each key once: a '
             'repeated tuple override would otherwise be appended, not replaced).')
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


def _repeated_overrides(args: Sequence[str]) -> list[str]:
  """`--config.a.b` keys that appear more than once among `args` (`--k=v` or `--k v` forms)."""
  seen, repeated = set(), []
  for arg in args:
    if not arg.startswith('--config.'):
      continue
    key = arg.split('=', 1)[0]
    if key in seen and key not in repeated:
      repeated.append(key)
    seen.add(key)
  return repeated


def with_expected_errors(main: Callable[[Sequence[str]], Any]) -> Callable[[Sequence[str]], Any]:
  """`main` whose expected errors end the script with `error: <message>` on stderr, status 1.

  `--verbose` re-raises them instead, with the traceback.
  """

  def wrapped(argv: Sequence[str]) -> Any:
    try:
      return main(argv)
    except EXPECTED_ERRORS as e:
      if flags.FLAGS.is_parsed() and VERBOSE.value:
        raise
      message = str(e).strip() or type(e).__name__
      sys.stderr.write(f'error: {message} (--verbose shows the traceback)\n')
      sys.stderr.flush()
      sys.exit(1)

  return wrapped
