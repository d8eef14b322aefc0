//! The PostgreSQL store on a server of the test's own: what is written loads back, the
//! lease passes to another head only once it expires, and the head that lost it can
//! neither renew it nor write.

use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use fleet_head::store::postgres::lease::{Acquired, Lease};
use fleet_head::store::postgres::{Fence, PostgresStore, parse};
use fleet_head::store::{Batch, Fsync, Store};
use fleet_testkit::postgres::PostgresServer;
use tokio_util::sync::CancellationToken;

const TTL: Duration = Duration::from_millis(600);

fn batch(number: u64) -> Batch {
    Batch {
        tasks: vec![(number, format!("task {number}").into_bytes())],
        events: vec![((number, 1), b"events 1..".to_vec()), ((number, 3), b"events 3..".to_vec())],
        agents: vec![("echo".into(), format!("spec {number}").into_bytes())],
        workers: vec![("w1".into(), (u64::MAX - 1, number))],
        conversations: vec![(format!("c{number}"), Some(format!("turns {number}").into_bytes()))],
        actors: vec![(format!("a{number}"), Some(format!("state {number}").into_bytes()))],
        // Two messages a write on one topic; the group's place moves on.
        topic_messages: vec![
            (("news".into(), 2 * number - 2), format!("m{}", 2 * number - 2).into_bytes()),
            (("news".into(), 2 * number - 1), format!("m{}", 2 * number - 1).into_bytes()),
        ],
        topic_groups: vec![(("news".into(), "g".into()), number)],
        ..Default::default()
    }
}

#[test]
fn the_lease_and_the_writes_follow_one_leader_at_a_time() -> Result<()> {
    let pg = PostgresServer::start()?;
    let config = parse(&pg.url)?;
    let a = Lease::open(&config, "http://a", TTL)?;
    let b = Lease::open(&config, "http://b", TTL)?;
    let Acquired::Leader(first) = a.try_acquire().map_err(anyhow::Error::msg)? else {
        bail!("a free lease was not taken");
    };
    let lost_a = CancellationToken::new();
    let mut store_a = PostgresStore::open(
        &config,
        Fence { epoch: first, lost: lost_a.clone() },
        TTL,
        Fsync::Periodic,
    )?;
    store_a.write(&batch(1))?;
    // The second write deletes the first's conversation and actor state.
    let mut second_write = Batch { removed: vec![1], ..batch(2) };
    second_write.conversations.push(("c1".into(), None));
    second_write.actors.push(("a1".into(), None));
    // And retention lets the topic's first three messages go (m0, m1 written before, m2 in
    // this write).
    second_write.topic_trims.push(("news".into(), 3));
    second_write.topic_messages.retain(|((_, offset), _)| *offset >= 3);
    store_a.write(&second_write)?;

    // A holds it: B stands by and is told who leads.
    match b.try_acquire().map_err(anyhow::Error::msg)? {
        Acquired::Standby { leader, .. } => ensure!(leader == "http://a"),
        other => bail!("took a held lease: {other:?}"),
    }
    ensure!(a.renew(first).map_err(anyhow::Error::msg)?, "the holder could not renew");

    // A stops renewing: B takes over once the lease expires, not before.
    let stopped = Instant::now();
    let second = loop {
        if let Acquired::Leader(epoch) = b.try_acquire().map_err(anyhow::Error::msg)? {
            break epoch;
        }
        ensure!(stopped.elapsed() < Duration::from_secs(10), "the lease never expired");
        std::thread::sleep(Duration::from_millis(20));
    };
    ensure!(stopped.elapsed() >= TTL / 2, "taken {:?} after the last renewal", stopped.elapsed());
    ensure!(second == first + 1, "epochs {first} then {second}");
    ensure!(!a.renew(first).map_err(anyhow::Error::msg)?, "the old holder renewed a lost lease");

    // A's writes are refused and say so; nothing of them is stored.
    let refused = store_a.write(&batch(3));
    ensure!(matches!(&refused, Err(e) if e.fenced), "{refused:?}");
    ensure!(lost_a.is_cancelled(), "the refused head was not told");

    let mut store_b = PostgresStore::open(
        &config,
        Fence { epoch: second, lost: CancellationToken::new() },
        TTL,
        Fsync::Always,
    )?;
    let loaded = store_b.load()?;
    ensure!(loaded.tasks == vec![(2, b"task 2".to_vec())], "tasks {:?}", loaded.tasks);
    let event_keys: Vec<(u64, u64)> = loaded.events.iter().map(|(k, _)| *k).collect();
    ensure!(event_keys == [(2, 1), (2, 3)], "events {event_keys:?}");
    ensure!(loaded.agents == vec![b"spec 2".to_vec()], "agents {:?}", loaded.agents);
    ensure!(loaded.workers == vec![("w1".to_owned(), (u64::MAX - 1, 2))]);
    ensure!(loaded.conversations == vec![b"turns 2".to_vec()], "{:?}", loaded.conversations);
    ensure!(loaded.actors == vec![b"state 2".to_vec()], "actors {:?}", loaded.actors);
    let messages: Vec<(u64, Vec<u8>)> =
        loaded.topic_messages.iter().map(|((_, o), m)| (*o, m.clone())).collect();
    ensure!(messages == [(3, b"m3".to_vec())], "topic messages {messages:?}");
    ensure!(loaded.topic_trims == [("news".to_owned(), 3)], "trims {:?}", loaded.topic_trims);
    let groups = &loaded.topic_groups;
    ensure!(*groups == [(("news".to_owned(), "g".to_owned()), 2)], "groups {groups:?}");
    store_b.write(&batch(4))?;
    b.release(second).map_err(anyhow::Error::msg)?;
    ensure!(matches!(a.try_acquire(), Ok(Acquired::Leader(e)) if e == second + 1));
    Ok(())
}
