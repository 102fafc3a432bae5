"""Loopback load test of the online API: N requests, C at a time, latency percentiles, throughput,
status counts and the batch sizes the model saw. Prints JSON.

    python bench/serve_load.py --requests 512 --concurrency 64 --compare-batch-size 1
    python bench/serve_load.py --endpoint invert --requests 64 --concurrency 16 --steps 60,240
    python bench/serve_load.py --url http://127.0.0.1:8000 --requests 200 --concurrency 32   # a running app

Without ``--url`` it starts a local Ray (2 CPUs), deploys the app with the tiny models (preset tiny:
random BLOOM and CLIP built offline) on a free 127.0.0.1 port, runs the load, and with
``--compare-batch-size B`` redeploys with that max batch size (``rewrite_max_batch_size=B``, or
``invert_max_batch_size``) and runs the same load again.
Every rewrite generates exactly ``--new-tokens`` tokens (min_new_tokens = max_new_tokens), so each
request is the same work whatever the random model would emit. ``--endpoint invert`` loads /v1/invert
instead (the sample images, early_stop off, ``--steps`` cycled over the requests, one PEZ group per
distinct value; ``--max-batch-size`` / ``--compare-batch-size`` then set the slots per group) and also
reports the PEZ batch's mean slot occupancy over the run (occupied slots / slots, from /v1/models).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


async def load(url: str, n: int, concurrency: int, body_for, headers: dict, timeout: float,
               path: str = "/v1/rewrite") -> dict:
    import httpx

    latencies, statuses, batch_sizes = [], Counter(), Counter()
    queue = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)

    async def worker(client):
        while not queue.empty():
            i = queue.get_nowait()
            start = time.perf_counter()
            try:
                r = await client.post(path, json=body_for(i))
                statuses[str(r.status_code)] += 1
                if r.status_code == 200:
                    batch_sizes[r.json()["batch_size"]] += 1
            except httpx.TimeoutException:
                statuses["client_timeout"] += 1
            except httpx.HTTPError as e:
                statuses[f"client_error:{type(e).__name__}"] += 1
            latencies.append(time.perf_counter() - start)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, headers=headers, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    ms = [x * 1000 for x in latencies]
    return {"requests": n, "concurrency": concurrency, "wall_s": round(wall, 3),
            "throughput_rps": round(n / wall, 2),
            "latency_ms": {"p50": round(percentile(ms, 50), 1), "p95": round(percentile(ms, 95), 1),
                           "p99": round(percentile(ms, 99), 1), "max": round(max(ms), 1),
                           "mean": round(statistics.fmean(ms), 1)},
            "status_counts": dict(sorted(statuses.items())),
            "response_batch_size_histogram": {str(k): v for k, v in sorted(batch_sizes.items())}}


def model_stats(url: str, headers: dict, endpoint: str = "rewrite") -> dict:
    import httpx

    return httpx.get(f"{url}/v1/models", headers=headers, timeout=30).json()[endpoint]["stats"]


def histogram_delta(before: dict, after: dict) -> dict:
    b, a = Counter(before["batch_size_histogram"]), Counter(after["batch_size_histogram"])
    return {k: v for k, v in sorted((a - b).items(), key=lambda kv: int(kv[0]))}


def invert_body(steps: list[int]):
    import base64
    import io

    from pipelines.io.samples import make_sample_image

    images = []
    for seed in range(4):
        buf = io.BytesIO()
        make_sample_image(seed).save(buf, "PNG")
        images.append(base64.b64encode(buf.getvalue()).decode())
    return lambda i: {"image_base64": images[i % 4], "steps": steps[i % len(steps)], "prompt_len": 8,
                      "seed": i, "early_stop": False}


def run_load(url: str, args, headers: dict) -> dict:
    if args.endpoint == "invert":
        body, path = invert_body([int(x) for x in args.steps.split(",")]), "/v1/invert"
    else:
        def body(i):
            return {"prompt": f"a lighthouse number {i} at sunset", "max_new_tokens": args.new_tokens,
                    "min_new_tokens": args.new_tokens}
        path = "/v1/rewrite"
    warm = min(8, args.requests), min(8, args.concurrency)
    asyncio.run(load(url, *warm, body, headers, args.timeout, path))  # warm up
    before = model_stats(url, headers, args.endpoint)
    result = asyncio.run(load(url, args.requests, args.concurrency, body, headers, args.timeout, path))
    after = model_stats(url, headers, args.endpoint)
    result["max_batch_size"] = after["max_batch_size"]
    result["model_batch_size_histogram"] = histogram_delta(before, after)
    result["model_calls"] = after["batches"] - before["batches"]  # invert: group workers started
    if args.endpoint == "invert" and "occupied_slot_steps" in after:  # (a server before continuous batching: no)
        steps = after["batch_steps"] - before["batch_steps"]
        result["pez_batch_steps"] = steps
        result["mean_slot_occupancy"] = round((after["occupied_slot_steps"] - before["occupied_slot_steps"])
                                              / (after["slot_capacity_steps"] - before["slot_capacity_steps"]),
                                              4) if steps else 0.0
    result["server_errors_5xx"] = sum(v for k, v in result["status_counts"].items() if k.startswith("5"))
    result["timeouts"] = sum(v for k, v in result["status_counts"].items() if k in ("504", "408", "client_timeout"))
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deploy(port: int, max_batch_size: int, args) -> str:
    from ray import serve

    from serve.app import build_app
    from serve.settings import AppArgs

    tuned = {k: v for k, v in {f"{args.endpoint}_max_batch_size": max_batch_size,
                               f"{args.endpoint}_batch_wait_s": args.batch_wait_s}.items() if v is not None}
    app_args = AppArgs(preset="tiny", **tuned, torch_threads=args.threads,
                       max_queued_requests=args.max_queued, auth_token_env="PROMPTMINE_BENCH_NO_TOKEN")
    serve.run(build_app(app_args), name="bench", route_prefix="/")
    return f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def stdout_to_stderr():
    """Send file descriptor 1 to stderr for the block, so that stdout carries only the JSON report: Ray and
    Serve log to stdout, and the processes Ray starts inherit the descriptor."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def local_runs(report: dict, args, headers: dict) -> None:
    """Start a local Ray and Serve, deploy at each batch size and load it; appends to report["runs"]."""
    import ray
    from ray import serve

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 120})
    try:
        for size in [args.max_batch_size] + ([args.compare_batch_size] if args.compare_batch_size else []):
            url = deploy(port, size, args)
            report["runs"].append(run_load(url, args, headers))
            print(json.dumps(report["runs"][-1]), file=sys.stderr, flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="an app already running (default: deploy the tiny app locally)")
    p.add_argument("--requests", type=int, default=512, help="requests to send (N)")
    p.add_argument("--concurrency", type=int, default=64, help="requests in flight at once (C)")
    p.add_argument("--endpoint", choices=("rewrite", "invert"), default="rewrite", help="the endpoint to load")
    p.add_argument("--new-tokens", type=int, default=32, help="tokens generated per rewrite")
    p.add_argument("--steps", default="60,240", help="invert: PEZ steps per request, cycled (comma-separated)")
    p.add_argument("--max-batch-size", type=int, help="max batch size (invert: slots per group) of the local app "
                   "(default: the app's)")
    p.add_argument("--compare-batch-size", type=int, help="also run with this max batch size (e.g. 1)")
    p.add_argument("--batch-wait-s", type=float,
                   help="batch wait of the local app (default: the app's; invert ignores it)")
    p.add_argument("--max-queued", type=int, default=256, help="max_queued_requests of the local app")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the model replica")
    p.add_argument("--timeout", type=float, default=60, help="client timeout per request, seconds")
    p.add_argument("--out", type=Path, help="also write the JSON report to this file")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    headers = {"Authorization": f"Bearer {os.environ['PROMPTMINE_API_TOKEN']}"} if os.environ.get(
        "PROMPTMINE_API_TOKEN") else {}

    report = {"endpoint": args.endpoint, "requests": args.requests, "concurrency": args.concurrency,
              **({"steps": args.steps} if args.endpoint == "invert" else {"new_tokens": args.new_tokens}),
              "load_average_before": [round(x, 1) for x in os.getloadavg()], "runs": []}
    if args.url:
        report["runs"].append(run_load(args.url.rstrip("/"), args, headers))
    else:
        with stdout_to_stderr():  # Ray's and Serve's log lines, here and in the processes it starts
            local_runs(report, args, headers)
    if len(report["runs"]) == 2:
        a, b = report["runs"]
        report["throughput_ratio"] = round(a["throughput_rps"] / b["throughput_rps"], 2)
    report["load_average_after"] = [round(x, 1) for x in os.getloadavg()]
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
