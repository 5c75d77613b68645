//! Integration tests of ml-dash: the library API and the `ml-dash` binary.
//!
//! One test binary (`cargo test --test it`) with a module per topic; `util` holds the shared
//! helpers (temp dirs, deterministic data, running the binary, inspecting packs).

#[path = "../../examples/support/adam.rs"]
mod adam;
mod background;
mod badinput;
mod batch;
mod chunking;
mod cli;
mod compression;
mod corruption;
mod crash;
mod dedup;
mod delta;
mod delta_review;
mod export;
mod export_hostile;
mod faults;
mod gc;
mod hostile;
mod ingest;
mod journal;
mod lazy;
mod parallel;
mod reads;
mod reads_adversarial;
mod recovery;
mod remote;
mod remote_gc;
mod retention;
mod serve;
mod tokens;
mod tree;
mod util;
mod verify;
mod versions;
