//! The keys a backup is encrypted to and restored with, beyond a plain age key: an age
//! plugin's (examples/age-plugin-coffertest.rs, built on the age-plugin crate as
//! hardware-token plugins are, asking for a PIN), and ssh-ed25519 keys.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;

/// The test plugin, built beside coffer by `cargo test`, on a PATH of its own.
fn plugin_dir(scratch: &Scratch) -> PathBuf {
    let built = Path::new(BIN).parent().unwrap().join("examples/age-plugin-coffertest");
    assert!(
        built.exists(),
        "{} is not built: `cargo test` builds it, or `cargo build --example age-plugin-coffertest`",
        built.display()
    );
    let dir = scratch.path("plugins");
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(&built, dir.join("age-plugin-coffertest")).unwrap();
    dir
}

fn private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A source of several packs' worth of data (1 MiB packs), so that a restore opens many
/// objects with the identity.
fn source(scratch: &Scratch) -> PathBuf {
    let src = scratch.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut rng = Rng(7);
    for i in 0..3 {
        let mut data = vec![0u8; 1_500_000];
        rng.fill(&mut data);
        std::fs::write(src.join(format!("f{i}.bin")), data).unwrap();
    }
    std::fs::write(src.join("notes.txt"), "plans").unwrap();
    src
}

fn write_config(scratch: &Scratch, recipients: &[&str], src: &Path) -> PathBuf {
    let config = scratch.path("coffer.toml");
    let quoted: Vec<String> = recipients.iter().map(|r| format!("{:?}", r.trim())).collect();
    std::fs::write(
        &config,
        format!(
            "state_dir = \"state\"\nrecipients = [{}]\nrepo_secret_file = \"state/repo.secret\"\npack_size_mib = 1\n\
             [target]\nurl = \"file://{}\"\n[[job]]\nname = \"data\"\nsource = {{ path = \"{}\" }}\n",
            quoted.join(", "),
            scratch.path("target").display(),
            src.display()
        ),
    )
    .unwrap();
    config
}

fn restore_cmd(config: &Path, identity: &Path, to: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.arg("--config").arg(config).args(["restore", "latest", "--job", "data", "--no-progress", "--to"]).arg(to);
    c.arg("--identity").arg(identity).env_remove("COFFER_IDENTITY_PASSPHRASE_FILE");
    c
}

/// Backs up to a plugin recipient and restores with the plugin's identity and its PIN.
/// The plugin, a child the age crate starts, sees none of coffer's credentials.
#[test]
fn an_age_plugin_recipient_and_identity_back_up_and_restore() {
    let scratch = Scratch::new("plugin");
    let plugins = plugin_dir(&scratch);
    let path = format!("{}:{}", plugins.display(), std::env::var("PATH").unwrap());
    let home = scratch.path("home");
    std::fs::create_dir_all(&home).unwrap();
    let made = run_ok(&mut Command::new(plugins.join("age-plugin-coffertest")));
    let made = text(&made);
    let recipient = made.split("# recipient: ").nth(1).unwrap().lines().next().unwrap().to_string();
    let identity_line = made.lines().find(|l| l.starts_with("AGE-PLUGIN-COFFERTEST-1")).unwrap();
    assert!(recipient.starts_with("age1coffertest1"), "{made}");
    std::fs::create_dir_all(scratch.path("offline")).unwrap();
    let identity = scratch.path("offline/token.txt");
    private(&identity, &format!("{identity_line}\n"));
    let src = source(&scratch);
    let config = write_config(&scratch, &[&recipient], &src);
    let coffer = |args: &[&str]| {
        let mut c = Command::new(BIN);
        c.arg("--config").arg(&config).args(args).env("PATH", &path).env("HOME", &home);
        c.env("AWS_SECRET_ACCESS_KEY", "target-secret-0451").env("COFFER_PRUNE_SECRET_ACCESS_KEY", "prune-secret-0452");
        c
    };

    // Without the plugin on PATH the preflight names it.
    let mut unfound = coffer(&["check-config"]);
    unfound.env("PATH", std::env::var("PATH").unwrap());
    let unfound = unfound.output().unwrap();
    assert_eq!(unfound.status.code(), Some(1), "{}", text(&unfound));
    assert!(text(&unfound).contains("age-plugin-coffertest"), "{}", text(&unfound));

    run_ok(&mut coffer(&["init"]));
    run_ok(&mut coffer(&["backup", "data", "--no-progress"]));
    let seen = std::fs::read_to_string(home.join("age-plugin-coffertest.env")).unwrap();
    assert!(seen.contains("PATH="), "the plugin ran and recorded its environment: {seen}");
    for secret in ["target-secret-0451", "prune-secret-0452", "AWS_SECRET_ACCESS_KEY"] {
        assert!(!seen.contains(secret), "the plugin saw {secret}");
    }

    // The PIN from a private file: every object opens.
    let pin = scratch.path("offline/pin");
    private(&pin, "2468\n");
    let to = scratch.path("out");
    let mut c = restore_cmd(&config, &identity, &to);
    c.env("PATH", &path).env("HOME", &home).env("COFFER_IDENTITY_PASSPHRASE_FILE", &pin);
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("coffertest: touch the token"), "the plugin's message is shown: {}", text(&out));
    assert_same_tree(&src, &to);

    // A wrong PIN opens nothing and writes nothing.
    private(&pin, "1111\n");
    let to = scratch.path("wrong");
    let mut c = restore_cmd(&config, &identity, &to);
    let out = c.env("PATH", &path).env("HOME", &home).env("COFFER_IDENTITY_PASSPHRASE_FILE", &pin).output().unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("wrong PIN"), "{}", text(&out));
    assert!(!to.join("notes.txt").exists());

    // On a terminal the PIN is asked once, however many objects the plugin opens.
    let Some(script) = tool("script", "apt-get install util-linux") else { return };
    let to = scratch.path("typed");
    let cmd = format!(
        "{BIN} --config {} restore latest --job data --no-progress --to {} --identity {}",
        config.display(),
        to.display(),
        identity.display()
    );
    let mut c = Command::new(script);
    c.args(["-qec", &cmd, "/dev/null"]).env("PATH", &path).env("HOME", &home);
    let shown = typed_once(c.env_remove("COFFER_IDENTITY_PASSPHRASE_FILE"), "coffertest PIN", "2468\n");
    assert_eq!(shown.matches("coffertest PIN").count(), 1, "{shown}");
    assert_same_tree(&src, &to);
}

