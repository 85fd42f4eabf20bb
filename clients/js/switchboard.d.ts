// TypeScript declarations of switchboard.js (the browser / Node client of Switchboard).
// Frame payloads come from frames.d.ts, generated from the gateway's /asyncapi.json.

import type { ClientFrameData, KeptServerFrameType, ServerFrameData } from "./frames.js";

export type { ClientFrameData, KeptServerFrameType, ServerFrameData } from "./frames.js";

/** A server frame of a known type. */
export type ServerFrame<T extends keyof ServerFrameData = keyof ServerFrameData> = {
  [K in T]: {
    type: K;
    data: ServerFrameData[K];
    message_id: string;
    timestamp: string;
    /** Present on every frame kept in history (all but the greeting and pongs). */
    seq: K extends KeptServerFrameType ? number : number | undefined;
    reply_to?: string;
    channel?: string;
    [key: string]: unknown;
  };
}[T];

/** Any server frame, including the message types third parties broadcast. */
export interface AnyFrame {
  type: string;
  data: Record<string, unknown>;
  message_id?: string;
  timestamp?: string;
  seq?: number;
  reply_to?: string;
  channel?: string;
  [key: string]: unknown;
}

/** What a handler registered for `type` receives. */
export type FrameOf<T extends string> = T extends keyof ServerFrameData ? ServerFrame<T> : AnyFrame;

export declare const CloseCode: Readonly<{
  NORMAL: 1000; GOING_AWAY: 1001; PROTOCOL_ERROR: 1002; UNSUPPORTED_DATA: 1003; ABNORMAL: 1006;
  INVALID_DATA: 1007; POLICY_VIOLATION: 1008; MESSAGE_TOO_BIG: 1009; INTERNAL_ERROR: 1011;
  REPLACED: 4000; SESSION_ENDED: 4001; INVALID_SESSION: 4003; SLOW_CONSUMER: 4008;
  RATE_LIMITED: 4009; TOKEN_EXPIRED: 4010; IDLE_TIMEOUT: 4011; TOO_MANY_SESSIONS: 4012;
}>;

export type CloseActionName = "resume" | "backoff" | "new_token" | "fresh_session" | "stop";
export declare const CloseAction: Readonly<{
  RESUME: "resume"; BACKOFF: "backoff"; NEW_TOKEN: "new_token"; FRESH_SESSION: "fresh_session";
  STOP: "stop";
}>;

/** The close-code policy: 1000/4000/4001 (and 1002/1003/1007/1008) stop, 4003 starts a new
 * session, 4009 backs off at least `backoff.rateLimited`, 4010 reconnects with a fresh token
 * from `getToken()`, everything else reconnects and resumes. */
export declare function closeAction(code: number | null | undefined): CloseActionName;

export interface BackoffOptions {
  /** First delay cap, ms (500). */
  initial: number;
  /** Largest delay, ms (20000). */
  max: number;
  /** Growth per attempt (2). */
  factor: number;
  /** Random fraction taken off each delay: 1 = full jitter (1). */
  jitter: number;
  /** Least delay after close 4009, ms (5000). */
  rateLimited: number;
}
export declare const DEFAULT_BACKOFF: Readonly<BackoffOptions>;
export declare function backoffDelay(attempt: number, options?: Partial<BackoffOptions>,
                                     random?: () => number): number;
export declare const DEFAULT_REPLY_TYPES: Readonly<Record<string, readonly string[]>>;
export declare const STATE_EVENTS: readonly StateEventName[];
export declare function connectQuery(state: {
  clientId?: string | null; clientType?: string | null; sessionToken?: string | null;
  lastSeq?: number; token?: string | null; userId?: string | null;
}): Record<string, string>;
/** The `exp` claim (seconds since the epoch) of a JWT, or null. */
export declare function tokenExpiry(token: string | null | undefined): number | null;

/** Where the session (client id, session token, last seq, channels) is kept. */
export interface SessionStorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}
export declare function memoryStorage(): SessionStorageLike;

/** A WebSocket constructor: the browser's, Node's (`--experimental-websocket`, Node 22+), or
 * the `ws` package's. */
export type WebSocketConstructor = new (url: string) => WebSocketLike;
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
}

