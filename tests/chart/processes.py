"""The chart-to-process test (run by tests/chart/run.sh): renders the chart, takes the
StatefulSet's container command, arguments and environment for each replica, and runs them
as local processes, substituting each pod's DNS name and ports for a loopback address, its
volumes for local directories (the rendered Secrets' keys written into them), and HOSTNAME
for the pod name, as Kubernetes would give it. Then it checks that what the chart describes
works: the pods form a cluster that serves with auth on, a pod restarts (SIGTERM within the
grace period, and kill -9) and rejoins with its data, raising replicas from 3 to 5 admits
the new pods through --join, the `helm test` pod's steps pass against it, lowering replicas
runs the scale-down hook's steps (the members removed, their processes stopping), and
scaling up again gives the returning pods fresh node ids from their ordinal's series; every
pod killed at once re-forms the cluster, and a backup restored into the volumes as the
README says starts as the restored cluster; and with the operator's own Secrets (TLS on
both listeners, peer mTLS only, an HS256 key with issuer and audience) the cluster forms
and the `helm test` pod passes over HTTPS."""

import base64
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CHART = os.path.join(ROOT, "charts", "palisade")
HELM = os.environ["HELM"]
BIN = os.path.abspath(os.environ["PALISADE_BIN"])
RELEASE, NS = "rel", "ns"
FULLNAME = "rel-palisade"
POD_HOST = re.compile(r"\b(" + FULLNAME + r"-(\d+))\." + FULLNAME + r"-peer\." + NS + r"\.svc\.cluster\.local:(7379|7380)\b")
SERVICE_HOST = re.compile(r"\b" + FULLNAME + r"\." + NS + r"\.svc\.cluster\.local:7379\b")


