//! The oplog's tail: where an executor that owns every shard appends its workers' small entries
//! first, one record per commit request under keys that follow each other, before it moves them
//! to each worker's own keys several requests at a time.
//!
//! Why: a group commit of many workers writes one page of the store per worker when each
//! appends to its own keys (the workers' oplogs lie apart), and the commit's cost is those pages:
//! writing them and syncing them. Appended one after another the group's entries share a page
//! or two; a worker's entries reach its own keys when it has [`MOVE_RECORDS`] records waiting (or
//! its oldest waited [`AGE_MAX_MS`]), so that one page write carries many entries. Records are
//! cleared from the tail once moved, the oldest as one range, so that clearing empties whole
//! pages.
//!
//! This module is the committer's memory of the tail, without the store: which records wait,
//! whose they are, what each group moves and clears ([`Tail::plan`]), and what changes once the
//! group is durable ([`Tail::apply`]). Nothing changes for a group that fails.
//!
//! **Invariants** (checked by the property test below against a model of the store):
//! - every entry committed through the tail is, at every moment, in its record in the tail or at
//!   its worker's key, or both: a record is cleared only once its entries are at their keys
//!   (moved in an earlier group or in the same transaction);
//! - the worker keys never miss an entry that came before one they hold, once the worker's
//!   records are moved: reads of a worker's oplog ([`Tail::holds`] first) see it whole;
//! - after a crash, the tail records left over ([`decode_record`]) put back at their keys
//!   whatever is not there yet, which gives every committed entry back.

use std::collections::{HashMap, VecDeque};

use invicta_model::WorkerId;
use invicta_model::oplog::OplogIndex;
use invicta_store::keys::{pack, unpack};

/// Records of one worker moved to its keys together.
pub(crate) const MOVE_RECORDS: usize = 16;

/// The longest a record waits to be moved (a worker that appends seldom).
pub(crate) const AGE_MAX_MS: u64 = 1_000;

/// Records kept in the tail at most; past it, the oldest workers' records move at once.
pub(crate) const RECORDS_MAX: usize = 65_536;

/// The largest record: a request appending more goes straight to the worker's keys.
pub(crate) const RECORD_BYTES_MAX: usize = 16 * 1024;

/// Workers moved for their age (or for room) in one group at most.
const AGED_MOVES_MAX: usize = 64;

/// Workers moved in one group at most, for any reason but an eviction.
const MOVES_MAX: usize = 256;

/// Bytes of entries kept in the tail at most; past it, the oldest workers' records move at once.
pub(crate) const BYTES_MAX: usize = 8 * 1024 * 1024;

/// Bytes of entries one group moves at most (besides evictions): its transaction stays small.
const MOVE_BYTES_MAX: usize = 2 * 1024 * 1024;

/// Moved records cleared in one group at most.
const CLEARS_MAX: usize = 4_096;

/// A request's entries: index and encoded bytes, in index order.
pub(crate) type Entries = Vec<(OplogIndex, Vec<u8>)>;

/// A durable request as [`Tail::apply`] takes it: its worker, first and last index, and its
/// entries (moved out of the request).
pub(crate) type Appended = (WorkerId, Option<(OplogIndex, OplogIndex)>, Entries);

pub(crate) fn record_key(writer: &str, seq: u64) -> Vec<u8> {
    pack(&("oplog-tail", writer, seq))
}

/// Where every executor's tail records are.
pub(crate) fn records_prefix() -> Vec<u8> {
    pack(&("oplog-tail",))
}

/// A record's value: the worker's id, then each entry's index, length and bytes.
pub(crate) fn encode_record(worker: &WorkerId, entries: &[(OplogIndex, Vec<u8>)]) -> Vec<u8> {
    let id = pack(&(
        worker.tenant.as_str(),
        worker.component.as_str(),
        worker.worker.as_str(),
    ));
    let size = entries.iter().map(|(_, e)| 12 + e.len()).sum::<usize>();
    let mut out = Vec::with_capacity(1 + 2 + id.len() + 4 + size);
    out.push(1);
    out.extend_from_slice(&(id.len() as u16).to_be_bytes());
    out.extend_from_slice(&id);
    out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    for (index, bytes) in entries {
        out.extend_from_slice(&index.to_be_bytes());
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(bytes);
    }
    out
}

