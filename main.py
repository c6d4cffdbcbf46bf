"""Paceline: `python main.py --config configs/<preset>.py[:variant] --workdir <dir>`."""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Preset file; `path:arg` picks a variant.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and plots.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  from parallel.mesh import initialize_distributed
  from training import loop

  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
  initialize_distributed()
  logging.info('config:\n%s', _CONFIG.value)
  try:
    loop.run(_CONFIG.value, _WORKDIR.value)
  except (ValueError, FloatingPointError, RuntimeError) as e:
    # Bad input ends with one line that names the problem, not a traceback.
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)


def _run():
  try:
    app.run(main)
  except flags.IllegalFlagValueError as e:
    print(f'error: {e}'.splitlines()[0], file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  _run()