/// Runs `cmd`, answers `answer` when `prompt` first shows on its output, and returns all
/// of the output once it ends (or panics after two minutes).
fn typed_once(cmd: &mut Command, prompt: &str, answer: &str) -> String {
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = stdout.read(&mut buf) {
            if tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut shown = Vec::new();
    let mut answered = false;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        match rx.recv_timeout(std::time::Duration::from_millis(200)) {
            Ok(bytes) => shown.extend(bytes),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(_) => assert!(std::time::Instant::now() < deadline, "{}", String::from_utf8_lossy(&shown)),
        }
        if !answered && String::from_utf8_lossy(&shown).contains(prompt) {
            // After the prompt: the terminal is quiet and flushed by then.
            std::thread::sleep(std::time::Duration::from_millis(300));
            stdin.write_all(answer.as_bytes()).unwrap();
            answered = true;
        }
    }
    drop(stdin);
    let status = child.wait().unwrap();
    let shown = String::from_utf8_lossy(&shown).into_owned();
    assert!(status.success(), "{shown}");
    shown
}

fn ssh_keygen(dir: &Path, kind: &str, passphrase: &str) -> Option<PathBuf> {
    let key = dir.join(format!("id_{kind}"));
    let made =
        Command::new("ssh-keygen").args(["-q", "-t", kind, "-N", passphrase, "-C", "test", "-f"]).arg(&key).output();
    match made {
        Ok(o) if o.status.success() => Some(key),
        _ if std::env::var("COFFER_TEST_S3").as_deref() == Ok("require") => {
            panic!("the full suite needs ssh-keygen: apt-get install openssh-client")
        }
        _ => {
            eprintln!("SKIPPED: ssh-keygen is not installed (apt-get install openssh-client)");
            None
        }
    }
}

/// An ssh-ed25519 public key is a recipient beside an age key; its private key, with its
/// passphrase, restores. ssh-rsa keys are refused, as recipients and as identities.
#[test]
fn an_ssh_ed25519_key_backs_up_and_restores() {
    let scratch = Scratch::new("ssh");
    let keys = scratch.path("offline");
    std::fs::create_dir_all(&keys).unwrap();
    let Some(ed25519) = ssh_keygen(&keys, "ed25519", "open sesame") else { return };
    let public = std::fs::read_to_string(ed25519.with_extension("pub")).unwrap();
    let age_key = run_ok(Command::new(BIN).args(["keygen", "-o"]).arg(keys.join("age.txt"))).stdout;
    let age_key = String::from_utf8(age_key).unwrap();
    let src = source(&scratch);
    let config = write_config(&scratch, &[&age_key, &public], &src);
    let coffer = |args: &[&str]| -> Output {
        let mut c = Command::new(BIN);
        run_ok(c.arg("--config").arg(&config).args(args))
    };
    coffer(&["init"]);
    coffer(&["backup", "data", "--no-progress"]);

    let pass = keys.join("pass");
    private(&pass, "open sesame\n");
    let to = scratch.path("out");
    let out = restore_cmd(&config, &ed25519, &to).env("COFFER_IDENTITY_PASSPHRASE_FILE", &pass).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_same_tree(&src, &to);
    // The age key opens the same snapshot.
    let to = scratch.path("out-age");
    let out = restore_cmd(&config, &keys.join("age.txt"), &to).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_same_tree(&src, &to);

    private(&pass, "wrong\n");
    let to = scratch.path("out-wrong");
    let out = restore_cmd(&config, &ed25519, &to).env("COFFER_IDENTITY_PASSPHRASE_FILE", &pass).output().unwrap();
    assert!(text(&out).contains("wrong passphrase"), "{}", text(&out));
    assert!(!to.join("notes.txt").exists());

    let Some(rsa) = ssh_keygen(&keys, "rsa", "") else { return };
    let out = restore_cmd(&config, &rsa, &scratch.path("out-rsa")).output().unwrap();
    assert!(!out.status.success() && text(&out).contains("ssh-rsa keys are not accepted"), "{}", text(&out));
    let rsa_public = std::fs::read_to_string(rsa.with_extension("pub")).unwrap();
    let config = write_config(&scratch, &[&age_key, &rsa_public], &src);
    let out = Command::new(BIN).arg("--config").arg(&config).arg("check-config").output().unwrap();
    assert!(!out.status.success() && text(&out).contains("ssh-rsa keys are not accepted"), "{}", text(&out));
}

