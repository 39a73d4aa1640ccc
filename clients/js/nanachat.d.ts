// Types of nanachat.js, the JavaScript client of nanachat's `nanachat.v1` protocol
// (docs/protocol.md). Written by hand beside the plain-JavaScript module (no build step: the
// server serves the module as it is); test/types.test.mjs checks them with `tsc --noEmit`.

/** The WebSocket subprotocol: `nanachat.v1`. */
export const PROTOCOL: 'nanachat.v1';

/** A protocol error code (docs/protocol.md, "Errors"), or one of this library's own:
 * `closed` (the client was closed), `token_ended` (a 4003 close with no `getToken`),
 * `disconnected` (closed with 4004: put out by the server's API, or banned; not reconnected),
 * `bad_url`. */
export type ErrorCode =
  | 'bad_json' | 'bad_message' | 'binary_not_allowed' | 'hello_first' | 'already_hello'
  | 'bad_nick' | 'nick_taken' | 'bad_room' | 'already_joined' | 'not_joined' | 'too_many_rooms'
  | 'text_too_long' | 'no_such_nick' | 'rate_limited' | 'cid_reused' | 'internal'
  | 'unauthorized' | 'forbidden' | 'no_such_message' | 'message_deleted' | 'bad_reaction'
  | 'unchanged' | 'token_expired'
  | 'closed' | 'token_ended' | 'disconnected' | 'bad_url';

/** A refusal: the server's `error` frame (or this library's, for arguments it cannot send). */
export class NanachatError extends Error {
  constructor(code: ErrorCode | string, message: string, frame?: ErrorFrame);
  readonly name: 'NanachatError';
  /** The protocol's code, e.g. `not_joined`. */
  readonly code: ErrorCode | string;
  /** The cid of the refused request, when it had one. */
  readonly cid: string | undefined;
  /** The `error` frame as the server sent it (null for a refusal of this library's). */
  readonly frame: ErrorFrame | null;
}

/** The direct-message room of two nicks: `@a+b`, in lower case, sorted. */
export function dmRoom(a: string, b: string): string;

/** The claims of a JSON Web Token, unverified (the server verifies), or null. */
export function tokenClaims(token: string): { sub?: string; exp?: number; [claim: string]: unknown } | null;

/** The WebSocket API this library uses (the browser's, Node 22's global, or `ws`'s). */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: any) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onerror: ((event: any) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
}
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

/** Why `getToken` is asked. */
export type TokenReason =
  /** before (re)connecting: the token held has expired, or there is none */
  | 'connect'
  /** ahead of the token's `exp` (`refreshAheadMs`) */
  | 'refresh'
  /** the server said `token_expired`: send one within its grace */
  | 'expired'
  /** the last one given was refused (`unauthorized`): `message` says why */
  | 'refused'
  /** the connection was closed with 4003: a new token before reconnecting */
  | 'ended';

export interface ClientOptions {
  /** The server's WebSocket URL, e.g. `wss://chat.example.com/`. */
  url: string;
  /** The nick; with a token, its `sub` unless given. */
  nick?: string;
  /** A secret of the client's choosing (1 to 256 bytes) that binds the nick on a server
   * without tokens; keep it (a random one, stored). */
  key?: string;
  /** A token (HS256 JWT) for a server that wants one. */
  token?: string;
  /** Returns a fresh token: before it expires, when the server says it did, after a 4003. */
  getToken?: (why: { reason: TokenReason; message?: string }) => string | Promise<string>;
  /** How long before `exp` to refresh (at most half of what is left); null: only when told
   * `token_expired`. Default 10,000. */
  refreshAheadMs?: number | null;
  /** Reconnection back-off: the first wait and the longest (each doubled, with jitter).
   * Default 500 and 10,000 ms. */
  backoff?: { initialMs: number; maxMs: number };
  /** How long to wait for `welcome` after opening a connection before trying again.
   * Default 10,000 ms. */
  connectTimeoutMs?: number;
  /** A WebSocket constructor: the global one unless given (Node before 22: `ws`). */
  WebSocket?: WebSocketConstructor;
}

export type ClientState = 'idle' | 'connecting' | 'open' | 'offline' | 'closed';

