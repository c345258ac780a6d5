// The Vercel AI SDK (`ai` + `@ai-sdk/openai`, pinned in tests/clients/runner.py)
// over modelhost's Responses API: `openai.responses(model)` is the provider's
// Responses model, so every call below is a POST /v1/responses.
//
// Reads MODELHOST_BASE_URL, MODELHOST_API_KEY, MODELHOST_ORG, MODELHOST_MODEL.
// Two short generations:
//   - streamText: the text stream, the finish reason and the usage;
//   - generateText with one function tool, forced (toolChoice "required"), one
//     step: the tool call the SDK parsed and the tool's result.
// Prints one JSON object on stdout. Any failure: message on stderr, exit status 1.
import { createOpenAI } from "@ai-sdk/openai";
import { generateText, jsonSchema, streamText, tool } from "ai";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`missing env ${name}`);
  return v;
};

async function streamed(openai, model) {
  const errors = [];
  const result = streamText({
    model: openai.responses(model),
    prompt: "Say hello",
    maxOutputTokens: 16,
    maxRetries: 0,
    // streamText reports stream errors here, not by rejecting; keep them for the test.
    onError: ({ error }) => errors.push(String(error?.stack || error)),
  });
  const chunks = [];
  for await (const chunk of result.textStream) chunks.push(chunk);
  return {
    chunks: chunks.length,
    text: chunks.join(""),
    result_text: await result.text,
    finish_reason: await result.finishReason,
    raw_finish_reason: (await result.rawFinishReason) ?? null,
    usage: await result.usage,
    response_id: (await result.response).id,
    errors,
  };
}

async function toolCall(openai, model) {
  const executed = [];
  const weather = tool({
    description: "The weather in a city.",
    // An enum keeps the forced call short: the tiny model ends it within a few tokens.
    inputSchema: jsonSchema({
      type: "object",
      properties: { city: { type: "string", enum: ["Oslo", "Bergen"] } },
      required: ["city"],
      additionalProperties: false,
    }),
    execute: async ({ city }) => {
      executed.push(city);
      return { city, forecast: "sunny" };
    },
  });
  const result = await generateText({
    model: openai.responses(model),
    prompt: "What is the weather in Oslo?",
    tools: { get_weather: weather },
    toolChoice: "required",
    maxOutputTokens: 32, // the whole call on the tiny model (24 cut it short, measured)
    temperature: 0,
    maxRetries: 0,
  });
  return {
    text: result.text,
    finish_reason: result.finishReason,
    raw_finish_reason: result.rawFinishReason ?? null,
    tool_calls: result.toolCalls.map((c) => ({ name: c.toolName, id: c.toolCallId, input: c.input })),
    tool_results: result.toolResults.map((r) => ({ name: r.toolName, output: r.output })),
    executed,
    steps: result.steps.length,
    usage: result.usage,
    response_id: result.response.id,
  };
}

async function main() {
  const openai = createOpenAI({
    baseURL: env("MODELHOST_BASE_URL"),
    apiKey: env("MODELHOST_API_KEY"),
    organization: env("MODELHOST_ORG"),
  });
  const model = env("MODELHOST_MODEL");
  const out = { sdk: "vercel-ai", stream: await streamed(openai, model), tool: await toolCall(openai, model) };
  process.stdout.write(JSON.stringify(out) + "\n");
}

main().catch((err) => {
  // APICallError carries the status and the response body.
  const detail = err?.statusCode ? ` (HTTP ${err.statusCode}: ${err.responseBody})` : "";
  process.stderr.write(`node_ai_sdk failed: ${err?.stack || err}${detail}\n`);
  process.exit(1);
});
