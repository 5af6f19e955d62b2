//! The routes of Firecracker's API: a [`Request`] becomes one [`ApiRequest`] (its body parsed
//! and validated) or one [`ApiError`], answered `400 Bad Request` with
//! `{"fault_message": "..."}`. Also the helpers that build the other responses.
//!
//! Paths are matched exactly, segment by segment: no trailing `/`, no empty segment, no extra
//! segment. Routes of the swagger that Petrel does not implement yet are recognised and refused
//! with a message saying so, rather than as unknown routes.

use serde::{Deserialize, Serialize};

use crate::http::{Method, Request, Response};
use crate::model::{
    quoted, validate_id, ActionType, Balloon, BalloonStartCmd, BalloonStatsUpdate, BalloonUpdate,
    BootSource, Drive, EntropyDevice, InstanceActionInfo, Logger, MachineConfiguration,
    MachineConfigurationUpdate, Metrics, MmdsConfig, NetworkInterface, PartialDrive,
    PartialNetworkInterface, SnapshotCreateParams, SnapshotLoadParams, ValidationError, VmState,
    Vsock, MAX_QUOTED_LEN,
};

/// One request of the API, parsed and validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiRequest {
    /// `GET /`: answer [`crate::model::InstanceInfo`].
    GetInstanceInfo,
    /// `GET /version`: answer [`crate::model::FirecrackerVersion`].
    GetVersion,
    /// `GET /vm/config`: answer [`crate::reply::VmConfigReply`] (of the VMM's
    /// [`crate::model::FullVmConfiguration`]).
    GetVmConfig,
    /// `GET /machine-config`: answer [`MachineConfiguration`].
    GetMachineConfig,
    /// `PUT /boot-source`.
    PutBootSource(BootSource),
    /// `PUT /machine-config` (validated on its own).
    PutMachineConfig(MachineConfiguration),
    /// `PATCH /machine-config`: apply with [`MachineConfiguration::apply`] and validate the
    /// result, since only that tells whether the combination holds.
    PatchMachineConfig(MachineConfigurationUpdate),
    /// `PUT /drives/{drive_id}` (the path's id equals the body's).
    PutDrive(Drive),
    /// `PATCH /drives/{drive_id}` (the path's id equals the body's).
    PatchDrive(PartialDrive),
    /// `PUT /network-interfaces/{iface_id}` (the path's id equals the body's).
    PutNetworkInterface(NetworkInterface),
    /// `PATCH /network-interfaces/{iface_id}` (the path's id equals the body's).
    PatchNetworkInterface(PartialNetworkInterface),
    /// `PUT /vsock`.
    PutVsock(Vsock),
    /// `PUT /entropy`.
    PutEntropy(EntropyDevice),
    /// `PUT /logger`.
    PutLogger(Logger),
    /// `PUT /metrics`.
    PutMetrics(Metrics),
    /// `PUT /actions`.
    Action(ActionType),
    /// `PATCH /vm`.
    PatchVm(VmState),
    /// `PUT /snapshot/create`: write a snapshot of the (paused) VM.
    CreateSnapshot(SnapshotCreateParams),
    /// `PUT /snapshot/load`: restore a VM in a process that has configured nothing else. The
    /// memory backend is a file or a page-fault handler's socket (`Uffd`); use
    /// [`SnapshotLoadParams::mem_file`], [`SnapshotLoadParams::track_dirty_pages`] and
    /// [`SnapshotLoadParams::resume_vm`] rather than the raw fields.
    LoadSnapshot(SnapshotLoadParams),
    /// `GET /mmds`: answer the MMDS data store (`{}` while empty).
    GetMmds,
    /// `PUT /mmds`: replace the MMDS data store with this document.
    PutMmds(serde_json::Value),
    /// `PATCH /mmds`: merge this document into the MMDS data store (RFC 7396 JSON merge
    /// patch).
    PatchMmds(serde_json::Value),
    /// `PUT /mmds/config` (validated on its own; whether its interfaces exist is the VMM's
    /// check, [`MmdsConfig::check_interfaces`]).
    PutMmdsConfig(MmdsConfig),
    /// `PUT /balloon`: the balloon device, before the start (whether `amount_mib` fits the
    /// guest's memory is the VMM's check, [`Balloon::check_memory`]).
    PutBalloon(Balloon),
    /// `PATCH /balloon`: a new target size.
    PatchBalloon(BalloonUpdate),
    /// `GET /balloon`: answer the balloon's [`Balloon`] (its current target after the start).
    GetBalloon,
    /// `GET /balloon/statistics`: answer the device's latest statistics.
    GetBalloonStats,
    /// `PATCH /balloon/statistics`: a new statistics polling interval.
    PatchBalloonStats(BalloonStatsUpdate),
    /// `PATCH /balloon/hinting/start`: start a free page hinting run (an empty body is
    /// [`BalloonStartCmd::default`]).
    StartBalloonHinting(BalloonStartCmd),
    /// `GET /balloon/hinting/status`: answer the hinting run's status.
    GetBalloonHintingStatus,
    /// `PATCH /balloon/hinting/stop`: stop the free page hinting run (no body, or `{}`).
    StopBalloonHinting,
    /// `PUT /snapshot/working-set` (Petrel's, not Firecracker's; no body, or `{}`): save the
    /// pages a VM restored with `--working-set record` has touched so far as its snapshot's
    /// working set, now rather than when it ends.
    SaveWorkingSet,
}

/// Why a request was refused. Its `Display` is the `fault_message`; every one is answered
/// `400 Bad Request` (see [`ApiError::to_response`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// No route has this path.
    #[error("invalid request: no route for {method} {path}")]
    UnknownRoute {
        /// The method, as sent.
        method: String,
        /// The path, as sent.
        path: String,
    },
    /// The path is known but not with this method.
    #[error("method {method} is not allowed on {path} (allowed: {allowed})")]
    MethodNotAllowed {
        /// The method, as sent.
        method: String,
        /// The path, as sent.
        path: String,
        /// The methods the path takes.
        allowed: &'static str,
    },
    /// A `PUT` or `PATCH` came without a body.
    #[error("empty {method} request on {path}: a JSON body is required")]
    EmptyBody {
        /// The method.
        method: &'static str,
        /// The path, as sent.
        path: String,
    },
    /// A `GET` came with a body.
    #[error("GET request on {path} cannot have a body")]
    BodyOnGet {
        /// The path, as sent.
        path: String,
    },
    /// The body is not JSON, or not of the expected shape (serde's message, which names an
    /// unknown or missing field).
    #[error("invalid body for {method} {path}: {message}")]
    InvalidBody {
        /// The method.
        method: &'static str,
        /// The path, as sent.
        path: String,
        /// What the JSON parser said.
        message: String,
    },
    /// The id in the path differs from the one in the body.
    #[error("the {field} in the path (`{path_id}`) does not match the {field} in the body (`{body_id}`)")]
    IdMismatch {
        /// `drive_id` or `iface_id`.
        field: &'static str,
        /// The id in the path.
        path_id: String,
        /// The id in the body.
        body_id: String,
    },
    /// The body parsed but a value is refused.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// A route of the swagger (or a value) Petrel does not implement yet.
    #[error("{0} is not supported by Petrel yet")]
    NotSupported(String),
}

