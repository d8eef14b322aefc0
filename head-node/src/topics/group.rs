//! A consumer group of a topic: its followers share the topic's messages (each message to
//! one of them) and acknowledge what they processed. Delivery is at least once: a message
//! whose follower leaves before acknowledging it goes to another member; the group resumes
//! after a restart at its committed offset (every message before it acknowledged), so
//! acknowledged messages are never delivered to the group again.

use std::collections::{BTreeSet, HashMap};

/// Messages a member may hold unacknowledged; past it, it gets no more until it
/// acknowledges some (so a member that stalls does not take the whole topic).
pub const MAX_UNACKED: usize = 1000;

/// A member of a group (one follower's stream).
pub type MemberId = u64;

#[derive(Debug)]
pub struct Group {
    /// Every message before it is acknowledged; stored.
    committed: u64,
    /// The next offset never handed to a member.
    cursor: u64,
    /// Acknowledged offsets past `committed`.
    acked: BTreeSet<u64>,
    /// Offsets handed to a member and not acknowledged -> that member.
    in_flight: HashMap<u64, MemberId>,
    /// Offsets whose member left before acknowledging them: handed out again first.
    again: BTreeSet<u64>,
    /// The members and how many messages each holds unacknowledged.
    members: HashMap<MemberId, usize>,
}

impl Group {
    /// A group that resumes at `committed`.
    pub fn new(committed: u64) -> Self {
        Self {
            committed,
            cursor: committed,
            acked: BTreeSet::new(),
            in_flight: HashMap::new(),
            again: BTreeSet::new(),
            members: HashMap::new(),
        }
    }

    pub fn committed(&self) -> u64 {
        self.committed
    }

    pub fn join(&mut self, member: MemberId) {
        self.members.insert(member, 0);
    }

    /// The next offsets for `member` (at most `max`): those handed out again first, then
    /// new ones below `visible` (the stored end of the log); none below `first` (retention
    /// let them go).
    pub fn take(&mut self, member: MemberId, first: u64, visible: u64, max: usize) -> Vec<u64> {
        let Some(held) = self.members.get(&member).copied() else { return Vec::new() };
        let room = MAX_UNACKED.saturating_sub(held).min(max);
        let mut offsets = Vec::new();
        while offsets.len() < room {
            let Some(offset) = self.again.pop_first() else { break };
            if offset >= first {
                offsets.push(offset);
            }
        }
        self.cursor = self.cursor.max(first);
        while offsets.len() < room && self.cursor < visible {
            // Acknowledged already: by a member that had it before the head restarted.
            if !self.acked.contains(&self.cursor) {
                offsets.push(self.cursor);
            }
            self.cursor += 1;
        }
        for &offset in &offsets {
            self.in_flight.insert(offset, member);
        }
        if let Some(held) = self.members.get_mut(&member) {
            *held += offsets.len();
        }
        offsets
    }

    /// Lets `member` go; its unacknowledged messages are handed out again. Whether there
    /// are any (other members may take them now).
    pub fn leave(&mut self, member: MemberId) -> bool {
        self.members.remove(&member);
        let orphaned: Vec<u64> =
            self.in_flight.iter().filter(|(_, m)| **m == member).map(|(o, _)| *o).collect();
        for offset in &orphaned {
            self.in_flight.remove(offset);
            self.again.insert(*offset);
        }
        !orphaned.is_empty()
    }