/// An age plugin is looked up on PATH by the age crate. An empty or `.` entry names the
/// current directory, where anyone may have left a program of the plugin's name: coffer
/// keeps only absolute PATH entries, so the real plugin runs and the decoy never does.
#[test]
fn an_age_plugin_is_never_taken_from_the_current_directory() {
    let scratch = Scratch::new("plugin-path");
    let plugins = plugin_dir(&scratch);
    let made = run_ok(&mut Command::new(plugins.join("age-plugin-coffertest")));
    let recipient = text(&made).split("# recipient: ").nth(1).unwrap().lines().next().unwrap().to_string();
    let src = source(&scratch);
    let config = write_config(&scratch, &[&recipient], &src);
    let cwd = scratch.path("cwd");
    std::fs::create_dir_all(&cwd).unwrap();
    let marker = scratch.path("decoy-ran");
    let decoy = cwd.join("age-plugin-coffertest");
    std::fs::write(&decoy, format!("#!/bin/sh\ntouch '{}'\nexit 1\n", marker.display())).unwrap();
    std::fs::set_permissions(&decoy, std::fs::Permissions::from_mode(0o755)).unwrap();
    let home = scratch.path("home");
    std::fs::create_dir_all(&home).unwrap();
    let path = format!(":.:{}:{}", plugins.display(), std::env::var("PATH").unwrap());
    for args in [&["init"][..], &["backup", "data", "--no-progress"]] {
        let mut c = Command::new(BIN);
        c.arg("--config").arg(&config).args(args).env("PATH", &path).env("HOME", &home).current_dir(&cwd);
        let out = c.output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", text(&out));
    }
    assert!(!marker.exists(), "the decoy in the current directory ran");
}

/// Key files are opened without blocking and read within a bound: a FIFO given as the
/// identity or as the passphrase file is refused at once instead of hanging, and a
/// 2 GiB identity file is refused without being read.
#[test]
fn a_fifo_or_a_huge_file_as_a_key_file_is_refused_at_once() {
    let scratch = Scratch::new("keyfiles");
    let src = source(&scratch);
    std::fs::create_dir_all(scratch.path("offline")).unwrap();
    let identity = scratch.path("offline/identity.txt");
    let recipient = String::from_utf8(run_ok(Command::new(BIN).args(["keygen", "-o"]).arg(&identity)).stdout).unwrap();
    let config = write_config(&scratch, &[&recipient], &src);
    run_ok(Command::new(BIN).arg("--config").arg(&config).arg("init"));
    run_ok(Command::new(BIN).arg("--config").arg(&config).args(["backup", "data", "--no-progress"]));

    let fifo = scratch.path("offline/fifo");
    run_ok(Command::new("mkfifo").arg("-m").arg("600").arg(&fifo));
    let huge = scratch.path("offline/huge");
    std::fs::File::create(&huge).unwrap().set_len(2 << 30).unwrap();
    std::fs::set_permissions(&huge, std::fs::Permissions::from_mode(0o600)).unwrap();
    let within = |mut c: Command, why: &str| {
        let mut child = c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                child.kill().unwrap();
                panic!("{why}: still waiting after 15 s");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        assert!(!out.status.success(), "{why}: {}", text(&out));
        text(&out)
    };
    let said = within(restore_cmd(&config, &fifo, &scratch.path("a")), "a FIFO as the identity");
    assert!(said.contains("is not a regular file"), "{said}");
    let said = within(restore_cmd(&config, &huge, &scratch.path("b")), "a 2 GiB identity");
    assert!(said.contains("has 2147483648 bytes"), "{said}");
    // A passphrase-protected identity whose passphrase file is a FIFO.
    let mut protected = Vec::new();
    {
        let plain = std::fs::read(&identity).unwrap();
        let e = age::Encryptor::with_user_passphrase(age::secrecy::SecretString::from("pw".to_string()));
        let mut w = e.wrap_output(&mut protected).unwrap();
        w.write_all(&plain).unwrap();
        w.finish().unwrap();
    }
    let protected_path = scratch.path("offline/protected.age");
    std::fs::write(&protected_path, protected).unwrap();
    std::fs::set_permissions(&protected_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut c = restore_cmd(&config, &protected_path, &scratch.path("c"));
    c.env("COFFER_IDENTITY_PASSPHRASE_FILE", &fifo);
    let said = within(c, "a FIFO as the passphrase file");
    assert!(said.contains("is not a regular file"), "{said}");
}
