//! Runs a workload: --conns connections shared by --clients request loops, spread over
//! --client-cores glommio executors (connection c and the clients on it live on executor
//! c mod cores). Loops take request indexes from one shared counter until --total, wait
//! for the rate limiter, and record each latency in their executor's recorders, which are
//! merged at the end. A thread draws the progress bar on stderr.

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ringd::api::pb::etcdserverpb as pb;
use ringd::client::{Channel, Endpoint};

use crate::report::{process_cpu, ClientCpu, Recorder};
use crate::workload::{Random, Workload};

/// glommio's registered buffers per executor; executors x this stays under an 8 MiB memlock.
const IO_MEMORY_BYTES: usize = 512 * 1024;
const PROGRESS_PERIOD: Duration = Duration::from_millis(200);
const PROGRESS_BAR_WIDTH: usize = 50;

#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub endpoints: Vec<Endpoint>,
    pub connections: usize,
    pub clients: usize,
    pub executors: usize,
    pub dial_timeout: Duration,
    /// Requests per second over all loops; 0 is no limit.
    pub rate: u64,
    pub total: usize,
    pub sample: bool,
    pub progress: bool,
    /// put --compact-interval / --compact-index-delta.
    pub compaction: Option<(Duration, i64)>,
}

pub struct LoadResult {
    /// One per workload class.
    pub recorders: Vec<Recorder>,
    /// First request sent to last reply received.
    pub wall: Duration,
    pub cpu: ClientCpu,
}

struct Shared {
    options: LoadOptions,
    workload: Arc<dyn Workload>,
    next_index: AtomicUsize,
    done: AtomicUsize,
    connected: Barrier,
    stop_background: AtomicBool,
}

/// Per executor: recorders, first request start, last reply end.
type Partial = (Vec<Recorder>, Option<Instant>, Option<Instant>);

pub fn run(options: LoadOptions, workload: Arc<dyn Workload>) -> Result<LoadResult, String> {
    assert!(options.connections > 0 && options.clients > 0 && options.executors > 0);
    let executors = options.executors.min(options.connections);
    let classes = workload.classes().len();
    let shared = Arc::new(Shared {
        options: LoadOptions { executors, ..options },
        workload,
        next_index: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        connected: Barrier::new(executors),
        stop_background: AtomicBool::new(false),
    });
    let cpu_before = process_cpu();
    let progress = shared.options.progress.then(|| spawn_progress(shared.clone()));
    let mut handles = Vec::new();
    for executor in 0..executors {
        let shared = shared.clone();
        let handle = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .name(&format!("ringbench-{executor}"))
            .io_memory(IO_MEMORY_BYTES)
            .spawn(move || async move { drive(shared, executor).await })
            .map_err(|error| format!("cannot start a glommio executor: {error}"))?;
        handles.push(handle);
    }
    let partials: Vec<Result<Partial, String>> =
        handles.into_iter().map(|handle| handle.join().unwrap_or_else(|error| Err(error.to_string()))).collect();
    shared.stop_background.store(true, Ordering::Relaxed);
    if let Some(progress) = progress {
        let _ = progress.join();
    }
    let cpu_after = process_cpu();
    let mut recorders: Vec<Recorder> = (0..classes).map(|_| Recorder::new(shared.options.sample)).collect();
    let (mut first, mut last): (Option<Instant>, Option<Instant>) = (None, None);
    for partial in partials {
        let (partial_recorders, start, end) = partial?;
        for (recorder, partial) in recorders.iter_mut().zip(&partial_recorders) {
            recorder.merge(partial);
        }
        first = [first, start].into_iter().flatten().min();
        last = [last, end].into_iter().flatten().max();
    }
    let wall = match (first, last) {
        (Some(first), Some(last)) => last.duration_since(first),
        _ => Duration::ZERO,
    };
    let requests = recorders.iter().map(|r| r.count + r.error_count()).sum();
    Ok(LoadResult { recorders, wall, cpu: ClientCpu::between(cpu_before, cpu_after, requests, wall) })
}

