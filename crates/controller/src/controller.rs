//! Firecracker's API, answered: what each request does before and after the guest starts.
//!
//! Before `InstanceStart` the controller collects the configuration in Firecracker's own types
//! (the same ones `GET /vm/config` returns and the config file uses); `InstanceStart` turns it
//! into a [`VmConfig`], builds and starts the VM. After that, requests go to the running VM
//! through its [`VmmHandle`]: pause and resume, Ctrl-Alt-Del, a new backing file or new rate
//! limits for a drive, new rate limits for a network interface, metrics, snapshots. A fresh
//! process may instead load a snapshot (`PUT /snapshot/load`), which builds the VM from the
//! snapshot's files.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use petrel_api::http::{Request, Response};
use petrel_api::model::{
    ActionType, Drive, FirecrackerVersion, FullVmConfiguration, InstanceInfo, InstanceState,
    MachineConfiguration, NetworkInterface, SnapshotLoadParams, VmState, FIRECRACKER_API_VERSION,
};
use petrel_api::reply::VmConfigReply;
use petrel_api::routes::{self, ApiRequest};
use petrel_mmds::DataStore;
use petrel_vmm::config::SharedMmds;
use petrel_vmm::config::VmConfig;
use petrel_vmm::working_set::WorkingSetMode;
use petrel_vmm::{RunSummary, Timeline, Vmm, VmmHandle};

use crate::logger::{Level, LogFormat, Logger};
use crate::metrics::{self, ApiCounters, MetricsSink};
use crate::mmds::MmdsStore;
use crate::vm_config::rate_limit;

/// How Petrel names itself in `GET /`'s `app_name`.
pub const APP_NAME: &str = "Petrel";

/// What the embedder does with an answered request.
#[derive(Debug)]
pub enum Handled {
    /// Send this response.
    Reply(Response),
    /// `InstanceStart` was accepted: build and start the VM ([`Controller::start_vm`]), then
    /// answer ([`Controller::complete`] does both).
    Start,
    /// `PUT /snapshot/load` was accepted: restore the VM ([`Controller::load_snapshot`]), then
    /// answer ([`Controller::complete`] does both).
    Load(Box<SnapshotLoadParams>),
}

/// How the controller made the VM it hands to the embedder's [`VmSetup`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Built from the configuration (`InstanceStart`, or a config file).
    Built,
    /// Restored from a snapshot (`PUT /snapshot/load`).
    Restored,
}

/// What the embedder does to each VM the controller makes, after it is built or restored and
/// before its vCPUs start: the process's own concerns, such as giving the guest's serial port
/// the process's stdin ([`Vmm::attach_serial_input`]) or reporting [`Vmm::notices`].
pub type VmSetup = Box<dyn FnMut(&mut Vmm, Origin) + Send>;

/// The API's state: the configuration before the guest starts, the VM after.
pub struct Controller {
    id: String,
    timeline: Timeline,
    logger: Option<Arc<Logger>>,
    metrics: Option<MetricsSink>,
    counters: ApiCounters,
    /// Start-up time to the API being served, wall-clock and CPU (see `set_start_times`).
    start_time_us: Option<u64>,
    start_time_cpu_us: Option<u64>,
    config: FullVmConfiguration,
    vm: Option<VmmHandle>,
    /// Set when the guest has ended.
    ended: bool,
    /// The embedder's setup of each VM made (see [`Controller::set_vm_setup`]).
    setup: Option<VmSetup>,
    /// The MMDS data store (`PUT`, `PATCH`, `GET /mmds`).
    mmds: MmdsStore,
    /// The MMDS service the VM answers the guest with (made at the VM's start or load, over
    /// the data store), kept for its metrics.
    mmds_service: Option<SharedMmds>,
    /// What `PUT /snapshot/load` does about the snapshot's working set.
    working_set: WorkingSetMode,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("id", &self.id)
            .field("timeline", &self.timeline)
            .field("logger", &self.logger)
            .field("metrics", &self.metrics)
            .field("counters", &self.counters)
            .field("start_time_us", &self.start_time_us)
            .field("start_time_cpu_us", &self.start_time_cpu_us)
            .field("config", &self.config)
            .field("vm", &self.vm)
            .field("ended", &self.ended)
            .field("setup", &self.setup.is_some())
            .field("mmds", &self.mmds)
            .finish()
    }
}

