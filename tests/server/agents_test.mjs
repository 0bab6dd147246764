// Agents and real clients against `mixtral serve` (issue 20): run by ctest as
//   node agents_test.mjs --mixtral BIN --workdir DIR [--kjv models/tiny-kjv.gguf]
// The models are random (or tiny), so the checks are on structure: every constrained answer parses and
// validates against its JSON Schema with ajv (an independent validator), tool calls name an offered tool and
// carry arguments valid for its parameters, streams reassemble into the non-streamed answer, the Responses
// API sends the objects and events the clients read, and every client call of the issue succeeds end to end
// (openai v6, @langchain/openai, @llamaindex/openai, the Vercel AI SDK). Bad inputs answer 400 with `param`
// and the server stays up. Each section runs even when an earlier one failed; the exit status is 1 if any
// failed.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import Ajv2020 from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';
import OpenAI from 'openai';
import { zodResponseFormat, zodFunction, zodTextFormat } from 'openai/helpers/zod';
import { z } from 'zod';
import { ChatOpenAI } from '@langchain/openai';
import { tool as lcTool } from '@langchain/core/tools';
import { HumanMessage, AIMessage, ToolMessage, SystemMessage } from '@langchain/core/messages';
import { ChatPromptTemplate, MessagesPlaceholder } from '@langchain/core/prompts';
import { OpenAI as LlamaOpenAI } from '@llamaindex/openai';
import { tool as liTool } from '@llamaindex/core/tools';
import { generateObject, generateText, streamText, streamObject, tool as aiTool, stepCountIs } from 'ai';
import { createOpenAICompatible } from '@ai-sdk/openai-compatible';
import { createOpenAI } from '@ai-sdk/openai';
import { arg, hasArg, log, makeTestModel, post, startServer as start } from './harness.mjs';

const BIN = arg('--mixtral');
const WORK = arg('--workdir');
const KJV = hasArg('--kjv') ? arg('--kjv') : null;
// --quick (the sanitizer build): one sampled seed per schema instead of two, no second model.
const QUICK = hasArg('--quick');
globalThis.AI_SDK_LOG_WARNINGS = false;

// ---- harness: sections run independently; failures are counted and reported at the end -------------
const failed = [];
let passed = 0;
let srv = null;  // the main server; restarted on the same port if a section crashed it
async function section(name, fn) {
  const ts = Date.now();
  try {
    await fn();
    if (srv && srv.proc.exitCode === null && srv.proc.signalCode === null) await fetch(`${srv.base}/health`);
    ++passed;
    log(`ok   ${name} (${Date.now() - ts} ms)`);
  } catch (e) {
    failed.push(name);
    log(`FAIL ${name}: ${String(e?.stack ?? e).split('\n').slice(0, 6).join('\n     ')}`);
  }
  if (srv && (srv.proc.exitCode !== null || srv.proc.signalCode !== null)) {
    const { code, sig } = await srv.exited;
    if (!name.includes('shutdown')) {
      failed.push(`server died in "${name}" (exit ${code}, signal ${sig})`);
      log(`server died in "${name}" (exit ${code}, signal ${sig}); its stderr ends:\n${srv.stderr().slice(-2000)}`);
      srv = await startServer(srv.model, srv.extra, srv.port);
    }
  }
}

const startServer = (model, extra = [], port = 0) => start(BIN, model, extra, { port });

// POST with stream: true; returns the SSE events as [{event, data}] (data parsed; '[DONE]' kept as a string).
async function postSSE(base, p, body) {
  const r = await fetch(base + p, { method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ ...body, stream: true }) });
  const text = await r.text();
  assert.equal(r.status, 200, text);
  assert.match(r.headers.get('content-type') ?? '', /text\/event-stream/);
  const events = [];
  for (const block of text.split(/\n\n/)) {
    if (!block.trim()) continue;
    let event = null, data = '';
    for (const line of block.split('\n')) {
      if (line.startsWith('event:')) event = line.slice(6).trim();
      else if (line.startsWith('data:')) data += line.slice(5).trim();
    }
    events.push({ event, data: data === '[DONE]' ? data : JSON.parse(data) });
  }
  return events;
}

function assertBadRequest(res, param, what) {
  assert.equal(res.status, 400, `${what}: status ${res.status} for ${res.text}`);
  const e = res.json?.error;
  assert.ok(e && typeof e.message === 'string' && e.message.length > 0, `${what}: error body ${res.text}`);
  for (const k of ['type', 'param', 'code']) assert.ok(k in e, `${what}: error.${k} in ${res.text}`);
  if (param instanceof RegExp) assert.match(String(e.param), param, `${what}: param of ${res.text}`);
  else assert.equal(e.param, param, `${what}: param of ${res.text}`);
  return e;
}

// ---- JSON Schema validation (ajv: draft 2020-12 and draft-07 spellings) ----------------------------
const ajv = new Ajv2020({ strict: false, allErrors: true, validateFormats: true });
addFormats(ajv);
const ajv07 = new (await import('ajv')).default({ strict: false, allErrors: true });
addFormats(ajv07);
function validate(schema, value, what) {
  const { $schema, ...rest } = schema;
  const v = ($schema ?? '').includes('draft-07') ? ajv07.compile(rest) : ajv.compile(rest);
  assert.ok(v(value), `${what}: ${JSON.stringify(value)} fails its schema: ${ajv.errorsText(v.errors)}`);
}
function parseValid(schema, text, what) {
  let value;
  try { value = JSON.parse(text); } catch (e) { assert.fail(`${what}: not JSON: ${JSON.stringify(text)} (${e.message})`); }
  validate(schema, value, what);
  return value;
}

// Tool calls of a chat message: ids of 9 [a-zA-Z0-9], type function, an offered name (or `only`), arguments
// a JSON string valid for that tool's parameters.
const CALL_ID = /^[a-zA-Z0-9]{9}$/;
function checkCalls(calls, tools, what, only = null) {
  assert.ok(Array.isArray(calls) && calls.length >= 1, `${what}: tool_calls ${JSON.stringify(calls)}`);
  const ids = new Set();
  for (const c of calls) {
    assert.match(c.id, CALL_ID, `${what}: call id`);
    assert.ok(!ids.has(c.id), `${what}: unique call ids`);
    ids.add(c.id);
    assert.equal(c.type, 'function', what);
    const t = tools.find((x) => x.function.name === c.function.name);
    assert.ok(t, `${what}: call names an offered tool: ${c.function.name}`);
    if (only) assert.equal(c.function.name, only, `${what}: the named tool`);
    assert.equal(typeof c.function.arguments, 'string', what);
    parseValid(t.function.parameters, c.function.arguments, `${what}: arguments of ${c.function.name}`);
  }
}

