"""The deploy files (deploy/, docs/deploy.md): what can be checked without a container daemon or a cluster.

deploy/check.sh runs the linters (hadolint, kubernetes-validate on kustomize-rendered output, checkov, haproxy -c);
this checks what they cannot know: that compose has the services docs/deploy.md names, that the manifests agree
with the gateway's settings (probes, shutdown budget), and that the reloader sidecar reloads on a change.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from gateway.eventlog.writer import EventWriter
from gateway.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
KUSTOMIZE_DIRS = [K8S / "base", K8S / "overlays" / "gpu", K8S / "clickhouse"]


def load_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def find(kind: str, directory: Path) -> dict:
    for path in sorted(directory.glob("*.yaml")):
        for doc in load_all(path):
            if doc.get("kind") == kind:
                return doc
    raise AssertionError(f"no {kind} in {directory}")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_every_yaml_file_parses():
    files = [*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")]
    files = [f for f in files if ".venv" not in f.parts]
    assert len(files) >= 15
    for path in files:
        docs = load_all(path)
        assert docs, f"{path} is empty"
        for doc in docs:
            assert isinstance(doc, dict), f"{path}: a document that is not a mapping"


def test_every_manifest_is_part_of_a_kustomization():
    for directory in KUSTOMIZE_DIRS:
        kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
        listed = set(kustomization.get("resources", []))
        listed |= {p["path"] for p in kustomization.get("patches", [])}
        for generator in kustomization.get("configMapGenerator", []):
            listed |= set(generator.get("files", []))
        files = {str(p.relative_to(directory)) for p in directory.rglob("*.yaml")} - {"kustomization.yaml"}
        assert files <= listed, f"{directory}: not in kustomization.yaml: {sorted(files - listed)}"
        for item in listed:
            assert (directory / item).exists(), f"{directory}/kustomization.yaml names a missing {item}"
        manifests = files - {f for g in kustomization.get("configMapGenerator", []) for f in g.get("files", [])}
        for doc in (d for f in manifests for d in load_all(directory / f)):
            assert {"apiVersion", "kind", "metadata"} <= set(doc), f"{directory}: {doc.get('kind')} lacks fields"


def test_compose_has_the_services_the_docs_name(compose):
    services = compose["services"]
    gateways = sorted(name for name in services if name.startswith("gateway"))
    assert {"clickhouse", "migrate", "lb", "prometheus", "grafana"} <= set(services)
    assert len(gateways) == 2
    assert services["migrate"]["command"] == ["db", "migrate"]
    spools = set()
    for name in gateways:
        service = services[name]
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert service["read_only"] is True
        spool = [v for v in service["volumes"] if v.endswith(":/var/lib/abgate")]
        assert len(spool) == 1, f"{name}: one spool volume"
        spools.add(spool[0])
        assert "ABGATE_DSN" in service["environment"] and "ABGATE_ADMIN_API_KEY" in service["environment"]
    assert len(spools) == 2, "each replica needs its own spool (the spool takes a lock)"
    # The load balancer and Prometheus know both replicas.
    haproxy = (DEPLOY / "haproxy.cfg").read_text()
    prometheus = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    targets = {t for job in prometheus["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    for name in gateways:
        assert re.search(rf"^\s*server {name} {name}:8000\b", haproxy, re.M)
        assert f"{name}:8000" in targets
    assert "option httpchk GET /readyz" in haproxy
    for limit in ("maxconn", "timeout http-request", "tune.bufsize", "tune.http.maxhdr", "content-length"):
        assert limit in haproxy
    docs = (ROOT / "docs" / "deploy.md").read_text()
    for name in ("clickhouse", "migrate", "lb", "prometheus", "grafana", *gateways):
        assert f"`{name}`" in docs, f"docs/deploy.md does not name the compose service {name}"


def test_grafana_is_provisioned_with_clickhouse_and_the_dashboards(compose):
    sources = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/abgate.yaml").read_text())["datasources"]
    clickhouse = next(s for s in sources if s["type"] == "grafana-clickhouse-datasource")
    render = (DEPLOY / "grafana/render-dashboards.sh").read_text()
    assert f"s/${{DS_CLICKHOUSE}}/{clickhouse['uid']}/g" in render
    assert "grafana-clickhouse-datasource" in compose["services"]["grafana"]["environment"]["GF_INSTALL_PLUGINS"]
    assert any(v.startswith("../dashboards/grafana:") for v in compose["services"]["grafana"]["volumes"])
    assert list((ROOT / "dashboards" / "grafana").glob("*.json"))


def _gateway_container(deployment: dict) -> dict:
    return next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "gateway")


def test_deployment_probes_point_at_readyz_and_healthz():
    container = _gateway_container(find("Deployment", K8S / "base"))
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"


def test_grace_period_covers_prestop_drain_and_the_writer_flush():
    deployment = find("Deployment", K8S / "base")
    pod = deployment["spec"]["template"]["spec"]
    container = _gateway_container(deployment)
    env = {e["name"]: e.get("value") for e in container["env"]}
    flush_s = float(env.get("ABGATE_EVENTS_FLUSH_S") or Settings().events_flush_s)
    drain_s = float(env.get("ABGATE_DRAIN_S") or Settings().drain_s)  # readyz 503, still serving
    prestop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert prestop[0] == "sleep"
    sleep_s = float(prestop[1])
    # EventWriter.close(timeout) waits up to `timeout` for the flush, then up to `timeout` for its thread.
    close_timeout = inspect.signature(EventWriter.close).parameters["timeout"].default
    needed = sleep_s + drain_s + flush_s + 2 * close_timeout
    assert pod["terminationGracePeriodSeconds"] > needed, (pod["terminationGracePeriodSeconds"], needed)


def test_pod_runs_non_root_on_a_read_only_root_with_writable_spool_and_tmp():
    deployment = find("Deployment", K8S / "base")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    for container in pod["containers"]:
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert "limits" in container["resources"] and "requests" in container["resources"]
    mounts = {m["mountPath"]: m for m in _gateway_container(deployment)["volumeMounts"]}
    env = {e["name"]: e.get("value") for e in _gateway_container(deployment)["env"]}
    assert env["ABGATE_SPOOL_DIR"].startswith("/var/lib/abgate/") and "emptyDir" in volumes[mounts["/var/lib/abgate"]["name"]]
    assert "/tmp" in mounts and not mounts["/var/lib/abgate"].get("readOnly")
    assert volumes[mounts["/etc/abgate/experiments"]["name"]]["configMap"]["name"] == "abgate-experiments"
    keys = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in _gateway_container(deployment)["env"]
            if "valueFrom" in e}
    assert {"ABGATE_ADMIN_API_KEY", "ABGATE_VIEWER_API_KEY", "ABGATE_IMPRESSION_KEYS", "ABGATE_DSN"} <= set(keys)
    assert set(keys.values()) == {"abgate-keys"}


def test_experiments_in_the_configmap_are_valid():
    from experiments.loader import load_folder

    assert load_folder(K8S / "base" / "experiments").experiments


def test_gpu_overlay_asks_for_a_gpu_and_the_gpu_image():
    kustomization = yaml.safe_load((K8S / "overlays/gpu/kustomization.yaml").read_text())
    assert kustomization["images"][0]["newName"].endswith("-gpu")
    patch = yaml.safe_load((K8S / "overlays/gpu/deployment-gpu.yaml").read_text())
    spec = patch["spec"]["template"]["spec"]
    container = _gateway_container(patch)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"]) and spec["nodeSelector"]
    assert {"name": "ABGATE_DEVICE", "value": "cuda"} in container["env"]


def test_clickhouse_cluster_is_2x2_with_3_keepers_and_the_job_migrates_that_cluster():
    chi = find("ClickHouseInstallation", K8S / "clickhouse")
    chk = find("ClickHouseKeeperInstallation", K8S / "clickhouse")
    job = find("Job", K8S / "clickhouse")
    (cluster,) = chi["spec"]["configuration"]["clusters"]
    assert cluster["layout"] == {"shardsCount": 2, "replicasCount": 2}
    assert chk["spec"]["configuration"]["clusters"][0]["layout"]["replicasCount"] == 3
    # The operator names the Keeper Service keeper-<name>.
    assert chi["spec"]["configuration"]["zookeeper"]["nodes"][0]["host"] == f"keeper-{chk['metadata']['name']}"
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:2] == ["db", "migrate"] and args[args.index("--cluster") + 1] == cluster["name"]
    assert f"ON CLUSTER {cluster['name']};" in (DEPLOY / "clickhouse-cluster.sql").read_text()


def test_dockerfiles_serve_without_torch_and_check_health():
    cpu = (DEPLOY / "Dockerfile").read_text()
    gpu = (DEPLOY / "Dockerfile.gpu").read_text()
    for text in (cpu, gpu):
        instructions = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        assert "torch" not in instructions.replace("'torch' not in sys.modules", "").replace("imports torch", "")
        assert "HEALTHCHECK" in text and "/healthz" in text
        assert re.search(r"^USER 10001:10001$", text, re.M)
        assert "[export" not in text and "[test" not in text
    assert "pip install --no-compile ." in cpu
    assert "onnxruntime-gpu" in gpu and "faiss-gpu" in gpu and "('onnxruntime', 'faiss-cpu')" in gpu
    assert "python:3.11" in cpu and "nvidia/cuda:12" in gpu and "python3.11" in gpu


@pytest.fixture
def reloader():
    spec = importlib.util.spec_from_file_location("abgate_reloader", DEPLOY / "reloader.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reloader_posts_a_reload_with_the_key_when_the_folder_changes(reloader, tmp_path):
    calls: list[tuple[str, str | None]] = []
    statuses = iter([503, 200, 422])   # a retried 5xx, a success, then a refusal that is not retried

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            calls.append((self.path, self.headers.get("X-API-Key")))
            self.send_response(next(statuses))
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    folder = tmp_path / "experiments"
    folder.mkdir()
    (folder / "a.yaml").write_text("name: a\n")
    url = f"http://127.0.0.1:{server.server_address[1]}/v1/admin/reload"
    reloader.STOP.clear()
    thread = threading.Thread(target=reloader.run, args=(folder, url, "secret", 0.05, 5.0), daemon=True)
    thread.start()

    def wait_for(n: int) -> None:
        deadline = time.monotonic() + 10
        while len(calls) < n and time.monotonic() < deadline:
            time.sleep(0.02)

    try:
        time.sleep(0.2)
        assert calls == []                        # nothing changed: no reload
        (folder / "a.yaml").write_text("name: a\nsalt: b\n")
        wait_for(2)                               # 503, then retried after the backoff: 200
        assert calls == [("/v1/admin/reload", "secret")] * 2
        (folder / "b.yaml").write_text("name: b\n")
        wait_for(3)
        time.sleep(0.3)
        assert len(calls) == 3                    # 422 refused: not retried until the folder changes again
    finally:
        reloader.STOP.set()
        thread.join(5)
        server.shutdown()
    assert not thread.is_alive()


def test_reloader_fingerprint_ignores_configmap_internals(reloader, tmp_path):
    (tmp_path / "..data").mkdir()
    (tmp_path / "..data" / "x.yaml").write_text("one")
    (tmp_path / "x.yaml").symlink_to(tmp_path / "..data" / "x.yaml")
    before = reloader.fingerprint(tmp_path)
    (tmp_path / "..2026_01_01").mkdir()
    (tmp_path / "..2026_01_01" / "other").write_text("ignored")
    assert reloader.fingerprint(tmp_path) == before
    (tmp_path / "..data" / "x.yaml").write_text("two")
    assert reloader.fingerprint(tmp_path) != before
