"""What every shard job's command shares (mine, rewrite, eval, label): the Ray and storage flags, the
job config they make, and running the job with user errors turned into one-line CLI errors."""

from __future__ import annotations

from typing import Callable


def add_job_args(p, model_noun: str = "model", device: bool = False) -> None:
    """--actors, --gpus-per-actor, --cpus-per-actor, --threads, [--device], --address, --endpoint-url,
    --credentials."""
    r = p.add_argument_group("Ray and storage")
    r.add_argument("--actors", type=int, default=1, help=f"actor pool size: one {model_noun} per actor (one per GPU)")
    r.add_argument("--gpus-per-actor", type=float, default=0.0, help="GPUs per actor (1 on GPU nodes; 0 = CPU)")
    r.add_argument("--cpus-per-actor", type=float, default=None,
                   help="CPUs reserved per actor (default 0.5 on CPU, 1 with GPUs; keep reads from starving)")
    r.add_argument("--threads", type=int, default=0, help="torch threads per actor (default 1 on CPU)")
    if device:
        r.add_argument("--device", help="torch device in actors (default: cuda when present)")
    r.add_argument("--address", metavar="RAY_ADDRESS",
                   help="Ray cluster to join (e.g. auto, ray://head:10001); default: start a local Ray")
    r.add_argument("--endpoint-url", help="S3-compatible endpoint (MinIO, SeaweedFS); default: $AWS_ENDPOINT_URL")
    r.add_argument("--wait-lease", type=float, default=0.0, metavar="SECONDS",
                   help="if another driver is running on --output, wait up to this long for it (default 0: refuse)")
    r.add_argument("--on-changed", choices=("redo", "refuse"), default="redo",
                   help="a done shard whose input changed since (size or modification time): redo it (default) "
                        "or refuse to run")
    r.add_argument("--max-shard-retries", type=int, default=2, metavar="N",
                   help="retries of a shard whose worker died (crash, OOM); then it is recorded as failed "
                        "(summary, failed/<shard>.json) and the job goes on (default 2)")
    r.add_argument("--max-job-restarts", type=int, default=2, metavar="N",
                   help="restarts of the whole stream over the shards not yet done after Ray loses part of the "
                        "cluster (a node, an actor, an object); done shards are not redone (default 2)")
    r.add_argument("--node-loss-wait", type=float, default=30.0, metavar="SECONDS",
                   help="when a stream ends with shards missing, wait up to this long for Ray to declare a lost "
                        "node dead before recording the shards lost (default 30; one-node clusters never wait)")
    r.add_argument("--credentials", choices=("auto", "forward", "worker"), default="auto",
                   help="worker: each node resolves its own AWS chain (roles; nothing secret is shipped); forward: "
                        "workers use the driver's credentials, refreshed before they expire; auto (default): "
                        "worker with --address, forward on a local Ray")


def add_rows_per_shard(p) -> None:
    """--rows-per-shard: Parquet files cut into shards of whole row groups (rewrite, eval rewrite, label)."""
    p.add_argument("--rows-per-shard", type=int, default=0, metavar="N",
                   help="split Parquet files into shards of whole row groups of about N rows (parallelism and "
                        "resume inside one big file, e.g. DiffusionDB's metadata.parquet); default 0: a file "
                        "is a shard")


def actor_threads(args) -> int:
    """Torch threads per actor: the flag, else 1 on CPU (actors share the cores), else torch's default."""
    return args.threads or (1 if not args.gpus_per_actor else 0)


def storage_options(args):
    """The job's StorageOptions, resolved once per command from the AWS configuration and the flags."""
    from pipelines.io.storage import StorageOptions

    from pipelines.jobs.credentials import resolve_mode

    if getattr(args, "_storage_options", None) is None:
        mode = resolve_mode(args.credentials, getattr(args, "address", None))
        args._storage_options = StorageOptions.from_env(args.endpoint_url, forward_credentials=mode == "forward")
    return args._storage_options


def job_config(args, input_format: str = "auto"):
    from pipelines.jobs.shard_job import ShardJobConfig

    cpus = args.cpus_per_actor if args.cpus_per_actor is not None else (1.0 if args.gpus_per_actor else 0.5)
    return ShardJobConfig(input_uri=args.input, output_uri=args.output, actors=args.actors, cpus_per_actor=cpus,
                          gpus_per_actor=args.gpus_per_actor, input_format=input_format, address=args.address,
                          wait_lease=args.wait_lease, on_changed=args.on_changed,
                          max_shard_retries=args.max_shard_retries, max_job_restarts=args.max_job_restarts,
                          node_loss_wait=args.node_loss_wait)


def run_job(job, args, input_format: str = "auto", after: Callable[[dict], None] | None = None, echo=print) -> int:
    """Run (or resume) ``job``; then ``after(summary)`` if given. Exit status 0 iff every shard is done."""
    from pipelines.cli import CLIError
    from pipelines.jobs.shard_job import JobConflict, run_shard_job
    from pipelines.io.shards import ShardError
    from pipelines.io.storage import StorageError

    try:
        summary = run_shard_job(job, job_config(args, input_format), storage_options(args), echo=echo)
        if after is not None:
            after(summary)
    except (ValueError, StorageError, ShardError, JobConflict, OSError) as e:
        raise CLIError(str(e)) from e
    return 0 if summary["complete"] else 1
