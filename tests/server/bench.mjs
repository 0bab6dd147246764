// Serving benchmark (not a test): N concurrent streaming chat requests with the `openai` client (short
// prompts, --tokens new tokens each, ignore_eos), for N in --concurrency: aggregate generation tokens/s, time
// to first token median and p95. Then (not with --quick) the TTFT of a request arriving while 15 streams
// decode, and prefix reuse on a shared ~1000-token system prompt.
//   node bench.mjs --model MODEL [--server mixtral|llama] [--mixtral BIN] [--llama-server BIN]
//     [--threads 2] [--tokens 128] [--concurrency 1,4,16,32] [--reps 1] [--ctx 2048]
//     [--step-tokens N] [--cache-type T] [--quick]
// --server llama: the same requests against llama-server (llama.cpp) on the same GGUF, started with
//   -np max(concurrency) --cont-batching -c (that x --ctx) -t/-tb --threads; its /v1/chat/completions takes
//   ignore_eos and stream_options.include_usage too. (Without a chat template in the file it formats as
//   chatml; ours as the model's; the prompts stay a few dozen tokens either way.)
// --server mixtral (default): `mixtral serve --parallel max(concurrency) --ctx-size --ctx`; --step-tokens and
//   --cache-type pass through.
// --reps: best of this many runs per concurrency (shared machines are noisy).
// --quick: only the concurrency sweep.
import { spawn } from 'node:child_process';
import OpenAI from 'openai';
import { freePort, startServer } from './harness.mjs';

const opt = (name, def) => {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : def;
};
const SERVER = opt('--server', 'mixtral'), MODEL = opt('--model');
const THREADS = Number(opt('--threads', '2')), NTOK = Number(opt('--tokens', '128'));
const CONC = opt('--concurrency', '1,4,16,32').split(',').map(Number);
const REPS = Number(opt('--reps', '1')), CTX = Number(opt('--ctx', '2048'));
const STEP_TOKENS = opt('--step-tokens', null), CACHE_TYPE = opt('--cache-type', null);
const QUICK = process.argv.includes('--quick');
const NP = Math.max(...CONC, QUICK ? 1 : 16);
if (!MODEL) throw new Error('--model is required');

