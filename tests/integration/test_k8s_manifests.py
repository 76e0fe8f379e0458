"""The Kubernetes manifests: valid against the Kubernetes JSON schemas, and wired together.

Schemas come with ``kubernetes-validate`` (nothing is downloaded). The overlays are rendered
with ``kubectl kustomize`` (kustomize is built into kubectl) and every rendered object is
validated too.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from conftest import require

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "deploy/k8s/base"
OVERLAYS = {"staging": "fitml-staging", "production": "fitml"}
KUBERNETES_VERSION = "1.30"
SERVICES = ("fitml-prediction", "fitml-session")


def _documents(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def _base() -> list[dict[str, Any]]:
    files = yaml.safe_load((BASE / "kustomization.yaml").read_text())["resources"]
    return [doc for name in files for doc in _documents((BASE / name).read_text())]


def _render(overlay: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    require(kubectl is not None, "kubectl (with its built-in kustomize) is not installed")
    done = subprocess.run(
        [str(kubectl), "kustomize", str(ROOT / "deploy/k8s/overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return _documents(done.stdout)


def _validate(doc: dict[str, Any]) -> None:
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        pytest.fail(f"{name}: {exc.message} at {'.'.join(map(str, exc.path))}")


def _by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _pod_specs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    specs = {}
    for doc in docs:
        spec = doc.get("spec", {})
        if doc["kind"] == "CronJob":
            spec = spec["jobTemplate"]["spec"]
        if "template" in spec:
            specs[f"{doc['kind']}/{doc['metadata']['name']}"] = spec["template"]["spec"]
    return specs


def test_every_base_object_validates_against_the_kubernetes_schemas() -> None:
    docs = _base()
    assert {d["kind"] for d in docs} >= {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "CronJob",
        "Job",
        "ConfigMap",
        "PersistentVolumeClaim",
    }
    for doc in docs:
        _validate(doc)


def test_a_broken_manifest_is_caught() -> None:
    deployment = _by_kind(_base(), "Deployment")["fitml-prediction"]
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_overlays_render_and_validate(overlay: str) -> None:
    docs = _render(overlay)
    assert len(docs) == len(_base())
    for doc in docs:
        _validate(doc)
        assert doc["metadata"].get("namespace") == OVERLAYS[overlay], doc["metadata"]["name"]
        assert doc["metadata"]["labels"]["app.kubernetes.io/environment"] == overlay
    hpas = _by_kind(docs, "HorizontalPodAutoscaler")
    deployments = _by_kind(docs, "Deployment")
    for name in SERVICES:
        assert hpas[name]["spec"]["minReplicas"] == deployments[name]["spec"]["replicas"]
        assert hpas[name]["spec"]["maxReplicas"] > hpas[name]["spec"]["minReplicas"]


def test_services_probe_readyz_and_livez_and_declare_resources() -> None:
    docs = _base()
    deployments = _by_kind(docs, "Deployment")
    assert set(deployments) == set(SERVICES)
    for name, deployment in deployments.items():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        port = container["ports"][0]["name"]
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}
        assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": port}
        assert container["startupProbe"]["httpGet"]["path"] == "/readyz"
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind]), (name, kind)


def test_autoscalers_budgets_and_services_point_at_the_deployments() -> None:
    docs = _base()
    deployments = _by_kind(docs, "Deployment")
    for name, deployment in deployments.items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        hpa = _by_kind(docs, "HorizontalPodAutoscaler")[name]
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name,
        }
        pdb = _by_kind(docs, "PodDisruptionBudget")[name]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
        service = _by_kind(docs, "Service")[name]
        assert service["spec"]["selector"].items() <= labels.items()
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert service["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]


def test_jobs_run_the_cli_from_the_job_image() -> None:
    docs = _base()
    train = _by_kind(docs, "Job")["fitml-train"]["spec"]["template"]["spec"]
    assert train["containers"][0]["image"] == "fitml-job"
    assert train["containers"][0]["args"][:4] == ["pipeline", "run", "--profile", "prod"]
    cron = _by_kind(docs, "CronJob")["fitml-drift"]
    drift = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert drift["image"] == "fitml-job" and drift["args"][0] == "drift"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"


def test_images_users_config_and_secrets_match_the_dockerfile_and_profile() -> None:
    docs = _base()
    dockerfile = (ROOT / "Dockerfile").read_text()
    targets = set(re.findall(r"^FROM \S+ AS (\w+)", dockerfile, re.MULTILINE))
    uid = int(re.search(r"--uid (\d+)", dockerfile).group(1))  # type: ignore[union-attr]
    config = _by_kind(docs, "ConfigMap")["fitml-config"]["data"]
    profile = (ROOT / "ml_pipeline/profiles/prod.yaml").read_text()
    profile += (ROOT / "features/profiles/prod.yaml").read_text()
    needed = set(re.findall(r"\$\{(FITML_[A-Z_]+)", profile)) - {"FITML_WORKDIR", "FITML_REPO"}
    assert not [d for d in docs if d["kind"] == "Secret"], "secrets are referenced, not defined"
    for name, pod in _pod_specs(docs).items():
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == uid
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            assert container["image"].removeprefix("fitml-") in targets, name
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            env = {e["name"]: e for e in container.get("env", [])}
            for item in env.values():
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                assert ref is None or ref["name"] == "fitml-secrets", (name, item)
                assert "value" not in item or "://" not in item["value"], (name, item)
            provided = set(env) | set(config)
            missing = needed - provided - {"FITML_TRIALS"}
            if "train" not in name:  # only training tunes (FITML_OPTUNA_STORAGE)
                missing -= {"FITML_OPTUNA_STORAGE"}
            assert not missing, (name, missing)
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["work"]["persistentVolumeClaim"]["claimName"] == "fitml-work"


SECRET_FILES = {
    "FITML_PSEUDONYM_KEY_FILE": "pseudonym-key",
    "FITML_SERVICE_TOKEN_FILE": "service-token",
    "FITML_API_KEYS_FILE": "api-keys",
}
"""The secrets the prod profile's processes read (README "Security"): variable -> Secret key."""
NEEDS = {
    # both services: one pseudonym key for all replicas; prediction binds 0.0.0.0 (token)
    "Deployment/fitml-prediction": {"FITML_PSEUDONYM_KEY_FILE", "FITML_SERVICE_TOKEN_FILE"},
    "Deployment/fitml-session": set(SECRET_FILES),
    # the pipeline's and the CronJob's drift check join logged pseudonyms
    "Job/fitml-train": {"FITML_PSEUDONYM_KEY_FILE"},
    "CronJob/fitml-drift": {"FITML_PSEUDONYM_KEY_FILE"},
}


