// The Responses API through the current Node SDK (`openai`, pinned in
// tests/clients/runner.py as NODE_OPENAI_CURRENT).
//
// Reads MODELHOST_BASE_URL, MODELHOST_API_KEY, MODELHOST_ORG, MODELHOST_MODEL.
// Four short generations:
//   - responses.create (not streamed), then responses.retrieve of the same id;
//   - responses.create({stream: true}), the raw event iterator;
//   - responses.stream(...) with its event helpers (.on) and finalResponse();
//   - responses.stream(...) of a forced function call (the argument deltas).
// Prints one JSON object on stdout. Any failure (the SDK's stream accumulator
// throws on events it cannot place): message on stderr, exit status 1.
import OpenAI from "openai";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`missing env ${name}`);
  return v;
};

const MAX_OUTPUT_TOKENS = 16;

// An enum keeps the forced call short: the tiny model ends it within a few tokens.
const WEATHER = {
  type: "function",
  name: "get_weather",
  description: "The weather in a city.",
  parameters: {
    type: "object",
    properties: { city: { type: "string", enum: ["Oslo", "Bergen"] } },
    required: ["city"],
    additionalProperties: false,
  },
  strict: true,
};

// The parts of a Response the test checks.
const summary = (r) => ({
  id: r.id,
  object: r.object,
  status: r.status,
  model: r.model,
  output_text: r.output_text,
  output: r.output.map((item) => ({
    type: item.type,
    id: item.id,
    status: item.status,
    role: item.role,
    call_id: item.call_id,
    name: item.name,
    arguments: item.arguments,
  })),
  usage: r.usage,
  incomplete_details: r.incomplete_details,
});

async function createAndRetrieve(client, model) {
  const created = await client.responses.create({
    model,
    input: "Say hi",
    instructions: "Be brief.",
    max_output_tokens: MAX_OUTPUT_TOKENS,
  });
  const retrieved = await client.responses.retrieve(created.id);
  return { created: summary(created), retrieved: summary(retrieved) };
}

async function rawStream(client, model) {
  const stream = await client.responses.create({
    model,
    input: "Say hello",
    max_output_tokens: MAX_OUTPUT_TOKENS,
    stream: true,
  });
  const types = [];
  const sequence = [];
  let text = "";
  let last = null;
  for await (const event of stream) {
    types.push(event.type);
    sequence.push(event.sequence_number);
    if (event.type === "response.output_text.delta") text += event.delta;
    last = event;
  }
  return { types, sequence, text, final: last?.response ? summary(last.response) : null };
}

async function helperStream(client, model) {
  const handled = { created: 0, deltas: 0, text_done: null, completed: 0, incomplete: 0 };
  let snapshotText = null;
  const stream = client.responses
    .stream({ model, input: "Say hello", max_output_tokens: MAX_OUTPUT_TOKENS })
    .on("response.created", () => (handled.created += 1))
    .on("response.output_text.delta", (event) => {
      handled.deltas += 1;
      snapshotText = event.snapshot; // the SDK's accumulated text so far
    })
    .on("response.output_text.done", (event) => (handled.text_done = event.text))
    .on("response.completed", () => (handled.completed += 1))
    .on("response.incomplete", () => (handled.incomplete += 1));
  const final = await stream.finalResponse();
  return { handled, snapshot_text: snapshotText, final: summary(final) };
}

async function functionCallStream(client, model) {
  const argDeltas = [];
  let argsDone = null;
  const addedItems = [];
  const stream = client.responses
    .stream({
      model,
      input: "What is the weather in Oslo?",
      tools: [WEATHER],
      tool_choice: "required",
      // 24 tokens end the call three tokens short on the tiny model (measured); 32 hold it.
      max_output_tokens: 32,
      temperature: 0,
    })
    .on("response.output_item.added", (event) => addedItems.push({ type: event.item.type, id: event.item.id }))
    .on("response.function_call_arguments.delta", (event) => argDeltas.push(event.delta))
    .on("response.function_call_arguments.done", (event) => (argsDone = event.arguments));
  const final = await stream.finalResponse();
  return { added_items: addedItems, argument_deltas: argDeltas.join(""), arguments_done: argsDone, final: summary(final) };
}

async function main() {
  const client = new OpenAI({
    apiKey: env("MODELHOST_API_KEY"),
    organization: env("MODELHOST_ORG"),
    baseURL: env("MODELHOST_BASE_URL"),
    maxRetries: 0, // a failing test should fail now, not after backoff
  });
  const model = env("MODELHOST_MODEL");
  const out = {
    sdk: "node-openai",
    create: await createAndRetrieve(client, model),
    raw_stream: await rawStream(client, model),
    helper_stream: await helperStream(client, model),
    function_call: await functionCallStream(client, model),
  };
  process.stdout.write(JSON.stringify(out) + "\n");
}

main().catch((err) => {
  // APIError carries status and the decoded error body.
  const detail = err?.status ? ` (HTTP ${err.status}: ${JSON.stringify(err.error)})` : "";
  process.stderr.write(`node_responses failed: ${err?.stack || err}${detail}\n`);
  process.exit(1);
});