export interface Limits {
  max_message_bytes: number;
  max_text_chars: number;
  rate_per_sec: number;
  rate_burst: number;
  max_rooms: number;
  heartbeat_ms: number;
}

/** What every message has. */
export interface MessageFields {
  room: string;
  seq: number;
  from: string;
  text: string;
  time: number;
  /** the message it answers */
  reply_to?: number;
  /** when it was last edited */
  edited?: number;
  /** a tombstone: its text is erased */
  deleted?: boolean;
}

/** A stored message, as delivered live or replayed. */
export interface MessageFrame extends MessageFields { type: 'message' }

/** A message as it stands now (in `history`, `thread`, `search`, `inbox`). */
export interface StoredMessage extends MessageFields {
  /** emoji -> how many */
  reactions?: Record<string, number>;
  /** the asker's own reactions among them */
  mine?: string[];
}

interface EventBase {
  room: string;
  /** The event's own seq (events take the room's next seq, as messages do). */
  seq: number;
  from: string;
  time: number;
  /** The seq of the message it changes. */
  target: number;
}
export interface EditFrame extends EventBase { type: 'edit'; text: string }
export interface DeleteFrame extends EventBase { type: 'delete'; text: '' }
export interface ReactFrame extends EventBase { type: 'react'; emoji: string; on: boolean; text: '' }

export interface WelcomeFrame { type: 'welcome'; nick: string; limits: Limits; exp?: number }
export interface JoinedFrame {
  type: 'joined';
  room: string;
  epoch: number;
  last_seq: number;
  first_seq: number;
  reset?: boolean;
  truncated?: boolean;
  read_seq?: number;
  unread?: number;
}
export interface LeftFrame { type: 'left'; room: string }
export interface AckFrame { type: 'ack'; cid: string; room: string; seq: number; duplicate?: boolean }
export interface ErrorFrame { type: 'error'; code: ErrorCode | string; message: string; cid?: string; fatal?: boolean }
export interface TypingFrame { type: 'typing'; room: string; nick: string }
export interface ReadFrame { type: 'read'; room: string; seq: number }
/** `renamed`: `nick` is the member's new nick, `from` the old one. */
export interface PresenceFrame { type: 'presence'; room: string; nick: string; event: 'join' | 'leave' | 'renamed'; from?: string }
/** The user's nick changed (on this connection or another of theirs): `nick` says the new one from then on. */
export interface RenamedFrame { type: 'renamed'; from: string; to: string }
export interface RefreshedFrame { type: 'refreshed'; exp?: number }
export interface TickFrame { type: 'tick'; time: number }
export interface InboxEntry { room: string; last_seq: number; read_seq: number; unread: number; last?: StoredMessage }
export interface InboxFrame { type: 'inbox'; rooms: InboxEntry[]; total: number }
export interface ThreadFrame { type: 'thread'; room: string; seq: number; messages: StoredMessage[]; total: number }
export interface SearchFrame { type: 'search'; results: StoredMessage[]; total: number }
export interface MembersFrame { type: 'members'; room: string; nicks: string[]; total: number }
export interface RoomInfo { room: string; members: number }
export interface RoomsFrame { type: 'rooms'; rooms: RoomInfo[]; total: number }
/**
 * The answer to `watch` (`rooms` empty; `online`/`offline`: every nick followed), then what
 * changed, at most one a second: rooms with their count now (0: empty now), and the nicks that
 * came online or went offline. `total` above `rooms.length`: more changed than fit (ask `rooms`).
 */
export interface LiveFrame { type: 'live'; rooms: RoomInfo[]; total: number; online?: string[]; offline?: string[] }
export interface HistoryFrame { type: 'history'; room: string; epoch: number; messages: StoredMessage[]; total: number }
/** A change of the connection's state (this library's, not the server's). */
export interface StateEvent {
  type: 'state';
  state: ClientState;
  /** offline: the close code and reason, and how long until the next attempt */
  code?: number;
  reason?: string;
  delayMs?: number;
  /** connecting: how many attempts failed before this one */
  attempt?: number;
}