// ---- schemas (bounded, so that a random model ends them within max_tokens) -------------------------
const SCHEMAS = [
  { name: 'flat', schema: { type: 'object', properties: { ok: { type: 'boolean' }, n: { type: 'integer', minimum: 0, maximum: 99 } }, required: ['ok', 'n'], additionalProperties: false } },
  { name: 'enum-const', schema: { type: 'object', properties: { color: { enum: ['red', 'green', 'blue'] }, v: { const: 'x1' }, k: { type: 'string', enum: ['a b', 'é"\\'] } }, required: ['color', 'v', 'k'], additionalProperties: false } },
  { name: 'nested', schema: { type: 'object', properties: { user: { type: 'object', properties: { name: { type: 'string', minLength: 1, maxLength: 8 }, age: { type: 'integer', minimum: 18, maximum: 30 } }, required: ['name', 'age'], additionalProperties: false }, active: { type: 'boolean' } }, required: ['user', 'active'], additionalProperties: false } },
  { name: 'array-bounds', schema: { type: 'array', items: { type: 'integer', minimum: -5, maximum: 5 }, minItems: 2, maxItems: 4 } },
  { name: 'number-bounds', schema: { type: 'object', properties: { x: { type: 'number', minimum: -1.5, maximum: 2.25 }, y: { type: 'number', exclusiveMinimum: 0, exclusiveMaximum: 1 }, z: { type: 'integer', exclusiveMinimum: 3, exclusiveMaximum: 7 } }, required: ['x', 'y', 'z'], additionalProperties: false } },
  { name: 'pattern-format', schema: { type: 'object', properties: { code: { type: 'string', pattern: '^[A-Z]{2}-[0-9]{3}$' }, day: { type: 'string', format: 'date' }, id: { type: 'string', format: 'uuid' } }, required: ['code', 'day', 'id'], additionalProperties: false } },
  { name: 'anyOf-nullable', schema: { type: 'object', properties: { v: { anyOf: [{ type: 'integer', minimum: 0, maximum: 9 }, { type: 'string', maxLength: 4 }, { type: 'null' }] }, w: { type: ['boolean', 'null'] } }, required: ['v', 'w'], additionalProperties: false } },
  { name: 'ref-recursive', schema: { $defs: { node: { type: 'object', properties: { v: { type: 'integer', minimum: 0, maximum: 9 }, next: { anyOf: [{ $ref: '#/$defs/node' }, { type: 'null' }] } }, required: ['v', 'next'], additionalProperties: false } }, $ref: '#/$defs/node' } },
  { name: 'prefixItems-unique', schema: { type: 'object', properties: { pair: { type: 'array', prefixItems: [{ type: 'string', maxLength: 3 }, { type: 'boolean' }], items: false }, tags: { type: 'array', items: { enum: ['a', 'b', 'c'] }, uniqueItems: true, maxItems: 3 } }, required: ['pair', 'tags'], additionalProperties: false } },
  // Not strict (strict closes each allOf member, and their intersection would be empty); closed at the top.
  { name: 'allOf-draft07', strict: false, schema: { $schema: 'http://json-schema.org/draft-07/schema#', definitions: { base: { type: 'object', properties: { id: { type: 'integer', minimum: 1, maximum: 5 } }, required: ['id'] } }, type: 'object', properties: { id: {}, tag: {} }, additionalProperties: false, allOf: [{ $ref: '#/definitions/base' }, { type: 'object', properties: { tag: { enum: ['x', 'y'] } }, required: ['tag'] }] } },
  // What zod 4 emits for z.number().int(): bounds at +-(2^53 - 1); annotations everywhere (LangChain).
  { name: 'zod-int-annotations', schema: { $schema: 'https://json-schema.org/draft/2020-12/schema', title: 'T', description: 'd', type: 'object', properties: { n: { type: 'integer', minimum: -9007199254740991, maximum: 9007199254740991, title: 'n', description: 'a number', examples: [1] }, s: { type: 'string', maxLength: 6, default: 'x', $comment: 'c' } }, required: ['n', 's'], additionalProperties: false } },
];

const WEATHER = { type: 'object', properties: { city: { type: 'string', minLength: 1, maxLength: 10 }, unit: { type: 'string', enum: ['c', 'f'] } }, required: ['city', 'unit'], additionalProperties: false };
const TOOLS = [
  { type: 'function', function: { name: 'get_weather', description: 'Current weather in a city', parameters: WEATHER } },
  { type: 'function', function: { name: 'add', description: 'Adds two small integers', parameters: { type: 'object', properties: { a: { type: 'integer', minimum: 0, maximum: 99 }, b: { type: 'integer', minimum: 0, maximum: 99 } }, required: ['a', 'b'], additionalProperties: false } } },
];

// The same tools in the Responses API's flat form, and the text of a response's message items.
const RTOOLS = TOOLS.map((t) => ({ type: 'function', ...t.function }));
const outText = (o) => o.output.filter((i) => i.type === 'message').flatMap((i) => i.content).map((p) => p.text).join('');

// ---- model and server ------------------------------------------------------------------------------
fs.rmSync(WORK, { recursive: true, force: true });
fs.mkdirSync(WORK, { recursive: true });
const MODEL = makeTestModel(BIN, WORK);
srv = await startServer(MODEL, ['--parallel', '8', '--ctx-size', '4096']);
const { base } = srv;
const V1 = `${base}/v1`;
const MAXT = 400;  // enough for every bounded schema above; a cut answer (finish "length") is a failure
const client = new OpenAI({ baseURL: V1, apiKey: 'unused', maxRetries: 0, timeout: 60000 });
const user = (content) => [{ role: 'user', content }];
log('server up', base);

let MODEL_ID = 'test';
await section('GET /v1/models and /v1/models/{id}', async () => {
  const models = await client.models.list();
  assert.equal(models.data.length, 1);
  MODEL_ID = models.data[0].id;
  const one = await fetch(`${V1}/models/${encodeURIComponent(MODEL_ID)}`);
  assert.equal(one.status, 200);
  const m = await one.json();
  assert.equal(m.id, MODEL_ID);
  assert.equal(m.object, 'model');
  const none = await fetch(`${V1}/models/no-such-model`);
  assert.equal(none.status, 404);
  assert.ok((await none.json()).error);
});

// ---- response_format json_schema: every answer parses and validates (temperature 0 and 1) ----------
async function schemaAnswer(base_, schema, extra = {}, strict = true) {
  const r = await post(base_, '/v1/chat/completions', { model: 'test', messages: user('Give me JSON.'), max_tokens: MAXT,
    response_format: { type: 'json_schema', json_schema: { name: 'answer', schema, strict } }, ...extra });
  assert.equal(r.status, 200, r.text);
  const c = r.json.choices[0];
  assert.equal(c.finish_reason, 'stop', `finish_reason for ${JSON.stringify(c.message.content)}`);
  return c;
}
await section('response_format json_schema: greedy, temperature 1 and streaming', async () => {
  // Every schema runs; the failures are listed together.
  const bad = [];
  for (const { name, schema, strict = true } of SCHEMAS) try {
    const g = await schemaAnswer(base, schema, { temperature: 0 }, strict);
    parseValid(schema, g.message.content, `${name} greedy`);
    for (const seed of QUICK ? [1] : [1, 2]) {
      const s = await schemaAnswer(base, schema, { temperature: 1, seed }, strict);
      parseValid(schema, s.message.content, `${name} temperature 1 seed ${seed}`);
    }
    // Streaming at temperature 0 gives the same text.
    const ev = await postSSE(base, '/v1/chat/completions', { model: 'test', messages: user('Give me JSON.'), max_tokens: MAXT,
      temperature: 0, response_format: { type: 'json_schema', json_schema: { name: 'answer', schema, strict } } });
    assert.equal(ev.at(-1).data, '[DONE]');
    let text = '', finish = null;
    for (const e of ev.slice(0, -1)) {
      text += e.data.choices[0]?.delta?.content ?? '';
      finish = e.data.choices[0]?.finish_reason ?? finish;
    }
    assert.equal(text, g.message.content, `${name}: streamed == non-streamed`);
    assert.equal(finish, 'stop');
  } catch (e) {
    bad.push(`${name}: ${e.message.split('\n')[0]}`);
  }
  assert.deepEqual(bad, [], `${bad.length} of ${SCHEMAS.length} schemas failed:\n${bad.join('\n')}`);
});

