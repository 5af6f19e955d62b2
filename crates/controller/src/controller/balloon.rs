//! The balloon's routes: before the start they read and change the configured balloon (kept
//! in the configuration as Firecracker's `Balloon`); after it they go to the running device.
//!
//! Before the start, as in Firecracker: `PUT /balloon` sets the balloon (its `amount_mib` at
//! most the guest's memory, checked again at `InstanceStart` since the machine configuration
//! may change in between), `GET /balloon` answers it. `PATCH /balloon` and
//! `PATCH /balloon/statistics` change it, as Firecracker's swagger describes (Firecracker
//! itself refuses them until the start). The statistics and the hinting commands need the
//! guest's driver, so they are refused until the start, saying first what is missing: a
//! balloon, the statistics (`stats_polling_interval_s` 0) or hinting (`free_page_hinting`).
//!
//! After the start `PUT /balloon` is refused like every pre-boot request; the other routes
//! are answered by the running device through the [`VmmHandle`] (`balloon_after_start`), and a
//! new target or statistics interval is kept for `GET /vm/config`.

use petrel_api::model::Balloon;
use petrel_api::routes::{self, ApiRequest};

use petrel_vmm::config::BalloonConfig;
use petrel_vmm::VmmHandle;

use super::{done, fault, Controller, Handled};

/// The route of a balloon request, for messages.
fn route(request: &ApiRequest) -> &'static str {
    match request {
        ApiRequest::PutBalloon(_) => "PUT /balloon",
        ApiRequest::PatchBalloon(_) => "PATCH /balloon",
        ApiRequest::GetBalloon => "GET /balloon",
        ApiRequest::GetBalloonStats => "GET /balloon/statistics",
        ApiRequest::PatchBalloonStats(_) => "PATCH /balloon/statistics",
        ApiRequest::StartBalloonHinting(_) => "PATCH /balloon/hinting/start",
        ApiRequest::GetBalloonHintingStatus => "GET /balloon/hinting/status",
        ApiRequest::StopBalloonHinting => "PATCH /balloon/hinting/stop",
        _ => "a balloon request",
    }
}

impl Controller {
    /// Answers one of the balloon's requests (the caller passes only those).
    pub(super) fn balloon(&mut self, request: ApiRequest) -> Result<Handled, Handled> {
        let what = route(&request);
        if let Some(vm) = self.vm.clone() {
            return self.balloon_after_start(what, &vm, request);
        }
        let mem_size_mib = self.machine().mem_size_mib;
        match request {
            ApiRequest::PutBalloon(balloon) => {
                balloon
                    .check_memory(mem_size_mib)
                    .map_err(|e| fault(format!("{what}: {e}")))?;
                self.config.balloon = Some(balloon);
                Ok(done())
            }
            ApiRequest::PatchBalloon(update) => {
                let balloon = Balloon {
                    amount_mib: update.amount_mib,
                    ..self.configured_balloon(what)?
                };
                balloon
                    .check_memory(mem_size_mib)
                    .map_err(|e| fault(format!("{what}: {e}")))?;
                self.config.balloon = Some(balloon);
                Ok(done())
            }
            ApiRequest::GetBalloon => {
                let balloon = self.configured_balloon(what)?;
                Ok(Handled::Reply(routes::ok_json(&balloon)))
            }
            ApiRequest::PatchBalloonStats(update) => {
                let balloon = Balloon {
                    stats_polling_interval_s: update.stats_polling_interval_s,
                    ..self.configured_balloon(what)?
                };
                self.config.balloon = Some(balloon);
                Ok(done())
            }
            ApiRequest::GetBalloonStats => {
                if !self.configured_balloon(what)?.stats_enabled() {
                    return Err(stats_disabled(what));
                }
                Err(fault(format!(
                    "{what} is only available after the guest started: the statistics come \
                     from the guest's balloon driver"
                )))
            }
            ApiRequest::StartBalloonHinting(_)
            | ApiRequest::GetBalloonHintingStatus
            | ApiRequest::StopBalloonHinting => {
                if !self.configured_balloon(what)?.free_page_hinting {
                    return Err(hinting_disabled(what));
                }
                Err(fault(format!(
                    "{what} is only available after the guest started: free page hinting \
                     runs in the guest's balloon driver"
                )))
            }
            other => Err(fault(format!("{other:?} is not a balloon request"))),
        }
    }

