"""deploy/k8s: every manifest is valid against the schemas of a pinned Kubernetes version, strictly
(an unknown or misspelt field fails, as `kubectl apply --validate=strict` would). The schemas ship in
the kubernetes-validate wheel: nothing is fetched at test time.

kustomization.yaml is kustomize's own file, read by kubectl on the client, not a Kubernetes resource:
there is no schema for it, so it is checked here by what it must do instead (list every manifest of
the directory, and only those)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

K8S = Path(__file__).parent
# The Kubernetes version the manifests are written for; raise it with the clusters we deploy to.
KUBERNETES_VERSION = "1.33.0"
KUSTOMIZATION = K8S / "kustomization.yaml"


def resources() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc)
        for path in sorted(K8S.glob("*.yaml"))
        if path != KUSTOMIZATION
        for doc in yaml.safe_load_all(path.read_text())
        if doc is not None
    ]


@pytest.mark.parametrize("resource", [doc for _, doc in resources()], ids=[name for name, _ in resources()])
def test_manifest_is_valid_for_the_pinned_kubernetes_version(resource: dict[str, Any]) -> None:
    kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


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
