#!/usr/bin/env node
// Drives ds4-server with the official `openai` npm SDK and checks the answers of
// the tiny trained chat model:
//  * /v1/models lists deepseek-v4-flash;
//  * chat completions, thinking disabled, temperature 0: the non-streamed answer
//    contains "Paris" and the streamed text equals it; usage is reported;
//  * thinking on (the default): reasoning_content and content, streamed == not;
//  * stop strings (streamed and not), max_tokens, seed reproducibility, an empty user
//    message, a second turn;
//  * /v1/completions streamed == not streamed;
//  * errors surface as the SDK's typed errors (400 BadRequestError).
//
//   OPENAI_SDK_DIR=<dir with node_modules/openai> node openai_sdk_client.mjs BASE_URL
import { createRequire } from 'node:module';
import path from 'node:path';

const sdkDir = process.env.OPENAI_SDK_DIR;
const baseURL = process.argv[2];
if (!sdkDir || !baseURL) {
  console.error('usage: OPENAI_SDK_DIR=DIR node openai_sdk_client.mjs BASE_URL');
  process.exit(2);
}
const require = createRequire(path.join(sdkDir, 'package.json'));
const OpenAI = require('openai').default ?? require('openai');

const client = new OpenAI({ baseURL, apiKey: 'not-needed', maxRetries: 0, timeout: 120_000 });
const failures = [];
function check(condition, message) {
  if (!condition) failures.push(message);
  else console.log(`ok - ${message}`);
}

const france = [{ role: 'user', content: 'What is the capital of France?' }];

async function collect(stream) {
  let content = '';
  let reasoning = '';
  let chunks = 0;
  let usage = null;
  let finish = null;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    if (!chunk.choices || chunk.choices.length === 0) continue;
    chunks++;
    const choice = chunk.choices[0];
    content += choice.delta?.content ?? choice.text ?? '';
    reasoning += choice.delta?.reasoning_content ?? '';
    if (choice.finish_reason) finish = choice.finish_reason;
  }
  return { content, reasoning, chunks, usage, finish };
}

