#!/usr/bin/env python3
"""Renders every Kubernetes overlay with `kubectl kustomize`, validates the built-in kinds against
the Kubernetes API schemas (kubernetes-validate, strict: unknown fields are errors), and checks the
LeaderWorkerSet and MPIJob objects (custom resources, which the schemas do not cover) for the
fields the project relies on. Exit 0 all good, 1 a problem (printed), 77 no kubectl (Debian's
kubernetes-client is too old for these overlays, and neither Debian nor PyPI ships a newer one).

Usage: validate_manifests.py SOURCE_DIR
"""
import os
import shutil
import subprocess
import sys

try:
    import kubernetes_validate
    import yaml
except ImportError:
    sys.exit(f"validate_manifests: {sys.executable} has no kubernetes-validate "
             "(tools/install-deps.sh puts it in .venv)")

K8S_VERSION = "1.29.0"
OVERLAYS = ["cpu-demo", "gpu-h100-2x8", "mpijob"]
problems = []


def check(cond, what):
    if not cond:
        problems.append(what)
    return cond


def render(root, overlay):
    out = subprocess.run(["kubectl", "kustomize", os.path.join(root, "deploy/k8s/overlays", overlay)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        problems.append(f"{overlay}: kubectl kustomize failed: {out.stderr.strip()}")
        return []
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def config_of(docs):
    cms = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"] == "moe-serve-config"]
    return cms[0]["data"] if cms else {}


def env_names(container):
    names = {e["name"] for e in container.get("env", [])}
    refs = {r["configMapRef"]["name"] for r in container.get("envFrom", []) if "configMapRef" in r}
    return names, refs


def check_pod_security(where, spec):
    sc = spec.get("securityContext", {})
    check(sc.get("runAsNonRoot") is True, f"{where}: pod securityContext.runAsNonRoot is not true")
    for c in spec.get("containers", []) + spec.get("initContainers", []):
        csc = c.get("securityContext", {})
        check(csc.get("allowPrivilegeEscalation") is False,
              f"{where}/{c['name']}: allowPrivilegeEscalation is not false")


def check_weights_read_only(where, spec):
    vols = {v["name"]: v for v in spec.get("volumes", [])}
    w = vols.get("weights", {}).get("persistentVolumeClaim", {})
    check(w.get("claimName") == "moe-weights" and w.get("readOnly") is True,
          f"{where}: weights must come from the moe-weights PVC, read-only")


TLS_DIR = "/etc/moe/cluster-tls"
TLS_FLAGS = (f"--cluster-cert={TLS_DIR}/tls.crt", f"--cluster-key={TLS_DIR}/tls.key",
             f"--cluster-ca={TLS_DIR}/ca.crt")


def check_cluster_tls_mounted(where, spec, container):
    """The pod mounts the moe-cluster-tls Secret (the cluster certificate) where the flags say."""
    vols = {v["name"]: v for v in spec.get("volumes", [])}
    secret = vols.get("cluster-tls", {}).get("secret", {})
    check(secret.get("secretName") == "moe-cluster-tls",
          f"{where}: no cluster-tls volume from the moe-cluster-tls Secret")
    mounts = {m["name"]: m for m in container.get("volumeMounts", [])}
    m = mounts.get("cluster-tls", {})
    check(m.get("mountPath") == TLS_DIR and m.get("readOnly") is True,
          f"{where}: the cluster certificate is not mounted read-only at {TLS_DIR}")


def check_coordinator(overlay, docs, cfg):
    deps = [d for d in by_kind(docs, "Deployment") if d["metadata"]["name"] == "moe-coordinator"]
    if not check(len(deps) == 1, f"{overlay}: no moe-coordinator Deployment"):
        return
    spec = deps[0]["spec"]["template"]["spec"]
    c = spec["containers"][0]
    args = " ".join(c.get("args", []))
    for flag in ("--world-size=$(WORLD_SIZE)", "--tp=$(TP_SIZE)", "--model=$(MODEL_DIR)",
                 "--listen=0.0.0.0:50051", "--cluster-listen=0.0.0.0:50052") + TLS_FLAGS:
        check(flag in args, f"{overlay}: coordinator args lack {flag}")
    check_cluster_tls_mounted(f"{overlay}/coordinator", spec, c)
    _, refs = env_names(c)
    check("moe-serve-config" in refs, f"{overlay}: coordinator does not read moe-serve-config")
    check(c.get("readinessProbe", {}).get("grpc", {}).get("port") == 50051,
          f"{overlay}: coordinator readiness probe is not gRPC health on 50051")
    check(c.get("livenessProbe", {}).get("grpc", {}).get("service") == "liveness",
          f"{overlay}: coordinator liveness probe must ask the 'liveness' health service")
    check_pod_security(f"{overlay}/coordinator", spec)
    check_weights_read_only(f"{overlay}/coordinator", spec)
    svcs = [d for d in by_kind(docs, "Service") if d["metadata"]["name"] == "moe-coordinator"]
    check(svcs and any(p["port"] == 50051 for p in svcs[0]["spec"]["ports"]),
          f"{overlay}: moe-coordinator Service does not expose 50051")
    check(svcs and not any(p["port"] == 50052 for p in svcs[0]["spec"]["ports"]),
          f"{overlay}: the public moe-coordinator Service must not expose the control plane")
    cluster = [d for d in by_kind(docs, "Service") if d["metadata"]["name"] == "moe-cluster"]
    check(cluster and [p["port"] for p in cluster[0]["spec"]["ports"]] == [50052],
          f"{overlay}: no moe-cluster Service with the control plane (50052) alone")
    check(cfg.get("COORDINATOR_ADDRESS") == "moe-cluster:50052",
          f"{overlay}: workers are not pointed at the control-plane Service")


def check_lws(overlay, docs, cfg):
    lws = by_kind(docs, "LeaderWorkerSet")
    if not check(len(lws) == 1, f"{overlay}: expected one LeaderWorkerSet"):
        return
    l = lws[0]
    check(l["apiVersion"] == "leaderworkerset.x-k8s.io/v1", f"{overlay}: LWS apiVersion")
    t = l["spec"]["leaderWorkerTemplate"]
    size = t["size"]
    world, per_pod = int(cfg["WORLD_SIZE"]), int(cfg["RANKS_PER_POD"])
    check(size * per_pod == world,
          f"{overlay}: LWS size {size} x RANKS_PER_POD {per_pod} != WORLD_SIZE {world}")
    check(world % int(cfg["TP_SIZE"]) == 0, f"{overlay}: TP_SIZE does not divide WORLD_SIZE")
    check(t.get("restartPolicy") == "RecreateGroupOnPodRestart",
          f"{overlay}: a failed worker must restart the whole group")
    check("leaderTemplate" not in t, f"{overlay}: rank 0 must run the same pod template")
    pod = t["workerTemplate"]
    labels = pod["metadata"]["labels"]
    check(labels.get("app.kubernetes.io/component") == "worker" and
          labels.get("app.kubernetes.io/name") == "moe-serve",
          f"{overlay}: worker pods lack the labels the Services and PDBs select")
    spec = pod["spec"]
    c = spec["containers"][0]
    check(c.get("command") == ["/bin/sh", "/opt/moe/pod-ranks.sh"],
          f"{overlay}: workers must start through pod-ranks.sh (rank from LWS_WORKER_INDEX)")
    names, refs = env_names(c)
    check("POD_IP" in names, f"{overlay}: workers need POD_IP for the collective address")
    check("moe-serve-config" in refs, f"{overlay}: workers do not read moe-serve-config")
    mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
    check("/dev/shm" in mounts, f"{overlay}: workers need a /dev/shm volume")
    check_cluster_tls_mounted(f"{overlay}/workers", spec, c)
    check_pod_security(f"{overlay}/workers", spec)
    check_weights_read_only(f"{overlay}/workers", spec)
    gpus = c["resources"].get("limits", {}).get("nvidia.com/gpu")
    if gpus is not None:
        check(int(gpus) == per_pod, f"{overlay}: {gpus} GPUs per pod but {per_pod} ranks per pod")
    headless = [d for d in by_kind(docs, "Service") if d["metadata"]["name"] == "moe-workers"]
    check(headless and headless[0]["spec"].get("clusterIP") == "None",
          f"{overlay}: no headless moe-workers Service")
    check(headless and all(headless[0]["spec"]["selector"].get(k) == v
                           for k, v in labels.items() if k.startswith("app.kubernetes.io/")),
          f"{overlay}: the headless Service does not select the worker pods")


def check_mpijob(overlay, docs, cfg):
    jobs = by_kind(docs, "MPIJob")
    if not check(len(jobs) == 1, f"{overlay}: expected one MPIJob"):
        return
    j = jobs[0]
    check(j["apiVersion"] == "kubeflow.org/v2beta1", f"{overlay}: MPIJob apiVersion")
    s = j["spec"]
    check(s.get("mpiImplementation") == "OpenMPI", f"{overlay}: MPIJob mpiImplementation")
    slots = s["slotsPerWorker"]
    workers = s["mpiReplicaSpecs"]["Worker"]["replicas"]
    check(s["mpiReplicaSpecs"]["Launcher"]["replicas"] == 1, f"{overlay}: one launcher")
    world = int(cfg["WORLD_SIZE"])
    check(slots * workers == world, f"{overlay}: {workers} workers x {slots} slots != WORLD_SIZE {world}")
    launcher = s["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]
    cmd = launcher.get("command", []) + launcher.get("args", [])
    check(cmd[:1] == ["mpirun"], f"{overlay}: the launcher must run mpirun")
    check("-np" in cmd and cmd[cmd.index("-np") + 1] == str(world),
          f"{overlay}: mpirun -np must equal WORLD_SIZE {world}")
    check("moe-worker" in cmd and "--coordinator=$(COORDINATOR_ADDRESS)" in cmd,
          f"{overlay}: mpirun must start moe-worker against the coordinator")
    for flag in TLS_FLAGS:
        check(flag in cmd, f"{overlay}: moe-worker under mpirun lacks {flag}")
    wspec = s["mpiReplicaSpecs"]["Worker"]["template"]["spec"]
    wc = wspec["containers"][0]
    gpus = wc["resources"].get("limits", {}).get("nvidia.com/gpu")
    check(gpus is None or int(gpus) == slots, f"{overlay}: GPUs per worker pod != slotsPerWorker")
    check_cluster_tls_mounted(f"{overlay}/mpijob-worker", wspec, wc)
    check_pod_security(f"{overlay}/mpijob-worker", wspec)
    check_weights_read_only(f"{overlay}/mpijob-worker", wspec)
    check(not by_kind(docs, "LeaderWorkerSet"), f"{overlay}: the LeaderWorkerSet must be removed")


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "."
    if shutil.which("kubectl") is None:
        print("SKIPPED: needs kubectl >= 1.21 on PATH (for kubectl kustomize)")
        sys.exit(77)
    for overlay in OVERLAYS:
        docs = render(root, overlay)
        if not docs:
            continue
        cfg = config_of(docs)
        builtin = 0
        for d in docs:
            if d["kind"] in ("LeaderWorkerSet", "MPIJob"):
                continue
            try:
                kubernetes_validate.validate(d, K8S_VERSION, strict=True)
                builtin += 1
            except kubernetes_validate.ValidationError as e:
                problems.append(f"{overlay}: {d['kind']}/{d['metadata']['name']}: {e.message} at "
                                f"{'/'.join(str(p) for p in e.path)}")
        check_coordinator(overlay, docs, cfg)
        if overlay == "mpijob":
            check_mpijob(overlay, docs, cfg)
        else:
            check_lws(overlay, docs, cfg)
        print(f"{overlay}: {len(docs)} objects rendered, {builtin} built-in objects valid against "
              f"Kubernetes {K8S_VERSION} (strict)")
    for p in problems:
        print("PROBLEM:", p)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
