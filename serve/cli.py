"""``promptmine serve``: run the online API (serve/app.py) on a local Ray until Ctrl-C.

    promptmine serve --preset tiny                          # http://127.0.0.1:8000/docs
    promptmine serve --config serve/config.yaml --port 9000
    promptmine serve --preset sd2 --set rewrite_max_batch_size=16 --set max_steps=500

Without ``--config`` the app is built from ``AppArgs`` (flags, then ``--set KEY=VALUE`` for any other
field). With ``--config`` the YAML is deployed as ``serve deploy`` would (its per-deployment
``user_config`` included); ``--preset``/``--rewrite-model``/``--set`` then override every application's
``args``, and ``--host``/``--port`` its ``http_options``. Bound to 127.0.0.1 unless ``--host`` says
otherwise. The bearer token, if any, comes from the environment (``PROMPTMINE_API_TOKEN``) and is
never printed.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

APP_NAME = "promptmine"


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="run the online API (rewrite, invert) on Ray Serve until Ctrl-C",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, help="a Serve config YAML (as serve/config.yaml) to deploy")
    p.add_argument("--host", help="address to bind (default: 127.0.0.1, or the config's http_options.host)")
    p.add_argument("--port", type=int, help="HTTP port (default: 8000, or the config's http_options.port)")
    p.add_argument("--preset", help="CLIP preset and default rewrite model: tiny, sd15, sd2, sdxl (default: tiny)")
    p.add_argument("--rewrite-model", help="rewrite LM: Hugging Face id, local folder, 'tiny', or a "
                                              "`promptmine train` output (local or s3://; PPO: its best/ model)")
    p.add_argument("--clip-model", help="open_clip model name or folder (overrides the preset's CLIP)")
    p.add_argument("--clip-pretrained", help="with --clip-model: a pretrained tag or checkpoint file")
    p.add_argument("--prompt-lm", help="the fluency prior of /v1/invert: a prompt LM preset or folder, or none "
                                       "(default: the preset's; world presets: world)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other app argument (see serve/settings.py AppArgs), e.g. max_steps=500; repeatable")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    p.add_argument("--address", help="an existing Ray cluster to deploy to (default: start a local one)")
    p.add_argument("--dashboard", action="store_true",
                   help="start Ray's dashboard on 127.0.0.1:8265, so `serve deploy FILE` / `serve status` can "
                        "update and inspect the running app (runtime user_config changes)")
    p.add_argument("--request-timeout-s", type=float, default=None,
                   help="Serve's own HTTP time limit (plain-text 408); keep it above the app's timeouts "
                        "(default: 300, or the config's)")
    p.add_argument("--allow-no-token", action="store_true",
                   help="start without a bearer token even when binding beyond loopback (default: refuse, exit 2)")
    p.set_defaults(func=run)


def check_token_for_host(host: str, app_args: list[dict], allow_no_token: bool) -> None:
    """Refuse an open API on a non-loopback address: every application needs a token unless allowed."""
    import ipaddress

    from pipelines.cli import CLIError

    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback or allow_no_token:
        return
    for args in app_args:
        env = args.get("auth_token_env", "PROMPTMINE_API_TOKEN")
        if not args.get("auth_token_file") and not os.environ.get(env, "").strip():
            raise CLIError(f"--host {host} is beyond loopback and no bearer token is configured: set {env} "
                           "(or auth_token_file), or pass --allow-no-token to serve an open API")


def overrides(args) -> dict:
    """App arguments given on the command line (only those given)."""
    from pipelines.cli import CLIError

    out = {k: v for k, v in (("preset", args.preset), ("rewrite_model", args.rewrite_model),
                             ("clip_model", args.clip_model), ("clip_pretrained", args.clip_pretrained),
                             ("prompt_lm", args.prompt_lm))
           if v is not None}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CLIError(f"--set {item!r}: expected KEY=VALUE")
        out[key.strip().replace("-", "_")] = value
    return out


def load_config(path: Path, args, app_overrides: dict):
    """The deploy schema of ``path`` with the command line's overrides applied and validated."""
    import yaml
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    from serve.settings import AppArgs

    from pipelines.cli import CLIError

    try:
        raw = yaml.safe_load(path.read_text())
        config = ServeDeploySchema.model_validate(raw)
    except OSError as e:
        raise CLIError(f"--config {path}: cannot read ({e.strerror or e})") from e
    except (yaml.YAMLError, ValidationError) as e:
        raise CLIError(f"--config {path}: not a valid Serve config: {e}") from e
    for app in config.applications:
        app.args = {**(app.args or {}), **app_overrides}
        apply_to_deployments(app, app_overrides)
        if app.import_path.replace(".", ":").endswith("serve:app:build_app"):
            try:
                AppArgs.model_validate(app.args)
            except ValidationError as e:
                raise CLIError(f"--config {path}: application {app.name!r} args: {e}") from e
    if args.host:
        config.http_options.host = args.host
    if args.port:
        config.http_options.port = args.port
    if args.request_timeout_s:
        config.http_options.request_timeout_s = args.request_timeout_s
    return config


