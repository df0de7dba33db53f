import os

import pytest
from hypothesis import settings

# CI machines have 2 cores; keep property tests bounded and deterministic there. For a deeper search locally:
# HYPOTHESIS_PROFILE=thorough python3 -m pytest tests/test_two_views.py tests/test_pim_systems.py
settings.register_profile("ci", max_examples=60, deadline=None, derandomize=True)
settings.register_profile("dev", max_examples=60, deadline=None)
settings.register_profile("thorough", max_examples=1500, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))


@pytest.fixture(scope="session")
def installed(tmp_path_factory):
    """The package as a wheel installed into a fresh venv (tests/installed.py); built once per session."""
    from installed import can_install, install  # tests/installed.py

    reason = can_install()
    if reason:
        pytest.skip(reason)
    return install(tmp_path_factory.mktemp("installed"))