fn done() -> Handled {
    Handled::Reply(Response::no_content())
}

fn fault(message: impl Into<String>) -> Handled {
    Handled::Reply(Response::fault(message))
}

impl Controller {
    /// A controller for instance `id`, logging to `logger` if there is one.
    pub fn new(id: String, logger: Option<Arc<Logger>>, timeline: Timeline) -> Self {
        Controller {
            id,
            timeline,
            logger,
            metrics: None,
            counters: ApiCounters::default(),
            start_time_us: None,
            start_time_cpu_us: None,
            config: FullVmConfiguration::default(),
            vm: None,
            ended: false,
            setup: None,
            mmds: MmdsStore::new(petrel_mmds::store::DEFAULT_SIZE_LIMIT),
            mmds_service: None,
            working_set: WorkingSetMode::default(),
        }
    }

    /// Sets what `PUT /snapshot/load` does about the snapshot's working set (`--working-set`;
    /// see [`petrel_vmm::working_set`]): prefetch it (the default), record it, or neither.
    pub fn set_working_set_mode(&mut self, mode: WorkingSetMode) {
        self.working_set = mode;
    }

    /// Sets the MMDS data store's size limit in bytes (`--mmds-size-limit`; Firecracker's
    /// default, [`petrel_mmds::store::DEFAULT_SIZE_LIMIT`], otherwise). Call it before any data is
    /// put: the store starts anew, empty.
    pub fn set_mmds_size_limit(&mut self, limit: usize) {
        self.mmds = MmdsStore::new(limit);
    }

    /// The MMDS data store, which the API's `/mmds` requests change and the VM answers the
    /// guest from.
    pub fn mmds_store(&self) -> Arc<Mutex<DataStore>> {
        self.mmds.shared()
    }

