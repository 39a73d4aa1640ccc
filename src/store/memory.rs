//! The ephemeral store: everything in a map behind a mutex, gone when the process ends.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Mutex, MutexGuard};

use super::{
    Append, Appended, Holding, MAX_PAGE, PRUNE_ROOMS, Page, Pruned, Record, Retention, RoomState,
    Store, is_dm_of, new_epoch,
};
use crate::Result;
use crate::clock::now_ms;

/// History kept in memory only (`nanachat serve --memory`).
#[derive(Debug, Default)]
pub struct MemoryStore {
    rooms: Mutex<HashMap<String, Room>>,
    /// Nicks bound to a key (case-folded nick → its holding as it was bound). Locked after
    /// `rooms` when both are.
    nicks: Mutex<HashMap<String, Holding>>,
}

#[derive(Debug)]
struct Room {
    epoch: u64,
    last_seq: u64,
    records: BTreeMap<u64, Record>,
    /// (sender, cid) → seq.
    cids: HashMap<(String, String), u64>,
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
                return Appended::again(record.clone(), &append.text);
            }
        }
        room.last_seq += 1;
        let record = Record {
            room: append.room,
            seq: room.last_seq,
            from: append.from,
            text: append.text,
            time_ms: now_ms(),
        };
        if let Some(cid) = append.cid {
            room.cids.insert((record.from.clone(), cid), record.seq);
        }
        room.records.insert(record.seq, record.clone());
        Appended::Stored(record)
    }

    fn rooms(&self) -> MutexGuard<'_, HashMap<String, Room>> {
        self.rooms
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn nicks(&self) -> MutexGuard<'_, HashMap<String, Holding>> {
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
        let limit = limit.min(MAX_PAGE);
        let rooms = self.rooms();
        let Some(room) = rooms.get(room) else {
            return Ok(Vec::new());
        };
        let records = match page {
            Page::After(seq) => room
                .records
                .range(seq.saturating_add(1)..)
                .take(limit)
                .map(|(_, r)| r.clone())
                .collect(),
            Page::Before(seq) => {
                let mut page: Vec<Record> = room
                    .records
                    .range(..seq)
                    .rev()
                    .take(limit)
                    .map(|(_, r)| r.clone())
                    .collect();
                page.reverse();
                page
            }
        };
        Ok(records)
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
        Ok(self.nicks().get(nick).and_then(|h| h.key_hash.clone()))
    }

    async fn take_nick(&self, nick: &str, bind: Option<String>) -> Result<Holding> {
        let rooms = self.rooms();
        let mut nicks = self.nicks();
        if let Some(hash) = bind {
            nicks.entry(nick.to_owned()).or_insert_with(|| Holding {
                key_hash: Some(hash),
                floors: floors_now(&rooms, nick),
            });
        }
        Ok(match nicks.get(nick) {
            Some(bound) => bound.clone(),
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
