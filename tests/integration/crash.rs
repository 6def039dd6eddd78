//! Crash safety of `htg serve`: SIGKILL at random moments while clients add and delete
//! images concurrently, 20 rounds. After each restart, every acknowledged add is present and
//! every acknowledged delete is absent; what was in flight may go either way. Also: a torn log
//! tail is dropped and a corrupt middle entry refused, through the real binary.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::http::{indexed_fixtures, multipart, Server};
use crate::util::{htg, s, stderr};

/// A seeded xorshift, so a failing round can be replayed.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn sigkill_during_concurrent_writes_loses_nothing_acknowledged() {
    let (_tmp, images, idx) = indexed_fixtures();
    let png = std::fs::read(images.join("1f600-google.png")).unwrap();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    // Ids acknowledged as added and not deleted, and ids acknowledged as deleted.
    let mut live: BTreeSet<u64> = BTreeSet::new();
    let mut deleted: BTreeSet<u64> = BTreeSet::new();
    let mut acked_total = 0usize;
    for round in 0..20 {
        let srv = Server::start(&idx, &[]);
        // Check the previous rounds' acknowledgements against what the restart recovered.
        for id in &live {
            let r = srv.get(&format!("/images/{id}/similar?k=1"));
            assert_eq!(r.status, 200, "round {round}: acknowledged add {id} lost");
        }
        for id in &deleted {
            let r = srv.get(&format!("/images/{id}/similar?k=1"));
            assert_eq!(
                r.status, 404,
                "round {round}: acknowledged delete {id} came back"
            );
        }
        let added = Arc::new(Mutex::new(Vec::<u64>::new()));
        // (id, acknowledged): an unacknowledged delete may or may not have happened.
        let removed = Arc::new(Mutex::new(Vec::<(u64, bool)>::new()));
        let victims: Vec<u64> = live.iter().copied().take(6).collect();
        let stop = Instant::now() + Duration::from_millis(50 + next(&mut rng) % 400);
        std::thread::scope(|sc| {
            for t in 0..3 {
                let (added, png, addr) = (Arc::clone(&added), &png, srv.addr.clone());
                sc.spawn(move || {
                    for i in 0.. {
                        let label = format!("r{round}-t{t}-{i}");
                        let (ct, form) =
                            multipart(&[("image", None, png), ("label", None, label.as_bytes())]);
                        let r = crate::http::try_request(
                            &addr,
                            "POST",
                            "/images",
                            &[("Content-Type", &ct)],
                            &form,
                        );
                        // No whole 201: the server is gone and the add was not acknowledged.
                        let Some(r) = r.filter(|r| r.status == 201) else {
                            break;
                        };
                        let id = r.json()["added"][0]["id"].as_u64().unwrap();
                        added.lock().unwrap().push(id);
                    }
                });
            }
            let (removed, addr) = (Arc::clone(&removed), srv.addr.clone());
            let victims = victims.clone();
            sc.spawn(move || {
                for id in victims {
                    let path = format!("/images/{id}");
                    let r = crate::http::try_request(&addr, "DELETE", &path, &[], b"");
                    let acked = r.is_some_and(|r| r.status == 200);
                    removed.lock().unwrap().push((id, acked));
                    if !acked {
                        break;
                    }
                }
            });
            std::thread::sleep(stop.saturating_duration_since(Instant::now()));
            drop(srv); // SIGKILL, mid-write
        });
        let added = added.lock().unwrap().clone();
        let removed = removed.lock().unwrap().clone();
        acked_total += added.len() + removed.iter().filter(|r| r.1).count();
        live.extend(added);
        for (id, acked) in removed {
            live.remove(&id);
            if acked {
                deleted.insert(id);
            }
        }
    }
    eprintln!(
        "crash rounds: 20 SIGKILLs, {acked_total} acknowledged writes checked, {} live adds, {} deletes",
        live.len(),
        deleted.len()
    );
    assert!(
        acked_total > 20,
        "the load acknowledged too few writes to mean anything"
    );
}

/// Newest log segment of an index.
fn newest_segment(idx: &std::path::Path) -> std::path::PathBuf {
    let mut segs: Vec<_> = std::fs::read_dir(idx)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("wal-"))
        .filter(|p| std::fs::metadata(p).unwrap().len() > 0)
        .collect();
    segs.sort();
    segs.pop().expect("a non-empty log segment")
}

#[test]
fn a_torn_log_tail_is_dropped_and_a_corrupt_middle_is_refused() {
    let (_tmp, images, idx) = indexed_fixtures();
    let png = std::fs::read(images.join("1f600-google.png")).unwrap();
    let srv = Server::start(&idx, &[]);
    for label in ["a", "b", "c"] {
        let (ct, form) = multipart(&[("image", None, &png), ("label", None, label.as_bytes())]);
        assert_eq!(srv.post("/images", &ct, &form).status, 201);
    }
    drop(srv);
    let seg = newest_segment(&idx);
    let bytes = std::fs::read(&seg).unwrap();
    // A torn tail: the last entry cut short, as a crash mid-append leaves it.
    std::fs::write(&seg, &bytes[..bytes.len() - 5]).unwrap();
    let out = htg(&[
        "search",
        "--index",
        s(&idx),
        s(&images.join("1f600-google.png")),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let srv = Server::start(&idx, &[]);
    assert_eq!(
        srv.get("/stats").json()["count"],
        24 + 2,
        "two whole entries survive"
    );
    drop(srv);
    // A flipped byte inside the first entry, with entries after it: refused, never skipped.
    let seg = newest_segment(&idx);
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[12] ^= 0x55;
    std::fs::write(&seg, &bytes).unwrap();
    let out = htg(&[
        "search",
        "--index",
        s(&idx),
        s(&images.join("1f600-google.png")),
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("corrupt"), "{err}");
}
