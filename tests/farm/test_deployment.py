"""The deployment files agree with the code. Docker and Kubernetes cannot run here, so every file is parsed and
each command, port, environment variable and health endpoint it uses is checked against the code: commands parse
with the real `voicefarm` argument parser, variables are settings the farm reads (or ones that a named outside
program reads), ports are the API's, probes and proxied paths are routes that answer, KEDA watches the lists that
kombu really fills, and the Grafana dashboard plots metrics that /metrics really exports.

Files: docker-compose.yml, infra/docker-compose.gpu.yml, infra/Dockerfile (CPU), infra/Dockerfile.cosyvoice
(GPU), infra/nginx/voicefarm.conf, infra/helm/voicefarm (rendered here with its values.yaml), and
infra/grafana/voicefarm-dashboard.json.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from shared import config, tenants
from shared.config import Settings
from shared.queue import engine_queue, redis_priority
from tests.support.fixtures import auth, new_api_key
from voicefarm.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
CHART = INFRA / "helm" / "voicefarm"
API_PORT = Settings().port
# Variables read by programs other than the farm, each named with its reader.
OUTSIDE_ENV = {
    "POSTGRES_USER": "postgres image", "POSTGRES_PASSWORD": "postgres image", "POSTGRES_DB": "postgres image",
    "MINIO_ROOT_USER": "minio image", "MINIO_ROOT_PASSWORD": "minio image",
    "S3_ACCESS_KEY": "s3-init shell", "S3_SECRET_KEY": "s3-init shell",
    "NVIDIA_DRIVER_CAPABILITIES": "NVIDIA container toolkit", "CUDA_VISIBLE_DEVICES": "CUDA",
    "FLOWER_BASIC_AUTH": "flower", "REDISCLI_AUTH": "redis-cli",
    "PYTHONUNBUFFERED": "python", "PYTHONDONTWRITEBYTECODE": "python",
    "PIP_NO_CACHE_DIR": "pip", "PIP_DISABLE_PIP_VERSION_CHECK": "pip", "PATH": "shell", "VIRTUAL_ENV": "venv",
    "DEBIAN_FRONTEND": "apt", "HF_HUB_OFFLINE": "huggingface_hub",
}  # fmt: skip


def setting_env_names() -> set[str]:
    """Every environment variable the settings read: the farm's (nested groups' flat names too) and the client's."""
    return config.setting_env_names() | config.ClientSettings.env_names()


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


# What an operator must give the chart (values.yaml leaves every secret empty and the templates `required`).
OPERATOR_SECRETS = {
    "databaseUrl": "postgresql://voicefarm:s3cret-db@db.internal:5432/voicefarm",
    "s3AccessKey": "operator-access",
    "s3SecretKey": "operator-secret",
    "secretKey": "bm90LWEtcmVhbC1rZXktYnV0LTMyLWJ5dGVzLWxvbmc=",
}


class ChartRefused(Exception):
    """A `required` value was empty: `helm install` stops with its message."""


