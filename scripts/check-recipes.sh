#!/bin/sh
# CI gate for packaging/recipes (issue 11), offline, in seconds once the venv
# exists:
#  - the Kubernetes manifests against the Kubernetes schemas, strict
#    (unknown fields rejected): PyPI kubernetes-validate, in a cached venv;
#  - the KEDA ScaledObject against the openAPIV3Schema of KEDA's CRD
#    (vendored, packaging/recipes/schemas/), strict as kubectl's
#    --validate=strict: python jsonschema;
#  - docker-compose.yml against the Compose specification's JSON schema
#    (vendored; Docker is not needed) plus a structural check (services,
#    depends_on, named volumes, the sandbox's settings, no privileged mode,
#    no Docker socket);
#  - the sizing numbers agree between KEDA, the HPA and the exporter;
#  - each validator rejects a deliberately broken copy (so a check that
#    cannot fail would be noticed).
# Env: PEAGEN_RECIPES_VENV (default $HOME/.cache/peagen/recipes-venv).
set -eu
cd "$(dirname "$0")/.."
KV_VERSION=1.37.0
K8S_VERSION=1.30.0
R=packaging/recipes
VENV=${PEAGEN_RECIPES_VENV:-${HOME:-/root}/.cache/peagen/recipes-venv}
say() { echo "check-recipes: $*"; }

if ! "$VENV/bin/kubernetes-validate" --version 2>/dev/null | grep -q "$KV_VERSION"; then
    say "installing kubernetes-validate==$KV_VERSION into $VENV (once)"
    rm -rf "$VENV"
    mkdir -p "$(dirname "$VENV")"
    python3 -m venv "$VENV" || {
        say "python3 -m venv failed: install python3-venv (scripts/install-deps.sh)" >&2
        exit 1
    }
    "$VENV/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$KV_VERSION"
fi

tmp=$(mktemp -d "${TMPDIR:-/var/tmp}/peagen-recipes.XXXXXX")
trap 'rm -rf "$tmp"' EXIT INT TERM

# Core resources (the KEDA file is validated against its CRD below).
core="$R/kubernetes/worker-deployment.yaml $R/kubernetes/hpa-external-metric.yaml $R/kubernetes/metrics-exporter.yaml"
# shellcheck disable=SC2086
"$VENV/bin/kubernetes-validate" --quiet --strict -k "$K8S_VERSION" $core
# A misspelt field must fail (the validator is not vacuous).
sed 's/^\( *\)terminationGracePeriodSeconds:/\1terminationGracePeriodSecond:/' \
    "$R/kubernetes/worker-deployment.yaml" > "$tmp/broken.yaml"
if "$VENV/bin/kubernetes-validate" --quiet --strict -k "$K8S_VERSION" "$tmp/broken.yaml" >/dev/null 2>&1; then
    say "kubernetes-validate accepted a misspelt field: the check is broken" >&2
    exit 1
fi

"$VENV/bin/python" - "$R" <<'PY'
import copy, json, sys
import yaml
from jsonschema import Draft7Validator

R = sys.argv[1]
fail = []

def strict(s):
    """Unknown fields are errors (kubectl --validate=strict), except where
    the CRD keeps them (x-kubernetes-preserve-unknown-fields)."""
    if isinstance(s, dict):
        s = {k: strict(v) for k, v in s.items()}
        if ("properties" in s and "additionalProperties" not in s
                and not s.get("x-kubernetes-preserve-unknown-fields")):
            s["additionalProperties"] = False
        return s
    if isinstance(s, list):
        return [strict(x) for x in s]
    return s

def errors(validator, doc):
    return [f"{'/'.join(map(str, e.absolute_path)) or '.'}: {e.message}"
            for e in validator.iter_errors(doc)]

# KEDA ScaledObject against the vendored CRD.
crd = next(d for d in yaml.safe_load_all(open(f"{R}/schemas/keda.sh_scaledobjects.yaml")) if d)
so = yaml.safe_load(open(f"{R}/kubernetes/keda-scaledobject.yaml"))
group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
api, ver = so["apiVersion"].split("/")
if (api, so["kind"]) != (group, kind):
    fail.append(f"keda-scaledobject.yaml: {so['apiVersion']} {so['kind']} is not {group} {kind}")
vers = {v["name"]: v for v in crd["spec"]["versions"]}
if ver not in vers or not vers[ver].get("served"):
    fail.append(f"keda-scaledobject.yaml: KEDA does not serve {so['apiVersion']}")
