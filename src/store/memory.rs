//! The ephemeral store: everything in a map behind a mutex, gone when the process ends.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Mutex, MutexGuard};

use super::{
    Append, Appended, Holding, InboxRoom, Kind, MAX_PAGE, Membership, Op, PRUNE_ROOMS, Page,
    Pruned, ReactionCount, Reactions, ReadState, Record, Referred, Retention, RoomState, Store,
    UNREAD_CAP, is_dm_of, judge, new_epoch,
};
use crate::Result;
use crate::clock::now_ms;

/// History kept in memory only (`nanachat serve --memory`).
#[derive(Debug, Default)]
pub struct MemoryStore {
    rooms: Mutex<HashMap<String, Room>>,
    /// Nicks bound to a key (case-folded nick → its holding as it was bound, and when).
    /// Locked after `rooms` when both are.
    nicks: Mutex<HashMap<String, (Holding, i64)>>,
    /// Known users' rooms: case-folded nick → room → read seq. Locked after `rooms`.
    reads: Mutex<HashMap<String, BTreeMap<String, u64>>>,
}

impl Room {
    /// Messages after `after` by others than `nick`, not deleted, up to [`UNREAD_CAP`].
    fn unread(&self, after: u64, nick: &str) -> u64 {
        self.records
            .range(after.saturating_add(1)..)
            .filter(|(_, r)| {
                r.kind == Kind::Message && !r.deleted && !r.from.eq_ignore_ascii_case(nick)
            })
            .take(UNREAD_CAP as usize)
            .count() as u64
    }
}

#[derive(Debug)]
struct Room {
    epoch: u64,
    last_seq: u64,
    records: BTreeMap<u64, Record>,
    /// (sender, cid) → seq.
    cids: HashMap<(String, String), u64>,
    /// seq → reaction → the nicks that gave it.
    reactions: BTreeMap<u64, BTreeMap<String, BTreeSet<String>>>,
}

impl Room {
    fn state(&self) -> RoomState {
        RoomState {
            epoch: self.epoch,
            last_seq: self.last_seq,
            first_seq: self
                .records
                .keys()
                .next()
                .copied()
                .unwrap_or(self.last_seq + 1),
        }
    }

