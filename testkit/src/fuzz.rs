//! Inputs for the fuzz targets (proptest strategies, stable Rust): structure-aware JSON whose
//! keys come from the protocol's vocabulary, and byte strings mutated from valid seeds (a
//! valid file or message with a few bytes flipped, cut, repeated or set to extreme values),
//! which reach far deeper into binary parsers than random bytes do.
//!
//! `FLEET_FUZZ_CASES` sets the cases per target: 10,000 by default (CI); the long run in
//! BENCHMARKS.md uses 1,000,000.

use std::collections::HashSet;
use std::sync::{Mutex, Once, PoisonError};

use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::Value;

/// Cases per target.
pub fn cases() -> u32 {
    std::env::var("FLEET_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000)
}

/// A proptest config running [`cases`] cases, with no failure files written into the tree.
///
/// It also makes panics print once per place in the code (see [`print_each_panic_once`]).
pub fn config() -> Config {
    print_each_panic_once();
    Config {
        cases: cases(),
        failure_persistence: None,
        max_shrink_iters: 2_000,
        ..Config::default()
    }
}

/// Prints a panic's message and backtrace the first time a place in the code panics, and
/// nothing for later panics there.
///
/// Parsers of outside input that call libraries which may panic run them under a guard
/// (`catch_unwind`), so a fuzz run goes through many caught panics, and the default hook
/// prints each one. libtest keeps a test's output in memory until the test ends: over a
/// million cases that output alone grew a run to 700 MiB, which read as a leak. A panic
/// that fails a case still fails it: proptest reports its message with the minimal input.
pub fn print_each_panic_once() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let print = std::panic::take_hook();
        let seen = Mutex::new(HashSet::new());
        std::panic::set_hook(Box::new(move |info| {
            let place = info.location().map(ToString::to_string).unwrap_or_default();
            let first = seen.lock().unwrap_or_else(PoisonError::into_inner).insert(place);
            if first {
                print(info);
            }
        }));
    });
}

/// Short strings, with the protocol's words among them (they are also valid enum values).
fn word(keys: &'static [&'static str]) -> BoxedStrategy<String> {
    prop_oneof![
        3 => proptest::sample::select(keys).prop_map(str::to_owned),
        2 => "[a-zA-Z0-9 _:/.-]{0,12}",
        1 => any::<String>(),
    ]
    .boxed()
}

/// JSON values up to 4 levels deep whose object keys are mostly from `keys`.
pub fn json(keys: &'static [&'static str]) -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        prop_oneof![Just(0u64), Just(u64::MAX), Just(1 << 32), any::<u64>()].prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        word(keys).prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 96, 8, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec((word(keys), inner), 0..8)
                .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
    .boxed()
}

/// One change to a byte string.
#[derive(Clone, Debug)]
enum Mutation {
    Set {
        at: usize,
        byte: u8,
    },
    /// Eight bytes set to an extreme little-endian value (lengths, counts, offsets).
    Extreme {
        at: usize,
        value: u64,
    },
    Insert {
        at: usize,
        bytes: Vec<u8>,
    },
    Remove {
        at: usize,
        len: usize,
    },
    Repeat {
        at: usize,
        len: usize,
    },
    Truncate {
        at: usize,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let extreme = prop_oneof![
        Just(0u64),
        Just(u64::MAX),
        Just(u64::from(u32::MAX)),
        Just(1 << 31),
        Just(1 << 40),
        any::<u64>()
    ];
    prop_oneof![
        4 => (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set { at, byte }),
        2 => (any::<usize>(), extreme).prop_map(|(at, value)| Mutation::Extreme { at, value }),
        1 => (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        1 => (any::<usize>(), 1..64usize).prop_map(|(at, len)| Mutation::Remove { at, len }),
        1 => (any::<usize>(), 1..64usize).prop_map(|(at, len)| Mutation::Repeat { at, len }),
        1 => any::<usize>().prop_map(|at| Mutation::Truncate { at }),
    ]
}

fn apply(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let n = bytes.len().max(1);
        match m {
            Mutation::Set { at, byte } => {
                if let Some(b) = bytes.get_mut(at % n) {
                    *b = *byte;
                }
            }
            Mutation::Extreme { at, value } => {
                let at = at % n;
                for (i, b) in value.to_le_bytes().iter().enumerate() {
                    if let Some(slot) = bytes.get_mut(at + i) {
                        *slot = *b;
                    }
                }
            }
            Mutation::Insert { at, bytes: new } => {
                let at = at % (bytes.len() + 1);
                bytes.splice(at..at, new.iter().copied());
            }
            Mutation::Remove { at, len } => {
                let at = at % n;
                let end = (at + len).min(bytes.len());
                if at < end {
                    bytes.drain(at..end);
                }
            }
            Mutation::Repeat { at, len } => {
                let at = at % n;
                let end = (at + len).min(bytes.len());
                if at < end {
                    let copy = bytes[at..end].to_vec();
                    bytes.splice(end..end, copy);
                }
            }
            Mutation::Truncate { at } => bytes.truncate(at % n),
        }
    }
    bytes
}

/// One of `seeds` with one to eight mutations (or, now and then, none).
pub fn mutated(seeds: Vec<Vec<u8>>) -> BoxedStrategy<Vec<u8>> {
    let count = seeds.len().max(1);
    (0..count, proptest::collection::vec(mutation(), 0..8))
        .prop_map(move |(i, mutations)| {
            apply(seeds.get(i).cloned().unwrap_or_default(), &mutations)
        })
        .boxed()
}

/// One of `seeds` (valid requests) with up to three of its values replaced by random JSON
/// or removed: near-valid requests, which get past the first checks to the deeper ones.
pub fn json_mutated(seeds: Vec<Value>, keys: &'static [&'static str]) -> BoxedStrategy<Value> {
    let count = seeds.len().max(1);
    let edit = (any::<usize>(), json(keys), any::<bool>());
    (0..count, proptest::collection::vec(edit, 0..4))
        .prop_map(move |(i, edits)| {
            let mut value = seeds.get(i).cloned().unwrap_or(Value::Null);
            for (at, new, remove) in edits {
                let mut pointers = Vec::new();
                collect_pointers(&value, String::new(), &mut pointers);
                let pointer = &pointers[at % pointers.len()];
                match pointer.rsplit_once('/') {
                    Some((parent, last)) if remove => remove_child(&mut value, parent, last),
                    _ => {
                        if let Some(node) = value.pointer_mut(pointer) {
                            *node = new;
                        }
                    }
                }
            }
            value
        })
        .boxed()
}

/// The JSON pointer (RFC 6901) of every node, the root's ("") first.
fn collect_pointers(value: &Value, at: String, out: &mut Vec<String>) {
    out.push(at.clone());
    match value {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                collect_pointers(item, format!("{at}/{i}"), out);
            }
        }
        Value::Object(fields) => {
            for (key, item) in fields {
                let key = key.replace('~', "~0").replace('/', "~1");
                collect_pointers(item, format!("{at}/{key}"), out);
            }
        }
        _ => {}
    }
}

fn remove_child(value: &mut Value, parent: &str, last: &str) {
    match value.pointer_mut(parent) {
        Some(Value::Object(fields)) => {
            fields.remove(&last.replace("~1", "/").replace("~0", "~"));
        }
        Some(Value::Array(items)) => {
            if let Ok(i) = last.parse::<usize>()
                && i < items.len()
            {
                items.remove(i);
            }
        }
        _ => {}
    }
}
