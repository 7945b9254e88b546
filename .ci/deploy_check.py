"""Offline checks of deploy/ (run by .ci/deploy-check, which installs what this needs).

For each overlay (dev, prod): render it with `kubectl kustomize`, validate every object
against the Kubernetes JSON schemas (kubernetes-validate, strict: unknown fields fail), check
the defaults the issue asks for (non-root, read-only root, no capabilities, seccomp, no token
automount, requests and limits, probes, PDBs, HPAs, default-deny NetworkPolicies) and that
every reference resolves (Secrets, ConfigMaps and their keys, ServiceAccounts, selectors,
files the binary is told to read), and run the binary's `--check-config` with exactly the
arguments and environment each Partner Ledger container gets, so a flag or an environment
variable the binary does not know fails here rather than in a cluster.

Secret values are never printed.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from kubernetes_validate import utils as kv

ROOT = Path(__file__).resolve().parent.parent
OVERLAYS = ["dev", "prod"]
# Oldest and newest Kubernetes versions the manifests must be valid for (`preStop.sleep`
# needs 1.30+; gRPC probes 1.27+).
KUBERNETES_VERSIONS = ["1.32.0", "1.37.0"]
IMAGE = "partner-ledger"
# Environment variables that are not Partner Ledger settings but are read by a library linked
# into the binary. Anything else without the PL_ prefix must be spliced into a PL_ value.
LIBRARY_ENV = {
    "SSL_CERT_FILE": "trusted roots of the NATS client (rustls-native-certs)",
}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet"}


class Checks:
    def __init__(self) -> None:
        self.passed = 0
        self.failures: list[str] = []

    def check(self, ok: bool, what: str) -> bool:
        if ok:
            self.passed += 1
        else:
            self.failures.append(what)
            print(f"FAIL {what}")
        return ok


def render(kubectl: str, deploy: Path, overlay: str) -> list[dict]:
    out = subprocess.run(
        [kubectl, "kustomize", str(deploy / "overlays" / overlay)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def copy_with_secrets(tmp: Path) -> Path:
    """deploy/ in a scratch copy, with secrets.example/ standing in for absent secrets/."""
    deploy = tmp / "deploy"
    shutil.copytree(ROOT / "deploy", deploy)
    for overlay in OVERLAYS:
        secrets = deploy / "overlays" / overlay / "secrets"
        example = deploy / "overlays" / overlay / "secrets.example"
        if not secrets.exists() and example.exists():
            shutil.copytree(example, secrets)
            print(f"{overlay}: no secrets/, rendering with secrets.example/")
    return deploy


def index(docs: list[dict]) -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def secret_data(obj: dict) -> dict[str, str]:
    data = {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
    data.update(obj.get("stringData") or {})
    return data


def matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def pod_templates(docs: list[dict]):
    for d in docs:
        if d["kind"] in WORKLOADS:
            yield d, d["spec"]["template"]


def expand(value: str, env: dict[str, str], used: set[str]) -> str:
    """Kubernetes' $(VAR) expansion: defined names are replaced, $$ escapes, others stay."""

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        if name in env:
            used.add(name)
            return env[name]
        return m.group(0)

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", sub, value)