await section('response_format json_object, llama.cpp json_schema and grammar fields, /v1/completions', async () => {
  for (const temperature of [0, 1]) {
    const r = await post(base, '/v1/chat/completions', { model: 'test', messages: user('JSON please'), max_tokens: MAXT,
      temperature, seed: 3, response_format: { type: 'json_object' } });
    assert.equal(r.status, 200, r.text);
    // json_object: any JSON object; a random model may make it long, so a cut answer is allowed to be a prefix.
    if (r.json.choices[0].finish_reason === 'stop') {
      const v = JSON.parse(r.json.choices[0].message.content);
      assert.ok(v && typeof v === 'object' && !Array.isArray(v), r.json.choices[0].message.content);
    } else {
      assert.equal(r.json.choices[0].finish_reason, 'length');
      assert.match(r.json.choices[0].message.content, /^\s*\{/);
    }
  }
  const text = await post(base, '/v1/chat/completions', { model: 'test', messages: user('hi'), max_tokens: 8, temperature: 0,
    response_format: { type: 'text' } });
  assert.equal(text.status, 200, text.text);
  const schema = SCHEMAS[2].schema;
  const j = await post(base, '/v1/chat/completions', { model: 'test', messages: user('hi'), max_tokens: MAXT, temperature: 0, json_schema: schema });
  assert.equal(j.status, 200, j.text);
  parseValid(schema, j.json.choices[0].message.content, 'llama.cpp json_schema field');
  for (const temperature of [0, 1]) {
    const g = await post(base, '/v1/chat/completions', { model: 'test', messages: user('yes or no?'), max_tokens: 16, temperature, seed: 5,
      grammar: 'root ::= ("yes" | "no") "!"? \n' });
    assert.equal(g.status, 200, g.text);
    // Exactly a sentence of the grammar (no SentencePiece dummy-prefix space shows).
    assert.match(g.json.choices[0].message.content, /^(yes|no)!?$/);
    assert.equal(g.json.choices[0].finish_reason, 'stop');
  }
  // The legacy completions endpoint takes the same fields.
  const c = await post(base, '/v1/completions', { model: 'test', prompt: 'Data:', max_tokens: MAXT, temperature: 0,
    response_format: { type: 'json_schema', json_schema: { name: 'x', schema } } });
  assert.equal(c.status, 200, c.text);
  parseValid(schema, c.json.choices[0].text.trimStart(), '/v1/completions json_schema');
  const cg = await post(base, '/v1/completions', { model: 'test', prompt: 'Answer:', max_tokens: 8, temperature: 0, grammar: 'root ::= [0-9] [0-9]?' });
  assert.equal(cg.status, 200, cg.text);
  assert.match(cg.json.choices[0].text.trimStart(), /^[0-9]{1,2}$/);
});

await section('n choices with a schema share the prompt; n up to 8', async () => {
  const schema = SCHEMAS[0].schema;
  const r = await post(base, '/v1/chat/completions', { model: 'test', messages: user('n'), max_tokens: MAXT, temperature: 1, seed: 7, n: 3,
    response_format: { type: 'json_schema', json_schema: { name: 'x', schema } } });
  assert.equal(r.status, 200, r.text);
  assert.deepEqual(r.json.choices.map((c) => c.index), [0, 1, 2]);
  for (const c of r.json.choices) parseValid(schema, c.message.content, `choice ${c.index}`);
  const ev = await postSSE(base, '/v1/chat/completions', { model: 'test', messages: user('n'), max_tokens: MAXT, temperature: 0, n: 2,
    response_format: { type: 'json_schema', json_schema: { name: 'x', schema } } });
  const texts = ['', ''];
  for (const e of ev.slice(0, -1)) for (const c of e.data.choices) texts[c.index] += c.delta?.content ?? '';
  for (const t of texts) parseValid(schema, t, 'streamed choice');
  assert.equal(texts[0], texts[1], 'greedy choices agree');
  assertBadRequest(await post(base, '/v1/chat/completions', { model: 'test', messages: user('n'), n: 9 }), 'n', 'n = 9');
});

// ---- tools (chat completions) ----------------------------------------------------------------------
const toolReq = (extra = {}) => ({ model: 'test', messages: user('What is the weather in Paris?'), tools: TOOLS, max_tokens: MAXT, temperature: 0, ...extra });
await section('tools: tool_choice required / named / none / auto, parallel_tool_calls', async () => {
  for (const [temperature, seed] of [[0, 0], [1, 11], [1, 12]]) {
    const r = await post(base, '/v1/chat/completions', toolReq({ tool_choice: 'required', temperature, seed }));
    assert.equal(r.status, 200, r.text);
    const c = r.json.choices[0];
    assert.equal(c.finish_reason, 'tool_calls', r.text);
    assert.equal(c.message.role, 'assistant');
    assert.equal(c.message.content, null);
    checkCalls(c.message.tool_calls, TOOLS, `required t=${temperature}`);
  }
  for (const name of ['get_weather', 'add']) {
    const r = await post(base, '/v1/chat/completions', toolReq({ tool_choice: { type: 'function', function: { name } }, temperature: 1, seed: 4 }));
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.choices[0].finish_reason, 'tool_calls', r.text);
    checkCalls(r.json.choices[0].message.tool_calls, TOOLS, `named ${name}`, name);
  }
  const one = await post(base, '/v1/chat/completions', toolReq({ tool_choice: 'required', parallel_tool_calls: false, temperature: 1, seed: 9 }));
  assert.equal(one.status, 200, one.text);
  assert.equal(one.json.choices[0].message.tool_calls.length, 1, 'parallel_tool_calls false: one call');
  const none = await post(base, '/v1/chat/completions', toolReq({ tool_choice: 'none', max_tokens: 12 }));
  assert.equal(none.status, 200, none.text);
  assert.ok(!none.json.choices[0].message.tool_calls?.length, 'none: no calls');
  assert.notEqual(none.json.choices[0].finish_reason, 'tool_calls');
  assert.equal(typeof none.json.choices[0].message.content, 'string');
  // Cut by max_tokens inside the calls: finish "length", the call envelope never shows as text (required
  // allows no text at all), and any call given is complete and valid.
  for (const max_tokens of [6, 60]) {
    const cut = await post(base, '/v1/chat/completions', toolReq({ tool_choice: 'required', max_tokens }));
    assert.equal(cut.status, 200, cut.text);
    const c = cut.json.choices[0];
    assert.equal(c.finish_reason, 'length');
    assert.ok(c.message.content === null || c.message.content === '', `the envelope leaked as text: ${cut.text}`);
    if (c.message.tool_calls?.length) checkCalls(c.message.tool_calls, TOOLS, 'cut');
    const r = await post(base, '/v1/responses', { model: 'test', input: 'weather?', tools: RTOOLS, tool_choice: 'required', max_output_tokens: max_tokens, temperature: 0 });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.status, 'incomplete');
    assert.equal(outText(r.json), '', `the envelope leaked as output_text: ${r.text}`);
  }
  for (const seed of [1, 2, 3]) {
    const auto = await post(base, '/v1/chat/completions', toolReq({ tool_choice: 'auto', temperature: 1, seed, max_tokens: 60 }));
    assert.equal(auto.status, 200, auto.text);
    const c = auto.json.choices[0];
    if (c.finish_reason === 'tool_calls') checkCalls(c.message.tool_calls, TOOLS, 'auto');
    else assert.ok(!c.message.tool_calls?.length && typeof c.message.content === 'string', `auto: text ${auto.text}`);
  }
});

await section('tools: streamed tool-call deltas reassemble into the non-streamed calls', async () => {
  for (const tool_choice of ['required', { type: 'function', function: { name: 'add' } }]) {
    const req = toolReq({ tool_choice });
    const whole = await post(base, '/v1/chat/completions', req);
    assert.equal(whole.status, 200, whole.text);
    const ev = await postSSE(base, '/v1/chat/completions', { ...req, stream_options: { include_usage: true } });
    assert.equal(ev.at(-1).data, '[DONE]');
    const calls = [];
    let finish = null, role = null, usage = null, content = '';
    for (const { data } of ev.slice(0, -1)) {
      assert.equal(data.object, 'chat.completion.chunk');
      if (data.usage) usage = data.usage;
      for (const ch of data.choices) {
        role = ch.delta?.role ?? role;
        content += ch.delta?.content ?? '';
        finish = ch.finish_reason ?? finish;
        for (const d of ch.delta?.tool_calls ?? []) {
          assert.equal(typeof d.index, 'number');
          if (!calls[d.index]) {
            // The first delta of a call carries id, type and name (openai v6, LlamaIndex need them there).
            assert.match(d.id, CALL_ID);
            assert.equal(d.type, 'function');
            assert.equal(typeof d.function.name, 'string');
            calls[d.index] = { id: d.id, type: 'function', function: { name: d.function.name, arguments: d.function.arguments ?? '' } };
          } else {
            assert.ok(d.id === undefined || d.id === calls[d.index].id);
            calls[d.index].function.arguments += d.function?.arguments ?? '';
          }
        }
      }
    }
    assert.equal(role, 'assistant');
    assert.equal(content, '', 'no text beside the calls');
    assert.equal(finish, 'tool_calls');
    assert.ok(usage && usage.completion_tokens > 0);
    checkCalls(calls, TOOLS, 'streamed');
    const ref = whole.json.choices[0].message.tool_calls;
    assert.deepEqual(calls.map((c) => [c.function.name, c.function.arguments]), ref.map((c) => [c.function.name, c.function.arguments]));
  }
});

await section('tools: round trip (assistant tool_calls with content null or "", tool message) answers', async () => {
  const first = await post(base, '/v1/chat/completions', toolReq({ tool_choice: 'required' }));
  assert.equal(first.status, 200, first.text);
  const m = first.json.choices[0].message;
  for (const content of [null, '']) {
    const msgs = [...user('What is the weather in Paris?'), { ...m, content },
      ...m.tool_calls.map((c) => ({ role: 'tool', tool_call_id: c.id, content: '{"temp": 21}' }))];
    const r = await post(base, '/v1/chat/completions', { model: 'test', messages: msgs, tools: TOOLS, tool_choice: 'none', max_tokens: 16, temperature: 0 });
    assert.equal(r.status, 200, r.text);
    assert.equal(typeof r.json.choices[0].message.content, 'string');
    // Calls again after a result (auto, then required).
    const again = await post(base, '/v1/chat/completions', { model: 'test', messages: msgs, tools: TOOLS, tool_choice: 'required', max_tokens: MAXT, temperature: 0 });
    assert.equal(again.status, 200, again.text);
    checkCalls(again.json.choices[0].message.tool_calls, TOOLS, 'after a tool result');
  }
  // Ids the client made up (OpenAI's call_... style) are accepted in the history too.
  const r = await post(base, '/v1/chat/completions', { model: 'test', tools: TOOLS, max_tokens: 8, temperature: 0, messages: [...user('x'),
    { role: 'assistant', content: null, tool_calls: [{ id: 'call_abc123XYZ', type: 'function', function: { name: 'add', arguments: '{"a":1,"b":2}' } }] },
    { role: 'tool', tool_call_id: 'call_abc123XYZ', content: '3' }] });
  assert.equal(r.status, 200, r.text);
});

