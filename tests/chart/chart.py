"""Static checks of the Helm chart (run by tests/chart/run.sh, which installs the tools):
lint, render, validate against Kubernetes schemas, golden file, refusals of bad values,
and the properties the chart promises (read off the rendered manifests)."""

import base64
import os
import re
import subprocess
import sys
import tempfile

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CHART = os.path.join(ROOT, "charts", "palisade")
HERE = os.path.dirname(os.path.abspath(__file__))
VALUES = os.path.join(HERE, "values")
GOLDEN = os.path.join(HERE, "golden", "default.yaml")
HELM = os.environ["HELM"]
VALIDATE = os.environ["KUBERNETES_VALIDATE"]
# The oldest Kubernetes the chart supports (Chart.yaml's kubeVersion allows 1.28, whose
# schemas kubernetes-validate also has), 1.29 as the issue of record asks, and the newest known.
KUBE_VERSIONS = ["1.29.0", None]

failures = []


def check(ok, what):
    if not ok:
        failures.append(what)
        print(f"FAIL {what}", flush=True)


def helm(*args, ok=True):
    r = subprocess.run([HELM, *args], capture_output=True, text=True)
    if ok and r.returncode != 0:
        raise SystemExit(f"helm {' '.join(args)} failed:\n{r.stdout}{r.stderr}")
    return r


def render(*args):
    out = helm("template", "rel", CHART, "--namespace", "ns", *args).stdout
    return out, [d for d in yaml.safe_load_all(out) if d]


def value_sets():
    yield "defaults", []
    for name in sorted(os.listdir(VALUES)):
        yield name, ["-f", os.path.join(VALUES, name)]


def masked(text):
    """The rendered text with the generated keys (random on every render) replaced by a marker."""
    return re.sub(r'^(  (?:jwt|peer)-secret): "[A-Za-z0-9+/=]+"$', r'\1: "<generated>"', text, flags=re.M)