    fn new() -> Self {
        Self {
            epoch: new_epoch(),
            last_seq: 0,
            records: BTreeMap::new(),
            cids: HashMap::new(),
            reactions: BTreeMap::new(),
        }
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn append_now(&self, append: Append) -> Appended {
        let mut rooms = self.rooms();
        let room = rooms.entry(append.room.clone()).or_insert_with(Room::new);
        if let Some(cid) = &append.cid {
            let key = (append.from.clone(), cid.clone());
            if let Some(record) = room.cids.get(&key).and_then(|seq| room.records.get(seq)) {
                return Appended::again(record.clone(), &append);
            }
        }
        if let Some(target) = append.op.refers_to() {
            let sender = append.from.to_ascii_lowercase();
            let referred = room.records.get(&target).map(|r| Referred {
                kind: r.kind,
                from: r.from.clone(),
                deleted: r.deleted,
                time: r.time_ms,
                sender_bound: self.nicks().get(&sender).map(|(_, bound)| *bound),
            });
            let mut seen = Reactions::default();
            if let (Op::React { emoji, .. }, Some(given)) =
                (&append.op, room.reactions.get(&target))
            {
                seen.distinct = given.len();
                seen.used = given.contains_key(emoji);
                let me = append.from.to_ascii_lowercase();
                seen.mine = given.get(emoji).is_some_and(|n| n.contains(&me));
            }
            if let Err(refusal) = judge(&append, referred.as_ref(), seen) {
                return Appended::Refused(refusal);
            }
        }
        room.last_seq += 1;
        let record = Record::of(&append, room.last_seq, now_ms());
        match &append.op {
            Op::Say { .. } => {}
            Op::Edit { target } => {
                if let Some(m) = room.records.get_mut(target) {
                    m.text.clone_from(&append.text);
                    m.edited_ms = Some(record.time_ms);
                }
            }
            Op::Delete { target } => {
                if let Some(m) = room.records.get_mut(target) {
                    m.text.clear();
                    m.deleted = true;
                }
                for r in room.records.values_mut() {
                    if r.kind == Kind::Edit && r.target == Some(*target) {
                        r.text.clear();
                    }
                }
                room.reactions.remove(target);
            }
            Op::React { target, emoji, on } => {
                let given = room.reactions.entry(*target).or_default();
                if *on {
                    let me = append.from.to_ascii_lowercase();
                    given.entry(emoji.clone()).or_default().insert(me);
                } else if let Some(nicks) = given.get_mut(emoji) {
                    nicks.remove(&append.from.to_ascii_lowercase());
                    if nicks.is_empty() {
                        given.remove(emoji);
                    }
                }
            }
        }
        if let Some(cid) = append.cid {
            room.cids.insert((record.from.clone(), cid), record.seq);
        }
        room.records.insert(record.seq, record.clone());
        Appended::Stored(record)
    }

    /// Up to `limit` records of `room` that `keep` keeps, oldest first.
    fn page(
        &self,
        room: &str,
        page: Page,
        limit: usize,
        keep: impl Fn(&Record) -> bool,
    ) -> Vec<Record> {
        let limit = limit.min(MAX_PAGE);
        let rooms = self.rooms();
        let Some(room) = rooms.get(room) else {
            return Vec::new();
        };
        match page {
            Page::After(seq) => room
                .records
                .range(seq.saturating_add(1)..)
                .map(|(_, r)| r)
                .filter(|r| keep(r))
                .take(limit)
                .cloned()
                .collect(),
            Page::Before(seq) => {
                let mut page: Vec<Record> = room
                    .records
                    .range(..seq)
                    .rev()
                    .map(|(_, r)| r)
                    .filter(|r| keep(r))
                    .take(limit)
                    .cloned()
                    .collect();
                page.reverse();
                page
            }
        }
    }

    fn rooms(&self) -> MutexGuard<'_, HashMap<String, Room>> {
        self.rooms
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A known user's rooms (case-folded `nick`) and how far it read each: its memberships,
    /// and its direct-message rooms with messages (read up to 0 if it never said how far).
    fn read_positions(&self, rooms: &HashMap<String, Room>, nick: &str) -> BTreeMap<String, u64> {
        let reads = self.reads.lock().unwrap_or_else(|p| p.into_inner());
        let mut mine: BTreeMap<String, u64> = reads.get(nick).cloned().unwrap_or_default();
        for (name, room) in rooms.iter() {
            if room.last_seq > 0 && is_dm_of(name, nick) {
                mine.entry(name.clone()).or_insert(0);
            }
        }
        mine
    }

    fn nicks(&self) -> MutexGuard<'_, HashMap<String, (Holding, i64)>> {
        self.nicks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Where `nick`'s direct-message rooms with messages stand now.
fn floors_now(rooms: &HashMap<String, Room>, nick: &str) -> Vec<(String, u64)> {
    rooms
        .iter()
        .filter(|(name, room)| room.last_seq > 0 && is_dm_of(name, nick))
        .map(|(name, room)| (name.clone(), room.last_seq))
        .collect()
}

impl Store for MemoryStore {
    fn append(&self, append: Append) -> impl Future<Output = Result<Appended>> + Send + 'static {
        std::future::ready(Ok(self.append_now(append)))
    }

    async fn history(&self, room: &str, page: Page, limit: usize) -> Result<Vec<Record>> {
        Ok(self.page(room, page, limit, |_| true))
    }

    async fn messages(&self, room: &str, page: Page, limit: usize) -> Result<Vec<Record>> {
        Ok(self.page(room, page, limit, |r| r.kind == Kind::Message))
    }

    async fn reactions(&self, room: &str, seqs: &[u64], nick: &str) -> Result<Vec<ReactionCount>> {
        let rooms = self.rooms();
        let Some(room) = rooms.get(room) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for seq in seqs {
            for (emoji, nicks) in room.reactions.get(seq).into_iter().flatten() {
                let mine = nicks.contains(&nick.to_ascii_lowercase());
                out.push((*seq, emoji.clone(), nicks.len() as u32, mine));
            }
        }
        out.sort();
        Ok(out)
    }

    async fn membership(&self, nick: &str, room: &str, change: Membership) -> Result<ReadState> {
        let rooms = self.rooms();
        let mut reads = self.reads.lock().unwrap_or_else(|p| p.into_inner());
        let nick = nick.to_ascii_lowercase();
        let last_seq = rooms.get(room).map_or(0, |r| r.last_seq);
        let mine = reads.entry(nick.clone()).or_default();
        let read_seq = match change {
            Membership::Forget => {
                mine.remove(room);
                return Ok(ReadState::default());
            }
            Membership::Remember { last_seq } => *mine.entry(room.to_owned()).or_insert(last_seq),
            Membership::Read { seq } => {
                let held = mine.entry(room.to_owned()).or_insert(0);
                *held = (*held).max(seq.min(last_seq));
                *held
            }
        };
        let unread = rooms.get(room).map_or(0, |r| r.unread(read_seq, &nick));
        Ok(ReadState { read_seq, unread })
    }

    async fn rooms_of(&self, nick: &str) -> Result<Vec<String>> {
        let nick = nick.to_ascii_lowercase();
        Ok(self
            .read_positions(&self.rooms(), &nick)
            .into_keys()
            .collect())
    }

    async fn inbox(&self, nick: &str, floors: Vec<(String, u64)>) -> Result<Vec<InboxRoom>> {
        let rooms = self.rooms();
        let nick = nick.to_ascii_lowercase();
        let mine = self.read_positions(&rooms, &nick);
        let floor = |room: &str| {
            floors
                .iter()
                .find(|(r, _)| r == room)
                .map_or(0, |(_, f)| *f)
        };
        Ok(mine
            .into_iter()
            .map(|(name, read)| {
                let floor = floor(&name);
                let read_seq = read.max(floor);
                let room = rooms.get(&name);
                let last = room.and_then(|r| {
                    r.records
                        .range(floor.saturating_add(1)..)
                        .rev()
                        .map(|(_, rec)| rec)
                        .find(|rec| rec.kind == Kind::Message)
                        .cloned()
                });
                InboxRoom {
                    last_seq: room.map_or(0, |r| r.last_seq),
                    state: ReadState {
                        read_seq,
                        unread: room.map_or(0, |r| r.unread(read_seq, &nick)),
                    },
                    last,
                    room: name,
                }
            })
            .collect())
    }

    async fn search(
        &self,
        words: Vec<String>,
        rooms: Vec<String>,
        limit: usize,
        skip: usize,
    ) -> Result<Vec<Record>> {
        if words.is_empty() || rooms.is_empty() {
            return Ok(Vec::new());
        }
        let all = self.rooms();
        let mut found: Vec<(usize, Record)> = Vec::new();
        for name in &rooms {
            let Some(room) = all.get(name) else { continue };
            for r in room.records.values() {
                if r.kind != Kind::Message || r.deleted {
                    continue;
                }
                let own: Vec<String> = r
                    .text
                    .split(|c: char| !c.is_alphanumeric())
                    .filter(|w| !w.is_empty())
                    .map(str::to_lowercase)
                    .collect();
                if words.iter().all(|w| own.contains(w)) {
                    // Fewer other words: a closer match.
                    found.push((own.len(), r.clone()));
                }
            }
        }
        found.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.time_ms.cmp(&a.1.time_ms)));
        Ok(found
            .into_iter()
            .skip(skip)
            .take(limit)
            .map(|(_, r)| r)
            .collect())
    }

    async fn replies(&self, room: &str, seq: u64, after: u64, limit: usize) -> Result<Vec<Record>> {
        Ok(self.page(room, Page::After(after), limit, |r| {
            r.kind == Kind::Message && r.reply_to == Some(seq)
        }))
    }

    async fn room_state(&self, room: &str) -> Result<RoomState> {
        let mut rooms = self.rooms();
        Ok(rooms
            .entry(room.to_owned())
            .or_insert_with(Room::new)
            .state())
    }

    async fn prune(
        &self,
        retention: Retention,
        now_ms: i64,
        from: &str,
        limit: usize,
    ) -> Result<Pruned> {
        let limit = limit.max(1);
        let mut rooms = self.rooms();
        let mut names: Vec<&String> = rooms.keys().filter(|name| name.as_str() >= from).collect();
        names.sort_unstable();
        let mut names: Vec<String> = names.into_iter().take(PRUNE_ROOMS + 1).cloned().collect();
        let next = (names.len() > PRUNE_ROOMS).then(|| names.pop()).flatten();
        let mut deleted = 0;
        for name in names {
            let Some(room) = rooms.get_mut(&name) else {
                continue;
            };
            let budget = limit - deleted;
            let oldest: Vec<(u64, i64)> = room
                .records
                .values()
                .take(budget)
                .map(|r| (r.seq, r.time_ms))
                .collect();
            let doomed = retention.doomed(now_ms, room.last_seq, &oldest);
            for (seq, _) in &oldest[..doomed] {
                room.records.remove(seq);
            }
            if doomed > 0 {
                let kept = &room.records;
                room.cids.retain(|_, seq| kept.contains_key(seq));
                room.reactions.retain(|seq, _| kept.contains_key(seq));
            }
            deleted += doomed;
            if deleted == limit {
                // This room may hold more: the next call starts with it.
                return Ok(Pruned {
                    deleted: deleted as u64,
                    next: Some(name),
                });
            }
        }
        Ok(Pruned {
            deleted: deleted as u64,
            next,
        })
    }

    async fn nick_binding(&self, nick: &str) -> Result<Option<String>> {
        Ok(self.nicks().get(nick).and_then(|(h, _)| h.key_hash.clone()))
    }

    async fn take_nick(&self, nick: &str, bind: Option<String>) -> Result<Holding> {
        let rooms = self.rooms();
        let mut nicks = self.nicks();
        if let Some(hash) = bind {
            nicks.entry(nick.to_owned()).or_insert_with(|| {
                let holding = Holding {
                    key_hash: Some(hash),
                    floors: floors_now(&rooms, nick),
                };
                (holding, now_ms())
            });
        }
        Ok(match nicks.get(nick) {
            Some((bound, _)) => bound.clone(),
            None => Holding {
                key_hash: None,
                floors: floors_now(&rooms, nick),
            },
        })
    }

    async fn wipe(&self, room: &str) -> Result<RoomState> {
        let mut rooms = self.rooms();
        let room = rooms.entry(room.to_owned()).or_insert_with(Room::new);
        room.records.clear();
        room.cids.clear();
        room.reactions.clear();
        room.epoch = new_epoch().max(room.epoch + 1);
        Ok(room.state())
    }
}