await section('message rules: consecutive user turns, several system messages, developer, prefill', async () => {
  const cases = {
    'two user turns': [{ role: 'system', content: 'be kind' }, { role: 'user', content: 'a' }, { role: 'assistant', content: 'b' }, { role: 'user', content: 'c' }, { role: 'user', content: 'd' }],
    'two system messages': [{ role: 'system', content: 's1' }, { role: 'system', content: 's2' }, { role: 'user', content: 'hi' }],
    developer: [{ role: 'developer', content: 'dev' }, { role: 'user', content: 'hi' }],
    'assistant prefill': [{ role: 'user', content: 'hi' }, { role: 'assistant', content: 'Sure, ' }],
    'content parts': [{ role: 'user', content: [{ type: 'text', text: 'a' }, { type: 'text', text: 'b' }] }],
  };
  for (const [what, messages] of Object.entries(cases)) {
    const r = await post(base, '/v1/chat/completions', { model: 'test', messages, max_tokens: 4, temperature: 0 });
    assert.equal(r.status, 200, `${what}: ${r.text}`);
  }
});

// ---- Responses API (raw) ---------------------------------------------------------------------------
function checkResponseObject(o, status = 'completed') {
  assert.match(o.id, /^resp_/);
  assert.equal(o.object, 'response');
  assert.equal(typeof o.created_at, 'number');
  assert.equal(typeof o.model, 'string');
  assert.equal(o.status, status);
  assert.ok(o.error === null || o.error === undefined);
  assert.ok(Array.isArray(o.output));
  for (const it of o.output) {
    assert.equal(typeof it.id, 'string');
    if (it.type === 'message') {
      assert.equal(it.role, 'assistant');
      for (const p of it.content) {
        assert.equal(p.type, 'output_text');
        assert.equal(typeof p.text, 'string');
        assert.ok(Array.isArray(p.annotations), 'annotations array (LangChain maps it, the AI SDK requires it)');
      }
    } else {
      assert.equal(it.type, 'function_call');
      assert.match(it.call_id, CALL_ID);
      assert.equal(typeof it.name, 'string');
      assert.equal(typeof it.arguments, 'string');
    }
  }
  if (status === 'completed') {
    for (const k of ['input_tokens', 'output_tokens', 'total_tokens']) assert.equal(typeof o.usage[k], 'number', k);
    assert.equal(o.usage.total_tokens, o.usage.input_tokens + o.usage.output_tokens);
  }
}
await section('POST /v1/responses: text, instructions, items, text.format json_schema, tools', async () => {
  const a = await post(base, '/v1/responses', { model: 'test', input: 'hello', instructions: 'be brief', max_output_tokens: 8, temperature: 0 });
  assert.equal(a.status, 200, a.text);
  checkResponseObject(a.json, a.json.status);
  assert.ok(['completed', 'incomplete'].includes(a.json.status));
  if (a.json.status === 'incomplete') assert.equal(a.json.incomplete_details.reason, 'max_output_tokens');
  // The same prompt as items; input_text parts (AI SDK) and plain strings (LangChain) alike.
  const b = await post(base, '/v1/responses', { model: 'test', max_output_tokens: 8, temperature: 0, input: [
    { role: 'system', content: 'be brief' }, { type: 'message', role: 'user', content: [{ type: 'input_text', text: 'hello' }] }], text: {} });
  assert.equal(b.status, 200, b.text);
  checkResponseObject(b.json, b.json.status);
  const schema = SCHEMAS[2].schema;
  for (const temperature of [0, 1]) {
    const s = await post(base, '/v1/responses', { model: 'test', input: 'JSON', max_output_tokens: MAXT, temperature,
      text: { format: { type: 'json_schema', name: 'x', schema, strict: true } } });
    assert.equal(s.status, 200, s.text);
    checkResponseObject(s.json);
    parseValid(schema, outText(s.json), `responses json_schema t=${temperature}`);
    assert.equal(s.json.text.format.type, 'json_schema', 'the response echoes text.format (LangChain reads it)');
  }
  const t = await post(base, '/v1/responses', { model: 'test', input: 'weather?', tools: RTOOLS, tool_choice: 'required', max_output_tokens: MAXT, temperature: 0 });
  assert.equal(t.status, 200, t.text);
  checkResponseObject(t.json);
  const calls = t.json.output.filter((i) => i.type === 'function_call');
  assert.ok(calls.length >= 1);
  checkCalls(calls.map((c) => ({ id: c.call_id, type: 'function', function: { name: c.name, arguments: c.arguments } })), TOOLS, 'responses required');
  const named = await post(base, '/v1/responses', { model: 'test', input: 'add', tools: RTOOLS, tool_choice: { type: 'function', name: 'add' }, max_output_tokens: MAXT, temperature: 1, seed: 2 });
  assert.equal(named.status, 200, named.text);
  for (const c of named.json.output) assert.equal(c.name, 'add');
  // Round trip: the call item (as returned, with id and status) and its output.
  const rt = await post(base, '/v1/responses', { model: 'test', tools: RTOOLS, max_output_tokens: 8, temperature: 0,
    input: [{ role: 'user', content: 'weather?' }, ...calls, { type: 'function_call_output', call_id: calls[0].call_id, output: '{"temp":21}' }] });
  assert.equal(rt.status, 200, rt.text);
  checkResponseObject(rt.json, rt.json.status);
  assertBadRequest(await post(base, '/v1/responses', { model: 'test', input: 'x', previous_response_id: 'resp_123' }), 'previous_response_id', 'previous_response_id');
});

await section('POST /v1/responses streaming: the event sequence the clients need', async () => {
  const check = (ev) => {
    assert.equal(ev[0].data.type, 'response.created');
    checkResponseObject(ev[0].data.response, 'in_progress');
    let seq = -1;
    for (const e of ev) {
      assert.equal(e.event, e.data.type, 'event: line names the type');
      assert.ok(e.data.sequence_number > seq, 'sequence numbers increase');
      seq = e.data.sequence_number;
    }
    const last = ev.at(-1).data;
    assert.ok(['response.completed', 'response.incomplete'].includes(last.type), last.type);
    checkResponseObject(last.response, last.type === 'response.completed' ? 'completed' : 'incomplete');
    return last.response;
  };
  // Text.
  const schema = SCHEMAS[0].schema;
  const ev = await postSSE(base, '/v1/responses', { model: 'test', input: 'JSON', max_output_tokens: MAXT, temperature: 0,
    text: { format: { type: 'json_schema', name: 'x', schema } } });
  const done = check(ev);
  const types = ev.map((e) => e.data.type);
  for (const t of ['response.output_item.added', 'response.content_part.added', 'response.output_text.delta', 'response.output_text.done',
    'response.content_part.done', 'response.output_item.done']) assert.ok(types.includes(t), `${t} in ${types}`);
  assert.ok(types.indexOf('response.content_part.added') < types.indexOf('response.output_text.delta'));
  const added = ev.find((e) => e.data.type === 'response.output_item.added').data;
  assert.equal(added.item.type, 'message');
  let text = '';
  for (const { data } of ev) {
    if (data.type !== 'response.output_text.delta') continue;
    assert.equal(data.item_id, added.item.id);
    assert.equal(typeof data.output_index, 'number');
    assert.equal(typeof data.content_index, 'number');
    text += data.delta;
  }
  assert.equal(text, outText(done));
  parseValid(schema, text, 'streamed responses json_schema');
  // Function calls.
  const fe = await postSSE(base, '/v1/responses', { model: 'test', input: 'weather?', tools: RTOOLS, tool_choice: 'required', max_output_tokens: MAXT, temperature: 0 });
  const fdone = check(fe);
  const items = fdone.output.filter((i) => i.type === 'function_call');
  assert.ok(items.length >= 1);
  for (const it of items) {
    const idx = fdone.output.indexOf(it);
    const add = fe.find((e) => e.data.type === 'response.output_item.added' && e.data.output_index === idx).data;
    assert.equal(add.item.type, 'function_call');
    assert.equal(add.item.call_id, it.call_id);
    assert.equal(add.item.name, it.name);
    assert.equal(typeof add.item.arguments, 'string');
    const args = fe.filter((e) => e.data.type === 'response.function_call_arguments.delta' && e.data.output_index === idx)
      .map((e) => { assert.equal(e.data.item_id, it.id); return e.data.delta; }).join('');
    assert.equal(args, it.arguments);
    const fin = fe.find((e) => e.data.type === 'response.function_call_arguments.done' && e.data.output_index === idx).data;
    assert.equal(fin.arguments, it.arguments);
    const idone = fe.find((e) => e.data.type === 'response.output_item.done' && e.data.output_index === idx).data;
    assert.equal(idone.item.arguments, it.arguments);
    checkCalls([{ id: it.call_id, type: 'function', function: { name: it.name, arguments: it.arguments } }], TOOLS, 'streamed responses call');
  }
});

