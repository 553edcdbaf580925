//! WAL tests: round trip, crash at every I/O of a long append sequence on the simulated disk,
//! torn sectors, corruption, rotation/release/truncation, group commit order, sticky errors,
//! and a round trip on a real directory through glommio's DmaFile.
//!
//! A failing crash case prints its workload, crash point and seed; rerun one with
//! `WAL_WORKLOAD=<w> WAL_CRASH_POINT=<n> cargo test --release --test wal crash_at_every_point_of_a_long`.

use glommio::{LocalExecutorBuilder, Placement};
use ringd::io::glommio_storage::GlommioStorage;
use ringd::raft::pb::{Entry, HardState};
use ringd::testing::sim_disk::{SimDisk, SimDiskConfig, SplitMix64};
use ringd::wal::{self, OpenError, ReadError, Recovered, SnapshotMarker, Wal, WalConfig, WriteError};
use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;

const SMALL_SEGMENT_BYTES: u64 = 16 * 1024;

fn run<T>(future: impl Future<Output = T>) -> T {
    LocalExecutorBuilder::new(Placement::Unbound).io_memory(256 * 1024).make().expect("glommio executor").run(future)
}

fn entry(index: u64, term: u64, data_len: usize) -> Entry {
    let data = (0..data_len).map(|i| (index as usize * 31 + term as usize * 7 + i) as u8).collect();
    Entry { term, index, entry_type: 0, data }
}

fn hard_state(term: u64, commit: u64) -> HardState {
    HardState { term, vote: 2, commit }
}

async fn open_wal<S: ringd::io::Storage + 'static>(
    storage: S,
    segment_size_bytes: u64,
) -> Result<(Rc<Wal<S>>, Recovered), OpenError> {
    let opened = Wal::open(storage, WalConfig { segment_size_bytes }).await?;
    glommio::spawn_local(opened.driver).detach();
    Ok((Rc::new(opened.wal), opened.recovered))
}

async fn open_sim(disk: &SimDisk) -> (Rc<Wal<SimDisk>>, Recovered) {
    open_wal(disk.clone(), SMALL_SEGMENT_BYTES).await.expect("open")
}

async fn close(wal: Rc<Wal<SimDisk>>) {
    Rc::try_unwrap(wal).ok().expect("sole owner").close().await.expect("close");
}

fn indexes(entries: &[Entry]) -> Vec<u64> {
    entries.iter().map(|entry| entry.index).collect()
}

#[test]
fn round_trip() {
    run(async {
        let disk = SimDisk::new(SimDiskConfig::new(1));
        let (wal, recovered) = open_sim(&disk).await;
        assert!(recovered.entries.is_empty() && recovered.hard_state.is_none());
        let mut expected = Vec::new();
        for batch in 0..20u64 {
            let entries: Vec<Entry> =
                (0..5).map(|i| entry(batch * 5 + i + 1, 1 + batch / 4, 100 + i as usize * 50)).collect();
            expected.extend(entries.iter().cloned());
            wal.append(&entries, Some(hard_state(1 + batch / 4, batch * 5))).await.expect("append");
        }
        assert_eq!(wal.read_entries(3, 60).await.expect("read"), expected[2..59].to_vec());
        assert_eq!(wal.term(100), Some(5));
        close(wal).await;

        let report = wal::check(&disk).await.expect("check");
        assert_eq!(report.entry_count, 100);
        assert!(report.segment_count > 1, "16 KiB segments rotated");
        let (wal, recovered) = open_sim(&disk).await;
        assert_eq!(recovered.entries, expected);
        assert_eq!(recovered.hard_state, Some(hard_state(5, 95)));
        assert_eq!(recovered.repaired_tail, None);
        assert_eq!(wal.read_entries(1, 101).await.expect("read after reopen"), expected);
        wal.append(&[entry(101, 5, 10)], None).await.expect("append after reopen");
        close(wal).await;
        let (_, recovered) = open_sim(&disk).await;
        assert_eq!(recovered.entries.len(), 101);
    });
}

/// One step of the crash workload.
#[derive(Clone, Debug)]
enum Step {
    Append { entries: Vec<Entry>, hard_state: Option<HardState> },
    Truncate { index: u64 },
    Snapshot { marker: SnapshotMarker, release: bool },
    Pause,
}

/// The records a step writes, in order, for the model.
#[derive(Clone, Debug)]
enum ModelRecord {
    Entry(Entry),
    HardState(HardState),
    Snapshot(u64),
}

