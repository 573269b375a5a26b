#!/usr/bin/env node
// A test client that measures ds4-server the way llama-benchy does (see sse.mjs)
// and checks that its own counts equal the server's usage numbers.
//
//   node benchy_client.mjs --base-url http://127.0.0.1:PORT/v1 [--pp 16,64] [--tg 4,16]
//        [--depth 0,128] [--concurrency 1,3]
//   node benchy_client.mjs --base-url ... --flood 64     (64 clients at once, all must finish)
//
// For every case it runs streaming requests with return_token_ids and
// stream_options.include_usage (llama-benchy's payload) and checks:
//  * the stream follows the contract (no empty chunk with choices before the first
//    token, no "usage": null, a final usage chunk with empty choices, then [DONE]);
//  * tokens counted via token_ids == usage.completion_tokens, and one per chunk ==
//    usage.completion_tokens in non-thinking mode (one sampled token per chunk);
//  * usage.prompt_tokens equals the non-streamed response's for the same request;
//  * a follow-up turn of a conversation at depth d reuses the kept prompt state
//    (usage.prompt_tokens_details.cached_tokens).
// Prints a table (pp, tg, depth, concurrency, ttfr, t/s) and exits 1 on any failure.
import { streamCompletion, tokenCounts, decodeTokensPerSecond } from './sse.mjs';

function parseArgs(argv) {
  const args = { pp: [16, 64], tg: [4, 16], depth: [0, 128], concurrency: [1, 3], flood: 0 };
  for (let i = 2; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, '');
    const value = argv[i + 1];
    if (key === 'base-url') args.baseUrl = value;
    else if (key === 'flood') args.flood = Number(value);
    else if (['pp', 'tg', 'depth', 'concurrency'].includes(key)) args[key] = value.split(',').map(Number);
    else throw new Error(`unknown option --${key}`);
  }
  if (!args.baseUrl) throw new Error('--base-url is required');
  return args;
}

const failures = [];
function check(condition, message) {
  if (!condition) failures.push(message);
  return condition;
}

// Deterministic filler text (llama-benchy draws from a book corpus).
const WORDS = ('the river flows past old stone houses while children play near the bridge and ' +
  'merchants count coins under bright lanterns as evening settles over the quiet town').split(' ');
function filler(words, seed) {
  let x = seed * 2654435761 % 4294967296 || 1;
  const out = [];
  for (let i = 0; i < words; i++) {
    x = (x * 1103515245 + 12345) % 2147483648;
    out.push(WORDS[x % WORDS.length]);
  }
  return out.join(' ');
}

function messagesFor(pp, depth, seed) {
  const messages = [];
  if (depth > 0) messages.push({ role: 'system', content: filler(depth, 1000 + depth) });
  messages.push({ role: 'user', content: filler(pp, seed) });
  return messages;
}

async function nonStreamPromptTokens(baseUrl, payload) {
  const response = await fetch(`${baseUrl}/chat/completions`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ ...payload, stream: false, max_tokens: 1 }),
  });
  const body = await response.json();
  check(response.status === 200, `non-streamed request: HTTP ${response.status} ${JSON.stringify(body)}`);
  return body.usage?.prompt_tokens;
}

function checkResult(label, result, payload, thinking) {
  if (!check(result.status === 200, `${label}: HTTP ${result.status} ${result.errorBody ?? ''}`)) return;
  check(!result.streamError, `${label}: stream error ${JSON.stringify(result.streamError)}`);
  for (const v of result.violations) check(false, `${label}: ${v}`);
  check(result.usage !== null, `${label}: no usage chunk`);
  check(result.finishReason !== null, `${label}: no finish_reason`);
  check(result.ttfrMs !== null && result.ttfrMs === result.ttftMs,
    `${label}: first chunk with choices (${result.ttfrMs} ms) is not the first token (${result.ttftMs} ms)`);
  const counts = tokenCounts(result);
  check(counts.viaTokenIds === counts.viaUsage,
    `${label}: tokens via token_ids ${counts.viaTokenIds} != usage.completion_tokens ${counts.viaUsage}`);
  if (!thinking) {
    check(counts.perChunk === counts.viaUsage,
      `${label}: tokens counted one per chunk ${counts.perChunk} != usage.completion_tokens ${counts.viaUsage}`);
  }
  check(counts.viaUsage >= 1 && counts.viaUsage <= payload.max_tokens,
    `${label}: completion_tokens ${counts.viaUsage} outside [1, ${payload.max_tokens}]`);
  check((result.finishReason === 'length') === (counts.viaUsage === payload.max_tokens),
    `${label}: finish_reason ${result.finishReason} with ${counts.viaUsage}/${payload.max_tokens} tokens`);
}

function row(cells) {
  console.log(cells.map((c, i) => String(c).padStart(i === 0 ? 12 : 10)).join(' '));
}

