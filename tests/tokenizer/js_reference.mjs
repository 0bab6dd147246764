// Independent reference: npm mistral-tokenizer-js (v1 vocabulary, merge-rank BPE in JavaScript).
// Reads one JSON string per line on stdin, writes one JSON array of ids per line (no BOS, with
// SentencePiece's dummy-prefix space, as `mixtral tokenize --no-bos`).
import tokenizer from 'mistral-tokenizer-js';
import { createInterface } from 'node:readline';

const rl = createInterface({ input: process.stdin, crlfDelay: Infinity });
const out = [];
for await (const line of rl) {
  if (line.length === 0) continue;
  const text = JSON.parse(line);
  out.push(JSON.stringify(text.length === 0 ? [] : tokenizer.encode(text, false, true)));
}
process.stdout.write(out.join('\n') + '\n');