fn plan_workload(seed: u64, step_count: usize) -> Vec<Step> {
    let mut rng = SplitMix64::new(seed);
    let mut steps = Vec::new();
    let (mut last, mut term, mut snapshot) = (0u64, 1u64, 0u64);
    for _ in 0..step_count {
        match rng.below(20) {
            0 | 1 if last > snapshot + 1 => {
                let index = last - rng.below((last - snapshot - 1).min(4));
                term += 1;
                steps.push(Step::Truncate { index });
                last = index - 1;
            }
            2 if last > snapshot + 3 => {
                snapshot = last - 2;
                let marker = SnapshotMarker { index: snapshot, term, conf_state: None, replaces_log: false };
                steps.push(Step::Snapshot { marker, release: rng.coin() });
            }
            3 | 4 => steps.push(Step::Pause),
            _ => {
                let count = 1 + rng.below(4);
                let entries = (0..count).map(|i| entry(last + 1 + i, term, 8 + rng.below(1500) as usize)).collect();
                last += count;
                let hard_state = rng.coin().then(|| hard_state(term, last.saturating_sub(2)));
                steps.push(Step::Append { entries, hard_state });
            }
        }
    }
    steps
}

fn model_records(steps: &[Step]) -> (Vec<ModelRecord>, Vec<usize>) {
    let mut records = Vec::new();
    let mut records_after_step = Vec::new();
    for step in steps {
        match step {
            Step::Append { entries, hard_state } => {
                records.extend(entries.iter().cloned().map(ModelRecord::Entry));
                records.extend(hard_state.iter().copied().map(ModelRecord::HardState));
            }
            Step::Snapshot { marker, .. } => records.push(ModelRecord::Snapshot(marker.index)),
            Step::Truncate { .. } | Step::Pause => {}
        }
        records_after_step.push(records.len());
    }
    (records, records_after_step)
}

/// The state recovery must return after the first `count` records: entries after the last
/// snapshot, the last hard state, the snapshot index.
fn model_state(records: &[ModelRecord], count: usize) -> (Vec<Entry>, Option<HardState>, u64) {
    let mut log: Vec<Entry> = Vec::new();
    let (mut hard_state, mut snapshot) = (None, 0);
    for record in &records[..count] {
        match record {
            ModelRecord::Entry(entry) => {
                log.retain(|kept| kept.index < entry.index);
                log.push(entry.clone());
            }
            ModelRecord::HardState(state) => hard_state = Some(*state),
            ModelRecord::Snapshot(index) => snapshot = *index,
        }
    }
    log.retain(|kept| kept.index > snapshot);
    (log, hard_state, snapshot)
}

/// Runs the workload, appending without waiting so that writes group; returns how many steps
/// were acknowledged (all steps before that one are durable).
async fn run_workload(wal: &Rc<Wal<SimDisk>>, steps: &[Step]) -> usize {
    let acknowledged = Rc::new(RefCell::new(0usize));
    let mut tasks = Vec::new();
    for (step_index, step) in steps.iter().enumerate() {
        let durable = match step {
            Step::Append { entries, hard_state } => wal.append(entries, *hard_state),
            Step::Truncate { index } => match wal.truncate_suffix(*index) {
                Ok(()) => wal.sync(),
                Err(_) => break,
            },
            Step::Snapshot { marker, release } => {
                let durable = wal.save_snapshot_marker(marker.clone());
                if *release && wal.release_below(marker.index + 1).await.is_err() {
                    break;
                }
                durable
            }
            Step::Pause => {
                futures_lite::future::yield_now().await;
                continue;
            }
        };
        let acknowledged = acknowledged.clone();
        tasks.push(glommio::spawn_local(async move {
            if durable.await.is_ok() {
                let mut acknowledged = acknowledged.borrow_mut();
                *acknowledged = (*acknowledged).max(step_index + 1);
            }
        }));
        if wal.error().is_some() {
            break;
        }
    }
    for task in tasks {
        task.await;
    }
    let count = *acknowledged.borrow();
    count
}

/// After a crash: recovery returns the state after some prefix of the records that includes
/// everything acknowledged, `check` passes, and the WAL takes new appends. Returns whether a
/// torn tail was repaired and whether unacknowledged records survived.
async fn verify_recovery(
    disk: &SimDisk,
    records: &[ModelRecord],
    acknowledged_records: usize,
    context: &str,
) -> (bool, bool) {
    disk.restart();
    let (wal, recovered) = match open_wal(disk.clone(), SMALL_SEGMENT_BYTES).await {
        Ok(opened) => opened,
        Err(error) => panic!("{context}: open after crash failed: {error}"),
    };
    let matching = (acknowledged_records..=records.len()).find(|count| {
        let (entries, hard_state, _) = model_state(records, *count);
        entries == recovered.entries && hard_state == recovered.hard_state
    });
    let Some(count) = matching else {
        let (expected, _, _) = model_state(records, acknowledged_records);
        panic!(
            "{context}: recovered {:?} / {:?} is no prefix including the {acknowledged_records} acknowledged records (expected at least {:?})",
            indexes(&recovered.entries),
            recovered.hard_state,
            indexes(&expected)
        );
    };
    let next = wal.last_index() + 1;
    wal.append(&[entry(next, 99, 20)], Some(hard_state(99, next))).await.expect("append after recovery");
    close(wal).await;
    let report = wal::check(disk).await.unwrap_or_else(|error| panic!("{context}: check failed: {error}"));
    assert_eq!(report.last_index, Some(next), "{context}: the new append is there");
    (recovered.repaired_tail.is_some(), count > acknowledged_records)
}