def log(msg):
    print(f"chart-process: {msg}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def render(*args):
    r = subprocess.run([HELM, "template", RELEASE, CHART, "--namespace", NS, *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"helm template failed: {r.stderr}")
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def expand(value, env):
    """Kubernetes' $(VAR) expansion: a variable defined earlier in the list; $$ escapes."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), value)


class Cluster:
    """The processes of one release: pods by ordinal, ports, and the data kept across renders."""

    def __init__(self, work, cafile=None):
        self.work = work
        self.scheme = "https" if cafile else "http"
        self.ssl = ssl.create_default_context(cafile=cafile) if cafile else None
        self.ports = {}  # ordinal -> (client, peer)
        self.procs = {}  # ordinal -> Popen
        self.secrets = {}

    def port(self, ordinal, kind):
        if ordinal not in self.ports:
            self.ports[ordinal] = (free_port(), free_port())
        return self.ports[ordinal][0 if kind == "7379" else 1]

    def localize(self, value, mounts, ordinal=None):
        value = POD_HOST.sub(lambda m: f"127.0.0.1:{self.port(int(m.group(2)), m.group(3))}", value)
        running = sorted(o for o, p in self.procs.items() if p.poll() is None)
        value = SERVICE_HOST.sub(lambda m: f"127.0.0.1:{self.port(running[0], '7379')}", value)
        if ordinal is not None:
            value = value.replace("0.0.0.0:7379", f"127.0.0.1:{self.port(ordinal, '7379')}")
            value = value.replace("0.0.0.0:7380", f"127.0.0.1:{self.port(ordinal, '7380')}")
        for path in sorted(mounts, key=len, reverse=True):
            value = value.replace(path, mounts[path])
        return value

    def load_secrets(self, docs):
        for d in docs:
            if d["kind"] == "Secret":
                known = self.secrets.setdefault(d["metadata"]["name"], {})
                for k, v in d.get("data", {}).items():
                    # Generated keys are kept across upgrades (lookup): the first render's stay.
                    known.setdefault(k, base64.b64decode(v))

    def mounts(self, pod_spec, container, root, claims):
        """Each volume mount as a local directory under `root`; returns mountPath -> dir."""
        volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
        out = {}
        for vm in container.get("volumeMounts", []):
            local = os.path.join(root, vm["name"])
            vol = volumes.get(vm["name"])
            if vol is None:
                assert vm["name"] in claims, f"volume {vm['name']} is neither a volume nor a claim template"
            elif "secret" in vol:
                data = self.secrets[vol["secret"]["secretName"]]
                os.makedirs(local, exist_ok=True)
                items = vol["secret"].get("items") or [{"key": k, "path": k} for k in data]
                for item in items:
                    path = os.path.join(local, item["path"])
                    with open(path, "wb") as f:
                        f.write(data[item["key"]])
                    os.chmod(path, vol["secret"].get("defaultMode", 0o644) | 0o400)
            else:
                assert "emptyDir" in vol, f"volume {vm['name']}: only secrets, emptyDirs and claims are expected"
            os.makedirs(local, exist_ok=True)
            out[vm["mountPath"]] = local
        return out

    def process_env(self, container, pod_name, mounts, ordinal=None):
        env = {}
        for e in container.get("env", []):
            if "value" in e:
                v = expand(e["value"], env)
            else:
                ref = e["valueFrom"]
                if "fieldRef" in ref:
                    v = {"metadata.name": pod_name, "metadata.namespace": NS}[ref["fieldRef"]["fieldPath"]]
                else:
                    k = ref["secretKeyRef"]
                    v = self.secrets[k["name"]][k["key"]].decode()
            env[e["name"]] = v
        env = {k: self.localize(v, mounts, ordinal) for k, v in env.items()}
        base = {k: v for k, v in os.environ.items() if not k.startswith("PALISADE_") and k != "RUST_LOG"}
        return {**base, **env}

    def command(self, container, mounts):
        cmd = container.get("command", []) + container.get("args", [])
        assert cmd[0] == "palisade", f"the container runs {cmd[0]}, not the palisade binary"
        return [BIN] + [self.localize(a, mounts) for a in cmd[1:]]

    def start(self, docs, ordinal):
        """Starts pod `ordinal` of the rendered StatefulSet (its data dir kept across starts)."""
        self.load_secrets(docs)
        sts = next(d for d in docs if d["kind"] == "StatefulSet")
        spec = sts["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        claims = {c["metadata"]["name"] for c in sts["spec"].get("volumeClaimTemplates", [])}
        pod = f"{sts['metadata']['name']}-{ordinal}"
        root = os.path.join(self.work, pod)
        mounts = self.mounts(spec, container, root, claims)
        env = self.process_env(container, pod, mounts, ordinal)
        logf = open(os.path.join(self.work, f"{pod}.log"), "ab")
        self.procs[ordinal] = subprocess.Popen(self.command(container, mounts), env=env, stdout=logf,
                                               stderr=subprocess.STDOUT, cwd=root)
        self.grace = spec["terminationGracePeriodSeconds"]
        self.probe = container["readinessProbe"]["httpGet"]
        assert container["ports"][0]["name"] == self.probe["port"] == "client"

    def wipe(self, ordinal):
        """The pod's volume deleted (persistentVolumeClaimRetentionPolicy whenScaled: Delete)."""
        shutil.rmtree(os.path.join(self.work, f"{FULLNAME}-{ordinal}"), ignore_errors=True)

    def url(self, ordinal):
        return f"{self.scheme}://127.0.0.1:{self.port(ordinal, '7379')}"

    def ready(self, ordinal):
        try:
            assert self.probe["scheme"] == self.scheme.upper(), "the probes speak the listener's scheme"
            with urllib.request.urlopen(self.url(ordinal) + self.probe["path"], timeout=2, context=self.ssl) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, ordinals, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            for o in ordinals:
                if self.procs[o].poll() is not None:
                    raise SystemExit(f"pod {o} exited with {self.procs[o].returncode}; see {self.work}/{FULLNAME}-{o}.log")
            if all(self.ready(o) for o in ordinals):
                return
            time.sleep(0.2)
        raise SystemExit(f"pods {ordinals} not ready within {timeout} s")

    def stop(self, ordinal, sig=signal.SIGTERM):
        p = self.procs[ordinal]
        p.send_signal(sig)
        try:
            return p.wait(timeout=self.grace)
        except subprocess.TimeoutExpired:
            p.kill()
            raise SystemExit(f"pod {ordinal} did not stop within the grace period ({self.grace} s)")

    def run_pod(self, docs, name):
        """Runs a hook or test pod's steps as Kubernetes would: init containers in order, then the containers."""
        d = next(d for d in docs if d["metadata"]["name"] == name)
        spec = d["spec"] if d["kind"] == "Pod" else d["spec"]["template"]["spec"]
        root = os.path.join(self.work, name + str(time.time()))
        for c in spec.get("initContainers", []) + spec["containers"]:
            mounts = self.mounts(spec, c, root, set())
            env = self.process_env(c, name, mounts)
            # The pod's image has palisade on its PATH (a step may run it again, as `lock` does).
            env["PATH"] = os.path.dirname(BIN) + os.pathsep + env.get("PATH", "")
            r = subprocess.run(self.command(c, mounts), env=env, capture_output=True, text=True, timeout=60)
            log(f"  {name} step {c['name']}: exit {r.returncode} {r.stdout.strip()[:200]} {r.stderr.strip()[:300]}")
            if r.returncode != 0:
                raise SystemExit(f"{name}: step {c['name']} failed")


def call(cluster, ordinal, method, path, token=None, body=None):
    req = urllib.request.Request(cluster.url(ordinal) + path, method=method,
                                 data=None if body is None else json.dumps(body).encode())
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10, context=cluster.ssl) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def wait_members(cluster, ordinal, token, want, timeout=90):
    """Waits until node `ordinal` lists exactly the voters `want` (ids) and no learner."""
    deadline = time.time() + timeout
    seen = None
    while time.time() < deadline:
        try:
            status, body = call(cluster, ordinal, "GET", "/v1/cluster", token)
            if status == 200:
                seen = sorted((m["id"], m["role"]) for m in body["members"])
                if seen == sorted((i, "voter") for i in want) and body.get("leader"):
                    return body
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    raise SystemExit(f"members never became the voters {sorted(want)}; last seen {seen}")


def mint(work, key, *extra):
    path = os.path.join(work, "jwt-key")
    with open(path, "wb") as f:
        f.write(key)
    return subprocess.run([BIN, "auth", "token", "--sub", "chart-test", "--admin", "--ttl", "10m",
                           "--secret-file", path, *extra], capture_output=True, text=True, check=True).stdout.strip()


def scenario(name, run, cafile=None):
    """Runs `run(cluster)` against a fresh set of processes; their logs are shown on failure."""
    work = tempfile.mkdtemp(prefix=f"palisade-chart-{name}-")
    cluster = Cluster(work, cafile(work) if cafile else None)
    ok = False
    try:
        log(f"{name}: work dir {work}")
        run(cluster)
        for o in sorted(cluster.procs):
            if cluster.procs[o].poll() is None:
                assert cluster.stop(o) == 0, f"pod {o} exits 0 on SIGTERM"
        ok = True
        log(f"{name}: all pods stopped with exit 0: passed")
    finally:
        for p in cluster.procs.values():
            if p.poll() is None:
                p.kill()
        if ok:
            shutil.rmtree(work, ignore_errors=True)
        else:
            for name in sorted(os.listdir(work)):
                if name.endswith(".log"):
                    print(f"--- {name} (last 40 lines)")
                    with open(os.path.join(work, name), errors="replace") as f:
                        print("".join(f.readlines()[-40:]))


def defaults(cluster):
    """The default values: auth on with a generated key, peer secret, 3 replicas; then the life of the release."""
    docs = render()
    for o in range(3):
        cluster.start(docs, o)
    cluster.wait_ready(range(3))
    token = mint(cluster.work, cluster.secrets[f"{FULLNAME}-keys"]["jwt-secret"])
    body = wait_members(cluster, 0, token, {1, 2, 3})
    log(f"3 pods formed cluster {body['cluster_id']}: voters 1, 2, 3, leader {body['leader']}")

    status, _ = call(cluster, 1, "GET", "/v1/kv/chart/a")
    assert status == 401, f"without a token: {status}"
    status, _ = call(cluster, 1, "PUT", "/v1/kv/chart/a", token, {"value": "1"})
    assert status == 200, f"put: {status}"
    status, got = call(cluster, 2, "GET", "/v1/kv/chart/a", token)
    assert status == 200 and got["kv"]["value"] == "1", got
    log("auth is on: 401 without a token; a put through pod 1 is read through pod 2")

    # A pod restart: SIGTERM within the grace period, then a crash (kill -9); each comes back with its data.
    assert cluster.stop(1) == 0, "a SIGTERM'd member exits 0"
    cluster.start(docs, 1)
    cluster.wait_ready([1])
    cluster.stop(2, signal.SIGKILL)
    status, _ = call(cluster, 0, "PUT", "/v1/kv/chart/b", token, {"value": "2"})
    assert status == 200, f"put with one member down: {status}"
    cluster.start(docs, 2)
    cluster.wait_ready([1, 2])
    for o in range(3):
        status, got = call(cluster, o, "GET", "/v1/kv/chart/b", token)
        assert status == 200 and got["kv"]["value"] == "2", (o, got)
    wait_members(cluster, 2, token, {1, 2, 3})
    log("pod 1 restarted (SIGTERM, exit 0) and pod 2 (kill -9): both rejoined with their data")

    # Scale up to 5 (what `helm upgrade --set replicas=5` renders: the StatefulSet exists,
    # so the pods join). Pod 0 gets the new spec as a rolling update would; 3 and 4 join.
    up = render("--set", "replicas=5", "--set", "cluster.state=auto", "--set", "cluster.state=existing")
    assert cluster.stop(0) == 0
    cluster.start(up, 0)
    cluster.start(up, 3)
    cluster.start(up, 4)
    cluster.wait_ready([0, 3, 4])
    wait_members(cluster, 0, token, {1, 2, 3, 4, 5})
    log("replicas 3 -> 5: pods 3 and 4 joined through --join and were promoted (voters 1-5)")

    # `helm test`: its pod's steps, through the client Service (here: pod 0's port).
    cluster.run_pod(up, f"{FULLNAME}-test")
    status, _ = call(cluster, 3, "GET", f"/v1/kv/palisade-helm-test/{RELEASE}", token)
    assert status == 404, f"the test cleans up after itself: {status}"
    log("the helm test pod's steps passed: write, read, compare, lock + fencing check, clean-up")

    # Scale down to 3: the pre-upgrade hook removes members 5 and 4, whose processes stop.
    down = render("--set", "replicas=3", "--set", "cluster.state=existing", "--set", "scaleDown.fromReplicas=5")
    cluster.run_pod(down, f"{FULLNAME}-scale-down")
    wait_members(cluster, 0, token, {1, 2, 3})
    for o in (3, 4):
        try:
            code = cluster.procs[o].wait(timeout=30)
        except subprocess.TimeoutExpired:
            raise SystemExit(f"pod {o} still runs after its member was removed")
        assert code != 0, f"a removed member exits non-zero (pod {o}: {code})"
    # Pod 4's volume is deleted with it (persistence.deleteOnScaleDown); pod 3's is kept, as
    # with deleteOnScaleDown false.
    cluster.wipe(4)
    log("replicas 5 -> 3: the scale-down hook removed members 5 and 4; their pods stopped (non-zero)")

    # Scale up again: ids 4 and 5 are retired, so pods 3 and 4 join as 1004 and 1005; pod
    # 3's old data, a removed member's, is moved aside first. Pod 4's volume holds what a
    # refused join leaves (an identity for id 5 that never joined): it picks again.
    data4 = os.path.join(cluster.work, f"{FULLNAME}-4", "data", "data")
    os.makedirs(data4)
    with open(os.path.join(data4, "identity.json"), "w") as f:
        json.dump({"node_id": 5, "cluster_id": "0", "initial_cluster": {}, "incarnation": 7}, f)
    cluster.start(up, 3)
    cluster.start(up, 4)
    cluster.wait_ready([3, 4])
    body = wait_members(cluster, 1, token, {1, 2, 3, 1004, 1005})
    status, got = call(cluster, 4, "GET", "/v1/kv/chart/b", token)
    assert status == 200 and got["kv"]["value"] == "2", got
    logs = {o: open(os.path.join(cluster.work, f"{FULLNAME}-{o}.log"), errors="replace").read() for o in (3, 4)}
    assert "was removed from the cluster; its data was moved aside" in logs[3], logs[3][-2000:]
    assert "the join as node 5 never finished; joining as node 1005" in logs[4], logs[4][-2000:]
    log("replicas 3 -> 5 again: pods 3 and 4 joined as nodes 1004 and 1005 (their ordinals' next ids; "
        "pod 3's removed member's data moved aside, pod 4's unfinished join picked again)")
    assert cluster.stop(3) == 0
    cluster.start(up, 3)
    cluster.wait_ready([3])
    status, body = call(cluster, 3, "GET", "/v1/cluster", token)
    assert status == 200 and body["node_id"] == 1004, body
    wait_members(cluster, 3, token, {1, 2, 3, 1004, 1005})
    log("pod 3 restarted as node 1004: its data dir keeps the id it was given")
    aside = os.path.join(cluster.work, f"{FULLNAME}-3", "data", "data.removed-4")
    assert os.path.exists(os.path.join(aside, "identity.json")), "the removed member's data is kept aside"

    # A member's volume lost (a pod scaled away by hand, without the hook, and back; or a
    # disk gone): pod 1 comes back on an empty volume and is rebuilt from its peers as node 2.
    cluster.stop(1, signal.SIGKILL)
    cluster.wipe(1)
    cluster.start(up, 1)
    cluster.wait_ready([1], timeout=90)
    wait_members(cluster, 1, token, {1, 2, 3, 1004, 1005})
    status, got = call(cluster, 1, "GET", "/v1/kv/chart/b?consistency=serializable", token)
    assert status == 200 and got["kv"]["value"] == "2", got
    assert "has lost its data: rebuilding it from its peers" in open(os.path.join(cluster.work, f"{FULLNAME}-1.log")).read()
    log("pod 1 lost its volume: it was rebuilt from its peers as node 2")

    # A reinstall over the volumes (or `helm template`, which cannot look the StatefulSet
    # up) renders a new cluster of today's 5 replicas: every pod starts on its data anyway.
    again = render("--set", "replicas=5")
    for o in range(5):
        assert cluster.stop(o) == 0
        cluster.start(again, o)
        cluster.wait_ready([o])
    wait_members(cluster, 0, token, {1, 2, 3, 1004, 1005})
    log("restarted with --initial-cluster of 5 (as a reinstall renders it): every pod resumed its member")


# The operator's own Secrets: client TLS, peer mutual TLS only (no peer secret), and an
# HS256 key under another name with an issuer and audience checked.
SECURE = ["--set", "tls.enabled=true", "--set", "tls.existingSecret=palisade-tls",
          "--set", "peer.secret.enabled=false", "--set", "peer.tls.enabled=true",
          "--set", "peer.tls.existingSecret=palisade-peer-tls",
          "--set", "auth.existingSecret=palisade-auth", "--set", "auth.secretKey=hs256",
          "--set", "auth.issuer=https://issuer.example.com", "--set", "auth.audience=palisade"]


def certificates(work):
    """A CA and one certificate for both listeners, named as the chart's cert-manager
    Certificates name them, plus 127.0.0.1 (where these processes listen); returns the CA file."""
    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=work, check=True, capture_output=True)
    curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *curve, "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=chart-test-ca", "-days", "1",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
    openssl("req", *curve, "-keyout", "tls.key", "-out", "tls.csr", "-subj", "/CN=palisade")
    with open(os.path.join(work, "ext.cnf"), "w") as f:
        f.write("basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\n"
                f"subjectAltName=DNS:*.{FULLNAME}-peer.{NS}.svc.cluster.local,DNS:{FULLNAME}.{NS}.svc.cluster.local,"
                "IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "1",
            "-out", "tls.crt", "-extfile", "ext.cnf")
    return os.path.join(work, "ca.crt")


