//! One function per command.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use ml_dash::Scope;
use ml_dash::{ExperimentKey, FileKey, validate};
use ml_dash::{FileRecord, ListFilter, NewVersion, Store};

use crate::progress::Progress;
use crate::{
    Cli, Cmd, DAMAGE, ExpArgs, LayoutArg, PolicyArgs, RetentionCmd, RetentionScopeArgs, ScopeArgs,
    TokenCmd, shown,
};

pub fn dispatch(cli: Cli) -> Result<i32> {
    let root = cli.root;
    if let Some(url) = &cli.server {
        return on_server(url, cli.token, cli.cmd);
    }
    match cli.cmd {
        Cmd::Upload {
            files,
            exp,
            prefix,
            to,
            description,
            tags,
            metadata,
            json,
        } => upload(
            &root,
            files,
            exp,
            prefix,
            to,
            description,
            tags,
            metadata,
            json,
        ),
        Cmd::List {
            scope,
            prefix,
            tags,
            glob,
            all_versions,
            deleted,
            json,
        } => list(
            &root,
            scope,
            prefix,
            tags,
            glob,
            all_versions,
            deleted,
            json,
        ),
        #[cfg(feature = "remote")]
        Cmd::Download {
            exp,
            path,
            version,
            output,
            from: Some(url),
            remote,
            json,
        } => download_from(&root, &url, &remote, &exp, &path, version, output, json),
        Cmd::Download {
            exp,
            path,
            version,
            output,
            json,
            ..
        } => download(&root, exp, &path, version, output, json),
        Cmd::Delete { exp, path, json } => {
            let key = file_key(&exp, &path)?;
            let store = open(&root)?;
            let hidden = store.delete(&key)?;
            let mut out = io::stdout().lock();
            for r in &hidden {
                if json {
                    print_json(&mut out, r)?;
                }
            }
            if !json {
                writeln!(
                    out,
                    "deleted {} ({} version{})",
                    shown(&key.full_path()),
                    hidden.len(),
                    if hidden.len() == 1 { "" } else { "s" }
                )?;
            }
            Ok(0)
        }
        Cmd::Update {
            exp,
            path,
            description,
            tags,
            metadata,
            json,
        } => {
            let key = file_key(&exp, &path)?;
            let metadata = metadata.map(|m| parse_metadata(&m)).transpose()?;
            let store = open(&root)?;
            let rec = store.resolve(&key, None)?;
            let tags = (!tags.is_empty()).then_some(tags);
            let changes = ml_dash::RecordChanges {
                description: description.map(Some),
                tags,
                metadata,
            };
            let rec = store.update(rec.id, &changes)?;
            print_record(&mut io::stdout().lock(), &rec, json)?;
            Ok(0)
        }
        Cmd::Verify { json } => {
            let rep = open(&root)?.verify()?;
            report(
                json,
                &rep,
                &[
                    ("DAMAGED ", &lines(&rep.damaged_files)),
                    ("problem: ", &lines(&rep.problems)),
                    ("note: ", &lines(&rep.notes)),
                ],
                format!(
                    "{}: {} packs, {} chunks, {} versions, {} events checked",
                    if rep.ok { "ok" } else { "DAMAGE FOUND" },
                    rep.packs,
                    rep.chunks,
                    rep.versions,
                    rep.events
                ),
            )?;
            Ok(if rep.ok { 0 } else { DAMAGE })
        }
        Cmd::Gc {
            url,
            remote,
            grace,
            dry_run,
            policy,
            scope,
            no_stored_policies,
            threshold,
            drop_unreferenced,
            json,
        } => {
            if !(0.0..=1.0).contains(&threshold) {
                bail!("--threshold must be between 0 and 1");
            }
            if let Some(url) = url {
                if policy_of(&policy)?.is_some()
                    || scope_given(&scope)
                    || no_stored_policies
                    || drop_unreferenced
                {
                    bail!(
                        "retention and --drop-unreferenced apply to a store: run them there, push, then gc the remote"
                    );
                }
                return remote_gc(
                    &root,
                    &url,
                    &remote,
                    grace.as_deref(),
                    threshold,
                    dry_run,
                    json,
                );
            }
            if grace.is_some() {
                bail!("--grace applies to the gc of a remote (give its URL)");
            }
            let mut o = ml_dash::GcOptions::new()
                .dry_run(dry_run)
                .rewrite_threshold(threshold)
                .drop_unreferenced(drop_unreferenced)
                .stored_policies(!no_stored_policies);
            match policy_of(&policy)? {
                Some(p) => o = o.retention(retention_scope(&scope), p),
                None if scope_given(&scope) => {
                    bail!(
                        "--namespace/--project/--experiment/--prefix scope a policy: give --keep-last, --keep-tag or --keep-within"
                    )
                }
                None => {}
            }
            let rep = open(&root)?.gc(&o)?;
            let verb = if dry_run { "would free" } else { "freed" };
            if !json {
                let mut out = io::stdout().lock();
                let what = if dry_run { "would drop" } else { "dropped" };
                for r in &rep.retention_dropped {
                    writeln!(
                        out,
                        "retention {what} {} v{} ({} bytes, uploaded {})",
                        shown(&r.key().display()),
                        r.version,
                        r.size_bytes,
                        r.uploaded_at
                    )?;
                }
            }
            let mut summary = format!(
                "{verb} {} bytes: {} deleted versions, {} garbage chunks ({} bytes), {} packs deleted, {} rewritten; {} garbage bytes left below the threshold; {} chunks kept as delta bases",
                rep.reclaimed_bytes,
                rep.deleted_versions,
                rep.garbage_chunks,
                rep.garbage_bytes,
                rep.packs_deleted,
                rep.packs_rewritten,
                rep.remaining_garbage_bytes,
                rep.kept_as_delta_bases
            );
            if rep.held_packs > 0 {
                summary.push_str(&format!(
                    "; {} packs kept for `repair`'s unreferenced chunks (--drop-unreferenced collects them)",
                    rep.held_packs
                ));
            }
            if rep.packs_quarantined > 0 {
                summary.push_str(&format!(
                    "; {} packs moved to quarantine/",
                    rep.packs_quarantined
                ));
            }
            report(json, &rep, &[("problem: ", &lines(&rep.problems))], summary)?;
            Ok(if rep.problems.is_empty() { 0 } else { DAMAGE })
        }
        Cmd::Retention { action } => retention(&root, action),
        Cmd::Stats { scope, json } => {
            let st = open(&root)?.stats(&scope_of(&scope)?)?;
            let mut out = io::stdout().lock();
            if json {
                writeln!(out, "{}", serde_json::to_string(&st)?)?;
            } else {
                writeln!(out, "files            {}", st.files)?;
                writeln!(
                    out,
                    "versions         {} (+{} deleted)",
                    st.versions, st.deleted_versions
                )?;
                writeln!(out, "logical bytes    {}", st.logical_bytes)?;
                writeln!(out, "unique bytes     {}", st.unique_bytes)?;
                writeln!(out, "stored bytes     {}", st.stored_bytes)?;
                writeln!(out, "chunks           {}", st.chunks)?;
                writeln!(out, "saving ratio     {:.2}x", st.saving_ratio)?;
                writeln!(
                    out,
                    "packs            {} ({} bytes)",
                    st.packs, st.pack_bytes
                )?;
                writeln!(
                    out,
                    "codecs           whole {} / byte planes {} / delta {} bytes",
                    st.codec_bytes.whole, st.codec_bytes.planes, st.codec_bytes.delta
                )?;
            }
            Ok(0)
        }
        Cmd::Params { exp, json } => {
            let j = open(&root)?.journal(&exp_key(&exp)?)?;
            let mut out = io::stdout().lock();
            match (json, j.params) {
                (true, p) => writeln!(out, "{}", serde_json::to_string(&p.unwrap_or_default())?)?,
                (false, Some(p)) => {
                    for (k, v) in &p.data {
                        writeln!(out, "{} = {v}", shown(k))?;
                    }
                }
                (false, None) => {}
            }
            Ok(0)
        }
        Cmd::Logs { exp, json } => {
            let j = open(&root)?.journal(&exp_key(&exp)?)?;
            let mut out = io::stdout().lock();
            for l in &j.logs {
                if json {
                    writeln!(out, "{}", serde_json::to_string(l)?)?;
                } else {
                    writeln!(
                        out,
                        "{} {:>5} {:>8} {}",
                        shown(&l.timestamp),
                        l.sequence_number,
                        shown(&l.level.to_uppercase()),
                        shown_lines(&l.message)
                    )?;
                }
            }
            Ok(0)
        }
        Cmd::Metrics { exp, name, json } => {
            let j = open(&root)?.journal(&exp_key(&exp)?)?;
            let mut out = io::stdout().lock();
            for (n, points) in &j.metrics {
                if name.as_ref().is_some_and(|want| want != n) {
                    continue;
                }
                for p in points {
                    if json {
                        let line = serde_json::json!({"name": n, "index": p.index, "data": p.data, "createdAt": p.created_at});
                        writeln!(out, "{line}")?;
                    } else {
                        let fields: Vec<String> = p
                            .data
                            .iter()
                            .filter(|(k, _)| *k != "_ts")
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect();
                        writeln!(
                            out,
                            "{}[{}] {}",
                            shown(n),
                            p.index,
                            shown(&fields.join(" "))
                        )?;
                    }
                }
            }
            Ok(0)
        }
        Cmd::Export {
            dir,
            scope,
            layout,
            json,
        } => export(&root, &dir, &scope, layout, json),
        Cmd::Import { dir, json } => import(&root, &dir, json),
        #[cfg(feature = "remote")]
        Cmd::Push {
            url,
            remote,
            layout,
            json,
        } => push(&root, &url, &remote, layout, json),
        #[cfg(feature = "remote")]
        Cmd::Pull { url, remote, json } => pull(&root, &url, &remote, json),
        Cmd::Token { action } => token(&root, action),
        Cmd::Serve {
            listen,
            remote,
            push_interval,
            upload_slots,
            shutdown_grace,
        } => {
            let secs = |what: &str, s: f64| {
                if s.is_finite() && (0.0..=86_400.0).contains(&s) {
                    Ok(std::time::Duration::from_secs_f64(s))
                } else {
                    Err(anyhow::anyhow!("--{what} must be 0 to 86400 seconds"))
                }
            };
            let mut cfg = ml_dash_server::ServeConfig::new(&root, listen);
            cfg.remote = remote;
            cfg.push_interval = secs("push-interval", push_interval)?;
            cfg.shutdown_grace = secs("shutdown-grace", shutdown_grace)?;
            cfg.upload_slots = upload_slots.max(1);
            ml_dash_server::serve(cfg)?;
            Ok(0)
        }
        Cmd::Chunker {
            set,
            min,
            avg,
            max,
            json,
        } => {
            let store = open(&root)?;
            let mut c = store.chunker();
            if let Some(name) = set {
                let Some(algorithm) = ml_dash::ChunkAlgorithm::from_name(&name) else {
                    bail!("unknown chunker {name:?}: hash16 or fastcdc-2020");
                };
                c = ml_dash::ChunkerConfig {
                    algorithm,
                    min: min.unwrap_or(c.min),
                    avg: avg.unwrap_or(c.avg),
                    max: max.unwrap_or(c.max),
                };
                store.set_chunker(c)?;
            }
            let mut out = io::stdout().lock();
            if json {
                writeln!(out, "{}", c.to_json())?;
            } else {
                writeln!(
                    out,
                    "{} (min {}, avg {}, max {} bytes)",
                    c.algorithm.name(),
                    c.min,
                    c.avg,
                    c.max
                )?;
            }
            Ok(0)
        }
        Cmd::Repair { json } => {
            let rep = open(&root)?.rebuild_index()?;
            let mut summary = format!(
                "rebuilt index: {} packs, {} chunks, {} versions, {} events",
                rep.packs, rep.chunks, rep.versions, rep.events
            );
            if rep.salvaged_chunks > 0 {
                summary.push_str(&format!(
                    "; {} chunks copied back from quarantine/",
                    rep.salvaged_chunks
                ));
            }
            report(
                json,
                &rep,
                &[
                    ("damaged: ", &lines(&rep.damaged)),
                    ("UNREADABLE ", &lines(&rep.unreadable_versions)),
                    ("LOST ", &lines(&rep.lost_versions)),
                    ("unreferenced: ", &lines(&rep.unreferenced)),
                ],
                summary,
            )?;
            Ok(if rep.is_clean() { 0 } else { DAMAGE })
        }
    }
}

