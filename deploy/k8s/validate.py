#!/usr/bin/env python3
"""Validates the rendered overlays (make k8s-render) without a cluster.

  validate.py target/k8s/dev.yaml target/k8s/production.yaml

* Every Kubernetes object against the Kubernetes JSON schemas shipped by
  kubernetes-validate, in strict mode (unknown fields fail), for each version in
  K8S_VERSIONS (default: 1.30, the oldest supported, and 1.37). A kind without a
  schema fails too (kubernetes-validate's CLI only warns).
* CloudNativePG Clusters against the Cluster CRD schema (check-cnpg.mjs).
* RabbitmqClusters against RABBITMQ_CLUSTER below, written from the operator's
  API reference (rabbitmq.com/v1beta1), with core types from the Kubernetes
  schemas.
* The production overlay keeps what deploy/k8s/README.md promises (production()).

Needs the tools from tools.sh (run it through the venv's python: make k8s-validate).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import yaml
from kubernetes_validate import utils as kv
from referencing import Registry, Resource

HERE = Path(__file__).resolve().parent
NODE_MODULES = HERE.parent.parent / "target/k8s-tools/node/node_modules"
VERSIONS = os.environ.get("K8S_VERSIONS", "1.30 1.37").split()
SERVICES = ["order", "customer", "inventory", "reporting"]

CNPG_CLUSTER = ("postgresql.cnpg.io/v1", "Cluster")
RABBITMQ = ("rabbitmq.com/v1beta1", "RabbitmqCluster")


def core(name):
    return {"$ref": f"/api/_definitions.json#/$defs/io.k8s.api.core.v1.{name}"}


def strict(properties, required=()):
    return {"type": "object", "properties": properties, "required": list(required),
            "additionalProperties": False}


STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}

# RabbitmqCluster, rabbitmq.com/v1beta1: the fields of the operator's API
# reference (RabbitmqClusterSpec and the types it uses), with the CRD's limits.
RABBITMQ_CLUSTER = {
    "$id": "https://kubernetes.io/api/rabbitmqcluster.json",
    **strict({
        "apiVersion": {"const": "rabbitmq.com/v1beta1"},
        "kind": {"const": "RabbitmqCluster"},
        "metadata": {"$ref": "/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"},
        "spec": strict({
            "replicas": {"type": "integer", "minimum": 0},
            "image": {"type": "string"},
            "imagePullSecrets": {"type": "array", "items": core("LocalObjectReference")},
            "service": strict({
                "type": {"enum": ["ClusterIP", "LoadBalancer", "NodePort"]},
                "annotations": STRING_MAP,
                "ipFamilyPolicy": {"type": "string"},
            }),
            "persistence": strict({
                "storageClassName": {"type": "string"},
                "storage": {"$ref": "/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.api.resource.Quantity"},
            }),
            "resources": core("ResourceRequirements"),
            "affinity": core("Affinity"),
            "tolerations": {"type": "array", "items": core("Toleration")},
            "rabbitmq": strict({
                "additionalPlugins": {"type": "array", "maxItems": 100,
                                      "items": {"type": "string", "pattern": r"^\w+$", "maxLength": 100}},
                "additionalConfig": {"type": "string", "maxLength": 2000},
                "advancedConfig": {"type": "string", "maxLength": 100000},
                "envConfig": {"type": "string", "maxLength": 100000},
                "erlangInetConfig": {"type": "string", "maxLength": 2000},
            }),
            "tls": strict({
                "secretName": {"type": "string"},
                "caSecretName": {"type": "string"},
                "disableNonTLSListeners": {"type": "boolean"},
            }),
            # Patches of the operator's StatefulSet and Service: free-form here.
            "override": strict({"statefulSet": {"type": "object"}, "service": {"type": "object"}}),
            "skipPostDeploySteps": {"type": "boolean"},
            "terminationGracePeriodSeconds": {"type": "integer", "minimum": 0},
            "delayStartSeconds": {"type": "integer", "minimum": 0},
            "autoEnableAllFeatureFlags": {"type": "boolean"},
            "secretBackend": {"type": "object"},
        }),
    }, required=["apiVersion", "kind", "metadata"]),
}


def check_rabbitmq_cluster(obj):
    definitions = kv.schema_contents(
        f"kubernetes-json-schema/v{kv.latest_version()}-local-strict/_definitions.json", VERSIONS[-1])
    registry = Resource.from_contents(definitions) @ Registry()
    validator = jsonschema.Draft202012Validator(RABBITMQ_CLUSTER, registry=registry)
    problems = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(obj)]
    # rabbitmq.conf is sysctl-like: `key = value` lines.
    config = obj.get("spec", {}).get("rabbitmq", {}).get("additionalConfig", "")
    for line in config.splitlines():
        if line.strip() and not line.lstrip().startswith("#") and "=" not in line:
            problems.append(f"spec.rabbitmq.additionalConfig: {line!r} is not `key = value`")
    return problems


def kind_of(obj):
    return (obj.get("apiVersion"), obj.get("kind"))


def name_of(obj):
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def validate_file(path):
    objects = [o for o in yaml.safe_load_all(Path(path).read_text()) if o]
    errors = 0
    clusters = []
    for obj in objects:
        if kind_of(obj) == CNPG_CLUSTER:
            clusters.append(obj)
            continue
        if kind_of(obj) == RABBITMQ:
            problems = check_rabbitmq_cluster(obj)
            label = "RabbitmqCluster schema (operator API reference)"
        else:
            problems = []
            for version in VERSIONS:
                try:
                    kv.validate(obj, version, strict=True)
                except kv.ValidationError as e:
                    problems.append(f"{version}: {'.'.join(map(str, e.path))}: {e.message}")
                except kv.SchemaNotFoundError as e:
                    problems.append(e.message)
            label = f"Kubernetes {', '.join(VERSIONS)}, strict"
        errors += report(path, name_of(obj), problems, label)
    if clusters:
        result = subprocess.run(["node", str(HERE / "check-cnpg.mjs"), str(NODE_MODULES)],
                                input=json.dumps(clusters), text=True, capture_output=True)
        for line in (result.stdout + result.stderr).splitlines():
            print(f"{path}: {line}")
        errors += result.returncode != 0
    if Path(path).stem == "production":
        errors += report(path, "production overlay", production(objects), "the README's promises")
    return errors


def report(path, name, problems, label):
    if problems:
        print(f"{path}: ERROR {name}:\n  " + "\n  ".join(problems))
        return 1
    print(f"{path}: ok    {name} ({label})")
    return 0


def production(objects):
    """What the production overlay promises, per service."""
    by_kind = {}
    for obj in objects:
        by_kind.setdefault(obj["kind"], {})[obj["metadata"]["name"]] = obj
    problems = []
    rabbit = by_kind.get("RabbitmqCluster", {})
    if [c["spec"].get("replicas") for c in rabbit.values()] != [3]:
        problems.append("one RabbitmqCluster with 3 replicas")
    for service in SERVICES:
        name = f"{service}-service"
        deployment = by_kind.get("Deployment", {}).get(name)
        if not deployment:
            problems.append(f"{name}: no Deployment")
            continue
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = {e["name"]: e for e in container.get("env", [])}
        labels = deployment["spec"]["selector"]["matchLabels"]

        def need(ok, what):
            if not ok:
                problems.append(f"{name}: {what}")

        need(deployment["spec"].get("replicas", 1) >= 2, "at least 2 replicas")
        hpa = by_kind.get("HorizontalPodAutoscaler", {}).get(name, {}).get("spec", {})
        need(hpa.get("scaleTargetRef", {}).get("name") == name and hpa.get("minReplicas", 1) >= 2,
             "a HorizontalPodAutoscaler with minReplicas >= 2")
        need(any(p["spec"]["selector"].get("matchLabels") == labels
                 for p in by_kind.get("PodDisruptionBudget", {}).values()), "a PodDisruptionBudget")
        need(any(p["spec"]["podSelector"].get("matchLabels") == labels
                 and set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
                 for p in by_kind.get("NetworkPolicy", {}).values()),
             "a NetworkPolicy for ingress and egress")
        need(pod.get("topologySpreadConstraints"), "topologySpreadConstraints")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            need("grpc" in container.get(probe, {}), f"a gRPC {probe}")
        resources = container.get("resources", {})
        for kind in ("requests", "limits"):
            need({"cpu", "memory"} <= set(resources.get(kind, {})), f"cpu and memory {kind}")
        security = container.get("securityContext", {})
        need(security.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem")
        need(security.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation: false")
        need(security.get("capabilities", {}).get("drop") == ["ALL"], "capabilities dropped")
        pod_security = pod.get("securityContext", {})
        need(pod_security.get("runAsNonRoot") is True and pod_security.get("runAsUser"),
             "runAsNonRoot with a uid")
        need(pod_security.get("seccompProfile", {}).get("type") == "RuntimeDefault", "seccomp RuntimeDefault")
        # Its own database cluster, credentials from the operator's app secret.
        cluster = by_kind.get("Cluster", {}).get(f"{service}-db", {}).get("spec", {})
        initdb = cluster.get("bootstrap", {}).get("initdb", {})
        need(cluster.get("instances") in (2, 3) and initdb.get("database") == "dbps"
             and initdb.get("owner") == f"{service}_svc",
             f"a Cluster {service}-db: 2 or 3 instances, database dbps owned by {service}_svc")
        secret = env.get("DATABASE_URL", {}).get("valueFrom", {}).get("secretKeyRef", {})
        need(secret == {"name": f"{service}-db-app", "key": "uri"}, f"DATABASE_URL from {service}-db-app/uri")
        need("ADMIN_DATABASE_URL" not in env, "no superuser URL")
        users = {e.get("valueFrom", {}).get("secretKeyRef", {}).get("name") for e in env.values()}
        need({f"{r}-default-user" for r in rabbit} <= users, "AMQP credentials from <rabbitmq>-default-user")
    return problems


def main(paths):
    errors = sum(validate_file(path) for path in paths)
    print(f"{len(paths)} files: {'FAILED' if errors else 'valid'}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
