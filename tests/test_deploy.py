"""The deployment examples (issue 11 point 6), validated as far as this machine can:

- Dockerfile: what it copies exists and holds every package; its entry point and default
  command are a valid `flagscope` command line, its environment valid settings; its
  HEALTHCHECK command, run against a real collector, passes on /readyz. Built and run
  only where a container runtime answers (CI has none: skipped, and said so).
- deploy/compose.yaml against the Compose Specification's schema (check-jsonschema's
  vendored copy); its flagscope commands parse; the OpenTelemetry Collector config in
  front points its `otlp_http` exporter at the flagscope service.
- deploy/k8s/flagscope.yaml against Kubernetes' OpenAPI schemas (kubernetes-validate,
  strict: no unknown fields); probes on /healthz and /readyz; the ConfigMap's
  flagscope.toml loads; container args parse.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from flagscope.analysis.cli import build_parser
from flagscope.analysis.schedule.config import load_config
from flagscope.collector import config
from tests.helpers import CollectorProcess

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def instruction(name: str) -> list[str]:
    return [args for kind, args in dockerfile() if kind == name]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for args in instruction("ENV"):
        env.update(re.findall(r"(\w+)=(\S+)", args))
    return env


def test_the_image_copies_every_package_and_installs_them():
    copied = {source for args in instruction("COPY") for source in args.split()[:-1]}
    assert {"pyproject.toml", "README.md", "collector", "analysis"} <= copied
    assert all((ROOT / name).exists() for name in copied)
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {folder.split("/")[0] for folder in packages["package-dir"].values()}
    assert folders <= copied, "a package the image would not have"
    assert any("pip install" in args and " ." in args for args in instruction("RUN"))
    assert instruction("USER") == ["flagscope"]  # not root


def test_the_entry_point_and_environment_are_a_valid_command_and_settings(tmp_path):
    entry = json.loads(instruction("ENTRYPOINT")[0])
    command = json.loads(instruction("CMD")[-1])
    assert entry == ["flagscope"] and shutil.which(
        "flagscope", path=str(Path(sys.executable).parent)
    )
    args = build_parser().parse_args(command)
    assert args.command == "serve"
    settings = config.load(None, env=image_env())
    assert (settings.http_endpoint, settings.grpc_endpoint) == ("0.0.0.0:4318", "0.0.0.0:4317")
    assert str(settings.data_dir) in instruction("VOLUME")[0]
    assert {"4317", "4318"} == set(instruction("EXPOSE")[0].split())


@pytest.mark.slow
def test_the_healthcheck_passes_on_a_ready_collector(tmp_path):
    health = json.loads(instruction("HEALTHCHECK")[0].split("CMD", 1)[1])
    port = image_env()["FLAGSCOPE_HTTP_ENDPOINT"].rsplit(":", 1)[1]
    collector = CollectorProcess(tmp_path).start()
    try:
        probe = [part.replace(f":{port}/", f":{collector.http_port}/") for part in health]
        assert probe[0] == "python"
        done = subprocess.run([sys.executable, *probe[1:]], capture_output=True, timeout=30)
        assert done.returncode == 0, done.stderr
    finally:
        collector.close()


def _runtime() -> bool:
    docker = shutil.which("docker")
    return bool(docker) and subprocess.run([docker, "info"], capture_output=True).returncode == 0  # type: ignore[list-item]


@pytest.mark.slow
@pytest.mark.skipif(not _runtime(), reason="no container runtime answers here (docker info)")
def test_the_image_builds_and_its_entry_point_runs():
    subprocess.run(["docker", "build", "-t", "flagscope:test", str(ROOT)], check=True, timeout=1800)
    done = subprocess.run(
        ["docker", "run", "--rm", "flagscope:test", "serve", "--help-config"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    assert "FLAGSCOPE_DATA_DIR" in done.stdout


def test_the_compose_file_follows_the_compose_spec():
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(DEPLOY / "compose.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_compose_services_run_flagscope_commands_behind_an_opentelemetry_collector():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    ours = [s for s in services.values() if str(s.get("image", "")).startswith("flagscope")]
    commands = {build_parser().parse_args(s["command"]).command for s in ours}
    assert commands == {"serve", "schedule"}
    otelcol = yaml.safe_load((DEPLOY / "otelcol.yaml").read_text())
    exporter = otelcol["exporters"]["otlp_http/flagscope"]
    assert exporter["endpoint"] == "http://flagscope:4318" and "flagscope" in services
    for pipeline in ("traces", "logs"):
        assert "otlp_http/flagscope" in otelcol["service"]["pipelines"][pipeline]["exporters"]
    reports = load_config(DEPLOY / "flagscope.toml", env={})
    assert [r.flag for r in reports.reports] == ["new-checkout"]


def _manifests() -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "flagscope.yaml").read_text()) if d]


@pytest.mark.parametrize("doc", _manifests(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_each_manifest_is_valid_against_the_kubernetes_schemas(doc):
    version = kubernetes_validate.latest_version()
    kubernetes_validate.validate(doc, version, strict=True)  # raises on any error


def test_the_statefulset_probes_the_health_endpoints_and_the_cronjob_runs_the_reports(tmp_path):
    docs = {d["kind"]: d for d in _manifests()}
    pod = docs["StatefulSet"]["spec"]["template"]["spec"]
    collector = pod["containers"][0]
    assert collector["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert collector["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert docs["StatefulSet"]["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    job = docs["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert build_parser().parse_args(collector["args"]).command == "serve"
    assert build_parser().parse_args(job["args"]).command == "report"
    toml = tmp_path / "flagscope.toml"
    toml.write_text(docs["ConfigMap"]["data"]["flagscope.toml"])
    assert str(config.load(toml, env={}).lake_path) == "/lake/lake"
    assert load_config(toml, env={}).reports[0].flag == "new-checkout"