/// A record's worker and entries; `None` for bytes that are not a record.
pub(crate) fn decode_record(value: &[u8]) -> Option<(WorkerId, Entries)> {
    fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, tail) = rest.split_at_checked(n)?;
        *rest = tail;
        Some(head)
    }
    let mut rest = value;
    if take(&mut rest, 1)? != [1] {
        return None;
    }
    let id_len = u16::from_be_bytes(take(&mut rest, 2)?.try_into().ok()?) as usize;
    let (tenant, component, worker): (String, String, String) =
        unpack(take(&mut rest, id_len)?).ok()?;
    let id = WorkerId {
        tenant: tenant.try_into().ok()?,
        component: component.try_into().ok()?,
        worker: worker.try_into().ok()?,
    };
    let count = u32::from_be_bytes(take(&mut rest, 4)?.try_into().ok()?) as usize;
    let mut entries = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let index = u64::from_be_bytes(take(&mut rest, 8)?.try_into().ok()?);
        let len = u32::from_be_bytes(take(&mut rest, 4)?.try_into().ok()?) as usize;
        entries.push((index, take(&mut rest, len)?.to_vec()));
    }
    rest.is_empty().then_some((id, entries))
}

fn entries_bytes(entries: &[(OplogIndex, Vec<u8>)]) -> usize {
    entries.iter().map(|(_, e)| e.len()).sum()
}

/// The committer's memory of its tail.
pub(crate) struct Tail {
    next_seq: u64,
    /// Records in the tail, oldest (lowest seq) first.
    order: VecDeque<Slot>,
    workers: HashMap<WorkerId, Waiting>,
    /// Bytes of the entries of records not yet moved.
    bytes: usize,
    /// Workers with [`MOVE_RECORDS`] records or more not yet moved.
    ready: std::collections::HashSet<WorkerId>,
}

struct Slot {
    seq: u64,
    worker: WorkerId,
    at_ms: u64,
    moved: bool,
}

/// One worker's records in the tail.
struct Waiting {
    /// The index of the worker's last committed entry.
    last: OplogIndex,
    /// Where that entry is: in the record of this seq, or at its key (`None`).
    last_in: Option<u64>,
    /// Records not yet moved, oldest first, with their entries.
    unmoved: Vec<(u64, Entries)>,
    /// Every record of the worker still in the tail, moved or not.
    live: Vec<u64>,
    /// Bytes of the entries of its unmoved records.
    bytes: usize,
}

/// What a request of a group does with its entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Placed {
    /// Appended as a new tail record.
    Tail { seq: u64 },
    /// Written at the worker's keys (too large for a record, or the worker is evicted after it).
    Direct,
}

/// What the committer knows of the entry before a request's first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Previous {
    /// Nothing: the transaction reads the worker's keys.
    Unknown,
    /// Its index, and the seq of the record holding it (`None`: at its key).
    Known(OplogIndex, Option<u64>),
}

/// One request as the plan sees it.
pub(crate) struct Request<'a> {
    pub worker: &'a WorkerId,
    /// Its entries that may go to the tail, and their bytes.
    pub entries: &'a [(OplogIndex, Vec<u8>)],
    /// The index of its first and last entry, counting those written straight to keys.
    pub span: Option<(OplogIndex, OplogIndex)>,
    /// The worker's records are to leave the tail (a read of its oplog follows).
    pub evict: bool,
}

/// What one group does to the tail.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// Per request, in order: where its entries go and what is known of its previous entry.
    pub requests: Vec<(Placed, Previous)>,
    /// Records moved to their workers' keys: their seqs, by worker.
    pub moves: Vec<(WorkerId, Vec<u64>)>,
    /// What the moves write: each moved worker's entries (copied: the transaction runs
    /// without the tail's lock).
    pub writes: Vec<(WorkerId, Entries)>,
    /// Records cleared from the tail one by one (an evicted worker's).
    pub clears: Vec<u64>,
    /// The oldest records, cleared as one range (first and last seq, both in): each is moved,
    /// by now or in this group, or an evicted worker's.
    pub front: Option<(u64, u64)>,
    /// How many records `front` spans.
    front_len: usize,
    /// Workers evicted: none of their records is left once the group is durable.
    pub evicted: Vec<WorkerId>,
}

impl Plan {
    /// Whether the plan changes nothing: no request, no move, no clear.
    pub(crate) fn is_empty(&self) -> bool {
        self.requests.is_empty()
            && self.moves.is_empty()
            && self.clears.is_empty()
            && self.front.is_none()
            && self.evicted.is_empty()
    }
}

