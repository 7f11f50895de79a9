// SPDX-License-Identifier: MIT
// Compatibility: the official `openai` npm SDK, changed only in baseURL and apiKey, against a
// running brigade (in front of the mock OpenAI/Anthropic upstream and the real GSM8K replay
// data). Every response body and stream chunk is validated against OpenAI's published schemas.
//
// Run through CTest (which sets BR_BINARY_DIR and BR_SOURCE_DIR) or by hand:
//   BR_BINARY_DIR=build-debug BR_SOURCE_DIR=. node --test tests/compat/sdk.test.mjs
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import OpenAI from 'openai';
import Ajv2020 from 'ajv/dist/2020.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const SRC = path.resolve(process.env.BR_SOURCE_DIR || path.join(here, '../..'));
const BIN = path.resolve(process.env.BR_BINARY_DIR || path.join(SRC, 'build-debug'));
const PROVIDER_KEY = 'sk-compat-provider-7a1c';
const CLIENT_KEY = 'br-compat-client-key-42';
const MASTER_KEY = 'br-compat-master-key-9d';

// ---------------------------------------------------------------- schemas

// The spec mixes OpenAPI 3.0's `nullable` into 3.1 schemas; express it in JSON Schema terms.
function denullable(node) {
  if (Array.isArray(node)) return node.map(denullable);
  if (!node || typeof node !== 'object') return node;
  const out = {};
  for (const [k, v] of Object.entries(node)) out[k] = denullable(v);
  if (!('nullable' in out)) return out;
  const nullable = out.nullable;
  delete out.nullable;
  if (!nullable) return out;
  if (Array.isArray(out.enum) && !out.enum.includes(null)) out.enum = [...out.enum, null];
  if (typeof out.type === 'string') return { ...out, type: [out.type, 'null'] };
  if (Array.isArray(out.type)) return { ...out, type: [...new Set([...out.type, 'null'])] };
  return { anyOf: [out, { type: 'null' }] };
}
const ajv = new Ajv2020({ strict: false, allErrors: true, validateFormats: false });
ajv.addSchema(denullable(JSON.parse(fs.readFileSync(path.join(SRC, 'tests/data/openai/schemas.json'), 'utf8'))));
function validator(name) {
  const v = ajv.getSchema(`openai#/components/schemas/${name}`);
  assert.ok(v, `schema ${name}`);
  return (obj) => {
    if (!v(obj)) {
      assert.fail(`${name} schema violation: ${ajv.errorsText(v.errors)}\n${JSON.stringify(obj)}`);
    }
  };
}
const checkCompletion = validator('CreateChatCompletionResponse');
const checkChunk = validator('CreateChatCompletionStreamResponse');
const checkModels = validator('ListModelsResponse');

// ---------------------------------------------------------------- processes

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'brigade-compat-'));
const procs = [];
let gatewayPort = 0;
let gatewayLog = '';

function waitFor(check, ms, what) {
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    const tick = () => {
      const v = check();
      if (v) return resolve(v);
      if (Date.now() - t0 > ms) return reject(new Error(`timed out waiting for ${what}`));
      setTimeout(tick, 20);
    };
    tick();
  });
}

before(async () => {
  const portFile = path.join(dir, 'mock.port');
  const mock = spawn(path.join(BIN, 'tests/mock_upstream/mock_upstream'),
    ['--port', '0', '--port-file', portFile, '--require-key', PROVIDER_KEY], { stdio: 'ignore' });
  procs.push(mock);
  const mockPort = await waitFor(() => fs.existsSync(portFile) && parseInt(fs.readFileSync(portFile, 'utf8'), 10), 10000, 'mock');
  const config = `
server:
  workers: 1
auth:
  master_key: env:BR_COMPAT_MASTER_KEY
  keys:
    - id: compat
      key: env:BR_COMPAT_CLIENT_KEY
log:
  path: ${dir}/requests.db
models:
  - name: mock-gpt
    provider: openai
    model: gpt-4o-mini
    base_url: http://127.0.0.1:${mockPort}/v1
    api_key: env:BR_COMPAT_PROVIDER_KEY
    price: {input: 0.15, output: 0.60}
  - name: mock-claude
    provider: anthropic
    model: claude-test
    base_url: http://127.0.0.1:${mockPort}/v1
    api_key: env:BR_COMPAT_PROVIDER_KEY
    price: {input: 3, output: 15}
  - name: gpt-4-1106-preview
    provider: replay
    replay:
      file: ${SRC}/data/routellm/gsm8k/gsm8k_responses.csv
      prompt: prompt
      response: gpt-4-1106-preview_response
    price: {input: 10, output: 30}
  - name: stories260k
    provider: local
    local:
      model: ${SRC}/models/stories260K/stories260K-f32.gguf
      adapters:
        lora-a: ${SRC}/models/stories260K/lora260K-r4.gguf
    price: {input: 0.01, output: 0.02}
`;
  fs.writeFileSync(path.join(dir, 'brigade.yaml'), config);
  const gw = spawn(path.join(BIN, 'src/brigade'),
    ['serve', '-c', path.join(dir, 'brigade.yaml'), '--listen', '127.0.0.1:0'],
    { env: { ...process.env, BR_COMPAT_PROVIDER_KEY: PROVIDER_KEY, BR_COMPAT_CLIENT_KEY: CLIENT_KEY,
      BR_COMPAT_MASTER_KEY: MASTER_KEY },
      stdio: ['ignore', 'pipe', 'pipe'] });
  procs.push(gw);
  gw.stdout.on('data', (d) => { gatewayLog += d; });
  gw.stderr.on('data', (d) => { gatewayLog += d; });
  gatewayPort = await waitFor(() => {
    const m = gatewayLog.match(/event=listening addr=127\.0\.0\.1:(\d+)/);
    return m && parseInt(m[1], 10);
  }, 15000, 'gateway');
});

