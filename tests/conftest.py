import os

from hypothesis import HealthCheck, settings

# CI runs on a 2-core machine with no deadline tolerance for noisy neighbours.
settings.register_profile(
    "ci", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