async fn drive(shared: Arc<Shared>, executor: usize) -> Result<Partial, String> {
    let options = &shared.options;
    let mut channels = Vec::new();
    let mut failure = None;
    for connection in (executor..options.connections).step_by(options.executors) {
        let endpoint = &options.endpoints[connection % options.endpoints.len()];
        match Channel::connect(endpoint, options.dial_timeout).await {
            Ok(channel) => channels.push((connection, channel)),
            Err(error) => {
                failure = Some(format!("dial error: {error}"));
                break;
            }
        }
    }
    // Every executor reaches the barrier, failed or not, so none waits forever.
    shared.connected.wait();
    if let Some(failure) = failure {
        shared.next_index.store(usize::MAX / 2, Ordering::Relaxed);
        return Err(failure);
    }
    let classes = shared.workload.classes().len();
    let recorders = Rc::new(RefCell::new((0..classes).map(|_| Recorder::new(options.sample)).collect::<Vec<_>>()));
    let first = Rc::new(Cell::new(None::<Instant>));
    let last = Rc::new(Cell::new(None::<Instant>));
    let limiter = Rc::new(Limiter::new(options.rate, options.executors));
    if executor == 0 {
        if let Some((interval, delta)) = options.compaction {
            let channel = channels[0].1.clone();
            let shared = shared.clone();
            glommio::spawn_local(async move { compact_periodically(channel, interval, delta, shared).await }).detach();
        }
    }
    let mut loops = Vec::new();
    for client in 0..options.clients {
        let Some((_, channel)) = channels.iter().find(|(connection, _)| *connection == client % options.connections)
        else {
            continue;
        };
        let context = LoopContext {
            shared: shared.clone(),
            channel: channel.clone(),
            recorders: recorders.clone(),
            first: first.clone(),
            last: last.clone(),
            limiter: limiter.clone(),
            seed: client as u64 ^ SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64,
        };
        loops.push(glommio::spawn_local(request_loop(context)));
    }
    for task in loops {
        task.await;
    }
    let recorders = recorders.borrow().clone();
    Ok((recorders, first.get(), last.get()))
}

struct LoopContext {
    shared: Arc<Shared>,
    channel: Channel,
    recorders: Rc<RefCell<Vec<Recorder>>>,
    first: Rc<Cell<Option<Instant>>>,
    last: Rc<Cell<Option<Instant>>>,
    limiter: Rc<Limiter>,
    seed: u64,
}

async fn request_loop(context: LoopContext) {
    let shared = &context.shared;
    let mut random = Random::new(context.seed);
    loop {
        let index = shared.next_index.fetch_add(1, Ordering::Relaxed);
        if index >= shared.options.total {
            return;
        }
        context.limiter.wait().await;
        let call = shared.workload.call(index, &mut random);
        let start_second = if shared.options.sample { unix_second() } else { 0 };
        let start = Instant::now();
        let result = context.channel.unary_bytes(call.path, call.body).await;
        let end = Instant::now();
        if context.first.get().is_none_or(|first| start < first) {
            context.first.set(Some(start));
        }
        context.last.set(Some(end));
        let mut recorders = context.recorders.borrow_mut();
        match result {
            Ok(_) => recorders[call.class].record(end - start, start_second),
            Err(error) => recorders[call.class].record_error(error.to_string()),
        }
        drop(recorders);
        shared.done.fetch_add(1, Ordering::Relaxed);
    }
}

pub fn unix_second() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64
}

/// Go's rate.Limiter with a burst of one: slots `1/rate` apart, each caller takes the next.
pub struct Limiter {
    interval: Option<Duration>,
    next_slot: Cell<Instant>,
}

