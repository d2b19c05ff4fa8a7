#!/usr/bin/env python3
"""The manifests agree with the binaries.

  check-env.py [--bin-dir target/debug] target/k8s/dev.yaml target/k8s/production.yaml docker-compose.yml

For every container that runs one of the service binaries (its command), in the
rendered overlays and in docker-compose.yml:

* every environment variable it sets is one the binary accepts: `<binary> --help`
  lists them (`[env: NAME]`), plus RUST_LOG (read by the log filter, not a flag).
  A variable the binary does not read is allowed only when another variable of
  the same container expands it (`$(NAME)`, Kubernetes' syntax), as AMQP_URL
  does with the RabbitMQ operator's credentials; `envFrom` is refused (its names
  cannot be checked);
* the container's `grpc` and `metrics` ports, and the port of every gRPC probe,
  are those of GRPC_ADDR and METRICS_ADDR (or the binary's defaults);
* every Service in front of it targets one of its ports;
* every `*_ADDR` URL (reporting's ORDER_ADDR, ...) names a Service that routes
  to that service's gRPC port, and the NetworkPolicies let the call out and in.

Needs the debug binaries (cargo build -p order-service -p customer-service
-p inventory-service -p reporting-service) and PyYAML.
"""

import argparse
import re
import subprocess
import sys
from pathlib import Path

import yaml

BINARIES = ["order-service", "customer-service", "inventory-service", "reporting-service"]
# Read by the binaries outside their flags: RUST_LOG by the tracing filter
# (services/platform/src/telemetry.rs).
ALSO_READ = {"RUST_LOG"}
# Subcommands that serve no gRPC: their ports are not checked.
NOT_SERVING = {"bootstrap", "healthcheck", "relay", "rebuild"}

failures = []
passes = 0


def check(ok, where, message):
    global passes
    if ok:
        passes += 1
    else:
        failures.append(f"{where}: {message}")
    return ok


def accepted(bin_dir):
    """Per binary: the variables it reads and their defaults, from --help."""
    result = {}
    for binary in BINARIES:
        text = subprocess.run([str(Path(bin_dir) / binary), "--help"], env={},
                              capture_output=True, text=True, check=True).stdout
        names = set(re.findall(r"\[env: ([A-Za-z0-9_]+)", text))
        if not names:
            sys.exit(f"{binary} --help lists no [env: ...]: has its output changed?")
        defaults = dict(re.findall(r"\[env: ([A-Za-z0-9_]+)=?\]\s*\[default: ([^\]]+)\]", text))
        result[binary] = (names | ALSO_READ, defaults)
    return result


def port_of(addr):
    match = re.search(r":(\d+)/?$", addr or "")
    return int(match.group(1)) if match else None