/** What `on(type, …)` delivers, by type. */
export interface EventMap {
  welcome: WelcomeFrame;
  message: MessageFrame;
  edit: EditFrame;
  delete: DeleteFrame;
  react: ReactFrame;
  joined: JoinedFrame;
  left: LeftFrame;
  ack: AckFrame;
  /** An error no request waits for (and fatal ones: the client closed). */
  error: ErrorFrame;
  typing: TypingFrame;
  read: ReadFrame;
  presence: PresenceFrame;
  renamed: RenamedFrame;
  refreshed: RefreshedFrame;
  token_expired: ErrorFrame;
  tick: TickFrame;
  inbox: InboxFrame;
  thread: ThreadFrame;
  search: SearchFrame;
  members: MembersFrame;
  rooms: RoomsFrame;
  live: LiveFrame;
  history: HistoryFrame;
  state: StateEvent;
}
export type AnyEvent = EventMap[keyof EventMap];

/** What this client knows of a room. */
export interface RoomView {
  /** joined on the current connection */
  joined: boolean;
  /** to be joined again after a reconnect */
  wanted: boolean;
  /** the last seq delivered (a resume goes on after it) */
  lastSeq: number | null;
  epoch: number | null;
}

/** Options of a request with a cid: the cid to use (a fresh one unless given; at most 64 bytes). */
export interface CidOptions { cid?: string }

/**
 * A connection to a nanachat server that comes back by itself: rooms are joined again from the
 * last seq delivered (gapless), and what was sent without an ack goes again with its cid.
 * `message`, `edit`, `delete` and `react` reach `on` once each, in seq order per room.
 */
export class Client {
  constructor(options: ClientOptions);
  /** The nick the server welcomed (or the one asked for, before). */
  readonly nick: string;
  readonly state: ClientState;
  /** The token in force. */
  readonly token: string | null;
  /** `welcome`'s limits (null before it). */
  limits: Limits | null;
  /** How many requests with a cid wait for their ack. */
  readonly unacked: number;
  room(name: string): RoomView | null;

  on<K extends keyof EventMap>(type: K, fn: (event: EventMap[K]) => void): () => void;
  on(type: '*', fn: (event: AnyEvent) => void): () => void;
  off<K extends keyof EventMap>(type: K | '*', fn: (event: any) => void): void;

  /** Opens the connection; resolves with the first `welcome`, rejects on a refusal no retry
   * fixes (`bad_nick`, `nick_taken`, `unauthorized`). */
  connect(): Promise<WelcomeFrame>;
  /** Closes for good; what waits is rejected with `closed`. */
  close(): void;

  join(room: string, options?: { since?: number; epoch?: number }): Promise<JoinedFrame>;
  leave(room: string): Promise<LeftFrame>;
  say(room: string, text: string, options?: CidOptions & { replyTo?: number }): Promise<AckFrame>;
  dm(to: string, text: string, options?: CidOptions): Promise<AckFrame>;
  edit(room: string, seq: number, text: string, options?: CidOptions): Promise<AckFrame>;
  delete(room: string, seq: number, options?: CidOptions): Promise<AckFrame>;
  react(room: string, seq: number, emoji: string, on?: boolean, options?: CidOptions): Promise<AckFrame>;
  read(room: string, seq: number): Promise<ReadFrame>;
  /** Says the user is typing in a joined room (nothing is answered; the server throttles). */
  typing(room: string): void;
  search(query: string, options?: { room?: string | null; limit?: number; skip?: number }): Promise<SearchFrame>;
  history(room: string, options?: { before?: number; after?: number; limit?: number }): Promise<HistoryFrame>;
  thread(room: string, seq: number, options?: { after?: number; limit?: number }): Promise<ThreadFrame>;
  inbox(options?: { after?: string }): Promise<InboxFrame>;
  who(room: string, options?: { after?: string }): Promise<MembersFrame>;
  rooms(options?: { after?: RoomInfo }): Promise<RoomsFrame>;
  /**
   * Follows every room's member count and whether `nicks` (at most 100) are online, again after
   * each reconnect; `live` events carry what changed. `watch()` stops.
   */
  watch(options?: { rooms?: boolean; nicks?: string[] }): Promise<LiveFrame>;
  refresh(token: string): Promise<RefreshedFrame>;
  /** A fresh cid of this client's. */
  newCid(): string;
}
