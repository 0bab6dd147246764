#!/usr/bin/env node
// llama.cpp (node-llama-cpp, as tests/reference/llamacpp_logits.mjs: F32 KV cache, flash attention off)
// on several GGUF files in one process, so the library starts once:
//
//   node llamacpp_many.mjs --tokens 1,2,3 [--threads N] MODEL.gguf OUT.npy [MODEL.gguf OUT.npy ...]
//
// Writes each model's logits of every position as a float32 .npy [n_tokens, vocab]. A model llama.cpp
// cannot load: one line on stderr naming it, exit 1 (after trying the others).
import { createRequire } from "node:module";
import { writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

// node-llama-cpp is installed in tests/reference (tools/install-deps.sh).
const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(join(here, "..", "reference", "package.json"));
const { getLlama, LlamaLogLevel } = await import(require.resolve("node-llama-cpp"));

function usage(msg) {
  process.stderr.write(`llamacpp_many: ${msg}\n`);
  process.exit(2);
}

const argv = process.argv.slice(2);
let tokens = null, threads = 2;
const pairs = [];
for (let i = 0; i < argv.length; ++i) {
  if (argv[i] === "--tokens") tokens = (argv[++i] ?? "").split(",").filter((s) => s.length).map(Number);
  else if (argv[i] === "--threads") threads = Number(argv[++i]);
  else if (i + 1 < argv.length) pairs.push([argv[i], argv[++i]]);
  else usage(`${argv[i]}: a model needs an output path`);
}
if (!tokens || tokens.some((t) => !Number.isInteger(t) || t < 0)) usage("--tokens: non-negative integers");
if (pairs.length === 0) usage("no MODEL OUT pairs");

function writeNpyF32(path, data, shape) {
  let header = `{'descr': '<f4', 'fortran_order': False, 'shape': (${shape.join(", ")}), }`;
  header += " ".repeat((64 - ((10 + header.length + 1) % 64)) % 64) + "\n";
  const head = Buffer.alloc(10);
  head.write("\x93NUMPY", 0, "latin1");
  head[6] = 1;
  head.writeUInt16LE(header.length, 8);
  writeFileSync(path, Buffer.concat([head, Buffer.from(header, "latin1"),
                                     Buffer.from(data.buffer, data.byteOffset, data.byteLength)]));
}

const llama = await getLlama({ build: "never", gpu: false, logLevel: LlamaLogLevel.error });
let failed = false;
for (const [modelPath, out] of pairs) {
  let model;
  try {
    model = await llama.loadModel({ modelPath, useMmap: true });
  } catch (e) {
    process.stderr.write(`llamacpp_many: ${modelPath}: llama.cpp cannot load it: ${e.message}\n`);
    failed = true;
    continue;
  }
  const context = await model.createContext({
    contextSize: Math.max(64, tokens.length + 8), batchSize: Math.max(64, tokens.length), threads,
    flashAttention: false, experimentalKvCacheKeyType: "F32", experimentalKvCacheValueType: "F32",
  });
  const results = await context.getSequence().controlledEvaluate(
    tokens.map((t) => [t, { generateNext: { logits: true } }]));
  const nVocab = results[0]?.next?.logits?.size ?? 0;
  const data = new Float32Array(tokens.length * nVocab);
  for (let i = 0; i < tokens.length; ++i)
    for (const [tok, v] of results[i].next.logits) data[i * nVocab + tok] = v;
  writeNpyF32(out, data, [tokens.length, nVocab]);
  await context.dispose();
  await model.dispose();
}
await llama.dispose();
process.exit(failed ? 1 : 0);