export interface SwitchboardOptions {
  /** Ask for this client id (the server picks one when omitted or taken). */
  clientId?: string;
  /** Sent as `client_type` (the API can filter and target clients by it). */
  clientType?: string;
  /** Sent as `user_id` with WS_AUTH=none or token: the user this client acts for (several
   * sessions of one user are reached together by `POST /send_message {user_id}`). With
   * WS_AUTH=jwt the token's `sub` is the user. */
  userId?: string;
  /** WS_AUTH token or JWT, sent as `?token=`. */
  token?: string;
  /** Called before every connection attempt, after close 4010 and before the JWT's `exp`. */
  getToken?: () => string | null | Promise<string | null>;
  /** Where to keep the session for resume: sessionStorage by default (one session per tab,
   * surviving reloads); `null` keeps it in memory only. */
  storage?: SessionStorageLike | null | false;
  /** Storage key (default `switchboard:<url>:<clientId>`). */
  storageKey?: string;
  /** WebSocket implementation (default `globalThis.WebSocket`). */
  WebSocket?: WebSocketConstructor | (new (url: string) => unknown);
  backoff?: Partial<BackoffOptions>;
  /** Give up (state `failed`) after this many consecutive failed attempts (Infinity). */
  maxReconnectAttempts?: number;
  /** ms allowed for the upgrade plus `connection_established` (10000). */
  connectTimeout?: number;
  /** Default `request()` timeout, ms (10000). */
  requestTimeout?: number;
  /** Send an application ping after this many ms without any frame (25000; 0 disables). */
  idleTimeout?: number;
  /** Reconnect when nothing arrives this many ms after that ping (10000). */
  pingTimeout?: number;
  /** Frames kept while disconnected; `send()` throws QueueFull beyond (256). */
  maxQueue?: number;
  /** Reconnect with a fresh `getToken()` this many ms before the JWT's `exp` (30000). */
  refreshBefore?: number;
  /** Decides `mcp_tool_waiting_permission` prompts (default: deny). */
  onPermission?: PermissionHandler;
  /** Answer `tool_call`s for unregistered tools with an error (true). */
  answerUnknownTools?: boolean;
  logger?: { error(...args: unknown[]): void };
}

export type ClientState = "idle" | "connecting" | "connected" | "disconnected" | "closed" | "failed";

export interface ConnectingEvent { attempt: number; url: string }
export interface ConnectedEvent {
  clientId: string;
  resumed: boolean;
  /** false when history no longer reached back to lastSeq: reload your state. */
  recovered: boolean;
  lastSeq: number;
  replayed: number;
  reconnect: boolean;
  info: ServerFrameData["connection_established"];
}
export interface DisconnectedEvent { code: number | null; reason: string; willReconnect: boolean }
export interface RecoveryFailedEvent {
  reason: "history_gap" | "session_lost";
  lastSeq: number;
  clientId: string | null;
}
export interface ClosedEvent { code: number | null; reason: string }

export interface StateEvents {
  connecting: ConnectingEvent;
  connected: ConnectedEvent;
  resumed: ConnectedEvent;
  disconnected: DisconnectedEvent;
  recovery_failed: RecoveryFailedEvent;
  failed: ClosedEvent;
  closed: ClosedEvent;
}
export type StateEventName = keyof StateEvents;

/** What `on(name)` handlers receive. */
export type EventPayload<T extends string> =
  T extends StateEventName ? StateEvents[T] : T extends "*" ? AnyFrame : FrameOf<T>;

export interface RequestOptions {
  /** ms (default `requestTimeout`). */
  timeout?: number;
  signal?: AbortSignal;
  /** Reply type(s) that complete the request (default DEFAULT_REPLY_TYPES[type]). */
  expect?: string | string[];
  messageId?: string;
}

export type PermissionHandler = (frame: ServerFrame<"mcp_tool_waiting_permission">) =>
  boolean | Promise<boolean>;

export interface ToolContext {
  callId: string;
  toolName: string;
  frame: ServerFrame<"tool_call">;
}
export type ToolHandler<P = any, R = unknown> = (params: P, context: ToolContext) => R | Promise<R>;

export interface ToolRegistry {
  /** Answer server `tool_call`s for `name`; returns a function that unregisters it. */
  register<P = any, R = unknown>(name: string, handler: ToolHandler<P, R>,
                                 options?: { schema?: object | null; description?: string }): () => void;
  unregister(name: string): void;
  has(name: string): boolean;
  describe(): Array<{ name: string; description: string; parameters: object | null }>;
  answerUnknown: boolean;
}

