// A typed use of every frame type, checked by `tsc --noEmit` (make test). The mapped types
// below require one entry per frame type of frames.d.ts, which is generated from the
// gateway's /asyncapi.json: a frame type added to the protocol, or a field renamed, fails
// this check until the example (and so the declarations users see) follows.
import {
  Switchboard, RequestError, ToolError, closeAction, backoffDelay,
  type ClientFrameData, type ServerFrame, type ServerFrameData, type AnyFrame,
} from "../switchboard.js";

const sb = new Switchboard("ws://127.0.0.1:9004/", {
  clientType: "example",
  getToken: async () => "token",
  storage: null,
  onPermission: (prompt) => prompt.data.risk_level !== "high",
});

const server: { [K in keyof ServerFrameData]: (frame: ServerFrame<K>) => unknown } = {
  connection_established: (f) => [f.data.session_token.length, f.data.last_seq, f.data.resumed,
                                  f.data.recovered, f.data.replayed, f.data.client_id,
                                  f.data.user_id ?? "anonymous"],
  connection_ack: (f) => f.data.message,
  pong: (f) => f.data.client_id.toUpperCase(),
  heartbeat_response: (f) => f.data.client_id.toUpperCase(),
  error: (f) => [f.data.code.toUpperCase(), f.data.message, f.data.close_code, f.reply_to],
  processing: (f) => f.data.status,
  chat_response: (f) => f.data.content.length + f.seq,
  stream_start: (f) => f.data.stream_id,
  stream_chunk: (f) => f.data.content + f.data.index.toFixed(0),
  stream_end: (f) => f.data.full_content.length,
  tool_call: (f) => sb.send("tool_result", { call_id: f.data.call_id, result: f.data.params }),
  tool_result_ack: (f) => f.data.call_id,
  tool_response: (f) => (f.data.success ? f.data.result : f.data.error),
  mcp_tool_execution_start: (f) => [f.data.tool_name, f.data.risk_level, f.data.start_time],
  mcp_tool_waiting_permission: (f) => sb.send("permission_response",
                                              { call_id: f.data.call_id, granted: false }),
  mcp_tool_execution_complete: (f) => [f.data.result.type, f.data.result.success,
                                       f.data.end_time],
  tools_list: (f) => f.data.tools.map((t) => `${t.name} (${t.risk_level})`),
  status_response: (f) => f.data.connected_clients + f.data.uptime,
  subscribed: (f) => f.data.channel.length > 0 && f.data.channel_count > 0 && f.data.subscribers > 0
                     && f.data.server_side !== true,
  unsubscribed: (f) => f.data.was_subscribed,
  published: (f) => [f.data.channel, f.data.message_id, f.data.recipients + f.data.queued],
  publication: (f) => [f.channel, f.data["text"], (f["from"] as { user_id: string | null }).user_id],
  presence: (f) => f.data.sessions.map((s) => `${s.client_id}:${s.user_id ?? "-"}:${s.connected}`)
                   .concat(f.data.users).length + f.data.count + Number(f.data.truncated),
  join: (f) => [f.data.channel, f.data.client_id, f.data.user_id],
  leave: (f) => [f.data.channel, f.data.client_id, f.data.user_id],
  channel_history: (f) => f.data.frames.map((frame) => frame["message_id"]).length + f.data.count
                          + f.data.limit,
  channels_list: (f) => Object.entries(f.data.channels).map(([name, n]) => name + n),
  message: (f) => f.data.content,
};
for (const type of Object.keys(server) as Array<keyof ServerFrameData>) {
  sb.on(type, server[type] as (frame: AnyFrame) => unknown);
}

const client: { [K in keyof ClientFrameData]: ClientFrameData[K] } = {
  chat_message: { content: "hello", role: "user" },
  text_message: { content: "hello" },
  tool_call: { tool_name: "echo", params: { text: "hi" } },
  tool_result: { call_id: "c1", result: 42 },
  permission_response: { call_id: "c1", granted: true },
  list_tools: {},
  ping: {},
  heartbeat: {},
  get_status: {},
  subscribe: { channel: "news" },
  unsubscribe: { channel: "news" },
  list_channels: {},
  publish: { channel: "news", data: { text: "hi" } },
  presence: { channel: "news" },
  channel_history: { channel: "news", limit: 10 },
};

sb.on("connected", (e) => { if (!e.recovered) console.log("reload state after", e.lastSeq); });
sb.on("disconnected", (e) => console.log(e.code, e.reason, e.willReconnect));
sb.on("*", (frame) => frame.type);
sb.on("a_custom_broadcast", (frame) => frame.data["anything"]);
sb.tools.register<{ city: string }, { celsius: number }>("get_weather",
  async ({ city }) => ({ celsius: city.length }), { schema: { type: "object" } });

async function main(): Promise<void> {
  await sb.connect({ signal: AbortSignal.timeout(10_000) });
  for (const type of Object.keys(client) as Array<keyof ClientFrameData>) {
    sb.send(type, client[type]);
  }
  const pong: ServerFrame<"pong"> = await sb.ping({ timeout: 5000 });
  const joined = await sb.subscribe("news");
  const published = await sb.publish("news", { text: "hello" });
  const present = await sb.presence("news");
  const recent = await sb.channelHistory("news", { limit: 5 });
  console.log(sb.userId, published.data.recipients, present.data.users, recent.data.count);
  const answer = await sb.chat("hi");
  const id = sb.send("chat_message", { content: "stream please", stream: true });
  let text = "";
  for await (const chunk of sb.stream(id, { signal: AbortSignal.timeout(30_000) })) text += chunk;
  for await (const frame of sb.frames("message")) { console.log(frame.data.content); break; }
  try {
    const sum = await sb.callTool<number>("calculate", { expression: "2*21" });
    console.log(sum + 1);
  } catch (err) {
    if (err instanceof ToolError) console.log(err.toolName, err.response.success);
    if (err instanceof RequestError) console.log(err.code, err.frame.data.message);
  }
  console.log(pong.data.client_id, joined.data.subscribers, answer.type, text,
              closeAction(4003), backoffDelay(3, { jitter: 0 }));
  await sb.close();
}
void main;
