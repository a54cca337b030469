#!/usr/bin/env python3
"""Cross-checks the deploy/ files against each other (run by deploy/check.sh).

Schema validation (kubernetes-validate) and promtool say each file is well-formed on its own;
this says they fit together: ports named in probes, Services, NetworkPolicies and monitors exist;
selectors select the gateway's pods; the config's listen addresses match the container ports; the
config and secret mounts match the paths the image and gateway.toml use; the pod is locked down;
the dashboard queries only through its datasource variable; the Dockerfile keeps its promises.

    consistency.py RENDER_DIR
RENDER_DIR holds `kubectl kustomize` output: base.yaml, service.yaml, sidecar.yaml, prometheus.yaml,
grafana.yaml.
Needs PyYAML; Python 3.11+ (tomllib).
"""

import json
import re
import sys
import tomllib
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import yaml

DEPLOY = Path(__file__).resolve().parent
failures = []
passed = 0


# Kinds that live outside any namespace (the TokenReview RBAC).
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}


def check(name, ok, detail=""):
    global passed
    if ok:
        passed += 1
        print(f"ok    {name}")
    else:
        failures.append(name)
        print(f"FAIL  {name}{': ' + detail if detail else ''}")


def load_all(path):
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def find(docs, kind, name=None):
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def subset(selector, labels):
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def addr_port(addr):
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def container_ports(container):
    return {p["name"]: p["containerPort"] for p in container.get("ports", [])}


def port_of(ref, ports):
    return ports.get(ref) if isinstance(ref, str) else ref


def hardened(name, pod_spec, container):
    psc = pod_spec.get("securityContext", {})
    csc = container.get("securityContext", {})
    eff = {**psc, **csc}
    check(f"{name}: runs as non-root uid 65532", eff.get("runAsNonRoot") is True and eff.get("runAsUser") == 65532)
    check(f"{name}: read-only root filesystem", csc.get("readOnlyRootFilesystem") is True)
    check(f"{name}: no privilege escalation", csc.get("allowPrivilegeEscalation") is False)
    check(f"{name}: drops ALL capabilities", csc.get("capabilities", {}).get("drop") == ["ALL"])
    check(f"{name}: seccomp RuntimeDefault", eff.get("seccompProfile", {}).get("type") == "RuntimeDefault")


def mounts_and_config(name, docs, pod_spec, container, entry_config):
    """The config volume is a rendered ConfigMap holding gateway.toml at the image's --config path;
    the secret volume is mounted where gateway.toml's *_file keys point. Returns the parsed config."""
    volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    config_dir = str(PurePosixPath(entry_config).parent)
    vol = volumes.get(mounts.get(config_dir, ""), {})
    cm_name = vol.get("configMap", {}).get("name")
    cms = find(docs, "ConfigMap", cm_name) if cm_name else []
    check(f"{name}: ConfigMap {cm_name} mounted at {config_dir} is rendered", len(cms) == 1)
    if not cms:
        return None
    text = cms[0]["data"].get(PurePosixPath(entry_config).name)
    check(f"{name}: ConfigMap holds {PurePosixPath(entry_config).name}", text is not None)
    cfg = tomllib.loads(text or "")
    files = [v for c in cfg.get("credentials", {}).values() for k, v in c.items() if k.endswith("_file")]
    for f in files:
        d = str(PurePosixPath(f).parent)
        sv = volumes.get(mounts.get(d, ""), {})
        check(f"{name}: {f} comes from a mounted Secret", "secret" in sv, f"no Secret volume at {d}")
    check(f"{name}: mounts are read-only", all(m.get("readOnly") for m in container.get("volumeMounts", [])))
    return cfg


def http_probe_port(container, probe):
    p = container.get(probe, {}).get("httpGet", {})
    return p.get("path"), p.get("port")