def pod_specs(obj):
    """(pod labels, pod spec) of a workload, or None."""
    spec = obj.get("spec", {})
    kind = obj.get("kind")
    if kind == "Pod":
        return obj.get("metadata", {}).get("labels", {}), spec
    if kind == "CronJob":
        spec = spec.get("jobTemplate", {}).get("spec", {})
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"):
        template = spec.get("template", {})
        return template.get("metadata", {}).get("labels", {}), template.get("spec", {})
    return None


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_manifest(path, binaries):
    objects = [o for o in yaml.safe_load_all(Path(path).read_text()) if o]
    services = [o for o in objects if o.get("kind") == "Service"]
    policies = [o for o in objects if o.get("kind") == "NetworkPolicy"]
    servers = {}  # Service name -> (pod labels, gRPC port) of the binary behind it
    calls = []  # (where, caller labels, URL)
    for obj in objects:
        pod = pod_specs(obj)
        if not pod:
            continue
        labels, spec = pod
        for container in spec.get("initContainers", []) + spec.get("containers", []):
            binary = (container.get("command") or [None])[0]
            if binary not in binaries:
                continue
            where = f"{path}: {obj['kind']}/{obj['metadata']['name']} {container['name']} ({binary})"
            names, defaults = binaries[binary]
            env = {e["name"]: e for e in container.get("env", [])}
            check("envFrom" not in container, where, "envFrom: list the variables in env, so they can be checked")
            expanded = set()
            for text in [e.get("value", "") for e in env.values()] + container.get("args", []):
                expanded |= set(re.findall(r"\$\(([A-Za-z0-9_]+)\)", str(text)))
            for name in env:
                check(name in names or name in expanded, where,
                      f"{name} is not accepted by {binary} (see `{binary} --help`) nor expanded by another variable")

            args = container.get("args") or []
            if args and args[0] in NOT_SERVING:
                continue
            grpc = port_of(env.get("GRPC_ADDR", {}).get("value") or defaults.get("GRPC_ADDR"))
            metrics_addr = env.get("METRICS_ADDR", {}).get("value") or defaults.get("METRICS_ADDR")
            ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
            check(ports.get("grpc") == grpc, where, f"port `grpc` is {ports.get('grpc')}, GRPC_ADDR's is {grpc}")
            if metrics_addr != "off":
                metrics = port_of(metrics_addr)
                check(ports.get("metrics") == metrics, where,
                      f"port `metrics` is {ports.get('metrics')}, METRICS_ADDR's is {metrics}")
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if probe in container:
                    probe_port = container[probe].get("grpc", {}).get("port")
                    check(probe_port == grpc, where, f"{probe} asks port {probe_port}, gRPC listens on {grpc}")
            for service in services:
                if not matches(service["spec"].get("selector"), labels):
                    continue
                for port in service["spec"].get("ports", []):
                    target = port.get("targetPort", port["port"])
                    resolved = ports.get(target) if isinstance(target, str) else target
                    check(resolved in ports.values(), where,
                          f"Service/{service['metadata']['name']} port {port['port']} targets {target}, not a port of it")
                    if resolved == grpc:
                        servers[service["metadata"]["name"]] = (labels, grpc, port["port"])
            for policy in policies:
                if matches(policy["spec"]["podSelector"].get("matchLabels"), labels):
                    check(allows(policy, "ingress", None, grpc), where,
                          f"NetworkPolicy/{policy['metadata']['name']} lets no client reach gRPC port {grpc}")
            for name, var in env.items():
                if name.endswith("_ADDR") and name not in ("GRPC_ADDR", "METRICS_ADDR"):
                    calls.append((f"{where} {name}", labels, var.get("value", "")))

    for where, caller, url in calls:
        match = re.fullmatch(r"https?://([a-z0-9-]+)(?:\.[a-z0-9.-]+)?:(\d+)/?", url)
        if not check(match, where, f"{url!r} is not http://<service>:<port>"):
            continue
        host, port = match.group(1), int(match.group(2))
        if not check(host in servers, where, f"{host} is no Service in front of a service's gRPC port"):
            continue
        labels, grpc, service_port = servers[host]
        check(port == service_port, where, f"{host} serves gRPC on port {service_port}, not {port}")
        for policy in policies:
            if matches(policy["spec"]["podSelector"].get("matchLabels"), caller):
                check(allows(policy, "egress", labels, grpc), where,
                      f"NetworkPolicy/{policy['metadata']['name']} does not let it reach {host}:{grpc}")


def allows(policy, direction, peer_labels, port):
    """Whether `policy` lets traffic to `port` through in `direction` (to a pod
    with `peer_labels` when given; any source for ingress)."""
    spec = policy["spec"]
    if direction.capitalize() not in spec.get("policyTypes", ["Ingress"]):
        return True
    for rule in spec.get(direction, []):
        peers = rule.get("to" if direction == "egress" else "from")
        if peer_labels is not None and peers is not None and not any(
                "namespaceSelector" not in p and matches(p.get("podSelector", {}).get("matchLabels"), peer_labels)
                for p in peers):
            continue
        if "ports" not in rule or any(p.get("port") == port for p in rule["ports"]):
            return True
    return False


def check_compose(path, binaries):
    compose = yaml.safe_load(Path(path).read_text())
    for name, service in compose.get("services", {}).items():
        binary = (service.get("command") or [None])[0]
        if binary not in binaries:
            continue
        where = f"{path}: {name} ({binary})"
        names, defaults = binaries[binary]
        env = service.get("environment", {})
        for var in env:
            check(var in names, where, f"{var} is not accepted by {binary} (see `{binary} --help`)")
        published = {int(str(p).split(":")[-1]) for p in service.get("ports", [])}
        for var in ("GRPC_ADDR", "METRICS_ADDR"):
            port = port_of(env.get(var) or defaults.get(var))
            check(port in published, where, f"{var} port {port} is not among the published ports {sorted(published)}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin-dir", default="target/debug")
    parser.add_argument("files", nargs="+", help="rendered manifests, or a docker-compose.yml")
    args = parser.parse_args()
    binaries = accepted(args.bin_dir)
    for path in args.files:
        if Path(path).name.startswith("docker-compose"):
            check_compose(path, binaries)
        else:
            check_manifest(path, binaries)
    for failure in failures:
        print(f"FAIL {failure}")
    print(f"check-env: {passes} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
