// llama.cpp's speed on the same file and machine, for comparison with `mixtral bench`: llama-bench's
// pp and tg tests (a prompt of -p tokens in one batch; -n tokens decoded one at a time from an empty
// context), through node-llama-cpp's prebuilt CPU build. Token ids are drawn at random below the
// vocabulary size, as llama-bench does.
//   node llamacpp_bench.mjs --model FILE.gguf [-p 512] [-n 128] [-t THREADS] [-r REPS]
// Prints one JSON object: pp_tps, tg_tps (means of the reps), and each rep's rate.
import { getLlama, LlamaLogLevel } from "node-llama-cpp";

function usage(msg) {
  process.stderr.write(`llamacpp_bench: ${msg}\n`);
  process.stderr.write("usage: node llamacpp_bench.mjs --model FILE.gguf [-p 512] [-n 128] [-t THREADS] [-r REPS]\n");
  process.exit(2);
}

function parseArgs(argv) {
  const args = { model: "", p: 512, n: 128, t: 1, r: 2 };
  for (let i = 0; i < argv.length; ++i) {
    const a = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) usage(`${a} needs a value`);
      return argv[++i];
    };
    const count = (name) => {
      const v = Number(next());
      if (!Number.isInteger(v) || v < 1) usage(`${name} must be a positive integer`);
      return v;
    };
    if (a === "--model") args.model = next();
    else if (a === "-p") args.p = count("-p");
    else if (a === "-n") args.n = count("-n");
    else if (a === "-t") args.t = count("-t");
    else if (a === "-r") args.r = count("-r");
    else usage(`unknown argument ${a}`);
  }
  if (!args.model) usage("--model is required");
  return args;
}

const args = parseArgs(process.argv.slice(2));
const llama = await getLlama({ build: "never", gpu: false, logLevel: LlamaLogLevel.error });
const model = await llama.loadModel({ modelPath: args.model, useMmap: true });
const context = await model.createContext({
  contextSize: args.p + args.n + 8,
  batchSize: args.p,
  threads: args.t,
  flashAttention: false,
});
const sequence = context.getSequence();
const nVocab = model.fileInfo.metadata?.tokenizer?.ggml?.tokens?.length ?? 32000;
const randomTokens = (n) => Array.from({ length: n }, () => 3 + Math.floor(Math.random() * (nVocab - 3)));

async function prompt() {
  await sequence.clearHistory();
  const t0 = process.hrtime.bigint();
  await sequence.evaluateWithoutGeneratingNewTokens(randomTokens(args.p));
  return args.p / (Number(process.hrtime.bigint() - t0) / 1e9);
}

async function generate() {
  await sequence.clearHistory();
  const tokens = randomTokens(args.n);
  const t0 = process.hrtime.bigint();
  for (const tok of tokens) await sequence.evaluateWithoutGeneratingNewTokens([tok]);
  return args.n / (Number(process.hrtime.bigint() - t0) / 1e9);
}

await prompt();  // warm-up, as llama-bench does
const pp = [], tg = [];
for (let r = 0; r < args.r; ++r) pp.push(await prompt());
await generate();
for (let r = 0; r < args.r; ++r) tg.push(await generate());
const mean = (v) => v.reduce((s, x) => s + x, 0) / v.length;
console.log(JSON.stringify({ engine: "llama.cpp (node-llama-cpp)", threads: args.t, n_prompt: args.p, n_gen: args.n,
                             pp_tps: mean(pp), tg_tps: mean(tg), pp_tps_reps: pp, tg_tps_reps: tg }));
await context.dispose();
await model.dispose();
await llama.dispose();
