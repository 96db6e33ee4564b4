"""deploy/k8s: every manifest is valid against the schemas of a pinned Kubernetes version, strictly
(an unknown or misspelt field fails, as `kubectl apply --validate=strict` would). The schemas ship in
the kubernetes-validate wheel: nothing is fetched at test time.

kustomization.yaml is kustomize's own file, read by kubectl on the client, not a Kubernetes resource:
there is no schema for it, so it is checked here by what it must do instead (list every manifest of
the directory, and only those).

deploy/k8s-cluster is a kustomize overlay of deploy/k8s (the same deployment on a Redis Cluster): its
own manifests are checked the same way, and its patches are applied here to the base's resources
(env entries merged by name, as kustomize's strategic merge does) and the results validated."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

K8S = Path(__file__).parent
K8S_CLUSTER = K8S.parent / "k8s-cluster"
# The Kubernetes version the manifests are written for; raise it with the clusters we deploy to.
KUBERNETES_VERSION = "1.33.0"
KUSTOMIZATION = K8S / "kustomization.yaml"
SCHEMAS = K8S.parent / "schemas"
# Custom resources (apiVersion, kind) -> their CRD's openAPIV3Schema, vendored (schemas/README.md).
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda-scaledobject.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor.json",
}


def resources(directory: Path = K8S) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{path.parent.name}/{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc)
        for path in sorted(directory.glob("*.yaml"))
        if path.name != KUSTOMIZATION.name
        for doc in yaml.safe_load_all(path.read_text())
        if doc is not None
    ]


def all_resources() -> list[tuple[str, dict[str, Any]]]:
    return [*resources(K8S), *resources(K8S_CLUSTER), *patched_by_the_cluster_overlay()]


def cluster_overlay() -> dict[str, Any]:
    return yaml.safe_load((K8S_CLUSTER / KUSTOMIZATION.name).read_text())


def _patches() -> list[dict[str, Any]]:
    return [yaml.safe_load(entry["patch"]) for entry in cluster_overlay()["patches"]]


def patched_by_the_cluster_overlay() -> list[tuple[str, dict[str, Any]]]:
    """The base's Deployments with the overlay's patches applied (containers merged by name, their
    env entries by name: a new entry appended, an existing one replaced in place)."""
    base = {(doc["kind"], doc["metadata"]["name"]): doc for _, doc in resources(K8S)}
    patched = []
    for patch in _patches():
        if patch.get("$patch") == "delete":
            continue
        doc = copy.deepcopy(base[(patch["kind"], patch["metadata"]["name"])])
        containers = {c["name"]: c for c in doc["spec"]["template"]["spec"]["containers"]}
        for change in patch["spec"]["template"]["spec"]["containers"]:
            env = containers[change["name"]].setdefault("env", [])
            for entry in change.get("env", []):
                names = [e["name"] for e in env]
                if entry["name"] in names:
                    env[names.index(entry["name"])] = entry
                else:
                    env.append(entry)
        patched.append((f"k8s-cluster patched:{doc['kind']}/{doc['metadata']['name']}", doc))
    return patched


def strict(schema: Any) -> Any:
    """A CRD's openAPIV3Schema as the API server checks it with strict field validation: an object
    with ``properties`` accepts no other field (unless it preserves unknown fields or maps names
    to values with ``additionalProperties``)."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    checked = {key: strict(value) for key, value in schema.items()}
    if (
        "properties" in checked
        and "additionalProperties" not in checked
        and not checked.get("x-kubernetes-preserve-unknown-fields")
    ):
        checked["additionalProperties"] = False
    return checked


def validate(resource: dict[str, Any]) -> None:
    """Built-in kinds against the pinned Kubernetes version; custom resources against their CRD's
    vendored schema (deploy/schemas/README.md)."""
    schema = CRD_SCHEMAS.get((resource["apiVersion"], resource["kind"]))
    if schema is None:
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
        return
    crd = strict(json.loads((SCHEMAS / schema).read_text()))
    jsonschema.Draft7Validator(crd).validate(resource)


