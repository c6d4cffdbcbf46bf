"""The ~1B preset compiles ahead of time on 8 fake devices, sharded, without running."""

import jax
from flax import nnx

from configs import decoder_1b
from models import transformer
from training import aot, state as state_lib


def test_decoder_1b_compiles_and_its_state_is_split_over_the_devices():
  config = decoder_1b.get_config()
  params = transformer.num_params(nnx.eval_shape(
      lambda: state_lib.make_model(config, jax.random.key(0))))
  assert 0.9e9 < params < 1.2e9
  mem = aot.compile_train_step(config, pool_size=512).memory_analysis()
  # float32 parameters and two Adam moments, 12 bytes per parameter, split over 8 devices.
  per_device_state = 12 * params / 8
  assert per_device_state < mem.argument_size_in_bytes < 1.1 * per_device_state + 64e6
  assert 0 < mem.temp_size_in_bytes < 16e9
