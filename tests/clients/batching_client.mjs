#!/usr/bin/env node
// Checks that concurrent streams get the answers they get alone (ds4-server
// --parallel N batches their decode steps): four different chat prompts (greedy,
// with thinking off and on) are streamed all at once, then each one alone; every
// concurrent stream's text, reasoning, token ids and usage must equal its lone run.
//
//   node batching_client.mjs http://127.0.0.1:PORT/v1
import { streamCompletion } from './sse.mjs';

const baseUrl = process.argv[2];
if (!baseUrl) {
  console.error('usage: batching_client.mjs BASE_URL');
  process.exit(2);
}

const prompts = [
  { q: 'What is the capital of France?', thinking: false },
  { q: 'What color is the sky?', thinking: true },
  { q: 'Hello', thinking: false },
  { q: 'Who wrote Hamlet?', thinking: true },
];

function payload({ q, thinking }) {
  return {
    model: 'deepseek-v4-flash',
    messages: [{ role: 'user', content: q }],
    thinking: { type: thinking ? 'enabled' : 'disabled' },
    temperature: 0,
    max_tokens: 80,
    stream: true,
    stream_options: { include_usage: true },
    return_token_ids: true,
  };
}

const failures = [];
function check(condition, message) {
  if (!condition) failures.push(message);
  return condition;
}

function summary(result) {
  const ids = result.tokenChunks.flatMap((c) => c.tokenIds ?? []);
  return { text: result.text, reasoning: result.reasoning, ids, usage: result.usage, finish: result.finishReason };
}

function checkStream(label, result) {
  if (!check(result.status === 200, `${label}: HTTP ${result.status} ${result.errorBody ?? ''}`)) return false;
  check(!result.streamError, `${label}: stream error ${JSON.stringify(result.streamError)}`);
  for (const v of result.violations) check(false, `${label}: ${v}`);
  check(result.usage !== null, `${label}: no usage chunk`);
  return true;
}

const url = `${baseUrl}/chat/completions`;
const started = performance.now();
const together = await Promise.all(prompts.map((p) => streamCompletion(url, payload(p))));
const togetherMs = performance.now() - started;
const alone = [];
for (const p of prompts) alone.push(await streamCompletion(url, payload(p)));

for (let i = 0; i < prompts.length; i++) {
  const label = `"${prompts[i].q}" (thinking ${prompts[i].thinking ? 'on' : 'off'})`;
  if (!checkStream(`${label} concurrent`, together[i]) || !checkStream(`${label} alone`, alone[i])) continue;
  const a = summary(together[i]);
  const b = summary(alone[i]);
  check(a.text === b.text, `${label}: concurrent text ${JSON.stringify(a.text)} != alone ${JSON.stringify(b.text)}`);
  check(a.reasoning === b.reasoning,
    `${label}: concurrent reasoning ${JSON.stringify(a.reasoning)} != alone ${JSON.stringify(b.reasoning)}`);
  check(JSON.stringify(a.ids) === JSON.stringify(b.ids),
    `${label}: concurrent token ids ${JSON.stringify(a.ids)} != alone ${JSON.stringify(b.ids)}`);
  check(a.usage?.completion_tokens === b.usage?.completion_tokens,
    `${label}: completion_tokens ${a.usage?.completion_tokens} != alone ${b.usage?.completion_tokens}`);
  check(a.usage?.prompt_tokens === b.usage?.prompt_tokens,
    `${label}: prompt_tokens ${a.usage?.prompt_tokens} != alone ${b.usage?.prompt_tokens}`);
  check(a.finish === b.finish, `${label}: finish_reason ${a.finish} != alone ${b.finish}`);
  check(a.text.length > 0, `${label}: empty answer`);
  console.log(`${label}: ${a.usage?.completion_tokens} tokens, ${JSON.stringify(a.text)}`);
}
console.log(`4 concurrent streams in ${togetherMs.toFixed(0)} ms`);
if (failures.length > 0) {
  for (const f of failures) console.error(`FAIL: ${f}`);
  process.exit(1);
}
console.log('all concurrent streams equal their lone runs');
