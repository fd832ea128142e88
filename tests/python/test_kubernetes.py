"""deploy/kubernetes: every manifest valid against the Kubernetes schemas
(kubernetes-validate, strict: no unknown fields), and consistent with
itself and with the daemon, which hands out absolute paths. No cluster runs
here: deploy/README.md says what that leaves unchecked."""
import os
import subprocess
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import ray
import yaml

from conftest import BUILD

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]  # the oldest still supported, the newest known


def documents():
    out = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        out += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return out


def one(kind):
    found = [doc for _, doc in documents() if doc["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind}s"
    return found[0]


def ray_pod_templates():
    cluster = one("RayCluster")["spec"]
    return [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]


def config():
    return tomllib.loads(one("ConfigMap")["data"]["zerocopyd.toml"])


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_is_valid_kubernetes(version):
    kinds = set()
    for name, doc in documents():
        kinds.add(doc["kind"])
        if doc["apiVersion"].startswith("ray.io/"):
            # A custom resource (KubeRay's CRD is not among the schemas):
            # its pod templates are checked as what they are.
            continue
        kubernetes_validate.validate(doc, version, strict=True)
    for template in ray_pod_templates():
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
                                      "template": template}, version, strict=True)
    assert {"Namespace", "ConfigMap", "DaemonSet", "RayCluster"} <= kinds


def test_a_mistake_is_caught():
    # The validator is not a rubber stamp: a misspelt field fails.
    daemonset = one("DaemonSet")
    daemonset["spec"]["template"]["spec"]["containers"][0]["volumeMount"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(daemonset, VERSIONS[-1], strict=True)


def test_the_config_is_one_zerocopyd_accepts(tmp_path):
    path = tmp_path / "zerocopyd.toml"
    path.write_text(one("ConfigMap")["data"]["zerocopyd.toml"])
    r = subprocess.run([str(BUILD / "daemon" / "zerocopyd"), "--config", str(path), "--print-config"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    printed = tomllib.loads(r.stdout)
    assert printed["socket"] == config()["socket"] and printed["segment_dir"] == config()["segment_dir"]


def mounts(template):
    """{mount path: host path} of a pod template's hostPath volumes."""
    spec = template["spec"]
    host = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    return {m["mountPath"]: host[m["name"]] for c in spec["containers"] for m in c.get("volumeMounts", [])
            if m["name"] in host}


def test_every_pod_sees_the_daemon_at_the_daemons_paths():
    cfg = config()
    socket_dir, segments = os.path.dirname(cfg["socket"]), cfg["segment_dir"]
    daemon = one("DaemonSet")["spec"]["template"]
    gid = int(cfg["socket_group"])
    assert int(cfg["segment_group"]) == gid
    # The daemon's own pod: both directories, from the host, at the same path.
    assert mounts(daemon) == {socket_dir: socket_dir, segments: segments}
    ctx = daemon["spec"]["containers"][0]["securityContext"]
    assert ctx["runAsGroup"] == gid and ctx["runAsNonRoot"] and ctx["runAsUser"] != 0
    # The init container makes them the daemon's, 0750 and 0710.
    init = " ".join(daemon["spec"]["initContainers"][0]["args"])
    assert f"-o {ctx['runAsUser']} -g {gid} -m 0750 {socket_dir}" in init
    assert f"-o {ctx['runAsUser']} -g {gid} -m 0710 {segments}" in init
    for probe in ("readinessProbe", "livenessProbe"):
        command = daemon["spec"]["containers"][0][probe]["exec"]["command"]
        assert command[-1] == "health" and cfg["socket"] in command
    # Every Ray pod: the same mounts, the group, the socket in its env.
    for template in ray_pod_templates():
        assert mounts(template) == {socket_dir: socket_dir, segments: segments}
        assert gid in template["spec"]["securityContext"]["supplementalGroups"]
        for container in template["spec"]["containers"]:
            env = {e["name"]: e["value"] for e in container["env"]}
            assert env["ZEROCOPY_SOCKET"] == cfg["socket"]


def test_the_ray_version_is_the_one_we_test_with():
    assert one("RayCluster")["spec"]["rayVersion"] == ray.__version__
    for template in ray_pod_templates():
        assert all(c["image"].endswith(":" + ray.__version__) for c in template["spec"]["containers"])


def test_the_daemons_memory_limit_holds_its_budget():
    # tmpfs pages are charged to the cgroup that writes them; a preload run
    # in the daemon's pod writes the whole model there.
    budget = config()["host_budget"]
    assert budget.endswith("G")
    limit = one("DaemonSet")["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
    assert limit.endswith("Gi") and int(limit[:-2]) > int(budget[:-1])


def test_metrics_are_served_where_the_pod_says():
    # The pod network, not loopback (the pod is not on the host's network):
    # the port the daemon binds is the one the container and the scrape
    # annotations name.
    daemon = one("DaemonSet")["spec"]["template"]
    assert not daemon["spec"].get("hostNetwork", False)
    host, port = config()["metrics_address"].rsplit(":", 1)
    assert host == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in daemon["spec"]["containers"][0]["ports"]}
    assert ports == {"metrics": int(port)}
    annotations = daemon["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == port
    assert annotations["prometheus.io/path"] == "/metrics"
