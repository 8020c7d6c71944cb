"""CPU time and memory of the systems under test, for benchmarks/kafka.py (Linux, psutil).

A ``ProcessTree`` is one system's processes: its roots (Tansu's broker; the processes
``ray.init`` started for ray_stream's cluster: GCS, raylet, dashboard, log monitor, ...)
and, found again at every sample, all their descendants (the raylet starts the actor and
idle workers, the dashboard agent, and may start more while the cluster runs).
``sample`` reads the user+system CPU seconds of each; ``phase_cpu`` turns two samples
into what one phase cost, per process and in total.

Rules this module keeps:

* The benchmark driver is never part of a tree: it runs the Kafka client (and Ray's
  driver-side threads). Its own CPU is ``client_s``, recorded beside, for context.
* A process is ``(pid, create_time)``, so a reused pid is another process. One that
  exits between two samples counts up to its last sample (what it used after that is
  lost; ``exited`` says how many); one first seen in the end sample counts from zero
  (it started during the phase).
* Nothing here signals or stops a process; it only reads /proc.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import psutil

GIB = 1024**3
MIB = 1024**2
Key = tuple[int, float]  # (pid, create_time)
_GONE = (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied)


def _key(proc: psutil.Process) -> Key:
    return (proc.pid, proc.create_time())


def _cpu_s(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def label(proc: psutil.Process) -> str:
    """A short, stable name: ``ray::AgentActor``, ``raylet``, ``dashboard/agent.py``."""
    try:
        name = proc.name()
        cmd = proc.cmdline()
    except _GONE:
        return "?"
    if cmd and cmd[0].startswith("ray::"):  # Ray's proctitle: ray::Class.method args
        return cmd[0].split()[0].split(".")[0]
    for arg in cmd[1:]:  # a Python script: name it by its file, not "python"
        if arg.endswith(".py"):
            return "/".join(Path(arg).parts[-2:])
    return name


def child_keys() -> set[Key]:
    """The direct children of this process right now."""
    keys = set()
    for child in psutil.Process().children():
        try:
            keys.add(_key(child))
        except _GONE:
            continue
    return keys


def new_children(before: set[Key]) -> list[psutil.Process]:
    """Direct children of this process that were not in ``before``."""
    found = []
    for child in psutil.Process().children():
        try:
            if _key(child) not in before:
                found.append(child)
        except _GONE:
            continue
    return found


@dataclass(frozen=True, slots=True)
class Sample:
    at_s: float
    client_s: float
    procs: dict[Key, tuple[str, float]]  # (pid, create_time) -> (label, cpu seconds)


class ProcessTree:
    """One system's processes: ``roots`` and all their descendants."""

    def __init__(self, roots: list[psutil.Process]) -> None:
        self.roots = roots
        self._me = psutil.Process()

    @classmethod
    def of_pids(cls, pids: list[int]) -> ProcessTree:
        return cls([psutil.Process(pid) for pid in pids])

    def processes(self) -> list[psutil.Process]:
        found: dict[int, psutil.Process] = {}
        for root in self.roots:
            try:
                if not root.is_running():
                    continue
                found.setdefault(root.pid, root)
                for child in root.children(recursive=True):
                    found.setdefault(child.pid, child)
            except _GONE:
                continue
        found.pop(self._me.pid, None)  # never the driver, whatever the tree says
        return list(found.values())

    def pids(self) -> set[int]:
        return {p.pid for p in self.processes()}

    def sample(self) -> Sample:
        procs: dict[Key, tuple[str, float]] = {}
        for proc in self.processes():
            try:
                procs[_key(proc)] = (label(proc), _cpu_s(proc))
            except _GONE:
                continue
        return Sample(time.perf_counter(), _cpu_s(self._me), procs)


def phase_cpu(start: Sample, end: Sample) -> dict:
    """What the system (and, apart, the client) spent between two samples."""
    by_process: dict[str, float] = {}
    for key, (name, cpu_s) in end.procs.items():
        base = start.procs.get(key, (name, 0.0))[1]
        by_process[f"{name}[{key[0]}]"] = cpu_s - base
    return {
        "seconds": end.at_s - start.at_s,
        "system_cpu_s": sum(by_process.values()),
        "client_cpu_s": end.client_s - start.client_s,
        "processes": len(end.procs),
        "exited": sum(1 for key in start.procs if key not in end.procs),
        "by_process": by_process,
    }


def cpu_summary(rounds: list[dict]) -> dict:
    """CPU-seconds per GiB over all ``rounds`` (each with ``cpu`` and phase ``bytes``)."""
    out: dict = {"cpu_s_per_gib": {}, "client_cpu_s_per_gib": {}, "cpu_by_process_s": {}}
    for phase in ("produce", "consume"):
        measured = [r for r in rounds if phase in r.get("cpu", {})]
        gib = sum(r[phase]["bytes"] for r in measured) / GIB
        if not measured or not gib:
            continue
        cpus = [r["cpu"][phase] for r in measured]
        by: dict[str, float] = {}
        for c in cpus:
            for name, seconds in c["by_process"].items():
                by[name] = by.get(name, 0.0) + seconds
        out["cpu_s_per_gib"][phase] = sum(c["system_cpu_s"] for c in cpus) / gib
        out["client_cpu_s_per_gib"][phase] = sum(c["client_cpu_s"] for c in cpus) / gib
        out["cpu_by_process_s"][phase] = {
            name: round(s, 3) for name, s in sorted(by.items(), key=lambda kv: -kv[1])
        }
    return out


def process_memory_mib(pid: int) -> dict:
    """Peak (``VmHWM``) and current (``VmRSS``) resident memory of ``pid``, in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            fields[key] = int(value.split()[0]) * 1024 / MIB  # reported in kB
    return {"pid": pid, "peak_rss_mib": fields["VmHWM"], "rss_mib": fields["VmRSS"]}
