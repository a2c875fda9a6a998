"""The test process is set up as tests/conftest.py says, under pytest-xdist
workers too: 8 host CPU devices, and the `ci` hypothesis profile unless
$HYPOTHESIS_PROFILE names another."""

import os

import jax
from hypothesis import settings


def test_the_process_has_eight_host_cpu_devices():
  assert jax.device_count() == 8
  assert {d.platform for d in jax.devices()} == {'cpu'}


def test_hypothesis_profile_is_the_chosen_one():
  name = os.environ.get('HYPOTHESIS_PROFILE', 'ci')
  assert settings.default == settings.get_profile(name)
