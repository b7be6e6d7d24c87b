//! rust-ws: the wslab Rocket WebSocket server (protocol v1, see PROTOCOL.md at the repo root).
//! The entry point: parse the configuration, start the runtime and Rocket, map errors to exit
//! codes; SIGTERM/SIGINT come through Rocket's shutdown.
//!
//! Twin: python-ws/python_ws/__main__.py.
//!
//! Run it from the repository root:
//!
//! ```text
//! cargo run -p rust-ws                          # ws://0.0.0.0:8000/ws, /metrics, /healthz
//! WS_PORT=9000 LOG_LEVEL=debug cargo run -p rust-ws
//! cargo build --release -p rust-ws && target/release/rust-ws
//! rust-ws --healthcheck                         # exit 0 if /healthz on $WS_PORT answers 200
//! ```
//!
//! Configuration comes from `WS_*` and `LOG_LEVEL` (PROTOCOL.md §1); `ROCKET_*` also works, but
//! `WS_HOST`/`WS_PORT` win. An invalid value prints one `config error: ...` line and exits 2.
//! SIGTERM or SIGINT closes every WebSocket with 1001 and exits 0 within about 5 s.

use std::process::ExitCode;
use std::time::Duration;

use rocket::error::ErrorKind;
use rust_ws::{healthcheck, Config, Server};

// mimalloc trims the per-connection footprint against glibc malloc (bench/README.md, "Design
// figures": ~9.9 KB vs ~11.8 KB per connection). Like the others it keeps freed memory for a
// while: RSS stays up for some seconds after a mass disconnect, which is retention, not a leak.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h (15 in both its v2 and v3 headers); the Rust bindings
/// don't name it.
const MI_OPTION_PURGE_DELAY: std::os::raw::c_int = 15;

/// Give freed pages back to the OS at once. mimalloc's default delays purging by 10 ms, but the
/// delay only elapses while the allocator is in use: an idle server after a mass disconnect kept
/// its peak (bench: RSS 6.9x the pre-load idle 5 s after 10,000 clients left; 1.25x with this and
/// `no_thp`). The option is read at each purge, so setting it first thing in `main` is in time.
/// An explicit `MIMALLOC_PURGE_DELAY` in the environment still wins, for measuring the trade.
fn return_freed_memory_promptly() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: mi_option_set only stores an integer option; valid at any time and thread.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) }
    }
}

fn main() -> ExitCode {
    return_freed_memory_promptly();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] => {}
        ["--healthcheck"] => {
            let healthy = healthcheck::healthcheck_port().is_some_and(healthcheck::healthcheck);
            return if healthy {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
        _ => {
            eprintln!("usage: rust-ws [--healthcheck]  (configure with WS_* variables)");
            return ExitCode::from(2);
        }
    }

    // Validate everything before Rocket binds anything.
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    // Rocket's own settings (ROCKET_*) are checked here too, before anything binds: an invalid
    // one is a config error like an invalid WS_* value. (`rocket::execute` would panic on it.)
    let rocket_config: rocket::Config = match rust_ws::figment(&config).extract() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("config error: {}", e.to_string().replace('\n', " "));
            return ExitCode::from(2);
        }
    };
    // The runtime `rocket::execute` would build, from the configuration checked above.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(rocket_config.workers)
        .max_blocking_threads(rocket_config.max_blocking)
        .thread_name("rocket-worker-thread")
        .on_thread_park(rust_ws::reclaim::on_worker_park)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: rust-ws could not start its runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(serve(config, &rocket_config));
    // Don't wait on stray blocking tasks at exit.
    runtime.shutdown_timeout(Duration::from_millis(500));
    code
}

/// The OS's text for an I/O error without Rust's " (os error N)" suffix, so the line reads as
/// python-ws's does (it prints `strerror`): "Address already in use".
fn os_error_text(e: &std::io::Error) -> String {
    let text = e.to_string();
    match (e.raw_os_error(), text.rfind(" (os error ")) {
        (Some(_), Some(cut)) => text[..cut].to_string(),
        _ => text,
    }
}

async fn serve(config: Config, rocket_config: &rocket::Config) -> ExitCode {
    let rocket = rust_ws::rocket(config);
    let server = rocket
        .state::<std::sync::Arc<Server>>()
        .cloned()
        .expect("rocket() manages the server state");

    match rocket.launch().await {
        Ok(_) => {}
        // Rocket reports a shutdown that had to force connections closed as an error; the
        // shutdown was still requested and carried out.
        Err(e) if matches!(e.kind(), ErrorKind::Shutdown(..)) => {}
        // Checked in main already; kept so a configuration error never panics.
        Err(e) if matches!(e.kind(), ErrorKind::Config(_)) => {
            if let ErrorKind::Config(figment_error) = e.kind() {
                let line = figment_error.to_string().replace('\n', " ");
                eprintln!("config error: {line}");
            }
            return ExitCode::from(2);
        }
        // PROTOCOL.md §1: one line naming the address, as python-ws prints it, and status 1.
        // Rocket's own text ("binding failed: Address already in use") names no address.
        Err(e) if matches!(e.kind(), ErrorKind::Bind(_)) => {
            if let ErrorKind::Bind(io_error) = e.kind() {
                eprintln!(
                    "rust-ws: cannot listen on {}:{}: {}",
                    rocket_config.address,
                    rocket_config.port,
                    os_error_text(io_error)
                );
            }
            return ExitCode::FAILURE;
        }
        Err(e) => {
            // kind() above marked it handled; print it ourselves, on one line.
            eprintln!("error: rust-ws failed: {e}");
            return ExitCode::FAILURE;
        }
    }
    // Connection tasks are detached from Rocket: give their 1001 handshakes time to finish.
    server.wait_idle(Duration::from_millis(2500)).await;
    ExitCode::SUCCESS
}