def kinds(docs):
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def container(docs, name="palisade"):
    sts = next(d for d in docs if d["kind"] == "StatefulSet")
    return sts, next(c for c in sts["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def env_of(c):
    return {e["name"]: e.get("value") for e in c.get("env", [])}


def lint_render_validate():
    for name, args in value_sets():
        r = helm("lint", "--strict", CHART, *args, ok=False)
        check(r.returncode == 0, f"helm lint --strict ({name}):\n{r.stdout}{r.stderr}")
        text, docs = render(*args)
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            f.write(text)
        for version in KUBE_VERSIONS:
            cmd = [VALIDATE, "--strict", "--quiet", f.name]
            if version:
                cmd[1:1] = ["-k", version]
            r = subprocess.run(cmd, capture_output=True, text=True)
            # Kinds without a Kubernetes schema (CRDs) are warned about, checked below.
            unknown = [l for l in r.stdout.splitlines() + r.stderr.splitlines()
                       if l.strip() and not ("Couldn't find schema for kind" in l
                                             and ("cert-manager.io" in l or "monitoring.coreos.com" in l))]
            check(r.returncode == 0 and not unknown,
                  f"kubernetes-validate {version or 'newest'} ({name}):\n" + "\n".join(unknown))
        os.unlink(f.name)
        for d in docs:
            check_crd(name, d)
        check_promises(name, args, docs)
        print(f"ok   lint, render, validate: {name} ({len(docs)} manifests)", flush=True)


def check_crd(name, d):
    """What the CRD kinds' schemas would say of the fields the chart sets."""
    if d["apiVersion"] == "cert-manager.io/v1":
        spec = d["spec"]
        check(d["kind"] == "Certificate", f"{name}: a cert-manager kind other than Certificate")
        check(set(spec) <= {"secretName", "duration", "renewBefore", "privateKey", "usages", "dnsNames",
                            "ipAddresses", "issuerRef"}, f"{name}: Certificate fields {sorted(spec)}")
        check(spec["issuerRef"]["name"] and spec["issuerRef"]["kind"] in ("Issuer", "ClusterIssuer"),
              f"{name}: Certificate issuerRef {spec['issuerRef']}")
        check(spec["privateKey"] == {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
              f"{name}: Certificate privateKey")
        check(all(u in ("server auth", "client auth", "digital signature", "key encipherment")
                  for u in spec["usages"]), f"{name}: Certificate usages {spec['usages']}")
    if d["apiVersion"] == "monitoring.coreos.com/v1":
        check(d["kind"] == "ServiceMonitor", f"{name}: a monitoring kind other than ServiceMonitor")
        ep = d["spec"]["endpoints"][0]
        check(set(ep) <= {"port", "path", "interval", "scheme", "tlsConfig", "authorization"},
              f"{name}: ServiceMonitor endpoint fields {sorted(ep)}")
        check(ep["port"] == "client" and ep["path"] == "/metrics", f"{name}: ServiceMonitor endpoint {ep}")
        check(d["spec"]["selector"]["matchLabels"].get("app.kubernetes.io/component") == "client",
              f"{name}: ServiceMonitor selects the client Service only (not each pod twice)")


def check_promises(name, args, docs):
    by = kinds(docs)
    sts, c = container(docs)
    spec, pod = sts["spec"], sts["spec"]["template"]["spec"]
    env = env_of(c)
    check(spec["podManagementPolicy"] == "Parallel", f"{name}: pods start in parallel")
    peer = by[("Service", "rel-palisade-peer")]
    check(peer["spec"]["clusterIP"] == "None" and peer["spec"]["publishNotReadyAddresses"],
          f"{name}: the peer Service is headless and publishes not-ready pods")
    check(spec["serviceName"] == "rel-palisade-peer", f"{name}: pods are named through the peer Service")
    pdb = by.get(("PodDisruptionBudget", "rel-palisade"))
    check(pdb and pdb["spec"]["maxUnavailable"] == 1, f"{name}: a PodDisruptionBudget of one member")
    check(pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault",
          f"{name}: pods run as non-root with the runtime's seccomp profile")
    for cont in pod["containers"] + [s for d in docs if d["kind"] in ("Pod", "Job")
                                     for s in pod_spec(d).get("initContainers", []) + pod_spec(d)["containers"]]:
        sc = cont["securityContext"]
        check(sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"] and sc["capabilities"]["drop"] == ["ALL"],
              f"{name}: container {cont['name']} is restricted")
        check("requests" in cont["resources"], f"{name}: container {cont['name']} requests resources")
    check(c["readinessProbe"]["httpGet"]["path"] == "/readyz" and c["livenessProbe"]["httpGet"]["path"] == "/healthz"
          and c["startupProbe"]["httpGet"]["path"] == "/healthz", f"{name}: probes on /healthz and /readyz")
    grace = pod["terminationGracePeriodSeconds"]
    check(grace * 1000 >= int(env["PALISADE_SHUTDOWN_TIMEOUT_MS"]) + 10000,
          f"{name}: the grace period covers the drain and the hand-over")
    check(env["PALISADE_NODE_ID_FROM_HOSTNAME"] == "true", f"{name}: node ids from the pod ordinal")
    replicas = spec["replicas"]
    if "PALISADE_INITIAL_CLUSTER" in env:
        members = env["PALISADE_INITIAL_CLUSTER"].split(",")
        check(len(members) == replicas and members[0].startswith("1=http"),
              f"{name}: the initial cluster names every replica")
    else:
        join = env["PALISADE_JOIN"].split(",")
        check([u.split(".")[0].rsplit("-", 1)[1] for u in join] == ["0", "1", "2"],
              f"{name}: --join names pods 0 to 2, whatever the replica count (a scale change restarts no member)")
    check(pod["affinity"]["podAntiAffinity"] and pod["topologySpreadConstraints"],
          f"{name}: members spread over nodes")
    auth_on = "auth-off" not in name
    check(("PALISADE_AUTH_JWT_SECRET_FILE" in env or "PALISADE_AUTH_JWT_PUBLIC_KEYS" in env) == auth_on,
          f"{name}: client auth {'on' if auth_on else 'off'}")
    check("PALISADE_PEER_SECRET_FILE" in env or "PALISADE_PEER_TLS_CA_FILE" in env,
          f"{name}: peer traffic authenticated")
    for d in docs:
        if d["kind"] == "Secret":
            for k, v in d.get("data", {}).items():
                check(len(base64.b64decode(v)) >= 32, f"{name}: generated key {k} is at least 32 bytes")


def pod_spec(d):
    return d["spec"] if d["kind"] == "Pod" else d["spec"]["template"]["spec"]


def golden():
    text = masked(render()[0])
    if os.environ.get("GOLDEN") == "update":
        with open(GOLDEN, "w") as f:
            f.write(text)
        print(f"ok   golden file rewritten: {GOLDEN}")
        return
    want = open(GOLDEN).read() if os.path.exists(GOLDEN) else ""
    if text != want:
        import difflib
        diff = "".join(difflib.unified_diff(want.splitlines(True), text.splitlines(True), "golden", "rendered"))
        check(False, f"the rendered defaults differ from {GOLDEN} (review, then GOLDEN=update):\n{diff}")
    else:
        print("ok   golden: the rendered defaults match", flush=True)


# Bad values: each must be refused, by the schema or the templates, with this in the message.
BAD = [
    (["--set", "replicas=4"], "replicas"),
    (["--set", "replicas=0"], "replicas"),
    (["--set", "replicas=-1"], "replicas"),
    (["--set", "replicas=17"], "replicas"),
    (["--set-string", "replicas=3"], "replicas"),
    (["--set", "replicaCount=3"], "replicaCount"),
    (["--set", "auth.enable=true"], "enable"),
    (["--set", "image.pullPolicy=Sometimes"], "pullPolicy"),
    (["--set", "shutdownTimeout=15"], "shutdownTimeout"),
    (["--set", "shutdownTimeout=15 s"], "shutdownTimeout"),
    (["--set", "heartbeat=fast"], "heartbeat"),
    (["--set", "electionTimeout=0s"], "electionTimeout"),
    (["--set", "metrics.serviceMonitor.interval=1y"], "interval"),
    (["--set", "persistence.size=8GB"], "size"),
    (["--set", "cluster.state=old"], "state"),
    (["--set", "logFormat=xml"], "logFormat"),
    (["--set", "extraEnv.RUST_LOG=debug"], "RUST_LOG"),
    (["--set", "terminationGracePeriodSeconds=5"], "terminationGracePeriodSeconds"),
    (["--set", "shutdownTimeout=60s"], "terminationGracePeriodSeconds must be at least shutdownTimeout"),
    (["--set", "heartbeat=500ms"], "electionTimeout must be at least 3 x heartbeat"),
    (["--set", "tls.enabled=true"], "tls.enabled needs tls.existingSecret or tls.certManager.enabled"),
    (["--set", "tls.certManager.enabled=true"], "tls.certManager.enabled needs tls.enabled"),
    (["--set", "tls.enabled=true", "--set", "tls.certManager.enabled=true"], "issuerRef.name"),
    (["--set", "peer.secret.enabled=false"], "peer traffic needs peer.secret.enabled or peer.tls.enabled"),
    (["--set", "peer.tls.enabled=true"], "peer.tls.enabled needs"),
    (["--set", "auth.secretKey="], "auth.enabled needs a key"),
    (["--set", "auth.secretKey=hs"], "auth.secretKey names a key of auth.existingSecret"),
    (["--set", "auth.publicKeysKey=jwks"], "auth.publicKeysKey names a key of auth.existingSecret"),
    (["--set", "auth.existingSecret=Bad_Name"], "existingSecret"),
    (["--set", "metrics.serviceMonitor.enabled=true"], "tokenSecret"),
    (["--set", "metrics.access=off", "--set", "metrics.serviceMonitor.enabled=true"], "metrics.access open or auth"),
    (["--set", "antiAffinity=always"], "antiAffinity"),
    (["--set", "service.port=70000"], "port"),
    (["--set", "extraEnv.PALISADE_NODE_ID=2"], "extraEnv.PALISADE_NODE_ID is set by the chart"),
    (["--set", "podLabels.app\\.kubernetes\\.io/component=x"], "podLabels"),
    (["--set", "auth.existingSecret=mine", "--set", "auth.secretKey=", "--set", "auth.publicKeysKey=jwks"],
     "auth.adminTokenSecret"),
]


def chart_env_is_refused_in_extra_env():
    """extraEnv may not repeat a setting the chart sets: every PALISADE_* variable any value
    set renders is on the templates' list of refused names (a name added to the StatefulSet
    and not to the list would fail here)."""
    names = set()
    for _, args in value_sets():
        _, docs = render(*args)
        names |= {n for n in env_of(container(docs)[1]) if n.startswith("PALISADE_")}
    for n in sorted(names):
        r = helm("template", "rel", CHART, "--namespace", "ns", "--set", f"extraEnv.{n}=x", ok=False)
        check(r.returncode != 0 and f"extraEnv.{n} is set by the chart" in r.stderr,
              f"extraEnv.{n} should be refused: the chart sets it")
    print(f"ok   extraEnv refuses each of the {len(names)} settings the chart renders", flush=True)


def bad_values():
    for args, expect in BAD:
        r = helm("template", "rel", CHART, "--namespace", "ns", *args, ok=False)
        message = r.stderr
        check(r.returncode != 0 and expect in message,
              f"helm template {' '.join(args)} should fail naming {expect!r}; got rc={r.returncode}: {message[-600:]}")
    print(f"ok   {len(BAD)} bad value sets refused, each naming the value", flush=True)


def image_matches_chart():
    """The Dockerfile builds what the chart runs: its default image, user and binary path."""
    docker = open(os.path.join(ROOT, "Dockerfile")).read()
    chart = yaml.safe_load(open(os.path.join(CHART, "Chart.yaml")))
    values = yaml.safe_load(open(os.path.join(CHART, "values.yaml")))
    cargo = re.search(r'^version = "([^"]+)"', open(os.path.join(ROOT, "Cargo.toml")).read(), re.M).group(1)
    makefile = open(os.path.join(ROOT, "Makefile")).read()
    check(chart["appVersion"] == cargo, f"Chart.yaml appVersion {chart['appVersion']} is the crate's version {cargo}")
    check(f"IMAGE ?= {values['image']['repository']}:$(VERSION)" in makefile,
          "make image tags the chart's default image repository")
    final = docker.split("\nFROM ")[-1]
    check(final.startswith("gcr.io/distroless/"), "the runtime image is distroless (no shell)")
    check("USER 65532:65532" in final, "the image runs as the chart's user (65532)")
    check("COPY --from=build /palisade /usr/local/bin/palisade" in final, "palisade is on the image's PATH")
    _, docs = render()
    sts, c = container(docs)
    ctx = sts["spec"]["template"]["spec"]["securityContext"]
    check(ctx["runAsUser"] == 65532 and c["command"] == ["palisade"], "the chart runs palisade as 65532")
    print("ok   the Dockerfile builds the image the chart runs", flush=True)


if __name__ == "__main__":
    image_matches_chart()
    lint_render_validate()
    golden()
    bad_values()
    chart_env_is_refused_in_extra_env()
    if failures:
        print(f"\n{len(failures)} chart check(s) failed", file=sys.stderr)
        sys.exit(1)
    print("chart: all static checks passed")