    /// Acknowledges `offsets`; moves the committed offset on over every acknowledged one
    /// (and over what retention let go, before `first`). Whether it moved; an error for an
    /// offset past the topic's stored end (`end`). An offset the group has not handed out
    /// since the head started may be acknowledged: a member may have had it before a
    /// restart; it is then not handed out again.
    pub fn ack(&mut self, offsets: &[u64], first: u64, end: u64) -> Result<bool, String> {
        if let Some(offset) = offsets.iter().find(|o| **o >= end) {
            return Err(format!(
                "offset {offset} was not delivered: the topic's messages end before {end}"
            ));
        }
        for &offset in offsets {
            // Whoever held it holds it no more, even if retention moved the group past it.
            if let Some(member) = self.in_flight.remove(&offset)
                && let Some(held) = self.members.get_mut(&member)
            {
                *held = held.saturating_sub(1);
            }
            self.again.remove(&offset);
            if offset >= self.committed {
                self.acked.insert(offset);
            }
        }
        let before = self.committed;
        if self.committed < first {
            self.committed = first;
            self.cursor = self.cursor.max(first);
            self.acked = self.acked.split_off(&self.committed);
        }
        while self.acked.first() == Some(&self.committed) {
            self.acked.pop_first();
            self.committed += 1;
        }
        self.cursor = self.cursor.max(self.committed);
        Ok(self.committed != before)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_message_goes_to_one_member_and_unacknowledged_ones_go_again() {
        let mut group = Group::new(0);
        group.join(1);
        group.join(2);
        assert_eq!(group.take(1, 0, 6, 3), [0, 1, 2]);
        assert_eq!(group.take(2, 0, 6, 10), [3, 4, 5]);
        assert_eq!(group.take(2, 0, 6, 10), Vec::<u64>::new(), "nothing new");
        assert_eq!(group.ack(&[0, 2], 0, 6), Ok(true));
        assert_eq!(group.committed(), 1, "1 is not acknowledged");
        // Member 1 leaves holding 1: member 2 gets it, once.
        assert!(group.leave(1));
        assert_eq!(group.take(2, 0, 6, 10), [1]);
        assert_eq!(group.take(2, 0, 6, 10), Vec::<u64>::new());
        assert_eq!(group.ack(&[1, 3, 4, 5], 0, 6), Ok(true));
        assert_eq!(group.committed(), 6);
        assert_eq!(group.ack(&[5], 0, 6), Ok(false), "a retried ack changes nothing");
        assert!(group.ack(&[9], 0, 6).is_err(), "an offset past the end");
    }

    #[test]
    fn a_member_holds_at_most_max_unacked_and_retention_moves_the_group_on() {
        let mut group = Group::new(0);
        group.join(1);
        let offsets = group.take(1, 0, 5000, usize::MAX);
        assert_eq!(offsets.len(), MAX_UNACKED);
        assert!(group.take(1, 0, 5000, usize::MAX).is_empty(), "past the bound");
        group.ack(&[0], 0, 5000).expect("ack");
        assert_eq!(group.take(1, 0, 5000, usize::MAX), [MAX_UNACKED as u64]);
        // Retention let everything before 3000 go: the group resumes there.
        group.leave(1);
        group.join(2);
        assert_eq!(group.take(2, 3000, 3002, 10), [3000, 3001]);
        assert_eq!(group.ack(&[3000], 3000, 3002), Ok(true));
        assert_eq!(group.committed(), 3001);
    }

    #[test]
    fn a_member_s_acks_below_a_retention_jump_still_free_its_room() {
        let mut group = Group::new(0);
        group.join(1);
        assert_eq!(group.take(1, 0, 5000, usize::MAX).len(), MAX_UNACKED);
        // Retention lets everything before 1500 go; another ack moves the group there.
        assert_eq!(group.ack(&[], 1500, 5000), Ok(true));
        assert_eq!(group.committed(), 1500);
        let held: Vec<u64> = (0..MAX_UNACKED as u64).collect();
        assert_eq!(group.ack(&held, 1500, 5000), Ok(false));
        assert_eq!(group.take(1, 1500, 5000, 2), [1500, 1501], "room again");
    }

    #[test]
    fn after_a_restart_a_member_acks_what_it_had_and_it_is_not_handed_out_again() {
        // Restored at 10; a member acknowledges 12, which it had before the restart.
        let mut group = Group::new(10);
        group.join(1);
        assert_eq!(group.ack(&[12], 0, 20), Ok(false));
        assert_eq!(group.take(1, 0, 20, 4), [10, 11, 13, 14]);
        assert_eq!(group.ack(&[10, 11], 0, 20), Ok(true));
        assert_eq!(group.committed(), 13, "12 was acknowledged before");
    }
}
