"""Running one Ray Train job: a TorchTrainer over N workers with checkpoints in OUTPUT/checkpoints/<name>
(local or S3), restarts after a worker crash, and a rerun with the same name resuming its last checkpoint.

Every training command (sft, reward, ppo, world, ...) runs through :func:`fit`.
"""

from __future__ import annotations

import contextlib
import logging
import os

log = logging.getLogger(__name__)


def storage_options(args, uris):
    """How a training job reaches its data: the AWS configuration (``--endpoint-url``, ``--credentials``)
    only when one of ``uris`` is on S3; local runs never look it up (it can wait on a metadata service)."""
    from pipelines.io.storage import StorageOptions

    if any((u or "").startswith(("s3://", "s3a://")) for u in uris):
        return StorageOptions.from_env(args.endpoint_url, forward_credentials=args.credentials == "forward")
    return StorageOptions()


def fit(loop, loop_config: dict, out, name: str, workers: int, gpus_per_worker: float = 0,
        cpus_per_worker: float = 1, keep_checkpoints: int = 2, max_failures: int = 1,
        address: str | None = None):
    """``loop(loop_config)`` on ``workers`` Ray Train workers (DDP: gloo on CPU, NCCL on GPU); ``out`` is
    the output Location. Returns the Ray Train Result; raises when it ended without a checkpoint."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    checkpoints = out.child("checkpoints")
    if not ray.is_initialized():
        os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
        # A local cluster starts its dashboard (on 127.0.0.1): Ray Train's PlacementGroupCleaner asks the State
        # API, which the dashboard serves, whether the controller lives; without it the cleaner cannot work and
        # logs "Failed to query Ray Train Controller actor state" every second of the run (about 0.9 s to start).
        ray.init(address=address, include_dashboard=True if address is None else None,
                 dashboard_host="127.0.0.1", configure_logging=False)
    resources = {"CPU": cpus_per_worker, **({"GPU": gpus_per_worker} if gpus_per_worker else {})}
    trainer = TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpus_per_worker > 0, resources_per_worker=resources),
        run_config=RunConfig(
            name=name,
            storage_path=checkpoints.path,
            storage_filesystem=checkpoints.fs if checkpoints.scheme == "s3" else None,
            checkpoint_config=CheckpointConfig(num_to_keep=keep_checkpoints),
            failure_config=FailureConfig(max_failures=max_failures),
        ),
    )
    log.info("%s: %d workers, checkpoints in %s/%s", name, workers, checkpoints.uri, name)
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"{name}: the run ended without a checkpoint")
    return result


@contextlib.contextmanager
def user_errors():
    """Bad values, unreachable storage and a failed Ray Train run become one-line CLI errors (exit 2)."""
    from pipelines.cli import CLIError
    from pipelines.io.storage import StorageError

    try:
        yield
    except (ValueError, StorageError) as e:
        raise CLIError(str(e)) from e
    except Exception as e:
        if type(e).__name__ in ("TrainingFailedError", "WorkerGroupError", "ControllerError"):
            raise CLIError(f"training failed: {str(e).splitlines()[0][:300]}") from e
        raise