def apply_to_deployments(app, app_overrides: dict) -> None:
    """In a config, a deployment's own block (user_config, queue bounds) wins over ``args``: carry the
    command line's overrides into those blocks too, so ``--set max_prompts=4`` means the same with
    and without ``--config``."""
    from serve.settings import Limits

    batch = {"RewriteModel": {"rewrite_max_batch_size": "max_batch_size", "rewrite_batch_wait_s": "batch_wait_timeout_s"},
             "InvertModel": {"invert_max_batch_size": "max_batch_size", "invert_batch_wait_s": "batch_wait_timeout_s"}}
    for dep in app.deployments:
        options = dep.model_dump(exclude_unset=True)
        user_config = dict(options.get("user_config") or {})
        if dep.name == "Ingress":
            user_config.update({k: v for k, v in app_overrides.items() if k in Limits.model_fields})
        else:
            user_config.update({field: app_overrides[k] for k, field in batch.get(dep.name, {}).items()
                                if k in app_overrides})
            for key in ("num_replicas", "max_ongoing_requests", "max_queued_requests"):
                if key in app_overrides and key in options:
                    setattr(dep, key, int(app_overrides[key]))
        if "user_config" in options:
            dep.user_config = user_config


def wait_running(names: list[str], timeout: float = 600) -> None:
    from ray import serve

    from pipelines.cli import CLIError

    end = time.time() + timeout
    while time.time() < end:
        status = serve.status().applications
        states = {n: status[n].status if n in status else "NOT_STARTED" for n in names}
        failed = {n: status[n].message for n in names if states[n] in ("DEPLOY_FAILED", "UNHEALTHY")}
        if failed:
            raise CLIError("deployment failed: " + "; ".join(f"{n}: {m}" for n, m in failed.items()))
        if all(s == "RUNNING" for s in states.values()):
            return
        time.sleep(1)
    raise CLIError(f"applications not running after {timeout:g} s: {states}")


def _stop_on_signals() -> None:
    """Ctrl-C and SIGTERM (Kubernetes, systemd, ``kill``) both stop the app cleanly. SIGINT is set
    explicitly: a process started in the background by a shell inherits it ignored."""
    import signal

    def stop(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)


def run(args) -> int:
    import ray
    from pydantic import ValidationError
    from ray import serve
    from ray.serve._private import api as private_api  # what `serve run config.yaml` uses

    from serve.settings import AppArgs

    from pipelines.cli import CLIError

    _stop_on_signals()
    app_overrides = overrides(args)
    if args.config:
        config = load_config(args.config, args, app_overrides)
        http = config.http_options.model_dump()
        names, prefixes = [a.name for a in config.applications], [a.route_prefix for a in config.applications]
    else:
        try:
            app_args = AppArgs.model_validate(app_overrides)
        except ValidationError as e:
            raise CLIError(f"invalid app arguments: {e}") from e
        http = {"host": args.host or "127.0.0.1", "port": args.port or 8000,
                "request_timeout_s": args.request_timeout_s or 300}
        names, prefixes = [APP_NAME], ["/"]

    check_token_for_host(http["host"], [app_overrides] if not args.config else
                         [a.args or {} for a in config.applications], args.allow_no_token)
    if not args.address:  # Serve's proxy reads its middlewares from its environment (serve/proxy.py)
        from serve.proxy import ENV_VAR, IMPORT_PATH

        os.environ.setdefault(ENV_VAR, IMPORT_PATH)
    ray.init(address=args.address or "local", num_cpus=args.num_cpus if not args.address else None,
             include_dashboard=args.dashboard, dashboard_host="127.0.0.1", namespace="serve",
             configure_logging=False)
    _stop_on_signals()  # again: ray.init installs its own SIGTERM handler in the driver
    try:
        client = private_api.serve_start(http_options=http)
        if args.config:
            client.deploy_apps(config, _blocking=False)
        else:
            from serve.app import build_app

            serve.run(build_app(app_args), name=APP_NAME, route_prefix="/")
        wait_running(names)
        for name, prefix in zip(names, prefixes):
            base = f"http://{http['host']}:{http['port']}{(prefix or '/').rstrip('/')}"
            print(f"promptmine serve: {name} ready at {base}/ (docs: {base}/docs); Ctrl-C stops", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("promptmine serve: shutting down", flush=True)
        return 0
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
