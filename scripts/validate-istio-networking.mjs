// Validates Istio networking resources (DestinationRule, ServiceEntry) against
// Istio's CRD schemas as @kubernetes-models/istio compiles them (types, enums,
// required fields, patterns). Those schemas do not refuse unknown fields:
// scripts/check_manifests.py refuses them itself (ISTIO_NETWORKING_FIELDS).
//
//   node scripts/validate-istio-networking.mjs MODULES_DIR FILE.json
//
// FILE.json: a list of {origin, doc}. Prints one line per problem; exit 1 if any.
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";
import { join } from "node:path";

const [modules, file] = process.argv.slice(2);
if (!modules || !file) {
  console.error("usage: validate-istio-networking.mjs MODULES_DIR FILE.json");
  process.exit(2);
}
const KINDS = new Set(["DestinationRule", "ServiceEntry"]);
const items = JSON.parse(readFileSync(file, "utf8"));
let problems = 0;
for (const { origin, doc } of items) {
  const [group, version] = String(doc.apiVersion || "").split("/");
  const where = `${origin}: ${doc.kind} ${doc.metadata?.namespace ?? ""}/${doc.metadata?.name ?? ""}`;
  if (group !== "networking.istio.io" || !KINDS.has(doc.kind)) {
    console.log(`${where}: no schema here for ${doc.apiVersion} ${doc.kind}`);
    problems++;
    continue;
  }
  const path = join(modules, "node_modules/@kubernetes-models/istio", group, version, `${doc.kind}.js`);
  let model;
  try {
    model = await import(pathToFileURL(path).href);
  } catch (e) {
    console.log(`${where}: no schema for ${doc.apiVersion} (${e.message})`);
    problems++;
    continue;
  }
  try {
    new model[doc.kind](doc).validate();
    console.log(`ok ${where}`);
  } catch (e) {
    console.log(`${where}: ${e.message}`);
    problems++;
  }
}
process.exit(problems ? 1 : 0);