def container_env(c: dict, objs: dict, checks: Checks, where: str) -> tuple[dict, set[str]]:
    env: dict[str, str] = {}
    spliced: set[str] = set()
    for src in c.get("envFrom") or []:
        prefix = src.get("prefix", "")
        if "configMapRef" in src:
            cm = objs.get(("ConfigMap", src["configMapRef"]["name"]))
            if checks.check(cm is not None, f"{where}: envFrom ConfigMap {src['configMapRef']['name']} exists"):
                env.update({prefix + k: v for k, v in (cm.get("data") or {}).items()})
        if "secretRef" in src:
            s = objs.get(("Secret", src["secretRef"]["name"]))
            if checks.check(s is not None, f"{where}: envFrom Secret {src['secretRef']['name']} exists"):
                env.update({prefix + k: v for k, v in secret_data(s).items()})
    for e in c.get("env") or []:
        name = e["name"]
        if "value" in e:
            used: set[str] = set()
            value = expand(str(e["value"]), env, used)
            if "://" in str(e["value"]):
                for u in used:
                    # A value spliced into a URL must not need percent-encoding.
                    checks.check(
                        re.fullmatch(r"[A-Za-z0-9._~-]+", env[u]) is not None,
                        f"{where}: {u} (spliced into the URL in {name}) has only URL-safe characters",
                    )
            spliced |= used
            env[name] = value
            continue
        ref = e.get("valueFrom", {})
        if "secretKeyRef" in ref or "configMapKeyRef" in ref:
            kind, r = ("Secret", ref["secretKeyRef"]) if "secretKeyRef" in ref else ("ConfigMap", ref["configMapKeyRef"])
            obj = objs.get((kind, r["name"]))
            data = (secret_data(obj) if kind == "Secret" else obj.get("data") or {}) if obj else {}
            checks.check(r["key"] in data, f"{where}: env {name} from {kind} {r['name']} key {r['key']} exists")
            env[name] = data.get(r["key"], "")
        elif "fieldRef" in ref:
            env[name] = "field-" + ref["fieldRef"]["fieldPath"].replace(".", "-")
        else:
            env[name] = "1"
    return env, spliced


def provided_files(spec: dict, c: dict, objs: dict) -> dict[str, bool]:
    """Mount points and files the container sees: path -> writable."""
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    files: dict[str, bool] = {}
    for m in c.get("volumeMounts") or []:
        v = volumes.get(m["name"], {})
        base = m["mountPath"].rstrip("/")
        writable = not m.get("readOnly", False) and not ({"secret", "configMap", "projected"} & v.keys())
        files[base + "/"] = writable
        sources = []
        if "secret" in v:
            sources = [("Secret", v["secret"]["secretName"], v["secret"].get("items"))]
        elif "configMap" in v:
            sources = [("ConfigMap", v["configMap"]["name"], v["configMap"].get("items"))]
        elif "projected" in v:
            for s in v["projected"]["sources"]:
                if "secret" in s:
                    sources.append(("Secret", s["secret"]["name"], s["secret"].get("items")))
                if "configMap" in s:
                    sources.append(("ConfigMap", s["configMap"]["name"], s["configMap"].get("items")))
        for kind, name, items in sources:
            obj = objs.get((kind, name)) or {}
            keys = list((obj.get("data") or {}).keys())
            paths = [i["path"] for i in items] if items else keys
            for p in paths:
                files[f"{base}/{p}"] = False
    return files


def check_file(path: str, files: dict[str, bool], checks: Checks, what: str, writable: bool = False) -> None:
    if writable:
        ok = any(path.rstrip("/") + "/" == m or path.startswith(m) for m, w in files.items() if m.endswith("/") and w)
        checks.check(ok, f"{what}: {path} is on a writable volume (the root filesystem is read-only)")
    else:
        checks.check(path in files, f"{what}: {path} is a file mounted into the container")