impl Limiter {
    /// `rate` per second over all executors (each limiter takes its share); 0 is no limit.
    pub fn new(rate: u64, executors: usize) -> Limiter {
        let interval = (rate > 0).then(|| Duration::from_secs_f64(executors as f64 / rate as f64));
        Limiter { interval, next_slot: Cell::new(Instant::now()) }
    }

    pub async fn wait(&self) {
        let Some(interval) = self.interval else { return };
        let now = Instant::now();
        let slot = self.next_slot.get().max(now);
        self.next_slot.set(slot + interval);
        if slot > now {
            glommio::timer::sleep(slot - now).await;
        }
    }
}

/// put --compact-interval: every interval, compact to (current revision - delta).
async fn compact_periodically(channel: Channel, interval: Duration, delta: i64, shared: Arc<Shared>) {
    while !shared.stop_background.load(Ordering::Relaxed) && shared.done.load(Ordering::Relaxed) < shared.options.total
    {
        glommio::timer::sleep(interval).await;
        let range = pb::RangeRequest { key: b"foo".to_vec(), ..Default::default() };
        let revision = match channel.range(&range).await {
            Ok(reply) => reply.header.map_or(0, |header| header.revision),
            Err(error) => {
                eprintln!("compact: reading the revision failed: {error}");
                continue;
            }
        };
        let compact = pb::CompactionRequest { revision: (revision - delta).max(0), physical: false };
        if let Err(error) = channel.compact(&compact).await {
            eprintln!("compact: {error}");
        }
    }
}

fn spawn_progress(shared: Arc<Shared>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let started = Instant::now();
        let total = shared.options.total;
        loop {
            let finished = shared.stop_background.load(Ordering::Relaxed);
            let done = shared.done.load(Ordering::Relaxed).min(total);
            draw_progress(done, total, started.elapsed());
            if finished {
                eprintln!();
                return;
            }
            std::thread::sleep(PROGRESS_PERIOD);
        }
    })
}

/// A progress bar drawn by the tasks of one executor as they make progress, at most every
/// PROGRESS_PERIOD (and once more when done).
pub struct LocalProgress {
    done: Cell<usize>,
    total: usize,
    started: Instant,
    drawn: Cell<Instant>,
}

impl LocalProgress {
    pub fn new(total: usize) -> LocalProgress {
        let now = Instant::now();
        draw_progress(0, total, Duration::ZERO);
        LocalProgress { done: Cell::new(0), total, started: now, drawn: Cell::new(now) }
    }

    pub fn add(&self, count: usize) {
        let done = (self.done.get() + count).min(self.total);
        self.done.set(done);
        if self.drawn.get().elapsed() >= PROGRESS_PERIOD || done == self.total {
            draw_progress(done, self.total, self.started.elapsed());
            self.drawn.set(Instant::now());
        }
    }

    /// Draws the final state and ends the bar's line.
    pub fn finish(&self) {
        draw_progress(self.done.get(), self.total, self.started.elapsed());
        eprintln!();
    }
}

/// The layout of etcd's progress bar (cheggaaa/pb): ` done / total [====>----] 50.00% 1s`.
pub fn draw_progress(done: usize, total: usize, elapsed: Duration) {
    let fraction = if total == 0 { 1.0 } else { done as f64 / total as f64 };
    let filled = ((fraction * PROGRESS_BAR_WIDTH as f64) as usize).min(PROGRESS_BAR_WIDTH);
    let bar = if filled == PROGRESS_BAR_WIDTH {
        "=".repeat(PROGRESS_BAR_WIDTH)
    } else {
        format!("{}>{}", "=".repeat(filled), "-".repeat(PROGRESS_BAR_WIDTH - filled - 1))
    };
    let mut stderr = std::io::stderr().lock();
    let _ = write!(stderr, "\r {done} / {total} [{bar}] {:.2}% {}s", fraction * 100.0, elapsed.as_secs());
    let _ = stderr.flush();
}
