//! An age plugin for coffer's tests, built on the age-plugin crate as real plugins
//! (age-plugin-yubikey, age-plugin-tpm) are. Its "token" is an X25519 key inside the
//! identity, behind a PIN the plugin asks for (`2468`); it wraps file keys as age's own
//! X25519 recipients do, under its own stanza tag. Each run appends the plugin's
//! environment to `$HOME/age-plugin-coffertest.env`, so a test can check what coffer
//! hands its children. Never use it for anything else.
//!
//! `age-plugin-coffertest` alone prints a new identity and its recipient.

use std::collections::{HashMap, HashSet};
use std::io::{self, Write};
use std::str::FromStr;

use age::secrecy::ExposeSecret;
use age_core::format::{FileKey, Stanza};
use age_plugin::identity::{self, IdentityPluginV1};
use age_plugin::recipient::{self, RecipientPluginV1};
use age_plugin::{Callbacks, PluginHandler, print_new_identity, run_state_machine};
use bech32::{Bech32, Hrp};

const NAME: &str = "coffertest";
const PIN: &str = "2468";

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).and_then(|a| a.strip_prefix("--age-plugin=")) {
        Some(state_machine) => {
            record_environment()?;
            run_state_machine(state_machine, Handler)
        }
        None => {
            let identity = age::x25519::Identity::generate();
            let secret = decode(identity.to_string().expose_secret());
            let public = decode(&identity.to_public().to_string());
            print_new_identity(NAME, &secret, &public);
            Ok(())
        }
    }
}

fn record_environment() -> io::Result<()> {
    let Some(home) = std::env::var_os("HOME") else { return Ok(()) };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(std::path::Path::new(&home).join("age-plugin-coffertest.env"))?;
    for (k, v) in std::env::vars_os() {
        writeln!(file, "{}={}", k.to_string_lossy(), v.to_string_lossy())?;
    }
    Ok(())
}

fn decode(s: &str) -> Vec<u8> {
    bech32::decode(&s.to_lowercase()).expect("bech32").1
}

fn encode(hrp: &str, data: &[u8]) -> String {
    bech32::encode::<Bech32>(Hrp::parse(hrp).expect("hrp"), data).expect("bech32")
}

struct Handler;

impl PluginHandler for Handler {
    type RecipientV1 = Wrapper;
    type IdentityV1 = Unwrapper;

    fn recipient_v1(self) -> io::Result<Wrapper> {
        Ok(Wrapper(Vec::new()))
    }

    fn identity_v1(self) -> io::Result<Unwrapper> {
        Ok(Unwrapper(Vec::new()))
    }
}

struct Wrapper(Vec<age::x25519::Recipient>);

impl RecipientPluginV1 for Wrapper {
    fn add_recipient(&mut self, index: usize, plugin: &str, bytes: &[u8]) -> Result<(), recipient::Error> {
        match age::x25519::Recipient::from_str(&encode("age", bytes)) {
            Ok(r) if plugin == NAME => {
                self.0.push(r);
                Ok(())
            }
            _ => Err(recipient::Error::Recipient { index, message: "not a coffertest recipient".into() }),
        }
    }

    fn add_identity(&mut self, index: usize, _: &str, _: &[u8]) -> Result<(), recipient::Error> {
        Err(recipient::Error::Identity { index, message: "encrypt to the recipient".into() })
    }

    fn labels(&mut self) -> HashSet<String> {
        HashSet::new()
    }

    fn wrap_file_keys(
        &mut self,
        file_keys: Vec<FileKey>,
        _: impl Callbacks<recipient::Error>,
    ) -> io::Result<Result<Vec<Vec<Stanza>>, Vec<recipient::Error>>> {
        let wrap = |key: &FileKey| -> Vec<Stanza> {
            let stanzas = self.0.iter().flat_map(|r| age::Recipient::wrap_file_key(r, key).expect("wrap").0);
            stanzas.map(|s| Stanza { tag: NAME.into(), ..s }).collect()
        };
        Ok(Ok(file_keys.iter().map(wrap).collect()))
    }
}

struct Unwrapper(Vec<age::x25519::Identity>);

impl IdentityPluginV1 for Unwrapper {
    fn add_identity(&mut self, index: usize, plugin: &str, bytes: &[u8]) -> Result<(), identity::Error> {
        let text = encode("age-secret-key-", bytes).to_uppercase();
        match age::x25519::Identity::from_str(&text) {
            Ok(i) if plugin == NAME => {
                self.0.push(i);
                Ok(())
            }
            _ => Err(identity::Error::Identity { index, message: "not a coffertest identity".into() }),
        }
    }

    fn unwrap_file_keys(
        &mut self,
        files: Vec<Vec<Stanza>>,
        mut callbacks: impl Callbacks<identity::Error>,
    ) -> io::Result<HashMap<usize, Result<FileKey, Vec<identity::Error>>>> {
        let mut keys = HashMap::new();
        for (index, stanzas) in files.into_iter().enumerate() {
            let ours: Vec<Stanza> =
                stanzas.into_iter().filter(|s| s.tag == NAME).map(|s| Stanza { tag: "X25519".into(), ..s }).collect();
            if ours.is_empty() {
                continue;
            }
            callbacks.message("coffertest: touch the token")?.ok();
            let pin = match callbacks.request_secret("coffertest PIN")? {
                Ok(pin) => pin,
                Err(_) => {
                    keys.insert(index, Err(vec![identity::Error::Internal { message: "no PIN".into() }]));
                    continue;
                }
            };
            if pin.expose_secret() != PIN {
                keys.insert(index, Err(vec![identity::Error::Internal { message: "wrong PIN".into() }]));
                continue;
            }
            let key = self.0.iter().find_map(|i| age::Identity::unwrap_stanzas(i, &ours));
            if let Some(key) = key {
                let key = key.map_err(|e| vec![identity::Error::Internal { message: e.to_string() }]);
                keys.insert(index, key);
            }
        }
        Ok(keys)
    }
}
