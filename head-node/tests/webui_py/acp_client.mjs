// An editor, as the official ACP client (@agentclientprotocol/sdk) makes one: it starts
// `fleet acp AGENT` (or the command given) as a subprocess and speaks ACP to it on stdio.
//
//   node acp_client.mjs PLAN_JSON
//
// PLAN_JSON: {"command": [...argv], "forms": bool, "permission": "allow"|"reject"|"cancel",
// "answer": "text", "load": SESSION, "list": bool, "prompts": [prompt, ...],
// "cancelAfter": N (session/cancel once N updates of the first prompt arrived),
// "deleteAfter": bool}. A prompt is a string or an array of content blocks. Prints one JSON
// line: what the client saw (initialize's answer, each turn's updates and stop reason or
// error, the permission and form requests, the listed and loaded sessions).
import { spawn } from "node:child_process";
import { createRequire } from "node:module";
import { Readable, Writable } from "node:stream";

// The SDK is ESM, and ESM imports do not read NODE_PATH (where the test script installs
// it): resolve it there, then import it by path.
const modules = createRequire(`${process.env.NODE_PATH}/`);
const acp = await import(modules.resolve("@agentclientprotocol/sdk"));

const plan = JSON.parse(process.argv[2]);
const child = spawn(plan.command[0], plan.command.slice(1), { stdio: ["pipe", "pipe", "inherit"] });
const exited = new Promise((resolve) => child.on("exit", (code) => resolve(code)));
const stream = acp.ndJsonStream(Writable.toWeb(child.stdin), Readable.toWeb(child.stdout));

const seen = { turns: [], permissions: [], forms: [], loaded: [] };
let updates = [];
let onUpdate = () => {};

const app = acp
  .client({ name: "agentfleet-test" })
  .onNotification(acp.methods.client.session.update, ({ params }) => {
    updates.push(params.update);
    onUpdate(params);
  })
  .onRequest(acp.methods.client.session.requestPermission, ({ params }) => {
    seen.permissions.push(params);
    if (plan.permission === "cancel") return { outcome: { outcome: "cancelled" } };
    return { outcome: { outcome: "selected", optionId: plan.permission ?? "allow" } };
  })
  .onRequest(acp.methods.client.elicitation.create, ({ params }) => {
    seen.forms.push(params);
    return { action: "accept", content: { answer: plan.answer ?? "" } };
  });

const capabilities = plan.forms ? { elicitation: { form: {} } } : {};

await app.connectWith(stream, async (agent) => {
  seen.init = await agent.request(acp.methods.agent.initialize, {
    protocolVersion: acp.PROTOCOL_VERSION,
    clientCapabilities: capabilities,
  });
  let sessionId;
  if (plan.load) {
    sessionId = plan.load;
    await agent.request(acp.methods.agent.session.load, { sessionId, cwd: "/tmp", mcpServers: [] });
    seen.loaded = updates;
    updates = [];
  } else {
    sessionId = (await agent.request(acp.methods.agent.session.new, { cwd: "/tmp", mcpServers: [] })).sessionId;
  }
  seen.session = sessionId;
  for (const [i, prompt] of (plan.prompts ?? []).entries()) {
    updates = [];
    if (i === 0 && plan.cancelAfter !== undefined) {
      onUpdate = () => {
        if (updates.length === plan.cancelAfter) agent.notify(acp.methods.agent.session.cancel, { sessionId });
      };
    } else {
      onUpdate = () => {};
    }
    const blocks = typeof prompt === "string" ? [{ type: "text", text: prompt }] : prompt;
    try {
      const done = await agent.request(acp.methods.agent.session.prompt, { sessionId, prompt: blocks });
      seen.turns.push({ updates, stopReason: done.stopReason, meta: done._meta });
    } catch (e) {
      seen.turns.push({ updates, error: { code: e.code, message: e.message, data: e.data } });
    }
  }
  if (plan.list) seen.list = await agent.request(acp.methods.agent.session.list, {});
  if (plan.deleteAfter) await agent.request(acp.methods.agent.session.delete, { sessionId });
});
child.stdin.end();
seen.exitCode = await exited;
console.log(JSON.stringify(seen));
