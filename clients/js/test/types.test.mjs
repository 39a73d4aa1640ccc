// The package as published: its types check against a use of every request (tsc --noEmit),
// every export of nanachat.js is declared in nanachat.d.ts, and `npm pack` ships what it must.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import * as lib from '../nanachat.js';

const PKG = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const TSC = path.join(PKG, 'node_modules/typescript/bin/tsc');

test('nanachat.d.ts: a use of the whole API type-checks, and misuses do not', () => {
  assert.ok(existsSync(TSC), 'typescript is installed (scripts/setup-peers: npm ci in clients/js)');
  try {
    execFileSync(process.execPath, [TSC, '--noEmit', '-p', path.join(PKG, 'test/types/tsconfig.json')], { encoding: 'utf8', timeout: 60000 });
  } catch (err) {
    assert.fail(`tsc --noEmit failed:\n${err.stdout}${err.stderr}`);
  }
});

test('every export of nanachat.js is declared in nanachat.d.ts, and every method of Client', () => {
  const dts = readFileSync(path.join(PKG, 'nanachat.d.ts'), 'utf8');
  for (const name of Object.keys(lib)) {
    assert.match(dts, new RegExp(`export (const|function|class) ${name}\\b`), `${name} is declared`);
  }
  const client = dts.slice(dts.indexOf('export class Client'));
  for (const method of Object.getOwnPropertyNames(lib.Client.prototype)) {
    if (method === 'constructor') continue;
    assert.match(client, new RegExp(`\\n  (readonly )?${method}\\b`), `Client.${method} is declared`);
  }
});

test('npm pack: the package holds the module, its types, README and LICENSE, and no dependency', () => {
  const pkg = JSON.parse(readFileSync(path.join(PKG, 'package.json'), 'utf8'));
  assert.equal(pkg.dependencies, undefined, 'no runtime dependency');
  assert.equal(pkg.exports['.'].types, './nanachat.d.ts');
  assert.equal(pkg.exports['.'].default, './nanachat.js');
  assert.ok(pkg.name && pkg.version && pkg.license);
  const [packed] = JSON.parse(execFileSync('npm', ['pack', '--dry-run', '--json'], { cwd: PKG, encoding: 'utf8', timeout: 60000 }));
  const files = packed.files.map((f) => f.path).sort();
  assert.deepEqual(files, ['LICENSE', 'README.md', 'nanachat.d.ts', 'nanachat.js', 'package.json']);
});
