"""The deployment files stay true to the CLI: the Kubernetes manifest's and the Dockerfile's
server arguments parse, and the probes and ports point at what the server serves."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from rtserve import cli

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "deploy" / "kubernetes" / "rtserve-kserve.yaml"


def _serve_args(argv: list[str]) -> object:
    parser = cli._build_parser()
    return parser.parse_args(cli._default_to_serve(parser, argv))


def test_kserve_manifest_matches_the_cli() -> None:
    runtime, service = list(yaml.safe_load_all(MANIFEST.read_text()))
    assert runtime["kind"] == "ServingRuntime" and service["kind"] == "InferenceService"
    assert service["spec"]["predictor"]["model"]["runtime"] == runtime["metadata"]["name"]
    assert "v2" in runtime["spec"]["protocolVersions"]
    (container,) = runtime["spec"]["containers"]
    assert container["name"] == "kserve-container"  # the name KServe routes to
    argv = [a.replace("{{.Name}}", service["metadata"]["name"]) for a in container["args"]]
    args = _serve_args(argv)
    assert args.models == ["minilm=/mnt/models"]
    assert args.host == "0.0.0.0"
    assert args.port == container["ports"][0]["containerPort"]
    assert args.memory_budget == 3 << 30
    assert args.shutdown_timeout < service["spec"]["predictor"]["terminationGracePeriodSeconds"]
    # the probes are the open (no API key) KServe health routes
    from rtserve.server.app import _OPEN_PATHS

    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] in _OPEN_PATHS
        assert container[probe]["httpGet"]["port"] == args.port
    env = {e["name"]: e for e in container["env"]}
    assert set(env) <= {"RTSERVE_NUM_THREADS", "RTSERVE_API_KEY"}


def test_dockerfile_command_parses() -> None:
    text = (ROOT / "Dockerfile").read_text()
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M)[1])  # type: ignore[index]
    command = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M)[1])  # type: ignore[index]
    assert entrypoint == ["python", "-m", "rtserve"]
    args = _serve_args(command)
    assert args.run is cli._cmd_serve and args.port == 8080 and args.host == "0.0.0.0"
    assert re.search(r"^EXPOSE 8080$", text, re.M)
