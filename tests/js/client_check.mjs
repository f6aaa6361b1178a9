// The official ollama JS client against a running ollmlx: prints one JSON report line.
import { Ollama } from "ollama";

const client = new Ollama({ host: process.env.OLLAMA_HOST });
const report = {};
report.version = (await client.version()).version;
report.models = (await client.list()).models.map((m) => m.name);
const generated = await client.generate({
  model: "tiny",
  prompt: "hello from js",
  options: { temperature: 0, num_predict: 8 },
});
report.generate = { response: generated.response, eval_count: generated.eval_count, done_reason: generated.done_reason };
let streamed = "";
let chunks = 0;
for await (const part of await client.chat({
  model: "tiny",
  messages: [{ role: "user", content: "hello from js" }],
  options: { temperature: 0, num_predict: 8 },
  stream: true,
})) {
  streamed += part.message.content;
  chunks += 1;
}
report.chat = { content: streamed, chunks };
try {
  await client.generate({ model: "missing-model", prompt: "x" });
} catch (err) {
  report.error = { status: err.status_code, message: err.error };
}
console.log(JSON.stringify(report));
