// The Batch API through the current Node SDK (`openai`, pinned in tests/clients/runner.py as
// NODE_OPENAI_CURRENT): files.create (purpose "batch") → batches.create → batches.retrieve until the
// batch ends → files.content of its output file.
//
// Reads MODELHOST_BASE_URL, MODELHOST_API_KEY, MODELHOST_ORG, MODELHOST_MODEL. Two chat lines of
// at most MAX_TOKENS tokens each. Prints one JSON object on stdout; any failure: message on stderr,
// exit status 1.
import OpenAI, { toFile } from "openai";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`missing env ${name}`);
  return v;
};

const MAX_TOKENS = 3;
const ENDED = ["completed", "failed", "expired", "cancelled"];
const POLL_DEADLINE_MS = 240_000;

async function main() {
  const client = new OpenAI({
    apiKey: env("MODELHOST_API_KEY"),
    organization: env("MODELHOST_ORG"),
    baseURL: env("MODELHOST_BASE_URL"),
    maxRetries: 0, // a failing test should fail now, not after backoff
  });
  const model = env("MODELHOST_MODEL");
  const lines = ["a", "b"].map((id) => ({
    custom_id: id,
    method: "POST",
    url: "/v1/chat/completions",
    body: { model, messages: [{ role: "user", content: `Say ${id}` }], max_tokens: MAX_TOKENS },
  }));
  const jsonl = lines.map((line) => JSON.stringify(line)).join("\n") + "\n";

  const input = await client.files.create({ file: await toFile(Buffer.from(jsonl), "input.jsonl"), purpose: "batch" });
  const created = await client.batches.create({
    input_file_id: input.id,
    endpoint: "/v1/chat/completions",
    completion_window: "24h",
    metadata: { client: "node" },
  });
  let batch = created;
  const deadline = Date.now() + POLL_DEADLINE_MS;
  while (!ENDED.includes(batch.status)) {
    if (Date.now() > deadline) throw new Error(`batch ${batch.id} still ${batch.status}`);
    await new Promise((resolve) => setTimeout(resolve, 250));
    batch = await client.batches.retrieve(batch.id);
  }
  let output = null;
  let outputFile = null;
  if (batch.output_file_id) {
    outputFile = await client.files.retrieve(batch.output_file_id);
    const text = await (await client.files.content(batch.output_file_id)).text();
    output = text.split("\n").filter((line) => line.trim()).map((line) => JSON.parse(line));
  }
  const listed = await client.batches.list({ limit: 5 });
  const out = {
    sdk: "node-openai",
    input: { id: input.id, purpose: input.purpose, bytes: input.bytes, expected_bytes: Buffer.byteLength(jsonl) },
    created: { id: created.id, status: created.status, input_file_id: created.input_file_id, metadata: created.metadata },
    batch,
    listed: listed.data.map((b) => b.id),
    output_file: outputFile && { id: outputFile.id, purpose: outputFile.purpose, bytes: outputFile.bytes },
    output,
  };
  process.stdout.write(JSON.stringify(out) + "\n");
}

main().catch((err) => {
  const detail = err?.status ? ` (HTTP ${err.status}: ${JSON.stringify(err.error)})` : "";
  process.stderr.write(`node_batches failed: ${err?.stack || err}${detail}\n`);
  process.exit(1);
});
