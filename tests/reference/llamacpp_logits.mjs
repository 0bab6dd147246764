#!/usr/bin/env node
// llama.cpp (through node-llama-cpp's prebuilt CPU binaries) as an independent reference:
// evaluates token ids on a GGUF file and writes the logits of every position.
//
//   node llamacpp_logits.mjs --model FILE.gguf --tokens 1,2,3 --out FILE.npy [--threads N]
//
// Writes a float32 .npy [n_tokens, vocab]. The KV cache is kept in F32 and flash attention off,
// so the only approximations left are llama.cpp's own (activations quantised to q8_0 for q8_0/q4_0
// weights, f16 for f16 weights, ...). Install once in this directory:
//   NODE_LLAMA_CPP_SKIP_DOWNLOAD=true npm install --omit=optional
import { writeFileSync } from "node:fs";
import { getLlama, LlamaLogLevel } from "node-llama-cpp";

function parseArgs(argv) {
  const args = { threads: 2 };
  for (let i = 0; i < argv.length; ++i) {
    const a = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) usage(`${a} needs a value`);
      return argv[++i];
    };
    if (a === "--model") args.model = next();
    else if (a === "--tokens") args.tokens = next().split(",").filter((s) => s.length).map(Number);
    else if (a === "--out") args.out = next();
    else if (a === "--threads") args.threads = Number(next());
    else usage(`unknown argument ${a}`);
  }
  if (!args.model || !args.tokens || !args.out) usage("--model, --tokens and --out are required");
  if (args.tokens.some((t) => !Number.isInteger(t) || t < 0)) usage("--tokens: non-negative integers");
  return args;
}

function usage(msg) {
  process.stderr.write(`llamacpp_logits: ${msg}\n`);
  process.exit(2);
}

// NumPy .npy (format 1.0) of a float32 C-order array.
function writeNpyF32(path, data, shape) {
  let header = `{'descr': '<f4', 'fortran_order': False, 'shape': (${shape.join(", ")}${shape.length === 1 ? "," : ""}), }`;
  const total = 10 + header.length + 1;
  header += " ".repeat((64 - (total % 64)) % 64) + "\n";
  const head = Buffer.alloc(10);
  head.write("\x93NUMPY", 0, "latin1");
  head[6] = 1;
  head[7] = 0;
  head.writeUInt16LE(header.length, 8);
  const body = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  writeFileSync(path, Buffer.concat([head, Buffer.from(header, "latin1"), body]));
}

const args = parseArgs(process.argv.slice(2));
const llama = await getLlama({ build: "never", gpu: false, logLevel: LlamaLogLevel.error });
let model;
try {
  model = await llama.loadModel({ modelPath: args.model, useMmap: true });
} catch (e) {
  process.stderr.write(`llamacpp_logits: ${args.model}: llama.cpp cannot load it: ${e.message}\n`);
  process.exit(1);
}
const context = await model.createContext({
  contextSize: Math.max(64, args.tokens.length + 8),
  batchSize: Math.max(64, args.tokens.length),
  threads: args.threads,
  flashAttention: false,
  experimentalKvCacheKeyType: "F32",
  experimentalKvCacheValueType: "F32",
});
const sequence = context.getSequence();
const results = await sequence.controlledEvaluate(
  args.tokens.map((t) => [t, { generateNext: { logits: true } }]),
);

const n = args.tokens.length;
// Every position's map holds the whole vocabulary: its size is the vocabulary size.
const nVocab = results[0]?.next?.logits?.size ?? 0;
if (nVocab === 0) usage("no logits returned");
const out = new Float32Array(n * nVocab);
for (let i = 0; i < n; ++i) {
  const logits = results[i]?.next?.logits;
  if (!logits) usage(`no logits for position ${i}`);
  if (logits.size !== nVocab) usage(`position ${i}: ${logits.size} logits, expected ${nVocab}`);
  for (const [tok, v] of logits) out[i * nVocab + tok] = v;
}
writeNpyF32(args.out, out, [n, nVocab]);
await context.dispose();
await model.dispose();
await llama.dispose();
