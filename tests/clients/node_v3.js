// Exercise a running server with the Node SDK openai@3 (3.3.0, axios-based).
//
// Reads MODELHOST_BASE_URL, MODELHOST_API_KEY, MODELHOST_ORG, MODELHOST_MODEL.
// Calls listModels, retrieveModel, listEngines, createChatCompletion (plain,
// and streamed the way v3-era apps did it: stream: true + responseType
// "stream", parsing the SSE by hand) and prints one JSON object on stdout.
// Any failure: message (with HTTP status/body when there is one) on stderr,
// exit status 1. Run it through tests/clients/runner.py (sets NODE_PATH).
"use strict";

const { Configuration, OpenAIApi } = require("openai");
const sdkVersion = require("openai/package.json").version;

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`missing env ${name}`);
  return v;
};

// Read an axios "stream" response of SSE events; returns the parsed chunks.
function readSse(stream) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let buf = "";
    let done = false;
    const handle = (event) => {
      const data = event
        .split("\n")
        .filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).trimStart())
        .join("\n");
      if (!data) return;
      if (data === "[DONE]") {
        done = true;
        return;
      }
      chunks.push(JSON.parse(data));
    };
    stream.on("data", (b) => {
      buf += b.toString("utf8").replace(/\r\n/g, "\n");
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        handle(buf.slice(0, i));
        buf = buf.slice(i + 2);
      }
    });
    stream.on("end", () => {
      if (buf.trim()) handle(buf);
      if (!done) reject(new Error("SSE stream ended without data: [DONE]"));
      else resolve(chunks);
    });
    stream.on("error", reject);
  });
}

async function main() {
  const configuration = new Configuration({
    organization: env("MODELHOST_ORG"),
    apiKey: env("MODELHOST_API_KEY"),
    basePath: env("MODELHOST_BASE_URL"),
  });
  const openai = new OpenAIApi(configuration);
  const model = env("MODELHOST_MODEL");
  const messages = [{ role: "user", content: "Say hi" }];

  const models = await openai.listModels();
  const retrieved = await openai.retrieveModel(model);
  const engines = await openai.listEngines();
  const chat = await openai.createChatCompletion({ model, messages, max_tokens: 5 });
  const choice = chat.data.choices[0];

  const streamed = await openai.createChatCompletion(
    { model, messages, max_tokens: 5, stream: true },
    { responseType: "stream" },
  );
  const chunks = await readSse(streamed.data);
  let content = "";
  let finishReason = null;
  for (const c of chunks) {
    for (const ch of c.choices || []) {
      content += (ch.delta && ch.delta.content) || "";
      finishReason = ch.finish_reason || finishReason;
    }
  }

  const out = {
    sdk: "node-openai",
    sdk_version: sdkVersion,
    status: {
      models: models.status,
      retrieve: retrieved.status,
      engines: engines.status,
      chat: chat.status,
      stream: streamed.status,
    },
    models: models.data.data.map((m) => m.id),
    models_object: models.data.object,
    retrieved: retrieved.data.id,
    retrieved_object: retrieved.data.object,
    engines: engines.data.data.map((e) => e.id),
    chat: {
      id: chat.data.id,
      object: chat.data.object,
      model: chat.data.model,
      role: choice.message.role,
      content: choice.message.content,
      finish_reason: choice.finish_reason,
      usage: chat.data.usage,
    },
    stream: {
      content_type: streamed.headers["content-type"],
      object: chunks.length ? chunks[chunks.length - 1].object : null,
      content,
      finish_reason: finishReason,
      chunks: chunks.length,
    },
  };
  process.stdout.write(JSON.stringify(out) + "\n");
}

main().catch((err) => {
  // axios errors carry the HTTP response; show it, it is what a test needs.
  const r = err && err.response;
  let detail = "";
  if (r) {
    const body = r.data && typeof r.data.pipe === "function" ? "<stream>" : JSON.stringify(r.data);
    detail = ` (HTTP ${r.status} ${r.config && r.config.method} ${r.config && r.config.url}: ${body})`;
  }
  process.stderr.write(`node_v3 failed: ${err && err.stack ? err.stack : err}${detail}\n`);
  process.exit(1);
});
