"""What a schema cannot see in deploy/k8s, checked on each overlay as kubectl renders it:
selectors that match their pods, references to Secrets and ConfigMaps (and their keys) that
exist or are documented, unique ports, a grace that covers the worst drain, the store's
replication, the restricted Pod Security level, and a NetworkPolicy for every port."""

from __future__ import annotations

import functools
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from dispatcher_gateway import app, httpserver

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("single", "ha")
KUBECTL = Path(sys.executable).parent / "kubectl"
STORE_CLOSE = 5.0
"""Seconds allowed for the store's close at the end of a drain (NATS flushes and closes)."""
WORKLOADS = ("Deployment", "StatefulSet")
Doc = dict[str, Any]


@functools.cache
def render(path: Path) -> tuple[Doc, ...]:
    out = subprocess.run(
        [str(KUBECTL), "kustomize", str(path)], check=True, capture_output=True, text=True
    ).stdout
    return tuple(d for d in yaml.safe_load_all(out) if d)


@pytest.fixture(params=OVERLAYS)
def docs(request: pytest.FixtureRequest) -> tuple[Doc, ...]:
    return render(K8S / "overlays" / request.param)


def of_kind(docs: tuple[Doc, ...], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def named(docs: tuple[Doc, ...], kind: str, name: str) -> Doc | None:
    return next((d for d in of_kind(docs, kind) if d["metadata"]["name"] == name), None)


def workloads(docs: tuple[Doc, ...]) -> list[Doc]:
    return [d for d in docs if d["kind"] in WORKLOADS]


def pod_labels(workload: Doc) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def gateway_settings(docs: tuple[Doc, ...]) -> dict[str, str]:
    deployment = named(docs, "Deployment", "dispatcher-gateway")
    assert deployment is not None
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    settings: dict[str, str] = {}
    for source in container.get("envFrom", []):
        cm = named(docs, "ConfigMap", source["configMapRef"]["name"])
        assert cm is not None
        settings.update(cm["data"])
    settings.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return settings


def documented_secrets() -> dict[str, set[str]]:
    """The secrets the README's "Deploy on Kubernetes" section creates, with their keys."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Deploy on Kubernetes", 1)[1].split("\n## ", 1)[0]
    secrets: dict[str, set[str]] = {}
    command = re.compile(r"kubectl (?:-n \S+ )?create secret (generic|tls) (\S+)((?:.*\\\n)*.*)")
    for kind, name, rest in command.findall(section):
        words = shlex.split(rest.replace("\\\n", " "))
        keys = {"tls.crt", "tls.key"} if kind == "tls" else set()
        for word in words:
            found = re.match(r"--from-(?:file|literal)=([^=]+)=", word)
            if found:
                keys.add(found[1])
        secrets[name] = keys
    return secrets


def secret_refs(pod: Doc) -> Iterator[tuple[str, str, str | None]]:
    """(kind, name, key) of every Secret and ConfigMap the pod needs; key None: the whole."""
    for container in pod["containers"]:
        for source in container.get("envFrom", []):
            for ref, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                if ref in source:
                    yield kind, source[ref]["name"], None
        for env in container.get("env", []):
            value_from = env.get("valueFrom", {})
            for ref, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
                if ref in value_from:
                    yield kind, value_from[ref]["name"], value_from[ref]["key"]
    for volume in pod.get("volumes", []):
        sources = [volume, *volume.get("projected", {}).get("sources", [])]
        for source in sources:
            for field, kind, name_field in (
                ("secret", "Secret", "secretName"),
                ("configMap", "ConfigMap", "name"),
            ):
                if field in source:
                    name = source[field].get(name_field) or source[field].get("name")
                    items = source[field].get("items")
                    if items is None:
                        yield kind, name, None
                    for item in items or []:
                        yield kind, name, item["key"]


def test_selectors_match_their_pods(docs: tuple[Doc, ...]) -> None:
    pods = [pod_labels(w) for w in workloads(docs)]
    for w in workloads(docs):
        assert selects(w["spec"]["selector"]["matchLabels"], pod_labels(w)), w["metadata"]
        for spread in w["spec"]["template"]["spec"].get("topologySpreadConstraints", []):
            assert selects(spread["labelSelector"]["matchLabels"], pod_labels(w))
    for d in of_kind(docs, "Service") + of_kind(docs, "PodDisruptionBudget"):
        selector = d["spec"]["selector"]
        selector = selector.get("matchLabels", selector)
        assert any(selects(selector, labels) for labels in pods), d["metadata"]["name"]
    for policy in of_kind(docs, "NetworkPolicy"):
        selector = policy["spec"]["podSelector"]["matchLabels"]
        assert any(selects(selector, labels) for labels in pods), policy["metadata"]["name"]
        for rule in policy["spec"].get("ingress", []) + policy["spec"].get("egress", []):
            for peer in rule.get("from", []) + rule.get("to", []):
                if "podSelector" in peer and "namespaceSelector" not in peer:
                    peer_selector = peer["podSelector"]["matchLabels"]
                    assert any(selects(peer_selector, labels) for labels in pods), peer
    for sts in of_kind(docs, "StatefulSet"):
        service = named(docs, "Service", sts["spec"]["serviceName"])
        assert service is not None
        assert service["spec"]["clusterIP"] == "None"


def test_every_secret_and_config_map_is_made_or_documented(docs: tuple[Doc, ...]) -> None:
    documented = documented_secrets()
    for w in workloads(docs):
        for kind, name, key in secret_refs(w["spec"]["template"]["spec"]):
            made = named(docs, kind, name)
            if made is not None:
                keys = set(made.get("data", {})) | set(made.get("stringData", {}))
            else:
                assert kind == "Secret", f"ConfigMap {name} is neither generated nor documented"
                assert name in documented, f"Secret {name} is neither generated nor documented"
                keys = documented[name]
            assert key is None or key in keys, f"{kind} {name} has no key {key!r}"
    for ingress in of_kind(docs, "Ingress"):
        for tls in ingress["spec"]["tls"]:
            by_cert_manager = "cert-manager.io/cluster-issuer" in ingress["metadata"]["annotations"]
            assert by_cert_manager or tls["secretName"] in documented


def test_every_file_setting_names_a_mounted_key(docs: tuple[Doc, ...]) -> None:
    deployment = named(docs, "Deployment", "dispatcher-gateway")
    assert deployment is not None
    pod = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    files: set[str] = set()
    for mount in pod["containers"][0]["volumeMounts"]:
        volume = volumes[mount["name"]]
        for source in [volume, *volume.get("projected", {}).get("sources", [])]:
            for field in ("secret", "configMap"):
                for item in source.get(field, {}).get("items", []):
                    files.add(f"{mount['mountPath']}/{item['path']}")
    for name, value in gateway_settings(docs).items():
        if name.endswith("_FILE"):
            assert value in files, f"{name}={value}: no mounted key there"


def test_every_setting_is_one_the_gateway_reads(docs: tuple[Doc, ...]) -> None:
    source = (ROOT / "server" / "dispatcher_gateway" / "config.py").read_text()
    for name in gateway_settings(docs):
        read_as = name.removesuffix("_FILE")
        assert f'"{name}"' in source or f'"{read_as}"' in source, f"{name} is read by nothing"


def test_ports_are_unique(docs: tuple[Doc, ...]) -> None:
    for w in workloads(docs):
        ports = [p for c in w["spec"]["template"]["spec"]["containers"] for p in c["ports"]]
        names = [p["name"] for p in ports]
        numbers = [p["containerPort"] for p in ports]
        assert len(set(names)) == len(names)
        assert len(set(numbers)) == len(numbers)
        assert all(len(n) <= 15 for n in names)
    for service in of_kind(docs, "Service"):
        ports = service["spec"]["ports"]
        assert len({p["name"] for p in ports}) == len(ports)
        assert len({p["port"] for p in ports}) == len(ports)
        pods = [w for w in workloads(docs) if selects(service["spec"]["selector"], pod_labels(w))]
        named_ports = {
            p["name"]
            for w in pods
            for c in w["spec"]["template"]["spec"]["containers"]
            for p in c["ports"]
        }
        for port in ports:
            assert port["targetPort"] in named_ports, (service["metadata"]["name"], port)


def test_grace_covers_pre_stop_and_the_worst_drain(docs: tuple[Doc, ...]) -> None:
    deployment = named(docs, "Deployment", "dispatcher-gateway")
    assert deployment is not None
    pod = deployment["spec"]["template"]["spec"]
    pre_stop = pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre_stop >= 5, "endpoints need a few seconds to leave every proxy"
    # The HTTP listeners stop together, after the gRPC drain; then the store closes.
    drain = app.DRAIN_GRACE + app.STATUS_FLUSH + httpserver.SHUTDOWN_GRACE + STORE_CLOSE
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + drain
    for sts in of_kind(docs, "StatefulSet"):
        nats = sts["spec"]["template"]["spec"]
        config = named(docs, "ConfigMap", nats["volumes"][0]["configMap"]["name"])
        assert config is not None
        lame_duck = re.search(r"lame_duck_duration: (\d+)s", config["data"]["nats.conf"])
        assert lame_duck is not None
        assert nats["terminationGracePeriodSeconds"] > int(lame_duck[1])


def test_restricted_pod_security(docs: tuple[Doc, ...]) -> None:
    for w in workloads(docs):
        pod = w["spec"]["template"]["spec"]
        context = pod["securityContext"]
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        assert context["runAsNonRoot"] is True
        assert context["runAsUser"] > 0
        assert context["runAsGroup"] > 0
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            c = container["securityContext"]
            assert c["allowPrivilegeEscalation"] is False
            assert c["capabilities"]["drop"] == ["ALL"]
            assert c["readOnlyRootFilesystem"] is True
            image = container["image"]
            assert ":" in image.rsplit("/", 1)[-1], f"{image}: no tag"
            assert not image.endswith(":latest"), image


def test_network_policies_cover_every_port(docs: tuple[Doc, ...]) -> None:
    policies = of_kind(docs, "NetworkPolicy")
    for w in workloads(docs):
        labels = pod_labels(w)
        mine = [p for p in policies if selects(p["spec"]["podSelector"]["matchLabels"], labels)]
        allowed = {
            port["port"]
            for p in mine
            if "Ingress" in p["spec"]["policyTypes"]
            for rule in p["spec"]["ingress"]
            for port in rule["ports"]
        }
        for container in w["spec"]["template"]["spec"]["containers"]:
            for port in container["ports"]:
                assert {port["name"], port["containerPort"]} & allowed, (labels, port)
        egress = [p for p in mine if "Egress" in p["spec"]["policyTypes"]]
        assert egress, f"{labels}: no egress policy"
        ports = {port["port"] for p in egress for r in p["spec"]["egress"] for port in r["ports"]}
        assert 53 in ports


def test_ingress_serves_only_the_webhook_over_tls(docs: tuple[Doc, ...]) -> None:
    (ingress,) = of_kind(docs, "Ingress")
    public = urlsplit(gateway_settings(docs)["GATEWAY_PUBLIC_URL"])
    assert public.scheme == "https"
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == public.hostname
    assert [tls["hosts"] for tls in ingress["spec"]["tls"]] == [[public.hostname]]
    (path,) = rule["http"]["paths"]
    assert path["path"] == "/webhooks/dispatcher/"
    assert path["pathType"] == "Prefix"
    assert path["backend"]["service"] == {"name": "dispatcher-gateway", "port": {"name": "webhook"}}
    for service in of_kind(docs, "Service"):
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP"


def test_prometheus_scrapes_the_admin_port(docs: tuple[Doc, ...]) -> None:
    deployment = named(docs, "Deployment", "dispatcher-gateway")
    assert deployment is not None
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    ports = {
        p["name"]: p["containerPort"]
        for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
    }
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == ports["admin"]
    monitor = render(K8S / "components" / "servicemonitor")[0]
    service = named(docs, "Service", "dispatcher-gateway")
    assert service is not None
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}


def test_single_keeps_sqlite_on_its_volume() -> None:
    docs = render(K8S / "overlays" / "single")
    deployment = named(docs, "Deployment", "dispatcher-gateway")
    assert deployment is not None
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    store = Path(gateway_settings(docs)["GATEWAY_STORE"])
    pod = deployment["spec"]["template"]["spec"]
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] in claims]
    assert store.parent == Path(mount["mountPath"])
    assert named(docs, "PersistentVolumeClaim", claims[mount["name"]]) is not None


def test_ha_runs_three_replicas_on_a_three_node_r3_cluster() -> None:
    docs = render(K8S / "overlays" / "ha")
    settings = gateway_settings(docs)
    assert settings["GATEWAY_NATS_REPLICAS"] == "3"
    deployment = named(docs, "Deployment", "dispatcher-gateway")
    assert deployment is not None
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert {s["topologyKey"] for s in spread} >= {"kubernetes.io/hostname"}
    (sts,) = of_kind(docs, "StatefulSet")
    assert sts["spec"]["replicas"] == 3
    name, service = sts["metadata"]["name"], sts["spec"]["serviceName"]
    client_port = next(
        p["containerPort"]
        for p in sts["spec"]["template"]["spec"]["containers"][0]["ports"]
        if p["name"] == "client"
    )
    expected = [f"{name}-{i}.{service}:{client_port}" for i in range(3)]
    store = [urlsplit(url).netloc for url in settings["GATEWAY_STORE"].split(",")]
    assert store == expected
    config = named(
        docs, "ConfigMap", sts["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"]
    )
    assert config is not None
    routes = re.findall(r"nats://(\S+):6222", config["data"]["nats.conf"])
    assert routes == [f"{name}-{i}.{service}" for i in range(3)]
    pdb = named(docs, "PodDisruptionBudget", name)
    assert pdb is not None
    assert pdb["spec"]["maxUnavailable"] == 1
    claim = sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
    mounts = sts["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert claim in {m["name"] for m in mounts}
