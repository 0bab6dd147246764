// What the server tests share: command-line arguments, a timestamped log, test models, starting
// `mixtral serve` on a free 127.0.0.1 port (killed when the test process exits, whatever happened), and
// raw HTTP requests that keep the status and body of errors.
import { spawn, spawnSync } from 'node:child_process';
import net from 'node:net';

export const hasArg = (name) => process.argv.includes(name);
export const arg = (name) => {
  const i = process.argv.indexOf(name);
  if (i < 0 || i + 1 >= process.argv.length) throw new Error(`missing ${name}`);
  return process.argv[i + 1];
};

const t0 = Date.now();
export const log = (...a) => console.log(`[${((Date.now() - t0) / 1000).toFixed(1)}s]`, ...a);

export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

// A failed assertion must not leave a server running.
const servers = [];
process.on('exit', () => { for (const p of servers) if (p.exitCode === null) p.kill('SIGKILL'); });

// `mixtral make-test-model DIR`: a random q8_0 merged GGUF of the given shape (flags without "--"; by
// default dim 128, ffn 256, 2 layers, 4 heads, 2 KV heads, vocabulary 512), plus `extra` flags. Returns
// its path.
export function makeTestModel(bin, dir, shape = {}, extra = []) {
  const o = { dim: 128, ffn: 256, layers: 2, heads: 4, 'kv-heads': 2, vocab: 512, ...shape };
  const args = ['make-test-model', dir, '--types', 'q8_0', '--layouts', 'gguf-merged', '--threads', '2', ...extra];
  for (const [k, v] of Object.entries(o)) args.push(`--${k}`, String(v));
  const mk = spawnSync(bin, args, { stdio: 'inherit' });
  if (mk.status !== 0) throw new Error(`make-test-model ${dir}: exit ${mk.status}`);
  return `${dir}/gguf-merged-q8_0.gguf`;
}

// Starts `bin serve --model model` on 127.0.0.1 (port 0: a free one) with `threads` threads (0: all cores)
// and `extra` flags, and waits until /health answers 200. echo: copy its output to ours as it comes (else
// stderr is kept, see stderr()).
export async function startServer(bin, model, extra = [], { port = 0, echo = false, threads = 2 } = {}) {
  if (!port) port = await freePort();
  const args = ['serve', '--model', model, '--port', String(port), '--threads', String(threads), ...extra];
  const proc = spawn(bin, args, { stdio: ['ignore', echo ? 'inherit' : 'ignore', 'pipe'] });
  servers.push(proc);
  let stderr = '';
  proc.stderr.on('data', (d) => {
    stderr += d;
    if (echo) process.stderr.write(d);
  });
  const exited = new Promise((resolve) => proc.on('exit', (code, sig) => resolve({ code, sig })));
  const base = `http://127.0.0.1:${port}`;
  for (let i = 0; ; ++i) {
    try {
      const r = await fetch(`${base}/health`);
      if (r.ok) break;
    } catch { /* not up yet */ }
    if (proc.exitCode !== null || i > 600) throw new Error(`server did not start: ${stderr}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return { proc, base, exited, port, model, extra, stderr: () => stderr };
}

// POST a JSON body (an object, or text sent as is); the answer's status, headers, text and JSON (null if
// it is not JSON).
export async function post(base, p, body, headers = {}) {
  const r = await fetch(base + p, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await r.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  return { status: r.status, headers: r.headers, json, text };
}

// GET /metrics as {"name{labels}": value}.
export async function metrics(base) {
  const text = await (await fetch(`${base}/metrics`)).text();
  const m = {};
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const sp = line.lastIndexOf(' ');
    m[line.slice(0, sp)] = Number(line.slice(sp + 1));
  }
  return m;
}