after(() => {
  for (const p of procs) p.kill('SIGTERM');
  fs.rmSync(dir, { recursive: true, force: true });
});

function client(apiKey = CLIENT_KEY) {
  return new OpenAI({ apiKey, baseURL: `http://127.0.0.1:${gatewayPort}/v1`, maxRetries: 0, timeout: 20000 });
}

const JANET = 'Janet\u2019s ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins for her friends every day with four. She sells the remainder at the farmers\' market daily for $2 per fresh duck egg. How much in dollars does she make every day at the farmers\' market?';

// ---------------------------------------------------------------- tests

test('non-streamed chat completion', async () => {
  const { data, response } = await client().chat.completions.create({
    model: 'mock-gpt',
    messages: [{ role: 'system', content: 'You are terse.' }, { role: 'user', content: 'Hello SDK' }],
    temperature: 0.2,
  }).withResponse();
  checkCompletion(data);
  assert.equal(data.object, 'chat.completion');
  assert.match(data.choices[0].message.content, /Hello SDK/);
  assert.ok(data.usage.prompt_tokens > 0 && data.usage.completion_tokens > 0);
  assert.equal(response.headers.get('x-brigade-model'), 'mock-gpt');
  const cost = Number(response.headers.get('x-brigade-cost-usd'));
  assert.ok(cost > 0);
  const want = (data.usage.prompt_tokens * 0.15 + data.usage.completion_tokens * 0.60) / 1e6;
  assert.ok(Math.abs(cost - want) < 1e-9, `cost ${cost} want ${want}`);
  assert.ok(response.headers.get('x-request-id'));
});

async function collect(stream) {
  const chunks = [];
  for await (const c of stream) {
    checkChunk(c);
    chunks.push(c);
  }
  return chunks;
}

test('streamed chat completion without include_usage', async () => {
  const stream = await client().chat.completions.create({
    model: 'mock-gpt', stream: true,
    messages: [{ role: 'user', content: 'stream me [[words:6]]' }],
  });
  const chunks = await collect(stream);
  const text = chunks.map((c) => c.choices[0]?.delta?.content ?? '').join('');
  assert.equal(text.trim().split(/\s+/).length, 6);
  assert.ok(chunks.every((c) => c.choices.length > 0), 'no usage-only chunk for this client');
  assert.ok(chunks.every((c) => c.usage == null));
  assert.equal(chunks.at(-1).choices[0].finish_reason, 'stop');
});

test('streamed chat completion with include_usage', async () => {
  const stream = await client().chat.completions.create({
    model: 'mock-gpt', stream: true, stream_options: { include_usage: true },
    messages: [{ role: 'user', content: 'stream me [[words:4]]' }],
  });
  const chunks = await collect(stream);
  const last = chunks.at(-1);
  assert.equal(last.choices.length, 0);
  assert.equal(last.usage.completion_tokens, 4);
  assert.ok(last.usage.prompt_tokens > 0);
});

test('anthropic upstream through the OpenAI SDK, streamed with usage', async () => {
  const stream = await client().chat.completions.create({
    model: 'mock-claude', stream: true, stream_options: { include_usage: true }, max_tokens: 64,
    messages: [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'hi claude [[words:3]]' }],
  });
  const chunks = await collect(stream);
  assert.equal(chunks.at(-1).usage.completion_tokens, 3);
  const nonStream = await client().chat.completions.create({
    model: 'mock-claude', max_tokens: 64, messages: [{ role: 'user', content: 'plain claude' }],
  });
  checkCompletion(nonStream);
  assert.match(nonStream.choices[0].message.content, /plain claude/);
});