else:
    keda = Draft7Validator(strict(vers[ver]["schema"]["openAPIV3Schema"]))
    fail += [f"keda-scaledobject.yaml: {e}" for e in errors(keda, so)]
    bad = copy.deepcopy(so)
    bad["spec"]["minReplicaCount"] = "two"
    bad["spec"]["triggers"][0]["metadat"] = bad["spec"]["triggers"][0].pop("metadata")
    if len(errors(keda, bad)) < 2:
        fail.append("the KEDA schema accepted a broken ScaledObject: the check is broken")

# The sizing agrees across KEDA, the HPA and the worker Deployment.
hpa = yaml.safe_load(open(f"{R}/kubernetes/hpa-external-metric.yaml"))
dep = yaml.safe_load(open(f"{R}/kubernetes/worker-deployment.yaml"))
trig = so["spec"]["triggers"][0]
hm = hpa["spec"]["metrics"][0]["external"]
for what, a, b in [
    ("min replicas (warm pool)", so["spec"]["minReplicaCount"], hpa["spec"]["minReplicas"]),
    ("max replicas", so["spec"]["maxReplicaCount"], hpa["spec"]["maxReplicas"]),
    ("tasks per worker", int(trig["metadata"]["streamLength"]), int(hm["target"]["averageValue"])),
    ("scale-down window", so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"],
     hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"]),
    ("KEDA target", so["spec"]["scaleTargetRef"]["name"], dep["metadata"]["name"]),
    ("HPA target", hpa["spec"]["scaleTargetRef"]["name"], dep["metadata"]["name"]),
    ("HPA metric", hm["metric"]["name"], "peagen_queue_work"),
]:
    if a != b:
        fail.append(f"{what}: KEDA/HPA/Deployment disagree ({a!r} != {b!r})")
if trig["type"] != "redis-streams" or "consumerGroup" in trig["metadata"]:
    fail.append("KEDA trigger: redis-streams on XLEN (no consumerGroup: that reads XPENDING, which cannot scale up)")

# Compose: the specification's schema, then structure.
spec = Draft7Validator(json.load(open(f"{R}/schemas/compose-spec.json")))
cf = yaml.safe_load(open(f"{R}/compose/docker-compose.yml"))
fail += [f"docker-compose.yml: {e}" for e in errors(spec, cf)]
bad = copy.deepcopy(cf)
bad["services"]["worker"]["stop_grace_periodd"] = "90s"
if not errors(spec, bad):
    fail.append("the Compose schema accepted a misspelt key: the check is broken")
svcs = cf.get("services", {})
for name in ("redis", "worker", "metrics"):
    if name not in svcs:
        fail.append(f"docker-compose.yml: no service {name}")
for name, s in svcs.items():
    if "image" not in s:
        fail.append(f"docker-compose.yml: service {name} has no image")
    if s.get("privileged"):
        fail.append(f"docker-compose.yml: service {name} is privileged")
    for d in s.get("depends_on", []):
        if d not in svcs:
            fail.append(f"docker-compose.yml: {name} depends on unknown service {d}")
    for v in s.get("volumes", []):
        src = v.split(":")[0] if isinstance(v, str) else v.get("source", "")
        if "docker.sock" in src:
            fail.append(f"docker-compose.yml: {name} mounts the Docker socket")
        if isinstance(v, str) and not src.startswith((".", "/")) and src not in (cf.get("volumes") or {}):
            fail.append(f"docker-compose.yml: {name} uses undeclared volume {src}")
w = svcs.get("worker", {})
for opt in ("seccomp=unconfined", "apparmor=unconfined"):
    if opt not in w.get("security_opt", []):
        fail.append(f"docker-compose.yml: worker lacks security_opt {opt} (the sandbox creates user namespaces)")
if "deploy" in w and "replicas" in w["deploy"]:
    fail.append("docker-compose.yml: worker sets deploy.replicas (the autoscaler's --scale decides)")
m = " ".join(svcs.get("metrics", {}).get("command", []))
if "metrics serve" not in m:
    fail.append("docker-compose.yml: the metrics service does not run `peagenctl metrics serve`")

for f in fail:
    print(f"check-recipes: {f}", file=sys.stderr)
if fail:
    sys.exit(1)
print("check-recipes: KEDA ScaledObject valid against its CRD, compose file valid against the Compose spec, sizing consistent")
PY
say "OK: Kubernetes $K8S_VERSION schemas (strict), KEDA CRD, Compose spec"
