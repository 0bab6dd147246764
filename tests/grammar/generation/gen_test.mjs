// Constrained generation end to end: a seeded set of JSON Schemas (nested objects, recursion through
// $defs, enums, patterns, number bounds, arrays with minItems/maxItems, formats, anyOf, optional
// properties), each run through `mixtral run --json-schema` at temperature 0 and 1 with a random test model
// (`mixtral make-test-model`) and the built-in model (models/tiny-kjv.gguf). Every output must parse as
// JSON and validate against its schema with ajv (draft 2020-12, ajv-formats): the independent reference.
// An output cut short by -n is counted as incomplete, and the test fails on any (as on any invalid one),
// with one exception: a recursive schema lets a model descend for ever, and greedy or in-context copying
// does (`{"next": {"next": ...`), so incomplete outputs of recursive schemas are counted apart (each model
// and temperature must still complete at least one recursive run, and every completed one must validate:
// the grammar can close its recursion); they get at most 512 tokens. How many complete depends on the
// subset of schemas and the model (24-39 of 40 per model and temperature in the full release run, 3-8 of
// 8 in the sanitizer's 40-schema subset), so no larger fraction is asserted. The local part of an email address is unbounded: greedy decoding may stay in it for
// ever, and the built-in model never writes "@", so schemas with an email format run on the random model
// at temperature 1 only.
//
//   node gen_test.mjs --mixtral BIN --builtin models/tiny-kjv.gguf --workdir DIR [--count 200] [--jobs 2]
//                     [--seed 20] [--n-predict 1536] [--keep]
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';

const require = createRequire(new URL('../package.json', import.meta.url));
const Ajv2020 = require('ajv/dist/2020').default;
const addFormats = require('ajv-formats').default;

// ---- arguments ---------------------------------------------------------------------------------------
const args = { count: 200, jobs: 2, seed: 20, 'n-predict': 1536 };
for (let i = 2; i < process.argv.length; ++i) {
  const a = process.argv[i];
  if (!a.startsWith('--')) throw new Error(`unexpected argument ${a}`);
  const k = a.slice(2);
  if (k === 'keep') args.keep = true;
  else args[k] = process.argv[++i];
}
for (const k of ['mixtral', 'builtin', 'workdir'])
  if (!args[k]) throw new Error(`--${k} is required`);
const COUNT = Number(args.count), JOBS = Number(args.jobs), N_PREDICT = Number(args['n-predict']);
const t0 = Date.now();
const log = (...m) => console.log(`[${((Date.now() - t0) / 1000).toFixed(1)}s]`, ...m);

