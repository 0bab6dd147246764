// The cost of JSON-Schema-constrained decoding, ours against llama.cpp's, on the same model file and
// machine in one run. For each benchmark schema:
//   - `mixtral bench -p 0 -n N --json-schema FILE` (sampled decode, free and constrained, in one process:
//     tg_tps_sampled, tg_tps_constrained, their ratio, and our grammar's time per token);
//   - llama.cpp through node-llama-cpp: N tokens decoded with the same sampler settings (temperature 0.8,
//     top-k 40, top-p 0.95), free and under `llama.createGrammarForJsonSchema(schema)` (its own JSON
//     Schema -> GBNF converter and llama.cpp's grammar sampler); a sentence that ends starts over from BOS.
// The grammar's cost per token is the difference of the two times per token; the ratio is constrained
// tokens/s over free tokens/s.
//   node grammar_bench.mjs --model FILE.gguf --mixtral BIN [-n 128] [-t THREADS] [-r REPS]
//                          [--workdir DIR] [--only NAME]
// Prints a line per schema and engine, then one JSON object.
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

import { getLlama, LlamaGrammarEvaluationState, LlamaLogLevel } from "node-llama-cpp";

function usage(msg) {
  process.stderr.write(`grammar_bench: ${msg}\n`);
  process.stderr.write(
    "usage: node grammar_bench.mjs --model FILE.gguf --mixtral BIN [-n 128] [-t THREADS] [-r REPS] [--workdir DIR] [--only NAME]\n");
  process.exit(2);
}

const args = { model: "", mixtral: "", n: 128, t: 1, r: 2, workdir: "", only: "" };
{
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; ++i) {
    const a = argv[i];
    const next = () => (i + 1 < argv.length ? argv[++i] : usage(`${a} needs a value`));
    if (a === "--model") args.model = next();
    else if (a === "--mixtral") args.mixtral = next();
    else if (a === "--workdir") args.workdir = next();
    else if (a === "--only") args.only = next();
    else if (a === "-n" || a === "-t" || a === "-r") {
      const v = Number(next());
      if (!Number.isInteger(v) || v < 1) usage(`${a} must be a positive integer`);
      args[a.slice(1)] = v;
    } else usage(`unknown argument ${a}`);
  }
  if (!args.model || !args.mixtral) usage("--model and --mixtral are required");
}

// Schemas both converters take (node-llama-cpp's covers a subset of JSON Schema: no number bounds,
// patterns or formats beyond date/time), shaped like what agents send: a flat record, nested objects
// with enums and arrays, a list of records, a recursive tree.
const SCHEMAS = {
  record: {
    type: "object",
    properties: {
      name: { type: "string", maxLength: 24 },
      age: { type: "integer" },
      email: { type: "string", maxLength: 40 },
      active: { type: "boolean" },
    },
    required: ["name", "age", "email", "active"],
    additionalProperties: false,
  },
  nested: {
    type: "object",
    properties: {
      order: {
        type: "object",
        properties: {
          id: { type: "integer" },
          status: { enum: ["pending", "shipped", "delivered", "cancelled"] },
          items: {
            type: "array",
            items: {
              type: "object",
              properties: { sku: { type: "string", maxLength: 12 }, qty: { type: "integer" }, price: { type: "number" } },
              required: ["sku", "qty", "price"],
              additionalProperties: false,
            },
            minItems: 1,
            maxItems: 4,
          },
        },
        required: ["id", "status", "items"],
        additionalProperties: false,
      },
      note: { type: ["string", "null"], maxLength: 30 },
    },
    required: ["order", "note"],
    additionalProperties: false,
  },
  list: {
    type: "array",
    items: {
      type: "object",
      properties: { city: { type: "string", maxLength: 16 }, temp_c: { type: "number" }, sunny: { type: "boolean" } },
      required: ["city", "temp_c", "sunny"],
      additionalProperties: false,
    },
    minItems: 1,
    maxItems: 5,
  },
  tree: {
    $defs: {
      node: {
        type: "object",
        properties: {
          label: { type: "string", maxLength: 8 },
          children: { type: "array", items: { $ref: "#/$defs/node" }, maxItems: 2 },
        },
        required: ["label", "children"],
        additionalProperties: false,
      },
    },
    $ref: "#/$defs/node",
  },
};

const work = args.workdir || fs.mkdtempSync(path.join(os.tmpdir(), "grammar-bench-"));
fs.mkdirSync(work, { recursive: true });
const names = Object.keys(SCHEMAS).filter((n) => !args.only || n === args.only);
if (!names.length) usage(`no schema named ${args.only}`);