#[derive(Default, Debug)]
struct CrashSummary {
    cases: usize,
    repaired_tails: usize,
    unacknowledged_survivors: usize,
    crashes_during_recovery: usize,
    failed_syncs: usize,
}

/// Runs the workload with a crash at I/O `crash_point` (or, with `fail_sync`, a failed fsync
/// there and a crash at the end); with some seeds crashes again while the next process
/// recovers. Returns false when the workload finished before reaching `crash_point`.
async fn crash_case(
    steps: &[Step],
    workload_seed: u64,
    crash_point: u64,
    seed: u64,
    fail_sync: bool,
    summary: &mut CrashSummary,
) -> bool {
    let (records, records_after_step) = model_records(steps);
    let context =
        format!("WAL_WORKLOAD={workload_seed} WAL_CRASH_POINT={crash_point}: seed {seed} fail_sync {fail_sync}");
    let disk = SimDisk::new(SimDiskConfig::new(seed));
    if fail_sync {
        disk.fail_sync_at_io(crash_point);
    } else {
        disk.crash_at_io(crash_point);
    }
    let (wal, _) = open_sim(&disk).await;
    let acknowledged_steps = run_workload(&wal, steps).await;
    let reached = disk.stats().io_count > crash_point;
    summary.failed_syncs += wal.error().is_some_and(|error| error.to_string().contains("fdatasync failure")) as usize;
    if !disk.has_crashed() {
        match wal.error() {
            Some(_) => drop(wal),
            None => close(wal).await,
        }
        disk.crash();
    }
    let acknowledged_records = acknowledged_steps.checked_sub(1).map_or(0, |step| records_after_step[step]);
    if seed.is_multiple_of(3) {
        disk.restart();
        disk.crash_at_io(disk.stats().io_count + seed / 3 % 5);
        if let Ok((wal, _)) = open_wal(disk.clone(), SMALL_SEGMENT_BYTES).await {
            let _ = wal.sync().await;
        }
        summary.crashes_during_recovery += disk.has_crashed() as usize;
        disk.crash();
    }
    let (repaired, survivors) = verify_recovery(&disk, &records, acknowledged_records, &context).await;
    summary.cases += 1;
    summary.repaired_tails += repaired as usize;
    summary.unacknowledged_survivors += survivors as usize;
    reached
}

/// Crashes at every I/O of the workload planned from `workload_seed`, four ways per point.
async fn crash_at_every_point(workload_seed: u64, only: Option<u64>) {
    let steps = plan_workload(workload_seed, 200);
    // The workload must exercise what can go wrong: rotations, releases and truncations.
    let disk = SimDisk::new(SimDiskConfig::new(1));
    let (wal, _) = open_sim(&disk).await;
    run_workload(&wal, &steps).await;
    let stats = wal.stats();
    close(wal).await;
    let segments_kept = disk.file_names().iter().filter(|name| name.ends_with(".wal")).count() as u64;
    let truncations = steps.iter().filter(|step| matches!(step, Step::Truncate { .. })).count();
    assert!(
        stats.rotations >= 10 && segments_kept + 5 < stats.rotations && truncations >= 10,
        "workload {workload_seed}: rotations {} segments kept {segments_kept} truncations {truncations}",
        stats.rotations
    );

    let mut summary = CrashSummary::default();
    let mut crash_point = only.unwrap_or(0);
    loop {
        let mut reached = false;
        for seed in 0..4 {
            let fail_sync = seed == 3;
            reached |=
                crash_case(&steps, workload_seed, crash_point, crash_point * 4 + seed, fail_sync, &mut summary).await;
        }
        if !reached || only.is_some() {
            break;
        }
        crash_point += 1;
    }
    eprintln!("workload {workload_seed}: crashed at each of {crash_point} I/O points: {summary:?}");
    if only.is_none() {
        assert!(crash_point > 150, "the workload does at least 150 I/Os ({crash_point})");
        assert!(summary.repaired_tails > 10 && summary.unacknowledged_survivors > 10, "{summary:?}");
        assert!(summary.crashes_during_recovery > 10 && summary.failed_syncs > 20, "{summary:?}");
    }
}

/// `WAL_WORKLOAD=<seed> WAL_CRASH_POINT=<n>` replays one failing case.
fn replay_request() -> (Option<u64>, Option<u64>) {
    let read = |name| std::env::var(name).ok().map(|value: String| value.parse().expect("a number"));
    (read("WAL_WORKLOAD"), read("WAL_CRASH_POINT"))
}

#[test]
fn crash_at_every_point_of_a_long_append_sequence() {
    let (workload, only) = replay_request();
    run(crash_at_every_point(workload.unwrap_or(7), only));
}