// ---- seeded schema generator --------------------------------------------------------------------------
function mulberry32(a) {
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const rnd = mulberry32(Number(args.seed));
const int = (lo, hi) => lo + Math.floor(rnd() * (hi - lo + 1));
const pick = (xs) => xs[Math.floor(rnd() * xs.length)];
const sample = (xs, k) => {
  const c = [...xs];
  for (let i = c.length - 1; i > 0; --i) {
    const j = Math.floor(rnd() * (i + 1));
    [c[i], c[j]] = [c[j], c[i]];
  }
  return c.slice(0, k);
};

const WORDS = ['alpha', 'beta', 'gamma', 'delta', 'red', 'green', 'blue', 'north', 'south', 'lamb', 'king',
  'light', 'stone', 'water', 'x', 'id', 'name', 'count', 'tags', 'value', 'kind', 'when', 'note', 'ok'];
// Anchored patterns (the string is the whole match), bounded, in the documented regex subset.
const PATTERNS = ['^[a-z]{2,5}-[0-9]{1,3}$', '^[A-Z][a-z]{0,6}$', '^(red|green|blue)$', '^\\d{3}-\\d{4}$',
  '^[a-f0-9]{4,8}$', '^(ab){1,3}c?$', '^[A-Z]{2}[0-9]{2}( [a-z]{1,4})?$', '^v[0-9]\\.[0-9]{1,2}$',
  '^[^"\\\\]{1,6}$', '^(yes|no|maybe)$', '^[a-z]{1,8}@[a-z]{1,5}\\.(com|org)$'];
const FORMATS = ['date', 'time', 'date-time', 'uuid', 'email', 'ipv4'];

function genString() {
  switch (int(0, 6)) {
    case 0: return { type: 'string', maxLength: int(0, 8) };
    case 1: { const lo = int(1, 3); return { type: 'string', minLength: lo, maxLength: lo + int(0, 6) }; }
    case 2: return { type: 'string', enum: sample(WORDS, int(1, 5)) };
    case 3: return { type: 'string', pattern: pick(PATTERNS) };
    case 4: return { type: 'string', format: pick(FORMATS) };
    case 5: return { const: pick(WORDS) };
    default: return { type: ['string', 'null'], maxLength: int(1, 6) };
  }
}

function genNumber() {
  const lo = int(-1000, 1000);
  switch (int(0, 6)) {
    case 0: return { type: 'integer', minimum: lo, maximum: lo + int(0, 2000) };
    case 1: return { type: 'integer', exclusiveMinimum: lo, exclusiveMaximum: lo + int(2, 500) };
    case 2: return { type: 'integer', minimum: int(0, 50) };
    case 3: return { type: 'number', minimum: lo / 4, maximum: lo / 4 + int(1, 300) + 0.5 };
    case 4: return { type: 'number', exclusiveMinimum: -int(0, 10) - 0.25, exclusiveMaximum: int(1, 10) + 0.75 };
    case 5: return { type: 'integer', maximum: int(-20, 20) };
    default: return { type: 'number' };
  }
}

function genScalar() {
  switch (int(0, 6)) {
    case 0: case 1: return genString();
    case 2: case 3: return genNumber();
    case 4: return { type: 'boolean' };
    case 5: return { enum: sample(['one', 2, 3.5, null, true, false, 'two words', -7], int(1, 4)) };
    default: return { type: 'null' };
  }
}

function genArray(depth) {
  const lo = int(0, 2);
  switch (int(0, 3)) {
    case 0: return { type: 'array', items: gen(depth + 1), minItems: lo, maxItems: lo + int(0, 2) };
    case 1: return { type: 'array', prefixItems: [genScalar(), genScalar()], items: false, minItems: int(0, 2) };
    case 2: return { type: 'array', items: { enum: sample(WORDS, 5) }, minItems: 1, maxItems: int(1, 4) };
    default: return { type: 'array', items: genScalar(), maxItems: int(1, 3) };
  }
}

function genObject(depth) {
  const names = sample(WORDS, int(1, depth >= 2 ? 2 : 4));
  const properties = {};
  for (const n of names) properties[n] = gen(depth + 1);
  const required = names.filter(() => rnd() < 0.6);  // the others are optional
  const o = { type: 'object', properties, additionalProperties: false };
  if (required.length) o.required = required;
  if (rnd() < 0.2) o.description = 'an annotation the compiler accepts';
  return o;
}

function gen(depth = 0) {
  if (depth >= 3) return genScalar();
  const r = rnd();
  if (r < 0.35) return genObject(depth);
  if (r < 0.55) return genArray(depth);
  if (r < 0.65) return { anyOf: [gen(depth + 1), gen(depth + 1)] };
  return genScalar();
}

// Recursive schemas through $defs (a list, a tree, nested arrays, mutual recursion): the recursive part is
// optional or bounded by maxItems, so a sentence can always end.
function genRecursive() {
  const leaf = genScalar();
  switch (int(0, 3)) {
    case 0: return {
      $defs: { node: { type: 'object', properties: { v: leaf, next: { $ref: '#/$defs/node' } }, required: ['v'],
        additionalProperties: false } }, $ref: '#/$defs/node' };
    case 1: return {
      type: 'object', properties: { root: { $ref: '#/$defs/tree' } }, required: ['root'], additionalProperties: false,
      $defs: { tree: { type: 'object', properties: { name: { type: 'string', maxLength: 4 },
        kids: { type: 'array', items: { $ref: '#/$defs/tree' }, maxItems: 2 } }, required: ['name'],
      additionalProperties: false } } };
    case 2: return {
      $defs: { e: { anyOf: [{ type: 'integer', minimum: 0, maximum: 9 },
        { type: 'array', items: { $ref: '#/$defs/e' }, minItems: 1, maxItems: 2 }] } }, $ref: '#/$defs/e' };
    default: return {
      $defs: { a: { type: 'object', properties: { b: { $ref: '#/$defs/b' }, x: leaf }, additionalProperties: false },
        b: { anyOf: [{ type: 'null' }, { $ref: '#/$defs/a' }] } }, $ref: '#/$defs/a' };
  }
}

const schemas = [], recursive = [];
for (let i = 0; i < COUNT; ++i) {
  recursive.push(i % 5 === 4);
  schemas.push(recursive[i] ? genRecursive() : gen(0));
}

// ---- models --------------------------------------------------------------------------------------------
const WORK = path.resolve(args.workdir);
fs.mkdirSync(WORK, { recursive: true });
const randomDir = path.join(WORK, 'random');
const randomModel = path.join(randomDir, 'gguf-merged-q8_0.gguf');
if (!fs.existsSync(randomModel)) {
  const mk = spawnSync(args.mixtral, ['make-test-model', randomDir, '--types', 'q8_0', '--layouts', 'gguf-merged',
    '--dim', '64', '--ffn', '128', '--layers', '2', '--heads', '4', '--kv-heads', '2', '--vocab', '512',
    '--seed', '7', '--threads', '2'], { stdio: 'inherit' });
  if (mk.status !== 0) throw new Error('make-test-model failed');
}
// [name, file, most tokens per output]: -n, capped by the context (the built-in model's is 1024).
const models = [['random', randomModel, N_PREDICT], ['tiny-kjv', path.resolve(args.builtin), Math.min(N_PREDICT, 1020)]];

const schemaDir = path.join(WORK, 'schemas');
fs.rmSync(schemaDir, { recursive: true, force: true });
fs.mkdirSync(schemaDir, { recursive: true });
schemas.forEach((s, i) => fs.writeFileSync(path.join(schemaDir, `${i}.json`), JSON.stringify(s)));

// ---- the command line's contract: errors, the -n warning, --grammar, bench's fields ----------------------
const BUILTIN = path.resolve(args.builtin);
const cli = (argv) => spawnSync(args.mixtral, argv, { encoding: 'utf8' });
const failures = [];
const expect = (cond, what, r) => {
  if (!cond) failures.push(`cli: ${what}${r ? `: exit ${r.status}, stdout ${JSON.stringify(r.stdout)}, stderr ${JSON.stringify(r.stderr)}` : ''}`);
};
{
  const good = path.join(WORK, 'good.json'), bad = path.join(WORK, 'unsupported.json');
  const gbnf = path.join(WORK, 'bad.gbnf'), tuple = path.join(WORK, 'tuple.gbnf');
  fs.writeFileSync(good, JSON.stringify({ type: 'object', properties: { a: { type: 'integer', minimum: 0, maximum: 9 } },
    required: ['a'], additionalProperties: false }));
  fs.writeFileSync(bad, JSON.stringify({ type: 'object', properties: { a: { type: 'object', patternProperties: { x: {} } } } }));
  fs.writeFileSync(gbnf, 'root ::= "a" missing\n');
  fs.writeFileSync(tuple, 'root ::= "(" [a-e]{1,4} ("," [0-9]{1,2}){0,3} ")"\n');
  const base = ['run', '-m', BUILTIN, '--prompt-tokens', '1', '-t', '1'];
  let r = cli([...base, '--json-schema', good, '--grammar', tuple]);
  expect(r.status === 2 && /excludes/.test(r.stderr), 'both --json-schema and --grammar: usage error (2)', r);
  r = cli([...base, '--json-schema', bad]);
  expect(r.status === 1 && r.stderr.trim().split('\n').length === 1 && r.stderr.includes(bad) &&
    r.stderr.includes('patternProperties') && r.stderr.includes('/properties/a/patternProperties'),
  'unsupported keyword: one line naming the file, the keyword and its pointer (exit 1)', r);
  r = cli([...base, '--grammar', gbnf]);
  expect(r.status === 1 && r.stderr.includes(gbnf) && /line 1 col \d+/.test(r.stderr) && r.stderr.includes('missing'),
    'GBNF error: the file, line and column (exit 1)', r);
  r = cli([...base, '--json-schema', path.join(WORK, 'absent.json')]);
  expect(r.status === 1 && r.stderr.includes('absent.json'), 'missing file: named (exit 1)', r);
  r = cli([...base, '--json-schema', good, '-n', '2', '--temp', '0']);
  expect(r.status === 0 && /incomplete/.test(r.stderr) && r.stdout.length > 0 && '{"a":'.startsWith(r.stdout.replace(/\s/g, '').slice(0, 5)),
    '-n cutting the output short: a warning on stderr', r);
  for (let seed = 0; seed < 4; ++seed) {
    r = cli([...base, '--grammar', tuple, '--temp', '1.5', '--seed', String(seed)]);
    expect(r.status === 0 && /^\([a-e]{1,4}(,[0-9]{1,2}){0,3}\)$/.test(r.stdout) && r.stderr === '',
      `--grammar: output is exactly one sentence (seed ${seed})`, r);
  }
  r = cli([...base, '--json-schema', good, '--ids', '--temp', '0']);
  expect(r.status === 0 && /^\[[0-9,]+\]\n$/.test(r.stdout), '--ids with a schema: the ids alone', r);
  r = cli(['bench', '-m', BUILTIN, '-p', '0', '-n', '8', '-r', '2', '-t', '1', '--no-bandwidth', '--json', '--json-schema', good]);
  let j = {};
  try { j = JSON.parse(r.stdout.trim().split('\n').pop()); } catch { /* reported below */ }
  expect(r.status === 0 && j.tg_tps_constrained > 0 && j.tg_tps_sampled > 0 &&
    Math.abs(j.constrained_ratio - j.tg_tps_constrained / j.tg_tps_sampled) < 1e-3 * j.constrained_ratio + 1e-4 &&
    j.grammar_us_median > 0 && j.grammar_us_p99 >= j.grammar_us_median && /constrained by/.test(r.stdout),
  'bench --json-schema: tg_tps_constrained, constrained_ratio and the grammar time', r);
  r = cli(['bench', '-m', BUILTIN, '-p', '4', '-n', '0', '--no-bandwidth', '--json-schema', good]);
  expect(r.status === 2, 'bench --json-schema with -n 0: usage error', r);
  log(`command-line checks: ${failures.length} failed`);
}

// ---- runs (JOBS at a time) -----------------------------------------------------------------------------
function runOne(job) {
  return new Promise((resolve) => {
    const argv = ['run', '-m', job.model, '--prompt-tokens', '1', '--json-schema', job.file, '-n', String(job.n),
      '--temp', String(job.temp), '--seed', String(job.seed), '-t', '1', '--no-repack'];
    const p = spawn(args.mixtral, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
    const out = [], err = [];
    p.stdout.on('data', (d) => out.push(d));
    p.stderr.on('data', (d) => err.push(d));
    p.on('close', (code) => resolve({ ...job, code, stdout: Buffer.concat(out).toString('utf8'),
      stderr: Buffer.concat(err).toString('utf8'), argv }));
  });
}

const jobs = [];
for (const [mname, model, n] of models)
  for (const temp of [0, 1])
    schemas.forEach((schema, i) => {
      if ((mname === 'tiny-kjv' || temp === 0) && JSON.stringify(schema).includes('"email"')) return;
      jobs.push({ mname, model, n: recursive[i] ? Math.min(n, 512) : n, temp, i, schema, seed: 1000 + i, file: path.join(schemaDir, `${i}.json`) });
    });

const results = [];
let next = 0;
async function worker() {
  while (next < jobs.length) results.push(await runOne(jobs[next++]));
}
await Promise.all(Array.from({ length: JOBS }, worker));

// ---- validation ----------------------------------------------------------------------------------------
const ajv = new Ajv2020({ strict: false, allErrors: true });
addFormats(ajv);
const validators = schemas.map((s) => ajv.compile(s));
const tally = {};
let tokens = 0;
for (const r of results.sort((a, b) => a.i - b.i)) {
  const key = `${r.mname} temp ${r.temp}`;
  const t = (tally[key] ??= { valid: 0, invalid: 0, incomplete: 0, error: 0, recursive: 0, recursive_done: 0,
    recursive_incomplete: 0 });
  if (recursive[r.i]) ++t.recursive;
  const show = () => `schema ${r.i} ${JSON.stringify(r.schema)}\n    output ${JSON.stringify(r.stdout)}` +
    `\n    ${r.stderr.trim()}\n    ${args.mixtral} ${r.argv.join(' ')}`;
  if (r.code !== 0) {
    ++t.error;
    failures.push(`${key}: exit ${r.code}: ${show()}`);
    continue;
  }
  if (/incomplete/.test(r.stderr) && recursive[r.i]) {
    ++t.recursive_incomplete;
    continue;
  }
  if (recursive[r.i]) ++t.recursive_done;
  if (/incomplete/.test(r.stderr)) {
    ++t.incomplete;
    failures.push(`${key}: incomplete at -n ${r.n}: ${show()}`);
    continue;
  }
  tokens += r.stdout.length;
  let value;
  try {
    value = JSON.parse(r.stdout);
  } catch (e) {
    ++t.invalid;
    failures.push(`${key}: not JSON (${e.message}): ${show()}`);
    continue;
  }
  if (validators[r.i](value)) {
    ++t.valid;
  } else {
    ++t.invalid;
    failures.push(`${key}: invalid (${ajv.errorsText(validators[r.i].errors)}): ${show()}`);
  }
}
for (const [k, t] of Object.entries(tally)) {
  log(`${k}: ${t.valid} valid, ${t.invalid} invalid, ${t.incomplete} incomplete, ${t.error} errors; ` +
      `recursive schemas: ${t.recursive_done} of ${t.recursive} complete, ${t.recursive_incomplete} still ` +
      `descending at the token limit`);
  if (t.recursive > 0 && t.recursive_done === 0)
    failures.push(`${k}: none of ${t.recursive} recursive runs completed`);
}
log(`${results.length} runs, ${tokens} output bytes`);
if (!args.keep) fs.rmSync(schemaDir, { recursive: true, force: true });
if (failures.length) {
  for (const f of failures.slice(0, 20)) console.log('FAIL', f);
  if (failures.length > 20) console.log(`... and ${failures.length - 20} more`);
  process.exit(1);
}
log(`ok: all ${results.length} outputs parse and validate`);