    /// Answers one of the balloon's requests on the running VM `vm`: `PUT /balloon` is
    /// pre-boot only; the others act on the device. A VM without a balloon, statistics that
    /// are off, a target larger than guest RAM: each a 400 naming the route and the field.
    fn balloon_after_start(
        &mut self,
        what: &'static str,
        vm: &VmmHandle,
        request: ApiRequest,
    ) -> Result<Handled, Handled> {
        let refused = |e: petrel_vmm::Error| match e {
            petrel_vmm::Error::NoSuchDevice { .. } => no_balloon(what),
            e => fault(format!("{what}: {}", petrel_vmm::error_chain(&e))),
        };
        match request {
            ApiRequest::PutBalloon(_) => self.pre_boot(what).map(|()| done()),
            ApiRequest::PatchBalloon(update) => {
                vm.update_balloon(update.amount_mib).map_err(refused)?;
                self.remember_balloon(vm);
                Ok(done())
            }
            ApiRequest::GetBalloon => {
                let c = vm.balloon_config().map_err(refused)?;
                Ok(Handled::Reply(routes::ok_json(&api_balloon(&c))))
            }
            ApiRequest::GetBalloonStats => {
                let stats = vm.balloon_stats().map_err(refused)?;
                Ok(Handled::Reply(routes::ok_json(&stats)))
            }
            ApiRequest::PatchBalloonStats(update) => {
                vm.update_balloon_stats(update.stats_polling_interval_s)
                    .map_err(refused)?;
                self.remember_balloon(vm);
                Ok(done())
            }
            ApiRequest::StartBalloonHinting(cmd) => {
                vm.start_balloon_hinting(cmd.acknowledge_on_stop())
                    .map_err(refused)?;
                Ok(done())
            }
            ApiRequest::GetBalloonHintingStatus => {
                let status = vm.balloon_hinting_status().map_err(refused)?;
                Ok(Handled::Reply(routes::ok_json(&status)))
            }
            ApiRequest::StopBalloonHinting => {
                vm.stop_balloon_hinting().map_err(refused)?;
                Ok(done())
            }
            other => Err(fault(format!("{other:?} is not a balloon request"))),
        }
    }

    /// Keeps `GET /vm/config`'s balloon as the running device has it (its target and
    /// statistics interval change after the start).
    fn remember_balloon(&mut self, vm: &VmmHandle) {
        if let Ok(c) = vm.balloon_config() {
            self.config.balloon = Some(api_balloon(&c));
        }
    }

    /// The balloon configured before the start, or the refusal of `what` without one.
    fn configured_balloon(&self, what: &str) -> Result<Balloon, Handled> {
        self.config.balloon.ok_or_else(|| no_balloon(what))
    }

    /// Checks the balloon's target against the guest's memory size `mem_size_mib` (a new
    /// `machine-config`, or `InstanceStart`'s), naming `what` was refused.
    pub(super) fn check_balloon_fits(&self, what: &str, mem_size_mib: u64) -> Result<(), Handled> {
        match &self.config.balloon {
            Some(balloon) => balloon
                .check_memory(mem_size_mib)
                .map_err(|e| fault(format!("{what}: {e}"))),
            None => Ok(()),
        }
    }
}

/// The device's configuration as Firecracker's `Balloon`.
fn api_balloon(c: &BalloonConfig) -> Balloon {
    Balloon {
        amount_mib: c.amount_mib,
        deflate_on_oom: c.deflate_on_oom,
        stats_polling_interval_s: c.stats_polling_interval_s,
        free_page_hinting: c.free_page_hinting,
        free_page_reporting: c.free_page_reporting,
    }
}

/// The refusal of `what` without a balloon.
fn no_balloon(what: &str) -> Handled {
    fault(format!(
        "{what}: no balloon device is configured (PUT /balloon first)"
    ))
}

/// The refusal of `what` when the balloon's statistics are off.
fn stats_disabled(what: &str) -> Handled {
    fault(format!(
        "{what}: the balloon's statistics are not enabled (stats_polling_interval_s is 0)"
    ))
}

/// The refusal of `what` when the balloon's free page hinting is off.
fn hinting_disabled(what: &str) -> Handled {
    fault(format!(
        "{what}: free page hinting is not enabled (free_page_hinting is false)"
    ))
}

#[cfg(test)]
mod tests;
