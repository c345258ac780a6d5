// Exercise a running server with the current Node SDK (`openai`, pinned in
// tests/clients/runner.py as NODE_OPENAI_CURRENT).
//
// Reads MODELHOST_BASE_URL, MODELHOST_API_KEY, MODELHOST_ORG, MODELHOST_MODEL.
// Calls models.list, models.retrieve, chat.completions.create (plain, and
// streamed with stream_options.include_usage) and prints one JSON object on
// stdout. Any failure: message on stderr, exit status 1.
//
// A plain ESM `import "openai"`: the runner copies this file into a scratch
// directory whose node_modules links to the cached install (NODE_PATH does not
// apply to ESM resolution).
import OpenAI from "openai";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`missing env ${name}`);
  return v;
};

// The package's "exports" map may hide package.json; find it from the entry.
function sdkVersion() {
  let dir = dirname(createRequire(import.meta.url).resolve("openai"));
  for (let i = 0; i < 5; i++, dir = dirname(dir)) {
    try {
      const pkg = JSON.parse(readFileSync(join(dir, "package.json"), "utf8"));
      if (pkg.name === "openai") return pkg.version;
    } catch {
      // not here; go up
    }
  }
  return null;
}

async function main() {
  const client = new OpenAI({
    apiKey: env("MODELHOST_API_KEY"),
    organization: env("MODELHOST_ORG"),
    baseURL: env("MODELHOST_BASE_URL"),
    maxRetries: 0, // a failing test should fail now, not after backoff
  });
  const model = env("MODELHOST_MODEL");
  const messages = [{ role: "user", content: "Say hi" }];

  const page = await client.models.list();
  const retrieved = await client.models.retrieve(model);
  const chat = await client.chat.completions.create({ model, messages, max_tokens: 5 });
  const choice = chat.choices[0];

  const stream = await client.chat.completions.create({
    model,
    messages,
    max_tokens: 5,
    stream: true,
    stream_options: { include_usage: true },
  });
  let content = "";
  let finishReason = null;
  let usage = null;
  let chunks = 0;
  let object = null;
  for await (const chunk of stream) {
    chunks += 1;
    object = chunk.object;
    for (const c of chunk.choices || []) {
      content += c.delta?.content || "";
      finishReason = c.finish_reason || finishReason;
    }
    if (chunk.usage) usage = chunk.usage; // only the final, choices-less chunk
  }

  const out = {
    sdk: "node-openai",
    sdk_version: sdkVersion(),
    models: page.data.map((m) => m.id),
    retrieved: retrieved.id,
    retrieved_object: retrieved.object,
    chat: {
      id: chat.id,
      object: chat.object,
      model: chat.model,
      role: choice.message.role,
      content: choice.message.content,
      finish_reason: choice.finish_reason,
      usage: chat.usage,
    },
    stream: { object, content, finish_reason: finishReason, chunks, usage },
  };
  process.stdout.write(JSON.stringify(out) + "\n");
}

main().catch((err) => {
  // APIError carries status and the decoded error body.
  const detail = err?.status ? ` (HTTP ${err.status}: ${JSON.stringify(err.error)})` : "";
  process.stderr.write(`node_current failed: ${err?.stack || err}${detail}\n`);
  process.exit(1);
});
