//! The `ml-dash` command line: argument parsing, output and exit codes (README.md has the
//! contract). Errors print one line on stderr and exit 2; `verify` (and other commands that
//! find damage) exit 1; a closed stdout (broken pipe) exits 0. `commands.rs` has one function
//! per command; everything they do is the `ml-dash` engine crate's.

mod commands;
mod progress;
mod server;

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[allow(
    clippy::doc_markdown,
    reason = "clap prints these doc comments as --help text, where backticks would show"
)]
#[derive(Parser)]
#[command(
    name = "ml-dash",
    version,
    about = "Content-addressed artifact store for ML experiments"
)]
pub struct Cli {
    /// Store directory.
    #[arg(
        long,
        global = true,
        env = "ML_DASH_ROOT",
        default_value = "./.ml-dash"
    )]
    pub root: PathBuf,
    /// Work against `ml-dash serve` at this URL instead of a local store (upload, list and
    /// download; no local store is needed).
    #[arg(long, global = true, env = "ML_DASH_SERVER")]
    pub server: Option<String>,
    /// Token for --server (default: ML_DASH_TOKEN, then the ml-dash client's tokens.json).
    #[arg(long, global = true, env = "ML_DASH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Args, Clone)]
pub struct ExpArgs {
    #[arg(long)]
    pub project: String,
    #[arg(long)]
    pub experiment: String,
    #[arg(long, default_value = "local")]
    pub namespace: String,
}

#[derive(Args, Clone, Default)]
pub struct ScopeArgs {
    #[arg(long)]
    pub project: Option<String>,
    #[arg(long)]
    pub experiment: Option<String>,
    #[arg(long)]
    pub namespace: Option<String>,
}