def shared_shape(label, docs, entry_config):
    deps = find(docs, "Deployment", "palette-gateway")
    check(f"{label}: one Deployment palette-gateway", len(deps) == 1)
    dep = deps[0]
    pod = dep["spec"]["template"]
    spec = pod["spec"]
    labels = pod["metadata"]["labels"]
    c = next(c for c in spec["containers"] if c["name"] == "palette-gateway")
    ports = container_ports(c)
    hardened(f"{label}: gateway container", spec, c)
    check(f"{label}: selector selects the pod template", subset(dep["spec"]["selector"]["matchLabels"], labels))
    check(f"{label}: liveness GET /healthz on the admin port", http_probe_port(c, "livenessProbe") == ("/healthz", "admin"))
    check(f"{label}: readiness GET /readyz on the admin port", http_probe_port(c, "readinessProbe") == ("/readyz", "admin"))
    check(f"{label}: resources requested and memory limited",
          {"cpu", "memory"} <= set(c.get("resources", {}).get("requests", {})) and "memory" in c["resources"].get("limits", {}))
    grace = spec.get("terminationGracePeriodSeconds", 30)
    check(f"{label}: terminationGracePeriodSeconds {grace} > shutdown_delay 5s + drain_timeout 30s", grace > 35)
    check(f"{label}: no service account token", spec.get("automountServiceAccountToken") is False)
    sa = find(docs, "ServiceAccount", spec.get("serviceAccountName"))
    check(f"{label}: its ServiceAccount is rendered, token automount off",
          len(sa) == 1 and sa[0].get("automountServiceAccountToken") is False)
    cfg = mounts_and_config(label, docs, spec, c, entry_config)
    if cfg:
        host, port = addr_port(cfg["server"]["listen"])
        ahost, aport = addr_port(cfg["server"]["admin_listen"])
        check(f"{label}: listen {cfg['server']['listen']} is container port http", ports.get("http") == port and host == "0.0.0.0")
        check(f"{label}: admin_listen {cfg['server']['admin_listen']} is container port admin", ports.get("admin") == aport and ahost == "0.0.0.0")
    check(f"{label}: no Secret with real values in the render", not find(docs, "Secret"))

    svc = find(docs, "Service", "palette-gateway")
    check(f"{label}: one Service palette-gateway", len(svc) == 1)
    svc = svc[0]
    check(f"{label}: Service selects the gateway pods", subset(svc["spec"]["selector"], labels))
    sports = {p["name"]: (p["port"], port_of(p["targetPort"], ports)) for p in svc["spec"]["ports"]}
    check(f"{label}: Service ports http 8080 and admin 9901 reach container ports",
          sports.get("http") == (8080, ports.get("http")) and sports.get("admin") == (9901, ports.get("admin")), str(sports))

    np = find(docs, "NetworkPolicy", "palette-gateway")
    check(f"{label}: one NetworkPolicy", len(np) == 1)
    np = np[0]["spec"]
    check(f"{label}: NetworkPolicy applies to the gateway pods", subset(np["podSelector"]["matchLabels"], labels))
    check(f"{label}: NetworkPolicy is an ingress and egress allow-list", np["policyTypes"] == ["Ingress", "Egress"])
    rules = {tuple(port_of(p["port"], ports) for p in r["ports"]): r["from"] for r in np["ingress"]}
    client_from = rules.get((ports.get("http"),), [])
    check(f"{label}: proxy port open only to pods labelled palette-gateway/client",
          bool(client_from) and all(f.get("podSelector", {}).get("matchLabels") == {"palette-gateway/client": "true"} for f in client_from))
    admin_from = rules.get((ports.get("admin"),), [])
    check(f"{label}: admin port open only to Prometheus",
          bool(admin_from) and all("namespaceSelector" in f and f.get("podSelector") for f in admin_from))
    check(f"{label}: NetworkPolicy opens no other port", set(rules) == {(ports.get("http"),), (ports.get("admin"),)})
    egress = np.get("egress", [])
    dns = [r for r in egress if {(p["port"], p["protocol"]) for p in r.get("ports", [])} == {(53, "UDP"), (53, "TCP")}]
    check(f"{label}: egress to DNS (53/UDP+TCP) only at kube-dns",
          len(dns) == 1 and all(t.get("podSelector", {}).get("matchLabels") == {"k8s-app": "kube-dns"} for t in dns[0]["to"]))
    upstream = urlsplit(cfg["upstream"]["url"]) if cfg else None
    upstream_port = (upstream.port or (443 if upstream.scheme == "https" else 80)) if upstream else None
    def cidrs(r):
        return {t.get("ipBlock", {}).get("cidr") for t in r.get("to", [])}
    palette = [r for r in egress if r not in dns and "0.0.0.0/0" in cidrs(r)]
    blocks = [t.get("ipBlock") for t in palette[0]["to"]] if len(palette) == 1 else []
    v4 = [b for b in blocks if b and b["cidr"] == "0.0.0.0/0"]
    private = {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"}
    check(f"{label}: egress to the upstream port {upstream_port} only at public addresses",
          len(palette) == 1 and [(p["port"], p["protocol"]) for p in palette[0]["ports"]] == [(upstream_port, "TCP")]
          and bool(blocks) and all(blocks) and len(v4) == 1 and private <= set(v4[0].get("except", [])), str(palette))
    others = [r for r in egress if r not in dns and r not in palette]
    api = [r for r in others if {(p["port"], p["protocol"]) for p in r.get("ports", [])} == {(443, "TCP"), (6443, "TCP")}]
    check(f"{label}: egress to the API server (443, 6443) only at private addresses",
          len(api) <= 1 and all(cidrs(r) <= {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"} for r in api), str(api))
    kube = bool(cfg and cfg.get("auth", {}).get("kubernetes"))
    check(f"{label}: [auth.kubernetes] {'has' if kube else 'needs no'} an API server egress rule", kube == bool(api) or not kube)
    redis = [r for r in others if r not in api]
    cluster = cfg.get("cluster") if cfg else None
    if cluster:
        redis_port = urlsplit(cluster["redis_url"]).port or 6379
        check(f"{label}: [cluster] has an egress rule to Redis port {redis_port} at pods only",
              len(redis) == 1 and [(p["port"], p["protocol"]) for p in redis[0]["ports"]] == [(redis_port, "TCP")]
              and all("podSelector" in t and "ipBlock" not in t for t in redis[0]["to"]), str(redis))
    else:
        check(f"{label}: no egress rule beyond DNS, Palette and the API server", not redis, str(redis))

    pdb = find(docs, "PodDisruptionBudget")
    check(f"{label}: PodDisruptionBudget selects the gateway pods", len(pdb) == 1 and subset(pdb[0]["spec"]["selector"]["matchLabels"], labels))
    hpa = find(docs, "HorizontalPodAutoscaler")
    check(f"{label}: HPA (autoscaling/v2, CPU) scales the Deployment",
          len(hpa) == 1 and hpa[0]["apiVersion"] == "autoscaling/v2"
          and hpa[0]["spec"]["scaleTargetRef"]["name"] == "palette-gateway"
          and hpa[0]["spec"]["metrics"][0]["resource"]["name"] == "cpu")
    check(f"{label}: no fixed replicas (the HPA owns them)", "replicas" not in dep["spec"])
    return svc, labels, hpa[0] if hpa else None


def token_auth(label, docs, sa_name, tool):
    """[auth.kubernetes]: the gateway's ServiceAccount may create TokenReviews (and nothing else),
    and the tool mounts a projected token for the gateway's audience with a short expiry."""
    bound = [b for b in find(docs, "ClusterRoleBinding")
             if any(s.get("kind") == "ServiceAccount" and s.get("name") == sa_name for s in b.get("subjects", []))]
    roles = {r["metadata"]["name"]: r for r in find(docs, "ClusterRole")}
    rules = [rule for b in bound for rule in roles.get(b["roleRef"]["name"], {}).get("rules", [])]
    check(f"{label}: ServiceAccount {sa_name} may create tokenreviews, nothing else",
          rules == [{"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}], str(rules))
    deps = find(docs, "Deployment", tool)
    spec = deps[0]["spec"]["template"]["spec"] if deps else {}
    tokens = [s["serviceAccountToken"] for v in spec.get("volumes", []) for s in v.get("projected", {}).get("sources", [])
              if "serviceAccountToken" in s]
    check(f"{label}: {tool} mounts a projected token for audience palette-gateway, at most 1h",
          any(t.get("audience") == "palette-gateway" and t.get("expirationSeconds", 3600) <= 3600 for t in tokens), str(tokens))


def main(render_dir):
    render = Path(render_dir)
    dockerfile = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    m = re.search(r'^ENTRYPOINT \["([^"]+)", "--config", "([^"]+)"\]', dockerfile, re.M)
    check("Dockerfile: ENTRYPOINT runs the binary with --config", bool(m))
    entry_config = m.group(2) if m else "/etc/palette-gateway/gateway.toml"
    check("Dockerfile: multi-stage", len(re.findall(r"^FROM ", dockerfile, re.M)) >= 2)
    build_static = (DEPLOY.parent / "scripts" / "build-static.sh").read_text(encoding="utf-8")
    # The Dockerfile builds through scripts/build-static.sh, as .ci/run does: one set of flags.
    check("Dockerfile: builds with scripts/build-static.sh", re.search(r"^\s*&& .*bash scripts/build-static\.sh", dockerfile, re.M) is not None)
    check("scripts/build-static.sh: cargo build --release --locked", "exec cargo build --release --locked" in build_static)
    froms = re.findall(r"^FROM (.+)$", dockerfile, re.M)
    check("Dockerfile: the final stage is FROM scratch (nothing at run time)", bool(froms) and froms[-1].strip() == "scratch")
    check("scripts/build-static.sh: the binary is linked statically (+crt-static)", "-C target-feature=+crt-static" in build_static)
    check("Dockerfile: numeric non-root USER 65532", re.search(r"^USER 65532(:65532)?$", dockerfile, re.M) is not None)
    check("Dockerfile: no HEALTHCHECK", re.search(r"^HEALTHCHECK", dockerfile, re.M) is None)
    check("Dockerfile: OCI labels", all(f"org.opencontainers.image.{k}" in dockerfile for k in ("title", "source", "version", "revision", "licenses")))
    dockerignore = (DEPLOY.parent / ".dockerignore").read_text(encoding="utf-8").split()
    check(".dockerignore: keeps out target/ and .git", {"target", ".git"} <= set(dockerignore))
    check(".dockerignore: keeps src/, config/ and Cargo files in", not {"src", "config", "Cargo.toml", "Cargo.lock", "*"} & set(dockerignore))

    base = load_all(render / "base.yaml")
    service = load_all(render / "service.yaml")
    sidecar = load_all(render / "sidecar.yaml")
    prom = load_all(render / "prometheus.yaml")

    svc, labels, _ = shared_shape("base", base, entry_config)
    _, _, hpa = shared_shape("service", service, entry_config)
    check("service: in its own namespace", all(d["metadata"].get("namespace") == "palette-gateway" for d in service if d["kind"] not in CLUSTER_SCOPED))
    check("service: at least 2 replicas", hpa is not None and hpa["spec"]["minReplicas"] >= 2)

    # --- sidecar ---
    deps = find(sidecar, "Deployment")
    check("sidecar: one tool Deployment", len(deps) == 1)
    spec = deps[0]["spec"]["template"]["spec"]
    pod_labels = deps[0]["spec"]["template"]["metadata"]["labels"]
    gws = [c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == "palette-gateway"]
    check("sidecar: the gateway is a container of the tool's pod", len(gws) == 1)
    gw = gws[0]
    native = gw in spec.get("initContainers", [])
    check("sidecar: gateway is a native sidecar (restartPolicy Always) or a regular container",
          (native and gw.get("restartPolicy") == "Always") or not native)
    tools = [c for c in spec["containers"] if c["name"] != "palette-gateway"]
    check("sidecar: the tool container is there too", len(tools) >= 1)
    hardened("sidecar: gateway container", {}, gw)
    gports = container_ports(gw)
    cfg = mounts_and_config("sidecar", sidecar, spec, gw, entry_config)
    if cfg:
        host, port = addr_port(cfg["server"]["listen"])
        check("sidecar: proxy listens on loopback only", host == "127.0.0.1")
        anon = cfg.get("auth", {}).get("anonymous_client")
        check("sidecar: anonymous client 'sidecar' is configured", anon == "sidecar" and any(c["name"] == anon for c in cfg.get("clients", [])))
        check("sidecar: the anonymous client has no keys", all(not c.get("keys") for c in cfg.get("clients", []) if c["name"] == anon))
        _, aport = addr_port(cfg["server"]["admin_listen"])
        admin_names = [n for n, p in gports.items() if p == aport]
        check("sidecar: admin_listen is a declared container port", len(admin_names) == 1)
        probes = [http_probe_port(gw, p) for p in ("livenessProbe", "readinessProbe")]
        check("sidecar: liveness /healthz and readiness /readyz on the admin port",
              probes == [("/healthz", admin_names[0] if admin_names else None), ("/readyz", admin_names[0] if admin_names else None)])
        check("sidecar: startupProbe /startup on the admin port (every credential usable)",
              http_probe_port(gw, "startupProbe") == ("/startup", admin_names[0] if admin_names else None))
        env = [e.get("value", "") for t in tools for e in t.get("env", [])] + [a for t in tools for a in t.get("command", []) + t.get("args", [])]
        check("sidecar: the tool calls the gateway on loopback", any(f"http://127.0.0.1:{port}" in v for v in env))
        secret_volumes = {v["name"] for v in spec.get("volumes", []) if "secret" in v}
        tool_secrets = [m["name"] for t in tools for m in t.get("volumeMounts", []) if m["name"] in secret_volumes]
        tool_secrets += [e["name"] for t in tools for e in t.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})]
        tool_secrets += [str(f) for t in tools for f in t.get("envFrom", []) if "secretRef" in f]
        check("sidecar: the tool holds no Palette credential", not tool_secrets, str(tool_secrets))
    check("sidecar: terminationGracePeriodSeconds > 5s shutdown_delay", spec.get("terminationGracePeriodSeconds", 30) > 5)

    token_auth("service", service, "palette-gateway", "example-tool")
    token_auth("sidecar", sidecar, "example-tool", "example-tool")

    # --- monitoring ---
    sms = find(prom, "ServiceMonitor")
    check("prometheus: one ServiceMonitor", len(sms) == 1)
    sm = sms[0]["spec"]
    check("prometheus: ServiceMonitor selects the Service", subset(sm["selector"]["matchLabels"], svc["metadata"]["labels"]))
    sport_names = {p["name"] for p in svc["spec"]["ports"]}
    check("prometheus: ServiceMonitor scrapes /metrics on the admin port",
          all(e["port"] == "admin" and e["port"] in sport_names and e.get("path") == "/metrics" for e in sm["endpoints"]))
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules.yaml").read_text(encoding="utf-8"))
    prs = find(prom, "PrometheusRule")
    check("prometheus: PrometheusRule spec is rules.yaml", len(prs) == 1 and prs[0]["spec"] == rules)
    alerts = {r.get("alert") for g in rules["groups"] for r in g["rules"]}
    check("prometheus: the six alerts are there", {
        "PaletteGatewayDown", "PaletteGatewayTokenRenewalFailing", "PaletteGatewayCredentialExpiring",
        "PaletteGatewayUpstreamThrottled", "PaletteGatewayHighErrorRatio", "PaletteGatewayClientRateLimited"} <= alerts)
    check("prometheus: every alert has a severity, summary and description",
          all(r["labels"].get("severity") in ("critical", "warning") and {"summary", "description"} <= set(r["annotations"])
              for g in rules["groups"] for r in g["rules"] if "alert" in r))
    pm = yaml.safe_load((DEPLOY / "prometheus" / "podmonitor-sidecar.yaml").read_text(encoding="utf-8"))
    check("prometheus: PodMonitor selects the sidecar pods", subset(pm["spec"]["selector"]["matchLabels"], pod_labels))
    check("prometheus: PodMonitor scrapes the sidecar's admin port",
          all(e["port"] in gports and e.get("path") == "/metrics" for e in pm["spec"]["podMetricsEndpoints"]))

    # --- dashboard ---
    dash_text = (DEPLOY / "grafana" / "palette-gateway.json").read_text(encoding="utf-8")
    dash = json.loads(dash_text)
    cms = find(load_all(render / "grafana.yaml"), "ConfigMap")
    check("grafana: the ConfigMap (kubectl kustomize deploy/grafana) holds palette-gateway.json as it is",
          len(cms) == 1 and cms[0].get("data", {}).get("palette-gateway.json") == dash_text)
    check("grafana: the ConfigMap is labelled grafana_dashboard: \"1\" (Grafana's dashboard sidecar)",
          len(cms) == 1 and cms[0]["metadata"].get("labels", {}).get("grafana_dashboard") == "1")
    variables = dash["templating"]["list"]
    check("grafana: a datasource variable", any(v["type"] == "datasource" and v["name"] == "datasource" and v["query"] == "prometheus" for v in variables))
    panels = [p for p in dash["panels"] if p["type"] != "row"] + [p for r in dash["panels"] if r["type"] == "row" for p in r.get("panels", [])]
    check("grafana: every panel and query uses ${datasource}",
          all(p["datasource"]["uid"] == "${datasource}" and all(t["datasource"]["uid"] == "${datasource}" for t in p["targets"]) for p in panels)
          and all(v["datasource"]["uid"] == "${datasource}" for v in variables if v["type"] == "query"))
    ids = [p["id"] for p in dash["panels"]] + [p["id"] for r in dash["panels"] if r["type"] == "row" for p in r.get("panels", [])]
    check("grafana: unique panel ids and a fixed uid", len(ids) == len(set(ids)) and dash.get("uid") == "palette-gateway")
    exprs = " ".join(t["expr"] for p in panels for t in p["targets"])
    for metric in ("palette_gateway_requests_total", "palette_gateway_request_duration_seconds_bucket",
                   "palette_gateway_upstream_request_duration_seconds", "palette_gateway_rate_limited_total",
                   "palette_gateway_upstream_queue_wait_seconds_bucket", "palette_gateway_token_expiry_timestamp_seconds",
                   "palette_gateway_inflight_requests", "process_resident_memory_bytes"):
        check(f"grafana: a panel shows {metric}", metric in exprs)

    print(f"consistency: {passed} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))
