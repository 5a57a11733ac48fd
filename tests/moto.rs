//! A second S3 implementation, moto, which enforces AWS's documented rule for locked
//! uploads: "Content-MD5 or x-amz-sdk-checksum-algorithm header required to upload an
//! object with a retention period configured using Object Lock". coffer must satisfy it
//! on every locked PUT, as Backblaze B2 and MinIO versions that read only `Content-MD5`
//! need too.
//!
//! moto is used for what it checks. It lets a COMPLIANCE lock be shortened and answers
//! GetObjectRetention wrongly, so lock extensions, `status --remote` and `verify` are
//! tested against Ceph RGW (`tests/object_lock.rs`), not here.

mod common;

use std::process::Command;

use common::*;

#[test]
fn moto_accepts_init_backup_and_restore() {
    let Some(moto) = Moto::start("locked") else {
        if std::env::var("COFFER_TEST_S3").as_deref() == Ok("require") {
            panic!("the full suite needs moto: python3 -m pip install 'moto[server]'");
        }
        eprintln!("SKIPPED: moto is not installed; run scripts/test.sh for the full suite");
        return;
    };
    let scratch = Scratch::new("moto");
    let src = random_parts(&scratch, 7, 6);
    let identity = scratch.path("identity.txt");
    let out = run_ok(Command::new(BIN).args(["keygen", "-o"]).arg(&identity));
    let recipient = String::from_utf8(out.stdout).unwrap();
    let config = scratch.path("coffer.toml");
    let job = format!(
        "endpoint = \"http://127.0.0.1:{}\"\nregion = \"us-east-1\"\n[[job]]\nname = \"data\"\nsource = {{ path = \"{}\" }}\n",
        moto.1,
        src.display()
    );
    std::fs::write(&config, config_text(&recipient, "s3://locked/coffer", &job)).unwrap();
    let coffer = |args: &[&str]| {
        let mut c = Command::new(BIN);
        c.arg("--config").arg(&config).args(args);
        c.env("AWS_ACCESS_KEY_ID", "testing").env("AWS_SECRET_ACCESS_KEY", "testing").env_remove("AWS_ENDPOINT_URL");
        c
    };

    // init's canary is a locked PUT that moto refuses without the checksum headers.
    let init = text(&run_ok(&mut coffer(&["init"])));
    assert!(init.contains("COMPLIANCE"), "{init}");
    run_ok(&mut coffer(&["backup", "data", "--no-progress"]));
    std::fs::write(src.join("new.txt"), b"a second snapshot").unwrap();
    run_ok(&mut coffer(&["backup", "data", "--no-progress"]));

    let to = scratch.path("restored");
    let mut restore = coffer(&["restore", "latest", "--job", "data", "--to"]);
    restore.arg(&to).arg("--identity").arg(&identity);
    run_ok(&mut restore);
    assert_same_tree(&src, &to);
}
