// Validates CloudNativePG Cluster objects (a JSON array on stdin) against the
// Cluster CRD schema, through the typed models of @kubernetes-models/cloudnative-pg
// (generated from the operator's API). Those schemas accept fields they do not
// define, as the API server would (it prunes them), so a field the validator
// never looked at is reported as unknown: a misspelt field fails here instead
// of being dropped silently. Run by validate.py.
//
//   node check-cnpg.mjs NODE_MODULES_DIR < clusters.json

import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const modules = process.argv[2];
const { Cluster } = await import(
  pathToFileURL(join(modules, "@kubernetes-models/cloudnative-pg/postgresql.cnpg.io/v1/Cluster.js"))
);

// Records every path the validator reads below `value`.
function watched(value, path, seen) {
  if (value === null || typeof value !== "object") return value;
  return new Proxy(value, {
    get(target, key) {
      if (typeof key !== "string") return target[key];
      seen.add(`${path}.${key}`);
      return watched(target[key], `${path}.${key}`, seen);
    },
  });
}

function paths(value, path, out = []) {
  if (value !== null && typeof value === "object") {
    for (const [key, child] of Object.entries(value)) {
      out.push(`${path}.${key}`);
      paths(child, `${path}.${key}`, out);
    }
  }
  return out;
}

let failed = 0;
for (const object of JSON.parse(readFileSync(0, "utf8"))) {
  const name = `Cluster/${object.metadata?.name}`;
  const problems = [];
  const cluster = new Cluster(object);
  const seen = new Set();
  cluster.spec = watched(cluster.spec, "spec", seen);
  try {
    cluster.validate();
  } catch (error) {
    problems.push(error.message);
  }
  for (const path of paths(object.spec, "spec")) {
    const parent = path.slice(0, path.lastIndexOf("."));
    if (!seen.has(path) && (parent === "spec" || seen.has(parent))) {
      problems.push(`${path}: not a field of the Cluster CRD`);
    }
  }
  for (const key of Object.keys(object)) {
    if (!["apiVersion", "kind", "metadata", "spec"].includes(key)) problems.push(`${key}: unexpected`);
  }
  if (problems.length) {
    failed++;
    console.log(`ERROR ${name}:\n  ${problems.join("\n  ")}`);
  } else {
    console.log(`ok    ${name} (postgresql.cnpg.io/v1 CRD schema)`);
  }
}
process.exit(failed ? 1 : 0);
