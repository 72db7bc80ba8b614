"""Two farms on one host, all real processes: two `voicefarm up`, each with its own data dir and API port, both
naming the same broker and S3 ports on purpose (as two default `./run.sh` farms would). The first runs its Redis
and SeaweedFS there and claims them; the second finds them owned by the first, runs its own on free ports, says so
in its banner, and both finish all their jobs. A worker that joins the second farm from its data dir lands on the
second farm's broker."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable

import pytest
import redis

from shared.identity import OWNER_KEY
from tests.farm.test_up import UpFarm, up_farm  # noqa: F401  (fixture)
from voicefarm.ops import services

pytestmark = [pytest.mark.slow, pytest.mark.faults]


def test_two_default_farms_on_one_host_both_finish_their_jobs(up_farm: Callable[..., UpFarm]) -> None:  # noqa: F811
    host = socket.gethostname()
    shared = {
        "BROKER_URL": f"redis://127.0.0.1:{services.free_port()}/0",
        "S3_ENDPOINT_URL": f"http://127.0.0.1:{services.free_port()}",
    }
    first = up_farm(1, **shared)
    first.wait(lambda: f"kokoro-cpu0@{host}" in first.workers(), 300, "the first farm's worker")
    second = up_farm(1, **shared)
    second.wait(lambda: f"kokoro-cpu0@{host}" in second.workers(), 300, "the second farm's worker")

    ids = [(farm.data_dir / "farm_id").read_text().strip() for farm in (first, second)]
    assert ids[0] != ids[1] and all(i.startswith("farm-") for i in ids)
    banner = (second.data_dir / "up.log").read_text()
    notes = [line for line in banner.splitlines() if "belongs to" in line or "note" in line or "farm id" in line]
    assert any(f"belongs to {ids[0]}: this farm runs its own on port" in line for line in notes), notes
    moved = json.loads((second.data_dir / "endpoints.json").read_text())
    assert moved["broker_url"][0] == shared["BROKER_URL"] and moved["broker_url"][1] != shared["BROKER_URL"]
    assert moved["s3_endpoint_url"][0] == shared["S3_ENDPOINT_URL"]
    # Each broker names its own farm.
    assert redis.Redis.from_url(shared["BROKER_URL"]).get(OWNER_KEY) == ids[0].encode()
    assert redis.Redis.from_url(moved["broker_url"][1]).get(OWNER_KEY) == ids[1].encode()

    jobs = {farm: [farm.submit(f"Farm {n}, line {i}.") for i in range(3)] for n, farm in enumerate((first, second))}
    for farm, submitted in jobs.items():
        farm.wait(lambda f=farm, s=submitted: all(f.status(j) == "succeeded" for j in s), 300, "the jobs to succeed")
    # `./run.sh worker --cpu 1` beside the second farm, with its environment (naming the shared broker port): the
    # data dir sends it to the second farm's own broker, where it takes that farm's jobs.
    second.join_worker(1)
    second.wait(lambda: f"kokoro-cpu1@{host}" in second.workers(), 300, "the joining worker")
    assert f"kokoro-cpu1@{host}" not in first.workers()
