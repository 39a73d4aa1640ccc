// Type-checked (never run) by test/types.test.mjs with `tsc --noEmit`: the README's uses of the
// library compile against nanachat.d.ts, and wrong ones do not (each `@ts-expect-error` must
// meet an error, or tsc fails).
import { Client, NanachatError, PROTOCOL, dmRoom, tokenClaims } from '../../nanachat.js';
import type { AckFrame, JoinedFrame, LiveFrame, MessageFrame, SearchFrame, StateEvent } from '../../nanachat.js';

export async function example(): Promise<void> {
  const chat = new Client({
    url: 'ws://127.0.0.1:8080/',
    nick: 'nana',
    key: 'a random secret kept by the app',
    getToken: async ({ reason }) => `token for ${reason}`,
    refreshAheadMs: null,
    backoff: { initialMs: 250, maxMs: 5000 },
  });
  const stop: () => void = chat.on('message', (m: MessageFrame) => console.log(m.room, m.seq, m.from, m.text));
  chat.on('react', (r) => { const on: boolean = r.on; const target: number = r.target; void on; void target; });
  chat.on('state', (s: StateEvent) => console.log(s.state, s.delayMs));
  chat.on('*', (f) => console.log(f.type));
  const welcome = await chat.connect();
  const max: number = welcome.limits.max_text_chars;
  const joined: JoinedFrame = await chat.join('lobby', { since: 41, epoch: 1 });
  const ack: AckFrame = await chat.say('lobby', 'hi', { replyTo: joined.last_seq });
  await chat.edit('lobby', ack.seq, 'hi!');
  await chat.react('lobby', ack.seq, '👍', false);
  await chat.delete('lobby', ack.seq, { cid: chat.newCid() });
  const found: SearchFrame = await chat.search('quick fox', { room: 'lobby', limit: 5 });
  const page = await chat.history('lobby', { before: 100, limit: 50 });
  const first: number | undefined = page.messages[0]?.seq;
  const inbox = await chat.inbox();
  const unread: number = inbox.rooms[0].unread;
  await chat.dm('mochi', 'psst');
  const live: LiveFrame = await chat.watch({ rooms: true, nicks: ['mochi'] });
  const isOn: boolean = live.online?.includes('mochi') ?? false;
  chat.on('live', (l) => { const count: number | undefined = l.rooms[0]?.members; void count; });
  await chat.watch();
  const room: string = dmRoom('nana', 'mochi');
  const sub: string | undefined = tokenClaims('a.b.c')?.sub;
  const protocol: 'nanachat.v1' = PROTOCOL;
  try {
    await chat.read('lobby', ack.seq);
  } catch (err) {
    if (err instanceof NanachatError) console.log(err.code, err.cid);
  }
  void [stop, max, found, first, unread, room, sub, protocol, isOn];

  // @ts-expect-error: nicks are a list
  await chat.watch({ nicks: 'mochi' });
  // @ts-expect-error: a seq is a number
  await chat.edit('lobby', '42', 'no');
  // @ts-expect-error: no such event
  chat.on('mesage', () => {});
  // @ts-expect-error: the url is required
  new Client({ nick: 'nana' });
  // @ts-expect-error: an ack has no text
  const text: string = ack.text;
  void text;
  chat.close();
}
