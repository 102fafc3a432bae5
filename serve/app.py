"""promptmine's online API on Ray Serve: the typed app builder.

    serve run serve.app:build_app preset=tiny                  # or: promptmine serve --preset tiny
    serve deploy serve/config.yaml                             # the same app, declaratively

Three deployments: ``Ingress`` (FastAPI: /v1/rewrite, /v1/invert, /v1/models, /healthz, /docs),
``RewriteModel`` (``@serve.batch``) and ``InvertModel`` (continuous batching, serve/invert_engine.py). ``build_app`` takes
``AppArgs`` (serve/settings.py), so the command line's ``key=value`` pairs and the YAML ``args:`` block
are validated by the same pydantic model. The settings that may change while the app runs (batch
size and wait, request limits, time limits) are each deployment's ``user_config``: edit them in the
YAML and ``serve deploy`` again, and the replicas apply them through ``reconfigure`` without a restart.
"""

from __future__ import annotations

from ray.serve import Application

from .deployments import InvertModel, RewriteModel
from .ingress import Ingress
from .settings import AppArgs

INGRESS_NUM_CPUS = 0.1  # the ingress only parses and forwards; the models hold the CPUs


def build_app(args: AppArgs) -> Application:
    """The promptmine Serve application for ``args`` (an ``AppArgs`` or a dict of its fields)."""
    if not isinstance(args, AppArgs):
        args = AppArgs.model_validate(dict(args or {}))
    model_options = dict(num_replicas=args.num_replicas, max_ongoing_requests=args.max_ongoing_requests,
                         max_queued_requests=args.max_queued_requests,
                         ray_actor_options={"num_cpus": args.model_num_cpus})
    clip, pretrained = args.resolved_clip()
    rewrite = RewriteModel.options(user_config=args.rewrite_batch().model_dump(), **model_options).bind(
        args.resolved_rewrite_model(), args.rewrite_template, args.device, args.torch_threads)
    invert = InvertModel.options(user_config=args.invert_batch().model_dump(), **model_options).bind(
        clip, pretrained, args.device, args.torch_threads, prompt_lm=args.resolved_prompt_lm(), fluency=args.fluency,
        max_groups=args.invert_max_groups)
    return Ingress.options(max_ongoing_requests=args.ingress_max_ongoing_requests,
                           max_queued_requests=args.ingress_max_queued_requests,
                           ray_actor_options={"num_cpus": INGRESS_NUM_CPUS},
                           user_config=args.limits().model_dump()).bind(
        rewrite, invert, args.auth_token_env, args.auth_token_file)


# The default application (binding is lazy: nothing loads at import). `serve build serve.app:app`
# writes a deploy config from it; serve/config.yaml was made that way, then pointed at build_app.
app = build_app(AppArgs())