// ---- bad inputs: 400 with param; the server stays up -----------------------------------------------
await section('bad inputs: 400 naming the field, server stays up', async () => {
  const P = '/v1/chat/completions';
  const good = { model: 'test', messages: user('hi'), max_tokens: 4 };
  const rf = (schema) => ({ ...good, response_format: { type: 'json_schema', json_schema: { name: 'x', schema } } });
  assertBadRequest(await post(base, P, rf({ type: 5 })), /^response_format/, 'malformed schema');
  assertBadRequest(await post(base, P, rf({ type: 'object', properties: { a: { $ref: '#/$defs/missing' } } })), /^response_format/, 'dangling $ref');
  assertBadRequest(await post(base, P, { ...good, response_format: { type: 'json_schema' } }), /^response_format/, 'json_schema without a schema');
  assertBadRequest(await post(base, P, { ...good, response_format: { type: 'xml' } }), /^response_format/, 'unknown response_format type');
  const unsup = assertBadRequest(await post(base, P, rf({ type: 'object', properties: { a: { type: 'string' } }, if: { required: ['a'] }, then: { required: ['b'] } })), /^response_format/, 'unsupported keyword');
  assert.match(unsup.message, /\bif\b/, 'the message names the keyword');
  const unsup2 = assertBadRequest(await post(base, P, rf({ type: 'object', properties: { a: { type: 'object', patternProperties: { '^x': { type: 'integer' } } } } })),
    /^response_format/, 'unsupported keyword (nested)');
  assert.match(unsup2.message, /patternProperties/);
  assert.match(unsup2.message, /properties\/a/, 'the message names the path');
  let deep = { type: 'integer' };
  for (let i = 0; i < 1000; ++i) deep = { type: 'object', properties: { a: deep }, required: ['a'] };
  assertBadRequest(await post(base, P, rf(deep)), /^response_format/, 'too-deep schema');
  // Too large: 11000 anyOf branches of one-key objects need more grammar rules than max_rules (10000). (A big enum
  // is no longer too large: the compiler writes it as a prefix trie.)
  const huge = rf({ anyOf: Array.from({ length: 11000 }, (_, i) => ({ type: 'object', properties: { [`k${i}`]: { type: 'integer' } }, required: [`k${i}`], additionalProperties: false })) });
  const big = assertBadRequest(await post(base, P, huge), /^response_format/, 'too-large schema (11000 anyOf branches)');
  assert.match(big.message, /max_rules/, 'the message names the limit');
  let deepArr = { type: 'integer' };
  for (let i = 0; i < 1000; ++i) deepArr = { type: 'array', items: deepArr };
  assertBadRequest(await post(base, P, { ...good, tools: [{ type: 'function', function: { name: 'f', parameters: deepArr } }] }), /^tools\[0\]/, 'too-deep tool parameters');
  assertBadRequest(await post(base, P, { ...good, grammar: 'root ::= "a' }), 'grammar', 'GBNF: unterminated string');
  assertBadRequest(await post(base, P, { ...good, grammar: 'root ::= undefined-rule' }), 'grammar', 'GBNF: undefined rule');
  assertBadRequest(await post(base, P, { ...good, grammar: 'start ::= "a"' }), 'grammar', 'GBNF: no root');
  assertBadRequest(await post(base, P, { ...good, tools: TOOLS, tool_choice: { type: 'function', function: { name: 'nope' } } }), 'tool_choice', 'unknown tool');
  assertBadRequest(await post(base, P, { ...good, tool_choice: 'required' }), 'tool_choice', 'required without tools');
  assertBadRequest(await post(base, P, { ...good, tools: TOOLS, tool_choice: 'sometimes' }), 'tool_choice', 'bad tool_choice');
  assertBadRequest(await post(base, P, { ...good, tools: [{ type: 'function', function: { name: 'f', parameters: { type: 'object', properties: { a: { type: 'array', contains: { const: 1 } } } } } }] }), /^tools\[0\]/, 'unsupported keyword in tool parameters');
  const history = [...user('x'), { role: 'assistant', content: null, tool_calls: [{ id: 'abcdefghi', type: 'function', function: { name: 'add', arguments: '{"a":1,"b":2}' } }] }];
  assertBadRequest(await post(base, P, { ...good, tools: TOOLS, messages: [...history, { role: 'tool', content: '3' }] }), /^messages\[2\]\.tool_call_id$/, 'tool message without tool_call_id');
  assertBadRequest(await post(base, '/v1/responses', { model: 'test', input: 'x', text: { format: { type: 'json_schema', name: 'x', schema: { type: 'object', dependentRequired: { a: ['b'] } } } } }), /^text/, 'responses: unsupported keyword');
  assertBadRequest(await post(base, '/v1/responses', { model: 'test', input: 'x', tools: RTOOLS, tool_choice: { type: 'function', name: 'nope' } }), 'tool_choice', 'responses: unknown tool');
  assertBadRequest(await post(base, '/v1/responses', { model: 'test', input: [{ type: 'function_call_output', output: 'x' }] }), /^input\[0\]/, 'responses: output without call_id');
  assertBadRequest(await post(base, '/v1/responses', { model: 'test' }), 'input', 'responses: no input');
  assertBadRequest(await post(base, '/v1/completions', { model: 'test', prompt: 'x', grammar: 'root ::= [a-' }), 'grammar', 'completions: unterminated character class');
  assert.equal((await fetch(`${base}/health`)).status, 200);
  const ok = await post(base, P, { ...good, response_format: { type: 'json_schema', json_schema: { name: 'x', schema: SCHEMAS[0].schema } }, max_tokens: MAXT, temperature: 0 });
  assert.equal(ok.status, 200, ok.text);
  parseValid(SCHEMAS[0].schema, ok.json.choices[0].message.content, 'after the bad inputs');
});

// ---- real clients ----------------------------------------------------------------------------------
const Person = z.object({ name: z.string().min(1).max(10), age: z.number().int().min(0).max(120),
  tags: z.array(z.enum(['a', 'b', 'c'])).max(3), nick: z.string().max(6).nullable() });
const Weather = z.object({ city: z.string().min(1).max(10), unit: z.enum(['c', 'f']) });
const personJson = z.toJSONSchema(Person);
const checkPerson = (p, what) => {
  assert.ok(p && typeof p === 'object', `${what}: ${JSON.stringify(p)}`);
  validate(personJson, p, what);
};
const weatherJson = z.toJSONSchema(Weather);
const checkWeather = (a, what) => validate(weatherJson, typeof a === 'string' ? JSON.parse(a) : a, what);

await section('openai v6: chat.completions.parse (zodResponseFormat, zodFunction), stream helpers', async () => {
  const p = await client.chat.completions.parse({ model: 'test', messages: user('A person.'), max_tokens: MAXT, temperature: 0,
    response_format: zodResponseFormat(Person, 'person') });
  checkPerson(p.choices[0].message.parsed, 'parse zodResponseFormat');
  const p1 = await client.chat.completions.parse({ model: 'test', messages: user('A person.'), max_tokens: MAXT, temperature: 1, seed: 3,
    response_format: zodResponseFormat(Person, 'person') });
  checkPerson(p1.choices[0].message.parsed, 'parse zodResponseFormat t=1');
  const t = await client.chat.completions.parse({ model: 'test', messages: user('Weather?'), max_tokens: MAXT, temperature: 0,
    tools: [zodFunction({ name: 'get_weather', parameters: Weather })], tool_choice: 'required' });
  assert.equal(t.choices[0].finish_reason, 'tool_calls');
  checkWeather(t.choices[0].message.tool_calls[0].function.parsed_arguments, 'zodFunction parsed_arguments');
  const s = client.chat.completions.stream({ model: 'test', messages: user('A person.'), max_tokens: MAXT, temperature: 0,
    response_format: zodResponseFormat(Person, 'person') });
  const sf = await s.finalChatCompletion();
  assert.deepEqual(sf.choices[0].message.parsed, p.choices[0].message.parsed, 'stream helper == parse');
  const st = client.chat.completions.stream({ model: 'test', messages: user('Weather?'), max_tokens: MAXT, temperature: 0,
    tools: [zodFunction({ name: 'get_weather', parameters: Weather })], tool_choice: 'required' });
  const stf = await st.finalChatCompletion();
  assert.deepEqual(stf.choices[0].message.tool_calls.map((c) => c.function.parsed_arguments),
    t.choices[0].message.tool_calls.map((c) => c.function.parsed_arguments), 'streamed tool calls == non-streamed');
});

