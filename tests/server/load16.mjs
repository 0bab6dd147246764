// Profiling helper (not a test): 16 concurrent streams against a running server.
//   node load16.mjs PORT [streams] [tokens]
import OpenAI from 'openai';
const port = process.argv[2], c = Number(process.argv[3] ?? 16), ntok = Number(process.argv[4] ?? 64);
const client = new OpenAI({ baseURL: `http://127.0.0.1:${port}/v1`, apiKey: 'x', maxRetries: 0, timeout: 600000 });
const word = (i) => 'abcdefghijklmnopqrstuvwxyz'.slice(i % 20, (i % 20) + 2 + (i % 5));
const text = (seed, n) => Array.from({ length: n }, (_, k) => word(seed * 13 + k * 7)).join(' ');
const t0 = performance.now();
const rs = await Promise.all(Array.from({ length: c }, async (_, i) => {
  const r = await client.chat.completions.create({ model: 'm', messages: [{ role: 'user', content: text(i + 3, 6) }],
    max_tokens: ntok, temperature: 0, ignore_eos: true });
  return r.usage;
}));
const sec = (performance.now() - t0) / 1000;
const gen = rs.reduce((s, u) => s + u.completion_tokens, 0), prompt = rs.reduce((s, u) => s + u.prompt_tokens, 0);
console.log(`${c} streams: ${prompt} prompt + ${gen} generated tokens in ${sec.toFixed(2)} s = ${(gen / sec).toFixed(1)} t/s`);
