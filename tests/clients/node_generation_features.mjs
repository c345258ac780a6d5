// The generation features through the current Node SDK (`openai`, pinned in tests/clients/runner.py
// as NODE_OPENAI_CURRENT): structured outputs, a forced tool call (plain and streamed), logprobs,
// and legacy completions with echo + logprobs.
//
// Reads MODELHOST_BASE_URL, MODELHOST_API_KEY, MODELHOST_ORG and MODELHOST_MODEL (the chat model)
// and prints one JSON object on stdout. Any failure: message on stderr, exit status 1.
import OpenAI from "openai";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`missing env ${name}`);
  return v;
};

const weather = {
  type: "function",
  function: {
    name: "get_weather",
    description: "Current weather for a city",
    parameters: {
      type: "object",
      properties: { city: { type: "string" }, unit: { type: "string", enum: ["c", "f"] } },
      required: ["city", "unit"],
      additionalProperties: false,
    },
    strict: true,
  },
};

async function main() {
  const client = new OpenAI({
    apiKey: env("MODELHOST_API_KEY"),
    organization: env("MODELHOST_ORG"),
    baseURL: env("MODELHOST_BASE_URL"),
    maxRetries: 0,
  });
  const model = env("MODELHOST_MODEL");
  const ask = [{ role: "user", content: "What's the weather in Paris?" }];

  const structured = await client.chat.completions.create({
    model,
    messages: [{ role: "user", content: "Describe a pet." }],
    max_tokens: 80,
    seed: 1,
    response_format: {
      type: "json_schema",
      json_schema: {
        name: "pet",
        strict: true,
        schema: {
          type: "object",
          properties: { name: { type: "string", maxLength: 20 }, legs: { type: "integer" } },
          required: ["name", "legs"],
          additionalProperties: false,
        },
      },
    },
  });

  const tool = await client.chat.completions.create({ model, messages: ask, tools: [weather], tool_choice: "required", max_tokens: 60 });

  const stream = await client.chat.completions.create({
    model, messages: ask, tools: [weather], tool_choice: { type: "function", function: { name: "get_weather" } },
    parallel_tool_calls: false, max_tokens: 60, stream: true,
  });
  const streamedCalls = {};
  let streamedFinish = null;
  for await (const chunk of stream) {
    for (const choice of chunk.choices) {
      for (const call of choice.delta.tool_calls || []) {
        const seen = (streamedCalls[call.index] ||= { name: "", arguments: "" });
        seen.name += call.function?.name || "";
        seen.arguments += call.function?.arguments || "";
      }
      streamedFinish = choice.finish_reason || streamedFinish;
    }
  }

  const logprobs = await client.chat.completions.create({
    model, messages: ask, max_tokens: 3, logprobs: true, top_logprobs: 2, logit_bias: { 0: -100, 2: -100 },
  });

  const legacy = await client.completions.create({
    model, prompt: "Hello world", max_tokens: 3, echo: true, logprobs: 1, logit_bias: { 0: -100, 2: -100 },
  });

  const out = {
    structured: { content: structured.choices[0].message.content, finish_reason: structured.choices[0].finish_reason },
    tool: {
      finish_reason: tool.choices[0].finish_reason,
      calls: (tool.choices[0].message.tool_calls || []).map((c) => ({ id: c.id, name: c.function.name, arguments: c.function.arguments })),
    },
    streamed_tool: { calls: Object.values(streamedCalls), finish_reason: streamedFinish },
    logprobs: {
      tokens: logprobs.choices[0].logprobs.content.length,
      top: logprobs.choices[0].logprobs.content.map((t) => t.top_logprobs.length),
      completion_tokens: logprobs.usage.completion_tokens,
    },
    legacy: {
      object: legacy.object,
      text: legacy.choices[0].text,
      tokens: legacy.choices[0].logprobs.tokens,
      first_logprob: legacy.choices[0].logprobs.token_logprobs[0],
      prompt_tokens: legacy.usage.prompt_tokens,
    },
  };
  process.stdout.write(JSON.stringify(out) + "\n");
}

main().catch((err) => {
  const detail = err?.status ? ` (HTTP ${err.status}: ${JSON.stringify(err.error)})` : "";
  process.stderr.write(`node_generation_features failed: ${err?.stack || err}${detail}\n`);
  process.exit(1);
});