test('local: stories260K generated in-process, streamed with logprobs and usage', async () => {
  const golden = fs.readFileSync(path.join(SRC, 'models/stories260K/golden/run_greedy_once_upon.txt'), 'utf8');
  const stream = await client().chat.completions.create({
    model: 'stories260k', stream: true, stream_options: { include_usage: true },
    temperature: 0, max_tokens: 24, logprobs: true, top_logprobs: 2,
    messages: [{ role: 'user', content: 'Once upon a time' }],
  });
  const chunks = await collect(stream);
  const text = chunks.map((c) => c.choices[0]?.delta?.content ?? '').join('');
  assert.ok(text.length > 40 && golden.startsWith('Once upon a time' + text), text);
  const lp = chunks.flatMap((c) => c.choices[0]?.logprobs?.content ?? []);
  assert.equal(lp.length, 24);
  assert.ok(lp.every((e) => e.top_logprobs.length === 2 && e.logprob <= 0));
  assert.equal(chunks.at(-2).choices[0].finish_reason, 'length');
  assert.deepEqual(chunks.at(-1).usage, { prompt_tokens: 5, completion_tokens: 24, total_tokens: 29 });
  const whole = await client().chat.completions.create({
    model: 'stories260k', temperature: 0, max_tokens: 24,
    messages: [{ role: 'user', content: 'Once upon a time' }],
  });
  checkCompletion(whole);
  assert.equal(whole.choices[0].message.content, text);
  // The legacy text completion endpoint, which base models need.
  const legacy = await client().completions.create({
    model: 'stories260k', prompt: 'Once upon a time', temperature: 0, max_tokens: 24,
  });
  assert.equal(legacy.object, 'text_completion');
  assert.equal(legacy.choices[0].text, text);
  assert.equal(legacy.usage.completion_tokens, 24);
  const legacyStream = await client().completions.create({
    model: 'stories260k', prompt: 'Once upon a time', temperature: 0, max_tokens: 24, stream: true,
  });
  let streamed = '';
  for await (const c of legacyStream) streamed += c.choices[0]?.text ?? '';
  assert.equal(streamed, text);
  // A LoRA adapter picked per request by name: the merged-weights golden continuation.
  const loraGolden = fs.readFileSync(
    path.join(SRC, 'models/stories260K/golden/run_greedy_once_upon_lora_r4_merged.txt'), 'utf8');
  const lora = await collect(await client().chat.completions.create({
    model: 'stories260k:lora-a', stream: true, temperature: 0, max_tokens: 60,
    messages: [{ role: 'user', content: 'Once upon a time' }],
  }));
  const loraText = lora.map((c) => c.choices[0]?.delta?.content ?? '').join('');
  assert.ok(lora.every((c) => c.model === 'stories260k:lora-a'));
  assert.ok(loraText.length > 40 && loraGolden.startsWith('Once upon a time' + loraText), loraText);
  assert.ok(!golden.startsWith('Once upon a time' + loraText)); // the adapter changes the story
});

test('replay: a real recorded GPT-4 answer to a GSM8K question', async () => {
  const { data, response } = await client().chat.completions.create({
    model: 'gpt-4-1106-preview', messages: [{ role: 'user', content: JANET }],
  }).withResponse();
  checkCompletion(data);
  assert.match(data.choices[0].message.content, /^Janet uses 3 eggs for breakfast/);
  assert.ok(Number(response.headers.get('x-brigade-cost-usd')) > 0);
  const chunks = await collect(await client().chat.completions.create({
    model: 'gpt-4-1106-preview', stream: true, messages: [{ role: 'user', content: JANET }],
  }));
  assert.equal(chunks.map((c) => c.choices[0]?.delta?.content ?? '').join(''), data.choices[0].message.content);
});

test('models.list', async () => {
  const page = await client().models.list();
  const ids = page.data.map((m) => m.id);
  assert.deepEqual(ids, ['mock-gpt', 'mock-claude', 'gpt-4-1106-preview', 'stories260k',
    'stories260k:lora-a']);
  checkModels({ object: 'list', data: page.data });
  const adapter = await client().models.retrieve('stories260k:lora-a');
  assert.equal(adapter.id, 'stories260k:lora-a');
  const one = await client().models.retrieve('mock-claude');
  assert.equal(one.id, 'mock-claude');
});

