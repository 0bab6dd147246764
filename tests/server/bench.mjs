// Serving benchmark (not a test): aggregate generation tokens/s at 1, 4 and 16 concurrent streams, time
// to first token under 16-stream load, and prefix reuse on a shared ~1000-token system prompt.
//   node bench.mjs --mixtral BIN --model MODEL [--threads N] [--tokens 64] [--reps N] [--cache-type T] [--quick]
// --quick: only the 1/4/16-stream rates and their TTFT (no probe under load, no prefix-reuse run).
// --cache-type: the server's KV cache type (f32, f16, q8_0; default the server's).
import OpenAI from 'openai';
import { startServer } from './harness.mjs';

const opt = (name, def) => {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : def;
};
const BIN = opt('--mixtral'), MODEL = opt('--model'), THREADS = opt('--threads', '0'), NTOK = Number(opt('--tokens', '64'));
const REPS = Number(opt('--reps', '1'));  // best of REPS runs per concurrency (shared machines are noisy)
const CACHE_TYPE = opt('--cache-type', null);
const srv = await startServer(BIN, MODEL, ['--parallel', '16', '--ctx-size', '2048', ...(CACHE_TYPE ? ['--cache-type', CACHE_TYPE] : [])],
  { echo: true, threads: Number(THREADS) });
const { base, proc } = srv;
console.log(`KV cache: ${JSON.stringify((await (await fetch(`${base}/health`)).json()).kv_cache)}`);
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'x', maxRetries: 0, timeout: 600000 });
const word = (i) => 'abcdefghijklmnopqrstuvwxyz'.slice(i % 20, (i % 20) + 2 + (i % 5));
const text = (seed, n) => Array.from({ length: n }, (_, k) => word(seed * 13 + k * 7)).join(' ');

async function stream(messages, maxTokens) {
  const t0 = performance.now();
  let ttft = null, n = 0, usage = null;
  const s = await client.chat.completions.create({ model: 'm', messages, max_tokens: maxTokens, temperature: 0,
    ignore_eos: true, stream: true, stream_options: { include_usage: true } });
  for await (const c of s) {
    if (c.usage) usage = c.usage;
    if (c.choices[0]?.delta?.content !== undefined && c.choices[0].delta.content !== '' && ttft === null) ttft = performance.now() - t0;
    if (c.choices[0]?.delta?.content) ++n;
  }
  return { ttft, ms: performance.now() - t0, usage };
}

await stream([{ role: 'user', content: 'warm up' }], 8);
const results = {};
for (const c of [1, 4, 16]) {
  let best = null;
  for (let rep = 0; rep < REPS; ++rep) {
    const t0 = performance.now();
    const rs = await Promise.all(Array.from({ length: c }, (_, i) => stream([{ role: 'user', content: text(100 * c + i + 1000 * rep, 6) }], NTOK)));
    const sec = (performance.now() - t0) / 1000;
    if (!best || sec < best.sec) best = { rs, sec };
  }
  const { rs, sec } = best;
  const gen = rs.reduce((s, r) => s + r.usage.completion_tokens, 0);
  const ttfts = rs.map((r) => r.ttft).sort((a, b) => a - b);
  results[c] = gen / sec;
  console.log(`concurrency ${c}: ${gen} tokens in ${sec.toFixed(2)} s = ${(gen / sec).toFixed(1)} tokens/s aggregate; ` +
    `TTFT median ${ttfts[Math.floor(c / 2)].toFixed(0)} ms, max ${ttfts[c - 1].toFixed(0)} ms`);
}
console.log(`speed-up 4/1: ${(results[4] / results[1]).toFixed(2)}x, 16/1: ${(results[16] / results[1]).toFixed(2)}x`);

if (process.argv.includes('--quick')) {
  proc.kill('SIGTERM');
  process.exit(0);
}

// TTFT of a request arriving while 15 other streams decode.
{
  const bg = Array.from({ length: 15 }, (_, i) => stream([{ role: 'user', content: text(500 + i, 6) }], NTOK * 4));
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
  cached += r.usage.prompt_tokens_details.cached_tokens;
  ttfts.push(r.ttft);
  console.log(`shared system prompt, request ${q}: ${r.usage.prompt_tokens} prompt tokens, ${r.usage.prompt_tokens_details.cached_tokens} cached, TTFT ${r.ttft.toFixed(0)} ms`);
}
const warm = ttfts.slice(1).reduce((a, b) => a + b, 0) / (ttfts.length - 1);
console.log(`prefix reuse: ${cached} of ${prompt} prompt tokens from the cache (${(100 * cached / prompt).toFixed(1)}% over all ` +
  `${ttfts.length} requests, the first one cold); ` +
  `TTFT cold ${ttfts[0].toFixed(0)} ms, warm ${warm.toFixed(0)} ms: ${(ttfts[0] - warm).toFixed(0)} ms saved per request`);
proc.kill('SIGTERM');