def secure(cluster):
    """TLS on both listeners and auth from the operator's Secrets: the cluster forms, serves
    over HTTPS with a token carrying the issuer and audience, and the `helm test` pod passes."""
    files = {n: open(os.path.join(cluster.work, n), "rb").read() for n in ("ca.crt", "tls.crt", "tls.key")}
    key = os.urandom(24).hex().encode()
    cluster.secrets = {"palisade-tls": files, "palisade-peer-tls": files, "palisade-auth": {"hs256": key}}
    docs = render(*SECURE)
    for o in range(3):
        cluster.start(docs, o)
    cluster.wait_ready(range(3))
    token = mint(cluster.work, key, "--iss", "https://issuer.example.com", "--aud", "palisade")
    body = wait_members(cluster, 0, token, {1, 2, 3})
    assert all(m["peer_url"].startswith("https://") for m in body["members"]), body
    status, _ = call(cluster, 0, "GET", "/v1/kv/chart/a")
    assert status == 401, status
    bad = mint(cluster.work, key)
    status, _ = call(cluster, 0, "GET", "/v1/kv/chart/a", bad)
    assert status == 401, f"a token without the issuer and audience: {status}"
    log("secure: 3 pods over TLS and peer mTLS formed a cluster; tokens need the issuer and audience")
    cluster.run_pod(docs, f"{FULLNAME}-test")
    log("secure: the helm test pod's steps passed over HTTPS")
    assert cluster.stop(1) == 0
    cluster.start(docs, 1)
    cluster.wait_ready([1])
    wait_members(cluster, 1, token, {1, 2, 3})
    log("secure: pod 1 restarted over mTLS")


