// Validates Kubernetes objects offline against the schemas the npm packages kubernetes-models,
// @kubernetes-models/istio and @kubernetes-models/prometheus-operator carry (generated from the
// Kubernetes OpenAPI and the Istio and Prometheus Operator CRDs), in two ways: each object's
// own validate() (types, enums, patterns, required fields) and the TypeScript compiler over
// the object as a literal of the model's interface, which refuses fields the schema does not
// know (what the API server's strict field validation refuses).
//
// Input: a JSON array of objects on stdin. Output: one line per problem on stdout, and exit
// status 1 if there is any; 0 and nothing printed when every object is valid.

import { readFileSync, writeFileSync, mkdtempSync, rmSync } from "node:fs";
import { execFileSync } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const docs = JSON.parse(readFileSync(0, "utf8"));
const problems = [];

/** The module path of an object's model, by its API group. */
function modelPath(apiVersion, kind) {
  const group = apiVersion.includes("/") ? apiVersion.split("/")[0] : "";
  if (group.endsWith("istio.io")) return `@kubernetes-models/istio/${apiVersion}/${kind}`;
  if (group === "monitoring.coreos.com")
    return `@kubernetes-models/prometheus-operator/${apiVersion}/${kind}`;
  return `kubernetes-models/${apiVersion}/${kind}`;
}

const typed = [];
for (const [i, doc] of docs.entries()) {
  const name = `${doc?.kind}/${doc?.metadata?.name} (${doc?.apiVersion})`;
  if (typeof doc?.apiVersion !== "string" || typeof doc?.kind !== "string") {
    problems.push(`object ${i}: no apiVersion or kind`);
    continue;
  }
  const path = modelPath(doc.apiVersion, doc.kind);
  let Model;
  try {
    Model = (await import(path))[doc.kind];
  } catch {
    problems.push(`${name}: no schema for this kind (${path})`);
    continue;
  }
  try {
    new Model(doc).validate();
  } catch (e) {
    problems.push(`${name}: ${e.message}`);
  }
  typed.push({ i, name, path, kind: doc.kind, doc });
}

// Unknown fields: the object as a literal of the model's interface.
const dir = mkdtempSync(join(here, ".check-"));
try {
  const lines = typed.map(
    (t) => `import type { I${t.kind} as T${t.i} } from "${t.path}";\nexport const o${t.i}: T${t.i} = ${JSON.stringify(t.doc)};`,
  );
  writeFileSync(join(dir, "check.ts"), lines.join("\n") + "\n");
  try {
    execFileSync(
      join(here, "node_modules/.bin/tsc"),
      ["--noEmit", "--strict", "--skipLibCheck", "--module", "esnext", "--moduleResolution", "bundler",
       "--target", "es2022", join(dir, "check.ts")],
      { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] },
    );
  } catch (e) {
    const lines = `${e.stdout}`.split("\n").filter((l) => l.includes("error"));
    for (const line of lines) {
      const m = line.match(/check\.ts\((\d+),/);
      const t = m ? typed[Math.floor((Number(m[1]) - 1) / 2)] : undefined;
      problems.push(`${t ? t.name : "?"}: ${line.replace(/^.*error /, "")}`);
    }
    // tsc failed without saying why (it did not run): that is a problem too.
    if (lines.length === 0) problems.push(`tsc failed: ${e.stdout}${e.stderr}`);
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}

for (const p of problems) console.log(p);
process.exit(problems.length ? 1 : 0);