def run_check_config(binary: str, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    full = {"PATH": "/usr/bin:/bin", **env}
    return subprocess.run(
        [binary, *args, "--check-config"], env=full, capture_output=True, text=True, timeout=30
    )


def check_partner_ledger(overlay: str, d: dict, spec: dict, c: dict, objs: dict, docs: list[dict], binary: str, checks: Checks) -> None:
    where = f"{overlay} {d['kind']}/{d['metadata']['name']}"
    checks.check("command" not in c, f"{where}: no `command` (the image's entrypoint is the binary)")
    args = [str(a) for a in c.get("args") or []]
    env, spliced = container_env(c, objs, Checks(), where)  # references: check_overlay
    for name in env:
        if name.startswith("PL_"):
            continue
        checks.check(
            name in LIBRARY_ENV or name in spliced,
            f"{where}: env {name} is a PL_ setting, a library's ({', '.join(LIBRARY_ENV)}) or spliced into one",
        )
    result = run_check_config(binary, args, env)
    ok = checks.check(result.returncode == 0, f"{where}: `partner-ledger {' '.join(args)} --check-config` accepts its flags and environment")
    if not ok:
        print("    " + result.stderr.strip().replace("\n", "\n    "))
    else:
        print(f"ok   {where}: partner-ledger {' '.join(args)} --check-config")
    # The check must catch what it is here for: an unknown variable fails.
    typo = run_check_config(binary, args, {**env, "PL_NATS_ULR": "nats://x:4222"})
    checks.check(typo.returncode != 0 and "PL_NATS_ULR" in typo.stderr, f"{where}: --check-config rejects an unknown PL_ variable")

    files = provided_files(spec, c, objs)
    mode = args[0] if args else ""
    store = env.get("PL_STORE", "embedded")
    if mode == "up" or store == "embedded":
        check_file(env.get("PL_DATA_DIR", "./data"), files, checks, f"{where} PL_DATA_DIR", writable=True)
    url = env.get("PL_EVENTSTORE_URL", "")
    for ca in re.findall(r"[?&]tlsCAFile=([^&]+)", url, flags=re.I):
        check_file(ca, files, checks, f"{where} PL_EVENTSTORE_URL tlsCAFile")
    if "SSL_CERT_FILE" in env:
        check_file(env["SSL_CERT_FILE"], files, checks, f"{where} SSL_CERT_FILE")
    if env.get("PL_NATS_URL", "").startswith("tls://") and env.get("PL_BUS", "nats") == "nats":
        checks.check("SSL_CERT_FILE" in env, f"{where}: a tls:// NATS URL comes with SSL_CERT_FILE (the CA)")

    port = env.get("PL_LISTEN", "127.0.0.1:50051").rsplit(":", 1)[-1]
    checks.check(not env.get("PL_LISTEN", "127.0.0.1").startswith("127."), f"{where}: PL_LISTEN is not loopback (probes and callers come from outside the pod)")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        p = c.get(probe) or {}
        checks.check(str((p.get("grpc") or {}).get("port")) == port, f"{where}: {probe} is a gRPC health probe on the listen port {port}")

    if mode == "serve":
        scaled = any(h["spec"]["scaleTargetRef"]["name"] == d["metadata"]["name"] for h in docs if h["kind"] == "HorizontalPodAutoscaler")
        checks.check(scaled, f"{where}: a HorizontalPodAutoscaler scales it")
        # With the embedded store a service's log would be local to its pod.
        checks.check(store == "eventstoredb", f"{where}: PL_STORE=eventstoredb (stateless, so it may scale)")
    if mode == "serve" and len(args) > 1 and args[1] == "attribution":
        checks.check("PL_ATTRIBUTION_HASH_SALT" in env, f"{where}: the attribution salt comes from a Secret")


def check_overlay(overlay: str, docs: list[dict], binary: str, checks: Checks) -> None:
    objs = index(docs)
    # 1. Schemas.
    for d in docs:
        for version in KUBERNETES_VERSIONS:
            what = f"{overlay} {d['kind']}/{d['metadata']['name']} validates against Kubernetes {version} (strict)"
            try:
                kv.validate(d, version, strict=True)
                checks.check(True, what)
            except kv.ValidationError as e:
                checks.check(False, f"{what}: {'.'.join(str(p) for p in e.path)}: {e.message}")
            except kv.SchemaNotFoundError as e:
                checks.check(False, f"{what}: {e.message}")

    # 2. Namespace: Pod Security Admission `restricted`.
    namespaces = [d for d in docs if d["kind"] == "Namespace"]
    checks.check(len(namespaces) == 1, f"{overlay}: one Namespace")
    for ns in namespaces:
        labels = ns["metadata"].get("labels") or {}
        checks.check(labels.get("pod-security.kubernetes.io/enforce") == "restricted", f"{overlay}: namespace enforces Pod Security `restricted`")
    for d in docs:
        if d["kind"] != "Namespace" and namespaces:
            checks.check(d["metadata"].get("namespace") == namespaces[0]["metadata"]["name"], f"{overlay} {d['kind']}/{d['metadata']['name']}: in the overlay's namespace")

    # 3. Service accounts: no token automount.
    for d in docs:
        if d["kind"] == "ServiceAccount":
            checks.check(d.get("automountServiceAccountToken") is False, f"{overlay} ServiceAccount/{d['metadata']['name']}: automountServiceAccountToken: false")

    # 4. Network policies: default deny, and every selector selects something.
    deny = [
        d for d in docs
        if d["kind"] == "NetworkPolicy" and d["spec"].get("podSelector") == {}
        and set(d["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
        and not d["spec"].get("ingress") and not d["spec"].get("egress")
    ]
    checks.check(len(deny) == 1, f"{overlay}: a default-deny NetworkPolicy (ingress and egress)")
    pod_labels = [t["metadata"].get("labels") or {} for _, t in pod_templates(docs)]
    for d in docs:
        if d["kind"] != "NetworkPolicy":
            continue
        sels = [d["spec"]["podSelector"].get("matchLabels")]
        for rule in (d["spec"].get("ingress") or []) + (d["spec"].get("egress") or []):
            for peer in (rule.get("from") or []) + (rule.get("to") or []):
                if "podSelector" in peer and "namespaceSelector" not in peer:
                    sels.append(peer["podSelector"].get("matchLabels"))
        for sel in sels:
            if sel is None or sel == {}:
                continue
            if sel.get("partner-ledger.io/client") == "true":
                continue  # callers are the operator's pods, labelled by them
            checks.check(any(matches(sel, l) for l in pod_labels), f"{overlay} NetworkPolicy/{d['metadata']['name']}: selector {sel} selects pods of the overlay")

    # 5. Services select pods; PDBs cover replicated workloads.
    for d in docs:
        if d["kind"] == "Service":
            checks.check(any(matches(d["spec"].get("selector"), l) for l in pod_labels) and d["spec"].get("selector"), f"{overlay} Service/{d['metadata']['name']}: selects pods")
        if d["kind"] == "PodDisruptionBudget":
            checks.check(any(matches(d["spec"]["selector"].get("matchLabels"), l) for l in pod_labels), f"{overlay} PodDisruptionBudget/{d['metadata']['name']}: selects pods")
        if d["kind"] == "HorizontalPodAutoscaler":
            t = d["spec"]["scaleTargetRef"]
            checks.check((t["kind"], t["name"]) in objs, f"{overlay} HorizontalPodAutoscaler/{d['metadata']['name']}: its target exists")

    # 6. Every pod template.
    for d, t in pod_templates(docs):
        where = f"{overlay} {d['kind']}/{d['metadata']['name']}"
        spec = t["spec"]
        labels = t["metadata"].get("labels") or {}
        checks.check(matches(d["spec"]["selector"]["matchLabels"], labels), f"{where}: selector matches its pod template")
        replicated = d["spec"].get("replicas", 1) > 1 or any(
            h["kind"] == "HorizontalPodAutoscaler" and h["spec"]["scaleTargetRef"]["name"] == d["metadata"]["name"] for h in docs
        )
        if replicated:
            checks.check(
                any(p["kind"] == "PodDisruptionBudget" and matches(p["spec"]["selector"].get("matchLabels"), labels) for p in docs),
                f"{where}: a PodDisruptionBudget covers it",
            )
        sa = spec.get("serviceAccountName")
        checks.check(sa is not None and ("ServiceAccount", sa) in objs, f"{where}: runs as its own ServiceAccount")
        checks.check(spec.get("automountServiceAccountToken") is False, f"{where}: automountServiceAccountToken: false")
        psc = spec.get("securityContext") or {}
        checks.check(psc.get("runAsNonRoot") is True, f"{where}: pod runAsNonRoot")
        checks.check((psc.get("seccompProfile") or {}).get("type") == "RuntimeDefault", f"{where}: pod seccomp RuntimeDefault")
        for v in spec.get("volumes") or []:
            refs = []
            if "secret" in v:
                refs.append(("Secret", v["secret"]["secretName"]))
            if "configMap" in v:
                refs.append(("ConfigMap", v["configMap"]["name"]))
            if "persistentVolumeClaim" in v:
                refs.append(("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"]))
            for s in (v.get("projected") or {}).get("sources", []):
                if "secret" in s:
                    refs.append(("Secret", s["secret"]["name"]))
                if "configMap" in s:
                    refs.append(("ConfigMap", s["configMap"]["name"]))
            for ref in refs:
                checks.check(ref in objs, f"{where}: volume {v['name']} refers to an existing {ref[0]} {ref[1]}")
        for c in (spec.get("initContainers") or []) + spec["containers"]:
            cw = f"{where} container {c['name']}"
            sc = c.get("securityContext") or {}
            checks.check(sc.get("allowPrivilegeEscalation") is False, f"{cw}: allowPrivilegeEscalation: false")
            checks.check(sc.get("readOnlyRootFilesystem") is True, f"{cw}: readOnlyRootFilesystem: true")
            checks.check("ALL" in ((sc.get("capabilities") or {}).get("drop") or []), f"{cw}: drops ALL capabilities")
            checks.check(sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, f"{cw}: runAsNonRoot")
            checks.check((sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type") == "RuntimeDefault", f"{cw}: seccomp RuntimeDefault")
            res = c.get("resources") or {}
            for kind in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    checks.check(r in (res.get(kind) or {}), f"{cw}: resources.{kind}.{r}")
            for probe in ("readinessProbe", "livenessProbe"):
                checks.check(probe in c, f"{cw}: has a {probe}")
            checks.check(":" in c["image"].split("/")[-1] or "@" in c["image"], f"{cw}: image {c['image']} has a tag")
            container_env(c, objs, checks, cw)  # every envFrom and valueFrom resolves
            if c["image"].split("@")[0].rsplit(":", 1)[0].split("/")[-1] == IMAGE:
                check_partner_ledger(overlay, d, spec, c, objs, docs, binary, checks)


def check_dockerfile(docs_by_overlay: dict[str, list[dict]], checks: Checks) -> None:
    """The image the manifests run: built with the EventStoreDB feature (prod's PL_STORE),
    running as the user the pods declare."""
    text = (ROOT / "Dockerfile").read_text()
    final = text[text.rfind("\nFROM "):]
    checks.check("--features eventstoredb" in text, "Dockerfile builds with --features eventstoredb")
    user = re.search(r"^USER (\d+)", final, flags=re.M)
    checks.check(user is not None, "Dockerfile's runtime stage sets a numeric non-root USER")
    for overlay, docs in docs_by_overlay.items():
        for d, t in pod_templates(docs):
            if any(c["image"].split("@")[0].rsplit(":", 1)[0].split("/")[-1] == IMAGE for c in t["spec"]["containers"]):
                uid = (t["spec"].get("securityContext") or {}).get("runAsUser")
                checks.check(user is not None and str(uid) == user.group(1), f"{overlay} {d['kind']}/{d['metadata']['name']}: runAsUser {uid} is the image's USER")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kubectl", required=True)
    ap.add_argument("--binary", required=True)
    args = ap.parse_args()
    checks = Checks()
    with tempfile.TemporaryDirectory() as tmp:
        deploy = copy_with_secrets(Path(tmp))
        rendered = {}
        for overlay in OVERLAYS:
            docs = render(args.kubectl, deploy, overlay)
            print(f"{overlay}: rendered {len(docs)} objects")
            check_overlay(overlay, docs, args.binary, checks)
            rendered[overlay] = docs
        check_dockerfile(rendered, checks)
    print(f"deploy-check: {checks.passed} passed, {len(checks.failures)} failed")
    return 1 if checks.failures else 0


if __name__ == "__main__":
    sys.exit(main())