#[allow(
    clippy::doc_markdown,
    reason = "clap prints these doc comments as --help text, where backticks would show"
)]
#[derive(Subcommand)]
pub enum Cmd {
    /// Store files as new versions, all in one commit (FILE `-` reads standard input; then --to
    /// is required). A directory is stored as its tree under the prefix (`DIR/sub/file`).
    Upload {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        exp: ExpArgs,
        #[arg(long, default_value = "/")]
        prefix: String,
        /// Store under this name (relative; only with one FILE or DIR).
        #[arg(long)]
        to: Option<String>,
        #[arg(long)]
        description: Option<String>,
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// A JSON object.
        #[arg(long)]
        metadata: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List files (latest live version of each path unless --all-versions).
    List {
        #[command(flatten)]
        scope: ScopeArgs,
        /// Matches whole path segments: /models matches /models/x, not /models_old.
        #[arg(long)]
        prefix: Option<String>,
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Glob on the full path (/a/*.pth) or, without `/`, on the file name (*.pth).
        #[arg(long)]
        glob: Option<String>,
        #[arg(long)]
        all_versions: bool,
        /// Include deleted versions.
        #[arg(long)]
        deleted: bool,
        #[arg(long)]
        json: bool,
    },
    /// Write a file's bytes (verified) to OUT, `-` for standard output (default: ./FILENAME).
    Download {
        #[command(flatten)]
        exp: ExpArgs,
        /// /a/b/name
        path: String,
        #[arg(long)]
        version: Option<u32>,
        #[arg(short = 'o', long = "output")]
        output: Option<String>,
        /// Read the version from this remote (s3://BUCKET/PREFIX) without pulling the store:
        /// only its chunks are fetched (and cached under --root for later reads and pulls).
        #[cfg(feature = "remote")]
        #[arg(long = "from", value_name = "URL")]
        from: Option<String>,
        #[cfg(feature = "remote")]
        #[command(flatten)]
        remote: RemoteArgs,
        #[arg(long)]
        json: bool,
    },
    /// Soft-delete every version of a path (gc reclaims the space).
    Delete {
        #[command(flatten)]
        exp: ExpArgs,
        path: String,
        #[arg(long)]
        json: bool,
    },
    /// Change description, tags or metadata of the latest version of a path.
    Update {
        #[command(flatten)]
        exp: ExpArgs,
        path: String,
        #[arg(long)]
        description: Option<String>,
        /// Replaces all tags (repeat for several).
        #[arg(long = "tag")]
        tags: Vec<String>,
        #[arg(long)]
        metadata: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Check every pack, manifest and record; exit 1 and name damaged files if any.
    Verify {
        #[arg(long)]
        json: bool,
    },
    /// Reclaim space of deleted versions and unreferenced chunks.
    ///
    /// Packs holding bytes gc cannot account for as garbage are moved to quarantine/ instead
    /// of being deleted (verify names them); packs `repair` found holding chunks no manifest
    /// references are kept until --drop-unreferenced. Exits 1 if something was left alone.
    ///
    /// With --keep-last, --keep-tag or --keep-within, versions outside that policy are
    /// soft-deleted first (in the scope given by --namespace/--project/--experiment/--prefix,
    /// else everywhere); stored policies (`ml-dash retention`) apply everywhere else. The
    /// newest version of a file is always kept. --dry-run lists the versions that would go.
    ///
    /// With a remote URL, collects garbage on that remote instead: pack objects no live remote
    /// version needs are deleted, and packs at least --threshold garbage are rewritten. Run it
    /// after pushing the deletes and retention of the stores that use the remote. A pack found
    /// garbage is first marked (gc/ on the remote) and deleted by a later run once the mark is
    /// older than --grace (default 1h), so pushes running meanwhile lose nothing; --grace 0s
    /// deletes at once (only when nothing pushes to the remote).
    Gc {
        /// A remote to collect instead of the store: s3://BUCKET/PREFIX (or file:///DIR).
        url: Option<String>,
        #[command(flatten)]
        remote: RemoteArgs,
        /// Remote gc: how old a mark must be before the packs it names are deleted, e.g. 1h,
        /// 30m, 0s (default 1h).
        #[arg(long)]
        grace: Option<String>,
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        policy: PolicyArgs,
        #[command(flatten)]
        scope: RetentionScopeArgs,
        /// Apply only the policy given here, not the stored ones.
        #[arg(long)]
        no_stored_policies: bool,
        /// Rewrite a pack when at least this fraction of it is garbage.
        #[arg(long, default_value_t = 0.5)]
        threshold: f64,
        /// Also collect the packs `repair` kept because no manifest references their chunks.
        #[arg(long)]
        drop_unreferenced: bool,
        #[arg(long)]
        json: bool,
    },
    /// Retention policies stored in the store, applied by every gc.
    Retention {
        #[command(subcommand)]
        action: RetentionCmd,
    },
    /// Files, versions, logical / unique / stored bytes.
    Stats {
        #[command(flatten)]
        scope: ScopeArgs,
        #[arg(long)]
        json: bool,
    },
    /// Show an experiment's parameters (flattened keys).
    Params {
        #[command(flatten)]
        exp: ExpArgs,
        #[arg(long)]
        json: bool,
    },
    /// Show an experiment's log lines.
    Logs {
        #[command(flatten)]
        exp: ExpArgs,
        #[arg(long)]
        json: bool,
    },
    /// Show an experiment's metrics (all series, or --name N).
    Metrics {
        #[command(flatten)]
        exp: ExpArgs,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Copy files (latest live version of each path) into DIR, byte-exact and incremental.
    ///
    /// --layout tree: DIR/<project>/<experiment>/files/<prefix>/<filename>, plus the records in
    /// .ml-dash-records.json. --layout ml-dash: the ml-dash 0.11 local layout
    /// DIR/<namespace>/<project>/<experiment>/ with parameters, logs and metrics. Files already
    /// there are skipped; files export did not write are never touched. Exits 1 if something
    /// could not be exported (listed).
    Export {
        dir: PathBuf,
        #[command(flatten)]
        scope: ScopeArgs,
        #[arg(long, value_enum, default_value = "tree")]
        layout: LayoutArg,
        #[arg(long)]
        json: bool,
    },
    /// Import an ml-dash 0.11 local tree: files with their records, parameters, logs, metrics.
    ///
    /// DIR/<namespace>/<project>/<experiment>/ (or the older DIR/<project>/<experiment>/).
    /// Checksums are verified; damage is listed and exits 1 after everything else is imported.
    /// Importing twice adds nothing.
    Import {
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Send the store to S3-compatible storage: only what the remote lacks (deduplicated
    /// packs, then manifests and events). Re-running after an interruption resumes.
    ///
    /// --layout files instead writes one plain object per live version at
    /// PREFIX/files/<namespace>/<project>/<experiment>/<file id>/<filename> with its record in
    /// <file id>.json, skipping objects already there with the same SHA-256.
    #[cfg(feature = "remote")]
    Push {
        /// s3://BUCKET/PREFIX (or file:///DIR).
        url: String,
        #[command(flatten)]
        remote: RemoteArgs,
        #[arg(long, value_enum, default_value = "packs")]
        layout: PushLayout,
        #[arg(long)]
        json: bool,
    },
    /// Merge a pushed remote into this store (creating it if needed), fetching only the
    /// versions, events and chunks it lacks.
    #[cfg(feature = "remote")]
    Pull {
        /// s3://BUCKET/PREFIX (or file:///DIR).
        url: String,
        #[command(flatten)]
        remote: RemoteArgs,
        #[arg(long)]
        json: bool,
    },
    /// Show how the store cuts files into chunks, or change it for uploads from now on
    /// (--set hash16|fastcdc-2020; sizes not given stay as they are).
    Chunker {
        /// The algorithm new uploads use: hash16 (the default of new stores) or fastcdc-2020.
        #[arg(long)]
        set: Option<String>,
        /// Smallest chunk in bytes (with --set).
        #[arg(long, requires = "set")]
        min: Option<usize>,
        /// Average chunk in bytes (with --set; hash16 needs at least 512).
        #[arg(long, requires = "set")]
        avg: Option<usize>,
        /// Largest chunk in bytes (with --set).
        #[arg(long, requires = "set")]
        max: Option<usize>,
        #[arg(long)]
        json: bool,
    },
    /// Rebuild the index from packs, manifests and events, salvaging every record that
    /// proves itself; exit 1 and list what could not be recovered, if anything.
    Repair {
        #[arg(long)]
        json: bool,
    },
    /// Serve the store over HTTP: the ml-dash server API (REST and GraphQL) for the ml-dash
    /// client, `--server` of this CLI and the Python module. Loopback only unless a token
    /// exists; stops cleanly on SIGTERM/SIGINT.
    Serve {
        /// Address to listen on (a public address needs `ml-dash token add` first).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Push committed versions to this remote in the background (s3://BUCKET/PREFIX;
        /// endpoint and credentials from the AWS_* environment variables).
        #[arg(long)]
        remote: Option<String>,
        /// Seconds between a commit and the push that carries it (batching).
        #[arg(long, default_value_t = 2.0)]
        push_interval: f64,
        /// Uploads ingested at once (more wait their turn).
        #[arg(long, default_value_t = 8)]
        upload_slots: usize,
        /// Seconds requests in flight may still run after SIGTERM/SIGINT.
        #[arg(long, default_value_t = 30.0)]
        shutdown_grace: f64,
    },
    /// Access tokens for clients over HTTP: secrets are printed once and stored only
    /// as their SHA-256.
    Token {
        #[command(subcommand)]
        action: TokenCmd,
    },
}

/// `ml-dash token ...`
#[derive(Subcommand)]
pub enum TokenCmd {
    /// Make a token and print its secret (once: it is not stored).
    Add {
        name: String,
        /// A namespace the token may write to (repeat for several; none: every namespace).
        #[arg(long = "namespace")]
        namespaces: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// List tokens: name, namespaces, creation time (never secrets).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token (exit 1 if there is none by that name).
    Revoke { name: String },
}

/// `ml-dash retention ...`
#[derive(Subcommand)]
pub enum RetentionCmd {
    /// Store a policy for a scope (replacing the one stored for that same scope).
    Set {
        #[command(flatten)]
        scope: RetentionScopeArgs,
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// List the stored policies.
    Show {
        #[arg(long)]
        json: bool,
    },
    /// Remove the policy stored for exactly this scope (exit 1 if there is none).
    Clear {
        #[command(flatten)]
        scope: RetentionScopeArgs,
    },
}

/// What a retention policy keeps.
#[derive(Args, Clone, Default)]
pub struct PolicyArgs {
    /// Keep the newest N versions of each file.
    #[arg(long, value_name = "N")]
    pub keep_last: Option<u32>,
    /// Keep every version carrying this tag (repeat for several).
    #[arg(long = "keep-tag", value_name = "TAG")]
    pub keep_tags: Vec<String>,
    /// Keep every version uploaded within this long (90s, 30m, 12h, 7d, 2w).
    #[arg(long, value_name = "DURATION")]
    pub keep_within: Option<String>,
}

/// Where a retention policy applies (a project needs --namespace, an experiment --project).
#[derive(Args, Clone, Default)]
pub struct RetentionScopeArgs {
    #[arg(long)]
    pub namespace: Option<String>,
    #[arg(long)]
    pub project: Option<String>,
    #[arg(long)]
    pub experiment: Option<String>,
    /// Only files at or under this prefix.
    #[arg(long)]
    pub prefix: Option<String>,
}

/// How to reach a remote. Credentials default to the standard AWS environment variables and
/// are never printed.
#[allow(
    clippy::doc_markdown,
    reason = "clap prints these doc comments as --help text, where backticks would show"
)]
#[derive(Args, Clone)]
pub struct RemoteArgs {
    /// S3 endpoint URL, e.g. http://127.0.0.1:3900 (default: AWS_ENDPOINT_URL, else AWS).
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub endpoint: Option<String>,
    /// Default: AWS_REGION (then AWS_DEFAULT_REGION, then us-east-1).
    #[arg(long, env = "AWS_REGION")]
    pub region: Option<String>,
    #[arg(long, env = "AWS_ACCESS_KEY_ID", hide_env_values = true)]
    pub access_key_id: Option<String>,
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub secret_access_key: Option<String>,
}

/// `push --layout`.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum PushLayout {
    /// Content-addressed packs, manifests and events (what `pull` reads).
    Packs,
    /// One plain object per live version plus its JSON record.
    Files,
}

/// `export --layout`.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum LayoutArg {
    Tree,
    #[value(name = "ml-dash")]
    MlDash,
}

/// Exit code for "ran, and found damage" (verify).
pub const DAMAGE: i32 = 1;

fn main() {
    std::process::exit(run());
}

pub fn run() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    match commands::dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            if is_broken_pipe(&e) {
                return 0;
            }
            let mut msg = format!("error: {e}");
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg.push_str(&format!(": {c}"));
                }
            }
            let _ = writeln!(std::io::stderr(), "{}", shown(&msg));
            2
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            || matches!(c.downcast_ref::<ml_dash::Error>(), Some(ml_dash::Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// `s` with every control character escaped (`\u{1b}`), so that names and messages from a
/// store, a remote or an imported tree cannot drive the terminal.
pub fn shown(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}