// ---- ours --------------------------------------------------------------------------------------------
const ours = {};
for (const name of names) {
  const file = path.join(work, `${name}.json`);
  fs.writeFileSync(file, JSON.stringify(SCHEMAS[name]));
  const r = spawnSync(args.mixtral, ["bench", "-m", args.model, "-p", "0", "-n", String(args.n), "-r", String(args.r),
    "-t", String(args.t), "--no-bandwidth", "--json", "--json-schema", file], { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`mixtral bench (${name}) failed: ${r.stderr}`);
  const j = JSON.parse(r.stdout.trim().split("\n").pop());
  ours[name] = {
    tg_tps_free: j.tg_tps_sampled, tg_tps_constrained: j.tg_tps_constrained, ratio: j.constrained_ratio,
    grammar_us_per_token: 1e6 / j.tg_tps_constrained - 1e6 / j.tg_tps_sampled,
    grammar_us_median: j.grammar_us_median, grammar_us_p99: j.grammar_us_p99,
  };
  console.log(`mixtral   ${name.padEnd(7)} free ${j.tg_tps_sampled.toFixed(2)} tok/s, constrained ` +
              `${j.tg_tps_constrained.toFixed(2)} tok/s (${(100 * j.constrained_ratio).toFixed(1)}%), grammar ` +
              `median ${j.grammar_us_median.toFixed(1)} us, p99 ${j.grammar_us_p99.toFixed(1)} us per token`);
}

// ---- llama.cpp ---------------------------------------------------------------------------------------
const llama = await getLlama({ build: "never", gpu: false, logLevel: LlamaLogLevel.error });
const model = await llama.loadModel({ modelPath: args.model, useMmap: true });
const context = await model.createContext({ contextSize: args.n + 8, batchSize: 8, threads: args.t,
                                            flashAttention: false });
const sequence = context.getSequence();
const bos = model.tokens.bos ?? 1;
const sampling = { temperature: 0.8, topK: 40, topP: 0.95 };

// Decodes n tokens; under a grammar, a finished sentence starts over from BOS with a fresh state.
// Returns tokens/s and the number of sentences completed.
async function decode(grammar, seed) {
  await sequence.clearHistory();
  let produced = 0, sentences = 0;
  const t0 = process.hrtime.bigint();
  while (produced < args.n) {
    if (sequence.nextTokenIndex + 1 >= context.contextSize) await sequence.clearHistory();
    const state = grammar ? new LlamaGrammarEvaluationState({ model, grammar }) : undefined;
    const room = Math.min(args.n - produced, context.contextSize - sequence.nextTokenIndex - 2);
    let got = 0;
    for await (const _tok of sequence.evaluate([bos], { ...sampling, seed: seed + produced,
                                                        grammarEvaluationState: state })) {
      if (++got >= room) break;
    }
    produced += Math.max(got, 1);
    if (got < room) ++sentences;  // the generator ended: EOS where the grammar allowed it
  }
  const sec = Number(process.hrtime.bigint() - t0) / 1e9;
  return { tps: produced / sec, sentences };
}

const theirs = {};
await decode(undefined, 1);  // warm-up
for (const name of names) {
  const grammar = await llama.createGrammarForJsonSchema(SCHEMAS[name]);
  const free = [], con = [];
  let sentences = 0;
  for (let r = 0; r < args.r; ++r) {  // interleaved, so drift touches both alike
    free.push((await decode(undefined, 100 + r)).tps);
    const c = await decode(grammar, 100 + r);
    con.push(c.tps);
    sentences += c.sentences;
  }
  const total = (v) => v.length / v.reduce((s, x) => s + 1 / x, 0);  // all tokens over all time
  const f = total(free), c = total(con);
  theirs[name] = { tg_tps_free: f, tg_tps_constrained: c, ratio: c / f, grammar_us_per_token: 1e6 / c - 1e6 / f,
                   sentences };
  console.log(`llama.cpp ${name.padEnd(7)} free ${f.toFixed(2)} tok/s, constrained ${c.toFixed(2)} tok/s ` +
              `(${(100 * c / f).toFixed(1)}%), grammar ${(1e6 / c - 1e6 / f).toFixed(1)} us per token, ` +
              `${sentences} sentences`);
}
console.log(JSON.stringify({ model: args.model, threads: args.t, n_gen: args.n, reps: args.r, ours, llama_cpp: theirs }));
await context.dispose();
await model.dispose();
await llama.dispose();
if (!args.workdir) fs.rmSync(work, { recursive: true, force: true });
