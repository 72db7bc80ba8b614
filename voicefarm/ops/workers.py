"""`voicefarm worker`: N Celery worker processes per GPU (pinned with CUDA_VISIBLE_DEVICES; N=1 by default) or
one per CPU slot.

Each process runs concurrency 1 and keeps its engine resident; the supervisor restarts any that dies. A 0.5B
CosyVoice uses a few GiB of a card, so `--per-gpu N` can run N of them on each GPU (docs/operations/cosyvoice-gpu.md).
"""

from __future__ import annotations

import fcntl
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import IO

from shared.config import Settings, environment
from shared.queue import engine_queue
from voicefarm.ops.supervisor import ChildSpec, Supervisor


def detect_gpus() -> list[str]:
    """GPU indices from `nvidia-smi -L`; none when the tool is missing or fails."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def parse_gpus(spec: str, available: list[str]) -> list[str]:
    if spec == "all":
        if not available:
            raise SystemExit("--gpus all: no GPU found (nvidia-smi -L lists none)")
        return available
    gpus = [g.strip() for g in spec.split(",") if g.strip()]
    if not gpus or not all(g.isdigit() for g in gpus) or len(set(gpus)) != len(gpus):
        raise SystemExit(f"--gpus takes 'all' or distinct GPU indices like 0,1 (got {spec!r})")
    return gpus


def plan_workers(
    settings: Settings,
    *,
    gpus: list[str],
    cpu: int,
    host: str | None = None,
    base_env: dict[str, str] | None = None,
    cpu_slots: list[int] | None = None,
    per_gpu: int = 1,
) -> list[ChildSpec]:
    """`cpu_slots` numbers the CPU workers (default 0..cpu-1): see claim_cpu_slots. `per_gpu` processes share each
    GPU: one keeps the name gpu<N>, several are gpu<N>-0, gpu<N>-1, ... (each its own engine cache slot)."""
    if per_gpu < 1:
        raise SystemExit(f"--per-gpu takes a number of worker processes per GPU, at least 1 (got {per_gpu})")
    host = host or socket.gethostname()
    env = environment() if base_env is None else dict(base_env)
    cpu_ids = cpu_slots if cpu_slots is not None else list(range(cpu))
    copies = [""] if per_gpu == 1 else [f"-{k}" for k in range(per_gpu)]
    slots = [(f"gpu{g}{k}", g, "cuda") for g in gpus for k in copies] + [(f"cpu{i}", "", "cpu") for i in cpu_ids]
    specs = []
    for slot, visible, device in slots:
        name = f"{settings.engine}-{slot}@{host}"
        child_env = env | {
            # An empty value hides every GPU from a CPU worker, so it can never grab one by accident.
            "CUDA_VISIBLE_DEVICES": visible,
            "VOICEFARM_WORKER_NAME": name,
            "VOICEFARM_DEVICE": f"{device}:{visible}" if visible else device,
            "VOICEFARM_ENGINE": settings.engine,
        }
        argv = [
            sys.executable, "-m", "celery", "-A", "worker.main", "worker",
            "--queues", engine_queue(settings.engine),
            "--concurrency", "1",
            "--pool", "prefork",
            "--hostname", name,
            "--loglevel", "INFO",
            "--without-gossip", "--without-mingle",
        ]  # fmt: skip
        # SIGTERM is Celery's warm shutdown (the running job may finish); SIGQUIT, a little later, its cold one
        # (the job goes back to the queue); the supervisor SIGKILLs at its own stop timeout, stop_budget(2).
        escalation = (settings.stop_budget(3), signal.SIGQUIT)
        specs.append(ChildSpec(name=name, argv=argv, env=child_env, signal_group=False, stop_escalation=escalation))
    return specs


def claim_cpu_slots(data_dir: Path, count: int) -> tuple[list[int], list[IO[bytes]]]:
    """The lowest CPU slot numbers no other `voicefarm worker` on this data dir holds, with the locks that hold
    them for as long as this process lives: a second command beside a running farm names its workers cpu1, ...
    instead of taking over the farm's cpu0 (worker names are unique: GET /v1/workers lists each)."""
    locks_dir = data_dir / "workers"
    locks_dir.mkdir(parents=True, exist_ok=True)
    slots: list[int] = []
    held: list[IO[bytes]] = []
    index = 0
    while len(slots) < count:
        lock = open(locks_dir / f"cpu{index}.lock", "wb")  # held open on purpose: the lock is the claim
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
        else:
            slots.append(index)
            held.append(lock)
        index += 1
    return slots, held


def run_workers(
    settings: Settings, *, gpus: str | None, cpu: int, per_gpu: int = 1, base_env: dict[str, str] | None = None
) -> int:
    """`base_env`: the workers' environment (default: ours); a joined host's carries the farm's answer."""
    gpu_list = parse_gpus(gpus, detect_gpus()) if gpus else []
    if per_gpu != 1 and not gpu_list:
        raise SystemExit("--per-gpu needs --gpus (all, or GPU indices like 0,1)")
    if per_gpu < 1:
        raise SystemExit(f"--per-gpu takes a number of worker processes per GPU, at least 1 (got {per_gpu})")
    if not gpu_list and cpu == 0:
        cpu = 1
    cpu_slots, _locks = claim_cpu_slots(settings.data_dir, cpu)
    # Done before `voicefarm up`, which runs this, gives up on it (Settings.stop_budget).
    supervisor = Supervisor(stop_timeout=settings.stop_budget(2))
    supervisor.install_signal_handlers()
    plan = plan_workers(settings, gpus=gpu_list, cpu=cpu, cpu_slots=cpu_slots, per_gpu=per_gpu, base_env=base_env)
    for spec in plan:
        supervisor.add(spec)
    return supervisor.run()
