// `mixtral serve` under mpirun (expert parallelism) against the same server in one process, through the
// openai client: 4 concurrent streams (chat, streamed and not, and a completion), the same text, finish
// reasons and token counts at temperature 0 and with a seeded sampler; /health answers from rank 0.
//   node mpi_serve_test.mjs --mixtral BIN --model FILE
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import OpenAI from 'openai';
import { arg, freePort, log } from './harness.mjs';

const bin = arg('--mixtral');
const model = arg('--model');
const procs = [];
process.on('exit', () => { for (const p of procs) if (p.exitCode === null) p.kill('SIGKILL'); });

async function start(ranks) {
  const port = await freePort();
  const serve = [bin, 'serve', '--model', model, '--port', String(port), '--threads', '1', '--parallel', '4'];
  const cmd = ranks > 1 ? ['mpirun', '--oversubscribe', '-np', String(ranks), ...serve] : serve;
  const env = { ...process.env, OMPI_ALLOW_RUN_AS_ROOT: '1', OMPI_ALLOW_RUN_AS_ROOT_CONFIRM: '1' };
  const proc = spawn(cmd[0], cmd.slice(1), { stdio: ['ignore', 'ignore', 'pipe'], env });
  procs.push(proc);
  let stderr = '';
  proc.stderr.on('data', (d) => { stderr += d; });
  const base = `http://127.0.0.1:${port}`;
  for (let i = 0; ; ++i) {
    try {
      if ((await fetch(`${base}/health`)).ok) break;
    } catch { /* not up yet */ }
    if (proc.exitCode !== null || i > 600) throw new Error(`server (${ranks} ranks) did not start: ${stderr}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  const exited = new Promise((resolve) => proc.on('exit', (code) => resolve(code)));
  return { proc, base, exited, stderr: () => stderr };
}

// The pid of rank 0 among mpirun's children (their environment names their rank).
function rank0(mpirunPid) {
  for (const pid of fs.readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
      if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) !== mpirunPid) continue;
      if (fs.readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0').includes('OMPI_COMM_WORLD_RANK=0'))
        return Number(pid);
    } catch { /* gone */ }
  }
  throw new Error(`no rank 0 under mpirun ${mpirunPid}`);
}

// The four streams, run together.
async function streams(base) {
  const c = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'unused', maxRetries: 0 });
  const chat = (text, extra = {}) => ({
    model: 'm', messages: [{ role: 'user', content: text }], max_tokens: 24, temperature: 0, ...extra,
  });
  const streamed = async (req) => {
    let text = '', finish = null;
    for await (const ch of await c.chat.completions.create({ ...req, stream: true })) {
      text += ch.choices[0]?.delta?.content ?? '';
      finish = ch.choices[0]?.finish_reason ?? finish;
    }
    return { text, finish };
  };
  const plain = async (req) => {
    const r = await c.chat.completions.create(req);
    return { text: r.choices[0].message.content, finish: r.choices[0].finish_reason, usage: r.usage };
  };
  return Promise.all([
    plain(chat('In the beginning God created')),
    streamed(chat('And the earth was without form')),
    plain(chat('Let there be light', { temperature: 0.9, seed: 7, max_tokens: 32 })),
    c.completions.create({ model: 'm', prompt: 'darkness was upon the face of the deep', max_tokens: 20,
                           temperature: 0 }).then((r) => ({ text: r.choices[0].text, finish: r.choices[0].finish_reason,
                                                             usage: r.usage })),
  ]);
}

const one = await start(1);
const want = await streams(one.base);
one.proc.kill('SIGINT');
await one.exited;
for (const w of want) assert.ok(w.text.length > 0, 'one process answered');
for (const ranks of [2, 3]) {
  const s = await start(ranks);
  const got = await streams(s.base);
  assert.deepEqual(got, want, `${ranks} ranks: the same answers as one process`);
  log(`mpirun -np ${ranks} serve: 4 concurrent streams as one process (${got.map((g) => g.text.length).join(', ')} chars)`);
  // SIGINT to rank 0 drains the server, which ends the followers: the job exits 0. (Ctrl-C on mpirun
  // itself has mpirun stop every rank, exit 1.)
  process.kill(rank0(s.proc.pid), 'SIGINT');
  const code = await s.exited;
  assert.equal(code, 0, `mpirun -np ${ranks} serve exits 0 after SIGINT to rank 0: ${s.stderr()}`);
}
log('ok');
