//! The `ringd` server binary: parse etcd's flags, open the data dir, serve.

/// mimalloc: a 4 KiB page buffer (every copy on write of the store) costs glibc malloc a trip
/// through its bins; with mimalloc puts were about 6% faster (benches/mvcc.rs).
#[global_allocator]
static ALLOCATOR: ringd::allocator::Allocator = ringd::allocator::Allocator;

fn main() {
    // A panic is an invariant the code asserts that did not hold. The process stops: a
    // core whose thread died would leave the others accepting requests it never answers.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        eprintln!("ringd: stopping after a panic");
        std::process::abort();
    }));
    let flags = ringd::server::Flags::parse_or_exit();
    let config = match flags.into_config() {
        Ok(config) => config,
        Err(message) => {
            eprintln!("ringd: {message}");
            std::process::exit(2);
        }
    };
    if let Err(error) = ringd::server::run(config) {
        eprintln!("ringd: {error}");
        std::process::exit(1);
    }
}