#[test]
fn crash_at_every_point_of_other_workloads() {
    if replay_request().0.is_some() {
        return;
    }
    run(async {
        for workload_seed in [8, 9, 10] {
            crash_at_every_point(workload_seed, None).await;
        }
    });
}

#[test]
fn torn_sector_in_the_middle_of_a_batch() {
    run(async {
        let mut saw_hole = false;
        for seed in 0..64 {
            let disk = SimDisk::new(SimDiskConfig::new(seed));
            let (wal, _) = open_wal(disk.clone(), 1024 * 1024).await.expect("open");
            wal.append(&[entry(1, 1, 100)], None).await.expect("first append");
            let io_before = disk.stats().io_count;
            // One append of 8 entries of 1 KiB: one write of 3 sectors, torn at 512 bytes.
            disk.crash_at_io(io_before);
            let batch: Vec<Entry> = (2..10).map(|index| entry(index, 1, 1024)).collect();
            assert!(wal.append(&batch, None).await.is_err());
            disk.restart();
            let (wal, recovered) = open_wal(disk.clone(), 1024 * 1024).await.expect("reopen");
            let got = indexes(&recovered.entries);
            assert!(got.len() <= 9 && got.iter().copied().eq(1..=got.len() as u64), "seed {seed}: {got:?}");
            // Garbage behind the last valid record means a later piece of the write landed
            // while an earlier one did not: recovery must have zeroed it.
            saw_hole |= recovered.repaired_tail.is_some() && got.len() < 9;
            let next = wal.last_index() + 1;
            wal.append(&[entry(next, 2, 10)], None).await.expect("append after torn batch");
            drop(wal);
            let disk_check = wal::check(&disk).await;
            assert!(disk_check.is_ok(), "seed {seed}: {disk_check:?}");
        }
        assert!(saw_hole, "some seed tore the batch in the middle and left later sectors behind");
    });
}

/// Writes enough 16 KiB segments to have a middle one; returns the segment names.
async fn three_segments(disk: &SimDisk) -> Vec<String> {
    let (wal, _) = open_sim(disk).await;
    for index in 1..=60 {
        wal.append(&[entry(index, 1, 600)], Some(hard_state(1, index))).await.expect("append");
    }
    close(wal).await;
    let names: Vec<String> = disk.file_names().into_iter().filter(|name| name.ends_with(".wal")).collect();
    assert!(names.len() >= 3, "{names:?}");
    names
}

#[test]
fn corruption_in_a_middle_segment_is_an_error_naming_file_and_offset() {
    run(async {
        let disk = SimDisk::new(SimDiskConfig::new(3));
        let names = three_segments(&disk).await;
        let middle = &names[1];
        let offset = 16 + 36 + 30 + 100; // inside the first records after the head
        let original = disk.contents(middle).expect("exists")[offset];
        disk.corrupt(middle, offset, &[original ^ 0x40]);
        match open_wal(disk.clone(), SMALL_SEGMENT_BYTES).await {
            Err(OpenError::Corrupt { file, offset: at, reason }) => {
                assert!(file.contains(middle.as_str()), "{file}");
                assert!(at <= offset as u64 && at > 16, "offset {at}: {reason}");
                let message = OpenError::Corrupt { file, offset: at, reason }.to_string();
                assert!(message.contains("restore"), "{message}");
            }
            Err(other) => panic!("expected Corrupt, got {other}"),
            Ok(_) => panic!("expected Corrupt, the WAL opened"),
        }
        assert!(wal::check(&disk).await.is_err());
    });
}

#[test]
fn a_middle_segment_cut_short_breaks_the_chain() {
    run(async {
        let disk = SimDisk::new(SimDiskConfig::new(4));
        let names = three_segments(&disk).await;
        let middle = &names[1];
        let contents = disk.contents(middle).expect("exists");
        // Zero the last record: the segment now ends cleanly, one record early.
        let (mut offset, mut last_start) = (16usize, 0usize);
        while contents[offset..offset + 8] != [0; 8] {
            last_start = offset;
            offset += 12 + u32::from_le_bytes(contents[offset..offset + 4].try_into().unwrap()) as usize;
        }
        disk.corrupt(middle, last_start, &vec![0u8; offset - last_start]);
        match open_wal(disk.clone(), SMALL_SEGMENT_BYTES).await {
            Err(OpenError::Corrupt { file, reason, .. }) => {
                assert!(file.contains(middle.as_str()) && reason.contains("lost"), "{reason}")
            }
            Err(other) => panic!("expected Corrupt, got {other}"),
            Ok(_) => panic!("expected Corrupt, the WAL opened"),
        }
    });
}

#[test]
fn unknown_format_version_is_a_clear_error() {
    run(async {
        let disk = SimDisk::new(SimDiskConfig::new(5));
        let names = three_segments(&disk).await;
        disk.corrupt(&names[0], 8, &7u32.to_le_bytes());
        match open_wal(disk.clone(), SMALL_SEGMENT_BYTES).await {
            Err(error @ OpenError::UnknownVersion { version: 7, .. }) => {
                assert!(error.to_string().contains("version 7"), "{error}");
            }
            Err(other) => panic!("expected UnknownVersion, got {other}"),
            Ok(_) => panic!("expected UnknownVersion, the WAL opened"),
        }
    });
}

