// The official AG-UI client (@ag-ui/client's HttpAgent) against a head's /agui/{agent}:
// `node agui_client.cjs SCENARIO URL [ARGS...]` runs one scenario and prints, as its last line,
// the JSON of what the client saw: the event types in order, the runs' outcomes, and the
// agent's messages as the client assembled them. The client checks every event against
// AG-UI's schemas and its ordering rules, and fails the run on the first violation.
"use strict";
const { HttpAgent } = require("@ag-ui/client");

const [scenario, url, ...args] = process.argv.slice(2);

/** A subscriber that records what one run shows. */
function recorder() {
  const seen = { types: [], finished: [], errors: [], text: "" };
  const subscriber = {
    onEvent({ event }) {
      seen.types.push(event.type);
      if (event.type === "TEXT_MESSAGE_CONTENT") seen.text += event.delta;
      if (event.type === "RUN_ERROR") seen.errors.push({ message: event.message, code: event.code });
      if (event.type === "TOOL_CALL_RESULT") seen.result = event.content;
      if (event.type === "RUN_FINISHED") seen.usage = event.usage;
    },
    onRunFinishedEvent({ outcome, interrupts, pendingToolCallIds }) {
      seen.finished.push({ outcome, interrupts, pendingToolCallIds });
    },
  };
  return { seen, subscriber };
}

async function run(agent, params) {
  const { seen, subscriber } = recorder();
  try {
    await agent.runAgent(params, subscriber);
  } catch (e) {
    seen.thrown = String(e && e.message ? e.message : e);
  }
  return seen;
}

function agentWith(text) {
  const agent = new HttpAgent({ url, headers: args[1] ? { Authorization: `Bearer ${args[1]}` } : {} });
  agent.addMessage({ id: "u1", role: "user", content: text });
  return agent;
}

const WEATHER = {
  name: "weather",
  description: "The weather in a city.",
  parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
};

const scenarios = {
  // One streamed answer.
  async text() {
    const agent = agentWith(args[0]);
    const first = await run(agent, {});
    return { first, messages: agent.messages };
  },

  // The agent calls a tool the client declared: the run ends with the call pending; the
  // client answers it in the next run, which the agent answers.
  async frontend_tool() {
    const agent = agentWith('<tool_call>{"name": "weather", "arguments": {"city": "Paris"}}</tool_call>');
    const first = await run(agent, { tools: [WEATHER] });
    const callId = (first.finished[0] || {}).pendingToolCallIds?.[0];
    agent.addMessage({ id: "t1", role: "tool", toolCallId: callId, content: "sunny, 21 degrees" });
    const second = await run(agent, { tools: [WEATHER] });
    return { first, second, messages: agent.messages };
  },

  // An agent with tools of its own, offered a frontend tool too: `ARGS[0]` calls one of
  // them; the agent's own runs on the cluster, the frontend one is left to the client.
  async mixed_tools() {
    const agent = agentWith(args[0]);
    const first = await run(agent, { tools: [WEATHER] });
    return { first, messages: agent.messages };
  },

  // Two runs in one thread, each the agent calling its own tool: the client keeps them
  // apart (it matches calls by id across the thread).
  async two_runs() {
    const agent = agentWith(args[0]);
    const first = await run(agent, {});
    agent.addMessage({ id: "u2", role: "user", content: args[0] });
    const second = await run(agent, {});
    return { first, second, messages: agent.messages };
  },

  // The agent asks (a question, or an approval of its tool call): the run ends on an
  // interrupt, and the run that resumes it with `payload` goes on.
  async interrupt() {
    const agent = agentWith(args[0]);
    const first = await run(agent, {});
    const pending = agent.pendingInterrupts.map((i) => i.id);
    const payload = JSON.parse(args[2]);
    const status = payload === null ? "cancelled" : "resolved";
    const resume = pending.map((interruptId) => ({ interruptId, status, ...(payload === null ? {} : { payload }) }));
    const second = await run(agent, { resume });
    return { first, second, pendingAfter: agent.pendingInterrupts, messages: agent.messages };
  },

  // The agent asks, nobody answers before the question's deadline; the client then cancels
  // the interrupt (it refuses to answer one past its expiresAt) and runs again: it must not
  // be stuck on an interrupt that is gone.
  async expired() {
    const agent = agentWith(args[0]);
    const first = await run(agent, {});
    const interrupts = agent.pendingInterrupts;
    // Past the deadline the head fails the task: wait until its state (A2A's view of it)
    // says so.
    const task = interrupts[0].id.split("@")[0];
    const status = url.replace("/agui/", "/a2a/") + `/tasks/${task}`;
    for (;;) {
      const got = await (await fetch(status, { headers: { "A2A-Version": "1.0" } })).json();
      if (got.status && got.status.state === "TASK_STATE_FAILED") break;
      await new Promise((r) => setTimeout(r, 50));
    }
    const resume = interrupts.map((i) => ({ interruptId: i.id, status: "cancelled" }));
    const second = await run(agent, { resume });
    const stuck = agent.pendingInterrupts.map((i) => i.id);
    agent.addMessage({ id: "u2", role: "user", content: "hello again" });
    const third = await run(agent, {});
    return { first, second, stuck, third };
  },

  // The client aborts mid-stream (a user's stop button).
  async abort() {
    const agent = agentWith(args[0]);
    const { seen, subscriber } = recorder();
    subscriber.onTextMessageContentEvent = () => {
      if (!seen.aborted) {
        seen.aborted = true;
        agent.abortRun();
      }
    };
    try {
      await agent.runAgent({}, subscriber);
    } catch (e) {
      seen.thrown = String(e && e.message ? e.message : e);
    }
    return { first: seen, messages: agent.messages };
  },
};

(async () => {
  const out = await scenarios[scenario]();
  console.log(JSON.stringify(out));
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