@pytest.mark.parametrize(
    "resource", [doc for _, doc in all_resources()], ids=[name for name, _ in all_resources()]
)
def test_manifest_is_valid_for_the_pinned_kubernetes_version(resource: dict[str, Any]) -> None:
    validate(resource)


@pytest.mark.parametrize("kind", ["ScaledObject", "ServiceMonitor"])
def test_a_custom_resource_is_validated_against_its_crd(kind: str) -> None:
    """The custom resources are there, and the check can fail: a misspelt field is refused."""
    resource = next(doc for _, doc in resources() if doc["kind"] == kind)
    validate(resource)
    resource["spec"]["minReplicaCountt" if kind == "ScaledObject" else "endpointz"] = 1
    with pytest.raises(jsonschema.ValidationError, match="minReplicaCountt|endpointz"):
        validate(resource)


def test_the_workers_scale_on_queue_work_not_on_cpu() -> None:
    kinds = {doc["kind"] for _, doc in resources() if doc["metadata"]["name"] == "graflow-worker"}
    assert "HorizontalPodAutoscaler" not in kinds
    [scaled] = [doc for _, doc in resources() if doc["kind"] == "ScaledObject"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == "graflow-worker"
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert "graflow_queue_lag" in trigger["metadata"]["query"]


def test_an_unknown_field_fails_validation() -> None:
    """The check above can fail: a misspelt field in a real manifest is refused."""
    deployment = next(doc for _, doc in resources() if doc["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Never"
    with pytest.raises(kubernetes_validate.ValidationError, match="imagePullPolicyy"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest_and_only_existing_ones() -> None:
    listed = yaml.safe_load(KUSTOMIZATION.read_text())["resources"]
    on_disk = sorted(path.name for path in K8S.glob("*.yaml") if path != KUSTOMIZATION)
    assert sorted(listed) == on_disk


def test_the_cluster_overlay_lists_the_base_and_every_manifest_of_its_directory() -> None:
    listed = cluster_overlay()["resources"]
    on_disk = sorted(path.name for path in K8S_CLUSTER.glob("*.yaml") if path.name != KUSTOMIZATION.name)
    assert listed == ["../k8s", *on_disk]


def test_the_cluster_overlay_replaces_the_single_redis_and_points_every_service_at_the_cluster() -> None:
    base = {(doc["kind"], doc["metadata"]["name"]) for _, doc in resources(K8S)}
    deleted = {(p["kind"], p["metadata"]["name"]) for p in _patches() if p.get("$patch") == "delete"}
    assert deleted == {("StatefulSet", "graflow-redis"), ("Service", "graflow-redis")}
    assert deleted <= base
    deployments = {name: doc for name, doc in patched_by_the_cluster_overlay()}
    # Every Deployment that uses Redis (the console has none: it reaches only the services).
    services = [
        doc["metadata"]["name"] for _, doc in resources(K8S) if doc["kind"] == "Deployment"
        and any(e["name"].endswith("_REDIS_URL")
                for c in doc["spec"]["template"]["spec"]["containers"] for e in c.get("env", []))
    ]
    assert sorted(name.rsplit("/", 1)[1] for name in deployments) == sorted(services)
    for doc in deployments.values():
        env = [e for c in doc["spec"]["template"]["spec"]["containers"] for e in c["env"]]
        values = {e["name"]: e.get("value") for e in env}
        prefix = next(n for n in values if n.endswith("_REDIS_URL")).removesuffix("REDIS_URL")
        assert "@graflow-redis-cluster:6379/0" in values[f"{prefix}REDIS_URL"]
        assert values[f"{prefix}REDIS_CLUSTER"] == "true"
        assert values[f"{prefix}REDIS_CELLS"] == "12"
        # $(GRAFLOW_REDIS_PASSWORD) expands only a variable defined before it.
        order = [e["name"] for e in env]
        assert order.index("GRAFLOW_REDIS_PASSWORD") < order.index(f"{prefix}REDIS_URL")