    /// Fills the MMDS data store from a JSON document (`--metadata FILE`), as a `PUT /mmds`
    /// would; the error is in Firecracker's words.
    pub fn populate_mmds(&mut self, json: &str) -> Result<(), String> {
        let value: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| format!("Populating MMDS from file failed: not valid JSON: {e}"))?;
        let r = self.mmds.put(value);
        if r.status >= 300 {
            let body: serde_json::Value =
                serde_json::from_str(r.body.as_deref().unwrap_or("{}")).unwrap_or_default();
            let why = body["fault_message"].as_str().unwrap_or_default();
            return Err(format!("Populating MMDS from file failed: {why}"));
        }
        Ok(())
    }

    /// How long start-up took from the launcher's timestamps (`--start-time-us`,
    /// `--start-time-cpu-us` plus `--parent-cpu-time-us`) to the API being served, wall-clock
    /// and CPU time, for the metrics' `process_startup_time_us` and `..._cpu_us`.
    pub fn set_start_times(&mut self, us: Option<u64>, cpu_us: Option<u64>) {
        self.start_time_us = us;
        self.start_time_cpu_us = cpu_us;
    }

    /// Sets what the embedder does to each VM the controller makes, before its vCPUs start
    /// (see [`VmSetup`]). Without one, the VM gets no serial input.
    pub fn set_vm_setup(&mut self, setup: VmSetup) {
        self.setup = Some(setup);
    }

    /// Logs one line, if a logger is configured.
    pub fn log(&self, level: Level, file: &str, line: u32, message: &str) {
        if let Some(l) = &self.logger {
            l.log(level, file, line, message);
        }
    }

    /// Opens the metrics destination (`--metrics-path` or `PUT /metrics`).
    pub fn open_metrics(&mut self, path: &Path) -> std::io::Result<()> {
        self.metrics = Some(MetricsSink::open(path)?);
        Ok(())
    }

    /// Takes a whole configuration from Firecracker's config file (`--config-file`).
    pub fn apply_config_file(&mut self, text: &str) -> Result<(), String> {
        let file = petrel_api::config_file::parse_config_file(text).map_err(|e| e.to_string())?;
        if let Some(l) = &file.logger {
            self.configure_logger(l)?;
        }
        if let Some(m) = &file.metrics {
            self.open_metrics(Path::new(&m.metrics_path))
                .map_err(|e| format!("cannot open metrics_path {}: {e}", m.metrics_path))?;
        }
        self.config = file.into();
        Ok(())
    }

    fn configure_logger(&mut self, l: &petrel_api::model::Logger) -> Result<(), String> {
        if self.logger.is_some() {
            return Err("the logger is configured already (it can be set once)".into());
        }
        let Some(path) = &l.log_path else {
            return Err("logger: log_path is required".into());
        };
        let format = LogFormat {
            instance_id: self.id.clone(),
            level: l.level.unwrap_or(Level::Info),
            show_level: l.show_level.unwrap_or(false),
            show_log_origin: l.show_log_origin.unwrap_or(false),
        };
        let logger = Logger::open(Path::new(path), format)
            .map_err(|e| format!("cannot open log_path {path}: {e}"))?;
        self.logger = Some(Arc::new(logger));
        Ok(())
    }

    fn state(&self) -> InstanceState {
        match &self.vm {
            None => InstanceState::NotStarted,
            Some(h) if h.state() == petrel_vmm::VmState::Paused => InstanceState::Paused,
            Some(_) => InstanceState::Running,
        }
    }

    /// Answers one HTTP request: logs it (method and path), parses it
    /// ([`routes::parse_request`]) and answers it as [`Controller::handle_request`] does; a
    /// request that does not parse is answered `400` with the parser's message.
    pub fn handle(&mut self, request: &Request) -> Handled {
        self.counters.requests += 1;
        self.log(
            Level::Info,
            file!(),
            line!(),
            &format!(
                "The API server received a {:?} request on \"{}\".",
                request.method, request.path
            ),
        );
        let handled = match routes::parse_request(request) {
            Ok(req) => self.dispatch(req),
            Err(e) => fault(e.to_string()),
        };
        self.count_fault(handled)
    }

    /// Answers one parsed request: a response ([`Handled::Reply`]), or the VM to make
    /// ([`Handled::Start`], [`Handled::Load`]; see [`Controller::complete`]). A request that
    /// does not fit the VM's life cycle (pre-boot only, running VM only) or asks for what
    /// Petrel does not implement is answered `400` with a message that says so. Counts the
    /// request, and an error answer, for the metrics' `api_server` group.
    pub fn handle_request(&mut self, request: ApiRequest) -> Handled {
        self.counters.requests += 1;
        let handled = self.dispatch(request);
        self.count_fault(handled)
    }

    /// Counts and logs an error answer.
    fn count_fault(&mut self, handled: Handled) -> Handled {
        if let Handled::Reply(r) = &handled {
            if r.status >= 400 {
                self.counters.faults += 1;
                let body = r.body.as_deref().unwrap_or_default();
                self.log(
                    Level::Error,
                    file!(),
                    line!(),
                    &format!("Received error: {body}"),
                );
            }
        }
        handled
    }

    /// Carries out what [`Controller::handle`] or [`Controller::handle_request`] answered:
    /// builds and starts the VM for [`Handled::Start`], restores it for [`Handled::Load`]. The
    /// response to send (`204`, or `400` with why the VM could not be made), and the VM if
    /// one was made: the embedder runs it ([`Vmm::run_until_stopped`]) and then calls
    /// [`Controller::finish`]. Once a VM was made, the controller refuses a second one.
    pub fn complete(&mut self, handled: Handled) -> (Response, Option<Vmm>) {
        let made = match handled {
            Handled::Reply(r) => return (r, None),
            Handled::Start => self.start_vm(),
            Handled::Load(params) => self.load_snapshot(&params),
        };
        match made {
            Ok(vmm) => (Response::no_content(), Some(vmm)),
            Err(why) => (Response::fault(why), None),
        }
    }

    fn pre_boot(&self, what: &str) -> Result<(), Handled> {
        if self.vm.is_some() {
            return Err(fault(format!(
                "{what} is only allowed before the VM starts (the VM runs already)"
            )));
        }
        Ok(())
    }

    fn running(&self, what: &str) -> Result<VmmHandle, Handled> {
        self.vm.clone().ok_or_else(|| {
            fault(format!(
                "{what} needs a running VM: send InstanceStart first"
            ))
        })
    }

    fn dispatch(&mut self, req: ApiRequest) -> Handled {
        let result = match req {
            ApiRequest::GetInstanceInfo => Ok(Handled::Reply(routes::ok_json(&InstanceInfo {
                app_name: APP_NAME.into(),
                id: self.id.clone(),
                state: self.state(),
                vmm_version: FIRECRACKER_API_VERSION.into(),
            }))),
            ApiRequest::GetVersion => Ok(Handled::Reply(routes::ok_json(&FirecrackerVersion {
                firecracker_version: FIRECRACKER_API_VERSION.into(),
            }))),
            ApiRequest::GetVmConfig => Ok(Handled::Reply(routes::ok_json(&VmConfigReply::from(
                &self.full_config(),
            )))),
            ApiRequest::GetMachineConfig => Ok(Handled::Reply(routes::ok_json(&self.machine()))),
            ApiRequest::PutBootSource(b) => self.pre_boot("PUT /boot-source").map(|()| {
                self.config.boot_source = Some(b);
                done()
            }),
            ApiRequest::PutMachineConfig(m) => {
                self.pre_boot("PUT /machine-config").and_then(|()| {
                    check_machine(&m)?;
                    self.check_balloon_fits("PUT /machine-config", m.mem_size_mib)?;
                    self.config.machine_config = Some(m);
                    Ok(done())
                })
            }
            ApiRequest::PatchMachineConfig(update) => {
                self.pre_boot("PATCH /machine-config").and_then(|()| {
                    let m = self.machine().apply(&update);
                    m.validate().map_err(|e| fault(e.to_string()))?;
                    check_machine(&m)?;
                    self.check_balloon_fits("PATCH /machine-config", m.mem_size_mib)?;
                    self.config.machine_config = Some(m);
                    Ok(done())
                })
            }
            ApiRequest::PutDrive(d) => self
                .pre_boot("PUT /drives")
                .and_then(|()| self.put_drive(d)),
            ApiRequest::PutNetworkInterface(n) => self
                .pre_boot("PUT /network-interfaces")
                .and_then(|()| self.put_network_interface(n)),
            ApiRequest::PutVsock(v) => self.pre_boot("PUT /vsock").map(|()| {
                self.config.vsock = Some(v);
                done()
            }),
            ApiRequest::PutEntropy(e) => self.pre_boot("PUT /entropy").map(|()| {
                self.config.entropy = Some(e);
                done()
            }),
            ApiRequest::PutLogger(l) => self.pre_boot("PUT /logger").and_then(|()| {
                self.configure_logger(&l).map_err(fault)?;
                self.config.logger = Some(l);
                Ok(done())
            }),
            ApiRequest::PutMetrics(m) => self.pre_boot("PUT /metrics").and_then(|()| {
                if self.metrics.is_some() {
                    return Err(fault(
                        "the metrics are configured already (they can be set once)",
                    ));
                }
                self.open_metrics(Path::new(&m.metrics_path)).map_err(|e| {
                    fault(format!("cannot open metrics_path {}: {e}", m.metrics_path))
                })?;
                self.config.metrics = Some(m);
                Ok(done())
            }),
            ApiRequest::Action(ActionType::InstanceStart) => {
                self.pre_boot("InstanceStart").and_then(|()| {
                    if self.config.boot_source.is_none() {
                        return Err(fault(
                            "InstanceStart needs a boot source: PUT /boot-source first",
                        ));
                    }
                    Ok(Handled::Start)
                })
            }
            ApiRequest::Action(ActionType::SendCtrlAltDel) => {
                self.running("SendCtrlAltDel").and_then(|vm| {
                    vm.send_ctrl_alt_del().map_err(|e| fault(e.to_string()))?;
                    Ok(done())
                })
            }
            ApiRequest::Action(ActionType::FlushMetrics) => {
                if self.metrics.is_none() {
                    Err(fault(
                        "FlushMetrics needs metrics: PUT /metrics or --metrics-path first",
                    ))
                } else {
                    self.flush_metrics();
                    Ok(done())
                }
            }
            ApiRequest::PatchVm(state) => self.running("PATCH /vm").and_then(|vm| {
                let started = Instant::now();
                let (result, what) = match state {
                    VmState::Paused => (vm.pause(), "paused"),
                    VmState::Resumed => (vm.resume(), "resumed"),
                };
                result.map_err(|e| fault(format!("the VM could not be {what}: {e}")))?;
                let us = Some(started.elapsed().as_micros() as u64);
                match state {
                    VmState::Paused => self.counters.last_pause_us = us,
                    VmState::Resumed => self.counters.last_resume_us = us,
                }
                Ok(done())
            }),
            ApiRequest::CreateSnapshot(p) => self
                .running("PUT /snapshot/create")
                .and_then(|vm| self.create_snapshot(&vm, p)),
            ApiRequest::SaveWorkingSet => self
                .running("PUT /snapshot/working-set")
                .and_then(|vm| self.save_working_set(&vm)),
            ApiRequest::LoadSnapshot(p) => self.pre_boot("PUT /snapshot/load").and_then(|()| {
                let c = &self.config;
                if c.boot_source.is_some()
                    || c.machine_config.is_some()
                    || !c.drives.is_empty()
                    || !c.network_interfaces.is_empty()
                    || c.vsock.is_some()
                    || c.entropy.is_some()
                    || c.balloon.is_some()
                {
                    return Err(fault(
                        "PUT /snapshot/load is only allowed before anything but the logger and \
                         the metrics is configured: the snapshot brings its own machine",
                    ));
                }
                if p.clock_realtime == Some(true) {
                    return Err(fault(
                        "clock_realtime is not supported by Petrel yet: the guest's clock goes \
                         on from the snapshot",
                    ));
                }
                Ok(Handled::Load(Box::new(p)))
            }),
            ApiRequest::PatchDrive(p) => self.running("PATCH /drives").and_then(|vm| {
                let index = self
                    .config
                    .drives
                    .iter()
                    .position(|d| d.drive_id == p.drive_id)
                    .ok_or_else(|| fault(format!("no drive `{}` to update", p.drive_id)))?;
                if let Some(path) = &p.path_on_host {
                    vm.replace_disk(index, Path::new(path))
                        .map_err(|e| fault(format!("drive `{}`: {e}", p.drive_id)))?;
                }
                if p.rate_limiter.is_some() {
                    vm.set_disk_rate_limit(index, rate_limit(&p.rate_limiter))
                        .map_err(|e| fault(format!("drive `{}`: {e}", p.drive_id)))?;
                }
                let drive = &mut self.config.drives[index];
                if let Some(path) = p.path_on_host {
                    drive.path_on_host = Some(path);
                }
                if p.rate_limiter.is_some() {
                    drive.rate_limiter = p.rate_limiter;
                }
                Ok(done())
            }),
            ApiRequest::GetMmds => Ok(Handled::Reply(self.mmds.get())),
            ApiRequest::PutMmds(data) => Ok(Handled::Reply(self.mmds.put(data))),
            ApiRequest::PatchMmds(patch) => Ok(Handled::Reply(self.mmds.patch(patch))),
            ApiRequest::PutMmdsConfig(m) => self.pre_boot("PUT /mmds/config").and_then(|()| {
                let ifaces = self.config.network_interfaces.iter();
                m.check_interfaces(ifaces.map(|n| n.iface_id.as_str()))
                    .map_err(|e| fault(e.to_string()))?;
                self.config.mmds_config = Some(m);
                Ok(done())
            }),
            request @ (ApiRequest::PutBalloon(_)
            | ApiRequest::PatchBalloon(_)
            | ApiRequest::GetBalloon
            | ApiRequest::GetBalloonStats
            | ApiRequest::PatchBalloonStats(_)
            | ApiRequest::StartBalloonHinting(_)
            | ApiRequest::GetBalloonHintingStatus
            | ApiRequest::StopBalloonHinting) => self.balloon(request),
            ApiRequest::PatchNetworkInterface(p) => {
                self.running("PATCH /network-interfaces").and_then(|vm| {
                    let index = self
                        .config
                        .network_interfaces
                        .iter()
                        .position(|n| n.iface_id == p.iface_id)
                        .ok_or_else(|| {
                            fault(format!("no network interface `{}` to update", p.iface_id))
                        })?;
                    let iface = &mut self.config.network_interfaces[index];
                    if p.rx_rate_limiter.is_some() {
                        iface.rx_rate_limiter = p.rx_rate_limiter;
                    }
                    if p.tx_rate_limiter.is_some() {
                        iface.tx_rate_limiter = p.tx_rate_limiter;
                    }
                    vm.set_net_rate_limits(
                        index,
                        rate_limit(&iface.rx_rate_limiter),
                        rate_limit(&iface.tx_rate_limiter),
                    )
                    .map_err(|e| fault(format!("network interface `{}`: {e}", p.iface_id)))?;
                    Ok(done())
                })
            }
        };
        result.unwrap_or_else(|h| h)
    }

    fn machine(&self) -> MachineConfiguration {
        self.config.machine_config.clone().unwrap_or_default()
    }

    fn full_config(&self) -> FullVmConfiguration {
        let mut c = self.config.clone();
        c.machine_config = Some(self.machine());
        c
    }

    fn put_drive(&mut self, d: Drive) -> Result<Handled, Handled> {
        if d.socket.is_some() {
            return Err(fault(format!(
                "drive `{}`: vhost-user-block (socket) is not supported by Petrel yet",
                d.drive_id
            )));
        }
        if d.is_root_device
            && self
                .config
                .drives
                .iter()
                .any(|o| o.is_root_device && o.drive_id != d.drive_id)
        {
            return Err(fault(format!(
                "drive `{}`: another drive is the root device already",
                d.drive_id
            )));
        }
        match self
            .config
            .drives
            .iter_mut()
            .find(|o| o.drive_id == d.drive_id)
        {
            Some(old) => *old = d,
            None => self.config.drives.push(d),
        }
        Ok(done())
    }

    fn put_network_interface(&mut self, n: NetworkInterface) -> Result<Handled, Handled> {
        if n.mtu.is_some() {
            return Err(fault(format!(
                "network interface `{}`: mtu is not supported by Petrel yet",
                n.iface_id
            )));
        }
        if self
            .config
            .network_interfaces
            .iter()
            .any(|o| o.iface_id != n.iface_id && o.host_dev_name == n.host_dev_name)
        {
            return Err(fault(format!(
                "network interface `{}`: host_dev_name {} is used by another interface",
                n.iface_id, n.host_dev_name
            )));
        }
        match self
            .config
            .network_interfaces
            .iter_mut()
            .find(|o| o.iface_id == n.iface_id)
        {
            Some(old) => *old = n,
            None => self.config.network_interfaces.push(n),
        }
        Ok(done())
    }

    /// The drives in the order the guest sees them: the root device first (`/dev/vda`), the
    /// others in the order they were added.
    fn ordered_drives(&mut self) {
        if let Some(i) = self.config.drives.iter().position(|d| d.is_root_device) {
            let root = self.config.drives.remove(i);
            self.config.drives.insert(0, root);
        }
    }

    /// The VM configuration the API built, as Petrel's.
    pub fn vm_config(&mut self) -> Result<VmConfig, String> {
        self.ordered_drives();
        crate::vm_config::vm_config(&self.config)
    }

    /// Builds the VM from the configuration so far and starts its vCPUs (`InstanceStart`, or
    /// a config file). Errors name the API's fields where Petrel's name the config's.
    pub fn start_vm(&mut self) -> Result<Vmm, String> {
        let started = Instant::now();
        let mut config = self.vm_config()?;
        if config.mmds.is_some() {
            config.mmds_service = Some(self.mmds_service()?);
        }
        let mut vmm = Vmm::build_with_timeline(&config, self.timeline.clone())
            .map_err(|e| self.explain(&e))?;
        for notice in vmm.notices() {
            self.log(Level::Warning, file!(), line!(), &notice.to_string());
        }
        vmm.set_vcpu_thread_prefix("fc_vcpu ");
        if let Some(setup) = &mut self.setup {
            setup(&mut vmm, Origin::Built);
        }
        vmm.start().map_err(|e| self.explain(&e))?;
        self.counters.instance_start_us = Some(started.elapsed().as_micros() as u64);
        self.vm = Some(vmm.handle());
        self.log(Level::Info, file!(), line!(), "The guest started.");
        Ok(vmm)
    }

    /// A VMM error in the API's words: `disks[1].path` becomes drive `data`'s path_on_host.
    fn explain(&self, e: &petrel_vmm::Error) -> String {
        let text = petrel_vmm::error_chain(e);
        let petrel_vmm::Error::InvalidConfig { field, .. } = e else {
            return text;
        };
        let index = |prefix: &str| -> Option<usize> {
            field.strip_prefix(prefix)?.split(']').next()?.parse().ok()
        };
        let api_name = if let Some(d) = index("disks[").and_then(|i| self.config.drives.get(i)) {
            format!("drive `{}`", d.drive_id)
        } else if let Some(n) = index("nets[").and_then(|i| self.config.network_interfaces.get(i)) {
            format!("network interface `{}`", n.iface_id)
        } else {
            return text;
        };
        format!("{api_name}: {text}")
    }

    fn count_missed(&mut self) {
        self.counters.missed_log_count = self.logger.as_ref().map_or(0, |l| l.dropped());
        self.counters.missed_metrics_count = self.metrics.as_ref().map_or(0, |m| m.failures);
    }

    /// The MMDS service over this controller's data store, made on first use.
    fn mmds_service(&mut self) -> Result<SharedMmds, String> {
        if let Some(s) = &self.mmds_service {
            return Ok(s.clone());
        }
        let mmds = petrel_mmds::Mmds::with_store(self.mmds.shared())
            .map_err(|e| format!("the MMDS: {e}"))?;
        let shared = SharedMmds(Arc::new(std::sync::Mutex::new(mmds)));
        self.mmds_service = Some(shared.clone());
        Ok(shared)
    }

    /// The `mmds` metrics group: the service's counters, zeros before there is one.
    fn mmds_metrics(&self) -> serde_json::Value {
        let counters = self.mmds_service.as_ref().map(|s| {
            let mmds = petrel_util::lock_ignoring_poison(&s.0);
            serde_json::to_value(&**mmds.metrics())
        });
        match counters {
            Some(Ok(v)) => v,
            _ => serde_json::to_value(petrel_mmds::MmdsMetrics::default())
                .unwrap_or(serde_json::Value::Null),
        }
    }

    /// Writes one metrics line now.
    pub fn flush_metrics(&mut self) {
        let stats = self.vm.as_ref().map(|vm| vm.stats());
        self.count_missed();
        let mmds = self.mmds_metrics();
        let Some(sink) = &mut self.metrics else {
            return;
        };
        let mut doc = metrics::document(
            stats.as_ref(),
            &self.counters,
            self.start_time_us,
            self.start_time_cpu_us,
        );
        doc["mmds"] = mmds;
        sink.write(&doc);
    }

    /// The VM ended: a last metrics line and a log line.
    pub fn finish(&mut self, summary: &RunSummary) {
        self.ended = true;
        self.count_missed();
        let mmds = self.mmds_metrics();
        if let Some(sink) = &mut self.metrics {
            let mut doc = metrics::document(
                Some(&summary.stats),
                &self.counters,
                self.start_time_us,
                self.start_time_cpu_us,
            );
            doc["mmds"] = mmds;
            sink.write(&doc);
        }
        self.log(
            Level::Info,
            file!(),
            line!(),
            &format!("The guest stopped: {:?}", summary.stop),
        );
        match &summary.working_set {
            Some(Ok(recorded)) => self.log(Level::Info, file!(), line!(), &recorded.to_string()),
            Some(Err(why)) => self.log(Level::Warning, file!(), line!(), why),
            None => {}
        }
    }
}

/// What Petrel cannot do of a machine configuration Firecracker accepts.
fn check_machine(m: &MachineConfiguration) -> Result<(), Handled> {
    use petrel_api::model::CpuTemplate;
    if m.cpu_template.is_some_and(|t| t != CpuTemplate::None) {
        return Err(fault(
            "machine-config: cpu_template is not supported by Petrel yet",
        ));
    }
    if m.smt {
        return Err(fault("machine-config: smt is not supported by Petrel yet"));
    }
    Ok(())
}

mod balloon;
mod snapshot;
#[cfg(test)]
mod tests;