#[test]
fn rotation_release_and_truncate_then_append() {
    run(async {
        let disk = SimDisk::new(SimDiskConfig::new(6));
        let (wal, _) = open_sim(&disk).await;
        for index in 1..=80 {
            wal.append(&[entry(index, 1, 700)], None).await.expect("append");
        }
        let segments_before = disk.file_names().iter().filter(|name| name.ends_with(".wal")).count();
        assert!(segments_before >= 4, "{segments_before} segments");
        assert!(matches!(wal.release_below(10).await, Err(WriteError::InvalidRequest(_))), "no snapshot yet");

        wal.save_snapshot_marker(SnapshotMarker { index: 50, term: 1, conf_state: None, replaces_log: false })
            .await
            .expect("marker");
        let released = wal.release_below(51).await.expect("release");
        assert!(released >= 2, "released {released}");
        let segments_after = disk.file_names().iter().filter(|name| name.ends_with(".wal")).count();
        assert_eq!(segments_after, segments_before - released);
        assert!(matches!(wal.read_entries(5, 10).await, Err(ReadError::Compacted { .. })));
        assert_eq!(indexes(&wal.read_entries(51, 81).await.expect("read")), (51..=80).collect::<Vec<_>>());

        // A conflict at 70: truncate, then append a different suffix with a new term.
        assert!(wal.truncate_suffix(40).is_err(), "cannot truncate into the snapshot");
        wal.truncate_suffix(70).expect("truncate");
        assert_eq!(wal.last_index(), 69);
        assert!(wal.append(&[entry(72, 2, 10)], None).await.is_err(), "gap after truncation");
        let suffix: Vec<Entry> = (70..=75).map(|index| entry(index, 2, 300)).collect();
        wal.append(&suffix, Some(hard_state(2, 72))).await.expect("append after truncate");
        // An append at or below the last index truncates implicitly (a Raft conflict).
        wal.append(&[entry(74, 3, 10)], None).await.expect("implicit truncation");
        let read = wal.read_entries(68, 75).await.expect("read");
        assert_eq!(
            read.iter().map(|entry| (entry.index, entry.term)).collect::<Vec<_>>(),
            [(68, 1), (69, 1), (70, 2), (71, 2), (72, 2), (73, 2), (74, 3)]
        );
        close(wal).await;

        let report = wal::check(&disk).await.expect("check");
        assert_eq!((report.first_index, report.last_index), (Some(51), Some(74)));
        let (_, recovered) = open_sim(&disk).await;
        assert_eq!(recovered.snapshot.map(|marker| marker.index), Some(50));
        assert_eq!(indexes(&recovered.entries), (51..=74).collect::<Vec<_>>());
        assert_eq!(recovered.entries[23].term, 3);
        assert_eq!(recovered.hard_state, Some(hard_state(2, 72)));
    });
}

#[test]
fn a_snapshot_beyond_the_log_restarts_it() {
    run(async {
        let disk = SimDisk::new(SimDiskConfig::new(8));
        let (wal, _) = open_sim(&disk).await;
        wal.append(&[entry(1, 1, 10), entry(2, 1, 10)], None).await.expect("append");
        wal.save_snapshot_marker(SnapshotMarker { index: 1000, term: 4, conf_state: None, replaces_log: false })
            .await
            .expect("marker");
        assert_eq!(wal.last_index(), 1000);
        wal.append(&[entry(1001, 4, 10)], None).await.expect("append after snapshot");
        close(wal).await;
        let (_, recovered) = open_sim(&disk).await;
        assert_eq!(indexes(&recovered.entries), [1001]);
    });
}

/// Appends one 700-byte entry of `term` per index, enough to take the WAL into new segments.
async fn append_through_rotations(
    wal: &Rc<Wal<SimDisk>>,
    disk: &SimDisk,
    indexes: std::ops::RangeInclusive<u64>,
    term: u64,
) {
    let segments = || disk.file_names().iter().filter(|name| name.ends_with(".wal")).count();
    let before = segments();
    for index in indexes {
        wal.append(&[entry(index, term, 700)], None).await.expect("append");
    }
    assert!(segments() > before, "the appends rotated into new segments");
}