impl ApiError {
    /// The message sent to the client.
    pub fn fault_message(&self) -> String {
        self.to_string()
    }

    /// The response: `400` with `{"fault_message": ...}`.
    pub fn to_response(&self) -> Response {
        Response::fault(self.fault_message())
    }
}

/// `200 OK` with `value` as the JSON body (`500` with a fault if it cannot be serialized,
/// which none of [`crate::model`]'s types can fail to be).
pub fn ok_json<T: Serialize + ?Sized>(value: &T) -> Response {
    match serde_json::to_string(value) {
        Ok(body) => Response::json(200, body),
        Err(err) => {
            Response::fault_with_status(500, format!("cannot serialize the response: {err}"))
        }
    }
}

/// The method's name, for messages.
fn method_name(method: &Method) -> &str {
    match method {
        Method::Get => "GET",
        Method::Put => "PUT",
        Method::Patch => "PATCH",
        Method::Other(name) => name,
    }
}

/// The most bytes of a parser's message quoted back (serde quotes unknown field and variant
/// names, which come from the client).
const MAX_PARSER_MESSAGE_LEN: usize = 512;

/// A client's text (method, path, id) cut for a message.
fn echoed(text: &str) -> String {
    quoted(text, MAX_QUOTED_LEN)
}

/// The routes this module knows, with the path's id when it has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route<'a> {
    Root,
    Version,
    VmConfig,
    MachineConfig,
    BootSource,
    Drive(&'a str),
    NetworkInterface(&'a str),
    Vsock,
    Entropy,
    Logger,
    Metrics,
    Actions,
    Vm,
    SnapshotCreate,
    SnapshotLoad,
    SnapshotWorkingSet,
    Mmds,
    MmdsConfig,
    Balloon,
    BalloonStatistics,
    BalloonHintingStart,
    BalloonHintingStatus,
    BalloonHintingStop,
    /// A swagger route Petrel does not implement; the text names it in the message.
    Unsupported(&'static str),
}

impl Route<'_> {
    /// The methods the route takes, for the "not allowed" message.
    fn allowed(self) -> &'static str {
        match self {
            Route::Root | Route::Version | Route::VmConfig | Route::BalloonHintingStatus => "GET",
            Route::MachineConfig | Route::Mmds | Route::Balloon => "GET, PUT, PATCH",
            Route::Drive(_) | Route::NetworkInterface(_) => "PUT, PATCH",
            Route::BalloonStatistics => "GET, PATCH",
            Route::Vm | Route::BalloonHintingStart | Route::BalloonHintingStop => "PATCH",
            Route::BootSource
            | Route::Vsock
            | Route::Entropy
            | Route::Logger
            | Route::Metrics
            | Route::Actions
            | Route::SnapshotCreate
            | Route::SnapshotLoad
            | Route::SnapshotWorkingSet
            | Route::MmdsConfig => "PUT",
            Route::Unsupported(_) => "none",
        }
    }
}

/// Finds the route of a path, or `None`.
fn route(path: &str) -> Option<Route<'_>> {
    if path == "/" {
        return Some(Route::Root);
    }
    let rest = path.strip_prefix('/')?;
    let segments: Vec<&str> = rest.split('/').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return None;
    }
    let route = match segments.as_slice() {
        ["version"] => Route::Version,
        ["vm"] => Route::Vm,
        ["vm", "config"] => Route::VmConfig,
        ["machine-config"] => Route::MachineConfig,
        ["boot-source"] => Route::BootSource,
        ["drives", id] => Route::Drive(id),
        ["network-interfaces", id] => Route::NetworkInterface(id),
        ["vsock"] => Route::Vsock,
        ["entropy"] => Route::Entropy,
        ["logger"] => Route::Logger,
        ["metrics"] => Route::Metrics,
        ["actions"] => Route::Actions,
        ["mmds"] => Route::Mmds,
        ["mmds", "config"] => Route::MmdsConfig,
        ["balloon"] => Route::Balloon,
        ["balloon", "statistics"] => Route::BalloonStatistics,
        ["balloon", "hinting", "start"] => Route::BalloonHintingStart,
        ["balloon", "hinting", "status"] => Route::BalloonHintingStatus,
        ["balloon", "hinting", "stop"] => Route::BalloonHintingStop,
        ["snapshot", "create"] => Route::SnapshotCreate,
        ["snapshot", "load"] => Route::SnapshotLoad,
        ["snapshot", "working-set"] => Route::SnapshotWorkingSet,
        ["cpu-config"] => Route::Unsupported("custom CPU templates (/cpu-config)"),
        ["pmem", _] => Route::Unsupported("virtio-pmem devices (/pmem/{id})"),
        ["hotplug", "memory"] => Route::Unsupported("memory hotplug (/hotplug/memory)"),
        ["serial"] => Route::Unsupported("serial console configuration (/serial)"),
        _ => return None,
    };
    Some(route)
}

/// Deserializes a body, naming the method and path in the error.
fn parse_body<'de, T: Deserialize<'de>>(
    method: &'static str,
    path: &str,
    body: &'de [u8],
) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|err| ApiError::InvalidBody {
        method,
        path: echoed(path),
        message: quoted(&err.to_string(), MAX_PARSER_MESSAGE_LEN),
    })
}

/// Checks that the body's id equals the path's (both already known to be valid ids).
fn same_id(field: &'static str, path_id: &str, body_id: &str) -> Result<(), ApiError> {
    if path_id != body_id {
        return Err(ApiError::IdMismatch {
            field,
            path_id: path_id.to_owned(),
            body_id: echoed(body_id),
        });
    }
    Ok(())
}

/// The body of `PATCH /vm`, its state kept as text so that an unknown state gets its own
/// message.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VmBody {
    state: String,
}

/// A body that takes no field (`PATCH /balloon/hinting/stop`): `{}` only.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoFields {}

/// The body of a route whose body is optional: an empty one (or only whitespace) is `{}`.
fn optional_body(body: &[u8]) -> &[u8] {
    if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    }
}

