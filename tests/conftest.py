import os

from hypothesis import settings

# CI machines have 2 cores; keep property tests bounded and deterministic.
settings.register_profile("ci", max_examples=60, deadline=None, derandomize=True)
settings.register_profile("dev", max_examples=60, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