/// A leader's snapshot installed over a log that did not hold its entry (an old leader's
/// uncommitted suffix in an older term) ends that log: the entries above the snapshot written
/// before its marker are gone after a restart too, while the entries appended after the marker
/// survive, even once later segment heads repeat the marker (heads made before and after a
/// restart).
#[test]
fn an_installed_snapshot_replaces_the_log_through_rotations_and_restarts() {
    run(async {
        let disk = SimDisk::new(SimDiskConfig::new(10));
        let (wal, _) = open_sim(&disk).await;
        let stale: Vec<Entry> = (1..=20).map(|index| entry(index, 2, 300)).collect();
        wal.append(&stale, Some(hard_state(2, 5))).await.expect("append the old suffix");
        let marker_10 = || SnapshotMarker { index: 10, term: 3, conf_state: None, replaces_log: true };
        wal.save_snapshot_marker(marker_10()).await.expect("marker");
        assert_eq!(wal.last_index(), 10, "the log restarts after the snapshot");
        append_through_rotations(&wal, &disk, 11..=40, 3).await;
        close(wal).await;

        let (wal, recovered) = open_sim(&disk).await;
        assert_eq!(recovered.snapshot.as_ref().map(|marker| (marker.index, marker.term)), Some((10, 3)));
        assert_eq!(indexes(&recovered.entries), (11..=40).collect::<Vec<_>>(), "the old suffix is gone");
        append_through_rotations(&wal, &disk, 41..=70, 3).await;
        close(wal).await;

        let report = wal::check(&disk).await.expect("check");
        assert_eq!((report.first_index, report.last_index), (Some(11), Some(70)));
        let (_, recovered) = open_sim(&disk).await;
        assert_eq!(indexes(&recovered.entries), (11..=70).collect::<Vec<_>>());
        assert!(recovered.entries.iter().all(|entry| entry.term == 3));
        assert_eq!(recovered.snapshot.map(|marker| (marker.index, marker.replaces_log)), Some((10, false)));

        // A restart right after the marker: the heads that follow come from the recovered one.
        let disk = SimDisk::new(SimDiskConfig::new(11));
        let (wal, _) = open_sim(&disk).await;
        wal.append(&stale, Some(hard_state(2, 5))).await.expect("append the old suffix");
        wal.save_snapshot_marker(marker_10()).await.expect("marker");
        close(wal).await;
        let (wal, recovered) = open_sim(&disk).await;
        assert!(recovered.entries.is_empty(), "the old suffix is gone: {:?}", indexes(&recovered.entries));
        append_through_rotations(&wal, &disk, 11..=40, 3).await;
        close(wal).await;
        let (_, recovered) = open_sim(&disk).await;
        assert_eq!(indexes(&recovered.entries), (11..=40).collect::<Vec<_>>());
    });
}

#[test]
fn many_concurrent_appenders_resolve_in_order() {
    run(async {
        let disk = SimDisk::new(SimDiskConfig::new(9));
        let (wal, _) = open_wal(disk.clone(), 1024 * 1024).await.expect("open");
        let completions = Rc::new(RefCell::new(Vec::new()));
        let appenders: Vec<_> = (0..64)
            .map(|appender| {
                let (wal, completions) = (wal.clone(), completions.clone());
                glommio::spawn_local(async move {
                    for round in 0..20 {
                        let index = wal.last_index() + 1;
                        let durable = wal.append(&[entry(index, 1, 64 + appender)], None);
                        let ticket = durable.ticket();
                        durable.await.expect("append");
                        completions.borrow_mut().push(ticket);
                        if round % 3 == 0 {
                            futures_lite::future::yield_now().await;
                        }
                    }
                })
            })
            .collect();
        for appender in appenders {
            appender.await;
        }
        let completions = completions.borrow().clone();
        assert_eq!(completions.len(), 64 * 20);
        assert!(completions.windows(2).all(|pair| pair[0] < pair[1]), "resolved out of order");
        let stats = wal.stats();
        assert!(stats.syncs * 4 < stats.appends, "group commit batched appends: {stats:?}");
        assert_eq!(wal.read_entries(1, 64 * 20 + 1).await.expect("read").len(), 64 * 20);
    });
}

#[test]
fn a_failed_fsync_is_sticky_and_never_retried() {
    run(async {
        let disk = SimDisk::new(SimDiskConfig::new(10));
        let (wal, _) = open_wal(disk.clone(), 1024 * 1024).await.expect("open");
        wal.append(&[entry(1, 1, 10)], None).await.expect("first append");
        let io_now = disk.stats().io_count;
        disk.fail_sync_at_io(io_now + 1);
        let error = wal.append(&[entry(2, 1, 10)], None).await.expect_err("fsync fails");
        assert!(matches!(error, WriteError::Io { operation: "writing and syncing", .. }), "{error}");
        let syncs = disk.stats().syncs;
        let again = wal.append(&[entry(3, 1, 10)], None).await.expect_err("sticky");
        assert_eq!(again.to_string(), error.to_string());
        assert!(wal.sync().await.is_err());
        assert_eq!(disk.stats().syncs, syncs, "no sync after the failure");
        drop(wal);
        disk.restart();
        let (_, recovered) = open_wal(disk.clone(), 1024 * 1024).await.expect("reopen");
        assert!(indexes(&recovered.entries).starts_with(&[1]));
    });
}

