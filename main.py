"""Paceline: `python main.py --config configs/<preset>.py[:variant] --workdir <dir>`."""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Preset file; `path:arg` picks a variant.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and plots.')
flags.mark_flags_as_required(['config', 'workdir'])


def _fail(message: str):
  """Bad input ends with one line that names the problem, not a traceback."""
  print(f'error: {" ".join(str(message).split())}', file=sys.stderr)
  sys.exit(1)


def _load_config():
  # config_flags defers a file's load errors to the first read of the value.
  try:
    config = _CONFIG.value
    config.to_dict()  # a config that failed to load raises only when it is first read
    return config
  except (OSError, AttributeError, KeyError, TypeError, ValueError) as e:
    lines = [l.strip(' \'"') for l in str(e).splitlines() if l.strip()]
    cause = next((l for l in lines if 'No such file' in l), None)
    _fail(f'cannot load --config: {cause or " ".join(lines)}')


def _parse_flags(argv):
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _fail(e)
  except (AttributeError, KeyError, TypeError, ValueError) as e:  # an unknown --config.* key
    message = str(e).strip("'").replace("\\'", "'").replace('\\n', ' ')
    _fail(f'bad --config override: {message}')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
  config = _load_config()
  from parallel.mesh import initialize_distributed
  from training import loop

  initialize_distributed()
  try:
    loop.run(config, _WORKDIR.value)
  except (ValueError, FloatingPointError, RuntimeError) as e:
    _fail(e)


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
