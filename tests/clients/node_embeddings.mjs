// Embeddings through the current Node SDK (`openai`, pinned in tests/clients/runner.py as
// NODE_OPENAI_CURRENT).
//
// Reads MODELHOST_BASE_URL, MODELHOST_API_KEY, MODELHOST_ORG and MODELHOST_MODEL (the embedding
// model). Calls embeddings.create twice with the same inputs: once as the SDK does by default
// (it asks for base64 and decodes it into numbers itself) and once with encoding_format "float",
// and prints one JSON object on stdout. Any failure: message on stderr, exit status 1.
import OpenAI from "openai";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`missing env ${name}`);
  return v;
};

async function main() {
  const client = new OpenAI({
    apiKey: env("MODELHOST_API_KEY"),
    organization: env("MODELHOST_ORG"),
    baseURL: env("MODELHOST_BASE_URL"),
    maxRetries: 0,
  });
  const model = env("MODELHOST_MODEL");
  const input = ["A man is eating food.", "A man is eating a piece of bread.", "A monkey is playing drums."];

  const byDefault = await client.embeddings.create({ model, input });
  const asFloats = await client.embeddings.create({ model, input, encoding_format: "float" });

  const out = {
    object: byDefault.object,
    model: byDefault.model,
    usage: byDefault.usage,
    indexes: byDefault.data.map((d) => d.index),
    default_is_array: byDefault.data.every((d) => Array.isArray(d.embedding)),
    default_vectors: byDefault.data.map((d) => d.embedding),
    float_vectors: asFloats.data.map((d) => d.embedding),
  };
  process.stdout.write(JSON.stringify(out) + "\n");
}

main().catch((err) => {
  const detail = err?.status ? ` (HTTP ${err.status}: ${JSON.stringify(err.error)})` : "";
  process.stderr.write(`node_embeddings failed: ${err?.stack || err}${detail}\n`);
  process.exit(1);
});