def render_chart(overrides: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The chart's manifests, rendered with values.yaml plus `overrides` (by default the operator's secrets). The
    templates use only values, `quote`, `required "message"` and the release name, which this renders as Helm does;
    anything else would be left as `{{` and fail the test."""
    values = load_yaml(CHART / "values.yaml")
    for group, given in ({"secrets": OPERATOR_SECRETS} if overrides is None else overrides).items():
        values[group] = {**values.get(group, {}), **given}

    def lookup(path: str) -> Any:
        node: Any = values
        for part in path.split("."):
            node = node[part]
        return node

    def substitute(match: re.Match[str]) -> str:
        expr = match.group(1).strip()
        if expr == ".Release.Name":
            return "voicefarm"
        quoted = expr.endswith("| quote")
        expr = expr.removesuffix("| quote").strip()
        required = re.fullmatch(r'required\s+"([^"]*)"\s+(\S+)', expr)
        value = lookup((required.group(2) if required else expr).removeprefix(".Values."))
        if required and value in (None, ""):
            raise ChartRefused(required.group(1))
        return json.dumps(str(value)) if quoted else str(value)

    docs: list[dict[str, Any]] = []
    for template in sorted((CHART / "templates").glob("*.yaml")):
        text = re.sub(r"{{-?\s*(.*?)\s*-?}}", substitute, template.read_text())
        assert "{{" not in text, template
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def compose_files() -> dict[str, dict[str, Any]]:
    return {
        "docker-compose.yml": load_yaml(ROOT / "docker-compose.yml"),
        "infra/docker-compose.gpu.yml": load_yaml(INFRA / "docker-compose.gpu.yml"),
    }


def dockerfile(path: Path) -> dict[str, Any]:
    text = re.sub(r"\\\n", " ", path.read_text())
    found: dict[str, Any] = {"env": set(), "expose": [], "copy": []}
    for line in text.splitlines():
        word, _, rest = line.strip().partition(" ")
        if word == "ENTRYPOINT":
            found["entrypoint"] = json.loads(rest)
        elif word == "CMD":
            found["cmd"] = json.loads(rest)
        elif word == "EXPOSE":
            found["expose"] += [int(p) for p in rest.split()]
        elif word == "ENV":
            found["env"] |= {pair.split("=", 1)[0] for pair in shlex.split(rest)}
        elif word == "COPY" and "--from" not in rest:
            found["copy"].append(shlex.split(rest)[0])
    return found


def farm_command(argv: list[str], where: str) -> Any:
    try:
        return build_parser().parse_args([str(a) for a in argv])
    except SystemExit:
        pytest.fail(f"{where}: `voicefarm {' '.join(map(str, argv))}` is not a valid command")


# --- commands ------------------------------------------------------------------------------------------------


def test_every_command_is_a_real_voicefarm_command() -> None:
    checked = 0
    for name, doc in compose_files().items():
        for service, spec in doc["services"].items():
            uses_farm_image = "voicefarm" in str(spec.get("image", "")) or "build" in spec or "<<" in spec
            if "command" in spec and "entrypoint" not in spec and uses_farm_image and service not in ("redis", "s3"):
                farm_command(spec["command"], f"{name} {service}")
                checked += 1
    gpu = load_yaml(INFRA / "docker-compose.gpu.yml")
    farm_command(gpu["x-gpu-worker"]["command"], "x-gpu-worker")
    for doc in render_chart():
        if doc["kind"] == "Deployment":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                farm_command(container["args"], f"helm {doc['metadata']['name']}")
                checked += 1
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for path in (INFRA / "Dockerfile", INFRA / "Dockerfile.cosyvoice"):
        found = dockerfile(path)
        assert found["entrypoint"] == ["voicefarm"] and "voicefarm" in scripts, path
        farm_command(found["cmd"], str(path))
        for source in found["copy"]:
            assert (ROOT / source).exists(), f"{path}: COPY {source} does not exist"
    assert checked >= 10


def test_healthchecks_and_flower_commands_exist() -> None:
    base = load_yaml(ROOT / "docker-compose.yml")
    gpu = load_yaml(INFRA / "docker-compose.gpu.yml")
    worker_checks = [
        base["services"]["worker"]["healthcheck"]["test"][1],
        gpu["x-gpu-worker"]["healthcheck"]["test"][1],
    ]
    for check in worker_checks:
        assert check.startswith("celery -A worker.main inspect ping"), check
        assert importlib.util.find_spec("worker.main") is not None
    # Worker process names the healthchecks ping: <engine>-<slot>@<host>, slots cpuN / gpuN (voicefarm/ops/workers.py).
    workers_src = (ROOT / "voicefarm" / "ops" / "workers.py").read_text()
    assert 'f"gpu{g}{k}"' in workers_src and 'f"cpu{i}"' in workers_src
    assert "-cpu0@" in worker_checks[0] and "cosyvoice-gpu0@" in worker_checks[1]

    service = base["services"]["flower"]
    # /bin/sh -c '<check FLOWER_BASIC_AUTH>; exec celery "$@"' celery <command...>
    assert service["entrypoint"][:2] == ["/bin/sh", "-c"] and 'exec celery "$$@"' in service["entrypoint"][2]
    assert "flower" in service["command"]
    import flower.options  # noqa: F401  (defines Flower's options)
    import tornado.options

    known = {name.replace("_", "-") for name in tornado.options.options._options}
    for arg in service["command"][service["command"].index("flower") + 1 :]:
        assert arg.startswith("--") and arg[2:].split("=")[0].replace("_", "-") in known, arg


# --- environment ---------------------------------------------------------------------------------------------


def test_every_environment_variable_is_read_by_someone() -> None:
    ours = setting_env_names()
    used: dict[str, str] = {}
    for name, doc in compose_files().items():
        blocks = [v for k, v in doc.items() if k.startswith("x-") and isinstance(v, dict)]
        blocks += [s.get("environment") or {} for s in doc["services"].values()]
        for block in blocks:
            env = block.get("environment", block) if isinstance(block, dict) else {}
            for key in env:
                if key != "<<" and isinstance(key, str) and key.isupper():
                    used[key] = name
    for doc in render_chart():
        if doc["kind"] in ("ConfigMap", "Secret"):
            for key in doc.get("data") or doc.get("stringData") or {}:
                used[key] = f"helm {doc['kind']}"
        if doc["kind"] == "Deployment":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                for item in container.get("env", []):
                    used[item["name"]] = f"helm {doc['metadata']['name']}"
    for path in (INFRA / "Dockerfile", INFRA / "Dockerfile.cosyvoice"):
        for key in dockerfile(path)["env"]:
            used[key] = str(path.name)
    unknown = {k: where for k, where in used.items() if k not in ours and k not in OUTSIDE_ENV}
    assert unknown == {}, f"variables nothing reads: {unknown}"
    assert {"DATABASE_URL", "BROKER_URL", "S3_ENDPOINT_URL", "VOICEFARM_ENGINE"} <= set(used)
    # CUDA_VISIBLE_DEVICES is what the worker supervisor pins, too.
    assert "CUDA_VISIBLE_DEVICES" in (ROOT / "voicefarm" / "ops" / "workers.py").read_text()


# --- ports and GPUs ------------------------------------------------------------------------------------------


def test_ports_agree_with_the_api() -> None:
    base = load_yaml(ROOT / "docker-compose.yml")
    published = [str(p).rsplit(":", 1)[-1] for p in base["services"]["api"]["ports"]]
    assert published == [str(API_PORT)]
    assert f":{API_PORT}/" in base["services"]["api"]["healthcheck"]["test"][-1]
    for path in (INFRA / "Dockerfile", INFRA / "Dockerfile.cosyvoice"):
        exposed = dockerfile(path)["expose"]
        assert exposed in ([], [API_PORT]), path
    assert dockerfile(INFRA / "Dockerfile")["expose"] == [API_PORT]
    values = load_yaml(CHART / "values.yaml")
    assert values["api"]["port"] == API_PORT
    nginx = (INFRA / "nginx" / "voicefarm.conf").read_text()
    assert f"server api:{API_PORT};" in nginx
    flower_port = next(a for a in base["services"]["flower"]["command"] if a.startswith("--port=")).split("=")[1]
    assert f"server flower:{flower_port};" in nginx


def test_gpu_workers_get_one_gpu_each() -> None:
    gpu = load_yaml(INFRA / "docker-compose.gpu.yml")
    services = {k: v for k, v in gpu["services"].items() if k.startswith("worker-gpu")}
    devices = []
    for name, spec in services.items():
        (reservation,) = spec["deploy"]["resources"]["reservations"]["devices"]
        devices += reservation["device_ids"]
        assert spec["environment"]["CUDA_VISIBLE_DEVICES"] == "0", name  # the container sees its GPU as 0
        assert spec["environment"]["VOICEFARM_ENGINE"] == "cosyvoice"
    assert len(services) >= 2 and len(set(devices)) == len(devices)

    (deployment,) = [
        d for d in render_chart() if d["metadata"]["name"] == "voicefarm-worker-gpu" and d["kind"] == "Deployment"
    ]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert farm_command(container["args"], "helm gpu worker").gpus == "0"
    assert {e["name"]: e["value"] for e in container["env"]}["CUDA_VISIBLE_DEVICES"] == "0"


def test_keda_watches_the_lists_kombu_fills() -> None:
    from kombu.transport.redis import Channel

    (scaled,) = [d for d in render_chart() if d["kind"] == "ScaledObject"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == "voicefarm-worker-gpu"
    triggers = scaled["spec"]["triggers"]
    assert {t["type"] for t in triggers} == {"redis"}
    watched = {t["metadata"]["listName"] for t in triggers}
    queue = engine_queue("cosyvoice")
    # Every API priority lands in one of kombu's per-priority lists: "<queue>" or "<queue><sep><step>".
    filled = {queue if (step := redis_priority(p)) == 0 else f"{queue}{Channel.sep}{step}" for p in range(10)}
    assert filled <= watched, filled - watched
    values = load_yaml(CHART / "values.yaml")
    assert all(t["metadata"]["address"] == values["keda"]["redisAddress"] for t in triggers)


# --- endpoints -----------------------------------------------------------------------------------------------


def test_health_endpoints_and_proxied_paths_answer(client: FlaskClient, sessions: sessionmaker[Session]) -> None:
    paths: set[str] = set()
    for doc in compose_files().values():
        for spec in doc["services"].values():
            paths |= set(re.findall(r"https?://[^/\s']+(/[\w/.-]*)", json.dumps(spec.get("healthcheck", {}))))
    for doc in render_chart():
        text = json.dumps(doc)
        paths |= set(re.findall(r'"path": "(/[^"]*)"', text))
        paths |= set(re.findall(r'"prometheus.io/path": "(/[^"]*)"', text))
    nginx = (INFRA / "nginx" / "voicefarm.conf").read_text()
    exact = set(re.findall(r"location = (/\S+)", nginx))
    paths |= exact
    assert {"/healthz", "/readyz", "/metrics", "/v1/audio/speech"} <= paths
    routes = {rule.rule for rule in client.application.url_map.iter_rules()}
    for path in sorted(paths):
        assert path in routes, f"{path} is used by a deployment file but is no route"
        if path == "/metrics":  # for operators: nothing for a passer-by, the page for an operator key
            assert client.get(path).status_code == 401
            assert client.get(path, headers=auth(new_api_key(sessions, "ops", tenants.OPERATOR))).status_code == 200
        elif path != "/v1/audio/speech":
            assert client.get(path).status_code in (200, 503), path  # /readyz: 503 with no worker here
    # Streaming passes through nginx unbuffered.
    speech = nginx[nginx.index("location = /v1/audio/speech") :].split("}")[0]
    assert "proxy_buffering off;" in speech
    base = load_yaml(ROOT / "docker-compose.yml")
    mounts = " ".join(base["services"]["nginx"]["volumes"])
    for target in re.findall(r"(?:ssl_certificate(?:_key)?|auth_basic_user_file)\s+(\S+);", nginx):
        assert any(target.startswith(m.split(":")[1]) for m in mounts.split()), target


def test_grafana_plots_metrics_that_exist(client: FlaskClient, sessions: sessionmaker[Session]) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    page = client.get("/metrics", headers=auth(new_api_key(sessions, "ops", tenants.OPERATOR))).get_data(as_text=True)
    exported = {f.name for f in text_string_to_metric_families(page)}
    dashboard = json.loads((INFRA / "grafana" / "voicefarm-dashboard.json").read_text())
    used = {
        re.sub(r"_(bucket|count|sum)$", "", name)
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"voicefarm_\w+", target["expr"])
    }
    assert used and used <= exported, used - exported


# --- secrets ---------------------------------------------------------------------------------------------------

SECRET_NAME = re.compile(r"PASSWORD|SECRET|_KEY$|TOKEN|_AUTH$|ACCESS_KEY")
# Secrets that may be empty: an empty one turns a feature off, it opens nothing.
OPTIONAL_SECRETS = {
    "VOICEFARM_METRICS_TOKEN": "empty: /metrics answers operator keys only",
    "FLOWER_BASIC_AUTH": "empty: Flower's entrypoint refuses to start (tested below)",
}


def test_compose_ships_no_default_password() -> None:
    """Every secret a compose file hands a container is a variable the operator must set (`${VAR:?message}`),
    never a `${VAR:-default}` or a literal, and no URL carries a literal password."""
    for name in ("docker-compose.yml", "infra/docker-compose.gpu.yml"):
        text = (ROOT / name).read_text()
        for var, default in re.findall(r"\$\{(\w+):-([^}]*)\}", text):
            assert not (SECRET_NAME.search(var) and default), f"{name}: ${{{var}}} defaults to {default!r}"
        for var in set(re.findall(r"\$\{(\w+)(?::?[-?][^}]*)?\}", text)):
            if SECRET_NAME.search(var) and var not in OPTIONAL_SECRETS:
                assert re.search(rf"\$\{{{var}:\?[^}}]+\}}", text), f"{name}: {var} is not required"
        urls = re.findall(r"\w+://(?:\$\{[^}]*\}|[^\s\"'@/$])*@", text)
        assert urls, name
        for url in urls:
            password = url.split("://", 1)[1].rsplit("@", 1)[0].partition(":")[2]
            assert re.fullmatch(r"\$\{\w+:\?[^}]+\}", password), f"{name}: {url} has a literal password"
        doc = load_yaml(ROOT / name)
        blocks = [v for k, v in doc.items() if k.startswith("x-") and isinstance(v, dict)]
        blocks += [spec.get("environment") or {} for spec in doc["services"].values()]
        for block in blocks:
            for key, value in block.items():
                if isinstance(key, str) and SECRET_NAME.search(key) and key != "<<":
                    assert re.fullmatch(r"\$\{\w+(:\?[^}]+|:-)\}", str(value)), f"{name}: {key}={value!r}"
    base = load_yaml(ROOT / "docker-compose.yml")
    # Redis asks for the password the farm's BROKER_URL carries (one variable for both).
    redis = base["services"]["redis"]
    assert "--requirepass" in " ".join(redis["command"]) and "$$REDISCLI_AUTH" in redis["command"][-1]
    assert redis["environment"]["REDISCLI_AUTH"].startswith("${REDIS_PASSWORD:?")
    assert base["x-farm-env"]["BROKER_URL"].startswith("redis://:${REDIS_PASSWORD:?")
    assert "${REDIS_PASSWORD:?" in base["services"]["flower"]["command"][1]


def _compose_shell(script: str) -> str:
    """A compose entrypoint's shell script as the container runs it (`$$` is compose's escape for `$`)."""
    return script.replace("$$", "$")


def test_flower_asks_for_basic_auth_and_will_not_start_without_it(tmp_path: Path) -> None:
    import subprocess

    base = load_yaml(ROOT / "docker-compose.yml")
    service = base["services"]["flower"]
    env = service["environment"]
    assert "FLOWER_UNAUTHENTICATED_API" not in env and env["FLOWER_BASIC_AUTH"] == "${FLOWER_BASIC_AUTH:-}"
    assert not any("auth" in arg for arg in service["command"])  # from the environment, not the command line
    # Flower reads FLOWER_BASIC_AUTH as its --basic-auth option, and then asks every page and API call for it.
    import flower.command
    import flower.options  # noqa: F401
    import tornado.options

    opts = tornado.options.options
    saved = opts.basic_auth
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("FLOWER_BASIC_AUTH", "ops:pw1,admin:pw2")
            flower.command.apply_env_options()
            assert opts.basic_auth == ["ops:pw1", "admin:pw2"]
    finally:
        opts.basic_auth = saved
    # The entrypoint: refused without credentials; with them, celery gets the command unchanged.
    fake = tmp_path / "celery"
    fake.write_text('#!/bin/sh\necho "celery $*"\n')
    fake.chmod(0o755)
    argv = [_compose_shell(a) for a in service["entrypoint"]] + [
        a.replace("${REDIS_PASSWORD:?set REDIS_PASSWORD in .env}", "pw") for a in service["command"]
    ]
    path = f"{tmp_path}:/usr/bin:/bin"
    refused = subprocess.run(argv, env={"PATH": path, "FLOWER_BASIC_AUTH": ""}, capture_output=True, text=True)
    assert refused.returncode == 64 and "FLOWER_BASIC_AUTH" in refused.stderr and refused.stdout == ""
    ran = subprocess.run(argv, env={"PATH": path, "FLOWER_BASIC_AUTH": "ops:pw"}, capture_output=True, text=True)
    assert ran.returncode == 0 and ran.stdout.split() == ["celery", *argv[4:]]
    # nginx passes the Authorization header to Flower, which checks it: no second password file.
    nginx = (INFRA / "nginx" / "voicefarm.conf").read_text()
    assert "auth_basic" not in nginx and "htpasswd" not in json.dumps(base["services"]["nginx"])
    # The chart runs no Flower at all.
    assert not any("flower" in json.dumps(doc).lower() for doc in render_chart())


def test_the_chart_requires_every_secret_and_ships_none() -> None:
    values = load_yaml(CHART / "values.yaml")
    assert set(OPERATOR_SECRETS) <= set(values["secrets"])
    assert all(value == "" for value in values["secrets"].values()), values["secrets"]
    # values.yaml as shipped: helm install stops, naming the first missing value; each one is required.
    for missing in OPERATOR_SECRETS:
        with pytest.raises(ChartRefused, match=f"secrets.{missing}"):
            render_chart({"secrets": {k: v for k, v in OPERATOR_SECRETS.items() if k != missing}})
    (secret,) = [d for d in render_chart() if d["kind"] == "Secret"]
    data = secret["stringData"]
    assert data["DATABASE_URL"] == OPERATOR_SECRETS["databaseUrl"]
    assert data["AWS_ACCESS_KEY_ID"] == OPERATOR_SECRETS["s3AccessKey"]
    assert data["AWS_SECRET_ACCESS_KEY"] == OPERATOR_SECRETS["s3SecretKey"]
    assert data["VOICEFARM_SECRET_KEY"] == OPERATOR_SECRETS["secretKey"]
    # Nothing secret sits in the ConfigMap.
    (configmap,) = [d for d in render_chart() if d["kind"] == "ConfigMap"]
    assert not [k for k in configmap["data"] if SECRET_NAME.search(k)]
    assert not any("@" in str(v) for v in configmap["data"].values())


def test_presigned_urls_can_name_a_public_s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    public = "https://media.example.com"
    docs = render_chart({"secrets": OPERATOR_SECRETS, "config": {"s3PublicEndpointUrl": public}})
    (configmap,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert configmap["data"]["VOICEFARM_S3_PUBLIC_ENDPOINT_URL"] == public
    assert load_yaml(CHART / "values.yaml")["config"]["s3PublicEndpointUrl"] == ""
    for name, doc in compose_files().items():
        assert doc["x-farm-env"]["VOICEFARM_S3_PUBLIC_ENDPOINT_URL"] == "${VOICEFARM_S3_PUBLIC_ENDPOINT_URL:-}", name
    # The farm reads it as the setting that presigned URLs use, from the environment the ConfigMap fills.
    for key, value in configmap["data"].items():
        monkeypatch.setenv(key, value)
    (secret,) = [d for d in docs if d["kind"] == "Secret"]
    for key, value in secret["stringData"].items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.s3_public_endpoint_url == public
    assert settings.s3_endpoint_url == configmap["data"]["S3_ENDPOINT_URL"]
