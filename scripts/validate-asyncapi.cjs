// Validates an AsyncAPI document with the AsyncAPI initiative's own parser
// (@asyncapi/parser: the spec's JSON schemas plus its Spectral rules), and
// fails on any error or warning. Run by `make contracts` with NODE_PATH set
// to the prefix scripts/contracts.sh installs it into:
//   node scripts/validate-asyncapi.cjs docs/asyncapi.yaml
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const { Parser, DiagnosticSeverity } = require('@asyncapi/parser');

async function main() {
  const file = process.argv[2];
  if (!file) {
    throw new Error('usage: validate-asyncapi.cjs <asyncapi.yaml>');
  }
  const source = path.resolve(file);
  const parser = new Parser();
  const { document, diagnostics } = await parser.parse(fs.readFileSync(source, 'utf8'), {
    source,
  });
  const severity = ['error', 'warning', 'information', 'hint'];
  let failed = 0;
  for (const d of diagnostics) {
    const at = d.range ? `${d.range.start.line + 1}:${d.range.start.character + 1}` : '?';
    const where = d.path && d.path.length ? d.path.join('.') : '';
    console.log(`${file}:${at}: ${severity[d.severity] ?? d.severity}: ${d.code}: ${d.message} ${where}`);
    if (d.severity <= DiagnosticSeverity.Warning) failed += 1;
  }
  if (!document || failed > 0) {
    console.log(`${file}: invalid (${failed} errors or warnings)`);
    process.exit(1);
  }
  const count = (xs) => xs.all().length;
  console.log(
    `${file}: valid AsyncAPI ${document.version()}: ${count(document.channels())} channels, ` +
      `${count(document.operations())} operations, ${count(document.messages())} messages`,
  );
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