await section('openai v6: runTools and a manual tool loop (non-streaming and streaming)', async () => {
  // zod tools with a named tool_choice: one call, its result, done (the runner stops after the named call).
  const seen = [];
  const tools = [zodFunction({ name: 'get_weather', parameters: Weather, function: (a) => { checkWeather(a, 'runTools args'); seen.push(a); return { temp: 21 }; } })];
  for (const stream of [false, true]) {
    const runner = client.chat.completions.runTools({ model: 'test', messages: user('Weather in Paris?'), max_tokens: MAXT, temperature: 0, tools, stream,
      tool_choice: { type: 'function', function: { name: 'get_weather' } } });
    await runner.done();
    const [, call, result] = runner.messages;
    assert.match(call.tool_calls[0].id, CALL_ID);
    assert.equal(result.role, 'tool');
    assert.equal(result.tool_call_id, call.tool_calls[0].id);
  }
  assert.equal(seen.length, 2);
  assert.deepEqual(seen[0], seen[1], 'streamed runner == non-streamed at temperature 0');
  const ftools = [{ type: 'function', function: { name: 'get_weather', description: 'weather', parameters: WEATHER, strict: true } }];
  const msgs = user('Weather in Paris?');
  const r1 = await client.chat.completions.create({ model: 'test', messages: msgs, tools: ftools, max_tokens: MAXT, temperature: 0,
    tool_choice: { type: 'function', function: { name: 'get_weather' } }, parallel_tool_calls: false });
  checkCalls(r1.choices[0].message.tool_calls, ftools, 'manual loop', 'get_weather');
  msgs.push(r1.choices[0].message);
  for (const c of r1.choices[0].message.tool_calls) msgs.push({ role: 'tool', tool_call_id: c.id, content: '21 C' });
  const r2 = await client.chat.completions.create({ model: 'test', messages: msgs, tools: ftools, tool_choice: 'none', max_tokens: 12, temperature: 0 });
  assert.equal(typeof r2.choices[0].message.content, 'string');
  let streamed = '';
  for await (const c of await client.chat.completions.create({ model: 'test', messages: msgs, tools: ftools, tool_choice: 'none', max_tokens: 12, temperature: 0, stream: true }))
    streamed += c.choices[0]?.delta?.content ?? '';
  assert.equal(streamed, r2.choices[0].message.content);
});

await section('openai v6: responses.parse (zodTextFormat), responses.stream, function calls', async () => {
  // A string input and the same text as a user message item are the same prompt.
  const r = await client.responses.parse({ model: 'test', input: 'A person.', instructions: 'JSON only', max_output_tokens: MAXT, temperature: 0,
    text: { format: zodTextFormat(Person, 'person') } });
  checkPerson(r.output_parsed, 'responses.parse');
  const s = client.responses.stream({ model: 'test', input: [{ role: 'user', content: 'A person.' }], instructions: 'JSON only', max_output_tokens: MAXT,
    temperature: 0, text: { format: zodTextFormat(Person, 'person') } });
  let deltas = '';
  s.on('response.output_text.delta', (e) => { deltas += e.delta; });
  const f = await s.finalResponse();
  assert.equal(deltas, f.output_text);
  assert.deepEqual(JSON.parse(f.output_text), r.output_parsed, 'streamed == parsed at temperature 0');
  const fc = await client.responses.create({ model: 'test', input: 'weather?', tools: RTOOLS, tool_choice: 'required', max_output_tokens: MAXT, temperature: 0 });
  const call = fc.output.find((i) => i.type === 'function_call');
  checkWeatherOrAdd(call);
  const fs2 = client.responses.stream({ model: 'test', input: 'weather?', tools: RTOOLS, tool_choice: 'required', max_output_tokens: MAXT, temperature: 0 });
  const ff = await fs2.finalResponse();
  assert.deepEqual(ff.output.filter((i) => i.type === 'function_call').map((i) => [i.name, i.arguments]),
    fc.output.filter((i) => i.type === 'function_call').map((i) => [i.name, i.arguments]));
});
function checkWeatherOrAdd(call) {
  assert.ok(call, 'a function_call item');
  checkCalls([{ id: call.call_id, type: 'function', function: { name: call.name, arguments: call.arguments } }], TOOLS, 'responses function_call');
}

const lcOpts = { model: 'test', apiKey: 'unused', temperature: 0, maxTokens: MAXT, maxRetries: 0, configuration: { baseURL: V1 } };
const lc = new ChatOpenAI(lcOpts);
const weatherTool = lcTool(async (a) => { checkWeather(a, 'langchain tool input'); return `21 C in ${a.city}`; },
  { name: 'get_weather', description: 'Current weather in a city', schema: Weather });
await section('LangChain: withStructuredOutput (jsonSchema, functionCalling), non-streaming and streaming', async () => {
  for (const method of ['jsonSchema', 'functionCalling']) {
    const m = lc.withStructuredOutput(Person, { method, name: 'person' });
    checkPerson(await m.invoke('A person.'), `withStructuredOutput ${method}`);
    let last;
    for await (const c of await m.stream('A person.')) last = c;
    checkPerson(last, `withStructuredOutput ${method} stream`);
  }
  const hot = new ChatOpenAI({ ...lcOpts, temperature: 1 });
  checkPerson(await hot.withStructuredOutput(Person, { method: 'jsonSchema', name: 'person' }).invoke('A person.'), 'jsonSchema t=1');
});

await section('LangChain: bindTools + ToolMessage round trip, streaming tool calls, history template', async () => {
  const m = lc.bindTools([weatherTool], { tool_choice: 'any' });
  const msgs = [new SystemMessage('You can look up the weather.'), new HumanMessage('Weather in Paris?')];
  const a = await m.invoke(msgs);
  assert.ok(a.tool_calls.length >= 1, JSON.stringify(a));
  assert.equal(a.invalid_tool_calls.length, 0);
  for (const c of a.tool_calls) { assert.equal(c.name, 'get_weather'); assert.match(c.id, CALL_ID); checkWeather(c.args, 'bindTools args'); }
  msgs.push(a);
  for (const c of a.tool_calls) msgs.push(new ToolMessage({ tool_call_id: c.id, content: await weatherTool.invoke(c.args) }));
  const answer = await new ChatOpenAI({ ...lcOpts, maxTokens: 12 }).bindTools([weatherTool], { tool_choice: 'none' }).invoke(msgs);
  assert.equal(typeof answer.content, 'string');
  let acc;
  for await (const c of await m.stream('Weather in Paris?')) acc = acc ? acc.concat(c) : c;
  assert.deepEqual(acc.tool_calls.map((c) => [c.name, c.args]), a.tool_calls.map((c) => [c.name, c.args]), 'streamed == invoked');
  const prompt = ChatPromptTemplate.fromMessages([['system', 'You are {who}.'], new MessagesPlaceholder('history'), ['human', '{input}']]);
  const h = await prompt.pipe(new ChatOpenAI({ ...lcOpts, maxTokens: 8 })).invoke({ who: 'kind',
    history: [new HumanMessage('first'), new AIMessage('ok'), new HumanMessage('second')], input: 'third' });
  assert.equal(typeof h.content, 'string');
});