def _secret_file(pod: dict[str, Any], container: dict[str, Any], path: str) -> str | None:
    """The key of `fitml-secrets` mounted at ``path`` in ``container``, if any."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container.get("volumeMounts", []):
        prefix = mount["mountPath"].rstrip("/") + "/"
        secret = volumes[mount["name"]].get("secret")
        if not path.startswith(prefix) or secret is None:
            continue
        assert secret["secretName"] == "fitml-secrets" and mount.get("readOnly") is True
        for item in secret.get("items", []):
            if item["path"] == path.removeprefix(prefix):
                return str(item["key"])
    return None


@pytest.mark.parametrize("overlay", [None, *OVERLAYS])
def test_pseudonym_key_and_service_token_reach_every_process_that_needs_them(
    overlay: str | None,
) -> None:
    docs = _base() if overlay is None else _render(overlay)
    pods = _pod_specs(docs)
    assert set(pods) == set(NEEDS), set(pods)
    for name, pod in pods.items():
        (container,) = pod["containers"]
        env = {e["name"]: e for e in container.get("env", [])}
        for variable in NEEDS[name]:
            assert variable in env, (name, variable)
            assert "value" in env[variable], (name, variable)  # a file path, not the secret
            key = _secret_file(pod, container, env[variable]["value"])
            assert key == SECRET_FILES[variable], (name, variable, key)
        inline = {"FITML_PSEUDONYM_KEY", "FITML_SERVICE_TOKEN", "FITML_API_KEYS"} & set(env)
        assert not inline, (name, inline)