async function runCases(args) {
  const url = `${args.baseUrl}/chat/completions`;
  row(['case', 'pp', 'tg', 'depth', 'conc', 'prompt', 'cached', 'tokens', 'ttfr_ms', 'tg_t/s']);
  let seed = 1;
  for (const depth of args.depth) {
    for (const pp of args.pp) {
      for (const tg of args.tg) {
        for (const concurrency of args.concurrency) {
          const label = `pp${pp}/tg${tg}/d${depth}/c${concurrency}`;
          const payloads = [];
          for (let i = 0; i < concurrency; i++) {
            payloads.push({
              model: 'deepseek-v4-flash',
              messages: messagesFor(pp, depth, seed++),
              max_tokens: tg,
              stream: true,
              return_token_ids: true,
              stream_options: { include_usage: true },
              thinking: { type: 'disabled' },
              cache_prompt: true,  // an unknown field llama-benchy may send
            });
          }
          const results = await Promise.all(payloads.map((p) => streamCompletion(url, p)));
          for (let i = 0; i < results.length; i++) {
            checkResult(`${label}#${i}`, results[i], payloads[i], false);
            const expectedPrompt = await nonStreamPromptTokens(args.baseUrl, payloads[i]);
            check(results[i].usage?.prompt_tokens === expectedPrompt,
              `${label}#${i}: streamed prompt_tokens ${results[i].usage?.prompt_tokens} != non-streamed ${expectedPrompt}`);
            const r = results[i];
            row([label, pp, tg, depth, concurrency, r.usage?.prompt_tokens,
              r.usage?.prompt_tokens_details?.cached_tokens, tokenCounts(r).viaTokenIds,
              r.ttfrMs?.toFixed(1), decodeTokensPerSecond(r).toFixed(1)]);
          }
        }
      }
    }
    if (depth > 0) {
      // A follow-up turn extends the conversation: its prompt state is reused.
      const payload = {
        messages: messagesFor(8, depth, 999),
        max_tokens: 4, stream: true, return_token_ids: true,
        stream_options: { include_usage: true }, thinking: { type: 'disabled' },
      };
      const first = await streamCompletion(url, payload);
      checkResult(`turn1/d${depth}`, first, payload, false);
      payload.messages.push({ role: 'assistant', content: first.text },
                            { role: 'user', content: filler(8, 998) });
      const again = await streamCompletion(url, payload);
      checkResult(`turn2/d${depth}`, again, payload, false);
      const cached = again.usage?.prompt_tokens_details?.cached_tokens ?? 0;
      const firstPrompt = first.usage?.prompt_tokens ?? 0;
      check(cached >= firstPrompt,
        `turn2/d${depth}: ${cached} cached prompt tokens, expected at least the first turn's ${firstPrompt}`);
      row([`turn2/d${depth}`, 8, 4, depth, 1, again.usage?.prompt_tokens, cached,
        tokenCounts(again).viaTokenIds, again.ttfrMs?.toFixed(1), decodeTokensPerSecond(again).toFixed(1)]);
    }
  }
  // Thinking mode: reasoning and answer are both token chunks.
  const thinkPayload = {
    messages: [{ role: 'user', content: 'What is the capital of France?' }],
    max_tokens: 64, stream: true, return_token_ids: true, stream_options: { include_usage: true },
  };
  const think = await streamCompletion(url, thinkPayload);
  checkResult('thinking', think, thinkPayload, true);
  check(think.reasoning.length > 0, 'thinking: no reasoning_content streamed');
  check(think.text.includes('Paris'), `thinking: answer ${JSON.stringify(think.text)} lacks Paris`);
}

async function flood(args, clients) {
  const url = `${args.baseUrl}/chat/completions`;
  const started = performance.now();
  const payload = {
    messages: [{ role: 'user', content: 'What is the capital of France?' }],
    max_tokens: 32, temperature: 0, stream: true, return_token_ids: true,
    stream_options: { include_usage: true }, thinking: { type: 'disabled' },
  };
  const results = await Promise.all(
    Array.from({ length: clients }, () => streamCompletion(url, payload).catch((e) => ({ thrown: e }))));
  let complete = 0;
  results.forEach((r, i) => {
    if (r.thrown) return check(false, `client ${i}: ${r.thrown}`);
    checkResult(`client ${i}`, r, payload, false);
    if (check(r.text.includes('Paris'), `client ${i}: answer ${JSON.stringify(r.text)} lacks Paris`)) complete++;
  });
  const seconds = (performance.now() - started) / 1000;
  console.log(`flood: ${complete}/${clients} clients got complete answers in ${seconds.toFixed(2)} s`);
  check(complete === clients, `only ${complete} of ${clients} clients got complete answers`);
}

const args = parseArgs(process.argv);
try {
  if (args.flood > 0) await flood(args, args.flood);
  else await runCases(args);
} catch (error) {
  failures.push(`unexpected: ${error.stack ?? error}`);
}
if (failures.length > 0) {
  console.error(`benchy client: ${failures.length} failure(s):`);
  for (const f of failures.slice(0, 40)) console.error(`  - ${f}`);
  process.exit(1);
}
console.log('benchy client: all counts match the server usage');