#[test]
fn glommio_dma_files_round_trip() {
    let directory = tempfile::tempdir().expect("tempdir");
    let path = directory.path().join("wal");
    run(async move {
        let storage = GlommioStorage::open(&path).await.expect("storage");
        let (wal, _) = open_wal(storage, 64 * 1024).await.expect("open");
        let mut pending = Vec::new();
        for index in 1..=300 {
            pending.push(wal.append(&[entry(index, 1, 400)], Some(hard_state(1, index))));
        }
        for durable in pending {
            durable.await.expect("durable");
        }
        assert_eq!(wal.read_entries(100, 301).await.expect("read").len(), 201);
        Rc::try_unwrap(wal).ok().expect("sole owner").close().await.expect("close");
        let storage = GlommioStorage::open(&path).await.expect("storage");
        let report = wal::check(&storage).await.expect("check");
        assert!(report.segment_count > 1);
        let (_, recovered) = open_wal(storage, 64 * 1024).await.expect("reopen");
        assert_eq!(indexes(&recovered.entries), (1..=300).collect::<Vec<_>>());
        assert_eq!(recovered.hard_state, Some(hard_state(1, 300)));
    });
}

#[test]
fn reads_wait_for_durability_and_span_segments() {
    run(async {
        let disk = SimDisk::new(SimDiskConfig::new(11));
        let (wal, _) = open_sim(&disk).await;
        let pending: Vec<_> = (1..=40).map(|index| wal.append(&[entry(index, 1, 900)], None)).collect();
        // Nothing is durable yet; the read waits for it instead of failing.
        let read = wal.read_entries(1, 41).await.expect("read");
        assert_eq!(indexes(&read), (1..=40).collect::<Vec<_>>());
        assert_eq!(read[17], entry(18, 1, 900));
        for durable in pending {
            durable.await.expect("durable");
        }
        assert!(wal.stats().rotations >= 3, "{:?}", wal.stats());
        assert!(matches!(wal.read_entries(0, 3).await, Err(ReadError::Compacted { first_index: 1 })));
        assert!(matches!(wal.read_entries(30, 42).await, Err(ReadError::Unavailable { last_index: 40 })));
        assert!(wal.read_entries(5, 5).await.expect("empty range").is_empty());
        // A size limit stops early but always returns one entry (records are 12 + ~906 bytes).
        assert_eq!(indexes(&wal.read_entries_limited(3, 41, 2000).await.expect("limited")), [3, 4]);
        assert_eq!(indexes(&wal.read_entries_limited(3, 41, 1).await.expect("limited")), [3]);
        assert_eq!(wal.pending_bytes(), 0);
    });
}

#[test]
fn oversized_records_are_refused_without_stopping_the_wal() {
    run(async {
        let disk = SimDisk::new(SimDiskConfig::new(12));
        let (wal, _) = open_sim(&disk).await;
        let error = wal.append(&[entry(1, 1, 20_000)], None).await.expect_err("does not fit a 16 KiB segment");
        assert!(matches!(error, WriteError::RecordTooLarge { .. }), "{error}");
        assert!(wal.error().is_none(), "not sticky");
        wal.append(&[entry(1, 1, 10_000)], None).await.expect("fits");
        assert_eq!(wal.last_index(), 1);
    });
}

#[test]
fn dropping_the_driver_fails_waiters_with_closed() {
    run(async {
        let disk = SimDisk::new(SimDiskConfig::new(13));
        let opened =
            Wal::open(disk.clone(), WalConfig { segment_size_bytes: SMALL_SEGMENT_BYTES }).await.expect("open");
        let durable = opened.wal.append(&[entry(1, 1, 10)], None);
        drop(opened.driver);
        assert!(matches!(durable.await, Err(WriteError::Closed)));
        assert!(matches!(opened.wal.append(&[entry(2, 1, 10)], None).await, Err(WriteError::Closed)));
    });
}

#[test]
fn glommio_recovery_zeroes_a_torn_tail() {
    use std::os::unix::fs::FileExt;
    let directory = tempfile::tempdir().expect("tempdir");
    let path = directory.path().join("wal");
    let segment_bytes = 64 * 1024;
    let path_for_writes = path.clone();
    run(async move {
        let storage = GlommioStorage::open(&path_for_writes).await.expect("storage");
        let (wal, _) = open_wal(storage, segment_bytes).await.expect("open");
        for index in 1..=10 {
            wal.append(&[entry(index, 1, 100)], None).await.expect("append");
        }
        Rc::try_unwrap(wal).ok().expect("sole owner").close().await.expect("close");
    });
    // A torn write: a record's first bytes made it, and a later sector of the write too.
    let segment = std::fs::read_dir(&path)
        .expect("list")
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .find(|name| name.ends_with(".wal"))
        .expect("a segment");
    let file = std::fs::OpenOptions::new().write(true).open(path.join(&segment)).expect("open segment");
    let end = 16 + 36 + 10 * (12 + 100 + 6) as u64;
    file.write_at(&[0x21, 0, 0, 0, 2, 0, 0, 0, 0xff], end).expect("torn header");
    file.write_at(&[0x5a; 512], 8192).expect("stray sector");
    file.sync_all().expect("sync");
    run(async move {
        let storage = GlommioStorage::open(&path).await.expect("storage");
        let (wal, recovered) = open_wal(storage, segment_bytes).await.expect("reopen");
        assert_eq!(indexes(&recovered.entries), (1..=10).collect::<Vec<_>>());
        let (file, offset) = recovered.repaired_tail.expect("the torn tail was repaired");
        assert!(file.ends_with(&segment) && offset == end, "{file} {offset}");
        wal.append(&[entry(11, 1, 100)], None).await.expect("append after repair");
        Rc::try_unwrap(wal).ok().expect("sole owner").close().await.expect("close");
        let storage = GlommioStorage::open(&path).await.expect("storage");
        let report = wal::check(&storage).await.expect("check");
        assert_eq!(report.last_index, Some(11));
    });
}