#[cfg(test)]
mod tests {
    use super::super::contract;
    use super::*;

    #[tokio::test]
    async fn keeps_the_store_contract() {
        contract::seqs_start_at_one_per_room_and_never_skip(&MemoryStore::new()).await;
        contract::a_retried_cid_is_stored_once(&MemoryStore::new()).await;
        contract::a_cid_reused_for_another_text_is_refused(&MemoryStore::new()).await;
        contract::pages_go_both_ways(&MemoryStore::new()).await;
        contract::events_take_seqs_and_change_their_message(&MemoryStore::new()).await;
        contract::memberships_remember_read_and_forget(&MemoryStore::new()).await;
        contract::search_finds_messages_as_they_stand(&MemoryStore::new()).await;
        contract::a_wipe_changes_the_epoch_and_keeps_seqs_going(&MemoryStore::new()).await;
        contract::prune_by_count_keeps_the_newest_of_each_room(&MemoryStore::new()).await;
        contract::prune_by_age_deletes_the_oldest_only(&MemoryStore::new()).await;
        contract::seqs_go_on_after_everything_is_pruned(&MemoryStore::new()).await;
        contract::a_nick_bound_to_a_key_stays_bound_and_keeps_where_its_dms_stood(
            &MemoryStore::new(),
        )
        .await;
        contract::concurrent_appends_get_distinct_consecutive_seqs(std::sync::Arc::new(
            MemoryStore::new(),
        ))
        .await;
    }
}
