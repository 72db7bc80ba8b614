"""`voicefarm worker`: one Celery worker process per GPU (pinned with CUDA_VISIBLE_DEVICES) or per CPU slot.

Each process runs concurrency 1 and keeps its engine resident; the supervisor restarts any that dies.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys

from shared.config import Settings
from shared.queue import engine_queue
from voicefarm.supervisor import ChildSpec, Supervisor


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
    settings: Settings, *, gpus: list[str], cpu: int, host: str | None = None, base_env: dict[str, str] | None = None
) -> list[ChildSpec]:
    host = host or socket.gethostname()
    env = dict(os.environ if base_env is None else base_env)
    slots = [(f"gpu{g}", g, "cuda") for g in gpus] + [(f"cpu{i}", "", "cpu") for i in range(cpu)]
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
        specs.append(ChildSpec(name=name, argv=argv, env=child_env))
    return specs


def run_workers(settings: Settings, *, gpus: str | None, cpu: int) -> int:
    gpu_list = parse_gpus(gpus, detect_gpus()) if gpus else []
    if not gpu_list and cpu == 0:
        cpu = 1
    supervisor = Supervisor()
    supervisor.install_signal_handlers()
    for spec in plan_workers(settings, gpus=gpu_list, cpu=cpu):
        supervisor.add(spec)
    return supervisor.run()