/// Turns a request into an [`ApiRequest`], or the [`ApiError`] to answer with
/// [`ApiError::to_response`].
pub fn parse_request(req: &Request) -> Result<ApiRequest, ApiError> {
    let path = req.path.as_str();
    let Some(route) = route(path) else {
        return Err(ApiError::UnknownRoute {
            method: echoed(method_name(&req.method)),
            path: echoed(path),
        });
    };
    if let Route::Unsupported(what) = route {
        return Err(ApiError::NotSupported(what.to_owned()));
    }
    let not_allowed = || ApiError::MethodNotAllowed {
        method: echoed(method_name(&req.method)),
        path: echoed(path),
        allowed: route.allowed(),
    };
    let method: &'static str = match req.method {
        Method::Get => "GET",
        Method::Put => "PUT",
        Method::Patch => "PATCH",
        Method::Other(_) => return Err(not_allowed()),
    };
    if method == "GET" {
        let request = match route {
            Route::Root => ApiRequest::GetInstanceInfo,
            Route::Version => ApiRequest::GetVersion,
            Route::VmConfig => ApiRequest::GetVmConfig,
            Route::MachineConfig => ApiRequest::GetMachineConfig,
            Route::Mmds => ApiRequest::GetMmds,
            Route::Balloon => ApiRequest::GetBalloon,
            Route::BalloonStatistics => ApiRequest::GetBalloonStats,
            Route::BalloonHintingStatus => ApiRequest::GetBalloonHintingStatus,
            _ => return Err(not_allowed()),
        };
        if !req.body.is_empty() {
            return Err(ApiError::BodyOnGet { path: echoed(path) });
        }
        return Ok(request);
    }
    let takes_method = match method {
        "PUT" => !matches!(
            route,
            Route::Root
                | Route::Version
                | Route::VmConfig
                | Route::Vm
                | Route::BalloonStatistics
                | Route::BalloonHintingStart
                | Route::BalloonHintingStatus
                | Route::BalloonHintingStop
        ),
        _ => matches!(
            route,
            Route::MachineConfig
                | Route::Drive(_)
                | Route::NetworkInterface(_)
                | Route::Vm
                | Route::Mmds
                | Route::Balloon
                | Route::BalloonStatistics
                | Route::BalloonHintingStart
                | Route::BalloonHintingStop
        ),
    };
    if !takes_method {
        return Err(not_allowed());
    }
    // The hinting commands take an optional body, as in Firecracker: none is `{}`.
    match route {
        Route::BalloonHintingStart => {
            let body = optional_body(&req.body);
            return Ok(ApiRequest::StartBalloonHinting(parse_body(
                method, path, body,
            )?));
        }
        Route::BalloonHintingStop => {
            let NoFields {} = parse_body(method, path, optional_body(&req.body))?;
            return Ok(ApiRequest::StopBalloonHinting);
        }
        Route::SnapshotWorkingSet => {
            let NoFields {} = parse_body(method, path, optional_body(&req.body))?;
            return Ok(ApiRequest::SaveWorkingSet);
        }
        _ => {}
    }
    if req.body.is_empty() {
        return Err(ApiError::EmptyBody {
            method,
            path: echoed(path),
        });
    }
    let body = req.body.as_slice();
    let request = match (method, route) {
        ("PUT", Route::BootSource) => {
            let boot: BootSource = parse_body(method, path, body)?;
            boot.validate()?;
            ApiRequest::PutBootSource(boot)
        }
        ("PUT", Route::MachineConfig) => {
            let config: MachineConfiguration = parse_body(method, path, body)?;
            config.validate()?;
            ApiRequest::PutMachineConfig(config)
        }
        ("PATCH", Route::MachineConfig) => {
            let update: MachineConfigurationUpdate = parse_body(method, path, body)?;
            update.validate()?;
            ApiRequest::PatchMachineConfig(update)
        }
        ("PUT", Route::Drive(id)) => {
            validate_id("drive_id", id)?;
            let drive: Drive = parse_body(method, path, body)?;
            same_id("drive_id", id, &drive.drive_id)?;
            drive.validate()?;
            ApiRequest::PutDrive(drive)
        }
        ("PATCH", Route::Drive(id)) => {
            validate_id("drive_id", id)?;
            let drive: PartialDrive = parse_body(method, path, body)?;
            same_id("drive_id", id, &drive.drive_id)?;
            drive.validate()?;
            ApiRequest::PatchDrive(drive)
        }
        ("PUT", Route::NetworkInterface(id)) => {
            validate_id("iface_id", id)?;
            let iface: NetworkInterface = parse_body(method, path, body)?;
            same_id("iface_id", id, &iface.iface_id)?;
            iface.validate()?;
            ApiRequest::PutNetworkInterface(iface)
        }
        ("PATCH", Route::NetworkInterface(id)) => {
            validate_id("iface_id", id)?;
            let iface: PartialNetworkInterface = parse_body(method, path, body)?;
            same_id("iface_id", id, &iface.iface_id)?;
            iface.validate()?;
            ApiRequest::PatchNetworkInterface(iface)
        }
        ("PUT", Route::Vsock) => {
            let vsock: Vsock = parse_body(method, path, body)?;
            vsock.validate()?;
            ApiRequest::PutVsock(vsock)
        }
        ("PUT", Route::Entropy) => {
            let entropy: EntropyDevice = parse_body(method, path, body)?;
            entropy.validate()?;
            ApiRequest::PutEntropy(entropy)
        }
        ("PUT", Route::Logger) => {
            let logger: Logger = parse_body(method, path, body)?;
            logger.validate()?;
            ApiRequest::PutLogger(logger)
        }
        ("PUT", Route::Metrics) => {
            let metrics: Metrics = parse_body(method, path, body)?;
            metrics.validate()?;
            ApiRequest::PutMetrics(metrics)
        }
        ("PUT", Route::Actions) => {
            let action: InstanceActionInfo = parse_body(method, path, body)?;
            ApiRequest::Action(action.action_type)
        }
        ("PUT", Route::SnapshotCreate) => {
            let params: SnapshotCreateParams = parse_body(method, path, body)?;
            params.validate()?;
            ApiRequest::CreateSnapshot(params)
        }
        ("PUT", Route::SnapshotLoad) => {
            let params: SnapshotLoadParams = parse_body(method, path, body)?;
            params.validate()?;
            ApiRequest::LoadSnapshot(params)
        }
        ("PUT", Route::Mmds) => ApiRequest::PutMmds(parse_body(method, path, body)?),
        ("PATCH", Route::Mmds) => ApiRequest::PatchMmds(parse_body(method, path, body)?),
        ("PUT", Route::MmdsConfig) => {
            let config: MmdsConfig = parse_body(method, path, body)?;
            config.validate()?;
            ApiRequest::PutMmdsConfig(config)
        }
        ("PUT", Route::Balloon) => ApiRequest::PutBalloon(parse_body(method, path, body)?),
        ("PATCH", Route::Balloon) => ApiRequest::PatchBalloon(parse_body(method, path, body)?),
        ("PATCH", Route::BalloonStatistics) => {
            ApiRequest::PatchBalloonStats(parse_body(method, path, body)?)
        }
        ("PATCH", Route::Vm) => {
            let vm: VmBody = parse_body(method, path, body)?;
            match vm.state.as_str() {
                "Paused" => ApiRequest::PatchVm(VmState::Paused),
                "Resumed" => ApiRequest::PatchVm(VmState::Resumed),
                other => {
                    return Err(ApiError::NotSupported(format!(
                        "the VM state `{}` (PATCH /vm takes Paused or Resumed)",
                        echoed(other)
                    )))
                }
            }
        }
        _ => return Err(not_allowed()),
    };
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        CacheType, IoEngine, LogLevel, MemoryBackend, MemoryBackendType, NetworkOverride,
        RateLimiter, SnapshotType, TokenBucket, VsockOverride,
    };

    fn request(method: Method, path: &str, body: &str) -> Request {
        Request {
            method,
            path: path.to_owned(),
            body: body.as_bytes().to_vec(),
        }
    }

    fn put(path: &str, body: &str) -> Result<ApiRequest, ApiError> {
        parse_request(&request(Method::Put, path, body))
    }

    fn patch(path: &str, body: &str) -> Result<ApiRequest, ApiError> {
        parse_request(&request(Method::Patch, path, body))
    }

    fn get(path: &str) -> Result<ApiRequest, ApiError> {
        parse_request(&request(Method::Get, path, ""))
    }

    /// The fault message of a refused request.
    fn refused(result: Result<ApiRequest, ApiError>) -> String {
        match result {
            Ok(request) => panic!("accepted: {request:?}"),
            Err(err) => err.fault_message(),
        }
    }

    #[test]
    fn gets() {
        assert_eq!(get("/"), Ok(ApiRequest::GetInstanceInfo));
        assert_eq!(get("/version"), Ok(ApiRequest::GetVersion));
        assert_eq!(get("/vm/config"), Ok(ApiRequest::GetVmConfig));
        assert_eq!(get("/machine-config"), Ok(ApiRequest::GetMachineConfig));
        let with_body = parse_request(&request(Method::Get, "/version", "{}"));
        assert_eq!(
            refused(with_body),
            "GET request on /version cannot have a body"
        );
    }

    #[test]
    fn unknown_routes_name_method_and_path() {
        assert_eq!(
            refused(get("/nope")),
            "invalid request: no route for GET /nope"
        );
        assert_eq!(
            refused(put("/drives", "{}")),
            "invalid request: no route for PUT /drives"
        );
        for path in [
            "",
            "version",
            "/version/",
            "//version",
            "/drives/a/b",
            "/drives/",
        ] {
            let err = parse_request(&request(Method::Get, path, "")).unwrap_err();
            assert!(
                matches!(err, ApiError::UnknownRoute { .. }),
                "{path}: {err}"
            );
        }
        let long = format!("/{}", "x".repeat(10_000));
        let message = refused(get(&long));
        assert!(message.len() < 300, "{}", message.len());
        let field = "f".repeat(100_000);
        let message = refused(put("/metrics", &format!(r#"{{"{field}": 1}}"#)));
        assert!(message.len() < 700, "{}", message.len());
    }

    #[test]
    fn methods_not_allowed() {
        assert_eq!(
            refused(patch("/boot-source", "{}")),
            "method PATCH is not allowed on /boot-source (allowed: PUT)"
        );
        assert_eq!(
            refused(put("/version", "{}")),
            "method PUT is not allowed on /version (allowed: GET)"
        );
        assert_eq!(
            refused(get("/drives/rootfs")),
            "method GET is not allowed on /drives/rootfs (allowed: PUT, PATCH)"
        );
        assert_eq!(
            refused(put("/vm", r#"{"state": "Paused"}"#)),
            "method PUT is not allowed on /vm (allowed: PATCH)"
        );
        let delete = parse_request(&request(Method::Other("DELETE".into()), "/logger", ""));
        assert_eq!(
            refused(delete),
            "method DELETE is not allowed on /logger (allowed: PUT)"
        );
    }

    #[test]
    fn empty_bodies() {
        assert_eq!(
            refused(put("/machine-config", "")),
            "empty PUT request on /machine-config: a JSON body is required"
        );
        assert_eq!(
            refused(patch("/drives/rootfs", "")),
            "empty PATCH request on /drives/rootfs: a JSON body is required"
        );
    }

    #[test]
    fn invalid_json_and_unknown_fields() {
        let message = refused(put("/boot-source", "{"));
        assert!(
            message.starts_with("invalid body for PUT /boot-source: "),
            "{message}"
        );
        let message = refused(put(
            "/boot-source",
            r#"{"kernel_image_path": "vmlinux", "boot_arg": "x"}"#,
        ));
        assert!(message.contains("unknown field `boot_arg`"), "{message}");
        let message = refused(put("/boot-source", r#"{"boot_args": "x"}"#));
        assert!(
            message.contains("missing field `kernel_image_path`"),
            "{message}"
        );
        let message = refused(put("/metrics", "\u{0}\u{1}"));
        assert!(
            message.starts_with("invalid body for PUT /metrics"),
            "{message}"
        );
    }

    #[test]
    fn boot_source() {
        // docs/getting-started.md
        let body = r#"{
            "kernel_image_path": "./hello-vmlinux.bin",
            "boot_args": "console=ttyS0 reboot=k panic=1 pci=off"
        }"#;
        assert_eq!(
            put("/boot-source", body),
            Ok(ApiRequest::PutBootSource(BootSource {
                kernel_image_path: "./hello-vmlinux.bin".into(),
                boot_args: Some("console=ttyS0 reboot=k panic=1 pci=off".into()),
                initrd_path: None,
            }))
        );
        assert_eq!(
            refused(put("/boot-source", r#"{"kernel_image_path": ""}"#)),
            "kernel_image_path cannot be empty"
        );
    }

    #[test]
    fn machine_config() {
        let body = r#"{"vcpu_count": 2, "mem_size_mib": 1024, "smt": false}"#;
        let Ok(ApiRequest::PutMachineConfig(config)) = put("/machine-config", body) else {
            panic!("refused");
        };
        assert_eq!((config.vcpu_count, config.mem_size_mib), (2, 1024));
        assert_eq!(
            refused(put(
                "/machine-config",
                r#"{"vcpu_count": 64, "mem_size_mib": 1024}"#
            )),
            "vcpu_count must be between 1 and 32, got 64"
        );
        assert_eq!(
            refused(put(
                "/machine-config",
                r#"{"vcpu_count": 1, "mem_size_mib": 0}"#
            )),
            "mem_size_mib must be greater than 0"
        );
        let message = refused(put("/machine-config", r#"{"vcpu_count": 1}"#));
        assert!(
            message.contains("missing field `mem_size_mib`"),
            "{message}"
        );
        let message = refused(put(
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 128, "cpu_template": "T3"}"#,
        ));
        assert!(message.contains("unknown variant `T3`"), "{message}");
        let message = refused(put(
            "/machine-config",
            r#"{"vcpu_count": -1, "mem_size_mib": 1}"#,
        ));
        assert!(
            message.starts_with("invalid body for PUT /machine-config"),
            "{message}"
        );
    }

    #[test]
    fn machine_config_patch() {
        assert_eq!(
            patch("/machine-config", r#"{"vcpu_count": 4}"#),
            Ok(ApiRequest::PatchMachineConfig(MachineConfigurationUpdate {
                vcpu_count: Some(4),
                ..MachineConfigurationUpdate::default()
            }))
        );
        assert_eq!(
            refused(patch("/machine-config", "{}")),
            "the PATCH body of /machine-config sets no field to update"
        );
        assert_eq!(
            refused(patch("/machine-config", r#"{"mem_size_mib": 0}"#)),
            "mem_size_mib must be greater than 0"
        );
    }

    #[test]
    fn drives() {
        // docs/getting-started.md
        let body = r#"{
            "drive_id": "rootfs",
            "path_on_host": "./ubuntu.ext4",
            "is_root_device": true,
            "is_read_only": false
        }"#;
        let Ok(ApiRequest::PutDrive(drive)) = put("/drives/rootfs", body) else {
            panic!("refused");
        };
        assert_eq!(drive.path_on_host.as_deref(), Some("./ubuntu.ext4"));
        assert!(drive.is_root_device);
        let full = r#"{"drive_id": "scratch", "path_on_host": "/tmp/s.ext4",
            "is_root_device": false, "partuuid": "0eaa91a0-01", "is_read_only": true,
            "cache_type": "Writeback", "io_engine": "Async",
            "rate_limiter": {"bandwidth": {"size": 1048576, "refill_time": 1000},
                             "ops": {"size": 100, "one_time_burst": 50, "refill_time": 1000}}}"#;
        let Ok(ApiRequest::PutDrive(drive)) = put("/drives/scratch", full) else {
            panic!("refused");
        };
        assert_eq!(drive.cache_type, Some(CacheType::Writeback));
        assert_eq!(drive.io_engine, Some(IoEngine::Async));
        assert_eq!(
            drive.rate_limiter.and_then(|r| r.ops),
            Some(TokenBucket {
                size: 100,
                one_time_burst: Some(50),
                refill_time: 1000
            })
        );
        assert_eq!(
            refused(put("/drives/other", body)),
            "the drive_id in the path (`other`) does not match the drive_id in the body (`rootfs`)"
        );
        assert_eq!(
            refused(put("/drives/root-fs", body)),
            "drive_id `root-fs` may only contain ASCII letters, digits and '_'"
        );
        let bad_id = body.replace("\"rootfs\"", "\"root fs\"");
        assert!(refused(put("/drives/rootfs", &bad_id)).starts_with("the drive_id in the path"));
        let no_backend = r#"{"drive_id": "rootfs", "is_root_device": true}"#;
        assert_eq!(
            refused(put("/drives/rootfs", no_backend)),
            "drive `rootfs` must set exactly one of path_on_host (virtio-block) and socket (vhost-user-block)"
        );
    }

    #[test]
    fn drive_patch() {
        // docs/api_requests/patch-block.md
        let body = r#"{"drive_id": "scratch", "path_on_host": "new_scratch.ext4"}"#;
        assert_eq!(
            patch("/drives/scratch", body),
            Ok(ApiRequest::PatchDrive(PartialDrive {
                drive_id: "scratch".into(),
                path_on_host: Some("new_scratch.ext4".into()),
                rate_limiter: None,
            }))
        );
        let message = refused(patch(
            "/drives/scratch",
            r#"{"drive_id": "scratch", "is_read_only": true}"#,
        ));
        assert!(
            message.contains("unknown field `is_read_only`"),
            "{message}"
        );
        assert!(refused(patch("/drives/x", body)).contains("does not match"));
    }

    #[test]
    fn network_interfaces() {
        // docs/getting-started.md
        let body = r#"{
            "iface_id": "net1",
            "guest_mac": "06:00:AC:10:00:02",
            "host_dev_name": "tap0"
        }"#;
        let Ok(ApiRequest::PutNetworkInterface(iface)) = put("/network-interfaces/net1", body)
        else {
            panic!("refused");
        };
        assert_eq!(iface.host_dev_name, "tap0");
        assert_eq!(iface.guest_mac.as_deref(), Some("06:00:AC:10:00:02"));
        assert!(refused(put("/network-interfaces/eth0", body)).contains("does not match"));
        let bad_mac = body.replace("06:00:AC:10:00:02", "06:00:AC:10:00");
        assert!(refused(put("/network-interfaces/net1", &bad_mac)).starts_with("guest_mac"));
        assert_eq!(
            refused(put("/network-interfaces/net.1", body)),
            "iface_id `net.1` may only contain ASCII letters, digits and '_'"
        );
        let with_mtu = r#"{"iface_id": "eth0", "host_dev_name": "tap0", "mtu": 9001}"#;
        assert!(put("/network-interfaces/eth0", with_mtu).is_ok());
    }

    #[test]
    fn network_interface_patch() {
        // docs/api_requests/patch-network-interface.md
        let body = r#"{
            "iface_id": "eth0",
            "rx_rate_limiter": {"bandwidth": {"size": 0, "refill_time": 0}},
            "tx_rate_limiter": {"ops": {"size": 1000, "refill_time": 100}}
        }"#;
        let Ok(ApiRequest::PatchNetworkInterface(iface)) = patch("/network-interfaces/eth0", body)
        else {
            panic!("refused");
        };
        assert_eq!(
            iface.rx_rate_limiter,
            Some(RateLimiter {
                bandwidth: Some(TokenBucket {
                    size: 0,
                    one_time_burst: None,
                    refill_time: 0
                }),
                ops: None
            })
        );
        let message = refused(patch(
            "/network-interfaces/eth0",
            r#"{"iface_id": "eth0", "host_dev_name": "tap1"}"#,
        ));
        assert!(
            message.contains("unknown field `host_dev_name`"),
            "{message}"
        );
        let message = refused(patch(
            "/network-interfaces/eth0",
            r#"{"iface_id": "eth0", "rx_rate_limiter": {"bandwidth": {"size": 1}}}"#,
        ));
        assert!(message.contains("missing field `refill_time`"), "{message}");
    }

    #[test]
    fn vsock_entropy_logger_metrics() {
        assert_eq!(
            put(
                "/vsock",
                r#"{"guest_cid": 3, "uds_path": "./v.sock", "vsock_id": "vsock0"}"#
            ),
            Ok(ApiRequest::PutVsock(Vsock {
                guest_cid: 3,
                uds_path: "./v.sock".into(),
                vsock_id: Some("vsock0".into()),
            }))
        );
        assert_eq!(
            refused(put("/vsock", r#"{"guest_cid": 2, "uds_path": "./v.sock"}"#)),
            "guest_cid must be between 3 and 4294967294, got 2"
        );
        // docs/entropy.md
        let entropy = r#"{"rate_limiter": {"bandwidth": {"size": 1000, "one_time_burst": 0,
            "refill_time": 100}}}"#;
        assert!(matches!(
            put("/entropy", entropy),
            Ok(ApiRequest::PutEntropy(_))
        ));
        assert_eq!(
            put("/entropy", "{}"),
            Ok(ApiRequest::PutEntropy(EntropyDevice::default()))
        );
        // docs/logger.md
        let logger = r#"{"log_path": "logs.fifo", "level": "debug", "show_level": false,
            "show_log_origin": false}"#;
        let Ok(ApiRequest::PutLogger(logger)) = put("/logger", logger) else {
            panic!("refused");
        };
        assert_eq!(logger.level, Some(LogLevel::Debug));
        let message = refused(put("/logger", r#"{"level": "Loud"}"#));
        assert!(message.contains("level `Loud` is not one of"), "{message}");
        assert_eq!(
            put("/metrics", r#"{"metrics_path": "metrics.fifo"}"#),
            Ok(ApiRequest::PutMetrics(Metrics {
                metrics_path: "metrics.fifo".into()
            }))
        );
        assert_eq!(
            refused(put("/metrics", r#"{"metrics_path": ""}"#)),
            "metrics_path cannot be empty"
        );
    }

    #[test]
    fn actions() {
        for (name, action) in [
            ("InstanceStart", ActionType::InstanceStart),
            ("SendCtrlAltDel", ActionType::SendCtrlAltDel),
            ("FlushMetrics", ActionType::FlushMetrics),
        ] {
            let body = format!(r#"{{"action_type": "{name}"}}"#);
            assert_eq!(put("/actions", &body), Ok(ApiRequest::Action(action)));
        }
        let message = refused(put("/actions", r#"{"action_type": "Reboot"}"#));
        assert!(message.contains("unknown variant `Reboot`"), "{message}");
    }

    #[test]
    fn vm_state() {
        assert_eq!(
            patch("/vm", r#"{"state": "Paused"}"#),
            Ok(ApiRequest::PatchVm(VmState::Paused))
        );
        assert_eq!(
            patch("/vm", r#"{"state": "Resumed"}"#),
            Ok(ApiRequest::PatchVm(VmState::Resumed))
        );
        assert_eq!(
            refused(patch("/vm", r#"{"state": "Stopped"}"#)),
            "the VM state `Stopped` (PATCH /vm takes Paused or Resumed) is not supported by Petrel yet"
        );
        let message = refused(patch("/vm", r#"{"state": "Paused", "force": true}"#));
        assert!(message.contains("unknown field `force`"), "{message}");
    }

    #[test]
    fn snapshot_working_set() {
        assert_eq!(
            put("/snapshot/working-set", ""),
            Ok(ApiRequest::SaveWorkingSet)
        );
        assert_eq!(
            put("/snapshot/working-set", "{}"),
            Ok(ApiRequest::SaveWorkingSet)
        );
        assert!(refused(put("/snapshot/working-set", r#"{"path": "/x"}"#)).contains("path"));
        assert!(refused(patch("/snapshot/working-set", "{}")).contains("allowed: PUT"));
        assert!(refused(get("/snapshot/working-set")).contains("allowed: PUT"));
    }

    #[test]
    fn snapshot_create() {
        // docs/snapshotting/snapshot-support.md
        let body = r#"{
            "snapshot_type": "Full",
            "snapshot_path": "./snapshot_file",
            "mem_file_path": "./mem_file"
        }"#;
        let full = SnapshotCreateParams {
            snapshot_path: "./snapshot_file".into(),
            mem_file_path: "./mem_file".into(),
            snapshot_type: Some(SnapshotType::Full),
        };
        assert_eq!(
            put("/snapshot/create", body),
            Ok(ApiRequest::CreateSnapshot(full))
        );
        let Ok(ApiRequest::CreateSnapshot(diff)) = put(
            "/snapshot/create",
            r#"{"snapshot_type": "Diff", "snapshot_path": "s", "mem_file_path": "m"}"#,
        ) else {
            panic!("refused");
        };
        assert_eq!(diff.snapshot_type(), SnapshotType::Diff);
        let Ok(ApiRequest::CreateSnapshot(default)) = put(
            "/snapshot/create",
            r#"{"snapshot_path": "s", "mem_file_path": "m"}"#,
        ) else {
            panic!("refused");
        };
        assert_eq!(default.snapshot_type, None);
        assert_eq!(default.snapshot_type(), SnapshotType::Full);
    }

    #[test]
    fn snapshot_create_refusals() {
        let message = refused(put("/snapshot/create", r#"{"mem_file_path": "m"}"#));
        assert!(
            message.starts_with("invalid body for PUT /snapshot/create")
                && message.contains("missing field `snapshot_path`"),
            "{message}"
        );
        let message = refused(put("/snapshot/create", r#"{"snapshot_path": "s"}"#));
        assert!(
            message.contains("missing field `mem_file_path`"),
            "{message}"
        );
        // `version` was dropped from the swagger (Firecracker 1.5).
        let message = refused(put(
            "/snapshot/create",
            r#"{"snapshot_path": "s", "mem_file_path": "m", "version": "1.0.0"}"#,
        ));
        assert!(message.contains("unknown field `version`"), "{message}");
        for bad in ["full", "Incremental", ""] {
            let body = format!(
                r#"{{"snapshot_path": "s", "mem_file_path": "m", "snapshot_type": "{bad}"}}"#
            );
            let message = refused(put("/snapshot/create", &body));
            assert!(
                message.contains(&format!("snapshot_type `{bad}` is not one of Full, Diff")),
                "{message}"
            );
        }
        assert_eq!(
            refused(put(
                "/snapshot/create",
                r#"{"snapshot_path": "", "mem_file_path": "m"}"#
            )),
            "snapshot_path cannot be empty"
        );
        assert_eq!(
            refused(put(
                "/snapshot/create",
                r#"{"snapshot_path": "s", "mem_file_path": ""}"#
            )),
            "mem_file_path cannot be empty"
        );
        assert_eq!(
            refused(get("/snapshot/create")),
            "method GET is not allowed on /snapshot/create (allowed: PUT)"
        );
        assert_eq!(
            refused(patch("/snapshot/create", "{}")),
            "method PATCH is not allowed on /snapshot/create (allowed: PUT)"
        );
        assert_eq!(
            refused(put("/snapshot/create", "")),
            "empty PUT request on /snapshot/create: a JSON body is required"
        );
        assert!(matches!(
            put("/snapshot", "{}"),
            Err(ApiError::UnknownRoute { .. })
        ));
        assert!(matches!(
            put("/snapshot/create/", "{}"),
            Err(ApiError::UnknownRoute { .. })
        ));
    }

    #[test]
    fn snapshot_load() {
        // docs/snapshotting/snapshot-support.md, every field of the swagger
        let body = r#"{
            "snapshot_path": "./snapshot_file",
            "mem_backend": {"backend_path": "./mem_file", "backend_type": "File"},
            "track_dirty_pages": true,
            "resume_vm": true,
            "network_overrides": [{"iface_id": "eth0", "host_dev_name": "vmtap01"}],
            "vsock_override": {"uds_path": "/tmp/new.sock"},
            "clock_realtime": false
        }"#;
        let expected = SnapshotLoadParams {
            snapshot_path: "./snapshot_file".into(),
            mem_backend: Some(MemoryBackend {
                backend_type: MemoryBackendType::File,
                backend_path: "./mem_file".into(),
            }),
            mem_file_path: None,
            enable_diff_snapshots: None,
            track_dirty_pages: Some(true),
            resume_vm: Some(true),
            network_overrides: vec![NetworkOverride {
                iface_id: "eth0".into(),
                host_dev_name: "vmtap01".into(),
            }],
            vsock_override: Some(VsockOverride {
                uds_path: "/tmp/new.sock".into(),
            }),
            clock_realtime: Some(false),
            huge_pages: None,
        };
        assert_eq!(
            put("/snapshot/load", body),
            Ok(ApiRequest::LoadSnapshot(expected))
        );
        let Ok(ApiRequest::LoadSnapshot(load)) = put("/snapshot/load", body) else {
            panic!("refused");
        };
        assert_eq!(load.mem_file(), "./mem_file");
        assert!(load.track_dirty_pages() && load.resume_vm());

        // The deprecated spellings, as older clients send them.
        let old = r#"{"snapshot_path": "./snapshot_file", "mem_file_path": "./mem_file",
            "enable_diff_snapshots": true}"#;
        let Ok(ApiRequest::LoadSnapshot(load)) = put("/snapshot/load", old) else {
            panic!("refused");
        };
        assert_eq!(load.mem_file(), "./mem_file");
        assert_eq!(load.mem_backend_type(), MemoryBackendType::File);
        assert!(load.track_dirty_pages());
        assert!(!load.resume_vm());
        assert!(load.network_overrides.is_empty());

        let minimal = r#"{"snapshot_path": "s", "mem_file_path": "m"}"#;
        let Ok(ApiRequest::LoadSnapshot(load)) = put("/snapshot/load", minimal) else {
            panic!("refused");
        };
        assert!(!load.track_dirty_pages() && !load.resume_vm());
        assert_eq!(load.vsock_override, None);
    }

    #[test]
    fn snapshot_load_huge_pages() {
        use crate::model::{HugePages, SnapshotLoadHugePages as H};
        for (name, want, over) in [
            ("Snapshot", H::Snapshot, None),
            ("None", H::None, Some(HugePages::None)),
            ("Transparent", H::Transparent, Some(HugePages::Transparent)),
            ("2M", H::Hugetlbfs2M, Some(HugePages::Hugetlbfs2M)),
        ] {
            let body = format!(
                r#"{{"snapshot_path": "s", "mem_file_path": "m", "huge_pages": "{name}"}}"#
            );
            let Ok(ApiRequest::LoadSnapshot(load)) = put("/snapshot/load", &body) else {
                panic!("{name} refused");
            };
            assert_eq!(load.huge_pages, Some(want));
            assert_eq!(want.as_override(), over);
        }
        assert_eq!(H::default().as_override(), None);
        let message = refused(put(
            "/snapshot/load",
            r#"{"snapshot_path": "s", "mem_file_path": "m", "huge_pages": "1M"}"#,
        ));
        assert!(message.contains("unknown variant `1M`"), "{message}");
    }

    #[test]
    fn snapshot_load_refusals() {
        let load = |body: &str| refused(put("/snapshot/load", body));
        let message = load(r#"{"mem_file_path": "m"}"#);
        assert!(
            message.contains("missing field `snapshot_path`"),
            "{message}"
        );
        let message = load(r#"{"snapshot_path": "s", "mem_file_path": "m", "resume": true}"#);
        assert!(message.contains("unknown field `resume`"), "{message}");
        assert_eq!(
            load(
                r#"{"snapshot_path": "s", "mem_file_path": "m",
                    "mem_backend": {"backend_type": "File", "backend_path": "m"}}"#
            ),
            "mem_backend and mem_file_path cannot both be given: mem_file_path is the \
             deprecated spelling of a File mem_backend"
        );
        assert_eq!(
            load(r#"{"snapshot_path": "s", "resume_vm": true}"#),
            "one of mem_backend and mem_file_path (deprecated) is required"
        );
        match put(
            "/snapshot/load",
            r#"{"snapshot_path": "s",
                "mem_backend": {"backend_type": "Uffd", "backend_path": "/tmp/uffd.sock"}}"#,
        ) {
            Ok(ApiRequest::LoadSnapshot(p)) => {
                assert_eq!(p.mem_backend_type(), MemoryBackendType::Uffd);
                assert_eq!(p.mem_file(), "/tmp/uffd.sock");
            }
            other => panic!("{other:?}"),
        }
        let message = load(
            r#"{"snapshot_path": "s", "mem_backend": {"backend_type": "Shm", "backend_path": "m"}}"#,
        );
        assert!(
            message.contains("mem_backend.backend_type `Shm` is not one of File, Uffd"),
            "{message}"
        );
        let message = load(r#"{"snapshot_path": "s", "mem_backend": {"backend_type": "File"}}"#);
        assert!(
            message.contains("missing field `backend_path`"),
            "{message}"
        );
        assert_eq!(
            load(
                r#"{"snapshot_path": "s", "mem_backend": {"backend_type": "File", "backend_path": ""}}"#
            ),
            "mem_backend.backend_path cannot be empty"
        );
        assert_eq!(
            load(r#"{"snapshot_path": "", "mem_file_path": "m"}"#),
            "snapshot_path cannot be empty"
        );
        assert_eq!(
            load(
                r#"{"snapshot_path": "s", "mem_file_path": "m",
                    "network_overrides": [{"iface_id": "eth-0", "host_dev_name": "tap0"}]}"#
            ),
            "network_overrides.iface_id `eth-0` may only contain ASCII letters, digits and '_'"
        );
        assert_eq!(
            load(
                r#"{"snapshot_path": "s", "mem_file_path": "m",
                    "network_overrides": [{"iface_id": "", "host_dev_name": "tap0"}]}"#
            ),
            "network_overrides.iface_id cannot be empty"
        );
        assert_eq!(
            load(
                r#"{"snapshot_path": "s", "mem_file_path": "m",
                    "network_overrides": [{"iface_id": "eth0", "host_dev_name": "tap0"},
                                          {"iface_id": "eth1", "host_dev_name": "tap1"},
                                          {"iface_id": "eth0", "host_dev_name": "tap2"}]}"#
            ),
            "network_overrides names iface_id `eth0` more than once"
        );
        assert_eq!(
            load(
                r#"{"snapshot_path": "s", "mem_file_path": "m",
                    "network_overrides": [{"iface_id": "eth0", "host_dev_name": ""}]}"#
            ),
            "network_overrides.host_dev_name cannot be empty"
        );
        let message = load(
            r#"{"snapshot_path": "s", "mem_file_path": "m",
                "network_overrides": [{"iface_id": "eth0", "host_dev_name": "a_very_long_tap_name"}]}"#,
        );
        assert!(
            message.starts_with("host_dev_name `a_very_long"),
            "{message}"
        );
        let message = load(
            r#"{"snapshot_path": "s", "mem_file_path": "m",
                "network_overrides": [{"iface_id": "eth0", "host_dev_name": "t", "mac": "x"}]}"#,
        );
        assert!(message.contains("unknown field `mac`"), "{message}");
        assert_eq!(
            load(
                r#"{"snapshot_path": "s", "mem_file_path": "m", "vsock_override": {"uds_path": ""}}"#
            ),
            "vsock_override.uds_path cannot be empty"
        );
        let message = load(
            r#"{"snapshot_path": "s", "mem_file_path": "m", "vsock_override": {"guest_cid": 3}}"#,
        );
        assert!(message.contains("unknown field `guest_cid`"), "{message}");
        assert_eq!(
            refused(get("/snapshot/load")),
            "method GET is not allowed on /snapshot/load (allowed: PUT)"
        );
        assert_eq!(
            refused(patch("/snapshot/load", "{}")),
            "method PATCH is not allowed on /snapshot/load (allowed: PUT)"
        );
    }

    #[test]
    fn unsupported_routes_say_so() {
        let cases = [
            (Method::Put, "/cpu-config"),
            (Method::Put, "/pmem/pmem0"),
            (Method::Patch, "/hotplug/memory"),
            (Method::Put, "/serial"),
        ];
        for (method, path) in cases {
            let message = refused(parse_request(&request(method, path, "{}")));
            assert!(
                message.ends_with("is not supported by Petrel yet"),
                "{path}: {message}"
            );
        }
    }

    #[test]
    fn mmds_routes() {
        // docs/mmds/mmds-user-guide.md
        let data = r#"{"latest": {"meta-data": {"ami-id": "ami-87654321",
                       "reservation-id": "r-79054aef"}}}"#;
        let value: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(put("/mmds", data), Ok(ApiRequest::PutMmds(value.clone())));
        assert_eq!(patch("/mmds", data), Ok(ApiRequest::PatchMmds(value)));
        assert_eq!(get("/mmds"), Ok(ApiRequest::GetMmds));
        let Ok(ApiRequest::PutMmdsConfig(config)) = put(
            "/mmds/config",
            r#"{"version": "V2", "ipv4_address": "169.254.170.2", "network_interfaces": ["eth0"],
                "imds_compat": true}"#,
        ) else {
            panic!("refused");
        };
        assert_eq!(config.version(), crate::model::MmdsVersion::V2);
        assert!(config.imds_compat());
        // A null document is a document (the data store refuses what is not an object).
        assert_eq!(
            put("/mmds", "null"),
            Ok(ApiRequest::PutMmds(serde_json::Value::Null))
        );
    }

    #[test]
    fn mmds_refusals() {
        let message = refused(put("/mmds", "{\"a\": "));
        assert!(
            message.starts_with("invalid body for PUT /mmds: "),
            "{message}"
        );
        let message = refused(patch("/mmds", "not json"));
        assert!(
            message.starts_with("invalid body for PATCH /mmds: "),
            "{message}"
        );
        assert_eq!(
            refused(put("/mmds", "")),
            "empty PUT request on /mmds: a JSON body is required"
        );
        assert_eq!(
            refused(parse_request(&request(Method::Get, "/mmds", "{}"))),
            "GET request on /mmds cannot have a body"
        );
        assert_eq!(
            refused(get("/mmds/config")),
            "method GET is not allowed on /mmds/config (allowed: PUT)"
        );
        assert_eq!(
            refused(patch("/mmds/config", "{}")),
            "method PATCH is not allowed on /mmds/config (allowed: PUT)"
        );
        let delete = parse_request(&request(Method::Other("DELETE".into()), "/mmds", ""));
        assert_eq!(
            refused(delete),
            "method DELETE is not allowed on /mmds (allowed: GET, PUT, PATCH)"
        );
        assert!(matches!(
            put("/mmds/other", "{}"),
            Err(ApiError::UnknownRoute { .. })
        ));
        assert_eq!(
            refused(put("/mmds/config", r#"{"network_interfaces": []}"#)),
            "network_interfaces: The list of network interface IDs that allow forwarding MMDS \
             requests is empty."
        );
        assert_eq!(
            refused(put(
                "/mmds/config",
                r#"{"network_interfaces": ["eth0"], "ipv4_address": "10.0.0.1"}"#
            )),
            "ipv4_address `10.0.0.1`: The MMDS IPv4 address is not link local."
        );
        let message = refused(put(
            "/mmds/config",
            r#"{"version": "foo", "network_interfaces": ["1"]}"#,
        ));
        assert!(
            message.contains("unknown variant `foo`, expected `V1` or `V2`"),
            "{message}"
        );
    }

    #[test]
    fn responses() {
        let response = refused(get("/nope"));
        let response = Response::fault(response);
        assert_eq!(response.status, 400);
        assert_eq!(
            response.body.as_deref(),
            Some(r#"{"fault_message":"invalid request: no route for GET /nope"}"#)
        );
        let quoted = Response::fault("a \"quoted\"\nline");
        assert_eq!(
            quoted.body.as_deref(),
            Some(r#"{"fault_message":"a \"quoted\"\nline"}"#)
        );
        let error = ApiError::NotSupported("x".into());
        assert_eq!(error.to_response().status, 400);
        let version = ok_json(&crate::model::FirecrackerVersion {
            firecracker_version: "1.17.0-dev".into(),
        });
        assert_eq!(version.status, 200);
        assert_eq!(
            version.body.as_deref(),
            Some(r#"{"firecracker_version":"1.17.0-dev"}"#)
        );
    }
}