// Starts llama-server and waits until /health answers 200 (it answers 503 while loading).
async function startLlama(bin) {
  const port = await freePort();
  const args = ['-m', MODEL, '--host', '127.0.0.1', '--port', String(port), '-np', String(NP), '-c', String(NP * CTX),
    '--cont-batching', '-t', String(THREADS), '-tb', String(THREADS), '--no-webui'];
  const proc = spawn(bin, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  proc.stderr.on('data', (d) => { stderr += d; });
  process.on('exit', () => { if (proc.exitCode === null) proc.kill('SIGKILL'); });
  const base = `http://127.0.0.1:${port}`;
  for (let i = 0; ; ++i) {
    try {
      if ((await fetch(`${base}/health`)).ok) break;
    } catch { /* not up yet */ }
    if (proc.exitCode !== null || i > 2400) throw new Error(`llama-server did not start: ${stderr.slice(-2000)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return { base, proc };
}

let base, proc;
if (SERVER === 'llama') {
  ({ base, proc } = await startLlama(opt('--llama-server')));
  console.log(`llama-server: -np ${NP} -c ${NP * CTX} --cont-batching -t ${THREADS}`);
} else {
  const extra = ['--parallel', String(NP), '--ctx-size', String(CTX), ...(STEP_TOKENS ? ['--step-tokens', STEP_TOKENS] : []),
    ...(CACHE_TYPE ? ['--cache-type', CACHE_TYPE] : [])];
  ({ base, proc } = await startServer(opt('--mixtral'), MODEL, extra, { threads: THREADS }));
  console.log(`mixtral serve ${extra.join(' ')} --threads ${THREADS}; ` +
    `KV cache: ${JSON.stringify((await (await fetch(`${base}/health`)).json()).kv_cache)}`);
}
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'x', maxRetries: 0, timeout: 600000 });
const word = (i) => 'abcdefghijklmnopqrstuvwxyz'.slice(i % 20, (i % 20) + 2 + (i % 5));
const text = (seed, n) => Array.from({ length: n }, (_, k) => word(seed * 13 + k * 7)).join(' ');

// One streaming request: time to its first content, its total time, tokens generated (usage, else chunks
// with content), and usage.
async function stream(messages, maxTokens) {
  const t0 = performance.now();
  let ttft = null, n = 0, usage = null;
  const s = await client.chat.completions.create({ model: 'm', messages, max_tokens: maxTokens, temperature: 0,
    ignore_eos: true, stream: true, stream_options: { include_usage: true } });
  for await (const c of s) {
    if (c.usage) usage = c.usage;
    const d = c.choices[0]?.delta?.content;
    if (d) {
      if (ttft === null) ttft = performance.now() - t0;
      ++n;
    }
  }
  return { ttft, ms: performance.now() - t0, tokens: usage?.completion_tokens ?? n, usage };
}
const pct = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];

await stream([{ role: 'user', content: 'warm up' }], 8);
const results = {};
for (const c of CONC) {
  let best = null;
  for (let rep = 0; rep < REPS; ++rep) {
    const t0 = performance.now();
    const rs = await Promise.all(Array.from({ length: c }, (_, i) => stream([{ role: 'user', content: text(100 * c + i + 1000 * rep, 6) }], NTOK)));
    const sec = (performance.now() - t0) / 1000;
    if (!best || sec < best.sec) best = { rs, sec };
  }
  const { rs, sec } = best;
  const gen = rs.reduce((s, r) => s + r.tokens, 0);
  const ttfts = rs.map((r) => r.ttft).sort((a, b) => a - b);
  results[c] = gen / sec;
  console.log(`concurrency ${c}: ${gen} tokens in ${sec.toFixed(2)} s = ${(gen / sec).toFixed(1)} tokens/s aggregate; ` +
    `TTFT median ${pct(ttfts, 50).toFixed(0)} ms, p95 ${pct(ttfts, 95).toFixed(0)} ms`);
  console.log(`RESULT ${JSON.stringify({ server: SERVER, concurrency: c, tokens: gen, seconds: sec, tps: gen / sec,
    ttft_median_ms: pct(ttfts, 50), ttft_p95_ms: pct(ttfts, 95) })}`);
}
if (results[1]) for (const c of CONC) if (c > 1) console.log(`speed-up ${c}/1: ${(results[c] / results[1]).toFixed(2)}x`);

if (QUICK) {
  proc.kill('SIGTERM');
  process.exit(0);
}

// TTFT of a request arriving while 15 other streams decode.
{
  const bg = Array.from({ length: 15 }, (_, i) => stream([{ role: 'user', content: text(500 + i, 6) }], NTOK * 2));
  await new Promise((r) => setTimeout(r, 300));
  const probes = [];
  for (let k = 0; k < 3; ++k) probes.push((await stream([{ role: 'user', content: text(600 + k, 6) }], 2)).ttft);
  await Promise.all(bg);
  console.log(`TTFT of a new request while 15 streams decode: ${probes.map((t) => t.toFixed(0)).join(', ')} ms`);
}

// Prefix reuse: one ~1000-token system prompt, 6 different questions, one at a time.
const system = `zz ${text(7, 440)}`;
let prompt = 0, cached = 0;
// (A different first word keeps the cold request from matching anything cached by the runs above.)
const ttfts = [];
for (let q = 0; q < 6; ++q) {
  const r = await stream([{ role: 'system', content: system }, { role: 'user', content: `question ${q}: ${text(q, 5)}` }], 4);
  prompt += r.usage.prompt_tokens;
  cached += r.usage.prompt_tokens_details?.cached_tokens ?? 0;
  ttfts.push(r.ttft);
  console.log(`shared system prompt, request ${q}: ${r.usage.prompt_tokens} prompt tokens, ` +
    `${r.usage.prompt_tokens_details?.cached_tokens ?? '?'} cached, TTFT ${r.ttft.toFixed(0)} ms`);
}
const warm = ttfts.slice(1).reduce((a, b) => a + b, 0) / (ttfts.length - 1);
console.log(`prefix reuse: ${cached} of ${prompt} prompt tokens reported cached (${(100 * cached / prompt).toFixed(1)}% over all ` +
  `${ttfts.length} requests, the first one cold); ` +
  `TTFT cold ${ttfts[0].toFixed(0)} ms, warm ${warm.toFixed(0)} ms: ${(ttfts[0] - warm).toFixed(0)} ms saved per request`);
proc.kill('SIGTERM');
