//! The MMDS boot-test scenarios: a guest reads Petrel's microVM metadata service with busybox,
//! as an EC2-style guest reads IMDS, and the host checks what it got against the document it
//! put there.
//!
//! Each VM is configured by a Firecracker config file (`petrel --config-file FILE --no-api`):
//! its root drive with busybox and the init script, one network interface on a tap in a network
//! namespace of its own (nothing else in it: the MMDS's frames never reach the tap), an
//! `mmds-config` naming that interface, a `metrics` file, and `--metadata FILE` puts
//! [`document`] into the data store at start. The guest gives `eth0` a link-local address
//! (`ifconfig`, a route to 169.254.0.0/16 with it), and then:
//!
//! - `mmds-v1` (`"version": "V1"`): plain `wget`s: the IMDS listing of
//!   `/latest/meta-data/`, a leaf, the JSON of `/latest/meta-data` with
//!   `--header 'Accept: application/json'`, and a path that is not there (404);
//! - `mmds-v2` (`"version": "V2"`, the address given explicitly): a session token from
//!   `PUT /latest/api/token` with `X-metadata-token-ttl-seconds`, sent with busybox `nc`; a `GET`
//!   without a token and one with a token that is not valid, both refused 401; then the
//!   listing, the leaf and the JSON with `--header "X-metadata-token: $T"`.
//!
//! The host compares each answer the guest printed with [`document`], and the `mmds` group of
//! the last metrics line with the requests the guest made (tokens missing and invalid, one
//! connection per request, frames both ways).

use std::fs;
use std::path::Path;

use serde_json::{json, Value};

use crate::api_boot::{fc_boot, DISK_SEEN};
use crate::error::{Error, IoContext, Result};
use crate::guest_script;
use crate::host;
use crate::live::LiveResult;
use crate::scenario::{AfterCheck, FcBoot, KernelFormat, NetSetup, Scenario, Via};
use crate::virtio_boot::MOUNTED_RO;

/// The scenario whose MMDS is V1.
pub const V1_NAME: &str = "mmds-v1";
/// The scenario whose MMDS is V2.
pub const V2_NAME: &str = "mmds-v2";
/// Both, in the default set.
pub const SCENARIOS: &[&str] = &[V1_NAME, V2_NAME];

/// The MMDS address (Firecracker's default).
pub const MMDS_IP: &str = "169.254.169.254";
/// The guest's link-local address on `eth0`.
pub const GUEST_IP: &str = "169.254.0.2";
/// The tap inside the scenario's namespace (made by [`crate::net_boot::NetFixture`]).
pub const TAP: &str = crate::net_boot::TAP;
/// The interface's id in the configuration.
pub const IFACE_ID: &str = "eth0";
/// The guest's MAC.
pub const GUEST_MAC: &str = "06:00:ac:10:00:02";
/// The time to live the guest asks for its V2 token, in seconds.
pub const TOKEN_TTL: u32 = 60;

/// The metadata the host puts: what the guest must read back.
pub fn document() -> Value {
    json!({
        "latest": {
            "meta-data": {
                "ami-id": "ami-0b5e24c0ffee",
                "hostname": "petrel-mmds-guest.internal",
                "placement": {"availability-zone": "petrel-24a"},
            }
        }
    })
}

/// The shell functions and the network setup both scripts start with. `get NAME ARGS...`
/// runs `wget ARGS` and reports the answer's lines joined by commas (or wget's error);
/// `refused NAME ARGS...` expects wget to fail and reports its error, which names the status.
const PRELUDE: &str = r#"mount -t tmpfs tmpfs /tmp
ifconfig eth0 169.254.0.2 netmask 255.255.0.0 up
M=http://169.254.169.254
lines() { j=; while IFS= read -r l || [ -n "$l" ]; do j="$j${j:+,}$l"; done < "$1"; }
get() {
    n=$1; shift
    if wget -q -O /tmp/out "$@" 2> /tmp/err; then
        lines /tmp/out; ok "$n" "$j"
    else
        lines /tmp/err; fail "$n" "$j"
    fi
}
refused() {
    n=$1; shift
    if wget -q -O /tmp/out "$@" 2> /tmp/err; then
        lines /tmp/out; fail "$n" "answered: $j"
    else
        lines /tmp/err; ok "$n" "$j"
    fi
}
"#;

