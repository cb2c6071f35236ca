// Validate glTF files with Khronos' glTF validator; prints one JSON report per file.
// Usage: node validate.mjs FILE.glb [...]
import { readFile } from "node:fs/promises";
import { basename } from "node:path";
import validator from "gltf-validator";

for (const file of process.argv.slice(2)) {
  const bytes = new Uint8Array(await readFile(file));
  const report = await validator.validateBytes(bytes, { uri: basename(file), maxIssues: 100 });
  console.log(JSON.stringify(report));
}
