//! Integration tests of ml-dash: the library API and the `ml-dash` binary.
//!
//! One test binary (`cargo test --test it`) with a module per topic; `util` holds the shared
//! helpers (temp dirs, deterministic data, running the binary, inspecting packs).

mod cli;
mod dedup;
mod faults;
mod gc;
mod ingest;
mod recovery;
mod util;
mod verify;
mod versions;
mod badinput;
mod journal;
mod export;