/// `mmds-v1`'s checks: plain `GET`s.
const V1_BODY: &str = r#"get mmds-v1-list $M/latest/meta-data/
get mmds-v1-leaf $M/latest/meta-data/ami-id
get mmds-v1-json --header 'Accept: application/json' $M/latest/meta-data
refused mmds-v1-missing $M/latest/meta-data/no-such-key"#;

/// `mmds-v2`'s checks: a token by `PUT` (its status line, the echoed time to live and the
/// token's length reported), `GET`s without and with a bad token, then with the token.
const V2_BODY: &str = r#"printf 'PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 60\r\n\r\n' > /tmp/req
if nc 169.254.169.254 80 < /tmp/req > /tmp/tok 2> /tmp/err; then
    status= ttl= T=
    while IFS= read -r l || [ -n "$l" ]; do
        l=${l%$'\r'}
        [ -n "$status" ] || status=$l
        case "$l" in X-metadata-token-ttl-seconds:*) ttl=${l#*: } ;; esac
        T=$l
    done < /tmp/tok
    ok mmds-v2-token "status=$status; ttl=$ttl; token-bytes=${#T}"
else
    lines /tmp/err; fail mmds-v2-token "nc: $j"
fi
refused mmds-v2-no-token $M/latest/meta-data/ami-id
refused mmds-v2-bad-token --header 'X-metadata-token: bm90LWEtdG9rZW4=' $M/latest/meta-data/ami-id
get mmds-v2-list --header "X-metadata-token: $T" $M/latest/meta-data/
get mmds-v2-leaf --header "X-metadata-token: $T" $M/latest/meta-data/ami-id
get mmds-v2-json --header "X-metadata-token: $T" --header 'Accept: application/json' $M/latest/meta-data"#;

/// What one of the guest's checks must have printed.
#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    /// Exactly this text (lines joined by commas).
    Text(String),
    /// JSON equal to this value.
    Json(Value),
    /// wget's error naming this status (`404 Not Found`).
    Refused(&'static str),
    /// `PUT /latest/api/token`'s answer: 200, the time to live echoed, a token.
    Token,
}

/// The guest's checks in scenario `name` and what each must show.
pub fn expectations(name: &str) -> Vec<(&'static str, Expect)> {
    let doc = document();
    let meta = &doc["latest"]["meta-data"];
    let listing = imds_listing(meta).join(",");
    let leaf = Expect::Text(meta["ami-id"].as_str().unwrap_or_default().to_owned());
    if name == V1_NAME {
        vec![
            ("mmds-v1-list", Expect::Text(listing)),
            ("mmds-v1-leaf", leaf),
            ("mmds-v1-json", Expect::Json(meta.clone())),
            ("mmds-v1-missing", Expect::Refused("404 Not Found")),
        ]
    } else {
        vec![
            ("mmds-v2-token", Expect::Token),
            ("mmds-v2-no-token", Expect::Refused("401 Unauthorized")),
            ("mmds-v2-bad-token", Expect::Refused("401 Unauthorized")),
            ("mmds-v2-list", Expect::Text(listing)),
            ("mmds-v2-leaf", leaf),
            ("mmds-v2-json", Expect::Json(meta.clone())),
        ]
    }
}

/// An object's IMDS listing as Firecracker's user guide gives it: its keys, sorted, objects'
/// keys with a trailing `/`.
pub fn imds_listing(object: &Value) -> Vec<String> {
    let mut keys: Vec<String> = object
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    if v.is_object() {
                        format!("{k}/")
                    } else {
                        k.clone()
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    keys.sort();
    keys
}

/// Whether `detail` (what the guest printed) is what `expect` says: `Err(why not)`.
pub fn judge_answer(detail: &str, expect: &Expect) -> std::result::Result<(), String> {
    let ok = match expect {
        Expect::Text(want) => detail == want,
        Expect::Json(want) => serde_json::from_str::<Value>(detail).is_ok_and(|v| v == *want),
        Expect::Refused(status) => detail.contains(&format!("HTTP/1.1 {status}")),
        Expect::Token => {
            let bytes = detail
                .rsplit_once("token-bytes=")
                .and_then(|(_, n)| n.parse::<usize>().ok());
            detail.starts_with(&format!(
                "status=HTTP/1.1 200 OK; ttl={TOKEN_TTL}; token-bytes="
            )) && bytes.is_some_and(|n| n > 0)
        }
    };
    if ok {
        Ok(())
    } else {
        Err(format!("got {detail:?}, but expected {expect:?}"))
    }
}

/// How many requests of each kind the guest makes: (all, without a token, with an invalid
/// one). V1 counts tokens as V2 would, though it answers anyway.
fn request_counts(name: &str) -> (u64, u64, u64) {
    if name == V1_NAME {
        (4, 4, 0)
    } else {
        (6, 1, 1)
    }
}

/// Judges the `mmds` metrics group against the guest's requests in scenario `name`.
pub fn judge_metrics(name: &str, metrics: &Value) -> std::result::Result<String, String> {
    let mmds = &metrics["mmds"];
    let get = |field: &str| mmds[field].as_u64();
    let (requests, no_token, invalid) = request_counts(name);
    let mut wrong = Vec::new();
    for (field, want) in [
        ("connections_created", requests),
        ("rx_no_token", no_token),
        ("rx_invalid_token", invalid),
    ] {
        if get(field) != Some(want) {
            wrong.push(format!("{field} is {:?}, not {want}", get(field)));
        }
    }
    for field in ["rx_accepted", "rx_count", "tx_frames", "tx_bytes"] {
        if get(field).unwrap_or(0) == 0 {
            wrong.push(format!("{field} is {:?}, not above 0", get(field)));
        }
    }
    if get("connections_destroyed").unwrap_or(u64::MAX) > requests {
        wrong.push(format!(
            "connections_destroyed is {:?}, more than the {requests} created",
            get("connections_destroyed")
        ));
    }
    if wrong.is_empty() {
        Ok(format!(
            "the mmds metrics counted the guest's requests: {mmds}"
        ))
    } else {
        Err(format!(
            "the mmds metrics: {}; all: {mmds}",
            wrong.join("; ")
        ))
    }
}

/// The serial log's answers and the metrics of scenario `name`.
fn judge(name: &str, serial: &str, metrics: &Value) -> LiveResult {
    let mut notes = Vec::new();
    let mut failures = Vec::new();
    let mut matched = Vec::new();
    for (check, expect) in expectations(name) {
        // A check the guest failed or never printed is already a failure of its own.
        let Some(detail) = guest_script::detail_of(serial, check) else {
            continue;
        };
        match judge_answer(&detail, &expect) {
            Ok(()) => matched.push(check),
            Err(f) => failures.push(format!("{check}: {f}")),
        }
    }
    if !matched.is_empty() {
        notes.push(format!(
            "host: what the guest at {GUEST_IP} read matches the document the host put and the \
             statuses due: {}",
            matched.join(", ")
        ));
    }
    match judge_metrics(name, metrics) {
        Ok(n) => notes.push(n),
        Err(f) => failures.push(f),
    }
    if failures.is_empty() {
        Ok(notes)
    } else {
        Err(failures)
    }
}

fn judge_v1(serial: &str, metrics: &Value) -> LiveResult {
    judge(V1_NAME, serial, metrics)
}

fn judge_v2(serial: &str, metrics: &Value) -> LiveResult {
    judge(V2_NAME, serial, metrics)
}

/// The guest's init script for scenario `name`.
fn guest_body(name: &str) -> String {
    let body = if name == V1_NAME { V1_BODY } else { V2_BODY };
    format!("{PRELUDE}{body}")
}

/// The `mmds-config` section of scenario `name`.
fn mmds_config(name: &str) -> Value {
    if name == V1_NAME {
        json!({"version": "V1", "network_interfaces": [IFACE_ID]})
    } else {
        json!({
            "version": "V2",
            "network_interfaces": [IFACE_ID],
            "ipv4_address": MMDS_IP,
            "imds_compat": false,
        })
    }
}

/// Scenario `name`'s configuration, in the config file `config`: the root drive `image`,
/// the interface on [`TAP`] with the MMDS on it, the metrics file and `--metadata`.
fn fc_config(
    name: &str,
    vmlinux: &Path,
    image: &Path,
    config: &Path,
    metrics: &Path,
    metadata: &Path,
) -> FcBoot {
    let via = Via::ConfigFile {
        path: config.to_owned(),
    };
    let mut fc = fc_boot(via, vmlinux, None, image);
    fc.network_interfaces = vec![json!({
        "iface_id": IFACE_ID,
        "host_dev_name": TAP,
        "guest_mac": GUEST_MAC,
    })];
    fc.mmds_config = Some(mmds_config(name));
    fc.metrics = Some(json!({"metrics_path": metrics.display().to_string()}));
    fc.metadata = Some(metadata.to_owned());
    fc
}

/// The MMDS scenarios named in `names`: their disk images, metadata, config files and metrics
/// go to `dir`.
pub fn scenarios(names: &[&str], vmlinux: &Path, dir: &Path) -> Result<Vec<Scenario>> {
    let wanted = crate::scenario::asked_for(SCENARIOS, names);
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    host::ensure_packages(&["iproute2", "e2fsprogs", "busybox-static"])?;
    fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
    let mut out = Vec::new();
    for name in wanted {
        let image = dir.join(format!("{name}.ext4"));
        let script = guest_script::init_script(&guest_body(name));
        guest_script::build_rootfs(&image, &script, &[], 16)?;
        let metadata = dir.join(format!("{name}.metadata.json"));
        fs::write(&metadata, document().to_string())
            .ctx(|| format!("writing {}", metadata.display()))?;
        let metrics = dir.join(format!("{name}.metrics.json"));
        let _ = fs::remove_file(&metrics);
        let config = dir.join(format!("{name}.json"));
        let fc = fc_config(name, vmlinux, &image, &config, &metrics, &metadata);
        let text = serde_json::to_string_pretty(&fc.config_file())
            .map_err(|e| Error::Other(format!("encoding {}: {e}", config.display())))?;
        fs::write(&config, text + "\n").ctx(|| format!("writing {}", config.display()))?;
        let mut s = Scenario::new(name, vmlinux, KernelFormat::Elf, Path::new(""), 1);
        s.initrd = None;
        s.fc = Some(fc);
        s.expect = vec![DISK_SEEN, MOUNTED_RO];
        s.checks = expectations(name).into_iter().map(|(c, _)| c).collect();
        s.net = Some(NetSetup {
            namespace: format!("petrel-bt-{name}-{}", std::process::id()),
            servers: false,
            dir: dir.to_owned(),
            metrics: metrics.clone(),
        });
        s.after = vec![AfterCheck::MetricsLine {
            metrics,
            judge: if name == V1_NAME { judge_v1 } else { judge_v2 },
        }];
        out.push(s);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_scripts_use_the_hosts_numbers() {
        for name in SCENARIOS {
            let body = guest_body(name);
            assert!(body.contains(&format!("ifconfig eth0 {GUEST_IP} netmask 255.255.0.0 up")));
            assert!(body.contains(&format!("M=http://{MMDS_IP}\n")));
            // Every check the host expects is one the script reports.
            for (check, expect) in expectations(name) {
                let call = match expect {
                    Expect::Refused(_) => format!("refused {check} "),
                    Expect::Token => format!("ok {check} "),
                    _ => format!("get {check} "),
                };
                assert!(body.contains(&call), "{name}: {call}");
            }
            // The JSON checks ask for JSON, the others do not.
            for line in body.lines().filter(|l| l.contains("application/json")) {
                assert!(line.contains("-json "), "{line}");
            }
        }
        let v1 = guest_body(V1_NAME);
        assert!(!v1.contains("token"), "V1 reads without tokens");
        let v2 = guest_body(V2_NAME);
        assert!(v2.contains(&format!(
            "PUT /latest/api/token HTTP/1.1\\r\\nX-metadata-token-ttl-seconds: {TOKEN_TTL}\\r\\n"
        )));
        assert!(v2.contains(&format!("nc {MMDS_IP} 80 < /tmp/req")));
        // The token goes with every GET after the two refused ones.
        let gets: Vec<&str> = v2.lines().filter(|l| l.starts_with("get ")).collect();
        assert_eq!(gets.len(), 3);
        assert!(gets.iter().all(|l| l.contains("\"X-metadata-token: $T\"")));
    }

    #[test]
    fn answers_are_judged_against_the_document() {
        let meta = document()["latest"]["meta-data"].clone();
        assert_eq!(imds_listing(&meta), ["ami-id", "hostname", "placement/"]);
        let exp = expectations(V1_NAME);
        assert_eq!(exp[0].1, Expect::Text("ami-id,hostname,placement/".into()));
        assert_eq!(exp[1].1, Expect::Text("ami-0b5e24c0ffee".into()));
        assert!(judge_answer("ami-id,hostname,placement/", &exp[0].1).is_ok());
        assert!(judge_answer("ami-id,hostname", &exp[0].1).is_err());
        // JSON is compared as values: spacing and key order do not matter.
        let json = &exp[2].1;
        let spaced = r#"{ "placement": {"availability-zone": "petrel-24a"},
            "hostname": "petrel-mmds-guest.internal", "ami-id": "ami-0b5e24c0ffee" }"#;
        assert!(judge_answer(spaced, json).is_ok());
        assert!(judge_answer(r#"{"ami-id":"ami-0b5e24c0ffee"}"#, json).is_err());
        assert!(judge_answer("ami-id,hostname,placement/", json).is_err());
        let not_found = Expect::Refused("404 Not Found");
        let wget = "wget: server returned error: HTTP/1.1 404 Not Found";
        assert!(judge_answer(wget, &not_found).is_ok());
        assert!(judge_answer(wget, &Expect::Refused("401 Unauthorized")).is_err());
        assert!(judge_answer("wget: bad address", &not_found).is_err());
        let token = "status=HTTP/1.1 200 OK; ttl=60; token-bytes=56";
        assert!(judge_answer(token, &Expect::Token).is_ok());
        for bad in [
            "status=HTTP/1.1 200 OK; ttl=60; token-bytes=0",
            "status=HTTP/1.1 200 OK; ttl=; token-bytes=56",
            "status=HTTP/1.1 400 Bad Request; ttl=60; token-bytes=56",
        ] {
            assert!(judge_answer(bad, &Expect::Token).is_err(), "{bad}");
        }
    }

    fn mmds_group(created: u64, no_token: u64, invalid: u64, frames: u64) -> Value {
        json!({"mmds": {
            "connections_created": created, "connections_destroyed": created,
            "rx_accepted": frames, "rx_count": frames, "tx_frames": frames,
            "tx_bytes": frames * 60, "rx_no_token": no_token, "rx_invalid_token": invalid,
        }})
    }

    #[test]
    fn metrics_are_judged_against_the_guests_requests() {
        assert!(judge_metrics(V1_NAME, &mmds_group(4, 4, 0, 30)).is_ok());
        assert!(judge_metrics(V2_NAME, &mmds_group(6, 1, 1, 37)).is_ok());
        // The token counts, the connections and the frames must all be there.
        let e = judge_metrics(V2_NAME, &mmds_group(6, 1, 0, 37)).unwrap_err();
        assert!(e.contains("rx_invalid_token is Some(0), not 1"), "{e}");
        let e = judge_metrics(V1_NAME, &mmds_group(0, 4, 0, 0)).unwrap_err();
        for field in [
            "connections_created",
            "rx_accepted",
            "tx_frames",
            "tx_bytes",
        ] {
            assert!(e.contains(field), "{e}");
        }
        let mut more_destroyed = mmds_group(4, 4, 0, 30);
        more_destroyed["mmds"]["connections_destroyed"] = json!(5);
        assert!(judge_metrics(V1_NAME, &more_destroyed).is_err());
        assert!(judge_metrics(V1_NAME, &json!({})).is_err());
    }

    #[test]
    fn a_whole_run_is_judged() {
        let serial = "PETREL-CHECK mmds-v1-list ok ami-id,hostname,placement/\r\n\
            PETREL-CHECK mmds-v1-leaf ok ami-0b5e24c0ffee\r\n\
            PETREL-CHECK mmds-v1-json ok {\"ami-id\":\"ami-0b5e24c0ffee\",\
            \"hostname\":\"petrel-mmds-guest.internal\",\
            \"placement\":{\"availability-zone\":\"petrel-24a\"}}\r\n\
            PETREL-CHECK mmds-v1-missing ok wget: server returned error: HTTP/1.1 404 Not \
            Found\r\nPETREL-CHECKS-DONE\r\n";
        let metrics = mmds_group(4, 4, 0, 30);
        let notes = judge_v1(serial, &metrics).unwrap();
        assert!(notes[0].contains("mmds-v1-list, mmds-v1-leaf, mmds-v1-json, mmds-v1-missing"));
        // A wrong leaf is caught by the host, though the guest said ok.
        let wrong = serial.replace("leaf ok ami-0b5e24c0ffee", "leaf ok ami-other");
        let failures = judge_v1(&wrong, &metrics).unwrap_err();
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(failures[0].starts_with("mmds-v1-leaf: got \"ami-other\""));
        // The V2 judge finds none of its checks here (their absence is the guest-check
        // judge's failure) and V2's token counts wrong.
        assert!(judge_v2(serial, &metrics).is_err());
    }

    #[test]
    fn the_vm_is_configured_with_the_mmds_on_its_interface() {
        let fc = fc_config(
            V2_NAME,
            Path::new("/k/vmlinux"),
            Path::new("/d/r.ext4"),
            Path::new("/d/c.json"),
            Path::new("/d/m.json"),
            Path::new("/d/md.json"),
        );
        let file = fc.config_file();
        assert_eq!(file["network-interfaces"][0]["iface_id"], IFACE_ID);
        assert_eq!(file["network-interfaces"][0]["host_dev_name"], "ptap0");
        assert_eq!(file["mmds-config"]["version"], "V2");
        assert_eq!(file["mmds-config"]["network_interfaces"], json!([IFACE_ID]));
        assert_eq!(file["mmds-config"]["ipv4_address"], MMDS_IP);
        assert_eq!(file["metrics"]["metrics_path"], "/d/m.json");
        assert_eq!(file["drives"][0]["is_root_device"], true);
        assert_eq!(
            mmds_config(V1_NAME),
            json!({"version": "V1", "network_interfaces": ["eth0"]})
        );
        assert_eq!(
            host::describe(&crate::api_boot::command(
                Path::new("/t/petrel"),
                &fc,
                Some("ns1")
            )),
            "ip netns exec ns1 /t/petrel --config-file /d/c.json --no-api --metadata /d/md.json"
        );
        // Over the API, the same: the interface before the MMDS that names it, the start last.
        let api = FcBoot {
            via: Via::Api {
                socket: "/tmp/a.sock".into(),
            },
            ..fc
        };
        let paths: Vec<String> = api.requests().into_iter().map(|(p, _)| p).collect();
        assert_eq!(
            paths,
            [
                "/boot-source",
                "/machine-config",
                "/drives/rootfs",
                "/network-interfaces/eth0",
                "/mmds/config",
                "/metrics",
                "/actions"
            ]
        );
        assert_eq!(
            api.args(),
            ["--api-sock", "/tmp/a.sock", "--metadata", "/d/md.json"]
        );
    }
}