await section('LangChain: useResponsesApi (invoke, stream, bindTools round trip, structured output)', async () => {
  const r = new ChatOpenAI({ ...lcOpts, useResponsesApi: true, maxTokens: 12 });
  const a = await r.invoke('hello');
  assert.ok(Array.isArray(a.content) || typeof a.content === 'string');
  let n = 0;
  for await (const c of await r.stream('hello')) { ++n; assert.ok(c); }
  assert.ok(n >= 1);
  const rt = new ChatOpenAI({ ...lcOpts, useResponsesApi: true });
  const bound = rt.bindTools([weatherTool], { tool_choice: 'get_weather' });
  const msgs = [new SystemMessage('You can look up the weather.'), new HumanMessage('Weather in Paris?')];
  const c = await bound.invoke(msgs);
  assert.ok(c.tool_calls.length >= 1, JSON.stringify(c));
  for (const t of c.tool_calls) { assert.equal(t.name, 'get_weather'); checkWeather(t.args, 'responses bindTools'); }
  msgs.push(c);
  for (const t of c.tool_calls) msgs.push(new ToolMessage({ tool_call_id: t.id, content: await weatherTool.invoke(t.args) }));
  const after = await new ChatOpenAI({ ...lcOpts, useResponsesApi: true, maxTokens: 12 }).bindTools([weatherTool], { tool_choice: 'none' }).invoke(msgs);
  assert.ok(after);
  let acc;
  for await (const ch of await bound.stream('Weather in Paris?')) acc = acc ? acc.concat(ch) : ch;
  assert.deepEqual(acc.tool_calls.map((t) => [t.name, t.args]), c.tool_calls.map((t) => [t.name, t.args]));
  checkPerson(await rt.withStructuredOutput(Person, { name: 'person' }).invoke('A person.'), 'responses withStructuredOutput');
});

await section('LlamaIndex: chat with a tool, exec loop, responseFormat, streaming', async () => {
  const li = new LlamaOpenAI({ model: 'gpt-4o-mini', apiKey: 'unused', baseURL: V1, temperature: 0, maxTokens: MAXT, maxRetries: 0 });
  const weather = liTool({ name: 'get_weather', description: 'Current weather in a city', parameters: Weather,
    execute: (a) => { checkWeather(a, 'llamaindex tool input'); return `21 C in ${a.city}`; } });
  const req = { messages: [{ role: 'user', content: 'Weather in Paris?' }], tools: [weather], additionalChatOptions: { tool_choice: 'required' } };
  const r = await li.chat(req);
  const calls = r.message.options.toolCall;
  assert.ok(calls?.length >= 1, JSON.stringify(r.message));
  for (const c of calls) { assert.equal(c.name, 'get_weather'); checkWeather(c.input, 'llamaindex toolCall'); }
  const ex = await li.exec(req);
  assert.ok(ex.toolCalls.length >= 1);
  assert.ok(ex.newMessages.some((m) => m.options?.toolResult), 'the tool ran');
  const after = await li.chat({ messages: [{ role: 'user', content: 'Weather in Paris?' }, ...ex.newMessages], tools: [weather],
    additionalChatOptions: { tool_choice: 'none', max_tokens: 12 } });
  assert.equal(typeof after.message.content, 'string');
  const f = await li.chat({ messages: [{ role: 'user', content: 'A person.' }], responseFormat: Person });
  checkPerson(JSON.parse(f.message.content), 'llamaindex responseFormat');
  let last;
  for await (const c of await li.chat({ ...req, stream: true })) last = c;
  const sc = last.options.toolCall;
  assert.deepEqual(sc.map((c) => [c.name, c.input]), calls.map((c) => [c.name, JSON.parse(c.input)]), 'streamed == non-streamed');
  const sx = await li.exec({ ...req, stream: true });
  assert.ok(sx.toolCalls.length >= 1, 'streamExec sees the call in its first chunk');
});

await section('Vercel AI SDK (openai-compatible): generateObject, streamObject, tools, system + system message', async () => {
  const p = createOpenAICompatible({ name: 'mixtral', baseURL: V1, apiKey: 'unused', supportsStructuredOutputs: true });
  const o = await generateObject({ model: p('test'), schema: Person, prompt: 'A person.', temperature: 0, maxOutputTokens: MAXT, maxRetries: 0 });
  checkPerson(o.object, 'generateObject');
  const o1 = await generateObject({ model: p('test'), schema: Person, prompt: 'A person.', temperature: 1, seed: 8, maxOutputTokens: MAXT, maxRetries: 0 });
  checkPerson(o1.object, 'generateObject t=1');
  const so = streamObject({ model: p('test'), schema: Person, prompt: 'A person.', temperature: 0, maxOutputTokens: MAXT, maxRetries: 0 });
  for await (const _ of so.partialObjectStream) { /* drain */ }
  assert.deepEqual(await so.object, o.object, 'streamObject == generateObject');
  const sys = await generateText({ model: p('test'), system: 'sys one', messages: [{ role: 'system', content: 'sys two' }, { role: 'user', content: 'hi' }],
    maxOutputTokens: 4, maxRetries: 0, allowSystemInMessages: true });
  assert.equal(typeof sys.text, 'string');
  const seen = [];
  const weather = aiTool({ description: 'Current weather in a city', inputSchema: Weather, execute: async (a) => { checkWeather(a, 'ai tool input'); seen.push(a); return { temp: 21 }; } });
  const req = await generateText({ model: p('test'), prompt: 'Weather in Paris?', tools: { get_weather: weather }, toolChoice: 'required', temperature: 0, maxOutputTokens: MAXT, maxRetries: 0 });
  assert.equal(req.finishReason, 'tool-calls');
  assert.ok(req.toolCalls.length >= 1 && seen.length >= 1);
  const st = streamText({ model: p('test'), prompt: 'Weather in Paris?', tools: { get_weather: weather }, toolChoice: 'required', temperature: 0,
    maxOutputTokens: MAXT, maxRetries: 0, onError: ({ error }) => { throw error; } });
  for await (const _ of st.fullStream) { /* drain */ }
  assert.deepEqual((await st.toolCalls).map((c) => c.input), req.toolCalls.map((c) => c.input), 'streamed == generated');
  // Multi-step: call, result, answer (auto; temperature 1 so either path is taken across seeds).
  for (const seed of [1, 2]) {
    const ms = streamText({ model: p('test'), prompt: 'Weather in Paris?', tools: { get_weather: weather }, temperature: 1, seed,
      maxOutputTokens: 60, maxRetries: 0, stopWhen: stepCountIs(3) });
    for await (const _ of ms.textStream) { /* drain */ }
    const steps = await ms.steps;
    for (const s of steps.slice(0, -1)) assert.equal(s.finishReason, 'tool-calls');
  }
});

await section('Vercel AI SDK createOpenAI (Responses API): generateText, generateObject, tools, streamText', async () => {
  const p = createOpenAI({ baseURL: V1, apiKey: 'unused' });
  const t = await generateText({ model: p('test'), system: 'be brief', prompt: 'hello', temperature: 0, maxOutputTokens: 8, maxRetries: 0 });
  assert.equal(typeof t.text, 'string');
  assert.ok(['stop', 'length'].includes(t.finishReason), t.finishReason);
  const o = await generateObject({ model: p('test'), schema: Person, prompt: 'A person.', temperature: 0, maxOutputTokens: MAXT, maxRetries: 0 });
  checkPerson(o.object, 'responses generateObject');
  const so = streamObject({ model: p('test'), schema: Person, prompt: 'A person.', temperature: 0, maxOutputTokens: MAXT, maxRetries: 0 });
  for await (const _ of so.partialObjectStream) { /* drain */ }
  assert.deepEqual(await so.object, o.object);
  const weather = aiTool({ description: 'Current weather in a city', inputSchema: Weather, execute: async (a) => { checkWeather(a, 'ai tool input'); return { temp: 21 }; } });
  const g = await generateText({ model: p('test'), prompt: 'Weather in Paris?', tools: { get_weather: weather }, toolChoice: { type: 'tool', toolName: 'get_weather' },
    temperature: 0, maxOutputTokens: MAXT, maxRetries: 0 });
  assert.equal(g.finishReason, 'tool-calls');
  assert.ok(g.toolCalls.length >= 1);
  const st = streamText({ model: p('test'), prompt: 'Weather in Paris?', tools: { get_weather: weather }, toolChoice: 'required', temperature: 0,
    maxOutputTokens: MAXT, maxRetries: 0, onError: ({ error }) => { throw error; } });
  for await (const _ of st.fullStream) { /* drain */ }
  assert.deepEqual((await st.toolCalls).map((c) => c.input), g.toolCalls.map((c) => c.input));
  // Multi-step round trip: function_call + function_call_output items go back.
  const ms = await generateText({ model: p('test'), prompt: 'Weather in Paris?', tools: { get_weather: weather }, temperature: 1, seed: 3,
    maxOutputTokens: MAXT, maxRetries: 0, stopWhen: stepCountIs(3), prepareStep: ({ stepNumber }) => (stepNumber === 0 ? { toolChoice: 'required' } : { toolChoice: 'none' }) });
  assert.ok(ms.steps.length >= 2, `${ms.steps.length} steps`);
  assert.equal(ms.steps[0].finishReason, 'tool-calls');
});