test('error surface: 401, 404, 400, 429 and a stream cut short', async () => {
  await assert.rejects(client('wrong-key').chat.completions.create({
    model: 'mock-gpt', messages: [{ role: 'user', content: 'x' }],
  }), (e) => e instanceof OpenAI.AuthenticationError && e.status === 401 && e.error?.code === 'invalid_api_key');
  await assert.rejects(client('wrong-key').models.list(), (e) => e instanceof OpenAI.AuthenticationError);
  await assert.rejects(client().chat.completions.create({
    model: 'no-such-model', messages: [{ role: 'user', content: 'x' }],
  }), (e) => e instanceof OpenAI.NotFoundError && e.status === 404 && e.error?.code === 'model_not_found');
  await assert.rejects(client().chat.completions.create({
    model: 'gpt-4-1106-preview', messages: [{ role: 'user', content: 'not a recorded prompt' }],
  }), (e) => e instanceof OpenAI.NotFoundError && e.error?.code === 'replay_miss');
  await assert.rejects(client().chat.completions.create({
    model: 'mock-gpt', messages: [],
  }), (e) => e instanceof OpenAI.BadRequestError && e.status === 400);
  await assert.rejects(client().chat.completions.create({
    model: 'mock-gpt', messages: [{ role: 'user', content: 'x [[status:429]]' }],
  }), (e) => e instanceof OpenAI.RateLimitError && e.status === 429);
  await assert.rejects(client().chat.completions.create({
    model: 'mock-claude', max_tokens: 10, messages: [{ role: 'user', content: 'x [[status:529]]' }],
  }), (e) => e instanceof OpenAI.APIError && e.status === 529);
  await assert.rejects(async () => {
    const s = await client().chat.completions.create({
      model: 'mock-gpt', stream: true,
      messages: [{ role: 'user', content: 'a b c d e [[words:10]] [[fault:close_mid_stream]]' }],
    });
    for await (const c of s) checkChunk(c);
  }, (e) => e instanceof OpenAI.APIError);
});

test('virtual keys: a key made through the admin API, its budget and models as SDK errors', async () => {
  const adminCall = async (method, p, body) => {
    const r = await fetch(`http://127.0.0.1:${gatewayPort}${p}`, {
      method, headers: { authorization: `Bearer ${MASTER_KEY}` },
      body: body ? JSON.stringify(body) : undefined,
    });
    return { status: r.status, json: await r.json() };
  };
  const made = await adminCall('POST', '/admin/keys',
    { name: 'sdk', budget: { usd: 1, period: 'day' }, models: ['mock-gpt'] });
  assert.equal(made.status, 201);
  const vk = client(made.json.key);
  const r = await vk.chat.completions.create({ model: 'mock-gpt', messages: [{ role: 'user', content: 'hello key' }] });
  checkCompletion(r);
  const chunks = [];
  const stream = await vk.chat.completions.create({ model: 'mock-gpt', stream: true,
    stream_options: { include_usage: true }, messages: [{ role: 'user', content: 'stream [[words:5]]' }] });
  for await (const c of stream) { checkChunk(c); chunks.push(c); }
  assert.ok(chunks.at(-1).usage);
  const got = await adminCall('GET', `/admin/keys/${made.json.id}`);
  assert.ok(Number(got.json.spend.usd) > 0);
  assert.equal(got.json.key, undefined);
  await assert.rejects(
    vk.chat.completions.create({ model: 'mock-claude', messages: [{ role: 'user', content: 'hi' }] }),
    (e) => e instanceof OpenAI.PermissionDeniedError && e.status === 403 && e.code === 'model_not_allowed');
  await adminCall('PATCH', `/admin/keys/${made.json.id}`, { budget: { usd: got.json.spend.usd, period: 'day' } });
  await assert.rejects(
    vk.chat.completions.create({ model: 'mock-gpt', messages: [{ role: 'user', content: 'hi' }] }),
    (e) => {
      const h = e.headers;
      const ra = typeof h?.get === 'function' ? h.get('retry-after') : h?.['retry-after'];
      return e instanceof OpenAI.RateLimitError && e.code === 'budget_exceeded' && Number(ra) >= 1;
    });
  await adminCall('DELETE', `/admin/keys/${made.json.id}`);
  await assert.rejects(
    vk.chat.completions.create({ model: 'mock-gpt', messages: [{ role: 'user', content: 'hi' }] }),
    (e) => e instanceof OpenAI.AuthenticationError && e.code === 'invalid_api_key');
  assert.ok(!gatewayLog.includes(made.json.key));
});

test('no key appears in what the gateway logged', () => {
  assert.ok(!gatewayLog.includes(PROVIDER_KEY));
  assert.ok(!gatewayLog.includes(CLIENT_KEY));
});