async function main() {
  const models = await client.models.list();
  const ids = models.data.map((m) => m.id);
  check(ids.length === 1 && ids[0] === 'deepseek-v4-flash', `models.list() is [deepseek-v4-flash] (got ${ids})`);

  // Thinking disabled, greedy.
  const plain = await client.chat.completions.create({
    model: 'deepseek-v4-flash', messages: france, temperature: 0, max_tokens: 64,
    thinking: { type: 'disabled' },
  });
  const answer = plain.choices[0].message.content;
  check(answer.includes('Paris'), `non-streamed answer contains Paris: ${JSON.stringify(answer)}`);
  check(plain.choices[0].finish_reason === 'stop', `finish_reason stop (${plain.choices[0].finish_reason})`);
  check(plain.usage.prompt_tokens > 0 && plain.usage.completion_tokens > 0,
    `usage reported: ${JSON.stringify(plain.usage)}`);
  check(!plain.choices[0].message.reasoning_content, 'no reasoning with thinking disabled');

  const streamed = await collect(await client.chat.completions.create({
    model: 'deepseek-v4-flash', messages: france, temperature: 0, max_tokens: 64,
    thinking: { type: 'disabled' }, stream: true, stream_options: { include_usage: true },
  }));
  check(streamed.content === answer, `streamed text equals non-streamed: ${JSON.stringify(streamed.content)}`);
  check(streamed.finish === 'stop', `streamed finish_reason stop (${streamed.finish})`);
  check(streamed.usage && streamed.usage.completion_tokens === plain.usage.completion_tokens &&
        streamed.usage.prompt_tokens === plain.usage.prompt_tokens,
    `streamed usage equals non-streamed: ${JSON.stringify(streamed.usage)}`);
  check(streamed.chunks === plain.usage.completion_tokens + 1,
    `one chunk per token plus the finish chunk (${streamed.chunks} chunks, ${plain.usage.completion_tokens} tokens)`);

  // stop strings, max_tokens, seed.
  const stopped = await client.chat.completions.create({
    model: 'deepseek-v4-flash', messages: france, temperature: 0, stop: [' Paris'],
    thinking: { type: 'disabled' },
  });
  check(stopped.choices[0].message.content === 'The capital of France is' &&
        stopped.choices[0].finish_reason === 'stop',
    `stop [" Paris"] cuts the answer: ${JSON.stringify(stopped.choices[0].message.content)}`);
  const stoppedStream = await collect(await client.chat.completions.create({
    model: 'deepseek-v4-flash', messages: france, temperature: 0, stop: [' Paris'],
    thinking: { type: 'disabled' }, stream: true,
  }));
  check(stoppedStream.content === 'The capital of France is', 'stop string applied while streaming');
  const short = await client.chat.completions.create({
    model: 'deepseek-v4-flash', messages: france, temperature: 0, max_tokens: 3,
    thinking: { type: 'disabled' },
  });
  check(short.usage.completion_tokens === 3 && short.choices[0].finish_reason === 'length',
    `max_tokens 3 gives 3 tokens and finish_reason length (${short.usage.completion_tokens}, ${short.choices[0].finish_reason})`);
  // Near-uniform sampling (temperature 10, no min_p) so that the seed decides everything.
  const seeded = async (seed) => (await client.chat.completions.create({
    model: 'deepseek-v4-flash', messages: [{ role: 'user', content: 'Write a poem' }],
    temperature: 10, min_p: 0, seed, max_tokens: 24, thinking: { type: 'disabled' },
  })).choices[0].message.content;
  const [seedA, seedB, seedC] = [await seeded(1234), await seeded(1234), await seeded(4321)];
  check(seedA === seedB, `the same seed gives the same sampled text (${JSON.stringify(seedA)})`);
  check(seedA !== seedC, `another seed gives other text (${JSON.stringify(seedC)})`);

  // An empty user message is accepted (llama-benchy's context preload), and a second
  // turn is answered from the history.
  const empty = await client.chat.completions.create({
    model: 'deepseek-v4-flash', max_tokens: 4,
    messages: [{ role: 'system', content: 'Warmup Warmup' }, { role: 'user', content: '' }],
  });
  check(empty.usage.prompt_tokens > 0 && empty.usage.completion_tokens > 0,
    `an empty user message is answered (usage ${JSON.stringify(empty.usage)})`);
  const followUp = await client.chat.completions.create({
    model: 'deepseek-v4-flash', temperature: 0, thinking: { type: 'disabled' },
    messages: [...france, { role: 'assistant', content: answer },
               { role: 'user', content: 'What is the capital of Germany?' }],
  });
  check(followUp.choices[0].message.content.includes('Berlin'),
    `a second turn is answered: ${JSON.stringify(followUp.choices[0].message.content)}`);

  // The other two switches give the same non-thinking answer.
  for (const extra of [{ reasoning_effort: 'none' }, { chat_template_kwargs: { thinking: false } }]) {
    const other = await client.chat.completions.create({
      model: 'deepseek-v4-flash', messages: france, temperature: 0, max_tokens: 64, ...extra,
    });
    check(other.choices[0].message.content === answer && !other.choices[0].message.reasoning_content,
      `${JSON.stringify(extra)} disables thinking`);
  }

  // Thinking on (the default): reasoning_content then content.
  const thought = await client.chat.completions.create({
    model: 'deepseek-v4-flash', messages: france, temperature: 0, max_tokens: 128,
  });
  const message = thought.choices[0].message;
  check(typeof message.reasoning_content === 'string' && message.reasoning_content.length > 0,
    `thinking: reasoning_content ${JSON.stringify(message.reasoning_content)}`);
  check(message.content.includes('Paris'), `thinking: content contains Paris: ${JSON.stringify(message.content)}`);
  check(!message.content.includes('</think>') && !message.reasoning_content.includes('</think>'),
    'thinking: no </think> marker in the visible text');
  const thoughtStream = await collect(await client.chat.completions.create({
    model: 'deepseek-v4-flash', messages: france, temperature: 0, max_tokens: 128, stream: true,
  }));
  check(thoughtStream.reasoning === message.reasoning_content,
    'thinking: streamed reasoning_content equals non-streamed');
  check(thoughtStream.content === message.content, 'thinking: streamed content equals non-streamed');

  // /v1/completions.
  const completion = await client.completions.create({
    model: 'deepseek-v4-flash', prompt: 'What is the capital of France?', temperature: 0,
    max_tokens: 64, reasoning_effort: 'none',
  });
  const text = completion.choices[0].text;
  check(text.includes('Paris'), `completions: text contains Paris: ${JSON.stringify(text)}`);
  const completionStream = await collect(await client.completions.create({
    model: 'deepseek-v4-flash', prompt: 'What is the capital of France?', temperature: 0,
    max_tokens: 64, reasoning_effort: 'none', stream: true,
  }));
  check(completionStream.content === text, 'completions: streamed text equals non-streamed');

  // Errors are typed by the SDK.
  try {
    await client.chat.completions.create({ model: 'deepseek-v4-flash', messages: france, temperature: 'hot' });
    check(false, 'a string temperature is rejected');
  } catch (error) {
    check(error instanceof OpenAI.BadRequestError && error.status === 400,
      `a string temperature is a 400 BadRequestError (${error.status} ${error.message})`);
  }
}

try {
  await main();
} catch (error) {
  failures.push(`unexpected: ${error.stack ?? error}`);
}
if (failures.length > 0) {
  console.error(`openai SDK client: ${failures.length} failure(s):`);
  for (const f of failures) console.error(`  - ${f}`);
  process.exit(1);
}
console.log('openai SDK client: all checks passed');