/// A multi-line text with its control characters escaped, line breaks and tabs kept.
fn shown_lines(s: &str) -> String {
    s.split('\n')
        .map(|l| {
            l.split('\t')
                .map(|p| shown(p).into_owned())
                .collect::<Vec<_>>()
                .join("\t")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Each item of a report's list, as something to print.
fn lines<T: std::fmt::Display>(v: &[T]) -> Vec<&dyn std::fmt::Display> {
    v.iter().map(|x| x as &dyn std::fmt::Display).collect()
}

/// Print an operation's report: with `--json` one JSON line; else every line of each list with
/// its label (e.g. `problem: `), then the summary line.
fn report(
    json: bool,
    rep: &impl serde::Serialize,
    lists: &[(&str, &[&dyn std::fmt::Display])],
    summary: String,
) -> Result<()> {
    let mut out = io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string(rep)?)?;
    } else {
        for (label, lines) in lists {
            for l in *lines {
                writeln!(out, "{label}{}", shown(&l.to_string()))?;
            }
        }
        writeln!(out, "{}", shown(&summary))?;
    }
    Ok(())
}

/// Store options from the environment: `ML_DASH_PACK_TARGET` (bytes per pack, for tests
/// that want many small packs) and `ML_DASH_DELTA_DEPTH` (longest delta chain for new
/// uploads; 0 turns deltas off).
fn token(root: &Path, action: TokenCmd) -> Result<i32> {
    let mut out = io::stdout().lock();
    match action {
        TokenCmd::Add {
            name,
            namespaces,
            json,
        } => {
            let store = Store::open_with(root, options())?;
            let secret = store.add_token(&name, &namespaces)?;
            if json {
                let v =
                    serde_json::json!({"name": name, "namespaces": namespaces, "token": secret});
                writeln!(out, "{v}")?;
            } else {
                writeln!(out, "{secret}")?;
            }
        }
        TokenCmd::List { json } => {
            for t in open(root)?.tokens()? {
                if json {
                    writeln!(out, "{}", serde_json::to_string(&t)?)?;
                } else {
                    let ns = match t.namespaces.is_empty() {
                        true => "*".to_string(),
                        false => t.namespaces.join(","),
                    };
                    writeln!(out, "{}\t{ns}\t{}", t.name, t.created_at)?;
                }
            }
        }
        TokenCmd::Revoke { name } => {
            if !open(root)?.revoke_token(&name)? {
                eprintln!("error: no token named {name:?}");
                return Ok(1);
            }
        }
    }
    Ok(0)
}

fn options() -> ml_dash::StoreOptions {
    let mut o = ml_dash::StoreOptions::default();
    let var = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = var("ML_DASH_PACK_TARGET") {
        o = o.pack_target(n);
    }
    if let Some(d) = var("ML_DASH_DELTA_DEPTH") {
        o = o.delta_depth(u8::try_from(d).unwrap_or(u8::MAX));
    }
    o
}

/// Open an existing store (read commands never create one).
fn open(root: &Path) -> Result<Store> {
    Ok(Store::open_existing_with(root, options())?)
}

/// `upload`, `list` and `download` against `ml-dash serve`.
fn on_server(url: &str, token: Option<String>, cmd: Cmd) -> Result<i32> {
    let s = crate::server::Server::new(url, token)?;
    match cmd {
        Cmd::Upload {
            files,
            exp,
            prefix,
            to,
            description,
            tags,
            metadata,
            json,
        } => {
            exp_key(&exp)?;
            ml_dash::validate::check_tags(&tags)?;
            let metadata = metadata
                .map(|m| parse_metadata(&m))
                .transpose()?
                .unwrap_or(serde_json::Value::Null);
            crate::server::upload(
                &s,
                &files,
                &exp,
                &prefix,
                to.as_deref(),
                description.as_deref(),
                &tags,
                &metadata,
                json,
            )
        }
        Cmd::List {
            scope,
            prefix,
            tags,
            glob,
            all_versions,
            deleted,
            json,
        } => {
            scope_of(&scope)?;
            crate::server::list(
                &s,
                &scope,
                prefix.as_deref(),
                &tags,
                glob.as_deref(),
                all_versions,
                deleted,
                json,
            )
        }
        Cmd::Download {
            exp,
            path,
            version,
            output,
            json,
            ..
        } => {
            file_key(&exp, &path)?;
            crate::server::download(&s, &exp, &path, version, output.as_deref(), json)
        }
        _ => bail!(
            "--server works with upload, list and download; run other commands where the store is"
        ),
    }
}

fn exp_key(e: &ExpArgs) -> Result<ExperimentKey> {
    Ok(ExperimentKey::new(&e.namespace, &e.project, &e.experiment)?)
}

fn file_key(e: &ExpArgs, full: &str) -> Result<FileKey> {
    let (p, name) = validate::split_full(full)?;
    Ok(exp_key(e)?.file(p, name))
}

/// The retention policy of the command line, if any rule was given.
fn policy_of(p: &PolicyArgs) -> Result<Option<ml_dash::RetentionPolicy>> {
    if p.keep_last.is_none() && p.keep_tags.is_empty() && p.keep_within.is_none() {
        return Ok(None);
    }
    let policy = ml_dash::RetentionPolicy {
        keep_last: p.keep_last,
        keep_tags: p.keep_tags.clone(),
        keep_within_secs: p
            .keep_within
            .as_deref()
            .map(validate::parse_duration)
            .transpose()?,
    };
    policy.check()?;
    Ok(Some(policy))
}

fn retention_scope(s: &RetentionScopeArgs) -> ml_dash::RetentionScope {
    ml_dash::RetentionScope {
        namespace: s.namespace.clone(),
        project: s.project.clone(),
        experiment: s.experiment.clone(),
        prefix: s.prefix.clone(),
    }
}

fn scope_given(s: &RetentionScopeArgs) -> bool {
    s.namespace.is_some() || s.project.is_some() || s.experiment.is_some() || s.prefix.is_some()
}

fn retention(root: &Path, action: RetentionCmd) -> Result<i32> {
    let store = open(root)?;
    let mut out = io::stdout().lock();
    match action {
        RetentionCmd::Set { scope, policy } => {
            let Some(p) = policy_of(&policy)? else {
                bail!("give --keep-last, --keep-tag or --keep-within");
            };
            let scope = retention_scope(&scope);
            store.set_retention(scope.clone(), p)?;
            writeln!(out, "retention set for {}", shown(&scope.display()))?;
            Ok(0)
        }
        RetentionCmd::Show { json } => {
            let all = store.retention_policies()?;
            if json {
                writeln!(out, "{}", serde_json::to_string(&all)?)?;
                return Ok(0);
            }
            for sp in &all {
                let p = &sp.policy;
                let mut rules = Vec::new();
                if let Some(n) = p.keep_last {
                    rules.push(format!("keep-last {n}"));
                }
                for t in &p.keep_tags {
                    rules.push(format!("keep-tag {}", shown(t)));
                }
                if let Some(w) = p.keep_within_secs {
                    rules.push(format!("keep-within {}", validate::format_duration(w)));
                }
                writeln!(out, "{}  {}", shown(&sp.scope.display()), rules.join(", "))?;
            }
            Ok(0)
        }
        RetentionCmd::Clear { scope } => {
            let scope = retention_scope(&scope);
            if store.clear_retention(scope.clone())? {
                writeln!(out, "retention cleared for {}", shown(&scope.display()))?;
                Ok(0)
            } else {
                writeln!(
                    out,
                    "no retention policy stored for {}",
                    shown(&scope.display())
                )?;
                Ok(1)
            }
        }
    }
}

fn scope_of(s: &ScopeArgs) -> Result<Scope> {
    for (what, v) in [
        ("namespace", &s.namespace),
        ("project", &s.project),
        ("experiment", &s.experiment),
    ] {
        if let Some(v) = v {
            validate::segment(what, v)?;
        }
    }
    Ok(Scope {
        namespace: s.namespace.clone(),
        project: s.project.clone(),
        experiment: s.experiment.clone(),
    })
}

fn parse_metadata(s: &str) -> Result<serde_json::Value> {
    let v: serde_json::Value =
        serde_json::from_str(s).with_context(|| format!("--metadata is not valid JSON: {s:?}"))?;
    ml_dash::validate::check_metadata(&v)?;
    Ok(v)
}

fn print_json(out: &mut impl Write, r: &FileRecord) -> Result<()> {
    writeln!(out, "{}", serde_json::to_string(r)?)?;
    Ok(())
}

/// What `list` prints: one line (or JSON object) per version.
pub(crate) fn print_list(out: &mut impl Write, recs: &[FileRecord], json: bool) -> Result<()> {
    for r in recs {
        if json {
            print_json(out, r)?;
        } else {
            writeln!(
                out,
                "{}\tv{}\t{}\t{}\t{}{}{}",
                shown(&format!(
                    "{}/{}/{}{}",
                    r.namespace,
                    r.project,
                    r.experiment,
                    r.full_path()
                )),
                r.version,
                r.size_bytes,
                &r.checksum.to_hex()[..16],
                shown(&r.uploaded_at),
                if r.tags.is_empty() {
                    String::new()
                } else {
                    format!("\t[{}]", shown(&r.tags.join(",")))
                },
                if r.deleted_at.is_some() {
                    "\tDELETED"
                } else {
                    ""
                }
            )?;
        }
    }
    Ok(())
}

/// What `download` prints for a file written to `dest`: the record with `--json`, else a line
/// on a terminal (nothing when stdout is a pipe).
pub(crate) fn print_downloaded(r: &FileRecord, dest: &Path, json: bool) -> Result<()> {
    if json {
        print_json(&mut io::stdout().lock(), r)?;
    } else if io::IsTerminal::is_terminal(&io::stdout()) {
        writeln!(
            io::stdout().lock(),
            "{} -> {} ({} bytes, sha256 {})",
            shown(&r.full_path()),
            shown(&dest.display().to_string()),
            r.size_bytes,
            r.checksum
        )?;
    }
    Ok(())
}

pub(crate) fn print_record(out: &mut impl Write, r: &FileRecord, json: bool) -> Result<()> {
    if json {
        return print_json(out, r);
    }
    writeln!(
        out,
        "{}  v{}  {} bytes  sha256:{}  new {} bytes{}",
        shown(&format!(
            "{}/{}/{}{}",
            r.namespace,
            r.project,
            r.experiment,
            r.full_path()
        )),
        r.version,
        r.size_bytes,
        r.checksum,
        r.new_bytes,
        if r.tags.is_empty() {
            String::new()
        } else {
            format!("  [{}]", shown(&r.tags.join(", ")))
        }
    )?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn upload(
    root: &Path,
    files: Vec<PathBuf>,
    exp: ExpArgs,
    prefix: String,
    to: Option<String>,
    description: Option<String>,
    tags: Vec<String>,
    metadata: Option<String>,
    json: bool,
) -> Result<i32> {
    // Check every argument and every source before storing anything.
    let ek = exp_key(&exp)?;
    let prefix = validate::prefix(&prefix)?;
    let metadata = metadata
        .map(|m| parse_metadata(&m))
        .transpose()?
        .unwrap_or(serde_json::Value::Null);
    ml_dash::validate::check_tags(&tags)?;
    if to.is_some() && files.len() > 1 {
        bail!("--to names one file, but {} files were given", files.len());
    }
    let stdin_count = files.iter().filter(|f| f.as_os_str() == "-").count();
    if stdin_count > 1 {
        bail!("standard input (`-`) can be given only once");
    }
    let mut plan = Vec::new();
    for f in &files {
        let name = match (&to, f.as_os_str() == "-") {
            (Some(t), _) => t.clone(),
            (None, true) => bail!("uploading standard input (`-`) needs --to NAME"),
            (None, false) => f
                .file_name()
                .with_context(|| format!("{} has no file name", f.display()))?
                .to_str()
                .with_context(|| {
                    format!(
                        "{}: file name is not UTF-8; give a name with --to",
                        f.display()
                    )
                })?
                .to_string(),
        };
        if f.as_os_str() != "-" {
            let m = std::fs::metadata(f).with_context(|| format!("cannot read {}", f.display()))?;
            if m.is_dir() {
                // A directory (a `save_pretrained` checkpoint, one shard per rank): its tree
                // under the prefix, `DIR/sub/file`, in the same commit as everything else.
                let files = validate::walk_tree(f)?;
                if files.is_empty() {
                    bail!("{} holds no file to upload", f.display());
                }
                for (rel, path) in files {
                    let (dir, filename) = validate::target(&prefix, &format!("{name}/{rel}"))?;
                    plan.push((path, ek.file(dir, filename)));
                }
                continue;
            }
            if !m.is_file() {
                bail!(
                    "{} is not a regular file (FIFO, socket or device)",
                    f.display()
                );
            }
        }
        let (dir, filename) = validate::target(&prefix, &name)?;
        plan.push((f.clone(), ek.file(dir, filename)));
    }
    // One commit for all the files: they become visible together, or none does.
    let store = Store::open_with(root, options())?;
    let mut batch = store.upload_batch();
    for (src, key) in &plan {
        let v = NewVersion {
            description: description.clone(),
            tags: tags.clone(),
            metadata: metadata.clone(),
        };
        if src.as_os_str() == "-" {
            batch.reader(io::stdin(), key.clone(), v);
        } else {
            batch.file(src, key.clone(), v);
        }
    }
    // A bar per file, as it is read (the previous one is cleared when the next starts).
    let mut bar: Option<Progress> = None;
    batch.on_file_start(move |i, key| {
        bar.take();
        let src = &plan[i].0;
        let total = match src.as_os_str() == "-" {
            true => None,
            false => std::fs::metadata(src).map(|m| m.len()).ok(),
        };
        let p = Progress::start(&key.filename, total, !json);
        let counter = p.counter.clone();
        bar = Some(p);
        Some(counter)
    });
    let records = batch.commit()?;
    let mut out = io::stdout().lock();
    for rec in &records {
        print_record(&mut out, rec, json)?;
    }
    Ok(0)
}

#[allow(clippy::too_many_arguments)]
fn list(
    root: &Path,
    scope: ScopeArgs,
    prefix: Option<String>,
    tags: Vec<String>,
    glob: Option<String>,
    all_versions: bool,
    deleted: bool,
    json: bool,
) -> Result<i32> {
    let glob = glob
        .map(|g| ml_dash::Glob::new(&g))
        .transpose()
        .context("bad --glob pattern")?;
    let f = ListFilter {
        scope: scope_of(&scope)?,
        prefix: prefix.map(|p| validate::prefix(&p)).transpose()?,
        tags,
        glob,
        all_versions,
        include_deleted: deleted,
    };
    let store = open(root)?;
    let recs = store.list(&f)?;
    let mut out = io::stdout().lock();
    if json {
        // Each record, and how it is stored (`storage`: stored bytes, codecs, delta depth).
        for r in &recs {
            let mut v = serde_json::to_value(r)?;
            v["storage"] = serde_json::to_value(store.version_storage(r)?)?;
            writeln!(out, "{}", serde_json::to_string(&v)?)?;
        }
    } else {
        print_list(&mut out, &recs, json)?;
    }
    Ok(0)
}

fn download(
    root: &Path,
    exp: ExpArgs,
    full: &str,
    version: Option<u32>,
    output: Option<String>,
    json: bool,
) -> Result<i32> {
    let key = file_key(&exp, full)?;
    let store = open(root)?;
    if version.is_none()
        && output.as_deref() != Some("-")
        && matches!(store.resolve(&key, None), Err(ml_dash::Error::NotFound(_)))
        && download_tree(&store, &exp, full, output.as_deref(), json)?.is_some()
    {
        return Ok(0);
    }
    let rec = match output.as_deref() {
        Some("-") => {
            let mut so = io::BufWriter::with_capacity(1 << 20, io::stdout());
            store.download_to(&key, version, &mut so)?
        }
        other => {
            let dest = PathBuf::from(other.unwrap_or(&key.filename));
            let r = store.download(&key, version, &dest)?;
            print_downloaded(&r, &dest, json)?;
            r
        }
    };
    let _ = rec;
    Ok(0)
}

/// `download --from URL`: one version read straight from a remote (only its chunks fetched),
/// written to a temporary file and renamed into place once its SHA-256 matches the record.
#[cfg(feature = "remote")]
#[allow(
    clippy::too_many_arguments,
    reason = "the command's arguments, each distinct"
)]
fn download_from(
    root: &Path,
    url: &str,
    a: &crate::RemoteArgs,
    exp: &ExpArgs,
    full: &str,
    version: Option<u32>,
    output: Option<String>,
    json: bool,
) -> Result<i32> {
    use sha2::Digest as _;
    let key = file_key(exp, full)?;
    let remote = std::sync::Arc::new(connect(url, a)?);
    let store = Store::open_with(root, options())?;
    let mut f = store.open_remote(remote, &key, version)?;
    let rec = f.record().clone();
    let to_stdout = output.as_deref() == Some("-");
    let dest = PathBuf::from(output.unwrap_or_else(|| rec.filename.clone()));
    let tmp = dest.with_file_name(format!(
        ".{}.tmp-{}",
        dest.file_name()
            .map_or("download".into(), |n| n.to_string_lossy()),
        std::process::id()
    ));
    // A device or a pipe (`/dev/null`) is written in place: it cannot be renamed over.
    let special = if to_stdout {
        None
    } else {
        ml_dash::special_destination(&dest)?
    };
    let in_place = to_stdout || special.is_some();
    let mut out: Box<dyn Write> = if to_stdout {
        Box::new(io::BufWriter::with_capacity(1 << 20, io::stdout()))
    } else if let Some(f) = special {
        Box::new(f)
    } else {
        Box::new(
            std::fs::File::create(&tmp)
                .with_context(|| format!("cannot write {}", tmp.display()))?,
        )
    };
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    let copied = (|| -> Result<()> {
        loop {
            let n = io::Read::read(&mut f, &mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            out.write_all(&buf[..n])?;
        }
        out.flush()?;
        let got: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        if got != rec.checksum.to_string() {
            bail!(
                "{} from {url}: the bytes hash to {got}, the record says {}",
                key.display(),
                rec.checksum
            );
        }
        Ok(())
    })();
    drop(out);
    if let Err(e) = copied {
        if !in_place {
            let _ = std::fs::remove_file(&tmp);
        }
        return Err(e);
    }
    if !to_stdout {
        if !in_place {
            std::fs::rename(&tmp, &dest)
                .with_context(|| format!("cannot write {}", dest.display()))?;
        }
        print_downloaded(&rec, &dest, json)?;
    }
    Ok(0)
}

/// `download PREFIX`: when no file has the path but files lie under it, the latest version of
/// each, written as a tree under `out` (default: the prefix's last name), each checked and
/// renamed into place as a single download is. `None` when nothing lies under it.
fn download_tree(
    store: &Store,
    exp: &ExpArgs,
    full: &str,
    out: Option<&str>,
    json: bool,
) -> Result<Option<usize>> {
    let Ok(prefix) = validate::prefix(full) else {
        return Ok(None);
    };
    let ek = exp_key(exp)?;
    let recs = store.list(&ListFilter {
        scope: Scope {
            namespace: Some(ek.namespace.clone()),
            project: Some(ek.project.clone()),
            experiment: Some(ek.experiment.clone()),
        },
        prefix: Some(prefix.clone()),
        ..Default::default()
    })?;
    if recs.is_empty() {
        return Ok(None);
    }
    let base = PathBuf::from(
        out.unwrap_or_else(|| prefix.rsplit('/').find(|s| !s.is_empty()).unwrap_or(".")),
    );
    for r in &recs {
        // The record's path below the prefix (names were validated when stored: no `..`).
        let rel_dir = r.path[prefix.len()..].trim_start_matches('/');
        let dir = if rel_dir.is_empty() {
            base.clone()
        } else {
            base.join(rel_dir)
        };
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot make {}", dir.display()))?;
        let dest = dir.join(&r.filename);
        let got = store.download(&r.key(), Some(r.version), &dest)?;
        print_downloaded(&got, &dest, json)?;
    }
    Ok(Some(recs.len()))
}

fn export(
    root: &Path,
    dir: &Path,
    scope: &ScopeArgs,
    layout: LayoutArg,
    json: bool,
) -> Result<i32> {
    use ml_dash::{ExportLayout as Layout, ExportPlan};
    let layout = match layout {
        LayoutArg::Tree => Layout::Tree,
        LayoutArg::MlDash => Layout::MlDash,
    };
    let store = open(root)?;
    let plan = ExportPlan::new(&store, &scope_of(scope)?, layout)?;
    let sum = {
        let p = Progress::start("export", Some(plan.total_bytes()), !json);
        plan.run(&store, dir, Some(&p.counter))?
    };
    report(
        json,
        &sum,
        &[("problem: ", &lines(&sum.problems))],
        format!(
            "exported {} files of {} experiments to {}: {} written ({} bytes), {} already there{}",
            sum.files,
            sum.experiments,
            dir.display(),
            sum.written,
            sum.bytes,
            sum.skipped,
            if sum.removed > 0 {
                format!(", {} no longer exported removed", sum.removed)
            } else {
                String::new()
            }
        ),
    )?;
    Ok(if sum.problems.is_empty() { 0 } else { DAMAGE })
}

fn import(root: &Path, dir: &Path, json: bool) -> Result<i32> {
    let store = Store::open_with(root, options())?;
    let sum = {
        let p = Progress::start("import", None, !json);
        ml_dash::import(&store, dir, Some(&p.counter))?
    };
    report(
        json,
        &sum,
        &[("problem: ", &lines(&sum.problems))],
        format!(
            "imported {} experiments: {} of {} files ({} bytes; {} already present, {} deleted not imported), {} parameter sets, {} log lines, {} metric points",
            sum.experiments,
            sum.imported,
            sum.files,
            sum.bytes,
            sum.skipped,
            sum.deleted,
            sum.params,
            sum.logs,
            sum.metric_points
        ),
    )?;
    Ok(if sum.problems.is_empty() { 0 } else { DAMAGE })
}

#[cfg(feature = "remote")]
fn connect(url: &str, a: &crate::RemoteArgs) -> Result<ml_dash::Remote> {
    let cfg = ml_dash::RemoteConfig {
        url: url.to_string(),
        endpoint: a.endpoint.clone(),
        access_key_id: a.access_key_id.clone(),
        secret_access_key: a.secret_access_key.clone(),
        region: a.region.clone(),
    };
    Ok(ml_dash::Remote::open(&cfg)?)
}

#[cfg(not(feature = "remote"))]
fn remote_gc(
    _root: &Path,
    _url: &str,
    _a: &crate::RemoteArgs,
    _grace: Option<&str>,
    _threshold: f64,
    _dry_run: bool,
    _json: bool,
) -> Result<i32> {
    bail!("this ml-dash was built without remotes (cargo feature `remote`)")
}

/// `gc URL`: collect garbage on a remote, with the store's cache of it when there is a store.
#[cfg(feature = "remote")]
fn remote_gc(
    root: &Path,
    url: &str,
    a: &crate::RemoteArgs,
    grace: Option<&str>,
    threshold: f64,
    dry_run: bool,
    json: bool,
) -> Result<i32> {
    let remote = connect(url, a)?;
    let mut o = ml_dash::RemoteGcOptions::new()
        .dry_run(dry_run)
        .rewrite_threshold(threshold);
    if let Some(g) = grace {
        o = o.grace(std::time::Duration::from_secs(validate::parse_duration(g)?));
    }
    let rep = if root.join("FORMAT").exists() {
        open(root)?.gc_remote(&remote, &o)?
    } else {
        remote.gc(&o)?
    };
    let (deleted, marked) = if dry_run {
        ("would delete", "would mark")
    } else {
        ("deleted", "marked")
    };
    let summary = format!(
        "{}: {} live versions ({} live bytes), {} deleted versions; {deleted} {} packs ({} bytes), {} {} packs (new packs: {} bytes); {marked} {} packs ({} bytes) for deletion after {}; {} packs ({} bytes) marked earlier wait for their grace period; {} garbage packs are younger than it; {} garbage bytes left below the threshold",
        rep.remote,
        rep.versions,
        rep.live_bytes,
        rep.deleted_versions,
        rep.packs_deleted,
        rep.bytes_deleted,
        if dry_run { "would rewrite" } else { "rewrote" },
        rep.packs_rewritten,
        rep.bytes_uploaded,
        rep.packs_marked,
        rep.bytes_marked,
        ml_dash::validate::format_duration(o.grace.as_secs()),
        rep.packs_pending,
        rep.bytes_pending,
        rep.packs_young,
        rep.garbage_bytes_left
    );
    report(json, &rep, &[("problem: ", &lines(&rep.problems))], summary)?;
    Ok(if rep.problems.is_empty() { 0 } else { DAMAGE })
}

#[cfg(feature = "remote")]
fn push(
    root: &Path,
    url: &str,
    a: &crate::RemoteArgs,
    layout: crate::PushLayout,
    json: bool,
) -> Result<i32> {
    let store = open(root)?;
    let remote = connect(url, a)?;
    match layout {
        crate::PushLayout::Packs => {
            let rep = {
                let p = Progress::start("push", None, !json);
                store.push(&remote, Some(&p.counter))?
            };
            report(
                json,
                &rep,
                &[],
                format!(
                    "pushed to {}: {} packs ({} chunks, {} bytes), {} manifests, {} events, {} journal lines; {} chunks were already there",
                    rep.remote,
                    rep.packs,
                    rep.chunks,
                    rep.bytes,
                    rep.manifests,
                    rep.events,
                    rep.journal_lines,
                    rep.chunks_already_remote
                ),
            )?;
        }
        crate::PushLayout::Files => {
            let rep = {
                let p = Progress::start("push", None, !json);
                store.push_files(&remote, Some(&p.counter))?
            };
            report(
                json,
                &rep,
                &[],
                format!(
                    "pushed {} files to {}: {} uploaded ({} bytes), {} already there, {} records updated",
                    rep.files,
                    rep.remote,
                    rep.uploaded,
                    rep.bytes,
                    rep.skipped,
                    rep.records_updated
                ),
            )?;
        }
    }
    Ok(0)
}

#[cfg(feature = "remote")]
fn pull(root: &Path, url: &str, a: &crate::RemoteArgs, json: bool) -> Result<i32> {
    let remote = connect(url, a)?;
    let store = Store::open_with(root, options())?;
    let rep = {
        let p = Progress::start("pull", None, !json);
        store.pull(&remote, Some(&p.counter))?
    };
    report(
        json,
        &rep,
        &[
            ("conflict: ", &lines(&rep.conflicts)),
            ("damaged: ", &lines(&rep.damaged)),
        ],
        format!(
            "pulled from {}: {} versions, {} events, {} journal lines, {} chunks ({} bytes); {} chunks were already here",
            rep.remote,
            rep.manifests,
            rep.events,
            rep.journal_lines,
            rep.chunks,
            rep.bytes,
            rep.chunks_already_local
        ),
    )?;
    Ok(if rep.damaged.is_empty() && rep.conflicts.is_empty() {
        0
    } else {
        DAMAGE
    })
}
