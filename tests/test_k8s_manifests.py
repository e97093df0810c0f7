"""deploy/k8s: every manifest valid for Kubernetes 1.30, and the deployment's promises.

Validation uses kubernetes-validate's bundled JSON schemas (offline, strict: unknown
fields are errors). When `kubectl` is installed the kustomization is also rendered with
`kubectl kustomize` and the rendered set is validated and checked; Debian has no kubectl
package, so without it the rendered test is skipped and the checks run on the files.
"""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pg import in_ci

try:
    import kubernetes_validate
except ImportError:
    if in_ci():
        raise
    pytest.skip("kubernetes-validate is not installed (pip install kubernetes-validate==1.37.0)",
                allow_module_level=True)

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30.0"
KUBERNETES_VALIDATE_VERSION = "1.37.0"  # pin in pyproject's dev extra


def _kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def _resource_files() -> list[Path]:
    return [K8S / name for name in _kustomization()["resources"]]


def _documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def _file_resources() -> list[dict[str, Any]]:
    return [doc for path in _resource_files() for doc in _documents(path.read_text())]


def _render(tmp_path: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize` on a copy without any password file (the Secret is made by
    `kubectl create secret`, not by the kustomization: a preview renders anywhere)."""
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy, ignore=shutil.ignore_patterns("postgres.env"))
    result = subprocess.run(["kubectl", "kustomize", str(copy)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return _documents(result.stdout)


@pytest.fixture(params=["files", "rendered"])
def resources(request: pytest.FixtureRequest, tmp_path: Path) -> list[dict[str, Any]]:
    """The manifests as committed, and as `kubectl kustomize` renders them."""
    if request.param == "files":
        return _file_resources()
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not installed (Debian has no package): checked the files only")
    return _render(tmp_path)


def _validate(resource: dict[str, Any]) -> None:
    try:
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        path = ".".join(str(p) for p in error.path)
        pytest.fail(f"{resource['kind']}/{resource['metadata']['name']}: {path}: {error.message}")


def _by_kind(resources: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for r in resources if r["kind"] == kind]


def _one(resources: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [r for r in _by_kind(resources, kind) if r["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _pod_templates(resources: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for r in resources:
        if r["kind"] in ("Deployment", "StatefulSet", "Job"):
            yield r["metadata"]["name"], r["spec"]["template"]


def _containers(template: dict[str, Any]) -> list[dict[str, Any]]:
    spec = template["spec"]
    return spec.get("initContainers", []) + spec["containers"]


# ------------------------------------------------------------------ schema validation


def test_kubernetes_validate_is_the_pinned_offline_version() -> None:
    assert kubernetes_validate.__version__ == KUBERNETES_VALIDATE_VERSION
    # the schemas ship inside the package: nothing is downloaded
    assert "1.30.0" in kubernetes_validate.utils.all_versions()


@pytest.mark.parametrize("path", _resource_files(), ids=lambda p: p.name)
def test_each_file_is_valid(path: Path) -> None:
    documents = _documents(path.read_text())
    assert documents, f"{path.name} holds no resource"
    for resource in documents:
        _validate(resource)


def test_rendered_kustomization_is_valid(tmp_path: Path) -> None:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not installed (Debian has no package): validated each file only")
    rendered = _render(tmp_path)
    kinds = sorted(r["kind"] for r in rendered)
    assert kinds == sorted(["Namespace", "ConfigMap", "Service", "NetworkPolicy",
                            "StatefulSet", "Job", "Job", "Deployment"])
    for resource in rendered:
        _validate(resource)
        if resource["kind"] != "Namespace":
            assert resource["metadata"]["namespace"] == "dm-tune"


def test_kustomize_renders_a_preview_without_a_secret_file(tmp_path: Path) -> None:
    """No password file, not even an empty one: the render works and holds no Secret;
    a password file in the folder changes nothing of it (the Secret is made apart)."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not installed")
    bare = _render(tmp_path / "bare")
    assert not _by_kind(bare, "Secret")
    copy = tmp_path / "with-file" / "k8s"
    shutil.copytree(K8S, copy)
    password = secrets.token_hex(16)
    (copy / "secrets" / "postgres.env").write_text(f"password={password}\n")
    result = subprocess.run(["kubectl", "kustomize", str(copy)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert password not in result.stdout and _documents(result.stdout) == bare


# ------------------------------------------------------------------ promises


def test_no_service_selects_the_dashboard(resources: list[dict[str, Any]]) -> None:
    dashboard = _one(resources, "Deployment", "dm-tune-dashboard")
    labels = dashboard["spec"]["template"]["metadata"]["labels"]
    for service in _by_kind(resources, "Service"):
        selector = service["spec"].get("selector") or {}
        assert selector, f"Service/{service['metadata']['name']} without selector"
        assert not selector.items() <= labels.items(), (
            f"Service/{service['metadata']['name']} selects the dashboard pods")
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert not _by_kind(resources, "Ingress")
    spec = dashboard["spec"]["template"]["spec"]
    assert not spec.get("hostNetwork")
    (container,) = spec["containers"]
    args = container["args"]
    assert args[:1] == ["dashboard"] and args[args.index("--host") + 1] == "127.0.0.1"
    assert "--allow-remote" not in args
    assert all("hostPort" not in p for p in container.get("ports", []))


def test_postgres_is_internal_with_a_claim(resources: list[dict[str, Any]]) -> None:
    statefulset = _one(resources, "StatefulSet", "postgres")
    assert statefulset["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    service = _one(resources, "Service", "postgres")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"].items() <= (
        statefulset["spec"]["template"]["metadata"]["labels"].items())
    assert statefulset["spec"]["serviceName"] == "postgres"


def test_workers_are_an_indexed_job_with_one_gpu_each(resources: list[dict[str, Any]]) -> None:
    job = _one(resources, "Job", "dm-tune-workers")
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["parallelism"] == job["spec"]["completions"] >= 1
    (worker,) = job["spec"]["template"]["spec"]["containers"]
    assert str(worker["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert worker["args"][:2] == ["worker", "/studies/$(CAMPAIGN).toml"]
    assert worker["args"][worker["args"].index("--device") + 1] == "cuda:0"
    # the liveness probe reads the file the worker is told to touch
    env = {e["name"]: e.get("value") for e in worker["env"]}
    probe = worker["livenessProbe"]["exec"]["command"]
    assert env["DM_TUNE_HEARTBEAT_FILE"] in probe
    assert env["DM_TUNE_HEARTBEAT_FILE"] in worker["startupProbe"]["exec"]["command"]
    mounts = {m["mountPath"] for m in worker["volumeMounts"]}
    assert str(Path(env["DM_TUNE_HEARTBEAT_FILE"]).parent) in mounts


def test_worker_count_is_set_by_the_patch(tmp_path: Path) -> None:
    patch = _kustomization()["patches"][0]
    assert patch["target"]["name"] == "dm-tune-workers"
    values = {op["path"]: op["value"] for op in yaml.safe_load(patch["patch"])}
    assert values["/spec/parallelism"] == values["/spec/completions"]
    if shutil.which("kubectl") is None:
        return
    job = _one(_render(tmp_path), "Job", "dm-tune-workers")
    assert job["spec"]["parallelism"] == values["/spec/parallelism"]


def test_storage_url_is_composed_from_the_secret(resources: list[dict[str, Any]]) -> None:
    secret_names = {r["metadata"]["name"] for r in _by_kind(resources, "Secret")}
    dm_tune_containers = 0
    for name, template in _pod_templates(resources):
        for container in _containers(template):
            env = container.get("env", [])
            names = [e["name"] for e in env]
            ref = env[names.index("POSTGRES_PASSWORD")]["valueFrom"]["secretKeyRef"]
            assert ref["key"] == "password" and ref["name"].startswith("dm-tune-postgres")
            if secret_names:  # rendered: the reference follows the generated name
                assert ref["name"] in secret_names
            if name == "postgres":
                continue
            # defined after the variable it expands, and nothing but a reference to it
            assert names.index("POSTGRES_PASSWORD") < names.index("DM_TUNE_STORAGE")
            assert env[names.index("DM_TUNE_STORAGE")]["value"] == (
                "postgresql+psycopg://dmtune:$(POSTGRES_PASSWORD)@postgres:5432/dmtune")
            assert not any("postgresql" in a for a in container.get("args", []))
            dm_tune_containers += 1
    assert dm_tune_containers == 4  # create Job, worker init + worker, dashboard


_CREDENTIAL_URL = re.compile(r"://[^/\s:@]+:(?P<pw>[^@\s]+)@")
_PASSWORD_VALUE = re.compile(r"(?i)passw(?:or)?d\s*[=:]\s*['\"]?(?P<value>[^\s'\"#\\]+)")
_ALLOWED_VALUES = {"%s", "<secret>", "$(POSTGRES_PASSWORD)"}


def test_no_password_literal_in_any_file() -> None:
    committed = [p for p in K8S.rglob("*") if p.is_file() and "secrets" not in p.parts]
    assert len(committed) >= 8
    for path in committed:
        text = path.read_text()
        for match in _CREDENTIAL_URL.finditer(text):
            assert match["pw"] == "$(POSTGRES_PASSWORD)", f"{path.name}: {match.group(0)}"
        for match in _PASSWORD_VALUE.finditer(text):
            assert match["value"] in _ALLOWED_VALUES, f"{path.name}: {match.group(0)}"
    resources = _file_resources()
    assert not _by_kind(resources, "Secret"), "a Secret is committed; use the secretGenerator"
    for name, template in _pod_templates(resources):
        for container in _containers(template):
            for e in container.get("env", []):
                assert "PASSWORD" not in e["name"] or "value" not in e, (
                    f"{name}: {e['name']} has a literal value")


def test_password_file_is_git_ignored() -> None:
    result = subprocess.run(
        ["git", "check-ignore", "-q", "deploy/k8s/secrets/postgres.env"], cwd=REPO
    )
    assert result.returncode == 0, "deploy/k8s/secrets/postgres.env is not git-ignored"


# ------------------------------------------------------------------ Pod Security "restricted"


def _pods(resources: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    pods = list(_pod_templates(resources))
    assert {name for name, _ in pods} == {"postgres", "dm-tune-create", "dm-tune-workers",
                                           "dm-tune-dashboard"}
    return pods


def test_every_pod_and_container_meets_pod_security_restricted(
    resources: list[dict[str, Any]]
) -> None:
    """The "restricted" profile's fields (kubernetes.io/docs/concepts/security/
    pod-security-standards), PostgreSQL included, and no service-account token."""
    for name, template in _pods(resources):
        spec = template["spec"]
        pod = spec.get("securityContext", {})
        assert spec.get("automountServiceAccountToken") is False, name
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(key), f"{name}: {key}"
        assert all("hostPath" not in v for v in spec.get("volumes", [])), name
        for container in _containers(template):
            where = f"{name}/{container['name']}"
            own = container.get("securityContext", {})
            assert own.get("allowPrivilegeEscalation") is False, where
            assert not own.get("privileged"), where
            capabilities = own.get("capabilities", {})
            assert capabilities.get("drop") == ["ALL"], where
            assert set(capabilities.get("add", [])) <= {"NET_BIND_SERVICE"}, where
            assert own.get("runAsNonRoot", pod.get("runAsNonRoot")) is True, where
            assert own.get("runAsUser", pod.get("runAsUser", 0)) != 0, where
            seccomp = own.get("seccompProfile", pod.get("seccompProfile", {}))
            assert seccomp.get("type") in ("RuntimeDefault", "Localhost"), where
            assert all("hostPort" not in p for p in container.get("ports", [])), where


def test_images_are_pinned_to_a_version(resources: list[dict[str, Any]]) -> None:
    """No `latest` and no floating major (postgres:16): major.minor at least; dm-tune's
    image is the package's version."""
    from dm_tune import __version__

    for name, template in _pods(resources):
        for container in _containers(template):
            image = container["image"]
            repository, _, tag = image.rpartition(":")
            assert repository and "/" not in tag, f"{name}: {image} has no tag"
            assert re.fullmatch(r"\d+\.\d+(\.\d+)?(-[\w.]+)?", tag), f"{name}: {image}"
            if repository.endswith("dm-tune"):
                assert tag == __version__, f"{name}: {image} is not dm-tune {__version__}"


def test_jobs_end_with_a_ttl_and_workers_retry_per_index(resources: list[dict[str, Any]]) -> None:
    for job in _by_kind(resources, "Job"):
        assert job["spec"]["ttlSecondsAfterFinished"] > 0, job["metadata"]["name"]
    workers = _one(resources, "Job", "dm-tune-workers")["spec"]
    # Kubernetes accepts backoffLimitPerIndex only for an Indexed Job of restartPolicy Never
    assert workers["backoffLimitPerIndex"] >= 1 and workers["completionMode"] == "Indexed"
    assert workers["template"]["spec"]["restartPolicy"] == "Never"
    assert "backoffLimit" not in workers  # per index instead of one budget for all


def test_the_studies_are_created_once(resources: list[dict[str, Any]]) -> None:
    """Only the create Job runs `dm-tune create`; a worker pod waits, read-only."""
    creators = [(name, c["name"]) for name, template in _pods(resources)
                for c in _containers(template) if (c.get("args") or [""])[0] == "create"]
    assert creators == [("dm-tune-create", "create")]
    workers = _one(resources, "Job", "dm-tune-workers")["spec"]["template"]["spec"]
    (wait,) = workers["initContainers"]
    script = " ".join(wait.get("command", []) + wait.get("args", []))
    assert "dm-tune status" in script and "dm-tune create" not in script
    # `$$` keeps Kubernetes from expanding the shell's $(( )) and $VAR as its own
    assert "$$CAMPAIGN" in script and "$((" not in script.replace("$$((", "")