#[test]
fn released_segments_leave_a_gap_that_the_latest_snapshot_covers() {
    run(async {
        let disk = SimDisk::new(SimDiskConfig::new(14));
        let (wal, _) = open_sim(&disk).await;
        for index in 1..=30 {
            wal.append(&[entry(index, 1, 700)], None).await.expect("append");
        }
        wal.save_snapshot_marker(SnapshotMarker { index: 20, term: 1, conf_state: None, replaces_log: false })
            .await
            .expect("marker 20");
        // Later segment heads repeat marker 20 while holding entries well past 21.
        for index in 31..=90 {
            wal.append(&[entry(index, 1, 700)], Some(hard_state(1, index))).await.expect("append");
        }
        wal.save_snapshot_marker(SnapshotMarker { index: 70, term: 1, conf_state: None, replaces_log: false })
            .await
            .expect("marker 70");
        assert!(wal.release_below(71).await.expect("release") >= 3);
        close(wal).await;
        let first_segment = disk.file_names().into_iter().find(|name| name.ends_with(".wal")).expect("segments");
        let (_, first_index) = wal::parse_segment_name(&first_segment).expect("segment name");
        assert!(first_index > 21, "the oldest kept segment starts at {first_index}, past marker 20");
        let (wal, recovered) = open_sim(&disk).await;
        assert_eq!(recovered.snapshot.map(|marker| marker.index), Some(70));
        assert_eq!(indexes(&recovered.entries), (71..=90).collect::<Vec<_>>());
        assert_eq!(wal.first_index(), 71);
        assert_eq!(wal::check(&disk).await.expect("check").entry_count, 20);
    });
}

#[test]
fn segments_are_preallocated_and_named_by_first_index() {
    let directory = tempfile::tempdir().expect("tempdir");
    let path = directory.path().join("wal");
    let segment_bytes = 64 * 1024u64;
    let path_for_wal = path.clone();
    run(async move {
        let storage = GlommioStorage::open(&path_for_wal).await.expect("storage");
        let (wal, _) = open_wal(storage, segment_bytes).await.expect("open");
        for index in 1..=200 {
            wal.append(&[entry(index, 1, 1000)], None).await.expect("append");
        }
        Rc::try_unwrap(wal).ok().expect("sole owner").close().await.expect("close");
    });
    let mut names: Vec<String> = std::fs::read_dir(&path)
        .expect("list")
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".wal"))
        .collect();
    names.sort();
    assert!(names.len() >= 3, "{names:?}");
    let mut previous_first_index = 0;
    for (seq, name) in names.iter().enumerate() {
        let (name_seq, first_index) = wal::parse_segment_name(name).expect("segment name");
        assert_eq!(name_seq, seq as u64);
        assert!(first_index > previous_first_index || seq == 0, "{names:?}");
        previous_first_index = first_index;
        let metadata = std::fs::metadata(path.join(name)).expect("metadata");
        assert_eq!(metadata.len(), segment_bytes, "{name} is preallocated");
        use std::os::unix::fs::MetadataExt;
        assert!(metadata.blocks() * 512 >= segment_bytes, "{name} has its blocks allocated");
    }
    assert_eq!(names[0], "0000000000000000-0000000000000001.wal");
}

#[test]
fn a_wal_directory_is_locked_while_open() {
    let directory = tempfile::tempdir().expect("tempdir");
    let path = directory.path().join("wal");
    run(async move {
        let storage = GlommioStorage::open(&path).await.expect("storage");
        let (wal, _) = open_wal(storage, 64 * 1024).await.expect("open");
        wal.append(&[entry(1, 1, 10)], None).await.expect("append");
        let second = GlommioStorage::open(&path).await.err().expect("locked");
        assert_eq!(second.kind(), std::io::ErrorKind::WouldBlock, "{second}");
        Rc::try_unwrap(wal).ok().expect("sole owner").close().await.expect("close");
        let storage = GlommioStorage::open(&path).await.expect("unlocked after close");
        let (_, recovered) = open_wal(storage, 64 * 1024).await.expect("reopen");
        assert_eq!(indexes(&recovered.entries), [1]);
    });
}
