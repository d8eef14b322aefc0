// The AI SDK's own client side (the `ai` package: DefaultChatTransport, the transport
// useChat uses by default, and readUIMessageStream) against a head's /ai-sdk/{agent}:
// `node chat.cjs URL MESSAGES_JSON [API_KEY] [TOOLS_JSON]` sends the chat and prints, as its
// last line, the JSON of the chunks received (each validated against the UI message stream's
// schema by the transport) and the assistant message they build.
"use strict";

(async () => {
  const { DefaultChatTransport, readUIMessageStream } = await import(require.resolve("ai"));
  const [url, messagesJson, apiKey, toolsJson] = process.argv.slice(2);
  const body = toolsJson ? { tools: JSON.parse(toolsJson) } : {};
  const transport = new DefaultChatTransport({
    api: url,
    headers: apiKey ? { Authorization: `Bearer ${apiKey}` } : {},
    body,
  });
  const out = { chunks: [] };
  try {
    const stream = await transport.sendMessages({
      chatId: "chat-1",
      messages: JSON.parse(messagesJson),
      trigger: "submit-message",
      messageId: undefined,
      abortSignal: undefined,
    });
    const [forChunks, forMessage] = stream.tee();
    const reading = (async () => {
      for await (const chunk of forChunks) out.chunks.push(chunk);
    })();
    for await (const message of readUIMessageStream({ stream: forMessage, onError: (e) => { out.streamError = String(e); } })) {
      out.message = message;
    }
    await reading;
  } catch (e) {
    out.thrown = String(e && e.message ? e.message : e);
  }
  console.log(JSON.stringify(out));
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
