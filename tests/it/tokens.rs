//! Access tokens: a secret is printed once and stored only as its SHA-256; tokens are listed
//! without secrets, checked, scoped to namespaces and revoked.

use ml_dash::Store;

use crate::util::*;

#[test]
fn a_token_is_shown_once_stored_hashed_checked_and_revoked() {
    let dir = tmp();
    let root = dir.path().join("store");
    let r = run(
        &root,
        &[
            "token",
            "add",
            "ci",
            "--namespace",
            "alice",
            "--namespace",
            "bob",
        ],
    );
    let secret = ok(&r).trim().to_string();
    assert!(secret.starts_with("mld_") && secret.len() == 68, "{secret}");
    let on_disk = std::fs::read_to_string(root.join("tokens.json")).unwrap();
    assert!(!on_disk.contains(&secret[4..]), "the secret is stored");
    assert!(on_disk.contains(&sha256_hex(secret.as_bytes())));

    let admin = json_lines(ok(&run(&root, &["token", "add", "admin", "--json"]))).remove(0);
    let admin_secret = admin["token"].as_str().unwrap().to_string();
    assert_ne!(admin_secret, secret);

    let listed = json_lines(ok(&run(&root, &["token", "list", "--json"])));
    let names: Vec<&str> = listed.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["admin", "ci"]);
    let text = ok(&run(&root, &["token", "list"])).to_string();
    assert!(!text.contains(&secret) && !text.contains(&admin_secret));

    let store = Store::open(&root).unwrap();
    let ci = store.check_token(&secret).unwrap().expect("a valid token");
    assert_eq!(ci.name, "ci");
    assert!(ci.allows("alice") && ci.allows("bob") && !ci.allows("carol"));
    let admin = store.check_token(&admin_secret).unwrap().unwrap();
    assert!(admin.allows("carol"));
    let mut wrong = secret.clone();
    wrong.pop();
    wrong.push(if secret.ends_with('0') { '1' } else { '0' });
    assert!(store.check_token(&wrong).unwrap().is_none());
    assert!(store.check_token("").unwrap().is_none());

    // Names are unique; bad names are refused and change nothing.
    refused(&run(&root, &["token", "add", "ci"]), "token name");
    refused(&run(&root, &["token", "add", "../x"]), "token name");
    refused(
        &run(&root, &["token", "add", "x", "--namespace", "a/b"]),
        "namespace",
    );
    assert_eq!(store.tokens().unwrap().len(), 2);

    ok(&run(&root, &["token", "revoke", "ci"]));
    assert!(store.check_token(&secret).unwrap().is_none());
    assert!(store.check_token(&admin_secret).unwrap().is_some());
    let r = run(&root, &["token", "revoke", "ci"]);
    assert_eq!(r.0, 1, "{r:?}");
}
