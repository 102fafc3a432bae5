"""`promptmine mine` on a real multi-node Ray cluster on one machine, with a worker node killed mid-job.

The cluster is its own (never the session `ray_cluster`): a head with no CPUs (so every task and actor
runs on a worker node, as on a cluster whose head only coordinates) and two worker nodes, each a
`ray start --block` process tree in its own UTS namespace with its own hostname. The per-shard stats'
`worker` field is the hostname of the actor that wrote the shard, so it names the node, as on real
machines. Every process gets a private temp dir, private ports and a private auth token, so other Ray
instances on this machine neither see this cluster nor get connected to it by `ray.init()`.

What it shows: Ray Data's actor pool (2 actors, SPREAD by default) runs an actor on each worker node;
the node that finished the first shard is then SIGKILLed with its whole process tree (a node lost
without warning); the SAME run still completes (exit 0): Ray restarts the lost actor on the surviving
node and retries its in-flight shard, whose files are rewritten whole before its marker. Shards were
mined on both nodes, only on the survivor after the loss, and every key is written exactly once. A
second run of the same command finds all shards done and changes nothing. ~1 to 2 minutes here
(cluster start ~35 s, actor start-up most of the rest).
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytest

from pipelines.io.samples import sample_records, write_sample_shards

SHARDS = 10
PER_SHARD = 3
BAD_SHARD = 5  # gets a truncated JPEG, a non-image and a caption-only record: three rejects
ROOT = Path(__file__).parents[1]
RAY_CLI = [sys.executable, "-m", "ray.scripts.scripts"]  # `ray`, from this interpreter whatever PATH says
MINE_ARGS = ["--steps", "20", "--prompt-len", "4", "--batch-size", "3", "--actors", "2", "--cpus-per-actor", "0.5"]

pytestmark = pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0,
                                reason="worker nodes need their own UTS namespace (unshare -u, as root)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(root: int) -> list[int]:
    """``root`` and every process below it (raylets, agents, workers), parents first."""
    out = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True).stdout
    children: dict[int, list[int]] = {}
    for line in out.splitlines():
        pid, ppid = map(int, line.split())
        children.setdefault(ppid, []).append(pid)
    found, frontier = [root], [root]
    while frontier:
        frontier = [c for p in frontier for c in children.get(p, []) if c not in found]
        found += frontier
    return found


def _kill_tree(root: int) -> None:
    for pid in reversed(_descendants(root)):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class LocalCluster:
    """A head and worker nodes as `ray start --block` process trees, each worker with its own hostname."""

    def __init__(self, root: Path):
        self.root = root
        self.temp_dir = root / "ray"  # short: Ray's socket paths live below it
        self.port = _free_port()
        token = secrets.token_hex(32)
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
                    "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0", "RAY_USAGE_STATS_ENABLED": "0",
                    # a lost node is declared dead after ~1.5 s instead of ~15 s
                    "RAY_health_check_period_ms": "500", "RAY_health_check_timeout_ms": "1000",
                    "RAY_health_check_failure_threshold": "3",
                    # this machine may be loaded: let a node take its time to register
                    "RAY_raylet_start_wait_time_s": "120"}
        self.env.pop("RAY_ADDRESS", None)
        self.nodes: dict[str, subprocess.Popen] = {}
        self.logs: list = []
        self.address = ""

    def _ports(self) -> list[str]:
        return [f"--dashboard-agent-listen-port={_free_port()}", f"--metrics-export-port={_free_port()}"]

    def start_head(self) -> None:
        cmd = [*RAY_CLI, "start", "--head", "--block", f"--port={self.port}", "--num-cpus=0", "--num-gpus=0",
               "--include-dashboard=false", f"--dashboard-port={_free_port()}",
               f"--ray-client-server-port={_free_port()}", f"--temp-dir={self.temp_dir}", *self._ports()]
        self.nodes["head"] = self._spawn("head", cmd)
        self._wait(lambda: self._started("head"), 120, "the head node")
        self.address = (self.temp_dir / "ray_current_cluster").read_text().strip()

    def add_worker(self, name: str, cpus: int) -> None:
        """A worker node whose processes see the hostname ``name``."""
        # its own temp dir: nodes starting at once in one dir race for the same socket names
        cmd = [*RAY_CLI, "start", "--block", f"--address={self.address}", f"--num-cpus={cpus}", "--num-gpus=0",
               f"--temp-dir={self.root / name}", *self._ports()]
        shell = f"hostname {name} && exec " + shlex.join(cmd)
        self.nodes[name] = self._spawn(name, ["unshare", "--uts", "sh", "-c", shell])

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "w")
        self.logs.append(log)
        return subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def _started(self, name: str) -> bool:
        """`ray start` prints this once the node is registered with the head."""
        return "Ray runtime started." in (self.root / f"{name}.log").read_text()

    def wait_for_workers(self, timeout: float = 120) -> None:
        self._wait(lambda: all(self._started(n) for n in self.nodes), timeout, "the worker nodes")

    def kill(self, name: str) -> None:
        _kill_tree(self.nodes[name].pid)
        self.nodes[name].wait(timeout=10)

    def shutdown(self) -> None:
        for name in [n for n in self.nodes if n != "head"] + ["head"] * ("head" in self.nodes):
            _kill_tree(self.nodes[name].pid)
        for proc in self.nodes.values():
            proc.wait(timeout=10)
        for log in self.logs:
            log.close()

    def _wait(self, predicate, timeout, what):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            dead = [n for n, p in self.nodes.items() if p.poll() is not None]
            if dead:
                raise AssertionError(f"node {dead[0]} exited: {(self.root / f'{dead[0]}.log').read_text()[-2000:]}")
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}")


def _stats(out: Path) -> dict[str, dict]:
    return {p.name.removesuffix("_stats.json"): json.loads(p.read_text())
            for p in (out / "stats").glob("*_stats.json")}


def _actor_nodes(cluster: LocalCluster) -> set[str]:
    """Worker nodes with a live mining actor process (Ray titles it ``ray::MapWorker(...)``)."""
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    titles = {int(line.split(None, 1)[0]): line.split(None, 1)[1] for line in out.splitlines() if line.strip()}
    return {name for name, proc in cluster.nodes.items() if name != "head" and any(
        titles.get(pid, "").startswith("ray::MapWorker") for pid in _descendants(proc.pid))}


def test_mining_spreads_over_worker_nodes_and_survives_losing_one(tmp_path):
    root = Path(tempfile.mkdtemp(prefix="pmmn", dir="/tmp"))  # short: Ray's socket paths live below it
    cluster = LocalCluster(root)
    write_sample_shards(tmp_path / "in", shards=SHARDS, per_shard=PER_SHARD, bad_shard=BAD_SHARD, size=48)
    expected = sorted(r["key"] for s in range(SHARDS) for r in sample_records(s, PER_SHARD, bad=(s == BAD_SHARD)))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pipelines.cli", "mine", "--input", str(tmp_path / "in"), "--output", str(out),
           *MINE_ARGS]
    nodes = {"pm-node-a", "pm-node-b"}
    t0 = time.monotonic()
    try:
        cluster.start_head()
        for name in sorted(nodes):
            cluster.add_worker(name, cpus=2)
        cluster.wait_for_workers()
        cmd += ["--address", cluster.address]
        t_cluster = time.monotonic()
        driver = subprocess.Popen(cmd, env=cluster.env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
        try:
            # generous limits: on a loaded 2-core machine loading the actors alone can take a minute
            deadline = time.monotonic() + 300
            spread: set[str] = set()
            while not ((spread := spread | _actor_nodes(cluster)) >= nodes and _stats(out)):
                assert driver.poll() is None, f"driver exited early: {driver.stderr.read()[-3000:]}"
                assert time.monotonic() < deadline, f"no shard done, or actors not on both nodes ({spread})"
                time.sleep(0.05)
            # the node that finished the first shard dies without warning, with most shards still to do
            before = _stats(out)
            t_first = time.monotonic()
            victim = next(iter(before.values()))["worker"]
            [survivor] = nodes - {victim}
            cluster.kill(victim)
            killed_at = datetime.now(timezone.utc)
            stdout, stderr = driver.communicate(timeout=300)
            t_done = time.monotonic()
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.wait()

        # the same run finishes: Ray restarts the lost actor on the surviving node and retries its shard
        assert driver.returncode == 0, stderr[-3000:]
        assert "mine: complete" in stdout and f"shards    {SHARDS}/{SHARDS} done" in stdout, stdout
        assert 1 <= len(before) < SHARDS
        stats = _stats(out)
        assert sorted(stats) == [f"{s:05d}" for s in range(SHARDS)]
        assert {s["worker"] for s in stats.values()} == nodes  # shards were mined on both worker nodes
        after = [s for s in stats.values() if datetime.fromisoformat(s["finished_at"]) > killed_at]
        assert after and {s["worker"] for s in after} == {survivor}  # ... and only on the survivor after the loss

        # every key exactly once across rows and rejects
        rows, rejects = pd.read_parquet(out / "rows"), pd.read_parquet(out / "rejects")
        assert rows["key"].is_unique and rejects["key"].is_unique
        assert sorted(rows["key"].tolist() + rejects["key"].tolist()) == expected
        assert len(rejects) == 3 and set(rejects["shard"]) == {f"{BAD_SHARD:05d}"}
        summary = json.loads((out / "summary.json").read_text())
        assert summary["complete"] and summary["totals"]["balanced"]

        # the same command again: nothing left to do, nothing rewritten
        again = subprocess.run(cmd, env=cluster.env, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert again.returncode == 0 and f"{SHARDS} already done, 0 to do" in again.stdout, again.stderr[-2000:]
        assert _stats(out) == stats
        print(f"cluster up {t_cluster - t0:.0f} s, first shard {t_first - t_cluster:.0f} s, rest after the kill "
              f"{t_done - t_first:.0f} s, rerun {time.monotonic() - t_done:.0f} s, "
              f"stream restarts {stderr.count('restarting over')}")  # shown with pytest -s
    finally:
        cluster.shutdown()
        shutil.rmtree(root, ignore_errors=True)