// ---- v3 tool tokens: a vocabulary with Mistral's v3 control pieces (make-test-model --vocab-format v3) ----
// The calls follow the [TOOL_CALLS] control token as mistral-common's JSON array: the reply's logprobs show a
// token without bytes (the control piece) and then `[{"name": ..., "arguments": ...}]`, never the generic
// `{"tool_calls": ...}` form. (The byte-exact v3 prompt is checked by tests/tokenizer/chat_test.cpp.)
// --quick: one tool_choice "required" call and the round trip.
await section('v3 tool tokens (make-test-model --vocab-format v3): required / named / auto, streaming, round trip, Responses', async () => {
  const dir = path.join(WORK, 'v3');
  // The main model's shape (a smaller one rambles in JSON white space until max_tokens at temperature 0).
  const v3 = makeTestModel(BIN, dir, {}, ['--vocab-format', 'v3']);
  const s3 = await startServer(v3, ['--parallel', '4', '--ctx-size', '4096']);
  try {
    const bytesText = (toks) => Buffer.from(toks.flatMap((t) => t.bytes)).toString('utf8');
    // A chat reply of tool calls made with [TOOL_CALLS]; returns its message.
    const v3Calls = (r, what, only = null) => {
      assert.equal(r.status, 200, `${what}: ${r.text}`);
      const c = r.json.choices[0];
      assert.equal(c.finish_reason, 'tool_calls', `${what}: ${r.text.slice(0, 2000)}`);
      checkCalls(c.message.tool_calls, TOOLS, what, only);
      assert.ok(!(c.message.content ?? '').includes('TOOL_CALLS'), `${what}: control tokens never reach the client`);
      const toks = c.logprobs.content;
      const k = toks.findIndex((t) => t.bytes.length === 0);
      assert.ok(k >= 0, `${what}: a control token in ${JSON.stringify(toks.slice(0, 4))}`);
      assert.match(bytesText(toks.slice(0, k)), /^\s*$/, `${what}: nothing but space before [TOOL_CALLS]`);
      const after = bytesText(toks.slice(k + 1));
      assert.match(after, /^\s*\[\s*\{\s*"name"/, `${what}: the calls after [TOOL_CALLS] are a JSON array: ${after}`);
      const arr = JSON.parse(after);
      assert.deepEqual(arr.map((x) => x.name), c.message.tool_calls.map((x) => x.function.name), what);
      assert.deepEqual(arr.map((x) => x.arguments), c.message.tool_calls.map((x) => JSON.parse(x.function.arguments)), what);
      return c.message;
    };
    const req = (extra) => toolReq({ logprobs: true, ...extra });
    const m = v3Calls(await post(s3.base, '/v1/chat/completions', req({ tool_choice: 'required' })), 'v3 required');
    // Round trip: the calls and their results go back; the answer is text or more calls (tool_choice auto).
    const rt = await post(s3.base, '/v1/chat/completions', { model: 'test', tools: TOOLS, max_tokens: 8, temperature: 0,
      messages: [...user('What is the weather in Paris?'), m, ...m.tool_calls.map((c) => ({ role: 'tool', tool_call_id: c.id, content: '{"temp": 21}' }))] });
    assert.equal(rt.status, 200, rt.text);
    assert.ok(['stop', 'length', 'tool_calls'].includes(rt.json.choices[0].finish_reason), rt.text);
    if (QUICK) return;

    v3Calls(await post(s3.base, '/v1/chat/completions', req({ tool_choice: { type: 'function', function: { name: 'add' } } })), 'v3 named', 'add');
    // auto: text or calls, whichever the model picks (this random model picks text: [TOOL_CALLS] is one
    // token of 512); calls would still come after [TOOL_CALLS].
    for (const [temperature, seed] of [[0, 0], [1, 1]]) {
      const r = await post(s3.base, '/v1/chat/completions', req({ tool_choice: 'auto', temperature, seed, max_tokens: 16 }));
      assert.equal(r.status, 200, r.text);
      const c = r.json.choices[0];
      if (c.message.tool_calls && c.finish_reason === 'tool_calls') { v3Calls(r, `v3 auto seed ${seed}`); continue; }
      assert.ok(['stop', 'length'].includes(c.finish_reason), r.text);
      assert.equal(typeof c.message.content, 'string', r.text);
      assert.ok(c.logprobs.content.length > 0 && c.logprobs.content[0].bytes.length > 0, `v3 auto: text from the first token: ${r.text}`);
    }
    // Streaming: the deltas reassemble into the non-streamed calls (same request at temperature 0).
    const ev = await postSSE(s3.base, '/v1/chat/completions', toolReq({ tool_choice: 'required' }));
    const byIndex = new Map();
    let finish = null;
    for (const e of ev) {
      if (e.data === '[DONE]') continue;
      const ch = e.data.choices[0];
      if (!ch) continue;
      finish = ch.finish_reason ?? finish;
      assert.ok(!(ch.delta?.content ?? '').includes('TOOL_CALLS'), 'no control text in the stream');
      for (const d of ch.delta?.tool_calls ?? []) {
        const cur = byIndex.get(d.index) ?? { id: '', name: '', args: '' };
        cur.id += d.id ?? '';
        cur.name += d.function?.name ?? '';
        cur.args += d.function?.arguments ?? '';
        byIndex.set(d.index, cur);
      }
    }
    assert.equal(ev.at(-1).data, '[DONE]');
    assert.equal(finish, 'tool_calls');
    const streamed = [...byIndex.keys()].sort((a, b) => a - b).map((i) => byIndex.get(i));
    for (const c of streamed) assert.match(c.id, CALL_ID, 'streamed call id');
    assert.deepEqual(streamed.map((c) => [c.name, c.args]), m.tool_calls.map((c) => [c.function.name, c.function.arguments]));
    // Responses API: a function_call item, and its output going back.
    const resp = await post(s3.base, '/v1/responses', { model: 'test', input: 'Weather in Paris?', tools: RTOOLS, tool_choice: 'required', max_output_tokens: MAXT, temperature: 0 });
    assert.equal(resp.status, 200, resp.text);
    const fc = resp.json.output.find((i) => i.type === 'function_call');
    checkWeatherOrAdd(fc);
    const back = await post(s3.base, '/v1/responses', { model: 'test', tools: RTOOLS, max_output_tokens: 8, temperature: 0,
      input: [{ role: 'user', content: 'Weather in Paris?' }, fc, { type: 'function_call_output', call_id: fc.call_id, output: '21' }] });
    assert.equal(back.status, 200, back.text);
    // The Vercel AI SDK on the v3 model.
    const p = createOpenAI({ baseURL: `${s3.base}/v1`, apiKey: 'unused' });
    const weather = aiTool({ description: 'weather', inputSchema: Weather, execute: async () => ({ temp: 21 }) });
    const g = await generateText({ model: p('test'), prompt: 'Weather?', tools: { get_weather: weather }, toolChoice: 'required', temperature: 0, maxOutputTokens: MAXT, maxRetries: 0 });
    assert.equal(g.finishReason, 'tool-calls');
    checkWeather(g.toolCalls[0].input, 'v3 ai sdk input');
  } finally {
    s3.proc.kill('SIGTERM');
    await s3.exited;
  }
});

// ---- the built-in tiny KJV model (v1 SentencePiece vocabulary): schemas at temperature 0 and 1 -------
if (KJV && !QUICK) {
  await section('built-in tiny-kjv model: schemas and tool calls at temperature 0 and 1', async () => {
    const sk = await startServer(KJV, ['--parallel', '4', '--ctx-size', '2048']);
    for (const { name, schema } of [SCHEMAS[1], SCHEMAS[3], SCHEMAS[4], SCHEMAS[7]]) {
      for (const [temperature, seed] of [[0, 0], [1, 1]]) {
        const c = await schemaAnswer(sk.base, schema, { temperature, seed });
        parseValid(schema, c.message.content, `kjv ${name} t=${temperature}`);
      }
    }
    const r = await post(sk.base, '/v1/chat/completions', toolReq({ tool_choice: 'required', parallel_tool_calls: false, temperature: 1, seed: 2 }));
    assert.equal(r.status, 200, r.text);
    checkCalls(r.json.choices[0].message.tool_calls, TOOLS, 'kjv required');
    sk.proc.kill('SIGTERM');
    await sk.exited;
  });
}

// ---- the server survived everything; stop it -------------------------------------------------------
await section('server still up, clean shutdown', async () => {
  assert.equal((await fetch(`${base}/health`)).status, 200);
  srv.proc.kill('SIGTERM');
  const { code } = await srv.exited;
  assert.equal(code, 0);
});

log(`${passed} sections passed, ${failed.length} failed${failed.length ? ': ' + failed.join('; ') : ''}`);
process.exit(failed.length ? 1 : 0);