impl Tail {
    pub(crate) fn new() -> Tail {
        Tail {
            next_seq: 0,
            order: VecDeque::new(),
            workers: HashMap::new(),
            bytes: 0,
            ready: std::collections::HashSet::new(),
        }
    }

    /// Whether any record of `worker` is in the tail: reads of its oplog evict it first.
    pub(crate) fn holds(&self, worker: &WorkerId) -> bool {
        self.workers.contains_key(worker)
    }

    /// The workers the tail holds records of.
    pub(crate) fn held(&self) -> Vec<WorkerId> {
        self.workers.keys().cloned().collect()
    }

    /// Records in the tail.
    pub(crate) fn len(&self) -> usize {
        self.order.len()
    }

    /// The entries of an unmoved record of `worker`.
    pub(crate) fn entries(&self, worker: &WorkerId, seq: u64) -> &[(OplogIndex, Vec<u8>)] {
        self.workers
            .get(worker)
            .and_then(|w| w.unmoved.iter().find(|(s, _)| *s == seq))
            .map(|(_, e)| e.as_slice())
            .unwrap_or(&[])
    }

    /// Plans a group: where each request's entries go, which workers' records move, which
    /// records are cleared. `moving` is false for a request committed alone after its group
    /// failed: it only appends.
    pub(crate) fn plan(&self, requests: &[Request<'_>], now_ms: u64, moving: bool) -> Plan {
        let mut plan = Plan::default();
        let mut seq = self.next_seq;
        // Per worker, what this group changed so far: its last entry and where it is, whether
        // it was evicted, and its records appended in this group.
        let mut last: HashMap<&WorkerId, (OplogIndex, Option<u64>)> = HashMap::new();
        let mut evicted: HashMap<&WorkerId, usize> = HashMap::new();
        for (i, r) in requests.iter().enumerate() {
            if r.evict {
                // What this group appended for the worker before goes to its keys directly.
                for (j, earlier) in requests[..i].iter().enumerate() {
                    if earlier.worker == r.worker {
                        let (placed, previous) = &mut plan.requests[j];
                        *placed = Placed::Direct;
                        if let Previous::Known(index, Some(at)) = *previous
                            && at > self.next_seq
                        {
                            *previous = Previous::Known(index, None);
                        }
                    }
                }
                evicted.insert(r.worker, i);
                // Its entries are all at their keys after this (moves go first in the
                // transaction, and what this group appended for it is written there).
                let known = last
                    .get(r.worker)
                    .map(|(index, _)| *index)
                    .or_else(|| self.workers.get(r.worker).map(|w| w.last));
                if let Some(index) = known {
                    last.insert(r.worker, (index, None));
                }
                plan.requests.push((Placed::Direct, Previous::Unknown));
                continue;
            }
            let previous = match last.get(r.worker) {
                Some((index, at)) => Previous::Known(*index, *at),
                None => match self.workers.get(r.worker) {
                    Some(w) if !evicted.contains_key(r.worker) => {
                        Previous::Known(w.last, w.last_in)
                    }
                    _ => Previous::Unknown,
                },
            };
            let size: usize = r.entries.iter().map(|(_, e)| e.len() + 12).sum();
            let placed = if !r.entries.is_empty() && size <= RECORD_BYTES_MAX {
                seq += 1;
                Placed::Tail { seq }
            } else {
                Placed::Direct
            };
            if let Some((_, end)) = r.span {
                let at = match placed {
                    Placed::Tail { seq } if r.entries.last().map(|(i, _)| *i) == Some(end) => {
                        Some(seq)
                    }
                    _ => None,
                };
                last.insert(r.worker, (end, at));
            }
            plan.requests.push((placed, previous));
        }
        // Evicted workers: every record of theirs from before this group moves if it has not,
        // and is cleared.
        let mut moved_now: HashMap<&WorkerId, ()> = HashMap::new();
        for worker in evicted.keys() {
            if let Some(w) = self.workers.get(*worker) {
                if !w.unmoved.is_empty() {
                    plan.moves.push((
                        (*worker).clone(),
                        w.unmoved.iter().map(|(s, _)| *s).collect(),
                    ));
                }
                plan.clears.extend(w.live.iter().copied());
                moved_now.insert(worker, ());
            }
            plan.evicted.push((*worker).clone());
        }
        if moving {
            // Workers with enough records waiting, then those whose oldest waited too long or
            // that hold the oldest records when the tail is full.
            let mut moves = 0;
            let mut bytes = 0;
            for worker in &self.ready {
                if moves >= MOVES_MAX || bytes >= MOVE_BYTES_MAX {
                    break;
                }
                let Some(w) = self.workers.get(worker) else {
                    continue;
                };
                if w.unmoved.len() >= MOVE_RECORDS && !moved_now.contains_key(worker) {
                    bytes += w.bytes;
                    plan.moves
                        .push((worker.clone(), w.unmoved.iter().map(|(s, _)| *s).collect()));
                    moved_now.insert(worker, ());
                    moves += 1;
                }
            }
            let mut aged = 0;
            let full = self.order.len() > RECORDS_MAX || self.bytes > BYTES_MAX;
            for slot in &self.order {
                if aged >= AGED_MOVES_MAX || moves >= MOVES_MAX || bytes >= MOVE_BYTES_MAX {
                    break;
                }
                let old = slot.at_ms.saturating_add(AGE_MAX_MS) <= now_ms;
                if !old && !full {
                    break;
                }
                if slot.moved || moved_now.contains_key(&slot.worker) {
                    continue;
                }
                if let Some(w) = self.workers.get(&slot.worker) {
                    bytes += w.bytes;
                    plan.moves.push((
                        slot.worker.clone(),
                        w.unmoved.iter().map(|(s, _)| *s).collect(),
                    ));
                    moved_now.insert(&slot.worker, ());
                    aged += 1;
                    moves += 1;
                }
            }
            // The oldest records, once moved, are cleared: whole pages of the tail at a time.
            let mut span = 0;
            for (i, slot) in self.order.iter().enumerate() {
                if i >= CLEARS_MAX {
                    break;
                }
                if evicted.contains_key(&slot.worker)
                    || slot.moved
                    || moved_now.contains_key(&slot.worker)
                {
                    span = i + 1;
                } else {
                    break;
                }
            }
            if let (Some(first), Some(last)) = (
                self.order.front(),
                span.checked_sub(1).and_then(|i| self.order.get(i)),
            ) {
                plan.front = Some((first.seq, last.seq));
                plan.front_len = span;
            }
        }
        plan.writes = plan
            .moves
            .iter()
            .map(|(worker, seqs)| {
                let entries = seqs
                    .iter()
                    .flat_map(|seq| self.entries(worker, *seq).iter().cloned())
                    .collect();
                (worker.clone(), entries)
            })
            .collect();
        plan
    }

    /// Records what a durable group did. `entries` gives each tail-placed request's entries
    /// (moved out of the request), in the plan's order.
    pub(crate) fn apply(&mut self, plan: Plan, requests: Vec<Appended>, now_ms: u64) {
        // Workers whose records left: dropped from memory below once none is left.
        let mut touched: Vec<WorkerId> = Vec::new();
        // Moves first: they concern records of earlier groups only.
        for (worker, seqs) in &plan.moves {
            self.ready.remove(worker);
            touched.push(worker.clone());
            if let Some(w) = self.workers.get_mut(worker) {
                w.unmoved.retain(|(s, _)| !seqs.contains(s));
                let left = w.unmoved.iter().map(|(_, e)| entries_bytes(e)).sum();
                self.bytes = self.bytes.saturating_sub(w.bytes.saturating_sub(left));
                w.bytes = left;
            }
            for seq in seqs {
                if let Some(slot) = self.slot_mut(*seq) {
                    slot.moved = true;
                }
            }
        }
        for _ in 0..plan.front_len {
            if let Some(slot) = self.order.pop_front()
                && let Some(w) = self.workers.get_mut(&slot.worker)
            {
                w.live.retain(|s| *s != slot.seq);
                touched.push(slot.worker);
            }
        }
        for seq in &plan.clears {
            if let Ok(i) = self.order.binary_search_by_key(seq, |s| s.seq)
                && let Some(slot) = self.order.remove(i)
                && let Some(w) = self.workers.get_mut(&slot.worker)
            {
                w.live.retain(|s| s != seq);
                touched.push(slot.worker);
            }
        }
        for worker in &plan.evicted {
            self.ready.remove(worker);
            if let Some(w) = self.workers.remove(worker) {
                self.bytes = self.bytes.saturating_sub(w.bytes);
            }
        }
        for ((placed, _), (worker, span, entries)) in plan.requests.into_iter().zip(requests) {
            match placed {
                Placed::Tail { seq } => {
                    self.next_seq = self.next_seq.max(seq);
                    let end = span.map_or(0, |(_, end)| end);
                    let at = (entries.last().map(|(i, _)| *i) == Some(end)).then_some(seq);
                    self.order.push_back(Slot {
                        seq,
                        worker: worker.clone(),
                        at_ms: now_ms,
                        moved: false,
                    });
                    let w = self.workers.entry(worker.clone()).or_insert(Waiting {
                        last: 0,
                        last_in: None,
                        unmoved: Vec::new(),
                        live: Vec::new(),
                        bytes: 0,
                    });
                    let size = entries_bytes(&entries);
                    w.bytes += size;
                    self.bytes += size;
                    w.last = end;
                    w.last_in = at;
                    w.unmoved.push((seq, entries));
                    w.live.push(seq);
                    if w.unmoved.len() >= MOVE_RECORDS {
                        self.ready.insert(worker);
                    }
                }
                Placed::Direct => {
                    if let (Some(w), Some((_, end))) = (self.workers.get_mut(&worker), span) {
                        w.last = end;
                        w.last_in = None;
                    }
                }
            }
        }
        // A worker with nothing left in the tail is read from its keys again.
        for worker in touched {
            if self
                .workers
                .get(&worker)
                .is_some_and(|w| w.live.is_empty() && w.unmoved.is_empty())
            {
                self.workers.remove(&worker);
            }
        }
    }

    fn slot_mut(&mut self, seq: u64) -> Option<&mut Slot> {
        let i = self.order.binary_search_by_key(&seq, |s| s.seq).ok()?;
        self.order.get_mut(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn worker(n: u8) -> WorkerId {
        WorkerId {
            tenant: "t".to_string().try_into().expect("tenant"),
            component: "c".to_string().try_into().expect("component"),
            worker: format!("w{n}").try_into().expect("worker"),
        }
    }

    #[test]
    fn a_record_decodes_to_what_was_encoded_and_nothing_else_decodes() {
        let entries = vec![
            (7, b"seven".to_vec()),
            (8, Vec::new()),
            (9, vec![0xFF; 300]),
        ];
        let bytes = encode_record(&worker(1), &entries);
        assert_eq!(decode_record(&bytes), Some((worker(1), entries)));
        for cut in 0..bytes.len() {
            assert_eq!(decode_record(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode_record(&longer), None);
    }

    /// What one step of a run does.
    #[derive(Debug, Clone)]
    enum Step {
        /// A group of requests: (worker, entries, whether they are too large for a record).
        Group(Vec<(u8, u8, bool)>),
        /// A read of the worker's oplog: its records leave the tail.
        Evict(u8),
        /// A group whose transaction fails.
        Failed(Vec<(u8, u8, bool)>),
        /// Time passes.
        Wait(u64),
        /// The process dies; the next one drains what the tail holds.
        Crash,
        /// The executor idles a whole [`AGE_MAX_MS`]; its committer settles the tail.
        Settle,
    }

    fn step() -> impl Strategy<Value = Step> {
        let request = (0u8..5, 1u8..4, prop::bool::weighted(0.1));
        prop_oneof![
            6 => prop::collection::vec(request.clone(), 1..6).prop_map(Step::Group),
            1 => (0u8..5).prop_map(Step::Evict),
            1 => prop::collection::vec(request, 1..4).prop_map(Step::Failed),
            2 => (0u64..400).prop_map(Step::Wait),
            1 => Just(Step::Crash),
            1 => Just(Step::Settle),
        ]
    }

    /// The store as the committer's transactions leave it: worker keys and tail records.
    #[derive(Default)]
    struct Stored {
        keys: BTreeMap<(u8, OplogIndex), Vec<u8>>,
        records: BTreeMap<(String, u64), Vec<u8>>,
    }

    fn entry(w: u8, index: OplogIndex) -> Vec<u8> {
        format!("{w}:{index}").into_bytes()
    }

    struct Run {
        tail: Tail,
        /// The writer the tail's records are keyed under (another after each crash).
        writer: String,
        stored: Stored,
        /// Each worker's last committed index.
        last: [OplogIndex; 5],
        now: u64,
        runs: u32,
    }

    impl Run {
        /// Commits a group as the committer does: moves, requests in order (their gap checks
        /// must hold), clears; the memory changes only if `fails` is false.
        fn group(&mut self, requests: &[(u8, u8, bool)], evict: Option<u8>, fails: bool) {
            let mut next = self.last;
            let mut made = Vec::new();
            for &(w, n, large) in requests {
                let first = next[w as usize] + 1;
                let last = first + u64::from(n) - 1;
                next[w as usize] = last;
                let entries: Entries = (first..=last)
                    .map(|i| {
                        let mut e = entry(w, i);
                        if large {
                            e.resize(RECORD_BYTES_MAX + 1, b' ');
                        }
                        (i, e)
                    })
                    .collect();
                made.push((worker(w), Some((first, last)), entries, false));
            }
            if let Some(w) = evict {
                made.push((worker(w), None, Vec::new(), true));
            }
            let planned: Vec<Request<'_>> = made
                .iter()
                .map(|(worker, span, entries, evict)| Request {
                    worker,
                    entries,
                    span: *span,
                    evict: *evict,
                })
                .collect();
            let plan = self.tail.plan(&planned, self.now, true);
            assert_eq!(plan.requests.len(), made.len());
            let number = |id: &WorkerId| id.worker.as_str()[1..].parse::<u8>().expect("n");
            let writer = self.writer.clone();
            let mut stored = Stored {
                keys: self.stored.keys.clone(),
                records: self.stored.records.clone(),
            };
            for (id, entries) in &plan.writes {
                for (index, bytes) in entries {
                    stored.keys.insert((number(id), *index), bytes.clone());
                }
            }
            for ((id, span, entries, _), (placed, previous)) in made.iter().zip(&plan.requests) {
                let w = number(id);
                if let Some((first, _)) = span {
                    match previous {
                        Previous::Known(last, at) => {
                            assert_eq!(*first, last + 1, "the known last index");
                            let present = match at {
                                Some(seq) => stored.records.contains_key(&(writer.clone(), *seq)),
                                None => *last == 0 || stored.keys.contains_key(&(w, *last)),
                            };
                            assert!(
                                present,
                                "the previous entry of {w} is where it is said to be"
                            );
                        }
                        Previous::Unknown => {
                            assert!(*first == 1 || stored.keys.contains_key(&(w, first - 1)));
                            assert!(!stored.keys.contains_key(&(w, *first)));
                        }
                    }
                }
                match placed {
                    Placed::Tail { seq } => {
                        stored
                            .records
                            .insert((writer.clone(), *seq), encode_record(id, entries));
                    }
                    Placed::Direct => {
                        for (index, bytes) in entries {
                            stored.keys.insert((w, *index), bytes.clone());
                        }
                    }
                }
            }
            for seq in &plan.clears {
                stored.records.remove(&(writer.clone(), *seq));
            }
            if let Some((first, last)) = plan.front {
                stored
                    .records
                    .retain(|(w, seq), _| *w != writer || *seq < first || *seq > last);
            }
            if fails {
                return;
            }
            self.stored = stored;
            self.last = next;
            let appended = made
                .into_iter()
                .map(|(id, span, entries, _)| (id, span, entries))
                .collect();
            self.tail.apply(plan, appended, self.now);
        }

        /// What the committer of an idle executor does: groups of no request, while they
        /// change anything.
        fn settle(&mut self) {
            self.now += AGE_MAX_MS;
            for _ in 0..1_000 {
                if self.tail.plan(&[], self.now, true).is_empty() {
                    return;
                }
                self.group(&[], None, false);
            }
            panic!("settling never ends");
        }

        fn crash(&mut self) {
            for (_, value) in std::mem::take(&mut self.stored.records) {
                let (id, entries) = decode_record(&value).expect("a record");
                let w = id.worker.as_str()[1..].parse::<u8>().expect("n");
                for (index, bytes) in entries {
                    self.stored.keys.entry((w, index)).or_insert(bytes);
                }
            }
            self.runs += 1;
            self.tail = Tail::new();
            self.writer = format!("writer-{}", self.runs);
        }

        /// Every committed entry is at its key or in a record; a worker the tail does not
        /// hold is whole at its keys.
        fn check(&self) {
            let mut in_records: BTreeMap<(u8, OplogIndex), Vec<u8>> = BTreeMap::new();
            for value in self.stored.records.values() {
                let (id, entries) = decode_record(value).expect("a record");
                let w = id.worker.as_str()[1..].parse::<u8>().expect("n");
                for (index, bytes) in entries {
                    in_records.insert((w, index), bytes);
                }
            }
            for w in 0..5u8 {
                let held = self.tail.holds(&worker(w));
                for index in 1..=self.last[w as usize] {
                    let at_key = self.stored.keys.get(&(w, index));
                    let found = at_key.or_else(|| in_records.get(&(w, index)));
                    let found = found.unwrap_or_else(|| panic!("entry {index} of {w} is lost"));
                    assert!(found.starts_with(&entry(w, index)), "entry {index} of {w}");
                    assert!(held || at_key.is_some(), "{w} is read whole from its keys");
                }
                assert!(
                    self.stored.keys.keys().filter(|(k, _)| *k == w).count()
                        <= self.last[w as usize] as usize,
                    "no entry of {w} past its last"
                );
            }
            assert_eq!(
                self.tail.len(),
                self.stored.records.len(),
                "the memory counts the records stored"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// For random groups, evictions, failures, waits and crashes, nothing committed is lost,
        /// a worker is whole at its keys whenever the tail does not hold it (and after it is
        /// evicted), and after a crash the drain gives every entry back.
        #[test]
        fn committed_entries_are_never_lost_and_reads_see_them_whole(
            steps in prop::collection::vec(step(), 1..120)
        ) {
            let mut run = Run {
                tail: Tail::new(),
                writer: "writer-0".into(),
                stored: Stored::default(),
                last: [0; 5],
                now: 0,
                runs: 0,
            };
            for step in steps {
                match step {
                    Step::Group(requests) => run.group(&requests, None, false),
                    Step::Failed(requests) => run.group(&requests, None, true),
                    Step::Evict(w) => {
                        run.group(&[], Some(w), false);
                        prop_assert!(!run.tail.holds(&worker(w)));
                    }
                    Step::Wait(ms) => run.now += ms,
                    Step::Crash => run.crash(),
                    Step::Settle => {
                        run.settle();
                        prop_assert_eq!(run.tail.len(), 0, "records left after settling");
                        prop_assert!((0..5).all(|w| !run.tail.holds(&worker(w))));
                    }
                }
                run.check();
            }
            run.crash();
            run.check();
        }
    }

    #[test]
    fn a_worker_with_enough_records_moves_and_the_oldest_records_are_cleared() {
        let mut tail = Tail::new();
        let id = worker(1);
        for i in 1..=MOVE_RECORDS as u64 {
            let entries = vec![(i, entry(1, i))];
            let request = Request {
                worker: &id,
                entries: &entries,
                span: Some((i, i)),
                evict: false,
            };
            let plan = tail.plan(&[request], 0, true);
            assert!(
                plan.moves.is_empty(),
                "nothing moves before {MOVE_RECORDS} records"
            );
            tail.apply(plan, vec![(id.clone(), Some((i, i)), entries.clone())], 0);
        }
        let plan = tail.plan(&[], 0, true);
        assert_eq!(plan.moves.len(), 1);
        assert_eq!(plan.moves[0].1.len(), MOVE_RECORDS);
        assert_eq!(
            plan.front,
            Some((1, MOVE_RECORDS as u64)),
            "moved and oldest: cleared at once"
        );
        tail.apply(plan, Vec::new(), 0);
        assert!(!tail.holds(&id));
        assert_eq!(tail.len(), 0);
    }

    #[test]
    fn a_record_waits_at_most_its_age() {
        let mut tail = Tail::new();
        let id = worker(2);
        let entries = vec![(1, entry(2, 1))];
        let request = Request {
            worker: &id,
            entries: &entries,
            span: Some((1, 1)),
            evict: false,
        };
        let plan = tail.plan(&[request], 1_000, true);
        tail.apply(
            plan,
            vec![(id.clone(), Some((1, 1)), entries.clone())],
            1_000,
        );
        assert!(
            tail.plan(&[], 1_000 + AGE_MAX_MS - 1, true)
                .moves
                .is_empty()
        );
        let plan = tail.plan(&[], 1_000 + AGE_MAX_MS, true);
        assert_eq!(plan.moves.len(), 1);
        tail.apply(plan, Vec::new(), 1_000 + AGE_MAX_MS);
        assert!(!tail.holds(&id));
    }
}