def restore(cluster):
    """A backup restored into the pods' volumes as the README says: `snapshot restore` into
    each volume's data dir with the initial cluster the chart renders, then the release's
    pods start on them and serve the restored keys."""
    docs = render()
    for o in range(3):
        cluster.start(docs, o)
    cluster.wait_ready(range(3))
    key = cluster.secrets[f"{FULLNAME}-keys"]["jwt-secret"]
    token = mint(cluster.work, key)
    wait_members(cluster, 0, token, {1, 2, 3})
    status, _ = call(cluster, 2, "PUT", "/v1/kv/chart/kept", token, {"value": "before the backup"})
    assert status == 200, status
    # Every pod killed at once (a node pool lost, say) and started again: they re-form.
    for o in range(3):
        cluster.stop(o, signal.SIGKILL)
    for o in range(3):
        cluster.start(docs, o)
    cluster.wait_ready(range(3))
    wait_members(cluster, 0, token, {1, 2, 3})
    log("restore: all 3 pods killed at once (kill -9) and started again: the cluster re-formed")
    backup = os.path.join(cluster.work, "backup.snap")
    subprocess.run([BIN, "snapshot", "--endpoints", cluster.url(0), "--token", token, "save", backup],
                   check=True, capture_output=True)
    for o in range(3):
        assert cluster.stop(o) == 0
        cluster.wipe(o)
    # New volumes, each seeded by `snapshot restore` before the pods start.
    sts = next(d for d in docs if d["kind"] == "StatefulSet")
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    for o in range(3):
        mounts = {m["mountPath"]: os.path.join(cluster.work, f"{FULLNAME}-{o}", m["name"])
                  for m in container["volumeMounts"] if m["name"] == "data"}
        env = cluster.process_env(container, f"{FULLNAME}-{o}", mounts, o)
        subprocess.run([BIN, "snapshot", "restore", backup, "--data-dir", env["PALISADE_DATA_DIR"],
                        "--node-id", str(o + 1), "--initial-cluster", env["PALISADE_INITIAL_CLUSTER"]],
                       check=True, capture_output=True)
    for o in range(3):
        cluster.start(docs, o)
    cluster.wait_ready(range(3))
    wait_members(cluster, 1, token, {1, 2, 3})
    for o in range(3):
        status, got = call(cluster, o, "GET", "/v1/kv/chart/kept", token)
        assert status == 200 and got["kv"]["value"] == "before the backup", (o, status, got)
    log("restore: a backup restored into each volume's data dir; the pods started on it and serve its keys")


if __name__ == "__main__":
    scenario("defaults", defaults)
    scenario("restore", restore)
    scenario("secure", secure, cafile=certificates)
