"""One small local Ray cluster for the whole test session (ray.init costs seconds here)."""

import os

import pytest


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray with 2 CPUs and no dashboard; yields the ray module."""
    import ray

    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    os.environ.setdefault("RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH", "serve.proxy:middlewares")  # as promptmine serve
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()