export interface Stats {
  framesReceived: number;
  framesSent: number;
  duplicatesDropped: number;
  connects: number;
  reconnects: number;
  resumes: number;
  recoveryFailures: number;
}

export declare class Switchboard {
  /** `url` defaults to the gateway this module was loaded from (`ws://host:port/`). */
  constructor(url?: string, options?: SwitchboardOptions);
  constructor(options: SwitchboardOptions);
  readonly url: string;
  readonly state: ClientState;
  readonly connected: boolean;
  clientId: string | null;
  /** The session's user (from connection_established); null: anonymous. */
  userId: string | null;
  sessionToken: string | null;
  /** The highest seq delivered to handlers (persisted after each frame). */
  lastSeq: number;
  connectionInfo: ServerFrameData["connection_established"] | null;
  closeCode: number | null;
  closeReason: string;
  readonly stats: Stats;
  readonly channels: Set<string>;
  readonly tools: ToolRegistry;
  readonly queued: number;

  connect(options?: { signal?: AbortSignal }): Promise<ServerFrameData["connection_established"]>;
  close(code?: number, reason?: string): Promise<void>;
  closed(): Promise<ClosedEvent>;
  /** Forget the saved session: the next connection starts a new one. */
  forgetSession(): void;
  /** Drop the socket as a network failure would (for tests and demos). */
  dropConnection(): void;

  on<T extends string>(type: T, handler: (payload: EventPayload<T>) => void): () => void;
  off<T extends string>(type: T, handler: (payload: EventPayload<T>) => void): void;
  once<T extends string>(type: T, options?: { signal?: AbortSignal; timeout?: number }):
    Promise<EventPayload<T>>;
  frames<T extends string = "*">(type?: T, options?: { signal?: AbortSignal }):
    AsyncIterableIterator<EventPayload<T>>;

  send<T extends keyof ClientFrameData>(type: T, data?: ClientFrameData[T],
                                        options?: { messageId?: string }): string;
  send(type: string, data?: Record<string, unknown>, options?: { messageId?: string }): string;
  request<T extends keyof ClientFrameData>(type: T, data?: ClientFrameData[T],
                                           options?: RequestOptions): Promise<AnyFrame>;
  request(type: string, data?: Record<string, unknown>, options?: RequestOptions): Promise<AnyFrame>;
  ping(options?: RequestOptions): Promise<ServerFrame<"pong">>;
  subscribe(channel: string, options?: RequestOptions): Promise<ServerFrame<"subscribed">>;
  unsubscribe(channel: string, options?: RequestOptions): Promise<ServerFrame<"unsubscribed">>;
  /** Publish where the channel's rule allows; subscribers get `publication` frames. */
  publish(channel: string, data?: Record<string, unknown>,
          options?: RequestOptions): Promise<ServerFrame<"published">>;
  /** Who is in a channel (where its rule allows presence); `join` / `leave` frames follow
   * changes where the rule has join_leave. */
  presence(channel: string, options?: RequestOptions): Promise<ServerFrame<"presence">>;
  /** A subscribed channel's recent frames (its rule's history), oldest first. */
  channelHistory(channel: string, options?: RequestOptions & { limit?: number }
                 ): Promise<ServerFrame<"channel_history">>;
  chat(content: string, options?: { role?: string; timeout?: number; signal?: AbortSignal }):
    Promise<ServerFrame<"chat_response" | "stream_end">>;
  callTool<R = unknown>(name: string, params?: Record<string, unknown>,
                        options?: { timeout?: number; signal?: AbortSignal; callId?: string }): Promise<R>;
  stream(replyTo: string, options?: { signal?: AbortSignal }): AsyncIterableIterator<string>;
  onPermission(handler: PermissionHandler | null): void;
}

export declare class SwitchboardError extends Error {}
export declare class RequestError extends SwitchboardError {
  code: string;
  frame: ServerFrame<"error">;
}
export declare class RequestTimeout extends SwitchboardError {}
export declare class ToolError extends SwitchboardError {
  toolName: string;
  response: ServerFrameData["tool_response"];
}
export declare class ConnectionClosed extends SwitchboardError {
  code: number | null;
  reason: string;
}
export declare class QueueFull extends SwitchboardError {}
