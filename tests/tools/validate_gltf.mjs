// Validates glTF/GLB files with the Khronos glTF-Validator (npm `gltf-validator`).
// usage: node validate_gltf.mjs FILE...   — exit 1 when any file has errors.
// The package is found via ORFEAS_NODE_MODULES, NODE_PATH, or the usual lookup.
import { createRequire } from "node:module";
import { readFile } from "node:fs/promises";
import path from "node:path";

const require = createRequire(import.meta.url);
const searchPaths = [process.env.ORFEAS_NODE_MODULES, ...(process.env.NODE_PATH || "").split(path.delimiter)]
  .filter(Boolean);
let validator;
try {
  validator = require(require.resolve("gltf-validator", { paths: searchPaths }));
} catch {
  validator = require("gltf-validator");
}

let failed = false;
for (const file of process.argv.slice(2)) {
  const bytes = new Uint8Array(await readFile(file));
  const report = await validator.validateBytes(bytes, {
    uri: path.basename(file),
    externalResourceFunction: (uri) => readFile(path.join(path.dirname(file), decodeURIComponent(uri))),
  });
  const issues = report.issues;
  console.log(JSON.stringify({
    file,
    errors: issues.numErrors,
    warnings: issues.numWarnings,
    messages: issues.messages.filter((m) => m.severity <= 1).slice(0, 20),
  }));
  if (issues.numErrors > 0) failed = true;
}
process.exit(failed ? 1 : 0);
