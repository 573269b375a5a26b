// Streaming chat-completion reader that follows llama-benchy's measurement rules
// (its client.py): the time to first response (ttfr) is taken at the first chunk
// that has choices; a chunk counts as a token chunk when its delta has content,
// reasoning_content, reasoning or tool-call text, or non-empty token_ids; tokens
// are counted from token_ids when every token chunk has them, and the final usage
// chunk gives prompt_tokens / completion_tokens.
//
// Besides measuring, it records every departure from the streaming contract of
// ds4-server (docs/server.md) in `violations`.

export async function streamCompletion(url, payload, { signal } = {}) {
  const start = performance.now();
  const response = await fetch(url, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Authorization: 'Bearer none' },
    body: JSON.stringify(payload),
    signal,
  });
  const result = {
    status: response.status,
    startMs: start,
    ttfrMs: null,
    ttftMs: null,
    tokenChunks: [],        // {t, text, tokenIds}
    chunksWithChoices: 0,
    finishReason: null,
    usage: null,
    sawDone: false,
    text: '',
    reasoning: '',
    violations: [],
    endMs: null,
  };
  if (response.status !== 200) {
    result.errorBody = await response.text();
    result.endMs = performance.now();
    return result;
  }
  const decoder = new TextDecoder('utf-8');
  let buffer = '';
  let afterDone = false;
  let afterUsage = false;
  const handleLine = (line, now) => {
    line = line.trim();
    if (!line) return;
    if (afterDone) result.violations.push(`data after [DONE]: ${line.slice(0, 80)}`);
    if (line === 'data: [DONE]' || line === 'data:[DONE]') {
      result.sawDone = true;
      afterDone = true;
      return;
    }
    if (!line.startsWith('data:')) {
      result.violations.push(`non-data line: ${line.slice(0, 80)}`);
      return;
    }
    let chunk;
    try {
      chunk = JSON.parse(line.slice(5).trim());
    } catch (e) {
      result.violations.push(`unparsable chunk: ${line.slice(0, 80)}`);
      return;
    }
    if (chunk.error) {
      result.streamError = chunk.error;
      return;
    }
    if ('usage' in chunk && chunk.usage === null) result.violations.push('"usage": null in a chunk');
    if (afterUsage) result.violations.push('a chunk after the usage chunk');
    if (chunk.usage && typeof chunk.usage === 'object') {
      result.usage = chunk.usage;
      afterUsage = true;
      if (!Array.isArray(chunk.choices) || chunk.choices.length !== 0) {
        result.violations.push('the usage chunk has choices');
      }
    }
    if (!Array.isArray(chunk.choices) || chunk.choices.length === 0) return;
    result.chunksWithChoices += 1;
    if (result.ttfrMs === null) result.ttfrMs = now - start;
    const choice = chunk.choices[0];
    const delta = choice.delta ?? {};
    const text = choice.text ?? '';
    const toolText = (delta.tool_calls ?? [])
      .map((c) => (c.function?.name ?? '') + (c.function?.arguments ?? ''))
      .join('');
    const tokenIds = choice.token_ids;
    const isTokenChunk =
      delta.content || delta.reasoning_content || delta.reasoning || toolText || text ||
      (Array.isArray(tokenIds) && tokenIds.length > 0);
    if (choice.finish_reason) {
      result.finishReason = choice.finish_reason;
      if (isTokenChunk) result.violations.push('the finish chunk carries a token');
      return;
    }
    if (!isTokenChunk) {
      result.violations.push(`a chunk with choices but no token: ${line.slice(0, 120)}`);
      return;
    }
    if (result.ttftMs === null) result.ttftMs = now - start;
    result.tokenChunks.push({ t: now, text: (delta.content ?? '') + text, tokenIds });
    result.text += (delta.content ?? '') + text;
    result.reasoning += delta.reasoning_content ?? '';
  };
  for await (const bytes of response.body) {
    const now = performance.now();
    buffer += decoder.decode(bytes, { stream: true });
    let newline;
    while ((newline = buffer.indexOf('\n')) >= 0) {
      handleLine(buffer.slice(0, newline), now);
      buffer = buffer.slice(newline + 1);
    }
  }
  handleLine(buffer, performance.now());
  result.endMs = performance.now();
  if (!result.sawDone) result.violations.push('no data: [DONE] at the end');
  return result;
}

// Token counts by llama-benchy's three methods.
export function tokenCounts(result) {
  const chunks = result.tokenChunks;
  const allHaveIds = chunks.length > 0 && chunks.every((c) => Array.isArray(c.tokenIds));
  return {
    perChunk: chunks.length,
    viaTokenIds: allHaveIds ? chunks.reduce((n, c) => n + c.tokenIds.length, 0) : null,
    viaUsage: result.usage ? result.usage.completion_tokens : null,
  };
}

// Decode speed as llama-benchy defines it: (N - 1) / (t_last - t_first).
export function decodeTokensPerSecond(result) {
  const chunks = result.tokenChunks;
  if (chunks.length < 2) return 0;
  const seconds = (chunks[chunks.length - 1].t - chunks[0].t) / 1000;
  return seconds > 0 ? (chunks.length - 1) / seconds : 0;
}
