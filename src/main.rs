//! The `ringd` server binary: parse etcd's flags, open the data dir, serve.

fn main() {
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
