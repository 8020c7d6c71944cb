"""The machinery of tests/integration/test_ray_up.py: a private network, an sshd, a cluster.

`ray up` with Ray's `local` node provider reaches each node over SSH. Here every node is
this machine: an sshd of the test's own answers on port 22 of the node addresses, inside
a network namespace of its own (only a loopback interface), and the key it accepts has a
forced command (ray_up_ssh_command.sh) that gives each node its own HOME and tags every
process it starts with ``RAY_UP_TEST_CLUSTER=<tag>``.

Rules this module keeps:

1. Nothing of the test cluster is reachable from, or collides with, the machine's network:
   sshd, Ray and the Kafka listeners live in the private namespace, where Ray's
   0.0.0.0 listeners mean its loopback only and deploy/local.yaml's fixed addresses and
   ports (22, 6379, 8265, 10001, 52365) are free. Every `ray` command and Kafka client of
   the test enters it with nsenter.
2. A process belongs to the cluster when its environment holds the tag (Ray's processes
   inherit it); only those, the sshd and the canary are ever signalled, by pid.
3. Nothing is written outside the test's temporary directory but the launcher's SSH control
   sockets (/tmp/ray_ssh_<user>/<cluster hash>, removed at the end) and the wheelhouse of
   build requirements (.tmp/ray-up-wheelhouse, kept for the next run).

Never: `ray stop` (ray_up_guard_stop.sh stands in for it), the machine's sshd, ~/.ssh.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from tests.fixtures_ray import wait_for

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SSH_COMMAND = HERE / "ray_up_ssh_command.sh"
TAG_VAR = "RAY_UP_TEST_CLUSTER"

# The head's autoscaler reaches the worker with `ssh -i ~/ray_bootstrap_key.pem`, and ssh
# expands ~ from the passwd entry (/root), not from $HOME, the simulated node's own home.
SSH_WRAPPER = """#!/usr/bin/env bash
# ssh on the simulated nodes of tests/integration/test_ray_up.py: -i ~/key is the node's key
args=()
previous=
for arg in "$@"; do
    if [[ $previous == -i && $arg == "~/"* ]]; then arg=$HOME/${{arg#"~/"}}; fi
    args+=("$arg")
    previous=$arg
done
exec {ssh} "${{args[@]}}"
"""


def which(tool: str) -> str | None:
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin")


def preflight() -> str | None:
    """Why this machine cannot run the test, or None."""
    if not sys.platform.startswith("linux"):
        return "needs Linux (network namespaces, /proc)"
    if os.geteuid() != 0:
        return "needs root (a network namespace, an sshd on port 22)"
    tools = ("sshd", "ssh", "ssh-keygen", "rsync", "unshare", "nsenter", "ip")
    missing = [t for t in tools if not which(t)]
    if missing:
        return f"{', '.join(missing)} not installed (apt-get install openssh-server rsync)"
    probe = subprocess.run([which("unshare") or "unshare", "--net", "true"], capture_output=True)
    if probe.returncode != 0:
        return f"cannot make a network namespace: {probe.stderr.decode().strip()}"
    try:
        import ensurepip  # noqa: F401  (each node's setup makes a virtualenv)
        import venv  # noqa: F401
    except ImportError:
        return "python3 -m venv is unavailable (each node's setup makes a virtualenv)"
    return None


def wheelhouse() -> Path | None:
    """Wheels of the build requirements in pyproject.toml (setuptools, wheel), for the
    nodes' `pip install -e`, which has no index to reach from the private network; kept in
    .tmp/ across runs. None when pip cannot download them here either."""
    house = ROOT / ".tmp" / "ray-up-wheelhouse"
    if not (any(house.glob("setuptools-*.whl")) and any(house.glob("wheel-*.whl"))):
        download = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:"]
        proc = subprocess.run(
            [*download, "-d", str(house), *_build_requirements()], capture_output=True, timeout=300
        )
        if proc.returncode != 0:
            return None
    return house


def _build_requirements() -> list[str]:
    import tomllib

    with open(ROOT / "pyproject.toml", "rb") as f:
        return list(tomllib.load(f)["build-system"]["requires"])


# ----------------------------------------------------------------------------- processes


def tagged_pids(tag: str) -> set[int]:
    """Processes whose environment holds RAY_UP_TEST_CLUSTER=<tag>: the cluster's."""
    needle = f"{TAG_VAR}={tag}".encode()
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    pids.add(int(entry.name))
    return pids


def raylet_pids() -> set[int]:
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == "raylet":
                    pids.add(int(entry.name))
    return pids


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def stop_pids(pids: set[int], *, grace_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL what is left after ``grace_s``: only the pids given."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(alive(p) for p in pids):
            time.sleep(0.2)


def host_listeners(pids: set[int]) -> list[str]:
    """The TCP listeners of ``pids`` in this (the machine's) network namespace."""
    ss = which("ss")
    if ss is None:
        return []
    out = subprocess.run([ss, "-ltnpH"], capture_output=True, text=True).stdout
    marks = {f"pid={p}," for p in pids}
    return [line for line in out.splitlines() if any(m in line for m in marks)]


# ---------------------------------------------------------------------------------- sshd


class Sshd:
    """An sshd of the test's own in a new network namespace, on port 22 of ``addresses``,
    accepting one key, whose forced command is ray_up_ssh_command.sh."""

    def __init__(self, root: Path, addresses: list[str], tag: str) -> None:
        self.dir = root / "sshd"
        self.dir.mkdir()
        self.key = self.dir / "id_ed25519"
        self.addresses = addresses
        self.log = self.dir / "sshd.log"
        self._keygen(self.dir / "host_ed25519")
        self._keygen(self.key)
        forced = f"bash {SSH_COMMAND} {root} {tag}"
        pubkey = Path(f"{self.key}.pub").read_text().strip()
        (self.dir / "authorized_keys").write_text(
            f'command="{forced}",no-agent-forwarding,no-X11-forwarding {pubkey}\n'
        )
        listen = "".join(f"ListenAddress {ip}:22\n" for ip in addresses)
        self.config = self.dir / "sshd_config"
        self.config.write_text(
            f"{listen}HostKey {self.dir / 'host_ed25519'}\n"
            f"PidFile {self.dir / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {self.dir / 'authorized_keys'}\n"
            f"AllowUsers {getpass.getuser()}\n"
            "PermitRootLogin prohibit-password\n"
            "PubkeyAuthentication yes\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\n"
            # the key files live under /tmp (mode 1777), which StrictModes refuses
            "StrictModes no\n"
            "MaxStartups 100\nMaxSessions 100\nPrintMotd no\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def _keygen(path: Path) -> None:
        keygen = which("ssh-keygen") or "ssh-keygen"
        subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)

    @property
    def netns(self) -> str:
        """The network namespace of the sshd, which every test cluster process shares."""
        assert self.proc is not None
        return f"/proc/{self.proc.pid}/ns/net"

    def start(self) -> None:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        sshd = which("sshd") or "/usr/sbin/sshd"
        subprocess.run([sshd, "-t", "-f", str(self.config)], check=True)
        # unshare execs bash, which execs sshd: one pid, in a namespace with only `lo` up.
        script = 'ip link set lo up && exec "$0" -D -e -f "$1"'
        argv = ["--net", "bash", "-c", script, sshd, str(self.config)]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [which("unshare") or "unshare", *argv], stdout=log, stderr=log
            )
        wanted = [f"Server listening on {ip} port 22." for ip in self.addresses]
        wait_for(lambda: all(w in self.log.read_text() for w in wanted), timeout=20)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


# ------------------------------------------------------------------------------- cluster


class LocalCluster:
    """deploy/local.yaml with the test's key, object store and cluster name, driven through
    Ray's CLI (this interpreter) inside the sshd's network namespace."""

    def __init__(self, root: Path, *, key: Path, tag: str, wheelhouse: Path) -> None:
        self.root = root
        self.wheelhouse = wheelhouse
        self.tag = tag
        self.name = f"ray-stream-test-{tag}"
        self.objects = root / "objects"
        config = yaml.safe_load((ROOT / "deploy" / "local.yaml").read_text())
        self.head: str = config["provider"]["head_ip"]
        self.workers: list[str] = list(config["provider"]["worker_ips"])
        config["cluster_name"] = self.name
        config["auth"] = {"ssh_user": getpass.getuser(), "ssh_private_key": str(key)}
        config["file_mounts"] = {
            remote: str((ROOT / local).resolve()) for remote, local in config["file_mounts"].items()
        }
        config["metadata"]["ray_stream"]["object_store"] = f"file://{self.objects}"
        self.config = root / "cluster.yaml"
        self.config.write_text(yaml.safe_dump(config, sort_keys=False))
        self._node_shells()
        (root / "client").mkdir()
        self.env = {
            **os.environ,
            "RAY_TMPDIR": str(root / "client"),  # the local provider's state file
            "TMPDIR": str(root / "client"),  # the launcher's config cache, bootstrap files
            "RAY_UP_enable_autoscaler_v2": "0",  # v2 starts no worker for `local` (Ray 2.60)
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        self.env.pop("RAY_ADDRESS", None)
        self.netns = ""  # set once the sshd runs

    def _node_shells(self) -> None:
        """Each node's ~/.bashrc: this interpreter and the ssh wrapper first on PATH, pip
        offline with the wheelhouse."""
        bin_dir = self.root / "bin"
        bin_dir.mkdir()
        ssh = bin_dir / "ssh"
        ssh.write_text(SSH_WRAPPER.format(ssh=which("ssh")))
        ssh.chmod(0o755)
        path = f"{bin_dir}:{Path(sys.executable).parent}"
        for ip in self.nodes:
            home = self.node_home(ip)
            home.mkdir()
            (home / ".bashrc").write_text(
                f'export PATH="{path}:$PATH"\n'
                f"export PIP_NO_INDEX=1 PIP_FIND_LINKS={self.wheelhouse}\n"
            )

    @property
    def nodes(self) -> list[str]:
        return [self.head, *self.workers]

    def node_home(self, ip: str) -> Path:
        return self.root / ip

    def inside(self, *argv: str) -> list[str]:
        """``argv`` run in the cluster's network namespace."""
        assert self.netns, "the sshd (and its network namespace) is not running"
        return [which("nsenter") or "nsenter", f"--net={self.netns}", "--", *argv]

    def ray(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        """``ray <args>`` (the launcher's CLI), logged to <root>/ray-cli.log."""
        proc = subprocess.run(
            self.inside(sys.executable, "-m", "ray.scripts.scripts", *args),
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        with open(self.root / "ray-cli.log", "a") as log:
            log.write(f"$ ray {' '.join(args)}  -> {proc.returncode}\n")
            log.write(f"{proc.stdout}{proc.stderr}\n")
        return proc

    def up(self) -> str:
        proc = self.ray("up", "-y", str(self.config))
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"ray up failed:\n{output[-6000:]}"
        return output

    def exec(self, command: str, timeout: float = 120) -> str:
        proc = self.ray("exec", str(self.config), command, timeout=timeout)
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"ray exec {command!r} failed:\n{output[-4000:]}"
        return output

    def status(self) -> dict[str, Any]:
        """``ray-stream status --json`` on the head (the JSON object in the output)."""
        output = self.exec("ray-stream status --json")
        start, end = output.index("\n{") + 1, output.rindex("\n}") + 2
        return dict(json.loads(output[start:end]))

    def ray_stream_pid(self) -> int:
        return int((self.node_home(self.head) / "ray-stream.pid").read_text())

    def control_dir(self) -> Path:
        """Where the launcher's ssh keeps its ControlMaster sockets for this cluster."""
        user = hashlib.sha256(getpass.getuser().encode()).hexdigest()[:10]
        return Path(f"/tmp/ray_ssh_{user}") / hashlib.sha256(self.name.encode()).hexdigest()[:10]

    def agent_homes(self) -> dict[str, int]:
        """How many agent actor processes each node (the HOME of the raylet that started
        them) runs."""
        homes: dict[str, int] = {}
        for pid in tagged_pids(self.tag):
            if cmdline(pid).startswith("ray::AgentActor"):
                home = Path(environ(pid).get("HOME", "?")).name
                homes[home] = homes.get(home, 0) + 1
        return homes

    def diagnosis(self) -> str:
        """The tails of the logs that tell why a step failed."""
        head = self.node_home(self.head)
        logs = [
            self.root / "ray-cli.log",
            self.root / "ssh-commands.log",
            self.root / "guard.log",
            self.root / "sshd" / "sshd.log",
            head / "ray-stream.log",
            *sorted(head.glob("ray/session_latest/logs/monitor.*")),
        ]
        parts = []
        for log in logs:
            with contextlib.suppress(OSError):
                parts.append(f"==== {log}\n{log.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)


# --------------------------------------------------------------------------------- Kafka


def kafka_round_trip(bootstrap: str, topic: str, records: int) -> dict[str, str]:
    """Create ``topic``, produce ``records`` records with confluent-kafka and consume them
    back in a consumer group; returns key -> value of what came back."""
    import confluent_kafka
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])[topic].result(60)
    errors: list[Any] = []
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i in range(records):
        producer.produce(topic, key=f"k{i}", value=f"v{i}", on_delivery=_append_to(errors))
    assert producer.flush(60) == 0
    assert errors == [None] * records
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"{topic}-group",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    got: dict[str, str] = {}
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 90
        while len(got) < records and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is not None and not msg.error():
                got[msg.key().decode()] = msg.value().decode()
    finally:
        consumer.close()
    return got


def _append_to(errors: list[Any]) -> Any:
    return lambda error, _message: errors.append(error)


if __name__ == "__main__":  # the Kafka round trip, run inside the cluster's namespace
    print(json.dumps(kafka_round_trip(sys.argv[1], sys.argv[2], int(sys.argv[3]))))
