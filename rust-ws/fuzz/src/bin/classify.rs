//! rust-ws's classification of text messages, for the differential with python-ws: the fuzz
//! harnesses and bench/fuzz.sh run it; see bench/README.md, "Fuzzing".
//!
//! Twin: python-ws/fuzz/twins.py (its RustClassifier drives this binary).
//!
//! Two modes:
//! - `classify serve`: reads inputs from stdin, each a u32 little-endian length and that many
//!   bytes, and writes one JSON line per input (rust_ws_fuzz::classify, or `{"code":"not_utf8"}`).
//!   atheris keeps one process running and asks it about every input it tries.
//! - `classify PATH...`: every file (directories are walked one level) as one input; writes
//!   `{"path":..., "class":...}` per file, for replaying a corpus.

use std::io::{BufWriter, Read, Write};
use std::path::PathBuf;

use serde_json::{json, Value};

/// Larger than any message a server accepts by default (WS_MAX_MESSAGE_BYTES = 64 KiB); an input
/// over it is a framing error on the pipe, not a message.
const MAX_INPUT: usize = 16 << 20;

fn class_of(data: &[u8]) -> Value {
    match std::str::from_utf8(data) {
        Ok(text) => rust_ws_fuzz::classify(text),
        Err(_) => json!({"code": "not_utf8", "field": null, "msg": null}),
    }
}

fn serve() -> std::io::Result<()> {
    let mut stdin = std::io::stdin().lock();
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut len = [0u8; 4];
    loop {
        match stdin.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let n = u32::from_le_bytes(len) as usize;
        if n > MAX_INPUT {
            return Err(std::io::Error::other(format!("input of {n} bytes")));
        }
        let mut data = vec![0u8; n];
        stdin.read_exact(&mut data)?;
        writeln!(out, "{}", class_of(&data))?;
        out.flush()?;
    }
}

fn files(args: &[String]) -> std::io::Result<()> {
    let mut paths: Vec<PathBuf> = Vec::new();
    for a in args {
        let p = PathBuf::from(a);
        if p.is_dir() {
            let mut inner: Vec<PathBuf> = std::fs::read_dir(&p)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect();
            inner.sort();
            paths.extend(inner);
        } else {
            paths.push(p);
        }
    }
    let mut out = BufWriter::new(std::io::stdout().lock());
    for p in paths {
        let data = std::fs::read(&p)?;
        let line = json!({"path": p.display().to_string(), "class": class_of(&data)});
        writeln!(out, "{line}")?;
    }
    out.flush()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("serve") => serve(),
        Some(_) => files(&args),
        None => {
            eprintln!("usage: classify serve | classify PATH...");
            std::process::exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("classify: {e}");
        std::process::exit(1);
    }
}
