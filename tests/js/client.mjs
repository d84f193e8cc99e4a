// The official ollama JavaScript client against foreman: prints one JSON object.
// Usage: node client.mjs BASE_URL [TOKEN]
import { Ollama } from "ollama";

const [host, token] = process.argv.slice(2);
const headers = token ? { Authorization: `Bearer ${token}` } : {};
const ollama = new Ollama({ host, headers });

const list = await ollama.list();
const chat = await ollama.chat({
  model: "llama3.2",
  messages: [{ role: "user", content: "hello from js" }],
});
const parts = [];
const arrivals = [];
const stream = await ollama.chat({
  model: "llama3.2",
  messages: [{ role: "user", content: "stream from js" }],
  stream: true,
});
for await (const part of stream) {
  parts.push(part.message.content);
  arrivals.push(Date.now());
}
const generated = await ollama.generate({ model: "qwen3", prompt: "generate from js" });
const embedded = await ollama.embed({ model: "nomic-embed-text", input: ["a", "b"] });

console.log(
  JSON.stringify({
    models: list.models.map((m) => m.name),
    chat: chat.message.content,
    streamed: parts.join(""),
    chunks: parts.length,
    spread_ms: arrivals[arrivals.length - 1] - arrivals[0],
    generated: generated.response,
    embeddings: embedded.embeddings.length,
  }),
);
