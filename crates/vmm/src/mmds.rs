//! The MMDS on a guest interface: a virtio-net frame detour ([`FrameDetour`]) that hands the
//! guest's frames for the MMDS address to a bounded TCP/IP responder
//! ([`petrel_mmds::net::MmdsStack`]) and answers each complete HTTP request with the shared
//! metadata service ([`petrel_mmds::Mmds`]); every other frame goes to the tap untouched.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use petrel_devices::virtio::net::FrameDetour;
use petrel_mmds::net::{MmdsStack, DEFAULT_MAC};
use petrel_mmds::{DataStore, Mmds, MmdsVersion as ServiceVersion};
use petrel_util::lock_ignoring_poison as lock;

use crate::config::{MmdsConfig, MmdsVersion, SharedMmds, VmConfig};
use crate::{Error, Result};

/// The service a VM's interfaces answer with: the one given, or a new one with an empty store;
/// its version and `imds_compat` set from `config`.
pub(crate) fn service(config: &MmdsConfig, given: Option<&SharedMmds>) -> Result<SharedMmds> {
    let shared = match given {
        Some(s) => s.clone(),
        None => {
            let store = Arc::new(Mutex::new(DataStore::default()));
            let mmds = Mmds::with_store(store).map_err(|e| Error::Mmds(e.to_string()))?;
            SharedMmds(Arc::new(Mutex::new(mmds)))
        }
    };
    {
        let mut mmds = lock(&shared.0);
        mmds.set_version(match config.version {
            MmdsVersion::V1 => ServiceVersion::V1,
            MmdsVersion::V2 => ServiceVersion::V2,
        });
        mmds.set_imds_compat(config.imds_compat);
    }
    Ok(shared)
}

/// The detour for one interface of a VM whose configuration has an MMDS.
pub(crate) fn detour(config: &VmConfig, service: &SharedMmds) -> Option<Box<dyn FrameDetour>> {
    let mmds = config.mmds.as_ref()?;
    Some(Box::new(MmdsDetour {
        stack: MmdsStack::new(mmds.ipv4_address, DEFAULT_MAC),
        service: service.0.clone(),
    }))
}

/// One interface's responder and the shared service.
struct MmdsDetour {
    stack: MmdsStack,
    service: Arc<Mutex<Mmds>>,
}

impl FrameDetour for MmdsDetour {
    fn detour_tx(&mut self, frame: &[u8]) -> bool {
        let now = Instant::now();
        if !self.stack.detour(frame, now) {
            return false;
        }
        let service = lock(&self.service);
        self.stack
            .poll(now, &mut |request| service.answer(request, now));
        true
    }

    fn next_rx(&mut self, buf: &mut [u8]) -> Option<usize> {
        self.stack.next_frame(buf)
    }

    fn has_rx(&self) -> bool {
        self.stack.has_frames()
    }
}
